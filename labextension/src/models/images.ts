import { endpoint, requestAPI } from '../handler';
import { IImage, IPull, IRuntime } from '../tokens';
import { IPollingModelOptions, PollingModel, sameJSON } from './base';

/** Images visible to the user (site, own, remote refs) and running pulls. */
export class ImagesModel extends PollingModel {
  constructor(options: IPollingModelOptions = {}) {
    super(options);
  }

  get images(): ReadonlyArray<IImage> {
    return this._images;
  }

  get pulls(): ReadonlyArray<IPull> {
    return this._pulls;
  }

  /** How jobs run their commands (null until loaded, or from an older server). */
  get runtime(): IRuntime | null {
    return this._runtime;
  }

  /** True when jobs run directly on the node because containers are unavailable. */
  get containersUnavailable(): boolean {
    return this._runtime !== null && this._runtime.containers === false;
  }

  /** Images whose title, name, description, format or ref contain `query` ("gpu" finds GPU images). */
  filter(query: string): IImage[] {
    const q = query.trim().toLowerCase();
    if (!q) {
      return [...this._images];
    }
    return this._images.filter(image =>
      [
        image.title,
        image.name,
        image.description,
        image.format,
        image.ref ?? '',
        image.gpu ? 'gpu' : ''
      ]
        .join('\n')
        .toLowerCase()
        .includes(q)
    );
  }

  /** Images that can run a job now (not remote refs that still need a pull). */
  get runnable(): IImage[] {
    return this._images.filter(i => i.format !== 'remote' || i.pulled);
  }

  /** The pull of `ref`, if one was started in this server. */
  pullOf(ref: string | null): IPull | undefined {
    return ref ? this._pulls.find(p => p.ref === ref) : undefined;
  }

  /** Start pulling a remote ref; progress appears in `pulls`. */
  async pull(ref: string): Promise<IPull> {
    const pull = await requestAPI<IPull>(
      'images/pull',
      { method: 'POST', body: JSON.stringify({ ref }) },
      this.serverSettings
    );
    this._pulls = [...this._pulls.filter(p => p.ref !== ref), pull];
    this.emitChanged();
    this._watchPulls();
    return pull;
  }

  protected async fetch(): Promise<boolean> {
    const [images, pulls] = await Promise.all([
      requestAPI<{ images: IImage[]; runtime?: IRuntime | null }>(
        endpoint(['images']),
        {},
        this.serverSettings
      ),
      requestAPI<{ pulls: IPull[] }>('images/pulls', {}, this.serverSettings)
    ]);
    const runtime = images.runtime ?? null;
    const changed =
      !sameJSON(images.images, this._images) ||
      !sameJSON(pulls.pulls, this._pulls) ||
      !sameJSON(runtime, this._runtime);
    this._images = images.images ?? [];
    this._runtime = runtime;
    this._pulls = pulls.pulls ?? [];
    if (this._pulls.some(p => p.state === 'pulling')) {
      this._watchPulls();
    }
    return changed;
  }

  /** Follow running pulls once a second, then refresh the image list. */
  private _watchPulls(): void {
    if (this._pullTimer !== null || this.isDisposed) {
      return;
    }
    const step = async () => {
      this._pullTimer = null;
      if (this.isDisposed) {
        return;
      }
      try {
        const { pulls } = await requestAPI<{ pulls: IPull[] }>(
          'images/pulls',
          {},
          this.serverSettings
        );
        const before = this._pulls;
        if (!sameJSON(pulls, before)) {
          this._pulls = pulls;
          this.emitChanged();
        }
        const finished = before.some(
          b =>
            b.state === 'pulling' &&
            pulls.some(p => p.ref === b.ref && p.state !== 'pulling')
        );
        if (finished) {
          await this.refresh();
        }
        if (pulls.some(p => p.state === 'pulling')) {
          this._pullTimer = setTimeout(step, 1000);
        }
      } catch {
        this._pullTimer = setTimeout(step, 5000);
      }
    };
    this._pullTimer = setTimeout(step, 1000);
  }

  dispose(): void {
    if (this._pullTimer !== null) {
      clearTimeout(this._pullTimer);
      this._pullTimer = null;
    }
    super.dispose();
  }

  private _images: IImage[] = [];
  private _runtime: IRuntime | null = null;
  private _pulls: IPull[] = [];
  private _pullTimer: ReturnType<typeof setTimeout> | null = null;
}
