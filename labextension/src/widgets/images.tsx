import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatBytes } from '../handler';
import { ImagesModel } from '../models';
import { IImage, IPull, IRuntime } from '../tokens';
import { ActionButton, ErrorLine } from './common';

export interface IImagesActions {
  pull(ref: string): void;
  runWithImage?(image: IImage): void;
}

function PullProgress(props: { pull: IPull }): JSX.Element {
  const { pull } = props;
  if (pull.state === 'error') {
    return <div className="jp-HPC-pull jp-HPC-pull-error">Pull failed: {pull.message}</div>;
  }
  if (pull.state === 'done') {
    return <div className="jp-HPC-pull jp-HPC-pull-done">Pulled</div>;
  }
  const pct = pull.progress === null ? null : Math.round(pull.progress * 100);
  return (
    <div className="jp-HPC-pull">
      <progress
        className="jp-HPC-progress"
        max={100}
        value={pct === null ? undefined : pct}
      />
      <span>{pct === null ? 'pulling…' : `${pct}%`}</span>
      {pull.message ? <span className="jp-HPC-dim"> {pull.message}</span> : null}
    </div>
  );
}

/** Shown above the images when jobs run directly on the node instead of in containers. */
export function RuntimeNotice(props: { runtime: IRuntime | null }): JSX.Element | null {
  const { runtime } = props;
  if (!runtime || runtime.containers) {
    return null;
  }
  const text =
    runtime.message ??
    'Containers unavailable on this host: commands run directly on the node';
  return (
    <div
      className="jp-HPC-runtime-notice"
      role="status"
      title={runtime.reason ?? undefined}
    >
      {text}
      {runtime.reason ? (
        <div className="jp-HPC-runtime-reason jp-HPC-dim">{runtime.reason}</div>
      ) : null}
    </div>
  );
}

function ImageRow(props: {
  image: IImage;
  pull: IPull | undefined;
  actions: IImagesActions;
}): JSX.Element {
  const { image, pull, actions } = props;
  const [open, setOpen] = React.useState(false);
  const labels = Object.entries(image.labels ?? {});
  const needsPull = image.format === 'remote' && !image.pulled;
  return (
    <li
      className={`jp-HPC-item jp-HPC-image${open ? ' jp-mod-expanded' : ''}`}
      data-image-id={image.id}
    >
      <div
        className="jp-HPC-item-head"
        role="button"
        tabIndex={0}
        title={image.path ?? image.ref ?? image.name}
        onClick={() => setOpen(!open)}
        onKeyDown={e => {
          if (e.key === 'Enter' || e.key === ' ') {
            setOpen(!open);
          }
        }}
      >
        <span className="jp-HPC-caret">{open ? '▾' : '▸'}</span>
        <span className="jp-HPC-title">{image.title || image.name}</span>
        <span className={`jp-HPC-badge jp-HPC-format jp-HPC-format-${image.format}`}>
          {image.format}
        </span>
        {image.gpu ? <span className="jp-HPC-badge jp-HPC-gpu">GPU</span> : null}
        {image.runtime === 'charliecloud' ? (
          <span className="jp-HPC-badge jp-HPC-runtime" title="Runs with Charliecloud (ch-run)">
            ch-run
          </span>
        ) : null}
        {image.format === 'remote' && image.pulled ? (
          <span className="jp-HPC-badge jp-HPC-pulled" title="In the pull cache">pulled</span>
        ) : null}
        {image.owner !== 'site' && image.owner ? (
          <span className="jp-HPC-badge jp-HPC-owner">mine</span>
        ) : null}
        <span className="jp-HPC-size">{formatBytes(image.size)}</span>
      </div>
      {needsPull ? (
        <div className="jp-HPC-item-actions">
          {pull && pull.state === 'pulling' ? null : (
            <ActionButton
              label="Pull"
              title={`Pull ${image.ref} into the shared cache`}
              className="jp-HPC-pull-button"
              onClick={() => actions.pull(image.ref ?? '')}
            />
          )}
        </div>
      ) : null}
      {pull ? <PullProgress pull={pull} /> : null}
      {open ? (
        <div className="jp-HPC-details">
          {image.description ? <p className="jp-HPC-description">{image.description}</p> : null}
          <dl>
            <dt>Name</dt>
            <dd className="jp-HPC-mono">{image.name}</dd>
            <dt>Id</dt>
            <dd className="jp-HPC-mono">{image.id}</dd>
            {image.path ? (
              <>
                <dt>Path</dt>
                <dd className="jp-HPC-mono">{image.path}</dd>
              </>
            ) : null}
            {image.ref ? (
              <>
                <dt>Ref</dt>
                <dd className="jp-HPC-mono">{image.ref}</dd>
              </>
            ) : null}
            {image.apps && image.apps.length ? (
              <>
                <dt>Apps</dt>
                <dd>{image.apps.join(', ')}</dd>
              </>
            ) : null}
            {labels.map(([k, v]) => (
              <React.Fragment key={k}>
                <dt className="jp-HPC-mono">{k}</dt>
                <dd>{v}</dd>
              </React.Fragment>
            ))}
          </dl>
        </div>
      ) : null}
    </li>
  );
}

function PullForm(props: { model: ImagesModel; actions: IImagesActions }): JSX.Element {
  const [ref, setRef] = React.useState('');
  const submit = () => {
    const value = ref.trim();
    if (value) {
      props.actions.pull(value);
      setRef('');
    }
  };
  return (
    <div className="jp-HPC-pull-form">
      <input
        className="jp-mod-styled jp-HPC-pull-ref"
        type="text"
        placeholder="docker://… or oras://… ref"
        aria-label="Image reference to pull"
        value={ref}
        onChange={e => setRef(e.target.value)}
        onKeyDown={e => {
          if (e.key === 'Enter') {
            submit();
          }
        }}
      />
      <ActionButton
        label="Pull"
        title="Pull this image reference into the shared cache"
        className="jp-HPC-pull-ref-button"
        disabled={!ref.trim()}
        onClick={submit}
      />
    </div>
  );
}

function ImagesView(props: {
  model: ImagesModel;
  actions: IImagesActions;
}): JSX.Element {
  const { model, actions } = props;
  const [query, setQuery] = React.useState('');
  return (
    <div className="jp-HPC-section-body">
      <input
        className="jp-HPC-search jp-mod-styled"
        type="search"
        placeholder="Filter images"
        aria-label="Filter images"
        value={query}
        onChange={e => setQuery(e.target.value)}
      />
      <UseSignal signal={model.changed}>
        {() => {
          const images = model.filter(query);
          return (
            <>
              <RuntimeNotice runtime={model.runtime} />
              <ErrorLine error={model.error} />
              {!model.loaded ? (
                <div className="jp-HPC-empty">Loading images…</div>
              ) : images.length === 0 && !model.error ? (
                <div className="jp-HPC-empty">
                  {query ? 'No image matches the filter.' : 'No images found.'}
                </div>
              ) : (
                <ul className="jp-HPC-list">
                  {images.map(image => (
                    <ImageRow
                      key={image.id}
                      image={image}
                      pull={model.pullOf(image.ref)}
                      actions={actions}
                    />
                  ))}
                </ul>
              )}
              {model.pulls
                .filter(p => !model.images.some(i => i.ref === p.ref))
                .map(p => (
                  <div className="jp-HPC-other-pull" key={p.ref} data-ref={p.ref}>
                    <div className="jp-HPC-mono">{p.ref}</div>
                    <PullProgress pull={p} />
                  </div>
                ))}
            </>
          );
        }}
      </UseSignal>
      <PullForm model={model} actions={actions} />
    </div>
  );
}

/** The "Images" section of the HPC sidebar. */
export class ImagesSection extends ReactWidget {
  constructor(
    readonly model: ImagesModel,
    readonly actions: IImagesActions
  ) {
    super();
    this.addClass('jp-HPC-section');
    this.addClass('jp-HPC-images');
    this.id = 'jupyter-hpc-images';
    this.title.label = 'Images';
  }

  render(): JSX.Element {
    return <ImagesView model={this.model} actions={this.actions} />;
  }
}
