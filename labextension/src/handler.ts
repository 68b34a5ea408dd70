/**
 * Typed access to the jupyter-hpc REST API.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { API_NAMESPACE } from './tokens';

/**
 * An error answered by the REST API (or the server in front of it).
 *
 * `status` is the HTTP status (0 when the server could not be reached),
 * `field` names the request field a 400 refers to.
 */
export class APIError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly field: string | null = null
  ) {
    super(message);
    this.name = 'APIError';
  }

  /** Slurm (or the cluster behind it) is not answering. */
  get isUnavailable(): boolean {
    return this.status === 503;
  }

  /** The server could not be reached at all. */
  get isNetwork(): boolean {
    return this.status === 0;
  }
}

/**
 * Call the REST API at `{base_url}jupyter-hpc/api/{endPoint}` and return the
 * decoded JSON answer (an empty object for answers without a body).
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_NAMESPACE, endPoint);
  const headers = new Headers(init.headers ?? {});
  if (init.body !== undefined && !headers.has('Content-Type')) {
    headers.set('Content-Type', 'application/json');
  }

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      url,
      { ...init, headers },
      settings
    );
  } catch (error) {
    throw new APIError(
      `The Jupyter server cannot be reached (${String(
        (error as Error)?.message ?? error
      )})`,
      0
    );
  }

  const text = await response.text();
  let data: any = {};
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }

  if (!response.ok) {
    let message: string =
      (data && typeof data.message === 'string' && data.message) ||
      response.statusText ||
      `HTTP ${response.status}`;
    if (response.status === 404 && endPoint === '') {
      message = 'The jupyter-hpc server extension is not enabled';
    }
    throw new APIError(
      message,
      response.status,
      data && typeof data.field === 'string' ? data.field : null
    );
  }
  return data as T;
}

/** Build an endpoint path with URL-encoded segments and an optional query. */
export function endpoint(
  segments: Array<string | number>,
  query?: Record<string, string | number | undefined | null>
): string {
  const path = segments.map(s => encodeURIComponent(String(s))).join('/');
  if (!query) {
    return path;
  }
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') {
      params.set(key, String(value));
    }
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

/** The proxied URL of a job's web UI. */
export function proxyURL(
  jobId: string,
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): string {
  return URLExt.join(
    settings.baseUrl,
    'jupyter-hpc',
    'proxy',
    encodeURIComponent(jobId),
    '/'
  );
}

/** Human readable size: 1536 -> "1.5 KiB". */
export function formatBytes(size: number | null | undefined): string {
  if (size === null || size === undefined || !isFinite(size)) {
    return '';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}
