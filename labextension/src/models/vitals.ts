import { endpoint, requestAPI } from '../handler';
import { IJobVitals, IVitalsSample } from '../tokens';
import { IPollingModelOptions, PollingModel } from './base';

export interface IVitalsModelOptions extends IPollingModelOptions {
  /** Samples kept per job for the charts (default 60). */
  historyLength?: number;
}

/**
 * Live vitals of the user's running jobs (`GET vitals`), with a short history
 * per job for the sidebar's charts. Polls only while the sidebar is shown and
 * the browser tab is visible (`isActive`).
 */
export class VitalsModel extends PollingModel {
  constructor(options: IVitalsModelOptions = {}) {
    super(options);
    this._historyLength = Math.max(2, options.historyLength ?? 60);
  }

  /** Latest vitals of a running job. */
  get(jobId: string): IJobVitals | undefined {
    return this._latest.get(jobId);
  }

  /** Samples of a job, oldest first. */
  history(jobId: string): ReadonlyArray<IVitalsSample> {
    return this._history.get(jobId) ?? [];
  }

  get jobIds(): string[] {
    return Array.from(this._latest.keys());
  }

  get historyLength(): number {
    return this._historyLength;
  }
  set historyLength(n: number) {
    this._historyLength = Math.max(2, n);
    for (const [id, samples] of this._history) {
      this._history.set(id, samples.slice(-this._historyLength));
    }
  }

  /** Forget every sample (e.g. when the charts are turned off). */
  clear(): void {
    if (this._latest.size === 0 && this._history.size === 0) {
      return;
    }
    this._latest.clear();
    this._history.clear();
    this.emitChanged();
  }

  /** Vitals of one job right now (also jobs that are not running). */
  fetchJob(jobId: string): Promise<IJobVitals> {
    return requestAPI<IJobVitals>(
      endpoint(['jobs', jobId, 'stats']),
      {},
      this.serverSettings
    );
  }

  protected async fetch(): Promise<boolean> {
    const answer = await requestAPI<{ jobs: IJobVitals[] }>(
      'vitals',
      {},
      this.serverSettings
    );
    const jobs = answer.jobs ?? [];
    const seen = new Set<string>();
    let changed = jobs.length !== this._latest.size;
    for (const v of jobs) {
      seen.add(v.job_id);
      const before = this._latest.get(v.job_id);
      if (!before || before.sampled_at !== v.sampled_at) {
        changed = true;
      }
      this._latest.set(v.job_id, v);
      const samples = this._history.get(v.job_id) ?? [];
      const last = samples[samples.length - 1];
      if (!last || last.t !== v.sampled_at) {
        samples.push(toSample(v));
      }
      this._history.set(v.job_id, samples.slice(-this._historyLength));
    }
    for (const id of Array.from(this._latest.keys())) {
      if (!seen.has(id)) {
        this._latest.delete(id);
        this._history.delete(id);
        changed = true;
      }
    }
    return changed;
  }

  private _historyLength: number;
  private _latest = new Map<string, IJobVitals>();
  private _history = new Map<string, IVitalsSample[]>();
}

/** The chart point of one answer (`null` where Slurm could not tell). */
export function toSample(v: IJobVitals): IVitalsSample {
  return {
    t: v.sampled_at,
    cpuPercent: v.cpu.available ? (v.cpu.percent ?? null) : null,
    memoryMb: v.memory.available ? v.memory.current_mb : null,
    gpuPercent: v.gpu.available ? (v.gpu.utilization ?? null) : null
  };
}

/** "1.5 GiB" / "300 MiB" from megabytes ('' when unknown). */
export function formatMb(mb: number | null | undefined): string {
  if (mb === null || mb === undefined || !isFinite(mb)) {
    return '';
  }
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${Math.round(mb)} MiB`;
}

/** "1:02:03" / "5:07" from seconds ('' when unknown). */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) {
    return '';
  }
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
}
