// Browser test of the hub path: log in to JupyterHub, fill the spawn form,
// watch the pending page, and land in JupyterLab with the HPC sidebar, with
// the server running as a Slurm job inside an Apptainer image.
//
//   node tests/ui/hub-ui.mjs
//
// Environment:
//   HUB_URL        base URL of the hub, e.g. http://127.0.0.1:8000/
//   HUB_USER       user to log in as (default alice)
//   HUB_PASSWORD   the hub's password (DummyAuthenticator in the tests)
//   HUB_IMAGE      image id to choose in the form (default site:notebook.sif)
//   ARTIFACTS      directory for PNG screenshots (default artifacts/ui)
//   CHROMIUM       browser executable (default /usr/bin/chromium)
//
// Prints `ok hub-spawn` or `FAIL hub-spawn: reason` and the facts it saw
// as `fact KEY=VALUE` lines; exits non-zero on failure.
import { ARTIFACTS, launchBrowser, log, shot } from './browser.mjs';

const HUB_URL = (process.env.HUB_URL || 'http://127.0.0.1:8000/').replace(/\/?$/, '/');
const USER = process.env.HUB_USER || 'alice';
const PASSWORD = process.env.HUB_PASSWORD || '';
const IMAGE = process.env.HUB_IMAGE || 'site:notebook.sif';
async function run(page) {
  await page.goto(HUB_URL + 'hub/login', { waitUntil: 'domcontentloaded' });
  await page.fill('input[name="username"]', USER);
  await page.fill('input[name="password"]', PASSWORD);
  await shot(page, '50-hub-login');
  await Promise.all([page.waitForURL(/\/hub\/spawn/, { timeout: 60000 }), page.click('#login_submit')]);

  // The spawn form: images from the catalog, partitions from sinfo.
  const form = page.locator('.jupyter-hpc-spawn-form');
  await form.waitFor({ timeout: 60000 });
  const images = await page.locator('#hpc-image option').allTextContents();
  const partitions = await page.locator('#hpc-partition option').allTextContents();
  if (!images.some(t => t.includes('GPU-ready'))) {
    throw new Error(`no GPU-ready image in the form: ${JSON.stringify(images)}`);
  }
  if (!partitions.some(t => t.startsWith('gpu'))) {
    throw new Error(`no gpu partition in the form: ${JSON.stringify(partitions)}`);
  }
  await page.selectOption('#hpc-image', IMAGE);
  await page.selectOption('#hpc-partition', 'cpu');
  await page.fill('#hpc-memory', '1G');
  await page.fill('#hpc-time', '00:30:00');
  await shot(page, '51-hub-spawn-form');

  // Submit; the pending page shows the job's progress, then Lab opens.
  const seen = new Set();
  await page.click('input[type="submit"], button[type="submit"]');
  const deadline = Date.now() + 180000;
  let pendingShot = false;
  while (Date.now() < deadline) {
    const url = page.url();
    if (/\/user\/[^/]+\/lab/.test(url)) {
      break;
    }
    const msg = await page
      .locator('#progress-message')
      .textContent({ timeout: 500 })
      .catch(() => null);
    if (msg && msg.trim()) {
      if (!seen.has(msg.trim())) {
        log('progress:', msg.trim());
      }
      seen.add(msg.trim());
      if (!pendingShot) {
        await shot(page, '52-hub-pending');
        pendingShot = true;
      }
    }
    await page.waitForTimeout(200);
  }
  if (!/\/user\/[^/]+\/lab/.test(page.url())) {
    throw new Error(`Lab did not open; at ${page.url()}; progress seen: ${JSON.stringify([...seen])}`);
  }

  // JupyterLab with the HPC sidebar (shipped in the image's wheel).
  await page.waitForSelector('#jp-main-dock-panel', { timeout: 120000 });
  const tab = page.locator('.lm-TabBar-tab[data-id="jupyter-hpc-sidebar"]');
  await tab.waitFor({ timeout: 60000 });
  const panel = page.locator('#jupyter-hpc-sidebar');
  if (!(await panel.isVisible().catch(() => false))) {
    await tab.click();
  }
  await panel.waitFor({ state: 'visible', timeout: 30000 });
  await panel.locator('.jp-HPC-image').first().waitFor({ timeout: 60000 });
  // The sidebar lists the catalog's images.
  console.log(`fact images=${await panel.locator('.jp-HPC-image').count()}`);
  await shot(page, '53-hub-lab-sidebar');
  for (const m of seen) {
    console.log(`fact progress=${m}`);
  }
  console.log(`fact url=${page.url()}`);
}

async function main() {
  const { context, close } = await launchBrowser();
  const page = await context.newPage();
  let failed = false;
  try {
    await run(page);
    console.log('ok hub-spawn');
  } catch (err) {
    failed = true;
    await shot(page, '59-hub-failure').catch(() => undefined);
    console.log(`FAIL hub-spawn: ${String(err && err.message ? err.message : err).split('\n')[0]}`);
  } finally {
    await close();
  }
  process.exit(failed ? 1 : 0);
}

main();
