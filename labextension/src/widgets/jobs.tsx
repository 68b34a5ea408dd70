import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { JobsModel, sortJobs } from '../models';
import { IJob, isFinished } from '../tokens';
import { ActionButton, ErrorLine, StateBadge } from './common';

export interface IJobsActions {
  cancel(job: IJob): void;
  openOutput(job: IJob): void;
}

function JobRow(props: { job: IJob; actions: IJobsActions }): JSX.Element {
  const { job, actions } = props;
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


function JobsView(props: { model: JobsModel; actions: IJobsActions }): JSX.Element {
  const { model, actions } = props;
  const [showFinished, setShowFinished] = React.useState(false);
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
                  <JobRow key={job.id} job={job} actions={actions} />
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
    readonly actions: IJobsActions
  ) {
    super();
    this.addClass('jp-HPC-section');
    this.addClass('jp-HPC-jobs');
    this.id = 'jupyter-hpc-jobs';
    this.title.label = 'Jobs';
  }

  render(): JSX.Element {
    return <JobsView model={this.model} actions={this.actions} />;
  }
}
