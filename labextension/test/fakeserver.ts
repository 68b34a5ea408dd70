import { ServerConnection } from '@jupyterlab/services';

export interface IRecorded {
  method: string;
  url: string;
  body: any;
}

type Route = (req: IRecorded) => { status?: number; body?: any } | undefined;

/**
 * Server settings whose `fetch` answers from `route` and records requests:
 * the REST API is faked at the ServerConnection level.
 */
export function fakeServer(route: Route): {
  settings: ServerConnection.ISettings;
  requests: IRecorded[];
} {
  const requests: IRecorded[] = [];
  const fetchImpl = async (input: RequestInfo | URL, init?: RequestInit) => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const text = await request.text();
    const rec: IRecorded = {
      method: request.method,
      url: request.url,
      body: text ? JSON.parse(text) : undefined
    };
    requests.push(rec);
    const answer = route(rec) ?? { status: 404, body: { message: 'not found' } };
    const status = answer.status ?? 200;
    return new Response(
      answer.body === undefined ? null : JSON.stringify(answer.body),
      { status, headers: { 'Content-Type': 'application/json' } }
    );
  };
  const settings = ServerConnection.makeSettings({
    baseUrl: 'http://lab.test/user/alice/',
    wsUrl: 'ws://lab.test/user/alice/',
    token: 'secret',
    appendToken: false,
    fetch: fetchImpl as any,
    Request,
    Headers
  } as any);
  return { settings, requests };
}

/** Path + query of a recorded URL below the API base. */
export function apiPath(url: string): string {
  const u = new URL(url);
  // Drop the cache-busting timestamp ServerConnection adds to GET requests.
  const params = new URLSearchParams(u.search);
  for (const key of Array.from(params.keys())) {
    if (/^\d+$/.test(key) && params.get(key) === '') {
      params.delete(key);
    }
  }
  const qs = params.toString();
  return u.pathname.replace('/user/alice/jupyter-hpc/api/', '') + (qs ? `?${qs}` : '');
}
