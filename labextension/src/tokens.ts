/**
 * Types shared by the sidebar, mirroring the REST API of the jupyter-hpc
 * server extension (docs/architecture.md, "REST API").
 */
import type * as nbformat from '@jupyterlab/nbformat';

/** Plugin id; also the settings id (`schema/plugin.json`). */
export const PLUGIN_ID = 'jupyter-hpc:plugin';

/** URL path of the REST API below the server's base URL. */
export const API_NAMESPACE = 'jupyter-hpc/api';

/** Metadata key under which a cell records its batch job. */
export const CELL_METADATA_KEY = 'jupyter_hpc';

export namespace CommandIDs {
  export const runCell = 'jupyter-hpc:run-cell';
  export const cancelCellJob = 'jupyter-hpc:cancel-cell-job';
  export const openSidebar = 'jupyter-hpc:open-sidebar';
  export const refresh = 'jupyter-hpc:refresh';
  export const openOutput = 'jupyter-hpc:open-output';
  export const openService = 'jupyter-hpc:open-service';
  export const startService = 'jupyter-hpc:start-service';
}

/** `directory`: a Charliecloud image directory, run with ch-run. */
export type ImageFormat = 'sif' | 'sandbox' | 'directory' | 'remote';

/** Container runtimes an image can ask for. */
export type ContainerRuntimeName = 'apptainer' | 'charliecloud';

export interface IImage {
  id: string;
  name: string;
  title: string;
  description: string;
  format: ImageFormat;
  path: string | null;
  ref: string | null;
  size: number | null;
  gpu: boolean;
  labels: Record<string, string>;
  apps: string[];
  owner: string;
  pulled: boolean;
  /** The runtime the image asks for; null: the site's (IRuntime.mode). */
  runtime?: ContainerRuntimeName | null;
}

/**
 * How jobs run their commands (`GET images` -> `runtime`): inside Apptainer or
 * Charliecloud images, or directly on the node where containers cannot run.
 */
export interface IRuntime {
  mode: ContainerRuntimeName | 'host';
  configured: 'auto' | ContainerRuntimeName | 'host';
  containers: boolean;
  /** What to tell the user when containers are unavailable; null otherwise. */
  message: string | null;
  reason: string | null;
  probe_image: string | null;
}

export interface IPull {
  ref: string;
  state: 'pulling' | 'done' | 'error';
  progress: number | null;
  message: string;
  image_id: string | null;
}

export interface IPartition {
  name: string;
  default: boolean;
  state: string;
  nodes: number;
  cpus: number;
  memory_mb: number;
  max_time_minutes: number | null;
  gpus: Record<string, number>;
}

export type JobKind = 'cell' | 'service' | 'kernel' | 'server' | 'other';

export interface IJob {
  id: string;
  name: string;
  kind: JobKind;
  state: string;
  reason: string | null;
  nodes: string | null;
  partition: string | null;
  elapsed: string | null;
  time_limit: string | null;
  start_time: string | null;
  gpus: number | null;
  image: string | null;
}

export interface IJobOutputChunk {
  data: string;
  offset: number;
  eof: boolean;
}

/** Body of `POST cells`. */
export interface ICellJobRequest {
  code: string;
  image: string;
  partition: string;
  gpus: number;
  cpus: number;
  memory: string;
  time: string;
  exclusive?: boolean;
  /** One of the user's venvs (`GET venvs`), first on the job's path. */
  venv?: string;
  cwd?: string;
}

/** One of the user's Python venvs layered on an image (`GET venvs`). */
export interface IVenv {
  name: string;
  path: string;
  image: string | null;
  image_path: string | null;
  python: string | null;
  created: number | null;
}

/** Answer of `GET cells/{id}?since=N`. */
export interface ICellJobState {
  job_id: string;
  state: string;
  reason: string | null;
  node: string | null;
  outputs: nbformat.IOutput[];
  next: number;
  done: boolean;
  status: 'ok' | 'error' | null;
  /** Where the job ran (written by the job when it starts); null before that. */
  run?: IRunRecord | null;
}

/** The run record of a cell job: node, CPU model, CPU counts, exclusive. */
export interface IRunRecord {
  node?: string;
  cpu_model?: string;
  cpus?: number;
  node_cpus?: number;
  alloc_cpus?: number;
  exclusive?: boolean | null;
  job_id?: string;
}

export interface IService {
  job_id: string;
  name: string;
  state: string;
  node: string | null;
  url: string | null;
  /** Apptainer instance the service runs in (jhpc-JOBID), if started as one. */
  instance?: string | null;
}

/** Body of `POST services`. */
export interface IServiceRequest {
  image: string;
  command: string[];
  name: string;
  partition?: string;
  gpus?: number;
  cpus?: number;
  memory?: string;
  time?: string;
  exclusive?: boolean;
  instance?: boolean;
  venv?: string;
}

/** User settings (`schema/plugin.json`). */
/** Vitals of one job (`GET vitals`, `GET jobs/{id}/stats`); unavailable parts say why. */
export interface IJobVitals {
  job_id: string;
  name: string | null;
  kind: JobKind;
  state: string;
  node: string | null;
  /** Unix time of the sample (seconds). */
  sampled_at: number;
  time: {
    elapsed_s: number | null;
    limit_s: number | null;
    fraction: number | null;
  };
  cpu: {
    available: boolean;
    reason: string | null;
    cpus?: number | null;
    cpu_seconds?: number | null;
    cores_used?: number | null;
    percent?: number | null;
    source?: string;
  };
  memory: {
    available: boolean;
    reason: string | null;
    current_mb: number | null;
    peak_mb: number | null;
    requested_mb?: number | null;
    source?: string;
  };
  gpu: {
    available: boolean;
    reason: string | null;
    count: number;
    utilization?: number | null;
    memory_used_mb?: number | null;
    memory_total_mb?: number | null;
    source?: string;
    devices: Array<{
      index: number;
      name: string;
      utilization?: number | null;
      memory_used_mb?: number | null;
      memory_total_mb?: number | null;
    }>;
  };
}

/** One point of a job's vitals history kept by the sidebar. */
export interface IVitalsSample {
  /** Unix time (seconds). */
  t: number;
  cpuPercent: number | null;
  memoryMb: number | null;
  gpuPercent: number | null;
}

/** `GET sharing`: whether services can be shared here. */
export interface ISharing {
  available: boolean;
  reason: string | null;
  service_url?: string | null;
}

/** `GET/PUT/DELETE services/{id}/shares`. */
export interface IShare {
  job_id: string;
  owner: string;
  name?: string | null;
  users: string[];
  groups: string[];
  shared: boolean;
  /** Path on the hub where the people it is shared with open it. */
  url: string | null;
}

/** A share as `GET shares` lists it. */
export interface IShareRecord {
  owner: string;
  job_id: string;
  name?: string | null;
  users: string[];
  groups: string[];
  url: string;
}

export interface IHPCSettings {
  defaultImage: string;
  defaultPartition: string;
  defaultGpus: number;
  defaultCpus: number;
  defaultMemory: string;
  defaultTime: string;
  refreshInterval: number;
  showVitals: boolean;
  vitalsInterval: number;
  vitalsHistory: number;
}

export const DEFAULT_SETTINGS: IHPCSettings = {
  defaultImage: '',
  defaultPartition: '',
  defaultGpus: 0,
  defaultCpus: 1,
  defaultMemory: '2G',
  defaultTime: '00:30:00',
  refreshInterval: 10,
  showVitals: true,
  vitalsInterval: 5,
  vitalsHistory: 60
};

/** Slurm states after which a job no longer changes. */
export const FINISHED_STATES = new Set([
  'COMPLETED',
  'FAILED',
  'CANCELLED',
  'TIMEOUT',
  'OUT_OF_MEMORY',
  'NODE_FAIL',
  'PREEMPTED',
  'BOOT_FAIL',
  'DEADLINE',
  'GONE'
]);

export function isFinished(state: string | null | undefined): boolean {
  return !!state && FINISHED_STATES.has(state.toUpperCase().split(' ')[0]);
}
