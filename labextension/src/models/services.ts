import { endpoint, requestAPI } from '../handler';
import {
  IService,
  IServiceRequest,
  IShare,
  IShareRecord,
  ISharing,
  isFinished
} from '../tokens';
import { IPollingModelOptions, PollingModel, sameJSON } from './base';

/** Web services (notebook servers, dashboards, ...) running as the user's jobs. */
export class ServicesModel extends PollingModel {
  constructor(options: IPollingModelOptions = {}) {
    super(options);
  }

  get services(): ReadonlyArray<IService> {
    return this._services;
  }

  get(jobId: string): IService | undefined {
    return this._services.find(s => s.job_id === jobId);
  }

  async launch(request: IServiceRequest): Promise<IService> {
    const service = await requestAPI<IService>(
      'services',
      { method: 'POST', body: JSON.stringify(request) },
      this.serverSettings
    );
    this._services = [
      ...this._services.filter(s => s.job_id !== service.job_id),
      service
    ];
    this.emitChanged();
    return service;
  }

  /** Whether services can be shared here (`null` until known). */
  get sharing(): ISharing | null {
    return this._sharing;
  }

  /** The share of one of the user's services, if it is shared. */
  shareOf(jobId: string): IShareRecord | undefined {
    return this._shares.find(s => s.job_id === jobId);
  }

  /** Services other users share with this user. */
  get sharedWithMe(): ReadonlyArray<IShareRecord> {
    return this._sharedWithMe;
  }

  /** Share a service with hub users and groups (replaces the lists; empty lists revoke). */
  async share(jobId: string, users: string[], groups: string[]): Promise<IShare> {
    const share = await requestAPI<IShare>(
      endpoint(['services', jobId, 'shares']),
      { method: 'PUT', body: JSON.stringify({ users, groups }) },
      this.serverSettings
    );
    this._shares = this._shares.filter(s => s.job_id !== jobId);
    if (share.shared && share.url) {
      this._shares.push({
        owner: share.owner,
        job_id: share.job_id,
        name: share.name,
        users: share.users,
        groups: share.groups,
        url: share.url
      });
    }
    this.emitChanged();
    return share;
  }

  /** Revoke the share of a service at once. */
  async revoke(jobId: string): Promise<void> {
    await requestAPI<IShare>(
      endpoint(['services', jobId, 'shares']),
      { method: 'DELETE' },
      this.serverSettings
    );
    this._shares = this._shares.filter(s => s.job_id !== jobId);
    this.emitChanged();
  }

  async stop(jobId: string): Promise<void> {
    await requestAPI<unknown>(
      endpoint(['services', jobId]),
      { method: 'DELETE' },
      this.serverSettings
    );
    this._services = this._services.filter(s => s.job_id !== jobId);
    this.emitChanged();
    void this.refresh().catch(() => undefined);
  }

  protected async fetch(): Promise<boolean> {
    const { services } = await requestAPI<{ services: IService[] }>(
      'services',
      {},
      this.serverSettings
    );
    const list = services ?? [];
    let changed = !sameJSON(list, this._services);
    this._services = list;
    changed = (await this._fetchShares()) || changed;
    return changed;
  }

  /** Sharing status (asked once) and the current shares while sharing is available. */
  private async _fetchShares(): Promise<boolean> {
    let changed = false;
    if (this._sharing === null) {
      try {
        this._sharing = await requestAPI<ISharing>(
          'sharing',
          {},
          this.serverSettings
        );
      } catch (error) {
        // Older servers have no sharing endpoints: report them as unavailable.
        this._sharing = {
          available: false,
          reason: `sharing status unknown (${String((error as Error)?.message ?? error)})`
        };
      }
      changed = true;
    }
    if (!this._sharing.available) {
      return changed;
    }
    try {
      const answer = await requestAPI<{
        shares: IShareRecord[];
        shared_with_me: IShareRecord[];
      }>('shares', {}, this.serverSettings);
      const shares = answer.shares ?? [];
      const withMe = answer.shared_with_me ?? [];
      changed =
        changed ||
        !sameJSON(shares, this._shares) ||
        !sameJSON(withMe, this._sharedWithMe);
      this._shares = shares;
      this._sharedWithMe = withMe;
    } catch {
      // The share service is down for a moment: keep the last lists.
    }
    return changed;
  }

  private _services: IService[] = [];
  private _sharing: ISharing | null = null;
  private _shares: IShareRecord[] = [];
  private _sharedWithMe: IShareRecord[] = [];
}

/** Running services first, then newest first. */
export function sortServices(services: ReadonlyArray<IService>): IService[] {
  const num = (id: string) => parseInt(id, 10) || 0;
  return [...services].sort((a, b) => {
    const fa = isFinished(a.state) ? 1 : 0;
    const fb = isFinished(b.state) ? 1 : 0;
    return fa - fb || num(b.job_id) - num(a.job_id);
  });
}

/** Split a list of names typed by a user ("bob, carol dave") into unique names. */
export function parseNames(text: string): string[] {
  const names = text
    .split(/[\s,;]+/)
    .map(n => n.trim())
    .filter(n => n.length > 0);
  return Array.from(new Set(names));
}
