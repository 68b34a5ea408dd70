import { endpoint, requestAPI } from '../handler';
import { IJob, IJobOutputChunk, isFinished } from '../tokens';
import { IPollingModelOptions, PollingModel, sameJSON } from './base';

/** The user's own Slurm jobs. */
export class JobsModel extends PollingModel {
  constructor(options: IPollingModelOptions = {}) {
    super(options);
  }

  get jobs(): ReadonlyArray<IJob> {
    return this._jobs;
  }

  /** Jobs still pending or running. */
  get active(): IJob[] {
    return this._jobs.filter(j => !isFinished(j.state));
  }

  get(jobId: string): IJob | undefined {
    return this._jobs.find(j => j.id === jobId);
  }

  /** Cancel a job (the caller asks for confirmation first). */
  async cancel(jobId: string): Promise<{ job_id: string; state: string }> {
    const answer = await requestAPI<{ job_id: string; state: string }>(
      endpoint(['jobs', jobId]),
      { method: 'DELETE' },
      this.serverSettings
    );
    // Show the change at once; the next refresh brings Slurm's view.
    this._jobs = this._jobs.map(j =>
      j.id === jobId ? { ...j, state: answer.state || 'CANCELLED' } : j
    );
    this.emitChanged();
    void this.refresh().catch(() => undefined);
    return answer;
  }

  /** Read a job's stdout/stderr from `offset`. */
  output(
    jobId: string,
    stream: 'stdout' | 'stderr',
    offset: number
  ): Promise<IJobOutputChunk> {
    return requestAPI<IJobOutputChunk>(
      endpoint(['jobs', jobId, 'output'], { stream, offset }),
      {},
      this.serverSettings
    );
  }

  /** Fetch one job (also finished ones no longer in the list). */
  fetchJob(jobId: string): Promise<IJob> {
    return requestAPI<IJob>(endpoint(['jobs', jobId]), {}, this.serverSettings);
  }

  protected async fetch(): Promise<boolean> {
    const { jobs } = await requestAPI<{ jobs: IJob[] }>(
      'jobs',
      {},
      this.serverSettings
    );
    const list = jobs ?? [];
    const changed = !sameJSON(list, this._jobs);
    this._jobs = list;
    return changed;
  }

  private _jobs: IJob[] = [];
}

/** Active jobs first, then newest first. */
export function sortJobs(jobs: ReadonlyArray<IJob>): IJob[] {
  const num = (id: string) => parseInt(id, 10) || 0;
  return [...jobs].sort((a, b) => {
    const fa = isFinished(a.state) ? 1 : 0;
    const fb = isFinished(b.state) ? 1 : 0;
    return fa - fb || num(b.id) - num(a.id);
  });
}
