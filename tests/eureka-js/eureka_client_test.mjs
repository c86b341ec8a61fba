// eureka-js-client, unmodified, against the registry's Eureka API.
//
// Run by tests/tests/tools/eureka_clients.rs against a registry that test started (port 0,
// a fresh database). Environment: REGISTRY_EUREKA_URL (`http://host:port/eureka`),
// REGISTRY_GUARDED_EUREKA_URL (a registry that wants REGISTRY_WRITE_TOKEN), EUREKA_APP
// (this client's app name) and EUREKA_PORT (the port it registers).
//
// The client registers itself with a 3 s lease renewed every second and fetches the whole
// registry every second. Its delta handling replaces or removes the first instance of an
// app whatever the instance (it indexes the app's list with an array), which is right only
// for apps of one instance: the `delta` step follows such an app with deltas on; the rest
// of the script leaves them off (the client's default). The script prints `step <name>` as it goes; at
// `wait <name>` it waits for the Rust test to check the registry (or change it) and answer
// `go` on standard input. It prints `ok` at the end, or `failed: <what>` and exits 1.

import { createInterface } from 'node:readline';
import pkg from 'eureka-js-client';

const { Eureka } = pkg;
const SHOWS_WITHIN_MS = 15000;

const url = process.env.REGISTRY_EUREKA_URL;
const app = process.env.EUREKA_APP;
const port = Number(process.env.EUREKA_PORT);
const instanceId = `127.0.0.1:${app.toLowerCase()}:${port}`;

// The client logs to the console: to standard error, so standard output is the protocol.
const logger = {
  level: () => 30,
  error: (...args) => console.error('error', ...args),
  warn: (...args) => console.error('warn', ...args),
  info: (...args) => console.error('info', ...args),
  debug: () => {},
};

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function step(name) {
  console.log(`step ${name}`);
}

async function wait(name) {
  console.log(`wait ${name}`);
  const { value } = await lines.next();
  if (value !== 'go') throw new Error(`the test answered ${JSON.stringify(value)} to ${name}`);
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function eventually(what, probe, within = SHOWS_WITHIN_MS) {
  const deadline = Date.now() + within;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
    } catch (error) {
      last = error;
    }
    if (last && !(last instanceof Error)) return last;
    await sleep(200);
  }
  throw new Error(`timed out after ${within} ms waiting for ${what}; last: ${last}`);
}

// `extra` goes into the client's `eureka` settings, `top` beside them (`shouldUseDelta`,
// `requestMiddleware`).
function client(serviceUrl, instance, extra = {}, top = {}) {
  return new Eureka({
    logger,
    instance,
    ...top,
    eureka: {
      serviceUrls: { default: [`${serviceUrl}/apps/`] },
      heartbeatInterval: 1000,
      registryFetchInterval: 1000,
      maxRetries: 0,
      ...extra,
    },
  });
}

function instanceOf(appName, id, instancePort, vip) {
  return {
    app: appName,
    instanceId: id,
    hostName: '127.0.0.1',
    ipAddr: '127.0.0.1',
    port: { $: instancePort, '@enabled': true },
    vipAddress: vip,
    statusPageUrl: `http://127.0.0.1:${instancePort}/info`,
    dataCenterInfo: {
      '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo',
      name: 'MyOwn',
    },
    leaseInfo: { renewalIntervalInSecs: 1, durationInSecs: 3 },
    metadata: { flavour: 'node' },
  };
}

// One request through the client's own request path (its cluster resolution and retries).
function request(eureka, opts) {
  return new Promise((resolve, reject) => {
    eureka.eurekaRequest(opts, (error, response, body) => {
      if (error) reject(error);
      else resolve({ status: response.statusCode, body });
    });
  });
}

const started = (eureka) =>
  new Promise((resolve, reject) => eureka.start((error) => (error ? reject(error) : resolve())));
const stopped = (eureka) =>
  new Promise((resolve, reject) => eureka.stop((error) => (error ? reject(error) : resolve())));

async function ownStatus(eureka) {
  const answer = await request(eureka, {
    uri: `${app}/${encodeURIComponent(instanceId)}`,
    headers: { Accept: 'application/json' },
  });
  if (answer.status !== 200) return new Error(`GET own instance: ${answer.status}`);
  return JSON.parse(answer.body).instance.status;
}

async function main() {
  const eureka = client(url, instanceOf(app, instanceId, port, app.toLowerCase()));

  step('start');
  await started(eureka);
  await wait('registered');

  step('discover');
  const found = await eventually('both backend instances, by app and by VIP', () => {
    const byApp = eureka.getInstancesByAppId('BACKEND');
    const byVip = eureka.getInstancesByVipAddress('backend');
    if (byApp.length === 2 && byVip.length === 2) {
      return byApp.map((i) => i.instanceId).sort();
    }
    return null;
  });
  expect(JSON.stringify(found) === '["backend-1","backend-2"]', `found ${found}`);
  const mine = await eventually('itself in the fetched registry', () =>
    eureka.getInstancesByAppId(app).find((i) => i.instanceId === instanceId),
  );
  expect(mine.metadata.flavour === 'node', `metadata ${JSON.stringify(mine.metadata)}`);
  expect(mine.port.$ === port, `port ${JSON.stringify(mine.port)}`);

  step('out-of-service');
  const out = await request(eureka, {
    method: 'PUT',
    uri: `${app}/${encodeURIComponent(instanceId)}/status?value=OUT_OF_SERVICE`,
  });
  expect(out.status === 200, `PUT status: ${out.status} ${out.body}`);
  await eventually('itself gone from its UP instances', () =>
    eureka.getInstancesByAppId(app).every((i) => i.instanceId !== instanceId),
  );
  await wait('out-of-service');

  step('back');
  // Removing the override without a value leaves the instance UNKNOWN: the next renewal
  // answers 404 and the client registers again, UP.
  const back = await request(eureka, {
    method: 'DELETE',
    uri: `${app}/${encodeURIComponent(instanceId)}/status`,
  });
  expect(back.status === 200, `DELETE status: ${back.status} ${back.body}`);
  await eventually('UP again after registering anew', async () => (await ownStatus(eureka)) === 'UP');
  await wait('back');

  step('lost');
  // The test removed the instance meanwhile: a renewal answered 404, the client registered.
  await eventually('registered again', async () => (await ownStatus(eureka)) === 'UP');
  await wait('lost');

  step('follow');
  await eventually('the fetched registry to follow changes made through v1', () => {
    const ids = eureka.getInstancesByAppId('BACKEND').map((i) => i.instanceId).sort();
    return JSON.stringify(ids) === '["backend-1","backend-3"]';
  });

  step('delta');
  // A client with deltas on, started (one full fetch) before another client adds an app,
  // follows the app's arrival, its drain and return, and its end through deltas alone.
  const asked = [];
  const watcher = client(
    url,
    instanceOf('JS-WATCHER', 'js-watcher-1', 9997, 'js-watcher'),
    { registerWithEureka: false, filterUpInstances: false },
    {
      shouldUseDelta: true,
      // The client's own hook on every request it makes: here, to see which it makes.
      requestMiddleware: (opts, done) => {
        asked.push(opts.uri);
        done(opts);
      },
    },
  );
  await started(watcher);
  expect(watcher.hasFullRegistry, 'the watcher fetched the registry once');
  const fullFetches = () => asked.filter((uri) => uri === '').length;
  const watched = () => watcher.getInstancesByAppId('JS-DELTA');
  const shown = (status) => () => {
    const all = watched();
    return all.length === 1 && all[0].instanceId === 'js-delta-1' && all[0].status === status;
  };
  const other = client(url, instanceOf('JS-DELTA', 'js-delta-1', 9998, 'js-delta'), {
    fetchRegistry: false,
  });
  await started(other);
  await eventually('the added app through a delta', shown('UP'));
  const drained = await request(other, {
    method: 'PUT',
    uri: 'JS-DELTA/js-delta-1/status?value=OUT_OF_SERVICE',
  });
  expect(drained.status === 200, `PUT status: ${drained.status} ${drained.body}`);
  await eventually('the drained instance through a delta', shown('OUT_OF_SERVICE'));
  const undrained = await request(other, {
    method: 'DELETE',
    uri: 'JS-DELTA/js-delta-1/status?value=UP',
  });
  expect(undrained.status === 200, `DELETE status: ${undrained.status} ${undrained.body}`);
  await eventually('the instance back UP through a delta', shown('UP'));
  await new Promise((resolve) => other.once('heartbeat', resolve));
  await stopped(other);
  await eventually('the app gone through a delta', () => watched().length === 0);
  await stopped(watcher);
  const deltas = asked.filter((uri) => uri === 'delta').length;
  expect(fullFetches() === 1 && deltas >= 4, `the watcher asked ${JSON.stringify(asked)}`);

  step('guarded');
  const guarded = process.env.REGISTRY_GUARDED_EUREKA_URL;
  const token = process.env.REGISTRY_WRITE_TOKEN;
  const withToken = guarded.replace('://', `://eureka:${encodeURIComponent(token)}@`);
  const without = client(guarded, instanceOf('JS-GUARDED', 'js-guarded-1', 9999, 'js-guarded'), {
    fetchRegistry: false,
  });
  let refused = false;
  try {
    await started(without);
  } catch (error) {
    refused = /401/.test(String(error));
  }
  clearInterval(without.heartbeat);
  expect(refused, 'registering without the token was not refused with 401');
  const guardedClient = client(
    withToken,
    instanceOf('JS-GUARDED', 'js-guarded-1', 9999, 'js-guarded'),
  );
  await started(guardedClient);
  expect(
    guardedClient.getInstancesByAppId('JS-GUARDED').length === 1,
    'the guarded registry did not list the instance',
  );
  await new Promise((resolve) => guardedClient.once('heartbeat', resolve));
  await stopped(guardedClient);

  step('stop');
  // Stopped right after a renewal, so that none is in flight when the instance is
  // cancelled (one answered 404 would make the client register again).
  await new Promise((resolve) => eureka.once('heartbeat', resolve));
  await stopped(eureka);
  console.log('ok');
  process.exit(0);
}

main().catch((error) => {
  console.log(`failed: ${String(error && error.stack ? error.stack : error).replaceAll('\n', ' | ')}`);
  process.exit(1);
});
