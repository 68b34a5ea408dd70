import { describe, expect, it } from 'vitest';

import { APIError, endpoint, formatBytes, proxyURL, requestAPI } from '../src/handler';
import { apiPath, fakeServer } from './fakeserver';

describe('requestAPI', () => {
  it('calls {base_url}jupyter-hpc/api/... and decodes JSON', async () => {
    const { settings, requests } = fakeServer(() => ({ body: { jobs: [] } }));
    const data = await requestAPI<{ jobs: unknown[] }>('jobs', {}, settings);
    expect(data).toEqual({ jobs: [] });
    expect(requests[0].method).toBe('GET');
    expect(requests[0].url.split('?')[0]).toBe('http://lab.test/user/alice/jupyter-hpc/api/jobs');
    expect(apiPath(requests[0].url)).toBe('jobs');
  });

  it('sends JSON bodies with a content type', async () => {
    const { settings, requests } = fakeServer(() => ({ status: 201, body: { job_id: '7' } }));
    const data = await requestAPI<{ job_id: string }>(
      'cells',
      { method: 'POST', body: JSON.stringify({ code: 'print(1)' }) },
      settings
    );
    expect(data.job_id).toBe('7');
    expect(requests[0].method).toBe('POST');
    expect(requests[0].body).toEqual({ code: 'print(1)' });
  });

  it('returns {} for answers without a body', async () => {
    const { settings } = fakeServer(() => ({ status: 202 }));
    expect(await requestAPI('services/5', { method: 'DELETE' }, settings)).toEqual({});
  });

  it('turns error answers into APIError with status, message and field', async () => {
    const { settings } = fakeServer(() => ({
      status: 400,
      body: { message: "'lots' is not a memory size", field: 'memory' }
    }));
    const error = (await requestAPI('cells', { method: 'POST', body: '{}' }, settings).catch(
      e => e
    )) as APIError;
    expect(error).toBeInstanceOf(APIError);
    expect(error.status).toBe(400);
    expect(error.field).toBe('memory');
    expect(error.message).toContain('memory size');
    expect(error.isUnavailable).toBe(false);
  });

  it('flags 503 as Slurm unavailable', async () => {
    const { settings } = fakeServer(() => ({
      status: 503,
      body: { message: 'Slurm is not answering; try again later' }
    }));
    const error = (await requestAPI('jobs', {}, settings).catch(e => e)) as APIError;
    expect(error.isUnavailable).toBe(true);
  });

  it('reports an unreachable server as status 0', async () => {
    const { settings } = fakeServer(() => ({}));
    (settings as any).fetch = async () => {
      throw new TypeError('Failed to fetch');
    };
    const error = (await requestAPI('jobs', {}, settings).catch(e => e)) as APIError;
    expect(error).toBeInstanceOf(APIError);
    expect(error.isNetwork).toBe(true);
  });
});

describe('helpers', () => {
  it('encodes endpoint segments and drops empty query values', () => {
    expect(endpoint(['jobs', '12', 'output'], { stream: 'stdout', offset: 0 })).toBe(
      'jobs/12/output?stream=stdout&offset=0'
    );
    expect(endpoint(['images', 'site:a b.sif'])).toBe('images/site%3Aa%20b.sif');
    expect(endpoint(['images'], { q: '' })).toBe('images');
  });

  it('builds the proxy URL of a job', () => {
    const { settings } = fakeServer(() => ({}));
    expect(proxyURL('42', settings)).toBe('http://lab.test/user/alice/jupyter-hpc/proxy/42/');
  });

  it('formats sizes', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(190840832)).toBe('182.0 MiB');
    expect(formatBytes(null)).toBe('');
  });

  it('keeps the request path checked by the fake server', () => {
    expect(apiPath('http://lab.test/user/alice/jupyter-hpc/api/cells/3?since=2')).toBe(
      'cells/3?since=2'
    );
  });
});
