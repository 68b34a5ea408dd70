import { LabIcon } from '@jupyterlab/ui-components';

const HPC_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="3" y="3" width="18" height="5" rx="1"/>
    <rect x="3" y="10" width="18" height="5" rx="1"/>
    <rect x="3" y="17" width="18" height="4" rx="1"/>
  </g>
  <g class="jp-icon-contrast0" fill="#4CAF50">
    <circle cx="6.5" cy="5.5" r="1.2"/>
    <circle cx="6.5" cy="12.5" r="1.2"/>
    <circle cx="6.5" cy="19" r="1.2"/>
  </g>
</svg>`;

/** Icon of the HPC sidebar and of the "Run cell as HPC batch job" command. */
export const hpcIcon = new LabIcon({ name: 'jupyter-hpc:hpc', svgstr: HPC_SVG });
