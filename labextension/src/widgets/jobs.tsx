import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import {
  JobsModel,
  VitalsModel,
  formatDuration,
  formatMb,
  sortJobs
} from '../models';
import { IJob, IJobVitals, IVitalsSample, isFinished } from '../tokens';
import { ActionButton, ErrorLine, StateBadge } from './common';
import { Sparkline } from './sparkline';

export interface IJobsActions {
  cancel(job: IJob): void;
  openOutput(job: IJob): void;
}

/** Live charts and figures of a running job; parts Slurm cannot report say so. */
export function JobVitals(props: {
  vitals: IJobVitals;
  history: ReadonlyArray<IVitalsSample>;
}): JSX.Element {
  const { vitals, history } = props;
  const { cpu, memory, gpu, time } = vitals;
  const cpuValue =
    cpu.available && cpu.percent !== null && cpu.percent !== undefined
      ? `${Math.round(cpu.percent)}%`
      : cpu.available
        ? '…'
        : 'n/a';
  const memValue = memory.available ? formatMb(memory.current_mb) || '…' : 'n/a';
  const memMax = Math.max(
    memory.requested_mb ?? 0,
    memory.peak_mb ?? 0,
    ...history.map(s => s.memoryMb ?? 0)
  );
  const timeText = time.limit_s
    ? `${formatDuration(time.elapsed_s)} of ${formatDuration(time.limit_s)}`
    : `${formatDuration(time.elapsed_s)} (no limit)`;
  const memTitle = memory.available
    ? `Memory in use ${formatMb(memory.current_mb)}, peak ${formatMb(memory.peak_mb)}` +
      (memory.requested_mb ? ` of ${formatMb(memory.requested_mb)} requested` : '') +
      ` (${memory.source})`
    : `Memory: unavailable: ${memory.reason}`;
  const cpuTitle = cpu.available
    ? `CPU load ${cpuValue} of ${cpu.cpus ?? '?'} CPU(s); CPU time ${formatDuration(cpu.cpu_seconds)} (${cpu.source})`
    : `CPU: unavailable: ${cpu.reason}`;
  return (
    <div className="jp-HPC-vitals" data-job-id={vitals.job_id}>
      <Sparkline
        className="jp-HPC-spark-cpu"
        label="CPU"
        value={cpuValue}
        title={cpuTitle}
        max={100}
        values={history.map(s => s.cpuPercent)}
      />
      <Sparkline
        className="jp-HPC-spark-mem"
        label="Mem"
        value={memValue}
        title={memTitle}
        max={memMax || undefined}
        values={history.map(s => s.memoryMb)}
      />
      {gpu.count > 0 ? (
        gpu.available ? (
          <Sparkline
            className="jp-HPC-spark-gpu"
            label="GPU"
            value={
              gpu.utilization !== null && gpu.utilization !== undefined
                ? `${Math.round(gpu.utilization)}%`
                : '…'
            }
            title={`GPU utilisation; memory ${formatMb(gpu.memory_used_mb)} of ${formatMb(gpu.memory_total_mb)} (${gpu.source})`}
            max={100}
            values={history.map(s => s.gpuPercent)}
          />
        ) : (
          <span
            className="jp-HPC-vitals-na jp-HPC-gpu-na"
            title={`GPU vitals unavailable: ${gpu.reason}`}
          >
            GPU n/a
          </span>
        )
      ) : null}
      <div className="jp-HPC-vitals-text">
        {memory.available && memory.peak_mb !== null ? (
          <span title={memTitle}>peak {formatMb(memory.peak_mb)}</span>
        ) : null}
        <span className="jp-HPC-vitals-time" title="elapsed of the time limit">
          {timeText}
        </span>
        {time.fraction !== null ? (
          <progress
            className="jp-HPC-vitals-timebar"
            max={1}
            value={time.fraction}
          />
        ) : null}
      </div>
    </div>
  );
}

function JobRow(props: {
  job: IJob;
  actions: IJobsActions;
  vitals?: VitalsModel | null;
}): JSX.Element {
  const { job, actions, vitals } = props;
  const live = vitals && !isFinished(job.state) ? vitals.get(job.id) : undefined;
  const finished = isFinished(job.state);
  const where =
    job.state?.toUpperCase() === 'PENDING'
      ? job.reason
        ? `waiting: ${job.reason}`
        : 'waiting'
      : job.nodes
        ? `on ${job.nodes}`
        : '';
  return (
    <li
      className={`jp-HPC-item jp-HPC-job${finished ? ' jp-HPC-finished' : ''}`}
      data-job-id={job.id}
    >
      <div className="jp-HPC-item-head">
        <span className="jp-HPC-title" title={job.name}>
          {job.name || job.id}
        </span>
        <StateBadge state={job.state} />
      </div>
      <div className="jp-HPC-item-meta">
        <span className="jp-HPC-mono">#{job.id}</span>
        <span>{job.kind}</span>
        {job.partition ? <span>{job.partition}</span> : null}
        {job.gpus ? <span className="jp-HPC-badge jp-HPC-gpu">{job.gpus} GPU</span> : null}
        {where ? <span className="jp-HPC-where">{where}</span> : null}
        {job.elapsed ? <span title="elapsed">{job.elapsed}</span> : null}
      </div>
      {live && vitals ? (
        <JobVitals vitals={live} history={vitals.history(job.id)} />
      ) : null}
      <div className="jp-HPC-item-actions">
        <ActionButton
          label="Output"
          title={`Show the output of job ${job.id}`}
          className="jp-HPC-output-button"
          onClick={() => actions.openOutput(job)}
        />
        {finished ? null : (
          <ActionButton
            label="Cancel"
            title={`Cancel job ${job.id}`}
            className="jp-HPC-cancel-button jp-mod-warn"
            onClick={() => actions.cancel(job)}
          />
        )}
      </div>
    </li>
  );
}


function JobsView(props: {
  model: JobsModel;
  actions: IJobsActions;
  vitals?: VitalsModel | null;
}): JSX.Element {
  const { model, actions, vitals } = props;
  const [showFinished, setShowFinished] = React.useState(false);
  // Re-render when the jobs or their vitals change.
  const [, setTick] = React.useState(0);
  React.useEffect(() => {
    if (!vitals) {
      return;
    }
    const update = () => setTick(t => t + 1);
    vitals.changed.connect(update);
    return () => {
      vitals.changed.disconnect(update);
    };
  }, [vitals]);
  return (
    <UseSignal signal={model.changed}>
      {() => {
        const all = sortJobs(model.jobs);
        const finished = all.filter(j => isFinished(j.state)).length;
        const shown = showFinished ? all : all.filter(j => !isFinished(j.state));
        return (
          <div className="jp-HPC-section-body">
            <ErrorLine error={model.error} />
            {!model.loaded ? (
              <div className="jp-HPC-empty">Loading jobs…</div>
            ) : shown.length === 0 && !model.error ? (
              <div className="jp-HPC-empty">
                No running or queued jobs. Run a notebook cell as a batch job
                from its context menu or toolbar.
              </div>
            ) : (
              <ul className="jp-HPC-list">
                {shown.map(job => (
                  <JobRow
                    key={job.id}
                    job={job}
                    actions={actions}
                    vitals={vitals}
                  />
                ))}
              </ul>
            )}
            {finished > 0 ? (
              <label className="jp-HPC-toggle">
                <input
                  type="checkbox"
                  className="jp-HPC-show-finished"
                  checked={showFinished}
                  onChange={e => setShowFinished(e.target.checked)}
                />{' '}
                Show finished jobs ({finished})
              </label>
            ) : null}
          </div>
        );
      }}
    </UseSignal>
  );
}

/** The "Jobs" section of the HPC sidebar. */
export class JobsSection extends ReactWidget {
  constructor(
    readonly model: JobsModel,
    readonly actions: IJobsActions,
    readonly vitals: VitalsModel | null = null
  ) {
    super();
    this.addClass('jp-HPC-section');
    this.addClass('jp-HPC-jobs');
    this.id = 'jupyter-hpc-jobs';
    this.title.label = 'Jobs';
  }

  /** Fresh vitals as soon as the section is shown again (their poll stood by meanwhile). */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.vitals?.refresh().catch(() => undefined);
  }

  render(): JSX.Element {
    return (
      <JobsView model={this.model} actions={this.actions} vitals={this.vitals} />
    );
  }
}
