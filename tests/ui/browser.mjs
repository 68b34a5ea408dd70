// Shared by the browser tests: Debian's chromium through playwright-core,
// a fresh profile per run, and PNG screenshots under $ARTIFACTS.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '..', '..');
const require = createRequire(path.join(root, 'labextension', 'package.json'));
const { chromium } = require('playwright-core');

export const ARTIFACTS = path.resolve(process.env.ARTIFACTS || path.join(root, 'artifacts', 'ui'));
fs.mkdirSync(ARTIFACTS, { recursive: true });

export function log(...args) {
  console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...args);
}

export async function shot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  log('screenshot', file);
}

/**
 * Headless chromium with a new empty profile. Without the background-networking
 * flags chromium keeps trying hosts that a closed test network refuses.
 * Returns the browser context and a close() that also removes the profile.
 */
export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hpc-ui-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync'
    ]
  });
  const close = async () => {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}
