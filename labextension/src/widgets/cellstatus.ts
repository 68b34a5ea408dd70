import { Widget } from '@lumino/widgets';

import { CellJobStatus, describeRun } from '../models';
import { APIError } from '../handler';
import { describeError } from './common';
import { stateClass } from './common';

/** Human readable status line of a cell job. */
export function describeCellJob(status: CellJobStatus): string {
  const id = status.job_id;
  const state = (status.state || '').toUpperCase();
  if (status.done) {
    if (status.status === 'ok') {
      const run = describeRun(status.run);
      return `Done: job ${id} finished${status.node ? ` on ${status.node}` : ''}${run ? ` (${run})` : ''}`;
    }
    if (state === 'CANCELLED') {
      return `Cancelled: job ${id}`;
    }
    return `Failed: job ${id} ended ${state ? state.toLowerCase() : 'with an error'}`;
  }
  if (state === 'RUNNING' || state === 'COMPLETING') {
    return `Running on ${status.node || 'a node'} (job ${id})`;
  }
  if (state === 'PENDING' || state === '') {
    return `Queued (job ${id})${status.reason ? `: waiting for ${status.reason}` : ''}`;
  }
  return `${state.toLowerCase()} (job ${id})`;
}

/**
 * A line above a cell's outputs telling where its batch job is, with
 * "Output" and "Cancel" buttons.
 */
export class CellJobStatusWidget extends Widget {
  constructor(options: { onCancel: () => void; onOutput: () => void }) {
    super();
    this.addClass('jp-HPC-cell-status');
    this._text = document.createElement('span');
    this._text.className = 'jp-HPC-cell-status-text';
    this._output = document.createElement('button');
    this._output.type = 'button';
    this._output.className = 'jp-HPC-button jp-HPC-cell-output-button';
    this._output.textContent = 'Job output';
    this._output.title = 'Show the job’s standard output and error';
    this._output.addEventListener('click', options.onOutput);
    this._cancel = document.createElement('button');
    this._cancel.type = 'button';
    this._cancel.className = 'jp-HPC-button jp-mod-warn jp-HPC-cell-cancel-button';
    this._cancel.textContent = 'Cancel';
    this._cancel.title = 'Cancel this batch job';
    this._cancel.addEventListener('click', options.onCancel);
    this._error = document.createElement('span');
    this._error.className = 'jp-HPC-cell-status-error';
    this.node.append(this._text, this._error, this._output, this._cancel);
  }

  update_(status: CellJobStatus, error: APIError | null = null): void {
    this.node.dataset.jobId = status.job_id;
    this.node.dataset.state = status.done
      ? status.status === 'ok'
        ? 'done'
        : 'failed'
      : (status.state || 'PENDING').toLowerCase();
    this.node.className = this.node.className
      .split(' ')
      .filter(c => !c.startsWith('jp-HPC-state-'))
      .join(' ');
    this.node.classList.add(
      status.done && status.status === 'ok'
        ? 'jp-HPC-state-done'
        : status.done
          ? 'jp-HPC-state-failed'
          : stateClass(status.state)
    );
    this._text.textContent = describeCellJob(status);
    this._error.textContent = error && !status.done ? ` — ${describeError(error)}` : '';
    this._cancel.hidden = status.done;
  }

  private _text: HTMLSpanElement;
  private _error: HTMLSpanElement;
  private _output: HTMLButtonElement;
  private _cancel: HTMLButtonElement;
}
