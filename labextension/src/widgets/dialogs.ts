import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { parseNames } from '../models/services';
import { IImage, IPartition, IVenv } from '../tokens';

/** What the user chose in the "Run cell as HPC batch job" dialog. */
export interface IRunCellChoice {
  image: string;
  partition: string;
  gpus: number;
  cpus: number;
  memory: string;
  time: string;
  /** The whole node for this job (sbatch --exclusive), for clean measurements. */
  exclusive?: boolean;
  /** One of the user's venvs ('' or absent: the image's own packages only). */
  venv?: string;
}

/** Where the last choice is remembered (per browser). */
export const LAST_CHOICE_KEY = 'jupyter-hpc:last-cell-job';

export function loadLastChoice(): Partial<IRunCellChoice> {
  try {
    const raw = window.localStorage.getItem(LAST_CHOICE_KEY);
    return raw ? (JSON.parse(raw) as Partial<IRunCellChoice>) : {};
  } catch {
    return {};
  }
}

export function saveLastChoice(choice: IRunCellChoice): void {
  try {
    window.localStorage.setItem(LAST_CHOICE_KEY, JSON.stringify(choice));
  } catch {
    // Private browsing or storage full: the defaults are used next time.
  }
}

function field(
  form: HTMLElement,
  label: string,
  input: HTMLElement,
  help?: string
): void {
  const row = document.createElement('label');
  row.className = 'jp-HPC-form-row';
  const span = document.createElement('span');
  span.className = 'jp-HPC-form-label';
  span.textContent = label;
  row.appendChild(span);
  row.appendChild(input);
  if (help) {
    const small = document.createElement('small');
    small.className = 'jp-HPC-form-help';
    small.textContent = help;
    row.appendChild(small);
  }
  form.appendChild(row);
}

function textInput(name: string, value: string, type = 'text'): HTMLInputElement {
  const input = document.createElement('input');
  input.className = 'jp-mod-styled jp-HPC-input';
  input.name = name;
  input.type = type;
  input.value = value;
  return input;
}

function select(name: string, options: Array<[string, string]>, value: string): HTMLSelectElement {
  const el = document.createElement('select');
  el.className = 'jp-mod-styled jp-HPC-input';
  el.name = name;
  for (const [v, text] of options) {
    const opt = document.createElement('option');
    opt.value = v;
    opt.textContent = text;
    el.appendChild(opt);
  }
  if (options.some(([v]) => v === value)) {
    el.value = value;
  }
  return el;
}

function partitionSummary(p: IPartition | undefined): string {
  if (!p) {
    return '';
  }
  const gpus = Object.entries(p.gpus ?? {})
    .map(([type, n]) => `${n}× ${type}`)
    .join(', ');
  const parts = [
    `${p.nodes} node${p.nodes === 1 ? '' : 's'}`,
    `${p.cpus} CPUs`,
    p.memory_mb ? `${Math.round(p.memory_mb / 1024)} GiB` : '',
    gpus ? `GPUs: ${gpus}` : 'no GPUs',
    p.max_time_minutes ? `max ${p.max_time_minutes} min` : ''
  ];
  return parts.filter(Boolean).join(' · ');
}

/** Body of the "Run cell as HPC batch job" dialog. */
export class RunCellForm
  extends Widget
  implements Dialog.IBodyWidget<IRunCellChoice>
{
  constructor(options: {
    images: IImage[];
    partitions: IPartition[];
    initial: IRunCellChoice;
    venvs?: IVenv[];
  }) {
    super();
    this.addClass('jp-HPC-form');
    this.addClass('jp-HPC-run-cell-form');
    const { images, partitions, initial } = options;
    const venvs = options.venvs ?? [];
    const form = this.node;

    const imageOptions: Array<[string, string]> = images.map(i => [
      i.id,
      `${i.title || i.name} (${i.format}${i.gpu ? ', GPU' : ''})`
    ]);
    if (initial.image && !images.some(i => i.id === initial.image)) {
      imageOptions.unshift([initial.image, initial.image]);
    }
    this._image = select('image', imageOptions, initial.image);
    field(form, 'Image', this._image, 'The container the cell runs in.');

    if (venvs.length > 0) {
      this._venv = select(
        'venv',
        [
          ['', 'None (the image’s own packages)'],
          ...venvs.map(
            v =>
              [v.name, v.image ? `${v.name} (made from ${v.image})` : v.name] as [
                string,
                string
              ]
          )
        ],
        initial.venv ?? ''
      );
      field(
        form,
        'Python venv',
        this._venv,
        'Your packages in ~/.jupyter-hpc/venvs, first on the path (use it with the image it was made from).'
      );
    }

    const partitionOptions: Array<[string, string]> = [
      ['', 'Cluster default'],
      ...partitions.map(
        p => [p.name, `${p.name}${p.default ? ' (default)' : ''}`] as [string, string]
      )
    ];
    this._partition = select('partition', partitionOptions, initial.partition);
    const summary = document.createElement('small');
    summary.className = 'jp-HPC-form-help jp-HPC-partition-summary';
    const updateSummary = () => {
      const p =
        partitions.find(x => x.name === this._partition.value) ??
        partitions.find(x => x.default);
      summary.textContent = partitionSummary(p);
      const maxGpus = p
        ? Object.values(p.gpus ?? {}).reduce((a, b) => a + b, 0)
        : 0;
      this._gpus.max = String(maxGpus);
      if (p) {
        this._cpus.max = String(p.cpus || '');
      }
    };
    field(form, 'Partition', this._partition);
    form.appendChild(summary);

    this._gpus = textInput('gpus', String(initial.gpus), 'number');
    this._gpus.min = '0';
    field(form, 'GPUs', this._gpus);
    this._cpus = textInput('cpus', String(initial.cpus), 'number');
    this._cpus.min = '1';
    field(form, 'CPUs', this._cpus);
    this._memory = textInput('memory', initial.memory);
    field(form, 'Memory', this._memory, 'e.g. 4G or 512M');
    this._time = textInput('time', initial.time);
    field(form, 'Time limit', this._time, 'MM, HH:MM:SS or D-HH:MM:SS');
    this._exclusive = textInput('exclusive', '', 'checkbox');
    this._exclusive.value = 'yes';
    this._exclusive.checked = !!initial.exclusive;
    field(
      form,
      'Whole node',
      this._exclusive,
      'Exclusive: no other job shares the node (clean measurements; may wait longer).'
    );

    this._partition.addEventListener('change', updateSummary);
    updateSummary();
  }

  getValue(): IRunCellChoice {
    return {
      image: this._image.value,
      partition: this._partition.value,
      gpus: Math.max(0, parseInt(this._gpus.value, 10) || 0),
      cpus: Math.max(1, parseInt(this._cpus.value, 10) || 1),
      memory: this._memory.value.trim(),
      time: this._time.value.trim(),
      exclusive: this._exclusive.checked,
      venv: this._venv?.value || undefined
    };
  }

  private _image: HTMLSelectElement;
  private _venv: HTMLSelectElement | null = null;
  private _partition: HTMLSelectElement;
  private _gpus: HTMLInputElement;
  private _cpus: HTMLInputElement;
  private _memory: HTMLInputElement;
  private _time: HTMLInputElement;
  private _exclusive: HTMLInputElement;
}

/** What the user chose in the "Start service" dialog. */
export interface IServiceChoice extends IRunCellChoice {
  name: string;
  command: string[];
  /** Run the service inside an Apptainer instance (jhpc-JOBID). */
  instance?: boolean;
}

/** Split a command line on whitespace, honouring simple single/double quotes. */
export function splitCommand(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(line)) !== null) {
    out.push(m[1] ?? m[2] ?? m[3]);
  }
  return out;
}

/** Body of the "Start service" dialog. */
export class ServiceForm
  extends Widget
  implements Dialog.IBodyWidget<IServiceChoice>
{
  constructor(options: {
    images: IImage[];
    partitions: IPartition[];
    initial: IRunCellChoice;
    venvs?: IVenv[];
  }) {
    super();
    this.addClass('jp-HPC-form');
    this.addClass('jp-HPC-service-form');
    this._name = textInput('name', 'web');
    field(this.node, 'Name', this._name);
    this._command = textInput('command', 'python3 -m http.server {port}');
    field(
      this.node,
      'Command',
      this._command,
      '{port} is replaced by the port the job must listen on'
    );
    this._resources = new RunCellForm(options);
    for (const child of Array.from(this._resources.node.childNodes)) {
      this.node.appendChild(child);
    }
    this._instance = textInput('instance', 'yes', 'checkbox');
    field(
      this.node,
      'Apptainer instance',
      this._instance,
      'Run the command inside an instance jhpc-JOBID, stopped when the job ends.'
    );
  }

  getValue(): IServiceChoice {
    return {
      ...this._resources.getValue(),
      name: this._name.value.trim(),
      command: splitCommand(this._command.value),
      instance: this._instance.checked
    };
  }

  private _name: HTMLInputElement;
  private _command: HTMLInputElement;
  private _instance: HTMLInputElement;
  private _resources: RunCellForm;
}

/** What the user chose in the "Share service" dialog. */
export interface IShareChoice {
  users: string[];
  groups: string[];
}

/** Body of the "Share service" dialog: hub user names and hub group names. */
export class ShareForm extends Widget implements Dialog.IBodyWidget<IShareChoice> {
  constructor(options: { users?: string[]; groups?: string[]; hint?: string }) {
    super();
    this.addClass('jp-HPC-form');
    this.addClass('jp-HPC-share-form');
    if (options.hint) {
      const p = document.createElement('p');
      p.className = 'jp-HPC-form-help';
      p.textContent = options.hint;
      this.node.appendChild(p);
    }
    this._users = textInput('users', (options.users ?? []).join(', '));
    this._users.placeholder = 'e.g. bob, carol';
    field(this.node, 'Users', this._users, 'JupyterHub user names, separated by commas');
    this._groups = textInput('groups', (options.groups ?? []).join(', '));
    this._groups.placeholder = 'e.g. my-lab';
    field(this.node, 'Groups', this._groups, 'JupyterHub group names, separated by commas');
  }

  getValue(): IShareChoice {
    return { users: parseNames(this._users.value), groups: parseNames(this._groups.value) };
  }

  private _users: HTMLInputElement;
  private _groups: HTMLInputElement;
}
