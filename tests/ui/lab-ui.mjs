// Browser tests of the JupyterLab HPC sidebar, driven with playwright-core
// and Debian's chromium against a running `jupyter lab`.
//
//   node tests/ui/lab-ui.mjs SCENARIO [SCENARIO...]
//
// Environment:
//   LAB_URL        base URL of the server, e.g. http://127.0.0.1:8899/
//   LAB_TOKEN      its token
//   ARTIFACTS      directory for PNG screenshots (default artifacts/ui)
//   CHROMIUM       browser executable (default /usr/bin/chromium)
//   UI_TIMEOUT_MS  time allowed for a batch job to finish (default 240000)
//   UI_IMAGE       image id the cell jobs run in (default site:notebook.sif)
//   UI_PULL_REF    remote ref pulled through the form (default: the testbed registry's demo/tiny)
//
// Prints one line `ok SCENARIO` or `FAIL SCENARIO: reason` per scenario and
// exits non-zero when one failed.
import { launchBrowser, log, shot } from './browser.mjs';

const LAB_URL = (process.env.LAB_URL || 'http://127.0.0.1:8888/').replace(/\/?$/, '/');
const TOKEN = process.env.LAB_TOKEN || '';
const JOB_TIMEOUT = Number(process.env.UI_TIMEOUT_MS || 240000);
const IMAGE = process.env.UI_IMAGE || 'site:notebook.sif';
const PULL_REF = process.env.UI_PULL_REF || 'docker://127.0.0.1:5000/demo/tiny:latest';

async function api(method, urlPath, body) {
  const response = await fetch(LAB_URL + urlPath, {
    method,
    headers: { Authorization: `token ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    throw new Error(`${method} ${urlPath}: ${response.status} ${text.slice(0, 300)}`);
  }
  return data;
}

async function putNotebook(name, sources) {
  const cells = sources.map(source => ({
    cell_type: 'code',
    execution_count: null,
    metadata: {},
    outputs: [],
    source
  }));
  await api('PUT', `api/contents/${name}`, {
    type: 'notebook',
    format: 'json',
    content: {
      cells,
      metadata: {
        kernelspec: { name: 'python3', display_name: 'Python 3', language: 'python' }
      },
      nbformat: 4,
      nbformat_minor: 5
    }
  });
}

async function openLab(context, urlPath = 'lab') {
  const page = await context.newPage();
  page.on('pageerror', e => log('page error:', e.message));
  page.on('console', m => {
    if (m.type() === 'error' || /jupyter-hpc/.test(m.text())) {
      log(`console.${m.type()}:`, m.text().slice(0, 300));
    }
  });
  // Lab layout is restored per workspace; use a fresh one for each scenario.
  const ws = `hpc-ui-${Date.now()}`;
  const target = urlPath.startsWith('lab/tree/')
    ? `lab/workspaces/${ws}/tree/${urlPath.slice('lab/tree/'.length)}`
    : `lab/workspaces/${ws}`;
  await page.goto(`${LAB_URL}${target}?token=${TOKEN}&reset`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('#jp-main-dock-panel', { timeout: 60000 });
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached', timeout: 60000 });
  return page;
}

async function openSidebar(page) {
  const tab = page.locator('.lm-TabBar-tab[data-id="jupyter-hpc-sidebar"]');
  await tab.waitFor({ timeout: 30000 });
  const panel = page.locator('#jupyter-hpc-sidebar');
  if (!(await panel.isVisible())) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible', timeout: 10000 });
  return panel;
}

/** Close the notifications that may cover the notebook. */
async function dismissToasts(page) {
  for (const btn of await page.locator('.Toastify__close-button').all()) {
    await btn.click().catch(() => undefined);
  }
}

async function runCellAsJob(page, cellIndex, shotPrefix, venv) {
  const cell = page.locator('.jp-Notebook .jp-CodeCell').nth(cellIndex);
  await cell.locator('.jp-InputArea-editor').click();
  await cell.locator('.jp-InputArea-editor').click({ button: 'right' });
  const item = page.locator('.lm-Menu-item:has-text("Run Cell as HPC Batch Job")');
  await item.waitFor({ timeout: 10000 });
  if (shotPrefix) {
    await shot(page, `${shotPrefix}-context-menu`);
  }
  await item.click();
  const dialog = page.locator('.jp-Dialog');
  await dialog.locator('.jp-HPC-run-cell-form').waitFor({ timeout: 30000 });
  const select = dialog.locator('select[name="image"]');
  const values = await select.locator('option').evaluateAll(os => os.map(o => o.value));
  if (!values.includes(IMAGE)) {
    throw new Error(`image ${IMAGE} not offered in the dialog (offered: ${values.join(', ')})`);
  }
  await select.selectOption(IMAGE);
  if (venv) {
    const venvSelect = dialog.locator('select[name="venv"]');
    const offered = await venvSelect.locator('option').evaluateAll(os => os.map(o => o.value));
    if (!offered.includes(venv)) {
      throw new Error(`venv ${venv} not offered in the dialog (offered: ${offered.join(', ')})`);
    }
    await venvSelect.selectOption(venv);
  }
  await dialog.locator('input[name="memory"]').fill('1G');
  await dialog.locator('input[name="time"]').fill('00:10:00');
  if (shotPrefix) {
    await shot(page, `${shotPrefix}-dialog`);
  }
  await dialog.locator('button:has-text("Submit")').click();
  const status = cell.locator('.jp-HPC-cell-status');
  await status.waitFor({ timeout: 30000 });
  const jobId = await status.getAttribute('data-job-id');
  log('submitted job', jobId);
  return { cell, status, jobId };
}

const scenarios = {
  /** The sidebar opens and lists the testbed images; the filter works. */
  async sidebar(context) {
    const page = await openLab(context);
    const panel = await openSidebar(page);
    const images = panel.locator('.jp-HPC-image');
    await images.first().waitFor({ timeout: 30000 });
    const ids = await images.evaluateAll(els => els.map(e => e.getAttribute('data-image-id')));
    const texts = await images.allInnerTexts();
    log('images:', ids.join(', '));
    for (const expected of ['notebook.sif', 'notebook-sandbox']) {
      if (!ids.some(id => id && id.includes(expected))) {
        throw new Error(`image ${expected} not listed (got ${ids.join(', ')} / ${texts.join(' | ')})`);
      }
    }
    await shot(page, '01-sidebar-images');
    // Expand the sandbox image: details and labels show.
    const sandbox = panel.locator('.jp-HPC-image[data-image-id*="notebook-sandbox"]');
    await sandbox.locator('.jp-HPC-item-head').click();
    await sandbox.locator('.jp-HPC-details').waitFor({ timeout: 5000 });
    const format = await sandbox.locator('.jp-HPC-format').innerText();
    if (format.trim() !== 'sandbox') {
      throw new Error(`notebook-sandbox shows format ${format}`);
    }
    await shot(page, '02-sidebar-image-details');
    // Filter.
    await panel.locator('.jp-HPC-search').fill('sandbox');
    await page.waitForFunction(
      total => {
        const n = document.querySelectorAll('#jupyter-hpc-sidebar .jp-HPC-image').length;
        return n >= 1 && n < total;
      },
      ids.length,
      { timeout: 5000 }
    );
    const filtered = await panel.locator('.jp-HPC-image').evaluateAll(els =>
      els.map(e => e.getAttribute('data-image-id'))
    );
    log('filtered:', filtered.join(', '));
    if (!filtered.some(id => id.includes('notebook-sandbox')) || filtered.some(id => id.includes('notebook.sif'))) {
      throw new Error(`filter "sandbox" shows ${filtered.join(', ')}`);
    }
    await shot(page, '03-sidebar-filter');
    // A Charliecloud image carries its runtime badge.
    await panel.locator('.jp-HPC-search').fill('');
    const ch = panel.locator('.jp-HPC-image[data-image-id="site:notebook-ch"]');
    if (await ch.count()) {
      await ch.locator('.jp-HPC-runtime').waitFor({ timeout: 5000 });
      log('notebook-ch shows', await ch.locator('.jp-HPC-runtime').innerText());
    }
    await page.close();
  },

  /** The run dialog offers the user's venvs; the cell runs with the chosen one first on its path. */
  async venv(context) {
    const venv = process.env.UI_VENV || 'ui-venv';
    const name = `hpc-ui-venv-${Date.now()}.ipynb`;
    await putNotebook(name, [
      'import sys, ui_venv_pkg\nprint("prefix", sys.prefix, ui_venv_pkg.WHERE)'
    ]);
    const page = await openLab(context, `lab/tree/${name}`);
    await page.locator('.jp-Notebook .jp-CodeCell').first().waitFor({ timeout: 30000 });
    const { cell, status, jobId } = await runCellAsJob(page, 0, '50-venv', venv);
    await page.waitForFunction(
      el => ['done', 'failed', 'cancelled'].includes(el.dataset.state),
      await status.elementHandle(),
      { timeout: JOB_TIMEOUT, polling: 500 }
    );
    await shot(page, '51-venv-done');
    const text = await cell.locator('.jp-OutputArea').innerText();
    log('job', jobId, 'outputs:', JSON.stringify(text.slice(0, 300)));
    if ((await status.getAttribute('data-state')) !== 'done' || !text.includes(`${venv} ui-venv-package`)) {
      throw new Error(`the cell did not run with venv ${venv}: ${text}`);
    }
    await page.close();
  },

  /** A cell runs as a batch job; its text and figure appear in the cell. */
  async celljob(context) {
    const name = `hpc-ui-celljob-${Date.now()}.ipynb`;
    await putNotebook(name, [
      [
        'print("hello from a batch job")',
        'import socket; print("node:", socket.gethostname())',
        'import matplotlib.pyplot as plt',
        'plt.plot([1, 2, 3], [1, 4, 9])',
        'plt.title("batch figure")',
        'plt.show()',
        '42'
      ].join('\n')
    ]);
    const page = await openLab(context, `lab/tree/${name}`);
    await page.locator('.jp-Notebook .jp-CodeCell').first().waitFor({ timeout: 30000 });
    await openSidebar(page);
    // The command is in the cell toolbar and in the command palette too.
    await page.locator('.jp-Notebook .jp-CodeCell').first().locator('.jp-InputArea-editor').click();
    await page
      .locator('.jp-cell-toolbar [data-command="jupyter-hpc:run-cell"]')
      .first()
      .waitFor({ timeout: 10000 });
    await page.keyboard.press('Escape');
    const paletteInput = page.locator('.lm-CommandPalette input');
    // The shortcut can be swallowed while Lab is busy (slow machines); the
    // View menu entry is the fallback, as a user would do.
    for (let i = 0; i < 6 && !(await paletteInput.isVisible()); i++) {
      if (i % 2 === 0) {
        await page.keyboard.press('Control+Shift+C');
      } else {
        await page.locator('.lm-MenuBar-item:has-text("View")').first().click();
        await page
          .locator('.lm-Menu-item[data-command="apputils:activate-command-palette"]')
          .first()
          .click({ timeout: 5000 })
          .catch(() => page.keyboard.press('Escape'));
      }
      await paletteInput.waitFor({ state: 'visible', timeout: 5000 }).catch(() => undefined);
    }
    await paletteInput.fill('HPC batch');
    await page
      .locator('.lm-CommandPalette-item:has-text("Run Cell as HPC Batch Job")')
      .waitFor({ timeout: 10000 });
    await shot(page, '09-command-palette');
    await page.keyboard.press('Escape');
    const { cell, status, jobId } = await runCellAsJob(page, 0, '10-celljob');
    await dismissToasts(page);
    await shot(page, '11-celljob-submitted');
    // The job shows in the Jobs section.
    await page
      .locator(`#jupyter-hpc-sidebar .jp-HPC-job[data-job-id="${jobId}"]`)
      .waitFor({ timeout: 30000 })
      .catch(() => log('job not (yet) in the jobs list'));
    await page.waitForFunction(
      el => ['done', 'failed', 'cancelled'].includes(el.dataset.state),
      await status.elementHandle(),
      { timeout: JOB_TIMEOUT, polling: 500 }
    );
    await page.waitForTimeout(500);
    await shot(page, '12-celljob-done');
    const state = await status.getAttribute('data-state');
    const text = await cell.locator('.jp-OutputArea').innerText();
    log('state', state, 'outputs:', JSON.stringify(text.slice(0, 500)));
    if (state !== 'done') {
      throw new Error(`job ${jobId} ended ${state}: ${await status.innerText()} / ${text}`);
    }
    if (!text.includes('hello from a batch job')) {
      throw new Error(`stdout missing from the cell outputs: ${text}`);
    }
    if (!text.includes('42')) {
      throw new Error(`execute_result missing from the cell outputs: ${text}`);
    }
    const imgs = await cell.locator('.jp-OutputArea img').count();
    if (imgs < 1) {
      throw new Error('figure (image/png) missing from the cell outputs');
    }
    // The job output viewer opens.
    await status.locator('.jp-HPC-cell-output-button').click();
    await page.locator(`.jp-HPC-output-view[data-job-id="${jobId}"]`).waitFor({ timeout: 10000 });
    await page.waitForTimeout(2500);
    await shot(page, '13-celljob-output-viewer');
    await page.close();
  },

  /** A running job is cancelled from the Jobs list after confirmation. */
  async cancel(context) {
    const name = `hpc-ui-cancel-${Date.now()}.ipynb`;
    await putNotebook(name, [
      'import time\nprint("sleeping", flush=True)\nfor i in range(600):\n    time.sleep(1)\n'
    ]);
    const page = await openLab(context, `lab/tree/${name}`);
    await page.locator('.jp-Notebook .jp-CodeCell').first().waitFor({ timeout: 30000 });
    const panel = await openSidebar(page);
    const { status, jobId } = await runCellAsJob(page, 0, null);
    await dismissToasts(page);
    await page.waitForFunction(
      el => el.dataset.state === 'running',
      await status.elementHandle(),
      { timeout: JOB_TIMEOUT, polling: 500 }
    );
    const row = panel.locator(`.jp-HPC-job[data-job-id="${jobId}"]`);
    await panel.page().locator('#jupyter-hpc-sidebar .jp-ToolbarButtonComponent').first().click();
    await row.waitFor({ timeout: 30000 });
    await page.waitForFunction(
      id => {
        const el = document.querySelector(`#jupyter-hpc-sidebar .jp-HPC-job[data-job-id="${id}"] .jp-HPC-state`);
        return el && el.textContent === 'running';
      },
      jobId,
      { timeout: 60000, polling: 500 }
    );
    await shot(page, '20-cancel-running');
    await row.locator('.jp-HPC-cancel-button').click();
    const dialog = page.locator('.jp-Dialog');
    await dialog.waitFor({ timeout: 5000 });
    await shot(page, '21-cancel-confirm');
    await dialog.locator('button:has-text("Cancel job")').click();
    // The job leaves the list of active jobs: the row goes or shows a final state.
    await page.waitForFunction(
      id => {
        const row = document.querySelector(`#jupyter-hpc-sidebar .jp-HPC-job[data-job-id="${id}"]`);
        if (!row) {
          return true;
        }
        const state = row.querySelector('.jp-HPC-state')?.textContent ?? '';
        return !['running', 'pending', 'cancelling', 'completing'].includes(state);
      },
      jobId,
      { timeout: 90000, polling: 500 }
    );
    await page.waitForFunction(
      el => ['failed', 'cancelled', 'done'].includes(el.dataset.state),
      await status.elementHandle(),
      { timeout: 60000, polling: 500 }
    );
    await page.waitForTimeout(500);
    await shot(page, '22-cancel-done');
    const text = await status.innerText();
    log('cell status after cancel:', text);
    await page.close();
  },

  /**
   * A remote image is pulled with progress: with its Pull button when it is
   * not in the cache yet, else by typing its ref into the pull form.
   */
  async pull(context) {
    const page = await openLab(context);
    const panel = await openSidebar(page);
    const remote = panel.locator('.jp-HPC-image[data-image-id^="remote:"]').first();
    await remote.waitFor({ timeout: 30000 });
    const id = await remote.getAttribute('data-image-id');
    const button = remote.locator('.jp-HPC-pull-button');
    if ((await button.count()) > 0) {
      log(`pulling ${id} with its Pull button`);
      await button.click();
    } else {
      log(`${id} is in the cache already; pulling ${PULL_REF} through the form`);
      await panel.locator('.jp-HPC-pull-ref').fill(PULL_REF);
      await panel.locator('.jp-HPC-pull-ref-button').click();
    }
    await panel.locator('.jp-HPC-pull').first().waitFor({ timeout: 15000 });
    await shot(page, '40-pull-started');
    await page.waitForFunction(
      () => {
        const section = document.querySelector('#jupyter-hpc-sidebar .jp-HPC-images');
        return !!section && !!section.querySelector('.jp-HPC-pull-done, .jp-HPC-pull-error');
      },
      null,
      { timeout: JOB_TIMEOUT, polling: 500 }
    );
    const error = panel.locator('.jp-HPC-pull-error');
    if ((await error.count()) > 0) {
      throw new Error(`pull failed: ${await error.first().innerText()}`);
    }
    await page.waitForFunction(
      id => {
        const row = document.querySelector(`#jupyter-hpc-sidebar .jp-HPC-image[data-image-id="${id}"]`);
        return !!row && !row.querySelector('.jp-HPC-pull-button') && !!row.querySelector('.jp-HPC-pulled');
      },
      id,
      { timeout: 60000, polling: 500 }
    );
    await remote.locator('.jp-HPC-item-head').click();
    await remote.locator('.jp-HPC-details').waitFor({ timeout: 5000 });
    await shot(page, '41-pull-done');
    await page.close();
  },

  /** A web service job opens in a Lab tab through the proxy. */
  async service(context) {
    const marker = `hpc-ui-service-${Date.now()}`;
    const svc = await api('POST', 'jupyter-hpc/api/services', {
      image: IMAGE,
      name: marker,
      command: ['python3', '-m', 'http.server', '{port}', '--bind', '0.0.0.0'],
      memory: '512M',
      time: '00:10:00'
    });
    log('service job', svc.job_id);
    try {
      const page = await openLab(context);
      const panel = await openSidebar(page);
      const row = panel.locator(`.jp-HPC-service[data-job-id="${svc.job_id}"]`);
      await row.waitFor({ timeout: 30000 });
      const open = row.locator('.jp-HPC-open-tab-button');
      const deadline = Date.now() + JOB_TIMEOUT;
      while (await open.isDisabled()) {
        if (Date.now() > deadline) {
          throw new Error(`service ${svc.job_id} never became ready: ${await row.innerText()}`);
        }
        await page.waitForTimeout(1000);
      }
      await shot(page, '30-service-listed');
      await open.click();
      const tab = page.locator(`#jupyter-hpc-service-${svc.job_id}`);
      await tab.waitFor({ timeout: 10000 });
      const frame = page.frameLocator(`#jupyter-hpc-service-${svc.job_id} iframe`);
      // http.server lists the job's working directory.
      await frame.locator('body').waitFor({ timeout: 30000 });
      let body = '';
      for (let i = 0; i < 30; i++) {
        body = await frame.locator('body').innerText().catch(() => '');
        if (/Directory listing/i.test(body)) {
          break;
        }
        await page.waitForTimeout(1000);
        await frame.locator('body').evaluate(() => location.reload()).catch(() => undefined);
      }
      await shot(page, '31-service-tab');
      if (!/Directory listing/i.test(body)) {
        throw new Error(`service page did not load: ${body.slice(0, 300)}`);
      }
      // Stop it from the sidebar.
      await row.locator('.jp-HPC-stop-button').click();
      await page.locator('.jp-Dialog button:has-text("Stop service")').click();
      await row.waitFor({ state: 'detached', timeout: 60000 });
      await shot(page, '32-service-stopped');
      await page.close();
    } finally {
      await api('DELETE', `jupyter-hpc/api/services/${svc.job_id}`).catch(() => undefined);
    }
  },

  /**
   * A running job shows live vitals charts in the Jobs section (memory grows);
   * without JupyterHub the Share button of a service is disabled and says why.
   */
  async vitals(context) {
    const code =
      'import time\nkeep = []\nfor i in range(12):\n' +
      '    b = bytearray(25 * 2**20)\n    b[::4096] = b"x" * len(b[::4096])\n' +
      '    keep.append(b)\n    time.sleep(1)\ntime.sleep(120)\n';
    const cell = await api('POST', 'jupyter-hpc/api/cells', {
      code,
      image: IMAGE,
      memory: '1G',
      time: '00:10:00'
    });
    const svc = await api('POST', 'jupyter-hpc/api/services', {
      image: IMAGE,
      name: `hpc-ui-share-${Date.now()}`,
      command: ['python3', '-m', 'http.server', '{port}', '--bind', '0.0.0.0'],
      memory: '512M',
      time: '00:10:00'
    });
    log('vitals job', cell.job_id, 'service job', svc.job_id);
    try {
      const page = await openLab(context);
      const panel = await openSidebar(page);
      const vitals = panel.locator(`.jp-HPC-vitals[data-job-id="${cell.job_id}"]`);
      await vitals.waitFor({ timeout: 90000 });
      // The memory chart gets a line with at least two points, and the value grows.
      const readMem = async () => {
        const text = await vitals.locator('.jp-HPC-spark-mem .jp-HPC-spark-value').innerText();
        const m = /([0-9.]+) (MiB|GiB)/.exec(text);
        return m ? Number(m[1]) * (m[2] === 'GiB' ? 1024 : 1) : null;
      };
      await page.waitForFunction(
        id => {
          const p = document.querySelector(
            `#jupyter-hpc-sidebar .jp-HPC-vitals[data-job-id="${id}"] .jp-HPC-spark-mem path.jp-HPC-spark-line`
          );
          return !!p && (p.getAttribute('d') || '').includes('L');
        },
        cell.job_id,
        { timeout: 60000, polling: 500 }
      );
      const first = await readMem();
      let last = first;
      const deadline = Date.now() + 40000;
      while ((last === null || first === null || last <= first + 50) && Date.now() < deadline) {
        await page.waitForTimeout(1000);
        last = await readMem();
      }
      log(`sidebar memory ${first} MiB -> ${last} MiB`);
      if (first === null || last === null || last <= first + 50) {
        throw new Error(`memory chart did not grow: ${first} -> ${last}: ${await vitals.innerText()}`);
      }
      const gpu = await vitals.locator('.jp-HPC-spark-gpu, .jp-HPC-gpu-na').count();
      if (gpu !== 0) {
        throw new Error('a CPU-only job shows GPU vitals');
      }
      await shot(page, '50-vitals-chart');
      // Sharing: unavailable without JupyterHub, and the button says why.
      const row = panel.locator(`.jp-HPC-service[data-job-id="${svc.job_id}"]`);
      await row.waitFor({ timeout: 30000 });
      const share = row.locator('.jp-HPC-share-button');
      await share.waitFor({ timeout: 30000 });
      const title = (await share.getAttribute('title')) || '';
      if (!(await share.isDisabled()) || !/unavailable.*JupyterHub/i.test(title)) {
        throw new Error(`Share button: disabled=${await share.isDisabled()} title=${title}`);
      }
      await shot(page, '51-share-unavailable');
      await page.close();
    } finally {
      await api('DELETE', `jupyter-hpc/api/jobs/${cell.job_id}`).catch(() => undefined);
      await api('DELETE', `jupyter-hpc/api/services/${svc.job_id}`).catch(() => undefined);
    }
  }
};

async function main() {
  const wanted = process.argv.slice(2);
  if (wanted.length === 0 || wanted.some(w => !(w in scenarios))) {
    console.error(`usage: lab-ui.mjs ${Object.keys(scenarios).join('|')} ...`);
    process.exit(2);
  }
  const { context, close } = await launchBrowser();
  let failed = 0;
  try {
    for (const name of wanted) {
      const start = Date.now();
      try {
        await scenarios[name](context);
        console.log(`ok ${name} (${((Date.now() - start) / 1000).toFixed(1)}s)`);
      } catch (error) {
        failed++;
        console.log(`FAIL ${name}: ${error && error.stack ? error.stack : error}`);
        for (const p of context.pages()) {
          await shot(p, `FAIL-${name}`).catch(() => undefined);
          await p.close().catch(() => undefined);
        }
      }
    }
  } finally {
    await close();
  }
  process.exit(failed ? 1 : 0);
}

main();
