import { CommandRegistry } from '@lumino/commands';
import { CommandToolbarButton, SidePanel } from '@jupyterlab/ui-components';

import { hpcIcon } from '../icons';
import { ImagesModel, JobsModel, ServicesModel, VitalsModel } from '../models';
import { CommandIDs } from '../tokens';
import { IImagesActions, ImagesSection } from './images';
import { IJobsActions, JobsSection } from './jobs';
import { IServicesActions, ServicesSection } from './services';

export interface ISidebarOptions {
  commands: CommandRegistry;
  images: ImagesModel;
  jobs: JobsModel;
  services: ServicesModel;
  /** Live vitals of running jobs (charts in the Jobs section); none: no charts. */
  vitals?: VitalsModel | null;
  actions: IImagesActions & IJobsActions & IServicesActions;
}

/** The "HPC" panel of the left sidebar: Images, Jobs and Services. */
export function createSidebar(options: ISidebarOptions): SidePanel {
  const panel = new SidePanel();
  panel.id = 'jupyter-hpc-sidebar';
  panel.addClass('jp-HPC-sidebar');
  panel.title.icon = hpcIcon;
  panel.title.caption = 'HPC: images, jobs and services';
  const heading = document.createElement('h2');
  heading.className = 'jp-HPC-heading';
  heading.textContent = 'HPC';
  panel.header.node.appendChild(heading);
  panel.toolbar.addItem(
    'refresh',
    new CommandToolbarButton({
      commands: options.commands,
      id: CommandIDs.refresh,
      label: ''
    })
  );
  panel.addWidget(new ImagesSection(options.images, options.actions));
  panel.addWidget(
    new JobsSection(options.jobs, options.actions, options.vitals ?? null)
  );
  panel.addWidget(new ServicesSection(options.services, options.actions));
  return panel;
}
