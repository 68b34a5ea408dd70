import type * as nbformat from '@jupyterlab/nbformat';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { APIError, endpoint, requestAPI } from '../handler';
import { ICellJobRequest, ICellJobState, IRunRecord } from '../tokens';

/** Status of a cell job without its outputs. */
export type CellJobStatus = Omit<ICellJobState, 'outputs'>;

/** Where a job ran, from its run record: `exclusive, 32 of 32 CPUs, AMD EPYC 7763`. */
export function describeRun(run: IRunRecord | null | undefined): string {
  if (!run) {
    return '';
  }
  const parts: string[] = [];
  if (run.exclusive === true) {
    parts.push('whole node');
  } else if (run.exclusive === false) {
    parts.push('shared node');
  }
  if (typeof run.alloc_cpus === 'number' && typeof run.node_cpus === 'number') {
    parts.push(`${run.alloc_cpus} of ${run.node_cpus} CPUs`);
  }
  if (run.cpu_model) {
    parts.push(run.cpu_model);
  }
  return parts.join(', ');
}


/** Options of a `CellJob`. */
export interface ICellJobOptions {
  /** Index of the first output not seen yet (default 0). */
  since?: number;
  /** Milliseconds between polls while the job is not finished (default 1500). */
  interval?: number;
  serverSettings?: ServerConnection.ISettings;
  /** Start polling right away (default true). */
  autoStart?: boolean;
}

/**
 * Follows one cell job: polls `GET cells/{id}?since=N`, emits the new
 * nbformat outputs as they arrive and the job status (queued with reason,
 * running on node, done, failed). Stops once the job is done.
 */
export class CellJob implements IDisposable {
  constructor(jobId: string, options: ICellJobOptions = {}) {
    this.jobId = jobId;
    this.serverSettings =
      options.serverSettings ?? ServerConnection.makeSettings();
    this._next = options.since ?? 0;
    this._status = {
      job_id: jobId,
      state: 'PENDING',
      reason: null,
      node: null,
      next: this._next,
      done: false,
      status: null
    };
    this._poll = new Poll({
      auto: options.autoStart ?? true,
      factory: () => this._tick(),
      frequency: {
        interval: options.interval ?? 1500,
        backoff: true,
        max: 30 * 1000
      },
      name: `jupyter-hpc:cell-job-${jobId}`,
      standby: 'when-hidden'
    });
  }

  /** Submit `request` as a batch job; returns the Slurm job id. */
  static async submit(
    request: ICellJobRequest,
    serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ): Promise<string> {
    const answer = await requestAPI<{ job_id: string }>(
      'cells',
      { method: 'POST', body: JSON.stringify(request) },
      serverSettings
    );
    return String(answer.job_id);
  }

  readonly jobId: string;
  readonly serverSettings: ServerConnection.ISettings;

  get status(): CellJobStatus {
    return this._status;
  }

  /** The last polling error, `null` while requests succeed. */
  get error(): APIError | null {
    return this._error;
  }

  /** New outputs, in order, each emitted once. */
  get outputsReceived(): ISignal<this, nbformat.IOutput[]> {
    return this._outputsReceived;
  }

  /** Emitted when state, reason, node, error or done change. */
  get statusChanged(): ISignal<this, CellJobStatus> {
    return this._statusChanged;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  start(): Promise<void> {
    return this._poll.start();
  }

  /** Poll now (e.g. right after a cancel). */
  async refresh(): Promise<void> {
    if (!this._poll.isDisposed) {
      await this._poll.refresh();
      await this._poll.tick.catch(() => undefined);
    }
  }

  /** Ask Slurm to cancel the job. */
  async cancel(): Promise<void> {
    await requestAPI<unknown>(
      endpoint(['jobs', this.jobId]),
      { method: 'DELETE' },
      this.serverSettings
    );
    void this.refresh().catch(() => undefined);
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    if (this._status.done) {
      return;
    }
    let answer: ICellJobState;
    try {
      answer = await requestAPI<ICellJobState>(
        endpoint(['cells', this.jobId], { since: this._next }),
        {},
        this.serverSettings
      );
      if (this._error) {
        this._error = null;
        this._statusChanged.emit(this._status);
      }
    } catch (reason) {
      this._error =
        reason instanceof APIError ? reason : new APIError(String(reason), 0);
      this._statusChanged.emit(this._status);
      if (this._error.status === 404 || this._error.status === 403) {
        // The job is not (or no longer) known: nothing more will come.
        this._status = { ...this._status, done: true, status: 'error' };
        this._statusChanged.emit(this._status);
        this._stop();
        return;
      }
      throw this._error;
    }

    const outputs = answer.outputs ?? [];
    if (outputs.length > 0) {
      this._outputsReceived.emit(outputs);
    }
    const next =
      typeof answer.next === 'number' ? answer.next : this._next + outputs.length;
    this._next = next;
    const status: CellJobStatus = {
      job_id: String(answer.job_id ?? this.jobId),
      state: answer.state,
      reason: answer.reason ?? null,
      node: answer.node ?? null,
      next,
      done: !!answer.done,
      status: answer.status ?? null,
      run: answer.run ?? null
    };
    const before = this._status;
    this._status = status;
    if (
      before.state !== status.state ||
      before.reason !== status.reason ||
      before.node !== status.node ||
      before.done !== status.done ||
      before.status !== status.status ||
      (before.run ?? null) !== (status.run ?? null)
    ) {
      this._statusChanged.emit(status);
    }
    if (status.done) {
      this._stop();
    }
  }

  private _stop(): void {
    // Let the current tick settle before stopping the poll.
    setTimeout(() => {
      if (!this._poll.isDisposed) {
        void this._poll.stop();
      }
    }, 0);
  }

  private _poll: Poll;
  private _next: number;
  private _status: CellJobStatus;
  private _error: APIError | null = null;
  private _isDisposed = false;
  private _outputsReceived = new Signal<this, nbformat.IOutput[]>(this);
  private _statusChanged = new Signal<this, CellJobStatus>(this);
}
