import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ServicesModel, sortServices } from '../models';
import { IService, IShareRecord, ISharing, isFinished } from '../tokens';
import { ActionButton, ErrorLine, StateBadge } from './common';

export interface IServicesActions {
  open(service: IService, where: 'tab' | 'browser'): void;
  stop(service: IService): void;
  start(): void;
  /** Ask with whom to share the service (users and hub groups) and share it. */
  share(service: IService, current?: IShareRecord): void;
  /** Revoke the share of the service. */
  revoke(service: IService): void;
  /** Copy the address the people it is shared with open. */
  copyShareLink(share: IShareRecord): void;
}

/** "bob, carol, group team" */
export function describeShare(share: IShareRecord): string {
  return [...share.users, ...share.groups.map(g => `group ${g}`)].join(', ');
}

function ShareLine(props: {
  service: IService;
  share: IShareRecord | undefined;
  sharing: ISharing | null;
  actions: IServicesActions;
  ready: boolean;
}): JSX.Element | null {
  const { service, share, sharing, actions, ready } = props;
  if (share) {
    return (
      <div className="jp-HPC-share">
        <span className="jp-HPC-share-who" title={`Open for them at ${share.url}`}>
          Shared with {describeShare(share)}
        </span>
        <ActionButton
          label="Copy link"
          title="Copy the address they open (with their own hub login)"
          className="jp-HPC-share-copy-button"
          onClick={() => actions.copyShareLink(share)}
        />
        <ActionButton
          label="Change"
          title="Change with whom this service is shared"
          className="jp-HPC-share-button"
          onClick={() => actions.share(service, share)}
        />
        <ActionButton
          label="Revoke"
          title="Stop sharing this service now"
          className="jp-HPC-revoke-button jp-mod-warn"
          onClick={() => actions.revoke(service)}
        />
      </div>
    );
  }
  const available = !!sharing?.available;
  const why = !sharing
    ? 'Checking whether sharing is possible…'
    : !available
      ? `Sharing is unavailable: ${sharing.reason}`
      : !ready
        ? 'The service can be shared once it runs'
        : 'Let other hub users or groups open this service with their own login';
  return (
    <div className="jp-HPC-item-actions">
      <ActionButton
        label="Share…"
        title={why}
        className="jp-HPC-share-button"
        disabled={!available || !ready}
        onClick={() => actions.share(service)}
      />
    </div>
  );
}

function ServiceRow(props: {
  service: IService;
  actions: IServicesActions;
  share?: IShareRecord;
  sharing: ISharing | null;
}): JSX.Element {
  const { service, actions, share, sharing } = props;
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
      {finished ? null : (
        <ShareLine
          service={service}
          share={share}
          sharing={sharing}
          actions={actions}
          ready={ready}
        />
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
                  <ServiceRow
                    key={s.job_id}
                    service={s}
                    actions={actions}
                    share={model.shareOf(s.job_id)}
                    sharing={model.sharing}
                  />
                ))}
              </ul>
            )}
            {model.sharedWithMe.length > 0 ? (
              <div className="jp-HPC-shared-with-me">
                <div className="jp-HPC-subheading">Shared with you</div>
                <ul className="jp-HPC-list">
                  {model.sharedWithMe.map(s => (
                    <li
                      key={`${s.owner}/${s.job_id}`}
                      className="jp-HPC-item jp-HPC-shared-item"
                    >
                      <a href={s.url} target="_blank" rel="noopener noreferrer">
                        {s.name || 'service'}
                      </a>{' '}
                      <span className="jp-HPC-dim">
                        by {s.owner} (job {s.job_id})
                      </span>
                    </li>
                  ))}
                </ul>
              </div>
            ) : null}
          </div>
        )}
      </UseSignal>
    );
  }
}
