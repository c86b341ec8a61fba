"""The PyPI client `py-eureka-client`, unmodified, against the registry's Eureka API.

Run by tests/tests/tools/eureka_clients.rs with .venv's Python, against a registry that
test started (port 0, a fresh database). Environment: REGISTRY_EUREKA_URL (the server URL
a Eureka client is given, `http://host:port/eureka`), REGISTRY_GUARDED_EUREKA_URL (a
registry that wants REGISTRY_WRITE_TOKEN), EUREKA_APP (this client's app name) and
EUREKA_PORT (the port it registers).

The client registers itself with a 3 s lease renewed every second and reads the registry
every second (with deltas and their hash check, as this client always does). The script
prints `step <name>` as it goes; at `wait <name>` it waits for the Rust test to check the
registry (or change it) and answer `go` on standard input. It prints `ok` at the end, or
`failed: <what>` and exits with status 1.
"""

import asyncio
import os
import sys
import time
import traceback
import urllib.error

from py_eureka_client import eureka_basic
from py_eureka_client.eureka_client import EurekaClient

SHOWS_WITHIN = 15.0


def step(name):
    print(f"step {name}", flush=True)


def wait(name):
    print(f"wait {name}", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "go":
        raise AssertionError(f"the test answered {answer!r} to {name}")


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


async def eventually(what, probe, within=SHOWS_WITHIN):
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except Exception as error:  # the registry may answer 404 meanwhile
            last = error
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


async def main():
    url = os.environ["REGISTRY_EUREKA_URL"]
    app = os.environ["EUREKA_APP"]
    port = int(os.environ["EUREKA_PORT"])
    client = EurekaClient(
        eureka_server=url,
        app_name=app,
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=port,
        renewal_interval_in_secs=1,
        duration_in_secs=3,
        metadata={"flavour": "python"},
    )
    instance_id = f"127.0.0.1:{app.lower()}:{port}"

    step("start")
    await client.start()
    # From here on the client follows the registry by deltas alone: it fetches everything
    # again only when its copy's hash code differs from the registry's, which must never
    # happen. Its full fetch is counted (the method its delta loop calls on a mismatch).
    full_fetches = []
    full_fetch = client._EurekaClient__pull_full_registry

    async def counted_full_fetch():
        full_fetches.append(time.monotonic())
        await full_fetch()

    client._EurekaClient__pull_full_registry = counted_full_fetch
    wait("registered")

    step("discover")

    async def backends():
        registry = client.applications
        backend = registry.get_application("BACKEND") if registry else None
        by_app = backend.up_instances if backend else []
        by_vip = (await eureka_basic.get_vip(url, "backend")).applications
        vip_instances = [i for a in by_vip for i in a.instances if i.status == "UP"]
        if len(by_app) == 2 and len(vip_instances) == 2:
            return sorted(i.instanceId for i in by_app)
        return None

    found = await eventually("both backend instances, by app and by VIP", backends)
    expect(found == ["backend-1", "backend-2"], f"found {found}")
    one = await eureka_basic.get_app_instance(url, app, instance_id)
    expect(one.instanceId == instance_id, f"the instance reads back as {one.instanceId!r}")
    expect(one.metadata.get("flavour") == "python", f"metadata {one.metadata!r}")
    expect(one.port.port == port and one.port.enabled, f"port {one.port.port} {one.port.enabled}")

    step("out-of-service")
    await client.status_update("OUT_OF_SERVICE")
    wait("out-of-service")

    step("back")
    # Removing the override without a value leaves the instance UNKNOWN: the next renewal
    # answers 404 and the client registers again, UP.
    await client.delete_status_override()

    async def up_again():
        instance = await eureka_basic.get_app_instance(url, app, instance_id)
        return instance.status == "UP"

    await eventually("the instance UP again after registering anew", up_again)
    wait("back")

    step("lost")
    # The test removed the instance meanwhile: a renewal answered 404, the client registered.
    await eventually("the instance registered again", up_again)
    wait("lost")

    step("delta")

    async def converged():
        mine = client.applications.get_application("BACKEND")
        ids = sorted(i.instanceId for i in mine.instances) if mine else []
        return ids == ["backend-1", "backend-3"]

    await eventually("the local registry to follow the delta", converged)

    async def same_hash():
        # The client's own hash of its copy (what it compares after applying a delta, and
        # refetches everything on a mismatch) against the registry's.
        local = client._EurekaClient__get_applications_hash()
        remote = (await eureka_basic.get_delta(url)).appsHashcode
        return local == remote and local

    await eventually("the client's hash code to match the registry's", same_hash)
    expect(not full_fetches, f"the client fetched everything again {len(full_fetches)} times")

    step("guarded")
    guarded = os.environ["REGISTRY_GUARDED_EUREKA_URL"]
    token = os.environ["REGISTRY_WRITE_TOKEN"]
    scheme, rest = guarded.split("://", 1)
    with_token = f"{scheme}://eureka:{token}@{rest}"
    instance = eureka_basic.Instance(
        instanceId="py-guarded-1",
        app="PY-GUARDED",
        hostName="127.0.0.1",
        ipAddr="127.0.0.1",
        status="UP",
        vipAddress="py-guarded",
    )
    try:
        await eureka_basic.register(guarded, instance)
        raise AssertionError("registering without the token was accepted")
    except urllib.error.HTTPError as error:
        expect(error.code == 401, f"without the token: {error.code}")
    await eureka_basic.register(with_token, instance)
    apps = await eureka_basic.get_applications(with_token)
    names = [a.name for a in apps.applications]
    expect("PY-GUARDED" in names, f"the guarded registry holds {names}")
    await eureka_basic.cancel(with_token, "PY-GUARDED", "py-guarded-1")

    step("stop")
    # The client's heartbeat thread never ends, and a renewal that meets the cancel answers
    # 404, on which the client registers again. Its loop is told to stop renewing first (it
    # reads these flags on every round), and the round in progress is let finish (a round
    # is one renewal and one fetch, then a one-second pause), so the cancel is the last word.
    client._EurekaClient__should_register = False
    client._EurekaClient__should_discover = False
    await asyncio.sleep(2.5)
    # What the client's stop() does (which it skips once told not to register).
    await client.register(status="DOWN")
    await client.cancel()
    print("ok", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception:
        print("failed: " + traceback.format_exc().replace("\n", " | "), flush=True)
        sys.stdout.flush()
        os._exit(1)
    # The client's heartbeat thread never ends (and would register again): leave at once.
    sys.stdout.flush()
    os._exit(0)
