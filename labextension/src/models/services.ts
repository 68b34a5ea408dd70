import { endpoint, requestAPI } from '../handler';
import { IService, IServiceRequest, isFinished } from '../tokens';
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
    const changed = !sameJSON(list, this._services);
    this._services = list;
    return changed;
  }

  private _services: IService[] = [];
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
