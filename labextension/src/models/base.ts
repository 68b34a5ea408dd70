import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { APIError } from '../handler';

/** Options shared by every polling model. */
export interface IPollingModelOptions {
  /** Seconds between refreshes (default 10). */
  refreshInterval?: number;
  /** Server connection settings (tests pass a fake `fetch` here). */
  serverSettings?: ServerConnection.ISettings;
  /** Start polling right away (default true). */
  autoStart?: boolean;
  /**
   * Whether the data is shown at all (e.g. the sidebar panel is visible). While
   * it returns false - or the browser tab is hidden - the poll stands by.
   */
  isActive?: () => boolean;
}

/** Whether the browser tab is hidden (false outside a browser). */
function documentHidden(): boolean {
  return typeof document !== 'undefined' && document.hidden === true;
}

/**
 * A model refreshed by a `Poll`: one request per interval, backing off while
 * the server or Slurm does not answer, and standing by while the page is
 * hidden.
 */
export abstract class PollingModel implements IDisposable {
  constructor(options: IPollingModelOptions = {}) {
    this.serverSettings =
      options.serverSettings ?? ServerConnection.makeSettings();
    this._interval = Math.max(1, options.refreshInterval ?? 10) * 1000;
    this._poll = new Poll({
      auto: options.autoStart ?? true,
      factory: () => this._tick(),
      frequency: { interval: this._interval, backoff: true, max: 60 * 1000 },
      name: `jupyter-hpc:${this.constructor.name}`,
      standby: options.isActive
        ? () => documentHidden() || !options.isActive!()
        : 'when-hidden'
    });
  }

  readonly serverSettings: ServerConnection.ISettings;

  /** Emitted after each refresh that changed the data. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted when the error state changes (`null` once requests succeed again). */
  get errorChanged(): ISignal<this, APIError | null> {
    return this._errorChanged;
  }

  /** The last refresh error, or `null`. */
  get error(): APIError | null {
    return this._error;
  }

  /** Whether the first refresh has completed (successfully or not). */
  get loaded(): boolean {
    return this._loaded;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Seconds between refreshes. */
  get refreshInterval(): number {
    return this._interval / 1000;
  }
  set refreshInterval(seconds: number) {
    this._interval = Math.max(1, seconds) * 1000;
    this._poll.frequency = {
      interval: this._interval,
      backoff: true,
      max: 60 * 1000
    };
  }

  /** Refresh now; resolves once the data is fresh. */
  async refresh(): Promise<void> {
    await this._poll.refresh();
    await this._poll.tick;
  }

  /** Start polling (when created with `autoStart: false`). */
  start(): Promise<void> {
    return this._poll.start();
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._poll.dispose();
    Signal.clearData(this);
  }

  /** Fetch the data; return true when it changed. */
  protected abstract fetch(): Promise<boolean>;

  protected emitChanged(): void {
    this._changed.emit();
  }

  private async _tick(): Promise<void> {
    try {
      const changed = await this.fetch();
      const hadError = this._error !== null;
      this._setError(null);
      if (changed || !this._loaded || hadError) {
        this._loaded = true;
        this._changed.emit();
      }
    } catch (reason) {
      const error =
        reason instanceof APIError
          ? reason
          : new APIError(String((reason as Error)?.message ?? reason), 0);
      const first = !this._loaded;
      this._loaded = true;
      this._setError(error);
      if (first) {
        this._changed.emit();
      }
      // Rejecting makes the poll back off until requests succeed again.
      throw error;
    }
  }

  private _setError(error: APIError | null): void {
    const before = this._error;
    this._error = error;
    const same =
      before === error ||
      (before !== null &&
        error !== null &&
        before.status === error.status &&
        before.message === error.message);
    if (!same) {
      this._errorChanged.emit(error);
    }
  }

  private _poll: Poll;
  private _interval: number;
  private _error: APIError | null = null;
  private _loaded = false;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _errorChanged = new Signal<this, APIError | null>(this);
}

/** Shallow JSON comparison used to avoid re-rendering unchanged lists. */
export function sameJSON(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
