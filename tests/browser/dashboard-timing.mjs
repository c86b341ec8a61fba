// How long the dashboard takes to show a large registry in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): run by `make bench-scale`
// (crates/bench/src/dashboard.rs), which starts the registry, fills it and reads the one
// JSON line this script prints on its standard output.
//
// It lives here, beside the dashboard's browser test, so that it uses the same pinned
// playwright-core from tests/browser/node_modules (Node resolves packages from the
// script's folder), installed the same way (npm ci).
//
// Two measures, each several times:
// - first render: a fresh browser context (nothing cached) opens `/`; the time from the
//   navigation's start until the page shows the summary counting the whole registry and
//   the first page of services drawn (no longer marked busy);
// - search: the name typed into the search box; the time until the list shows exactly the
//   services whose name contains it. It includes the page's pause after typing (300 ms)
//   before it asks the server, as a person waits for it.
// Times are read in the page (performance.now(), on every animation frame), so they are
// when the page could be painted with it, not when this script heard of it.

import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this script through make bench-scale`);
  return value;
};

const REGISTRY_URL = env('REGISTRY_URL');
// The page shows the system once its summary counts at least this many instances.
const INSTANCES = Number(env('INSTANCES'));
const SEARCH = env('SEARCH');
const SEARCH_MATCHES = Number(env('SEARCH_MATCHES'));
const REPEAT = Number(process.env.REPEAT || '5');
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Longest any one render or search may take before the run fails (the target is 2 s).
const DEADLINE_MS = 60000;
// Services per page of the dashboard.
const PAGE_SIZE = 50;

const log = (line) => console.error(`[dashboard timing] ${line}`);

// In the page: performance.now() once the summary counts `instances` or more and the first
// page of services is drawn, else false.
function systemShown([instances, pageSize]) {
  const count = (key) => Number(document.querySelector(`#summary li.stat[data-stat="${key}"]`)?.dataset.count || 0);
  const list = document.getElementById('service-list');
  const drawn = list.querySelectorAll('article.service').length;
  const services = count('services');
  return count('instances') >= instances && services > 0 && list.getAttribute('aria-busy') === 'false'
    && drawn === Math.min(pageSize, services) && performance.now();
}

// In the page: performance.now() once the list shows `matches` services, every one of them
// containing `term`, as the answer to that search; else false.
function searchShown([term, matches]) {
  const list = document.getElementById('service-list');
  const names = [...list.querySelectorAll('article.service')].map((a) => a.dataset.service);
  return list.getAttribute('aria-busy') === 'false'
    && document.getElementById('page-indicator').textContent.includes(`names containing "${term}"`)
    && names.length === matches && names.every((name) => name.includes(term)) && performance.now();
}

// Waits with a deadline for `predicate` to return a time; fails naming `what`.
async function timeOf(page, what, predicate, arg) {
  try {
    const handle = await page.waitForFunction(predicate, arg, { timeout: DEADLINE_MS, polling: 'raf' });
    return await handle.jsonValue();
  } catch (err) {
    const shown = await page.evaluate(() => ({
      connection: document.getElementById('connection')?.textContent.trim(),
      notice: document.getElementById('notice')?.textContent.trim(),
      pager: document.getElementById('page-indicator')?.textContent.trim(),
    })).catch(() => ({}));
    throw new Error(`no ${what} within ${DEADLINE_MS} ms (page shows ${JSON.stringify(shown)}): ${err.message}`);
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM_PATH,
  headless: true,
  // Chromium's sandbox refuses to start as root.
  args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
});
try {
  const firstRender = [];
  let page;
  for (let i = 0; i < REPEAT; i += 1) {
    if (page) await page.context().close();
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    page = await context.newPage();
    await page.goto(`${REGISTRY_URL}/`, { waitUntil: 'commit' });
    const ms = await timeOf(page, 'first render', systemShown, [INSTANCES, PAGE_SIZE]);
    log(`first render ${i + 1}: ${ms.toFixed(0)} ms`);
    firstRender.push(ms);
  }

  // The searches, on the last page opened: each from the unsearched first page.
  const search = [];
  const box = page.getByLabel('Service name');
  for (let i = 0; i < REPEAT; i += 1) {
    await box.fill('');
    await timeOf(page, 'first page again', () => {
      const list = document.getElementById('service-list');
      return list.getAttribute('aria-busy') === 'false' && !document.getElementById('page-indicator').textContent.includes('names containing')
        && list.querySelectorAll('article.service').length > 0 && performance.now();
    });
    const typed = await page.evaluate(() => performance.now());
    await box.fill(SEARCH);
    const ms = (await timeOf(page, `search for ${SEARCH}`, searchShown, [SEARCH, SEARCH_MATCHES])) - typed;
    log(`search ${i + 1}: ${ms.toFixed(0)} ms`);
    search.push(ms);
  }
  console.log(JSON.stringify({ chromium: browser.version(), first_render_ms: firstRender, search_ms: search }));
} finally {
  await browser.close();
}
