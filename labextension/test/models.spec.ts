import { afterEach, describe, expect, it } from 'vitest';

import { CellJob, describeRun, ImagesModel, JobsModel, ServicesModel, sortJobs } from '../src/models';
import { IImage, IJob, isFinished } from '../src/tokens';
import { apiPath, fakeServer } from './fakeserver';

const image = (over: Partial<IImage>): IImage => ({
  id: 'site:notebook.sif',
  name: 'notebook.sif',
  title: 'Python notebook',
  description: 'Debian with numpy and matplotlib',
  format: 'sif',
  path: '/opt/jupyter-hpc/images/notebook.sif',
  ref: null,
  size: 1000,
  gpu: true,
  labels: { 'org.jupyter-hpc.title': 'Python notebook' },
  apps: [],
  owner: 'site',
  pulled: false,
  ...over
});

const job = (over: Partial<IJob>): IJob => ({
  id: '1',
  name: 'jupyter-hpc-cell',
  kind: 'cell',
  state: 'RUNNING',
  reason: null,
  nodes: 'vm',
  partition: 'cpu',
  elapsed: '0:01',
  time_limit: '30:00',
  start_time: null,
  gpus: 0,
  image: null,
  ...over
});

const disposables: Array<{ dispose(): void }> = [];
afterEach(() => {
  while (disposables.length) {
    disposables.pop()!.dispose();
  }
});

describe('ImagesModel', () => {
  it('reports whether jobs run in containers or directly on the node', async () => {
    let runtime: any = {
      mode: 'apptainer',
      configured: 'auto',
      containers: true,
      message: null,
      reason: "'apptainer exec /i true' works",
      probe_image: '/i'
    };
    const { settings } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'images') {
        return { body: { images: [image({})], runtime } };
      }
      if (p === 'images/pulls') {
        return { body: { pulls: [] } };
      }
      return undefined;
    });
    const model = new ImagesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    expect(model.runtime).toBeNull();
    expect(model.containersUnavailable).toBe(false);
    await model.refresh();
    expect(model.runtime?.mode).toBe('apptainer');
    expect(model.containersUnavailable).toBe(false);
    runtime = {
      ...runtime,
      mode: 'host',
      containers: false,
      message: 'Containers unavailable on this host: commands run directly on the node',
      reason: 'apptainer: command not found'
    };
    let changed = 0;
    model.changed.connect(() => changed++);
    await model.refresh();
    expect(changed).toBeGreaterThan(0);
    expect(model.containersUnavailable).toBe(true);
    expect(model.runtime?.message).toContain('commands run directly on the node');
  });

  it('loads images and pulls, filters and lists runnable images', async () => {
    const images = [
      image({}),
      image({
        id: 'site:notebook-sandbox',
        name: 'notebook-sandbox',
        title: 'Python notebook (sandbox)',
        format: 'sandbox',
        gpu: false
      }),
      image({
        id: 'remote:abc',
        name: 'tiny',
        title: 'Tiny busybox',
        description: 'busybox from the local registry',
        format: 'remote',
        ref: 'docker://127.0.0.1:5000/demo/tiny:latest',
        gpu: false,
        pulled: false,
        labels: {}
      })
    ];
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'images') {
        return { body: { images } };
      }
      if (p === 'images/pulls') {
        return { body: { pulls: [] } };
      }
      return undefined;
    });
    const model = new ImagesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    let changed = 0;
    model.changed.connect(() => changed++);
    await model.refresh();
    expect(model.loaded).toBe(true);
    expect(model.error).toBeNull();
    expect(changed).toBeGreaterThan(0);
    expect(model.images.map(i => i.id)).toEqual(images.map(i => i.id));
    expect(model.filter('sandbox').map(i => i.id)).toEqual(['site:notebook-sandbox']);
    expect(model.filter('GPU').map(i => i.id)).toEqual(['site:notebook.sif']);
    expect(model.filter('matplotlib')).toHaveLength(2);
    expect(model.runnable.map(i => i.id)).toEqual(['site:notebook.sif', 'site:notebook-sandbox']);
    expect(requests.map(r => apiPath(r.url)).sort()).toEqual(['images', 'images/pulls']);
  });

  it('starts a pull and shows its progress', async () => {
    let pulls: any[] = [];
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'images/pull' && req.method === 'POST') {
        const pull = { ref: req.body.ref, state: 'pulling', progress: 0.25, message: '', image_id: null };
        pulls = [pull];
        return { status: 202, body: pull };
      }
      if (p === 'images/pulls') {
        return { body: { pulls } };
      }
      if (p === 'images') {
        return { body: { images: [] } };
      }
      return undefined;
    });
    const model = new ImagesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    const ref = 'docker://127.0.0.1:5000/demo/tiny:latest';
    const pull = await model.pull(ref);
    expect(pull.state).toBe('pulling');
    expect(model.pullOf(ref)?.progress).toBe(0.25);
    expect(requests[0].body).toEqual({ ref });
  });
});

describe('JobsModel', () => {
  it('lists jobs, cancels one and reports Slurm outages', async () => {
    let jobs = [job({ id: '5' }), job({ id: '6', state: 'PENDING', reason: 'Resources', nodes: null })];
    let down = false;
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (down) {
        return { status: 503, body: { message: 'Slurm is not answering; try again later' } };
      }
      if (p === 'jobs') {
        return { body: { jobs } };
      }
      if (p === 'jobs/6' && req.method === 'DELETE') {
        jobs = jobs.filter(j => j.id !== '6');
        return { status: 202, body: { job_id: '6', state: 'CANCELLING' } };
      }
      return undefined;
    });
    const model = new JobsModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    await model.refresh();
    expect(model.jobs.map(j => j.id)).toEqual(['5', '6']);
    expect(model.active).toHaveLength(2);

    await model.cancel('6');
    expect(requests.some(r => r.method === 'DELETE' && apiPath(r.url) === 'jobs/6')).toBe(true);
    await model.refresh();
    expect(model.jobs.map(j => j.id)).toEqual(['5']);

    const errors: Array<number | null> = [];
    model.errorChanged.connect((_, e) => errors.push(e ? e.status : null));
    down = true;
    await model.refresh();
    expect(model.error?.isUnavailable).toBe(true);
    // The last list stays visible while Slurm is down.
    expect(model.jobs.map(j => j.id)).toEqual(['5']);
    down = false;
    await model.refresh();
    expect(model.error).toBeNull();
    expect(errors).toEqual([503, null]);
  });

  it('reads job output from an offset', async () => {
    const { settings, requests } = fakeServer(req =>
      apiPath(req.url).startsWith('jobs/9/output')
        ? { body: { data: 'hello\n', offset: 6, eof: false } }
        : undefined
    );
    const model = new JobsModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    const chunk = await model.output('9', 'stdout', 0);
    expect(chunk).toEqual({ data: 'hello\n', offset: 6, eof: false });
    expect(apiPath(requests[0].url)).toBe('jobs/9/output?stream=stdout&offset=0');
  });

  it('sorts active jobs first, newest first', () => {
    const sorted = sortJobs([
      job({ id: '3', state: 'COMPLETED' }),
      job({ id: '4', state: 'RUNNING' }),
      job({ id: '10', state: 'CANCELLED' }),
      job({ id: '2', state: 'PENDING' })
    ]);
    expect(sorted.map(j => j.id)).toEqual(['4', '2', '10', '3']);
    expect(isFinished('CANCELLED by 1000')).toBe(true);
    expect(isFinished('RUNNING')).toBe(false);
  });
});

describe('ServicesModel', () => {
  it('launches, lists and stops services', async () => {
    let services: any[] = [];
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'services' && req.method === 'POST') {
        const s = { job_id: '11', name: req.body.name, state: 'PENDING', node: null, url: null };
        services = [s];
        return { status: 201, body: s };
      }
      if (p === 'services') {
        return { body: { services } };
      }
      if (p === 'services/11' && req.method === 'DELETE') {
        services = [];
        return { status: 202, body: { job_id: '11', state: 'CANCELLING' } };
      }
      return undefined;
    });
    const model = new ServicesModel({ serverSettings: settings, autoStart: false });
    disposables.push(model);
    const s = await model.launch({
      image: 'site:notebook.sif',
      command: ['python3', '-m', 'http.server', '{port}'],
      name: 'web'
    });
    expect(s.job_id).toBe('11');
    expect(model.get('11')?.name).toBe('web');
    expect(requests[0].body.command).toEqual(['python3', '-m', 'http.server', '{port}']);
    await model.stop('11');
    expect(model.services).toHaveLength(0);
  });
});

describe('CellJob', () => {
  it('polls cells/{id}?since=N, emits each output once and stops when done', async () => {
    const all = [
      { output_type: 'stream', name: 'stdout', text: 'hello\n' },
      { output_type: 'display_data', data: { 'image/png': 'iVBOR' }, metadata: {} },
      { output_type: 'execute_result', data: { 'text/plain': '42' }, metadata: {}, execution_count: 1 }
    ];
    const script = [
      { state: 'PENDING', reason: 'Resources', node: null, upto: 0, done: false, status: null },
      { state: 'RUNNING', reason: null, node: 'vm', upto: 1, done: false, status: null },
      { state: 'RUNNING', reason: null, node: 'vm', upto: 2, done: false, status: null },
      { state: 'COMPLETED', reason: null, node: 'vm', upto: 3, done: true, status: 'ok' }
    ];
    let step = 0;
    const sinces: number[] = [];
    const { settings } = fakeServer(req => {
      const u = new URL(req.url);
      if (u.pathname.endsWith('/cells/21')) {
        const since = Number(u.searchParams.get('since'));
        sinces.push(since);
        const s = script[Math.min(step++, script.length - 1)];
        return {
          body: {
            job_id: '21',
            state: s.state,
            reason: s.reason,
            node: s.node,
            outputs: all.slice(since, s.upto),
            next: s.upto,
            done: s.done,
            status: s.status
          }
        };
      }
      return undefined;
    });
    const job = new CellJob('21', { serverSettings: settings, interval: 10, autoStart: false });
    disposables.push(job);
    const received: any[] = [];
    const states: string[] = [];
    job.outputsReceived.connect((_, outs) => received.push(...outs));
    const done = new Promise<void>(resolve =>
      job.statusChanged.connect((_, s) => {
        states.push(`${s.state}${s.reason ? `:${s.reason}` : ''}${s.node ? `@${s.node}` : ''}`);
        if (s.done) {
          resolve();
        }
      })
    );
    await job.start();
    await done;
    expect(received).toEqual(all);
    expect(sinces).toEqual([0, 0, 1, 2]);
    expect(states).toEqual(['PENDING:Resources', 'RUNNING@vm', 'COMPLETED@vm']);
    expect(job.status.status).toBe('ok');
  });

  it('submits code and cancels through DELETE jobs/{id}', async () => {
    const { settings, requests } = fakeServer(req => {
      const p = apiPath(req.url);
      if (p === 'cells' && req.method === 'POST') {
        return { status: 201, body: { job_id: '33' } };
      }
      if (p === 'jobs/33' && req.method === 'DELETE') {
        return { status: 202, body: { job_id: '33', state: 'CANCELLING' } };
      }
      if (p.startsWith('cells/33')) {
        return {
          body: { job_id: '33', state: 'CANCELLED', reason: null, node: null, outputs: [], next: 0, done: true, status: 'error' }
        };
      }
      return undefined;
    });
    const id = await CellJob.submit(
      { code: 'print(1)', image: 'site:notebook.sif', partition: '', gpus: 0, cpus: 1, memory: '1G', time: '00:10:00' },
      settings
    );
    expect(id).toBe('33');
    expect(requests[0].body.code).toBe('print(1)');
    const job = new CellJob(id, { serverSettings: settings, autoStart: false });
    disposables.push(job);
    await job.cancel();
    expect(requests.some(r => r.method === 'DELETE' && apiPath(r.url) === 'jobs/33')).toBe(true);
  });

  it('gives up on a job the server does not know', async () => {
    const { settings } = fakeServer(() => ({ status: 404, body: { message: 'unknown job' } }));
    const job = new CellJob('404', { serverSettings: settings, interval: 10, autoStart: false });
    disposables.push(job);
    const done = new Promise<void>(resolve =>
      job.statusChanged.connect((_, s) => s.done && resolve())
    );
    await job.start();
    await done;
    expect(job.status.status).toBe('error');
    expect(job.error?.status).toBe(404);
  });
});

describe('run record of a cell job', () => {
  it('says whether the job had the node to itself, its CPUs and CPU model', () => {
    const run = {
      node: 'vm',
      cpu_model: 'AMD EPYC 7763',
      cpus: 32,
      node_cpus: 32,
      alloc_cpus: 32,
      exclusive: true,
      job_id: '7'
    };
    expect(describeRun(run)).toBe('whole node, 32 of 32 CPUs, AMD EPYC 7763');
    expect(describeRun({ ...run, exclusive: false, alloc_cpus: 1 })).toBe(
      'shared node, 1 of 32 CPUs, AMD EPYC 7763'
    );
    expect(describeRun({ node: 'vm', exclusive: null })).toBe('');
    expect(describeRun(null)).toBe('');
  });
});
