// The registry's dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core). Run by tests/tests/tools/browser_dashboard.rs, which starts the registries,
// registers the instances and reads this script's standard output: the line
// `stop-heartbeats` tells it to stop renewing the lease of LAPSE_SERVICE/LAPSE_INSTANCE.
//
// Every wait has a deadline and names what it waited for; the exit status is the verdict.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this script through tests/tests/tools/browser_dashboard.rs`);
  return value;
};

const REGISTRY_URL = env('REGISTRY_URL');
const GUARDED_REGISTRY_URL = env('GUARDED_REGISTRY_URL');
const PROXIED_REGISTRY_URL = env('PROXIED_REGISTRY_URL');
const PRESERVING_REGISTRY_URL = env('PRESERVING_REGISTRY_URL');
const PAGED_REGISTRY_URL = env('PAGED_REGISTRY_URL');
const PAGED_SERVICES = Number(env('PAGED_SERVICES'));
const READ_TOKEN = env('READ_TOKEN');
const LAPSE_SERVICE = env('LAPSE_SERVICE');
const LAPSE_INSTANCE = env('LAPSE_INSTANCE');
const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS_DIR = env('ARTIFACTS_DIR');

// Longest wait for any one thing the page should show.
const DEADLINE_MS = 20000;

const log = (line) => console.error(`[dashboard test] ${line}`);

// What the page shows within this time after an event came from the event stream, not
// from its periodic reload (every 15 s).
const EVENT_DEADLINE_MS = 5000;

// Waits until `predicate(arg)`, evaluated in the page, is true; fails naming `what`.
async function until(page, what, predicate, arg, timeout = DEADLINE_MS) {
  try {
    await page.waitForFunction(predicate, arg, { timeout, polling: 100 });
  } catch (err) {
    const shown = await page.evaluate(() => ({
      connection: document.getElementById('connection')?.textContent.trim(),
      notice: document.getElementById('notice')?.textContent.trim(),
      mode: document.getElementById('mode')?.textContent.trim(),
    })).catch(() => ({}));
    throw new Error(`timed out after ${timeout} ms waiting for ${what} (page shows ${JSON.stringify(shown)}): ${err.message}`);
  }
}

const rowStatus = (page, service, instance) =>
  page.evaluate(([s, i]) => document.querySelector(`article[data-service="${s}"] tr[data-instance="${i}"]`)?.dataset.status, [service, instance]);

function rowIs([service, instance, status]) {
  const row = document.querySelector(`article[data-service="${service}"] tr[data-instance="${instance}"]`);
  return !!row && row.dataset.status === status && row.querySelector('.instance-status .label')?.textContent === status;
}

// A moment as the page's datetime-local input holds it, in the browser's time zone.
function localInput(page, ms) {
  return page.evaluate((at) => {
    const d = new Date(at);
    const p = (n) => String(n).padStart(2, '0');
    // The browser writes a whole minute without its seconds (and Playwright checks that
    // the input holds exactly what was typed).
    const seconds = d.getSeconds() ? `:${p(d.getSeconds())}` : '';
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}${seconds}`;
  }, ms);
}

// A page in a context of its own that records what goes wrong on it: page errors, console
// errors and, unless told otherwise, answers of 400 or more.
async function watchedPage(browser, viewport, { failedRequests = true } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  if (failedRequests) {
    page.on('response', (answer) => {
      if (answer.status() >= 400) problems.push(`failed request: ${answer.status()} ${answer.url()}`);
    });
  }
  return { context, page, problems };
}

async function liveAndStructure(browser) {
  // The page makes no request that fails (the kept history's start comes with the status).
  const { context, page, problems } = await watchedPage(browser, { width: 1366, height: 900 });

  log(`open ${REGISTRY_URL}/`);
  const response = await page.goto(`${REGISTRY_URL}/`);
  assert.equal(response.status(), 200);

  for (const service of ['checkout', 'inventory', 'payments', 'search']) {
    await until(page, `service ${service} listed`, (s) => !!document.querySelector(`article[data-service="${s}"]`), service);
  }
  await until(page, `${LAPSE_SERVICE}/${LAPSE_INSTANCE} passing`, rowIs, [LAPSE_SERVICE, LAPSE_INSTANCE, 'passing']);
  await until(page, 'payments-2 shown in maintenance', rowIs, ['payments', 'payments-2', 'maintenance']);
  await until(page, 'the last check of checkout-2', () =>
    /passing: HTTP 200/.test(document.querySelector('tr[data-instance="checkout-2"] .check')?.textContent || ''));
  await until(page, 'the connection shown as live', () => document.getElementById('connection').dataset.state === 'live');

  // Structure a person with a screen reader or a keyboard relies on.
  const structure = await page.evaluate(() => ({
    header: !!document.querySelector('body > header'),
    nav: !!document.querySelector('nav'),
    main: document.querySelectorAll('main').length,
    feedLive: document.getElementById('feed').getAttribute('aria-live'),
    unlabelled: [...document.querySelectorAll('input, select')]
      .filter((input) => input.labels.length === 0)
      .map((input) => input.id),
    statusWords: [...document.querySelectorAll('.badge')].every((b) => /passing|warning|critical|maintenance/.test(b.textContent)),
  }));
  assert.deepEqual(structure, { header: true, nav: true, main: 1, feedLive: 'polite', unlabelled: [], statusWords: true });

  // The lapse must reach this very page: a marker that a reload would wipe out.
  await page.evaluate(() => { window.notReloaded = true; });
  log('lease of the lapsing instance left to lapse');
  console.log('stop-heartbeats');
  await until(page, `${LAPSE_SERVICE}/${LAPSE_INSTANCE} critical`, rowIs, [LAPSE_SERVICE, LAPSE_INSTANCE, 'critical']);
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page reloaded');
  // The title counts from the summary, read again after the change.
  await until(page, 'the tab title counting the critical instance', () => /^\(1 critical\) central-registry/.test(document.title));
  await until(page, 'the critical instance listed first', ([s, i]) =>
    !document.getElementById('critical').hidden
    && [...document.querySelectorAll('#critical-list li')].map((li) => `${li.dataset.service}/${li.dataset.instance}`).join() === `${s}/${i}`,
  [LAPSE_SERVICE, LAPSE_INSTANCE]);
  await until(page, 'the lapse in the live feed', ([s, i]) =>
    !!document.querySelector(`#feed li[data-service="${s}"][data-instance="${i}"][data-to="critical"]`), [LAPSE_SERVICE, LAPSE_INSTANCE]);
  await until(page, `${LAPSE_SERVICE} rolled up to warning`, (s) =>
    document.querySelector(`article[data-service="${s}"]`)?.dataset.status === 'warning', LAPSE_SERVICE);

  // Filters: by name, then by status.
  await page.getByLabel('Service name').fill('pay');
  await until(page, 'only payments left by the name filter', () =>
    [...document.querySelectorAll('article.service')].map((a) => a.dataset.service).join() === 'payments');
  await page.getByLabel('Service name').fill('');
  await page.getByLabel('Instance status').selectOption('critical');
  await until(page, 'only the critical instance left by the status filter', ([s, i]) => {
    const rows = [...document.querySelectorAll('article.service tr.instance')];
    return rows.length === 1 && rows[0].dataset.instance === i && rows[0].closest('article').dataset.service === s;
  }, [LAPSE_SERVICE, LAPSE_INSTANCE]);
  await page.getByLabel('Instance status').selectOption('');

  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard.png'), fullPage: true });
  log(`screenshot ${join(ARTIFACTS_DIR, 'dashboard.png')}`);

  // The scrubber: a moment before the lapse shows the instance passing again.
  const history = await fetch(`${REGISTRY_URL}/v1/history?service=${LAPSE_SERVICE}&instance=${LAPSE_INSTANCE}`).then((r) => r.json());
  const lapse = history.events.filter((e) => e.reason === 'lease_expired').pop();
  assert.ok(lapse, `no lease_expired event in ${JSON.stringify(history)}`);
  // Whole seconds (the input's precision), one before the (last) lapse: the lease was
  // renewed until at least its TTL before, so the instance was passing then.
  const before = Math.floor(Date.parse(lapse.at) / 1000) * 1000 - 1000;
  await page.getByLabel('Go to (local time)').fill(await localInput(page, before));
  await until(page, 'the page in "viewing" mode', () =>
    document.getElementById('mode').dataset.mode === 'past' && /Viewing/.test(document.getElementById('mode').textContent));
  await until(page, `${LAPSE_SERVICE}/${LAPSE_INSTANCE} passing at the earlier moment`, rowIs, [LAPSE_SERVICE, LAPSE_INSTANCE, 'passing']);
  await until(page, 'the lapse listed after the moment viewed', ([s, i]) =>
    !!document.querySelector(`#around li.after[data-service="${s}"][data-instance="${i}"][data-to="critical"]`), [LAPSE_SERVICE, LAPSE_INSTANCE]);
  assert.equal(
    await page.evaluate(() => Number(document.getElementById('scrubber').value)),
    before / 1000,
    'the range input follows the moment chosen',
  );
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-past.png'), fullPage: true });

  // The range input alone: its start is the beginning of the kept history.
  await page.getByLabel('Moment in the kept history').fill(await page.evaluate(() => document.getElementById('scrubber').min));
  await until(page, 'the start of the kept history viewed', () =>
    document.getElementById('mode').dataset.mode === 'past'
    && document.getElementById('service-list').getAttribute('aria-busy') === 'false'
    && !!document.querySelector('#around-list .marker')
    && document.getElementById('notice').hidden);

  await page.getByRole('button', { name: 'Back to live' }).click();
  await until(page, 'live again', () => document.getElementById('mode').dataset.mode === 'live');
  await until(page, `${LAPSE_SERVICE}/${LAPSE_INSTANCE} critical again when live`, rowIs, [LAPSE_SERVICE, LAPSE_INSTANCE, 'critical']);
  assert.equal(await rowStatus(page, 'payments', 'payments-2'), 'maintenance');

  assert.deepEqual(problems, [], 'the page logged errors');
  await context.close();
}

async function phone(browser) {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await context.newPage();
  await page.goto(`${REGISTRY_URL}/`);
  await until(page, 'services listed on a phone', () => document.querySelectorAll('article.service').length === 4);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow} px wider than a phone screen`);
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-phone.png'), fullPage: true });
  await context.close();
}

// The connection drops (the proxy in front of the registry is cut) and comes back: the page
// says so, reconnects by itself and shows the change made meanwhile, without a reload.
async function outage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${PROXIED_REGISTRY_URL}/`);
  await until(page, 'services listed through the proxy', () => document.querySelectorAll('article.service').length === 4);
  await until(page, 'the connection shown as live', () => document.getElementById('connection').dataset.state === 'live');
  await page.evaluate(() => { window.notReloaded = true; });
  console.log('outage-start');
  await until(page, 'the lost connection shown', () =>
    ['reconnecting', 'unavailable'].includes(document.getElementById('connection').dataset.state));
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-outage.png') });
  console.log('outage-end');
  await until(page, 'the instance registered during the outage', () => !!document.querySelector('article[data-service="outage"] tr[data-instance="outage-1"]'));
  await until(page, 'the connection live again', () => document.getElementById('connection').dataset.state === 'live');
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page reloaded');
  await context.close();
}

async function unavailable(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  // The API answers 503 as the registry does when its database is down.
  await page.route('**/v1/status**', (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/json',
      headers: { 'Retry-After': '1' },
      body: JSON.stringify({ error: { code: 'unavailable', message: "the registry's database does not answer" } }),
    }));
  const response = await page.goto(`${REGISTRY_URL}/`);
  assert.equal(response.status(), 200, 'the page itself loads');
  await until(page, 'the "registry unavailable, retrying" message', () => {
    const notice = document.getElementById('notice');
    return !notice.hidden && /Registry unavailable/.test(notice.textContent) && /retrying/.test(notice.textContent)
      && document.getElementById('connection').dataset.state === 'unavailable';
  });
  assert.equal(await page.locator('h1').textContent(), 'central-registry');
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-unavailable.png') });
  // Once the API answers again the page recovers by itself.
  await page.unroute('**/v1/status**');
  await until(page, 'recovery after the API answers again', () =>
    document.querySelectorAll('article.service').length === 4 && document.getElementById('notice').hidden);
  await context.close();
}

// A registry whose instances all went silent at once holds their lapses: the page says so
// in a banner and marks each held lease, and no instance shows critical.
async function selfPreservation(browser) {
  const { context, page, problems } = await watchedPage(browser, { width: 1280, height: 800 },
    { failedRequests: false });
  await page.goto(`${PRESERVING_REGISTRY_URL}/`);
  await until(page, 'the self-preservation banner with every lapse held', () => {
    const banner = document.getElementById('preservation');
    return !banner.hidden && /Self-preservation since/.test(banner.textContent)
      && /\(6 held\)/.test(banner.textContent)
      && document.querySelectorAll('tr[data-instance] .held').length === 6;
  });
  assert.equal(await page.locator('tr[data-status="critical"]').count(), 0, 'no instance shown critical');
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-self-preservation.png') });
  assert.deepEqual(problems, [], 'the page logged errors');
  await context.close();
}

async function tokenRequired(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const response = await page.goto(`${GUARDED_REGISTRY_URL}/`);
  assert.equal(response.status(), 200, 'the page stays open when a read token is set');
  await until(page, 'the page asking for the read token', () =>
    !document.getElementById('token-form').hidden && /read token/.test(document.getElementById('notice').textContent)
    && document.getElementById('connection').dataset.state === 'unauthorized');
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-token.png') });

  await page.getByLabel('Read token').fill('not-the-token');
  await page.getByRole('button', { name: 'Use token' }).click();
  await until(page, 'a wrong token refused', () => /refused/.test(document.getElementById('notice').textContent));

  await page.getByLabel('Read token').fill(READ_TOKEN);
  await page.getByRole('button', { name: 'Use token' }).click();
  await until(page, 'orders listed with the token', () => !!document.querySelector('article[data-service="orders"]'));
  await until(page, 'the event stream open with the token', () => document.getElementById('connection').dataset.state === 'live');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('central-registry.read-token')), READ_TOKEN);

  // A change made now reaches the page through /v1/events?token=.
  const put = await fetch(`${GUARDED_REGISTRY_URL}/v1/services/orders/instances/orders-2`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${READ_TOKEN}` },
    body: JSON.stringify({ url: 'http://10.0.2.4:7000/', ttl_seconds: 0 }),
  });
  assert.equal(put.status, 201);
  await until(page, 'orders-2 pushed to the page', () => !!document.querySelector('tr[data-instance="orders-2"]'));

  // The token stays for the tab: a reload needs no new prompt.
  await page.reload();
  await until(page, 'orders listed after a reload', () => !!document.querySelector('tr[data-instance="orders-2"]'));
  await context.close();
}

// The names app-<from> to app-<to - 1> of the paged registry.
const apps = (from, to) => Array.from({ length: to - from }, (_, i) => `app-${String(from + i).padStart(3, '0')}`).join();
// Helpers for the predicates that run in the page: the services listed, a summary count.
function pageHelpers() {
  window.listed = () => [...document.querySelectorAll('#service-list article.service')].map((a) => a.dataset.service).join();
  window.stat = (key) => document.querySelector(`#summary li.stat[data-stat="${key}"]`)?.dataset.count;
}

// More services than a page holds: the summary counts them all, Next and Previous walk the
// pages, the search is answered by the server, and an event for a service not on the page
// changes the counts without drawing the list again.
async function paging(browser) {
  const { context, page, problems } = await watchedPage(browser, { width: 1366, height: 900 });
  // The reads of services the page makes, to check what it asked the server.
  const reads = [];
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.pathname === '/v1/status' && url.searchParams.get('summary') !== 'true') reads.push(url.searchParams);
  });
  const pages = Math.ceil(PAGED_SERVICES / 50);
  await page.addInitScript(pageHelpers);

  await page.goto(`${PAGED_REGISTRY_URL}/`);
  await until(page, 'the first page: app-000 to app-049', (want) => listed() === want, apps(0, 50));
  await until(page, `the summary counting ${PAGED_SERVICES} services and instances, all passing`, (n) =>
    stat('services') === n && stat('instances') === n && stat('passing') === n && stat('critical') === '0'
    && document.querySelector('#service-summary [data-status="passing"]')?.dataset.count === n
    && document.getElementById('critical').hidden, String(PAGED_SERVICES));
  await until(page, `the page indicator: page 1 of ${pages}`, (n) => /^Page 1 of /.test(document.getElementById('page-indicator').textContent)
    && document.getElementById('page-indicator').textContent.startsWith(`Page 1 of ${n}`), pages);
  await until(page, 'the connection shown as live', () => document.getElementById('connection').dataset.state === 'live');
  assert.ok(reads.every((q) => q.get('limit') === '50'), `every read is paged: ${reads.map(String)}`);
  assert.equal(await page.getByRole('button', { name: 'Previous page' }).isDisabled(), true, 'no page before the first');

  // Next, Next: the last page; Previous, Previous: the first again.
  await page.getByRole('button', { name: 'Next page' }).click();
  await until(page, 'page 2: app-050 to app-099', (want) => listed() === want, apps(50, 100));
  assert.ok(reads.at(-1).get('cursor'), `page 2 read with a cursor: ${reads.at(-1)}`);
  await page.getByRole('button', { name: 'Next page' }).click();
  await until(page, `page 3: app-100 to app-${PAGED_SERVICES - 1}`, (want) => listed() === want, apps(100, PAGED_SERVICES));
  await until(page, 'Next disabled on the last page', (n) => document.getElementById('page-next').disabled
    && document.getElementById('page-indicator').textContent.startsWith(`Page ${n} of ${n}`), pages);
  await page.getByRole('button', { name: 'Previous page' }).click();
  await until(page, 'page 2 again', (want) => listed() === want, apps(50, 100));
  await page.getByRole('button', { name: 'Previous page' }).click();
  await until(page, 'page 1 again', (want) => listed() === want, apps(0, 50));
  await until(page, 'Previous disabled on the first page', () => document.getElementById('page-previous').disabled);

  // An event for a service on no page shown: the counts change, the list is left alone.
  const registered = await fetch(`${PAGED_REGISTRY_URL}/v1/history?service=app-${PAGED_SERVICES - 1}`).then((r) => r.json());
  const lastRegistered = Date.parse(registered.events.at(-1).at);
  // A whole second after every registration and before the change below, for time travel.
  const beforeChange = Math.ceil((lastRegistered + 1) / 1000) * 1000;
  await until(page, 'a whole second after the registrations', (t) => Date.now() > t + 50, beforeChange);
  await page.evaluate(() => {
    window.drawn = [...document.querySelectorAll('#service-list article.service')];
    window.drawn.forEach((node) => { node.dataset.marked = 'yes'; });
  });
  const put = await fetch(`${PAGED_REGISTRY_URL}/v1/services/app-100/instances/app-100-1/status`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ status: 'maintenance' }),
  });
  assert.ok(put.ok, `maintenance: HTTP ${put.status}`);
  await until(page, 'the summary counting the off-screen instance in maintenance', () =>
    stat('maintenance') === '1' && document.querySelector('#service-summary [data-status="maintenance"]')?.dataset.count === '1',
  undefined, EVENT_DEADLINE_MS);
  await until(page, 'the change in the live feed', () => !!document.querySelector('#feed li[data-service="app-100"][data-to="maintenance"]'));
  assert.equal(await page.evaluate(() => {
    const now = [...document.querySelectorAll('#service-list article.service')];
    return now.length === window.drawn.length && now.every((node, i) => node === window.drawn[i] && node.dataset.marked === 'yes');
  }), true, 'an event for a service not on the page drew the list again');

  // An event for a service on the page: its block only is drawn again.
  const added = await fetch(`${PAGED_REGISTRY_URL}/v1/services/app-001/instances/app-001-2`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ url: 'http://10.0.5.2:8080/', ttl_seconds: 0 }),
  });
  assert.equal(added.status, 201);
  await until(page, 'app-001-2 shown in the block of app-001', () =>
    !!document.querySelector('article[data-service="app-001"] tr[data-instance="app-001-2"]')
    && /2 instances/.test(document.querySelector('article[data-service="app-001"] .count').textContent), undefined, EVENT_DEADLINE_MS);
  await until(page, `the summary counting ${PAGED_SERVICES + 1} instances`, (n) => stat('instances') === n, String(PAGED_SERVICES + 1), EVENT_DEADLINE_MS);
  assert.deepEqual(await page.evaluate(() => {
    const now = [...document.querySelectorAll('#service-list article.service')];
    return now.map((node, i) => (node === window.drawn[i] ? 'same' : node.dataset.service)).filter((x) => x !== 'same');
  }), ['app-001'], 'only the block of the service changed is drawn again');

  // The search is answered by the server: services of the last page, from page 1.
  const before = reads.length;
  await page.getByLabel('Service name').fill('APP-11');
  await until(page, 'the services whose name contains app-11', (want) => listed() === want, apps(110, 120));
  const searched = reads.slice(before).filter((q) => q.get('name'));
  assert.ok(searched.length >= 1 && searched.every((q) => q.get('name') === 'app-11' && q.get('limit') === '50' && !q.get('cursor')),
    `the search read from the server, lower case, first page: ${reads.slice(before).map(String)}`);
  await until(page, 'one page of results', () => document.getElementById('page-next').disabled
    && /^Page 1\b.*names containing "app-11"/.test(document.getElementById('page-indicator').textContent));
  await page.getByLabel('Service name').fill('app_1');
  await until(page, 'a search no name can match, said without asking the server', () =>
    document.getElementById('filter-name').getAttribute('aria-invalid') === 'true'
    && /only a-z, 0-9 and -/.test(document.getElementById('service-list').textContent));
  await page.getByLabel('Service name').fill('');
  await until(page, 'page 1 again without the search', (want) => listed() === want, apps(0, 50));
  assert.ok(!reads.at(-1).get('name'), 'the search cleared on the server too');

  // Time travel keeps the page: page 3 a moment before the maintenance shows app-100 passing.
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.getByRole('button', { name: 'Next page' }).click();
  await until(page, 'page 3, app-100 in maintenance', () =>
    listed().startsWith('app-100,')
    && document.querySelector('article[data-service="app-100"] tr[data-instance="app-100-1"]')?.dataset.status === 'maintenance');
  await page.getByLabel('Go to (local time)').fill(await localInput(page, beforeChange));
  await until(page, 'page 3 at the earlier moment, app-100 passing', () =>
    document.getElementById('mode').dataset.mode === 'past'
    && document.querySelector('article[data-service="app-100"] tr[data-instance="app-100-1"]')?.dataset.status === 'passing'
    && document.getElementById('critical').hidden && document.querySelector('#summary li.stat[data-stat="maintenance"]')?.dataset.count === '0');
  const past = reads.at(-1);
  assert.ok(past.get('at') && past.get('cursor') && past.get('limit') === '50', `the past page read with at and cursor: ${past}`);
  assert.equal(await page.evaluate(() => document.getElementById('page-indicator').textContent.startsWith('Page 3')), true);
  await page.getByRole('button', { name: 'Back to live' }).click();
  await until(page, 'page 3 live again, app-100 in maintenance', () =>
    document.getElementById('mode').dataset.mode === 'live'
    && document.querySelector('article[data-service="app-100"] tr[data-instance="app-100-1"]')?.dataset.status === 'maintenance');
  await page.screenshot({ path: join(ARTIFACTS_DIR, 'dashboard-paging.png'), fullPage: true });

  // On the last page: a service registered with a name after its last joins it, a service
  // whose last instance goes leaves it; the other blocks stay as they are.
  await page.evaluate(() => {
    window.drawn = [...document.querySelectorAll('#service-list article.service')];
  });
  const last = `app-${PAGED_SERVICES - 1}`;
  const joined = await fetch(`${PAGED_REGISTRY_URL}/v1/services/${last}a/instances/${last}a-1`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ url: 'http://10.0.5.3:8080/', ttl_seconds: 0 }),
  });
  assert.equal(joined.status, 201);
  const gone = await fetch(`${PAGED_REGISTRY_URL}/v1/services/app-101/instances/app-101-1`, { method: 'DELETE' });
  assert.equal(gone.status, 204);
  await until(page, `${last}a added at the end of the page, app-101 gone from it`, (want) => listed() === want,
    [...apps(100, PAGED_SERVICES).split(',').filter((name) => name !== 'app-101'), `${last}a`].join(), EVENT_DEADLINE_MS);
  assert.deepEqual(await page.evaluate(() => {
    const now = [...document.querySelectorAll('#service-list article.service')];
    return now.filter((node) => !window.drawn.includes(node)).map((node) => node.dataset.service);
  }), [`${last}a`], 'only the new service has a new block');

  assert.deepEqual(problems, [], 'the page logged errors');
  await context.close();
}

const browser = await chromium.launch({
  executablePath: CHROMIUM_PATH,
  headless: true,
  // Chromium's sandbox refuses to start as root (CI runs as root).
  args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : [],
});
try {
  for (const [name, scenario] of [
    ['live page, lapse, filters, time travel', liveAndStructure],
    ['phone layout', phone],
    ['registry unavailable', unavailable],
    ['connection lost and back', outage],
    ['read token required', tokenRequired],
    ['self-preservation banner', selfPreservation],
    ['paging, search, events off the page', paging],
  ]) {
    log(`scenario: ${name}`);
    await scenario(browser);
    log(`passed: ${name}`);
  }
} catch (err) {
  console.error(`[dashboard test] FAILED: ${err.stack || err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
