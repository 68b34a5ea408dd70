import { MainAreaWidget } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { JobsModel } from '../models';
import { hpcIcon } from '../icons';
import { isFinished } from '../tokens';
import { describeError } from './common';
import { APIError } from '../handler';

type Stream = 'stdout' | 'stderr';

/**
 * Shows a job's standard output and error, appending new text while the job
 * runs and stopping once it has finished and everything was read.
 */
export class JobOutputView extends Widget {
  constructor(
    readonly jobId: string,
    readonly model: JobsModel
  ) {
    super();
    this.addClass('jp-HPC-output-view');
    this.node.dataset.jobId = jobId;
    this._status = document.createElement('div');
    this._status.className = 'jp-HPC-output-status';
    this.node.appendChild(this._status);
    for (const stream of ['stdout', 'stderr'] as Stream[]) {
      const h = document.createElement('h3');
      h.textContent = stream === 'stdout' ? 'Standard output' : 'Standard error';
      const pre = document.createElement('pre');
      pre.className = `jp-HPC-output jp-HPC-output-${stream}`;
      this.node.append(h, pre);
      this._pre[stream] = pre;
    }
    this._poll = new Poll({
      factory: () => this._tick(),
      frequency: { interval: 2000, backoff: true, max: 30 * 1000 },
      name: `jupyter-hpc:output-${jobId}`,
      standby: 'when-hidden'
    });
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  private async _tick(): Promise<void> {
    let state = 'UNKNOWN';
    try {
      const job = await this.model.fetchJob(this.jobId);
      state = job.state;
      this._status.textContent = `Job ${this.jobId} (${job.name}): ${job.state.toLowerCase()}${
        job.nodes ? ` on ${job.nodes}` : ''
      }`;
    } catch (e) {
      const err = e as APIError;
      if (err.status === 404) {
        state = 'GONE';
      } else {
        this._status.textContent = describeError(err);
        throw e;
      }
    }
    let eof = true;
    for (const stream of ['stdout', 'stderr'] as Stream[]) {
      // Read everything available now, in chunks.
      for (let i = 0; i < 50; i++) {
        const chunk = await this.model.output(this.jobId, stream, this._offset[stream]);
        if (chunk.data) {
          this._pre[stream].appendChild(document.createTextNode(chunk.data));
        }
        const advanced = chunk.offset !== this._offset[stream];
        this._offset[stream] = chunk.offset;
        if (chunk.eof || !advanced) {
          eof = eof && chunk.eof;
          break;
        }
      }
    }
    if (isFinished(state) && eof) {
      this._status.textContent += ' — complete';
      setTimeout(() => void this._poll.stop(), 0);
    }
  }

  private _status: HTMLDivElement;
  private _pre: Record<Stream, HTMLPreElement> = {} as any;
  private _offset: Record<Stream, number> = { stdout: 0, stderr: 0 };
  private _poll: Poll;
}

export function createOutputWidget(
  jobId: string,
  model: JobsModel
): MainAreaWidget<JobOutputView> {
  const content = new JobOutputView(jobId, model);
  const widget = new MainAreaWidget({ content });
  widget.id = `jupyter-hpc-output-${jobId}`;
  widget.title.label = `Job ${jobId} output`;
  widget.title.icon = hpcIcon;
  widget.title.closable = true;
  return widget;
}
