import * as React from 'react';

import { APIError } from '../handler';
import { isFinished } from '../tokens';

/** CSS modifier for a Slurm state. */
export function stateClass(state: string | null | undefined): string {
  const s = (state ?? '').toUpperCase();
  if (s === 'RUNNING' || s === 'COMPLETING') {
    return 'jp-HPC-state-running';
  }
  if (s === 'PENDING' || s === 'CONFIGURING' || s === 'REQUEUED') {
    return 'jp-HPC-state-pending';
  }
  if (s === 'COMPLETED') {
    return 'jp-HPC-state-done';
  }
  if (isFinished(s)) {
    return 'jp-HPC-state-failed';
  }
  return 'jp-HPC-state-other';
}

export function StateBadge(props: { state: string | null }): JSX.Element {
  return (
    <span className={`jp-HPC-badge jp-HPC-state ${stateClass(props.state)}`}>
      {(props.state ?? 'UNKNOWN').toLowerCase()}
    </span>
  );
}

/** What to tell the user about a failed request. */
export function describeError(error: APIError): string {
  if (error.isUnavailable) {
    return `Slurm is not answering; retrying. (${error.message})`;
  }
  if (error.isNetwork) {
    return 'The Jupyter server cannot be reached; retrying.';
  }
  if (error.status === 404) {
    return 'The jupyter-hpc server extension does not answer: enable it with "jupyter server extension enable jupyter_hpc" and restart JupyterLab.';
  }
  if (error.status === 403) {
    return `Not allowed: ${error.message}`;
  }
  return error.message;
}

export function ErrorLine(props: { error: APIError | null }): JSX.Element | null {
  if (!props.error) {
    return null;
  }
  return (
    <div className="jp-HPC-error" role="alert">
      {describeError(props.error)}
    </div>
  );
}

export function ActionButton(props: {
  label: string;
  title?: string;
  className?: string;
  disabled?: boolean;
  onClick: () => void;
}): JSX.Element {
  return (
    <button
      type="button"
      className={`jp-HPC-button ${props.className ?? ''}`}
      title={props.title ?? props.label}
      disabled={props.disabled}
      onClick={event => {
        event.stopPropagation();
        props.onClick();
      }}
    >
      {props.label}
    </button>
  );
}
