import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  MainAreaWidget,
  Notification,
  WidgetTracker,
  showDialog
} from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IFrame, refreshIcon } from '@jupyterlab/ui-components';

import { CellJobController } from './celljobs';
import { APIError, proxyURL, requestAPI } from './handler';
import { hpcIcon } from './icons';
import {
  CellJob,
  CellJobStatus,
  ImagesModel,
  JobsModel,
  PollingModel,
  ServicesModel,
  VitalsModel
} from './models';
import {
  CommandIDs,
  DEFAULT_SETTINGS,
  IHPCSettings,
  IImage,
  IJob,
  IPartition,
  IService,
  IShareRecord,
  IVenv,
  PLUGIN_ID
} from './tokens';
import { describeError } from './widgets/common';
import {
  IRunCellChoice,
  IServiceChoice,
  IShareChoice,
  RunCellForm,
  ServiceForm,
  ShareForm,
  loadLastChoice,
  saveLastChoice
} from './widgets/dialogs';
import { createOutputWidget } from './widgets/output';
import { createSidebar } from './widgets/sidebar';

export * from './handler';
export * from './models';
export * from './tokens';

/** A path on the hub (e.g. a share link) as an absolute URL of this page's origin. */
function absoluteURL(path: string): string {
  try {
    return new URL(path, window.location.origin).href;
  } catch {
    return path;
  }
}

/** Explain a failed submission and what to do about it. */
function submissionMessage(what: string, error: unknown): string {
  const e = error as APIError;
  if (e instanceof APIError && e.status === 400 && e.field) {
    return `${what}: invalid ${e.field}: ${e.message}. Change it in the dialog and try again.`;
  }
  if (e instanceof APIError) {
    return `${what}: ${describeError(e)}`;
  }
  return `${what}: ${String(error)}`;
}

/**
 * One notification per kind of trouble (Slurm down, server unreachable, API
 * missing), shared by all models, dismissed once requests succeed again.
 */
class TroubleNotifier {
  watch(name: string, model: PollingModel): void {
    model.errorChanged.connect((_, error) => this._update(name, error));
  }

  private _update(name: string, error: APIError | null): void {
    if (error) {
      this._failing.add(name);
      if (this._id === null) {
        this._message = describeError(error);
        this._id = Notification.warning(this._message, { autoClose: false });
      }
    } else {
      this._failing.delete(name);
      if (this._failing.size === 0 && this._id !== null) {
        Notification.dismiss(this._id);
        this._id = null;
        Notification.success('The HPC cluster is answering again.', {
          autoClose: 3000
        });
      }
    }
  }

  private _failing = new Set<string>();
  private _id: string | null = null;
  private _message = '';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'HPC sidebar: images, Slurm jobs and services; run notebook cells as batch jobs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ISettingRegistry, ICommandPalette, ILayoutRestorer],
  activate: async (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const { commands, shell } = app;
    const serverSettings: ServerConnection.ISettings =
      app.serviceManager.serverSettings;
    let settings: IHPCSettings = { ...DEFAULT_SETTINGS };

    const modelOptions = {
      refreshInterval: settings.refreshInterval,
      serverSettings
    };
    const images = new ImagesModel({
      ...modelOptions,
      refreshInterval: Math.max(30, settings.refreshInterval * 3)
    });
    const jobs = new JobsModel(modelOptions);
    const services = new ServicesModel(modelOptions);
    // Vitals are polled only while the HPC sidebar is shown (and the tab visible).
    let sidebarWidget: Widget | null = null;
    const vitals = new VitalsModel({
      serverSettings,
      refreshInterval: settings.vitalsInterval,
      historyLength: settings.vitalsHistory,
      isActive: () =>
        settings.showVitals && !!sidebarWidget && sidebarWidget.isVisible
    });

    const notifier = new TroubleNotifier();
    notifier.watch('images', images);
    notifier.watch('jobs', jobs);
    notifier.watch('services', services);

    const applySettings = (composite: Partial<IHPCSettings>) => {
      settings = { ...DEFAULT_SETTINGS, ...composite };
      jobs.refreshInterval = settings.refreshInterval;
      services.refreshInterval = settings.refreshInterval;
      images.refreshInterval = Math.max(30, settings.refreshInterval * 3);
      vitals.refreshInterval = settings.vitalsInterval;
      vitals.historyLength = settings.vitalsHistory;
      if (!settings.showVitals) {
        vitals.clear();
      }
    };
    if (settingRegistry) {
      try {
        const loaded = await settingRegistry.load(PLUGIN_ID);
        applySettings(loaded.composite as Partial<IHPCSettings>);
        loaded.changed.connect(() =>
          applySettings(loaded.composite as Partial<IHPCSettings>)
        );
      } catch (error) {
        console.warn('jupyter-hpc: settings could not be loaded', error);
      }
    }

    // Job output viewers.
    const outputs = new WidgetTracker<MainAreaWidget>({
      namespace: 'jupyter-hpc-output'
    });
    const openOutput = (jobId: string) => {
      const existing = outputs.find(w => w.id === `jupyter-hpc-output-${jobId}`);
      if (existing) {
        shell.activateById(existing.id);
        return;
      }
      const widget = createOutputWidget(jobId, jobs);
      void outputs.add(widget);
      shell.add(widget, 'main', { mode: 'split-right' });
      shell.activateById(widget.id);
    };

    const cellJobs = new CellJobController({
      serverSettings,
      openOutput,
      notify: (job: CellJob, status: CellJobStatus) => {
        void jobs.refresh().catch(() => undefined);
        if (status.status !== 'ok' && (status.state || '').toUpperCase() !== 'CANCELLED') {
          Notification.error(
            `Batch job ${job.jobId} failed (${(status.state || 'error').toLowerCase()}). Open "Job output" on the cell to see why.`,
            { autoClose: 8000 }
          );
        }
      }
    });
    notebooks.widgetAdded.connect((_, panel) => {
      void panel.context.ready.then(() => cellJobs.resume(panel));
    });

    const currentCodeCell = (): CodeCell | null => {
      const cell = notebooks.activeCell;
      return cell instanceof CodeCell ? cell : null;
    };

    const confirm = async (title: string, body: string, label: string) => {
      const result = await showDialog({
        title,
        body,
        buttons: [
          Dialog.cancelButton({ label: 'Keep' }),
          Dialog.warnButton({ label })
        ]
      });
      return result.button.accept;
    };

    const loadPartitions = async (): Promise<IPartition[]> => {
      try {
        const answer = await requestAPI<{ partitions: IPartition[] }>(
          'partitions',
          {},
          serverSettings
        );
        return answer.partitions ?? [];
      } catch (error) {
        Notification.warning(
          `Partitions could not be listed (${describeError(
            error as APIError
          )}); the cluster default is used.`,
          { autoClose: 5000 }
        );
        return [];
      }
    };

    const loadVenvs = async (): Promise<IVenv[]> => {
      try {
        const answer = await requestAPI<{ venvs: IVenv[] }>('venvs', {}, serverSettings);
        return answer.venvs ?? [];
      } catch {
        return []; // no venvs to offer: the dialogs leave the field out
      }
    };

    const initialChoice = (runnable: IImage[]): IRunCellChoice => {
      const last = loadLastChoice();
      const choice: IRunCellChoice = {
        image: settings.defaultImage,
        partition: settings.defaultPartition,
        gpus: settings.defaultGpus,
        cpus: settings.defaultCpus,
        memory: settings.defaultMemory,
        time: settings.defaultTime,
        ...last
      };
      const known = (id: string) =>
        runnable.some(i => i.id === id || i.name === id || i.path === id);
      if (!choice.image || (runnable.length && !known(choice.image))) {
        const byName = runnable.find(
          i => i.name === settings.defaultImage || i.path === settings.defaultImage
        );
        choice.image = byName?.id ?? runnable[0]?.id ?? choice.image;
      } else {
        const match = runnable.find(
          i => i.name === choice.image || i.path === choice.image
        );
        if (match) {
          choice.image = match.id;
        }
      }
      return choice;
    };

    const loadImages = async (): Promise<IImage[]> => {
      if (!images.loaded || images.images.length === 0) {
        await images.refresh().catch(() => undefined);
      }
      return images.runnable;
    };

    // ---- commands --------------------------------------------------------
    commands.addCommand(CommandIDs.runCell, {
      label: args =>
        args['toolbar'] ? '' : 'Run Cell as HPC Batch Job…',
      caption: 'Run the active code cell as a Slurm batch job inside an image',
      icon: hpcIcon,
      isEnabled: () => currentCodeCell() !== null,
      execute: async () => {
        const panel = notebooks.currentWidget;
        const cell = currentCodeCell();
        if (!panel || !cell) {
          Notification.info('Select a code cell in a notebook first.', {
            autoClose: 4000
          });
          return;
        }
        const [runnable, partitions, venvs] = await Promise.all([
          loadImages(),
          loadPartitions(),
          loadVenvs()
        ]);
        if (runnable.length === 0) {
          Notification.error(
            'No image is available to run the cell in. Put a .sif image in ~/images or ask your administrators to add one.',
            { autoClose: 8000 }
          );
          return;
        }
        const initial = initialChoice(runnable);
        if (initial.venv && !venvs.some(v => v.name === initial.venv)) {
          initial.venv = undefined; // removed since it was last used
        }
        const form = new RunCellForm({
          images: runnable,
          partitions,
          initial,
          venvs
        });
        const result = await showDialog<IRunCellChoice>({
          title: 'Run cell as HPC batch job',
          body: form,
          buttons: [
            Dialog.cancelButton(),
            Dialog.okButton({ label: 'Submit' })
          ],
          focusNodeSelector: 'select'
        });
        if (!result.button.accept || !result.value) {
          return;
        }
        const choice = result.value;
        saveLastChoice(choice);
        try {
          const jobId = await cellJobs.run(panel, cell, {
            image: choice.image,
            partition: choice.partition,
            gpus: choice.gpus,
            cpus: choice.cpus,
            memory: choice.memory,
            time: choice.time,
            exclusive: !!choice.exclusive,
            ...(choice.venv ? { venv: choice.venv } : {})
          });
          void jobs.refresh().catch(() => undefined);
          Notification.info(`Submitted batch job ${jobId}.`, { autoClose: 3000 });
        } catch (error) {
          Notification.error(submissionMessage('The job was not submitted', error), {
            autoClose: false
          });
        }
      }
    });

    commands.addCommand(CommandIDs.cancelCellJob, {
      label: 'Cancel HPC Batch Job of Cell',
      caption: 'Cancel the batch job the active cell runs as',
      isEnabled: () => {
        const cell = currentCodeCell();
        const job = cell ? cellJobs.jobOf(cell) : undefined;
        return !!job && !job.status.done;
      },
      execute: async () => {
        const cell = currentCodeCell();
        if (cell) {
          try {
            await cellJobs.confirmCancel(cell);
          } catch (error) {
            Notification.error(submissionMessage('The job was not cancelled', error));
          }
        }
      }
    });

    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh HPC Images, Jobs and Services',
      caption: 'Refresh images, jobs and services now',
      icon: args => (args['toolbar'] === false ? undefined : refreshIcon),
      execute: async () => {
        await Promise.all([
          images.refresh().catch(() => undefined),
          jobs.refresh().catch(() => undefined),
          services.refresh().catch(() => undefined)
        ]);
      }
    });

    commands.addCommand(CommandIDs.openOutput, {
      label: args => `Show Output of Job ${args['jobId'] ?? ''}`,
      execute: args => {
        const jobId = String(args['jobId'] ?? '');
        if (jobId) {
          openOutput(jobId);
        }
      }
    });

    const serviceURL = (service: IService): string => {
      const url = service.url;
      if (!url) {
        return proxyURL(service.job_id, serverSettings);
      }
      if (/^https?:\/\//.test(url) || url.startsWith('/')) {
        return url;
      }
      return serverSettings.baseUrl + url;
    };

    const openService = (service: IService, where: 'tab' | 'browser') => {
      const url = serviceURL(service);
      if (where === 'browser') {
        window.open(url, '_blank', 'noopener');
        return;
      }
      const id = `jupyter-hpc-service-${service.job_id}`;
      for (const widget of shell.widgets('main')) {
        if (widget.id === id) {
          shell.activateById(id);
          return;
        }
      }
      const content = new IFrame({
        sandbox: [
          'allow-scripts',
          'allow-same-origin',
          'allow-forms',
          'allow-popups',
          'allow-downloads',
          'allow-modals'
        ]
      });
      content.url = url;
      content.addClass('jp-HPC-service-frame');
      const widget = new MainAreaWidget({ content });
      widget.id = id;
      widget.title.label = service.name || `Service ${service.job_id}`;
      widget.title.caption = url;
      widget.title.icon = hpcIcon;
      widget.title.closable = true;
      shell.add(widget, 'main');
      shell.activateById(id);
    };

    commands.addCommand(CommandIDs.openService, {
      label: args =>
        args['browser'] ? 'Open HPC Service in Browser Tab' : 'Open HPC Service',
      execute: args => {
        const jobId = String(args['jobId'] ?? '');
        const service = services.get(jobId) ?? {
          job_id: jobId,
          name: String(args['name'] ?? ''),
          state: 'RUNNING',
          node: null,
          url: (args['url'] as string) ?? null
        };
        openService(service, args['browser'] ? 'browser' : 'tab');
      }
    });

    commands.addCommand(CommandIDs.startService, {
      label: 'Start HPC Service…',
      caption: 'Start a web service as a batch job and open it through the proxy',
      icon: hpcIcon,
      execute: async () => {
        const [runnable, partitions, venvs] = await Promise.all([
          loadImages(),
          loadPartitions(),
          loadVenvs()
        ]);
        const initial = initialChoice(runnable);
        if (initial.venv && !venvs.some(v => v.name === initial.venv)) {
          initial.venv = undefined;
        }
        const form = new ServiceForm({
          images: runnable,
          partitions,
          initial,
          venvs
        });
        const result = await showDialog<IServiceChoice>({
          title: 'Start a service',
          body: form,
          buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Start' })]
        });
        if (!result.button.accept || !result.value) {
          return;
        }
        const v = result.value;
        try {
          const service = await services.launch({
            image: v.image,
            command: v.command,
            name: v.name,
            partition: v.partition || undefined,
            gpus: v.gpus,
            cpus: v.cpus,
            memory: v.memory,
            time: v.time,
            exclusive: !!v.exclusive,
            instance: !!v.instance,
            ...(v.venv ? { venv: v.venv } : {})
          });
          Notification.info(
            `Service "${service.name}" submitted as job ${service.job_id}; open it from the HPC sidebar once it runs.`,
            { autoClose: 5000 }
          );
        } catch (error) {
          Notification.error(submissionMessage('The service was not started', error), {
            autoClose: false
          });
        }
      }
    });

    // ---- sidebar -------------------------------------------------------------
    const shareService = async (service: IService, current?: IShareRecord) => {
      const form = new ShareForm({
        users: current?.users,
        groups: current?.groups,
        hint:
          'They open it through JupyterHub with their own login and reach this service only ' +
          '(not your notebook server, files or other jobs). The share ends when the job ends.'
      });
      const result = await showDialog<IShareChoice>({
        title: `Share "${service.name || service.job_id}"`,
        body: form,
        buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Share' })]
      });
      if (!result.button.accept || !result.value) {
        return;
      }
      const { users, groups } = result.value;
      try {
        const share = await services.share(service.job_id, users, groups);
        if (share.shared && share.url) {
          Notification.success(
            `Shared with ${[...share.users, ...share.groups.map(g => `group ${g}`)].join(', ')}: ${absoluteURL(share.url)}`,
            { autoClose: 8000 }
          );
        } else {
          Notification.info('The service is no longer shared.', { autoClose: 4000 });
        }
      } catch (error) {
        Notification.error(submissionMessage('The service was not shared', error), {
          autoClose: false
        });
      }
    };

    const sidebar = createSidebar({
      commands,
      images,
      jobs,
      services,
      vitals,
      actions: {
        share: (service: IService, current?: IShareRecord) =>
          void shareService(service, current),
        revoke: async (service: IService) => {
          if (
            await confirm(
              'Stop sharing?',
              `Nobody but you will be able to open "${service.name}" (job ${service.job_id}) any more.`,
              'Revoke'
            )
          ) {
            try {
              await services.revoke(service.job_id);
            } catch (error) {
              Notification.error(submissionMessage('The share was not revoked', error));
            }
          }
        },
        copyShareLink: (share: IShareRecord) => {
          const url = absoluteURL(share.url);
          navigator.clipboard?.writeText(url).then(
            () => Notification.info(`Copied ${url}`, { autoClose: 3000 }),
            () => Notification.info(url, { autoClose: false })
          );
        },
        pull: (ref: string) => {
          images.pull(ref).then(
            () =>
              Notification.info(`Pulling ${ref}; progress is shown in the HPC sidebar.`, {
                autoClose: 4000
              }),
            error =>
              Notification.error(submissionMessage(`Could not pull ${ref}`, error), {
                autoClose: false
              })
          );
        },
        cancel: async (job: IJob) => {
          if (
            await confirm(
              'Cancel batch job?',
              `Job ${job.id} (${job.name}) will be cancelled.`,
              'Cancel job'
            )
          ) {
            try {
              await jobs.cancel(job.id);
            } catch (error) {
              Notification.error(submissionMessage('The job was not cancelled', error));
            }
          }
        },
        openOutput: (job: IJob) => openOutput(job.id),
        open: openService,
        stop: async (service: IService) => {
          if (
            await confirm(
              'Stop service?',
              `The service "${service.name}" (job ${service.job_id}) will be stopped.`,
              'Stop service'
            )
          ) {
            try {
              await services.stop(service.job_id);
              void jobs.refresh().catch(() => undefined);
            } catch (error) {
              Notification.error(submissionMessage('The service was not stopped', error));
            }
          }
        },
        start: () => void commands.execute(CommandIDs.startService)
      }
    });
    shell.add(sidebar, 'left', { rank: 900 });
    sidebarWidget = sidebar;
    if (restorer) {
      restorer.add(sidebar, sidebar.id);
    }

    commands.addCommand(CommandIDs.openSidebar, {
      label: 'Show HPC Sidebar',
      execute: () => shell.activateById(sidebar.id)
    });

    if (palette) {
      const category = 'HPC';
      for (const command of [
        CommandIDs.runCell,
        CommandIDs.cancelCellJob,
        CommandIDs.openSidebar,
        CommandIDs.refresh,
        CommandIDs.startService
      ]) {
        palette.addItem({ command, category });
      }
    }

    notebooks.activeCellChanged.connect(() => {
      commands.notifyCommandChanged(CommandIDs.runCell);
      commands.notifyCommandChanged(CommandIDs.cancelCellJob);
    });
  }
};

export default plugin;
