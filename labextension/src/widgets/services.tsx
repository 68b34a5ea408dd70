import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ServicesModel, sortServices } from '../models';
import { IService, isFinished } from '../tokens';
import { ActionButton, ErrorLine, StateBadge } from './common';

export interface IServicesActions {
  open(service: IService, where: 'tab' | 'browser'): void;
  stop(service: IService): void;
  start(): void;
}

function ServiceRow(props: {
  service: IService;
  actions: IServicesActions;
}): JSX.Element {
  const { service, actions } = props;
  const ready = !!service.url && service.state?.toUpperCase() === 'RUNNING';
  const finished = isFinished(service.state);
  return (
    <li
      className={`jp-HPC-item jp-HPC-service${finished ? ' jp-HPC-finished' : ''}`}
      data-job-id={service.job_id}
    >
      <div className="jp-HPC-item-head">
        <span className="jp-HPC-title">{service.name || service.job_id}</span>
        <StateBadge state={service.state} />
      </div>
      <div className="jp-HPC-item-meta">
        <span className="jp-HPC-mono">#{service.job_id}</span>
        {service.node ? <span>on {service.node}</span> : null}
        {!ready && !finished ? <span className="jp-HPC-dim">starting…</span> : null}
      </div>
      {finished ? null : (
      <div className="jp-HPC-item-actions">
        <ActionButton
          label="Open"
          title="Open in a JupyterLab tab"
          className="jp-HPC-open-tab-button"
          disabled={!ready}
          onClick={() => actions.open(service, 'tab')}
        />
        <ActionButton
          label="Browser tab"
          title="Open in a new browser tab"
          className="jp-HPC-open-browser-button"
          disabled={!ready}
          onClick={() => actions.open(service, 'browser')}
        />
        <ActionButton
          label="Stop"
          title={`Stop service job ${service.job_id}`}
          className="jp-HPC-stop-button jp-mod-warn"
          onClick={() => actions.stop(service)}
        />
      </div>
      )}
    </li>
  );
}


/** The "Services" section of the HPC sidebar. */
export class ServicesSection extends ReactWidget {
  constructor(
    readonly model: ServicesModel,
    readonly actions: IServicesActions
  ) {
    super();
    this.addClass('jp-HPC-section');
    this.addClass('jp-HPC-services');
    this.id = 'jupyter-hpc-services';
    this.title.label = 'Services';
  }

  render(): JSX.Element {
    const { model, actions } = this;
    return (
      <UseSignal signal={model.changed}>
        {() => (
          <div className="jp-HPC-section-body">
            <ErrorLine error={model.error} />
            <div className="jp-HPC-item-actions">
              <ActionButton
                label="Start service…"
                title="Start a web service (e.g. a dashboard) as a batch job"
                className="jp-HPC-start-service-button"
                onClick={() => actions.start()}
              />
            </div>
            {!model.loaded ? (
              <div className="jp-HPC-empty">Loading services…</div>
            ) : model.services.every(s => isFinished(s.state)) && !model.error ? (
              <div className="jp-HPC-empty">No services running.</div>
            ) : (
              <ul className="jp-HPC-list">
                {sortServices(model.services)
                  .filter(s => !isFinished(s.state))
                  .map(s => (
                  <ServiceRow key={s.job_id} service={s} actions={actions} />
                ))}
              </ul>
            )}
          </div>
        )}
      </UseSignal>
    );
  }
}
