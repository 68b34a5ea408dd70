// Browser check of the HPC sidebar's notice when jobs run without containers,
// driven with playwright-core and Debian's chromium against a running `jupyter lab`
// whose jupyter-hpc runs in host mode (ContainerRuntime.mode = host).
//
//   node tests/ui/runtime-ui.mjs
//
// Environment: LAB_URL, LAB_TOKEN, ARTIFACTS, CHROMIUM as for lab-ui.mjs.
// Saves 05-sidebar-host-runtime.png; prints `ok runtime-notice` or `FAIL runtime-notice: ...`.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const require = createRequire(path.join(root, 'labextension', 'package.json'));
const { chromium } = require('playwright-core');

const LAB_URL = (process.env.LAB_URL || 'http://127.0.0.1:8888/').replace(/\/?$/, '/');
const TOKEN = process.env.LAB_TOKEN || '';
const ARTIFACTS = path.resolve(process.env.ARTIFACTS || path.join(root, 'artifacts', 'ui'));
const EXPECTED = 'Containers unavailable on this host: commands run directly on the node';
fs.mkdirSync(ARTIFACTS, { recursive: true });

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hpc-ui-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync']
  });
  let page;
  try {
    page = await context.newPage();
    await page.goto(`${LAB_URL}lab/workspaces/hpc-ui-runtime-${Date.now()}?token=${TOKEN}&reset`,
                    { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('#jupyterlab-splash', { state: 'detached', timeout: 60000 });
    const tab = page.locator('.lm-TabBar-tab[data-id="jupyter-hpc-sidebar"]');
    await tab.waitFor({ timeout: 30000 });
    const panel = page.locator('#jupyter-hpc-sidebar');
    if (!(await panel.isVisible())) {
      await tab.click();
    }
    const notice = panel.locator('.jp-HPC-runtime-notice');
    await notice.waitFor({ timeout: 30000 });
    const text = await notice.innerText();
    if (!text.includes(EXPECTED)) {
      throw new Error(`notice says ${JSON.stringify(text)}`);
    }
    await panel.locator('.jp-HPC-image').first().waitFor({ timeout: 30000 });
    await page.screenshot({ path: path.join(ARTIFACTS, '05-sidebar-host-runtime.png') });
    console.log('ok runtime-notice');
  } catch (error) {
    console.log(`FAIL runtime-notice: ${error && error.stack ? error.stack : error}`);
    if (page) {
      await page.screenshot({ path: path.join(ARTIFACTS, 'FAIL-runtime-notice.png') }).catch(() => undefined);
    }
    process.exitCode = 1;
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main();
