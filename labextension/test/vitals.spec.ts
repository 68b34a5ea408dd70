import { afterEach, describe, expect, it } from 'vitest';

import {
  ServicesModel,
  VitalsModel,
  formatDuration,
  formatMb,
  parseNames,
  toSample
} from '../src/models';
import { IJobVitals } from '../src/tokens';
import { sparklinePath } from '../src/widgets/sparkline';
import { apiPath, fakeServer } from './fakeserver';

const vitals = (over: Partial<IJobVitals> & { mem?: number; cpuPct?: number }): IJobVitals => {
  const { mem, cpuPct, ...rest } = over;
  return {
    job_id: '7',
    name: 'jupyter-hpc-cell',
    kind: 'cell',
    state: 'RUNNING',
    node: 'vm',
    sampled_at: 1000,
    time: { elapsed_s: 60, limit_s: 600, fraction: 0.1 },
    cpu: { available: true, reason: null, cpus: 1, cpu_seconds: 30, cores_used: 0.5, percent: cpuPct ?? 50, source: 'sstat' },
    memory: { available: true, reason: null, current_mb: mem ?? 100, peak_mb: mem ?? 100, requested_mb: 1024, source: 'sstat' },
    gpu: { available: false, reason: 'the job has no GPUs', count: 0, devices: [] },
    ...rest
  };
};

const disposables: Array<{ dispose(): void }> = [];
afterEach(() => {
  while (disposables.length) {
    disposables.pop()!.dispose();
  }
});

describe('VitalsModel', () => {
  it('keeps a bounded history per running job and forgets ended jobs', async () => {
    let t = 1000;
    let jobs: IJobVitals[] = [];
    const { settings, requests } = fakeServer(req =>
      apiPath(req.url) === 'vitals' ? { body: { jobs, sampled_at: t } } : undefined
    );
    const model = new VitalsModel({ serverSettings: settings, autoStart: false, historyLength: 3 });
    disposables.push(model);
    for (const mem of [100, 200, 300, 400]) {
      t += 5;
      jobs = [vitals({ sampled_at: t, mem }), vitals({ job_id: '8', sampled_at: t, mem: 50 })];
      await model.refresh();
    }
    expect(requests.every(r => apiPath(r.url) === 'vitals')).toBe(true);
    expect(model.history('7').map(s => s.memoryMb)).toEqual([200, 300, 400]);
    expect(model.get('7')?.memory.current_mb).toBe(400);
    expect(model.jobIds.sort()).toEqual(['7', '8']);
    // the same sample twice is not duplicated
    await model.refresh();
    expect(model.history('7').length).toBe(3);
    // job 8 ended
    t += 5;
    jobs = [vitals({ sampled_at: t, mem: 500 })];
    await model.refresh();
    expect(model.get('8')).toBeUndefined();
    expect(model.history('8')).toEqual([]);
    model.historyLength = 2;
    expect(model.history('7').map(s => s.memoryMb)).toEqual([400, 500]);
    let changes = 0;
    model.changed.connect(() => changes++);
    model.clear();
    expect(model.jobIds).toEqual([]);
    expect(changes).toBe(1);
  });

  it('does not poll while it is not shown', async () => {
    let active = false;
    const { settings, requests } = fakeServer(() => ({ body: { jobs: [], sampled_at: 1 } }));
    const model = new VitalsModel({
      serverSettings: settings,
      autoStart: false,
      isActive: () => active
    });
    disposables.push(model);
    await model.refresh();
    expect(requests.length).toBe(0);
    active = true;
    await model.refresh();
    expect(requests.length).toBe(1);
  });

  it('turns unavailable parts into gaps, not zeros', () => {
    const s = toSample(
      vitals({
        cpu: { available: false, reason: 'no gathering' },
        memory: { available: false, reason: 'no gathering', current_mb: null, peak_mb: null }
      })
    );
    expect(s).toEqual({ t: 1000, cpuPercent: null, memoryMb: null, gpuPercent: null });
    expect(toSample(vitals({})).cpuPercent).toBe(50);
  });
});

describe('sparklinePath', () => {
  it('scales values into the box and breaks the line at gaps', () => {
    expect(sparklinePath([], 80, 20)).toBe('');
    expect(sparklinePath([null, null], 80, 20)).toBe('');
    expect(sparklinePath([0, 50, 100], 80, 20, 100)).toBe('M0.0 20.0 L40.0 10.0 L80.0 0.0');
    expect(sparklinePath([10, null, 10], 80, 20, 20)).toBe('M0.0 10.0 M80.0 10.0');
    // values above max are clamped; a single value is drawn at the right edge
    expect(sparklinePath([200], 80, 20, 100)).toBe('M80.0 0.0');
  });
});

describe('formatting', () => {
  it('formats sizes and durations', () => {
    expect(formatMb(300)).toBe('300 MiB');
    expect(formatMb(1536)).toBe('1.5 GiB');
    expect(formatMb(null)).toBe('');
    expect(formatDuration(65)).toBe('1:05');
    expect(formatDuration(3723)).toBe('1:02:03');
    expect(formatDuration(undefined)).toBe('');
    expect(parseNames('bob, carol  dave;bob')).toEqual(['bob', 'carol', 'dave']);
    expect(parseNames('  ')).toEqual([]);
  });
});

describe('ServicesModel sharing', () => {
  it('shares, lists and revokes when sharing is available', async () => {
    let shares: any[] = [];
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'services') {
        return { body: { services: [{ job_id: '11', name: 'web', state: 'RUNNING', node: 'vm', url: '/x/' }] } };
      }
      if (p === 'sharing') {
        return { body: { available: true, reason: null, service_url: '/services/jupyter-hpc-share/' } };
      }
      if (p === 'shares') {
        return { body: { shares, shared_with_me: [] } };
      }
      if (p === 'services/11/shares' && req.method === 'PUT') {
        const s = { job_id: '11', owner: 'alice', users: req.body.users, groups: req.body.groups,
                    shared: true, url: '/services/jupyter-hpc-share/alice/11/' };
        shares = [{ ...s }];
        return { body: s };
      }
      if (p === 'services/11/shares' && req.method === 'DELETE') {
        shares = [];
        return { body: { job_id: '11', owner: 'alice', users: [], groups: [], shared: false, url: null } };
      }
      return undefined;
    });
    const model = new ServicesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    await model.refresh();
    expect(model.sharing?.available).toBe(true);
    expect(model.shareOf('11')).toBeUndefined();
    const share = await model.share('11', ['bob'], ['team']);
    expect(share.url).toBe('/services/jupyter-hpc-share/alice/11/');
    const put = requests.find(r => r.method === 'PUT')!;
    expect(put.body).toEqual({ users: ['bob'], groups: ['team'] });
    expect(model.shareOf('11')?.users).toEqual(['bob']);
    await model.refresh();
    expect(model.shareOf('11')?.groups).toEqual(['team']);
    await model.revoke('11');
    expect(model.shareOf('11')).toBeUndefined();
    // the sharing status is asked once, not at every refresh
    await model.refresh();
    expect(requests.filter(r => apiPath(r.url) === 'sharing').length).toBe(1);
  });

  it('reports sharing as unavailable without asking for shares', async () => {
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'services') {
        return { body: { services: [] } };
      }
      if (p === 'sharing') {
        return { body: { available: false, reason: 'sharing needs JupyterHub' } };
      }
      return undefined;
    });
    const model = new ServicesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    await model.refresh();
    expect(model.sharing).toEqual({ available: false, reason: 'sharing needs JupyterHub' });
    expect(requests.some(r => apiPath(r.url) === 'shares')).toBe(false);
  });
});
