// Browser check of the HPC sidebar's notice when jobs run without containers,
// driven with playwright-core and Debian's chromium against a running `jupyter lab`
// whose jupyter-hpc runs in host mode (ContainerRuntime.mode = host).
//
//   node tests/ui/runtime-ui.mjs
//
// Environment: LAB_URL, LAB_TOKEN, ARTIFACTS, CHROMIUM as for lab-ui.mjs.
// Saves 05-sidebar-host-runtime.png; prints `ok runtime-notice` or `FAIL runtime-notice: ...`.
import { launchBrowser, shot } from './browser.mjs';

const LAB_URL = (process.env.LAB_URL || 'http://127.0.0.1:8888/').replace(/\/?$/, '/');
const TOKEN = process.env.LAB_TOKEN || '';
const EXPECTED = 'Containers unavailable on this host: commands run directly on the node';

async function main() {
  const { context, close } = await launchBrowser();
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
    await shot(page, '05-sidebar-host-runtime');
    console.log('ok runtime-notice');
  } catch (error) {
    console.log(`FAIL runtime-notice: ${error && error.stack ? error.stack : error}`);
    if (page) {
      await shot(page, 'FAIL-runtime-notice').catch(() => undefined);
    }
    process.exitCode = 1;
  } finally {
    await close();
  }
}

main();
