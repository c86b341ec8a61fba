// The npm client `consul`, unmodified, against the registry's Consul API.
//
// Run by tests/tests/tools/consul_clients.rs against registries that test started (port 0,
// a fresh database each): every scenario below against REGISTRY_CONSUL_URL, and the token
// rules against REGISTRY_GUARDED_CONSUL_URL (which wants REGISTRY_WRITE_TOKEN for writes
// and REGISTRY_READ_TOKEN for reads). For the blocking query it prints `change <service>`
// and waits on standard input for `changed <before_ms> <after_ms>`: the Rust test has then
// registered an instance of that service through v1 (another client) between those two
// instants (Unix milliseconds).
//
// Prints `step <name>` as it goes and `ok` at the end. A failed expectation ends its
// scenario with `failed: <what was expected and what came>`; the others still run, and
// the script then exits with status 1.

import { EventEmitter } from "node:events";
import http from "node:http";
import net from "node:net";
import readline from "node:readline";

import Consul from "consul";

const SHOWS_WITHIN_MS = 5000;
const CHECK_TURNS_WITHIN_MS = 20000;
const WAKES_WITHIN_MS = 1000;

function client(urlVariable, token) {
  const url = new URL(process.env[urlVariable]);
  const options = {
    host: url.hostname,
    port: Number(url.port),
    secure: url.protocol === "https:",
  };
  if (token) options.defaults = { token };
  return new Consul(options);
}

function step(name) {
  console.log(`step ${name}`);
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const show = (value) => JSON.stringify(value);

async function eventually(what, probe, withinMs = SHOWS_WITHIN_MS) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const last = await probe();
    if (last) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${withinMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// health.service with the response too, to read X-Consul-Index.
async function withIndex(method, options) {
  const ctx = new EventEmitter();
  ctx.includeResponse = true;
  const [res, body] = await method({ ...options, ctx });
  const index = res.headers["x-consul-index"];
  expect(index && index !== "0", `X-Consul-Index ${show(index)}`);
  expect(
    res.headers["x-consul-knownleader"] === "true",
    `X-Consul-KnownLeader ${show(res.headers["x-consul-knownleader"])}`,
  );
  return [index, body];
}

async function entries(consul, service, options = {}) {
  const [, nodes] = await withIndex(consul.health.service.bind(consul.health), {
    service,
    ...options,
  });
  expect(Array.isArray(nodes), `health.service(${service}) answered ${show(nodes)}`);
  return nodes;
}

async function entry(consul, service, id) {
  return (await entries(consul, service)).find((n) => n.Service.ID === id);
}

const checkOf = (node, checkId) => node.Checks.find((c) => c.CheckID === checkId);

async function statusIs(consul, service, id, checkId, status) {
  const node = await entry(consul, service, id);
  const check = node && checkOf(node, checkId);
  return check && check.Status === status ? check : undefined;
}

async function passingIds(consul, service, options = {}) {
  const nodes = await entries(consul, service, { ...options, passing: true });
  return nodes.map((n) => n.Service.ID).sort();
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function refused(what, call) {
  try {
    await call();
  } catch (error) {
    expect(error.statusCode === 403, `${what}: ${error.statusCode} ${error.message}, not 403`);
    return;
  }
  throw new Error(`${what} was not refused`);
}

async function agentAndStatus(consul) {
  step("status.leader, agent.self");
  const leader = await consul.status.leader();
  expect(typeof leader === "string" && leader, `status.leader answered ${show(leader)}`);
  const self = await consul.agent.self();
  for (const [key, value] of Object.entries(self)) {
    expect(value && typeof value === "object", `agent.self: ${key} is ${show(value)}`);
  }
  expect(self.Config.Datacenter === "dc1", `agent.self Config: ${show(self.Config)}`);
  expect(self.Config.NodeName, `agent.self Config.NodeName: ${show(self.Config)}`);
}

const TTL_CHECK = "service:js-ttl-1";

async function ttlRegister(consul) {
  step("register with a TTL check");
  await consul.agent.service.register({
    name: "js-ttl",
    id: "js-ttl-1",
    address: "127.0.0.1",
    port: 9301,
    tags: ["v2", "green"],
    meta: { team: "search" },
    check: { ttl: "30s", notes: "heartbeats from the service" },
  });
  const checkId = TTL_CHECK;
  const node = await eventually("js-ttl-1 in health.service", () =>
    entry(consul, "js-ttl", "js-ttl-1"),
  );
  const service = node.Service;
  expect(
    service.Service === "js-ttl" && service.Address === "127.0.0.1" && service.Port === 9301,
    `Service: ${show(service)}`,
  );
  expect(same([...service.Tags].sort(), ["green", "v2"]), `Service.Tags: ${show(service.Tags)}`);
  expect(same(service.Meta, { team: "search" }), `Service.Meta: ${show(service.Meta)}`);
  expect(node.Node.ID && node.Node.Node, `Node: ${show(node.Node)}`);
  const check = checkOf(node, checkId);
  expect(check, `no check ${checkId} in ${show(node.Checks)}`);

  step("agent.services, agent.checks");
  const services = await consul.agent.services();
  const mine = services["js-ttl-1"];
  expect(mine && mine.Service === "js-ttl" && mine.Port === 9301, `agent.services: ${show(services)}`);
  const checks = await consul.agent.checks();
  expect(checks[checkId], `agent.checks: ${show(checks)}`);

}

async function ttlStartsCritical(consul) {
  step("a new TTL check is critical");
  const check = checkOf(await entry(consul, "js-ttl", "js-ttl-1"), TTL_CHECK);
  expect(check.Status === "critical", `a new TTL check is ${check.Status}, not critical`);
  expect(same(await passingIds(consul, "js-ttl"), []), "a critical instance in passing");
}

async function ttlPassWarnFail(consul) {
  const checkId = TTL_CHECK;
  step("pass: passing");
  await consul.agent.check.pass({ id: checkId, note: "ready" });
  await eventually("js-ttl-1 passing", async () =>
    same(await passingIds(consul, "js-ttl"), ["js-ttl-1"]),
  );

  step("warn: warning, out of passing");
  await consul.agent.check.warn({ id: checkId, note: "slow" });
  const warned = await eventually("js-ttl-1 warning", () =>
    statusIs(consul, "js-ttl", "js-ttl-1", checkId, "warning"),
  );
  expect(warned.Output === "slow", `the note is not the check's Output: ${show(warned)}`);
  expect(same(await passingIds(consul, "js-ttl"), []), "a warning instance in passing");
  const warning = await consul.health.state("warning");
  expect(warning.some((c) => c.CheckID === checkId), `health.state(warning): ${show(warning)}`);

  step("fail: critical");
  await consul.agent.check.fail({ id: checkId, note: "down" });
  await eventually("js-ttl-1 critical", () =>
    statusIs(consul, "js-ttl", "js-ttl-1", checkId, "critical"),
  );
  const critical = await consul.health.state("critical");
  expect(critical.some((c) => c.CheckID === checkId), `health.state(critical): ${show(critical)}`);
  const [, serviceChecks] = await withIndex(consul.health.checks.bind(consul.health), {
    service: "js-ttl",
  });
  expect(
    serviceChecks.some((c) => c.CheckID === checkId && c.Status === "critical"),
    `health.checks: ${show(serviceChecks)}`,
  );
  await consul.agent.check.pass(checkId);
  await eventually("js-ttl-1 passing again", async () =>
    same(await passingIds(consul, "js-ttl"), ["js-ttl-1"]),
  );
  const any = await consul.health.state("any");
  expect(any.some((c) => c.CheckID === checkId), `health.state(any): ${show(any)}`);

}

async function tagsAndCatalog(consul) {
  step("tags: every one must match");
  await consul.agent.check.pass(TTL_CHECK);
  await eventually("js-ttl-1 passing", async () =>
    same(await passingIds(consul, "js-ttl"), ["js-ttl-1"]),
  );
  expect(same(await passingIds(consul, "js-ttl", { tag: "green" }), ["js-ttl-1"]), "tag=green");
  expect(
    same(await passingIds(consul, "js-ttl", { tag: ["v2", "green"] }), ["js-ttl-1"]),
    "tag=v2&tag=green",
  );
  expect(same(await passingIds(consul, "js-ttl", { tag: ["v2", "blue"] }), []), "tag=v2&tag=blue");

  step("catalog.services with tags, catalog.service");
  const catalog = await consul.catalog.services();
  expect(same([...(catalog["js-ttl"] || [])].sort(), ["green", "v2"]), `catalog.services: ${show(catalog)}`);
  const listed = (await consul.catalog.service.nodes("js-ttl")).filter(
    (i) => i.ServiceID === "js-ttl-1",
  );
  expect(listed.length === 1, `catalog.service: ${show(listed)}`);
  const one = listed[0];
  expect(
    one.ServiceName === "js-ttl" && one.ServiceAddress === "127.0.0.1" && one.ServicePort === 9301,
    `catalog.service: ${show(one)}`,
  );
  expect(same(one.ServiceMeta, { team: "search" }), `catalog.service: ${show(one)}`);
}

function lines() {
  const reader = readline.createInterface({ input: process.stdin });
  const iterator = reader[Symbol.asyncIterator]();
  return async () => {
    const { value, done } = await iterator.next();
    expect(!done, "standard input closed");
    return value;
  };
}

async function blockingQuery(consul, nextLine) {
  step("a blocking query with nothing changing answers after its wait");
  const method = consul.health.service.bind(consul.health);
  const [index] = await withIndex(method, { service: "js-ttl" });
  const started = Date.now();
  const [again] = await withIndex(method, { service: "js-ttl", index, wait: "1s" });
  const waited = Date.now() - started;
  expect(again === index, `the index moved from ${index} to ${again} with nothing changing`);
  expect(waited >= 900 && waited <= 3000, `a 1s wait answered after ${waited} ms`);

  step("a watch wakes on a change made by another client");
  const watch = consul.watch({ method, options: { service: "js-ttl", wait: "30s" } });
  const changes = [];
  let notify = () => {};
  watch.on("change", (data, res) => {
    changes.push({ data, index: res.headers["x-consul-index"], atMs: Date.now() });
    notify();
  });
  const errors = [];
  watch.on("error", (error) => errors.push(error));
  const nextChange = () =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no change in 35 s (${errors})`)), 35000);
      notify = () => {
        clearTimeout(timer);
        resolve(changes[changes.length - 1]);
      };
    });
  try {
    const first = changes.length ? changes[0] : await nextChange();
    const waiting = nextChange();
    console.log("change js-ttl");
    const reply = (await nextLine()).split(" ");
    expect(reply[0] === "changed", `the test answered ${show(reply)}, not changed`);
    const [beforeMs, afterMs] = [Number(reply[1]), Number(reply[2])];
    const woke = await waiting;
    expect(woke.atMs >= beforeMs, "the watch saw a change before it was made: it did not block");
    const late = woke.atMs - afterMs;
    expect(late <= WAKES_WITHIN_MS, `the watch woke ${late} ms after the change`);
    expect(woke.index !== first.index, `the index stayed ${first.index} across a change`);
    const ids = woke.data.map((n) => n.Service.ID);
    expect(ids.includes("js-ttl-2"), `the other client's instance is missing: ${show(ids)}`);
    expect(errors.length === 0, `the watch had errors: ${errors}`);
  } finally {
    watch.end();
  }
}

async function maintenance(consul) {
  step("maintenance on: a critical _service_maintenance check with the reason");
  const maintenanceId = "_service_maintenance:js-ttl-1";
  await consul.agent.service.maintenance({ id: "js-ttl-1", enable: true, reason: "migrating" });
  const check = await eventually("the maintenance check", () =>
    statusIs(consul, "js-ttl", "js-ttl-1", maintenanceId, "critical"),
  );
  expect(!(await passingIds(consul, "js-ttl")).includes("js-ttl-1"), "in maintenance yet passing");

  step("maintenance off");
  await consul.agent.service.maintenance({ id: "js-ttl-1", enable: false });
  await eventually("the maintenance check gone", async () => {
    const node = await entry(consul, "js-ttl", "js-ttl-1");
    return node && !checkOf(node, maintenanceId);
  });
  await consul.agent.check.pass("service:js-ttl-1");
  await eventually("js-ttl-1 passing after maintenance", async () =>
    (await passingIds(consul, "js-ttl")).includes("js-ttl-1"),
  );
  expect(check.Notes === "migrating", `the maintenance check's Notes are not the reason: ${show(check)}`);
}

async function httpCheck(consul) {
  step("an HTTP check turns passing, and critical when its server stops");
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await consul.agent.service.register({
    name: "js-http",
    id: "js-http-1",
    address: "127.0.0.1",
    port,
    checks: [{ http: `http://127.0.0.1:${port}/health`, interval: "1s", timeout: "1s" }],
  });
  await passingThenCritical(consul, "js-http", "js-http-1", "the HTTP-checked instance", "its server stopped", async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
}

async function tcpCheck(consul) {
  step("a TCP check turns passing, and critical when its listener closes");
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.end();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await consul.agent.service.register({
    name: "js-tcp",
    id: "js-tcp-1",
    address: "127.0.0.1",
    port,
    check: { tcp: `127.0.0.1:${port}`, interval: "1s", timeout: "1s" },
  });
  await passingThenCritical(consul, "js-tcp", "js-tcp-1", "the TCP-checked instance", "its listener closed", async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
}

// An actively checked instance turns passing, then critical once `stop` takes its target away.
async function passingThenCritical(consul, service, id, what, stopped, stop) {
  await eventually(
    `${what} passing`,
    async () => same(await passingIds(consul, service), [id]),
    CHECK_TURNS_WITHIN_MS,
  );
  await stop();
  await eventually(
    `${what} critical after ${stopped}`,
    () => statusIs(consul, service, id, `service:${id}`, "critical"),
    CHECK_TURNS_WITHIN_MS,
  );
  await consul.agent.service.deregister(id);
}

async function deregister(consul) {
  step("deregister");
  await consul.agent.service.deregister("js-ttl-1");
  await eventually("js-ttl-1 gone", async () => !(await entry(consul, "js-ttl", "js-ttl-1")));
  expect(!(await consul.agent.services())["js-ttl-1"], "js-ttl-1 still in agent.services");
  try {
    await consul.agent.service.deregister("js-never-was");
  } catch (error) {
    expect(error.statusCode === 404, `deregistering an unknown id: ${error.statusCode}, not 404`);
    return;
  }
  throw new Error("deregistering an unknown id succeeded");
}

async function tokens() {
  step("tokens: refused without, or with the wrong one; accepted with the right one");
  const write = process.env.REGISTRY_WRITE_TOKEN;
  const read = process.env.REGISTRY_READ_TOKEN;
  const registration = { name: "js-guarded", id: "js-guarded-1", address: "127.0.0.1", port: 9400 };
  for (const token of [undefined, "wrong-token", read]) {
    const consul = client("REGISTRY_GUARDED_CONSUL_URL", token);
    await refused(`a register with token ${token}`, () =>
      consul.agent.service.register(registration),
    );
  }
  const writer = client("REGISTRY_GUARDED_CONSUL_URL", write);
  await writer.agent.service.register({ ...registration, check: { ttl: "30s" } });
  await refused("a read without a token", () =>
    client("REGISTRY_GUARDED_CONSUL_URL").health.service("js-guarded"),
  );
  const reader = client("REGISTRY_GUARDED_CONSUL_URL", read);
  await eventually("js-guarded-1 seen with the read token", () =>
    entry(reader, "js-guarded", "js-guarded-1"),
  );
  await writer.agent.service.deregister("js-guarded-1");
}

async function main() {
  const consul = client("REGISTRY_CONSUL_URL");
  const nextLine = lines();
  const scenarios = [
    () => agentAndStatus(consul),
    () => ttlRegister(consul),
    () => ttlStartsCritical(consul),
    () => ttlPassWarnFail(consul),
    () => tagsAndCatalog(consul),
    () => blockingQuery(consul, nextLine),
    () => maintenance(consul),
    () => httpCheck(consul),
    () => tcpCheck(consul),
    () => deregister(consul),
    tokens,
  ];
  let failed = 0;
  for (const scenario of scenarios) {
    try {
      await scenario();
    } catch (error) {
      failed += 1;
      console.error(error && error.stack ? error.stack : error);
      console.log(`failed: ${error && error.message ? error.message : error}`);
    }
  }
  expect(failed === 0, `${failed} scenarios failed`);
  console.log("ok");
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    console.log("FAIL");
    process.exit(1);
  },
);
