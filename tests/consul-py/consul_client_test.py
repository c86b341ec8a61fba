"""The PyPI client `py-consul`, unmodified, against the registry's Consul API.

Run by tests/tests/tools/consul_clients.rs with .venv's Python, against registries that
test started (port 0, a fresh database each):

- `scenarios`: every scenario below against REGISTRY_CONSUL_URL, and the token rules
  against REGISTRY_GUARDED_CONSUL_URL (which wants REGISTRY_WRITE_TOKEN for writes and
  REGISTRY_READ_TOKEN for reads). For the blocking query it prints `change <service>` and
  waits on standard input for `changed <before_ms> <after_ms>`: the Rust test has then
  registered an instance of that service through v1 (another client), between those two
  instants (Unix milliseconds).
- `serve <service> <id>`: a service of its own: answers `GET /hello` on 127.0.0.1 (port
  0) with `{"served_by": <id>}`, registers itself with a TTL check and passes it, prints
  `registered`, and deregisters when its standard input closes; for `registry-client` to
  discover and call.
- `show <service>`: prints `health.service(<service>)` as JSON.

Prints `step <name>` as it goes and `ok` at the end. A failed expectation ends its
scenario with `failed: <what was expected and what came>`; the others still run, and the
script then exits with status 1.
"""

import json
import os
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import consul
from consul.callback import CB

# Longest a change made through the API may take to show in a read.
SHOWS_WITHIN = 5.0
# Longest an active check may take to turn (a few failed probes at a 1 s interval).
CHECK_TURNS_WITHIN = 20.0
# A blocking query must answer this soon after the change it waited for.
WAKES_WITHIN_MS = 1000


def client(url_variable, token=None):
    url = urllib.parse.urlsplit(os.environ[url_variable])
    return consul.Consul(host=url.hostname, port=url.port, scheme=url.scheme, token=token)


def step(name):
    print(f"step {name}", flush=True)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def eventually(what, probe, within=SHOWS_WITHIN):
    """Calls `probe` until it answers something truthy; fails naming `what` and the last answer."""
    deadline = time.monotonic() + within
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(0.1)


def entries(c, service, **query):
    index, nodes = c.health.service(service, **query)
    expect(index not in (None, "", "0"), f"health.service({service}) answered X-Consul-Index {index!r}")
    expect(isinstance(nodes, list), f"health.service({service}) answered {nodes!r}, not a list")
    return nodes


def entry(c, service, service_id, **query):
    for node in entries(c, service, **query):
        if node["Service"]["ID"] == service_id:
            return node
    return None


def check_of(node, check_id):
    for check in node["Checks"]:
        if check["CheckID"] == check_id:
            return check
    return None


def status_is(c, service, service_id, check_id, status):
    """The check's status in health.service when it is `status`, else None."""
    node = entry(c, service, service_id)
    if node is None:
        return None
    check = check_of(node, check_id)
    return check if check is not None and check["Status"] == status else None


def passing_ids(c, service, **query):
    return sorted(node["Service"]["ID"] for node in entries(c, service, passing=True, **query))


def agent_and_status(c):
    step("status.leader, agent.self")
    leader = c.status.leader()
    expect(isinstance(leader, str) and leader, f"status.leader answered {leader!r}")
    me = c.agent.self()
    expect(isinstance(me, dict), f"agent.self answered {me!r}")
    for key, value in me.items():
        expect(isinstance(value, dict), f"agent.self: {key} is {value!r}, not an object")
    expect(me["Config"]["Datacenter"] == "dc1", f"agent.self Config: {me['Config']!r}")
    expect(me["Config"]["NodeName"], f"agent.self Config.NodeName: {me['Config']!r}")


TTL_CHECK = "service:py-ttl-1"


def ttl_register(c):
    step("register with a TTL check")
    ok = c.agent.service.register(
        "py-ttl",
        service_id="py-ttl-1",
        address="127.0.0.1",
        port=9101,
        tags=["v1", "blue"],
        meta={"team": "payments"},
        check=consul.Check.ttl("30s"),
    )
    expect(ok is True, f"agent.service.register answered {ok!r}")
    check_id = TTL_CHECK
    node = eventually("py-ttl-1 in health.service", lambda: entry(c, "py-ttl", "py-ttl-1"))
    service = node["Service"]
    expect(service["Service"] == "py-ttl", f"Service: {service!r}")
    expect((service["Address"], service["Port"]) == ("127.0.0.1", 9101), f"Service: {service!r}")
    expect(sorted(service["Tags"]) == ["blue", "v1"], f"Service.Tags: {service['Tags']!r}")
    expect(service["Meta"] == {"team": "payments"}, f"Service.Meta: {service['Meta']!r}")
    expect(node["Node"]["Node"] and node["Node"]["ID"], f"Node: {node['Node']!r}")
    check = check_of(node, check_id)
    expect(check is not None, f"no check {check_id} in {node['Checks']!r}")
    expect(check["ServiceID"] == "py-ttl-1", f"check: {check!r}")

    step("agent.services, agent.checks")
    services = c.agent.services()
    expect("py-ttl-1" in services, f"agent.services: {services!r}")
    mine = services["py-ttl-1"]
    expect((mine["Service"], mine["Port"], mine["Address"]) == ("py-ttl", 9101, "127.0.0.1"), f"agent.services: {mine!r}")
    checks = c.agent.checks()
    expect(check_id in checks, f"agent.checks: {checks!r}")



def ttl_starts_critical(c):
    step("a new TTL check is critical")
    check = check_of(entry(c, "py-ttl", "py-ttl-1"), TTL_CHECK)
    expect(check["Status"] == "critical", f"a new TTL check is {check['Status']!r}, not critical")
    expect(passing_ids(c, "py-ttl") == [], "a critical instance in health.service(passing=True)")


def ttl_pass_warn_fail(c):
    check_id = TTL_CHECK
    step("pass: passing")
    expect(c.agent.check.ttl_pass(check_id, notes="ready") is True, "ttl_pass failed")
    eventually("py-ttl-1 in health.service(passing=True)", lambda: passing_ids(c, "py-ttl") == ["py-ttl-1"])

    step("warn: warning, out of passing=True")
    expect(c.agent.check.ttl_warn(check_id, notes="slow") is True, "ttl_warn failed")
    check = eventually("py-ttl-1 warning", lambda: status_is(c, "py-ttl", "py-ttl-1", check_id, "warning"))
    expect(check["Output"] == "slow", f"the note is not the check's Output: {check!r}")
    expect(passing_ids(c, "py-ttl") == [], "a warning instance in health.service(passing=True)")
    index, warning = c.health.state("warning")
    expect(any(ch["CheckID"] == check_id for ch in warning), f"health.state(warning): {warning!r}")

    step("fail: critical")
    expect(c.agent.check.ttl_fail(check_id, notes="down") is True, "ttl_fail failed")
    eventually("py-ttl-1 critical", lambda: status_is(c, "py-ttl", "py-ttl-1", check_id, "critical"))
    index, critical = c.health.state("critical")
    expect(any(ch["CheckID"] == check_id for ch in critical), f"health.state(critical): {critical!r}")
    index, checks = c.health.checks("py-ttl")
    expect(index not in (None, "", "0"), f"health.checks index {index!r}")
    expect([ch["Status"] for ch in checks if ch["CheckID"] == check_id] == ["critical"], f"health.checks: {checks!r}")



def ttl_update(c):
    check_id = TTL_CHECK
    step("update (the client's own transport: py-consul has no method for it)")
    body = json.dumps({"Status": "passing", "Output": "all good"})
    updated = c.http.put(CB.boolean(), f"/v1/agent/check/update/{check_id}", data=body)
    expect(updated is True, f"check/update answered {updated!r}")
    eventually("py-ttl-1 passing after update", lambda: passing_ids(c, "py-ttl") == ["py-ttl-1"])
    check = check_of(entry(c, "py-ttl", "py-ttl-1"), check_id)
    expect(check["Output"] == "all good", f"the update's Output is not shown: {check!r}")
    index, everything = c.health.state("any")
    expect(any(ch["CheckID"] == check_id for ch in everything), f"health.state(any): {everything!r}")



def tags_and_catalog(c):
    step("tags: every one must match")
    expect(c.agent.check.ttl_pass(TTL_CHECK) is True, "ttl_pass failed")
    eventually("py-ttl-1 passing", lambda: passing_ids(c, "py-ttl") == ["py-ttl-1"])
    expect(passing_ids(c, "py-ttl", tag="blue") == ["py-ttl-1"], "tag=blue")
    expect(passing_ids(c, "py-ttl", tag=["v1", "blue"]) == ["py-ttl-1"], "tag=v1&tag=blue")
    expect(passing_ids(c, "py-ttl", tag=["v1", "green"]) == [], "tag=v1&tag=green")

    step("catalog.services with tags, catalog.service")
    index, catalog = c.catalog.services()
    expect(index not in (None, "", "0"), f"catalog.services index {index!r}")
    expect(sorted(catalog.get("py-ttl", [])) == ["blue", "v1"], f"catalog.services: {catalog!r}")
    index, instances = c.catalog.service("py-ttl")
    mine = [i for i in instances if i["ServiceID"] == "py-ttl-1"]
    expect(len(mine) == 1, f"catalog.service: {instances!r}")
    mine = mine[0]
    expect(
        (mine["ServiceName"], mine["ServiceAddress"], mine["ServicePort"]) == ("py-ttl", "127.0.0.1", 9101),
        f"catalog.service: {mine!r}",
    )
    expect(sorted(mine["ServiceTags"]) == ["blue", "v1"], f"catalog.service: {mine!r}")
    expect(mine["ServiceMeta"] == {"team": "payments"}, f"catalog.service: {mine!r}")


def heartbeats_wake_nobody(c):
    step("a pass that changes only the output wakes no blocking query")
    expect(c.agent.check.ttl_pass(TTL_CHECK, notes="beat 1") is True, "ttl_pass failed")
    eventually("py-ttl-1 passing", lambda: passing_ids(c, "py-ttl") == ["py-ttl-1"])
    index, _ = c.health.service("py-ttl")
    answer = {}

    def block():
        started = time.monotonic()
        answer["index"], _ = c.health.service("py-ttl", index=index, wait="2s")
        answer["waited"] = time.monotonic() - started

    blocked = threading.Thread(target=block)
    blocked.start()
    expect(c.agent.check.ttl_pass(TTL_CHECK, notes="beat 2") is True, "ttl_pass failed")
    blocked.join(10)
    expect(not blocked.is_alive(), "a 2s blocking query did not answer")
    expect(answer["index"] == index, f"a heartbeat moved the index from {index} to {answer['index']}")
    expect(answer["waited"] >= 1.5, f"a heartbeat woke a blocking query after {answer['waited']:.2f}s")
    check = check_of(entry(c, "py-ttl", "py-ttl-1"), TTL_CHECK)
    expect(check["Output"] == "beat 2", f"the latest note is not shown: {check!r}")


def blocking_query(c):
    step("a blocking query with nothing changing answers after its wait")
    index, _ = c.health.service("py-ttl")
    started = time.monotonic()
    again, _ = c.health.service("py-ttl", index=index, wait="1s")
    waited = time.monotonic() - started
    expect(again == index, f"the index moved from {index} to {again} with nothing changing")
    expect(0.9 <= waited <= 3.0, f"a 1s wait answered after {waited:.2f}s")

    step("a blocking query wakes on a change made by another client")
    index, _ = c.health.service("py-ttl")
    answer = {}

    def block():
        try:
            answer["result"] = c.health.service("py-ttl", index=index, wait="30s")
        except Exception as error:  # reported below, in the main thread
            answer["error"] = error
        answer["at_ms"] = time.time() * 1000

    blocked = threading.Thread(target=block)
    blocked.start()
    print("change py-ttl", flush=True)
    reply = sys.stdin.readline().split()
    expect(reply[:1] == ["changed"], f"the test answered {reply!r}, not changed")
    before_ms, after_ms = float(reply[1]), float(reply[2])
    blocked.join(35)
    expect(not blocked.is_alive(), "the blocking query did not answer within its wait")
    if "error" in answer:
        raise answer["error"]
    new_index, nodes = answer["result"]
    expect(answer["at_ms"] >= before_ms, "the blocking query answered before the change: it did not block")
    late = answer["at_ms"] - after_ms
    expect(late <= WAKES_WITHIN_MS, f"the blocking query woke {late:.0f} ms after the change")
    expect(new_index != index, f"the index stayed {index} across a change")
    ids = sorted(node["Service"]["ID"] for node in nodes)
    expect("py-ttl-2" in ids, f"the instance registered by the other client is missing: {ids!r}")


class Healthy(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def http_check(c):
    step("an HTTP check turns passing, and critical when its server stops")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    port = server.server_address[1]
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    check = consul.Check.http(f"http://127.0.0.1:{port}/health", "1s", timeout="1s")
    ok = c.agent.service.register("py-http", service_id="py-http-1", address="127.0.0.1", port=port, check=check)
    expect(ok is True, f"register with an HTTP check answered {ok!r}")

    def stop():
        server.shutdown()
        server.server_close()

    passing_then_critical(c, "py-http", "py-http-1", stop, "the HTTP-checked instance", "its server stopped")


def tcp_check(c):
    step("a TCP check turns passing, and critical when its listener closes")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes connections: nothing needs to accept them
    port = listener.getsockname()[1]
    check = consul.Check.tcp("127.0.0.1", port, "1s", timeout="1s")
    ok = c.agent.service.register("py-tcp", service_id="py-tcp-1", address="127.0.0.1", port=port, check=check)
    expect(ok is True, f"register with a TCP check answered {ok!r}")
    passing_then_critical(c, "py-tcp", "py-tcp-1", listener.close, "the TCP-checked instance", "its listener closed")


def passing_then_critical(c, service, service_id, stop, what, stopped):
    """An actively checked instance turns passing, then critical once `stop` takes its target away."""
    eventually(
        f"{what} passing",
        lambda: passing_ids(c, service) == [service_id],
        within=CHECK_TURNS_WITHIN,
    )
    stop()
    eventually(
        f"{what} critical after {stopped}",
        lambda: status_is(c, service, service_id, f"service:{service_id}", "critical"),
        within=CHECK_TURNS_WITHIN,
    )
    expect(c.agent.service.deregister(service_id) is True, f"deregister {service_id}")


def maintenance(c):
    step("maintenance on: a critical _service_maintenance check with the reason")
    maintenance_id = "_service_maintenance:py-ttl-1"
    expect(c.agent.service.maintenance("py-ttl-1", True, reason="deploying") is True, "maintenance on failed")
    check = eventually(
        "the maintenance check",
        lambda: status_is(c, "py-ttl", "py-ttl-1", maintenance_id, "critical"),
    )
    expect("py-ttl-1" not in passing_ids(c, "py-ttl"), "an instance in maintenance is in passing=True")

    step("maintenance off")
    expect(c.agent.service.maintenance("py-ttl-1", False) is True, "maintenance off failed")
    eventually(
        "the maintenance check gone",
        lambda: (node := entry(c, "py-ttl", "py-ttl-1")) is not None and check_of(node, maintenance_id) is None,
    )
    expect(c.agent.check.ttl_pass("service:py-ttl-1") is True, "ttl_pass after maintenance")
    eventually("py-ttl-1 passing after maintenance", lambda: "py-ttl-1" in passing_ids(c, "py-ttl"))
    expect(check["Notes"] == "deploying", f"the maintenance check's Notes are not the reason: {check!r}")


def deregister(c):
    step("deregister")
    expect(c.agent.service.deregister("py-ttl-1") is True, "deregister py-ttl-1")
    eventually("py-ttl-1 gone", lambda: entry(c, "py-ttl", "py-ttl-1") is None)
    expect("py-ttl-1" not in c.agent.services(), "py-ttl-1 still in agent.services")
    # py-consul reads a 404 on a write as False.
    expect(c.agent.service.deregister("py-never-was") is False, "deregistering an unknown id succeeded")


def tokens():
    step("tokens: refused without, or with the wrong one; accepted with the right one")
    write, read = os.environ["REGISTRY_WRITE_TOKEN"], os.environ["REGISTRY_READ_TOKEN"]
    for token in (None, "wrong-token", read):
        c = client("REGISTRY_GUARDED_CONSUL_URL", token=token)
        try:
            c.agent.service.register("py-guarded", service_id="py-guarded-1", address="127.0.0.1", port=9200)
        except consul.ACLPermissionDenied:
            pass
        else:
            raise AssertionError(f"a register with token {token!r} was not refused with 403")
    writer = client("REGISTRY_GUARDED_CONSUL_URL", token=write)
    ok = writer.agent.service.register(
        "py-guarded", service_id="py-guarded-1", address="127.0.0.1", port=9200, check=consul.Check.ttl("30s")
    )
    expect(ok is True, f"a register with the write token answered {ok!r}")
    try:
        client("REGISTRY_GUARDED_CONSUL_URL").health.service("py-guarded")
    except consul.ACLPermissionDenied:
        pass
    else:
        raise AssertionError("a read without a token was not refused with 403")
    reader = client("REGISTRY_GUARDED_CONSUL_URL", token=read)
    eventually("py-guarded-1 seen with the read token", lambda: entry(reader, "py-guarded", "py-guarded-1"))
    expect(writer.agent.service.deregister("py-guarded-1") is True, "deregister with the write token")


def scenarios():
    """Runs every scenario, each to its first failed expectation, and fails if one did."""
    c = client("REGISTRY_CONSUL_URL")
    failed = []
    for scenario in (
        lambda: agent_and_status(c),
        lambda: ttl_register(c),
        lambda: ttl_starts_critical(c),
        lambda: ttl_pass_warn_fail(c),
        lambda: ttl_update(c),
        lambda: tags_and_catalog(c),
        lambda: heartbeats_wake_nobody(c),
        lambda: blocking_query(c),
        lambda: maintenance(c),
        lambda: http_check(c),
        lambda: tcp_check(c),
        lambda: deregister(c),
        tokens,
    ):
        try:
            scenario()
        except Exception as error:
            traceback.print_exc()
            print(f"failed: {type(error).__name__}: {error}", flush=True)
            failed.append(error)
    expect(not failed, f"{len(failed)} scenarios failed")


def serve(service, service_id):
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"served_by": service_id}).encode()
            self.send_response(200 if self.path == "/hello" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c = client("REGISTRY_CONSUL_URL")
    ok = c.agent.service.register(
        service,
        service_id=service_id,
        address="127.0.0.1",
        port=server.server_address[1],
        check=consul.Check.ttl("60s"),
    )
    expect(ok is True, f"register answered {ok!r}")
    expect(c.agent.check.ttl_pass(f"service:{service_id}") is True, "ttl_pass failed")
    print("registered", flush=True)
    sys.stdin.read()
    c.agent.service.deregister(service_id)
    server.shutdown()


def show(service):
    index, nodes = client("REGISTRY_CONSUL_URL").health.service(service)
    print(json.dumps({"index": index, "nodes": nodes}), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    try:
        {"scenarios": scenarios, "serve": serve, "show": show}[mode](*args)
    except Exception:
        traceback.print_exc()
        print("FAIL", flush=True)
        sys.exit(1)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
