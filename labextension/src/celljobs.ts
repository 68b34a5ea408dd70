/**
 * Runs notebook cells as batch jobs: submits the code, shows the job's status
 * above the cell's outputs and appends the outputs as they arrive.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import type * as nbformat from '@jupyterlab/nbformat';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { PanelLayout, Widget } from '@lumino/widgets';

import { APIError } from './handler';
import { CellJob, CellJobStatus } from './models';
import { CELL_METADATA_KEY, ICellJobRequest } from './tokens';
import { CellJobStatusWidget } from './widgets/cellstatus';

/** What a cell records about its batch job in its metadata. */
export interface ICellJobMetadata {
  job_id: string;
  next: number;
  done: boolean;
  state: string;
  status: 'ok' | 'error' | null;
}

interface IEntry {
  cell: CodeCell;
  job: CellJob;
  widget: CellJobStatusWidget;
}

export class CellJobController {
  constructor(options: {
    serverSettings?: ServerConnection.ISettings;
    openOutput: (jobId: string) => void;
    notify: (job: CellJob, status: CellJobStatus) => void;
  }) {
    this._settings = options.serverSettings ?? ServerConnection.makeSettings();
    this._openOutput = options.openOutput;
    this._notify = options.notify;
  }

  /** The job currently followed for `cell`, if any. */
  jobOf(cell: CodeCell): CellJob | undefined {
    return this._entries.get(cell.model.id)?.job;
  }

  /** Submit the cell's code; resolves with the job id once Slurm accepted it. */
  async run(
    panel: NotebookPanel,
    cell: CodeCell,
    request: Omit<ICellJobRequest, 'code' | 'cwd'>
  ): Promise<string> {
    const previous = this._entries.get(cell.model.id);
    if (previous && !previous.job.status.done) {
      throw new APIError(
        `This cell is already running as job ${previous.job.jobId}; cancel it first.`,
        409
      );
    }
    const path = panel.context.path;
    const cwd = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
    const jobId = await CellJob.submit(
      { ...request, code: cell.model.sharedModel.getSource(), cwd },
      this._settings
    );
    cell.model.outputs.clear();
    cell.model.executionCount = null;
    this.attach(cell, jobId, 0);
    return jobId;
  }

  /** Follow `jobId` for `cell`, appending outputs from index `since`. */
  attach(cell: CodeCell, jobId: string, since: number): CellJob {
    this._detach(cell.model.id);
    const job = new CellJob(jobId, { since, serverSettings: this._settings });
    const widget = new CellJobStatusWidget({
      onCancel: () => void this.confirmCancel(cell),
      onOutput: () => this._openOutput(jobId)
    });
    widget.update_(job.status);
    insertStatusWidget(cell, widget);
    const entry: IEntry = { cell, job, widget };
    this._entries.set(cell.model.id, entry);
    this._writeMetadata(cell, job.status);

    job.outputsReceived.connect((_, outputs) => {
      for (const output of outputs) {
        try {
          cell.model.outputs.add(output as nbformat.IOutput);
          const count = (output as nbformat.IExecuteResult).execution_count;
          if (output.output_type === 'execute_result' && typeof count === 'number') {
            cell.model.executionCount = count;
          }
        } catch (error) {
          console.warn('jupyter-hpc: could not show an output', error, output);
        }
      }
    });
    job.statusChanged.connect((_, status) => {
      widget.update_(status, job.error);
      this._writeMetadata(cell, status);
      if (status.done) {
        this._notify(job, status);
      }
    });
    cell.disposed.connect(() => this._detach(cell.model.id));
    return job;
  }

  /** Resume following unfinished jobs recorded in a notebook's cells. */
  resume(panel: NotebookPanel): void {
    for (const cell of panel.content.widgets) {
      if (cell instanceof CodeCell) {
        const meta = cell.model.getMetadata(CELL_METADATA_KEY) as
          | ICellJobMetadata
          | undefined;
        if (meta && meta.job_id && !meta.done && !this._entries.has(cell.model.id)) {
          this.attach(cell, String(meta.job_id), Number(meta.next) || 0);
        }
      }
    }
  }

  /** Ask for confirmation, then cancel the cell's job. */
  async confirmCancel(cell: CodeCell): Promise<boolean> {
    const entry = this._entries.get(cell.model.id);
    if (!entry || entry.job.status.done) {
      return false;
    }
    const result = await showDialog({
      title: 'Cancel batch job?',
      body: `Job ${entry.job.jobId} will be cancelled and its outputs so far are kept.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel job' })
      ]
    });
    if (!result.button.accept) {
      return false;
    }
    await entry.job.cancel();
    return true;
  }

  dispose(): void {
    for (const id of Array.from(this._entries.keys())) {
      this._detach(id);
    }
  }

  private _writeMetadata(cell: CodeCell, status: CellJobStatus): void {
    if (cell.isDisposed) {
      return;
    }
    const meta: ICellJobMetadata = {
      job_id: status.job_id,
      next: status.next,
      done: status.done,
      state: status.state,
      status: status.status
    };
    const before = cell.model.getMetadata(CELL_METADATA_KEY);
    if (JSON.stringify(before) !== JSON.stringify(meta)) {
      cell.model.setMetadata(CELL_METADATA_KEY, meta);
    }
  }

  private _detach(id: string): void {
    const entry = this._entries.get(id);
    if (!entry) {
      return;
    }
    this._entries.delete(id);
    entry.job.dispose();
    entry.widget.dispose();
  }

  private _settings: ServerConnection.ISettings;
  private _openOutput: (jobId: string) => void;
  private _notify: (job: CellJob, status: CellJobStatus) => void;
  private _entries = new Map<string, IEntry>();
}

/** Put the status line between the cell's input and its outputs. */
function insertStatusWidget(cell: CodeCell, widget: Widget): void {
  const layout = cell.layout as PanelLayout;
  const widgets = layout.widgets;
  let index = widgets.findIndex(
    w =>
      w.hasClass('jp-CellResizeHandle') || w.hasClass('jp-Cell-outputWrapper')
  );
  if (index < 0) {
    index = Math.max(0, widgets.length - 1);
  }
  layout.insertWidget(index, widget);
}
