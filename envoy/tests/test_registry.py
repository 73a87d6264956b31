"""The tenant registry in a real Envoy (2 workers) with the real collector: tenants, keys,
suspension, model allow-lists, limits and the drain flag changed over the collector's API take
effect on every worker within the sync interval; an unreachable collector leaves the last
snapshot in force; static tenants merge, and win on a conflicting id; an unchanged registry is
polled with `If-None-Match` and answered `304`.

The stack is this module's own (the drain flag and the collector outage would disturb the
other tests): the filter polls every 300 ms and ticks every 200 ms, so a change is in force
everywhere within about half a second. Each check allows a few seconds, for a busy machine,
and the tests print how long each change took. One more test runs `make run`'s launcher with
the demo configuration and adds a tenant with the command it prints."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections import Counter

import pytest
from conftest import (
    COLLECTOR_BIN,
    DEMO_MODEL_BIN,
    ENVOY_BIN,
    FILTER_WASM,
    TEST_ADMIN_TOKEN,
    TEST_INGEST_TOKEN,
)
from registry_admin import EnvoyStats, RegistryApi, chat, settled
from support import Collector, Gateway, Tenant, assert_openai_error, poll

import stack

INTERVAL_MS = 300
FLUSH_MS = 200
# A change reaches every worker within the interval and a tick; the rest is for a busy machine.
PROPAGATION_S = 4.0

STATIC = Tenant("reg-static", f"sk-reg-static-{secrets.token_hex(16)}", 7, 77_777)


def plugin_config() -> dict:
    return {
        "tenants": [STATIC.plugin_entry()],
        "collector": {
            "cluster": "collector",
            "ingest_token": TEST_INGEST_TOKEN,
            "flush_interval_ms": FLUSH_MS,
            "timeout_ms": 2000,
        },
        "registry": {"interval_ms": INTERVAL_MS, "timeout_ms": 1000},
        "metering": {"default_max_tokens": 64},
    }


@pytest.fixture(scope="module")
def reg_stack(tmp_path_factory: pytest.TempPathFactory):
    gate = stack.Stack(
        workdir=tmp_path_factory.mktemp("registry-stack"),
        plugin_config=plugin_config(),
        ports=stack.Ports.free(),
        envoy_bin=ENVOY_BIN,
        collector_bin=COLLECTOR_BIN,
        demo_model_bin=DEMO_MODEL_BIN,
        wasm_path=FILTER_WASM,
        admin_token=TEST_ADMIN_TOKEN,
        concurrency=2,
        envoy_args=["--log-level", "warning", "--component-log-level", "wasm:info"],
    )
    try:
        gate.start(timeout=60)
    except stack.StackError as err:
        pytest.fail(f"the registry stack did not start: {err}", pytrace=False)
    try:
        yield gate
    finally:
        gate.stop()


@pytest.fixture(scope="module")
def api(reg_stack: stack.Stack) -> RegistryApi:
    return RegistryApi(reg_stack.collector_url, reg_stack.admin_token)


@pytest.fixture(scope="module")
def gw(reg_stack: stack.Stack) -> Gateway:
    return Gateway(reg_stack.gateway_url)


@pytest.fixture(scope="module")
def stats(reg_stack: stack.Stack) -> EnvoyStats:
    return EnvoyStats(reg_stack.admin_url)


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, reg_stack: stack.Stack):
    """The last lines of each process under a test that failed (its teardown output)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(reg_stack.log_tails(40))


def report(what: str, seconds: float) -> None:
    print(f"{what}: {seconds * 1000:.0f} ms")


def ok(response) -> bool:
    return response.status == 200


def refused(status: int, code: str):
    return lambda response: response.status == status and response.error_code == code


# ---------------------------------------------------------------------------------------------


def test_a_created_tenant_works_and_a_revoked_key_stops(api, gw):
    created = api.create("reg-new", rate_limit=100_000)
    key = created["api_key"]
    assert key.startswith("ig-"), created
    _, took = settled(lambda: chat(gw, key), ok, what="the new key works", timeout=PROPAGATION_S)
    report("create -> key works", took)
    response = chat(gw, key)
    assert response.headers["x-ratelimit-limit-requests"] == "100000", response

    api.revoke_key("reg-new", created["key_id"])
    response, took = settled(
        lambda: chat(gw, key),
        refused(401, "invalid_api_key"),
        what="the revoked key is refused",
        timeout=PROPAGATION_S,
    )
    report("revoke -> 401", took)
    assert_openai_error(response, 401, "invalid_api_key")


def test_rotation_with_two_keys_fails_no_request(api, gw):
    """A client streams requests with the old key; the operator adds a key, the client
    switches to it, the operator revokes the old one. Not one request fails."""
    created = api.create("reg-rotate", rate_limit=100_000)
    old = created["api_key"]
    settled(lambda: chat(gw, old), ok, what="the first key works", timeout=PROPAGATION_S)

    current = {"key": old}
    stop = threading.Event()
    results: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            key = current["key"]
            try:
                status = chat(gw, key).status
            except BaseException as err:  # reported below
                errors.append(err)
                return
            results.append(("old" if key == old else "new", status))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        added = api.add_key("reg-rotate")
        new = added["api_key"]
        assert new != old
        _, took = settled(lambda: chat(gw, new), ok, what="the new key", timeout=PROPAGATION_S)
        report("add-key -> new key works", took)

        # The client switches; once each of its threads has sent a request with the new key,
        # no request with the old one is left in flight.
        current["key"] = new
        seen = len(results)
        poll(
            lambda: Counter(label for label, _ in results[seen:])["new"],
            lambda n: n >= 2 * len(threads),
            what="the client's requests with the new key",
            timeout=10,
            interval=0.02,
        )
        api.revoke_key("reg-rotate", created["key_id"])
        settled(
            lambda: chat(gw, old),
            refused(401, "invalid_api_key"),
            what="the old key is refused",
            timeout=PROPAGATION_S,
        )
        # The client carries on after the revocation has reached every worker.
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert not errors, errors
    statuses = Counter(results)
    assert set(statuses) == {("old", 200), ("new", 200)}, statuses
    assert statuses[("old", 200)] >= 4 and statuses[("new", 200)] >= 4, statuses


def test_suspend_refuses_and_unsuspend_restores(api, gw):
    key = api.create("reg-suspend")["api_key"]
    settled(lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S)

    api.patch("reg-suspend", suspended=True)
    response, took = settled(
        lambda: chat(gw, key),
        refused(403, "tenant_suspended"),
        what="the suspended tenant is refused",
        timeout=PROPAGATION_S,
    )
    report("suspend -> 403", took)
    assert_openai_error(response, 403, "tenant_suspended")

    api.patch("reg-suspend", suspended=False)
    settled(lambda: chat(gw, key), ok, what="the tenant is back", timeout=PROPAGATION_S)


def test_allowed_models(api, gw):
    key = api.create("reg-models")["api_key"]
    # Before any allow-list, the model server answers for any model.
    settled(lambda: chat(gw, key, model="other-model"), ok, what="any model", timeout=PROPAGATION_S)

    api.patch("reg-models", allowed_models=["demo-model"])
    response, took = settled(
        lambda: chat(gw, key, model="other-model"),
        refused(403, "model_not_allowed"),
        what="another model is refused",
        timeout=PROPAGATION_S,
    )
    report("allowed_models -> 403", took)
    error = assert_openai_error(response, 403, "model_not_allowed")
    assert "other-model" in error["message"], error
    for _ in range(4):
        response = chat(gw, key, model="demo-model")
        assert response.status == 200, response

    api.patch("reg-models", allowed_models=None)
    settled(
        lambda: chat(gw, key, model="other-model"),
        ok,
        what="every model again",
        timeout=PROPAGATION_S,
    )


def test_a_new_rate_limit_keeps_the_usage(api, gw):
    """Five of five requests used; the limit goes up to 20: what was used still counts."""
    key = api.create("reg-limit", rate_limit=5)["api_key"]
    _, took = settled(
        lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S, confirm=0
    )
    admitted = 1
    while admitted < 5:
        response = chat(gw, key)
        assert response.status == 200, response
        admitted += 1
    assert chat(gw, key).status == 429

    api.patch("reg-limit", rate_limit=20)
    started = time.monotonic()
    while True:
        response = chat(gw, key)
        if response.status == 200:
            admitted += 1
            if response.headers["x-ratelimit-limit-requests"] == "20":
                break
        else:
            assert response.status == 429, response
        assert time.monotonic() - started < PROPAGATION_S, response
        time.sleep(0.05)
    report("rate_limit 5 -> 20", time.monotonic() - started)

    remaining = response.int_header("x-ratelimit-remaining-requests")
    elapsed = time.monotonic() - started
    # A fresh bucket would leave 19. The bucket refills 20/min meanwhile: a request or two.
    refill = 20 * (elapsed + 5) / 60
    assert 20 - admitted <= remaining <= 20 - admitted + refill + 1, (remaining, admitted)
    assert remaining <= 17, f"usage reset: {remaining} of 20 remain after {admitted} requests"


def test_deleted_tenant_is_refused_and_its_records_stay(api, gw, reg_stack):
    key = api.create("reg-delete")["api_key"]
    settled(lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S, confirm=2)
    request_ids = set()
    for _ in range(3):
        response = chat(gw, key)
        assert response.status == 200, response
        request_ids.add(response.request_id)
    collector = Collector(reg_stack.collector_url, reg_stack.admin_token)
    collector.wait_billing("reg-delete", request_ids)

    assert api.delete("reg-delete") == {"id": "reg-delete", "deleted": True}
    _, took = settled(
        lambda: chat(gw, key),
        refused(401, "invalid_api_key"),
        what="the deleted tenant's key is refused",
        timeout=PROPAGATION_S,
    )
    report("delete -> 401", took)
    assert api.call("GET", "/v1/tenants/reg-delete")[0] == 404

    # Its history stays: billing records and audit entries, the deletion's among them.
    billing = {r["request_id"] for r in collector.billing("reg-delete")}
    assert request_ids <= billing, billing
    assert collector.usage("reg-delete")["requests"] >= 3
    actions = Counter(e["action"] for e in collector.audit("reg-delete"))
    assert actions["delete"] == 1 and actions["create"] == 1 and actions["inference"] >= 4, actions


def test_drain_and_restore(api, gw, reg_stack):
    key = api.create("reg-drain")["api_key"]
    settled(lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S)
    health = lambda: gw.request("GET", "/healthz")  # noqa: E731
    assert health().status == 200

    try:
        api.set_healthy(False)
        response, took = settled(
            health, lambda r: r.status == 503, what="/healthz 503", timeout=PROPAGATION_S
        )
        report("drain -> /healthz 503", took)
        assert json.loads(response.body) == {"status": "degraded"}, response
        for tenant_key in (key, STATIC.key):
            response = chat(gw, tenant_key)
            assert_openai_error(response, 503, "service_draining")
    finally:
        api.set_healthy(True)
    settled(health, ok, what="/healthz back to 200", timeout=PROPAGATION_S)
    assert json.loads(health().body) == {"status": "ok"}
    settled(lambda: chat(gw, key), ok, what="inference again", timeout=PROPAGATION_S)


def test_static_tenants_merge_and_win_on_their_id(api, gw, reg_stack):
    def static_works(response) -> bool:
        return response.status == 200 and response.headers.get("x-ratelimit-limit-tokens") == str(
            STATIC.token_budget
        )

    # A registry tenant with the static tenant's id: left out whole, its key never works.
    clash = api.create(STATIC.id, rate_limit=1000)
    other = api.create("reg-beside-static")["api_key"]
    settled(lambda: chat(gw, other), ok, what="a registry tenant", timeout=PROPAGATION_S)
    for _ in range(4):
        assert_openai_error(chat(gw, clash["api_key"]), 401, "invalid_api_key")
    # The static tenant keeps its own key and limits (its rate limit is 7 a minute).
    response = chat(gw, STATIC.key)
    assert static_works(response), response
    poll(
        reg_stack.envoy.output,
        lambda out: f"registry tenant {STATIC.id} ignored: a static tenant has this id" in out,
        what="the log line about the conflicting id",
        timeout=5,
    )
    api.delete(STATIC.id)


def test_an_unchanged_registry_is_answered_304(api, gw, reg_stack, stats):
    key = api.create("reg-etag")["api_key"]
    settled(lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S, confirm=0)
    # Give the syncer a poll or two to settle on the latest version.
    time.sleep(2 * INTERVAL_MS / 1000)
    before = stats.registry()
    time.sleep(8 * INTERVAL_MS / 1000)
    after = stats.registry()
    assert after["updates"] == before["updates"], (before, after)
    assert after["unchanged"] >= before["unchanged"] + 3, (before, after)
    assert after["version"] == before["version"] > 0, after

    # The collector's side: the ETag the filter sends back gets 304 and no body.
    url = f"{reg_stack.collector_url}/v1/tenants/snapshot"
    auth = {"Authorization": f"Bearer {TEST_INGEST_TOKEN}"}
    status, headers, body = stack.http_request("GET", url, headers=auth)
    assert status == 200 and json.loads(body)["version"] == after["version"], body[:200]
    etag = headers["etag"]
    assert etag.startswith(f'"{after["version"]}-'), etag
    status, _, body = stack.http_request("GET", url, headers=auth | {"If-None-Match": etag})
    assert (status, body) == (304, b"")


def test_an_unreachable_collector_leaves_the_last_snapshot(api, gw, reg_stack, stats):
    key = api.create("reg-outage")["api_key"]
    settled(lambda: chat(gw, key), ok, what="the key works", timeout=PROPAGATION_S)
    before = stats.registry()
    assert before["stale_seconds"] <= 1, before

    reg_stack.collector.stop()
    try:
        # The registry's tenants (and the static one) keep working, the staleness grows and
        # each failed poll counts.
        stale = poll(
            stats.registry,
            lambda s: s["stale_seconds"] >= 2 and s["failures"] >= before["failures"] + 3,
            what="the staleness gauge and the failure counter",
            timeout=15,
        )
        assert stale["version"] == before["version"], stale
        for tenant_key in (key, STATIC.key, key, key):
            response = chat(gw, tenant_key)
            assert response.status == 200, response
        assert "tenant registry not synced" in reg_stack.envoy.output()
    finally:
        reg_stack.restart_collector()

    poll(
        stats.registry,
        lambda s: s["stale_seconds"] == 0,
        what="the staleness back at 0",
        timeout=15,
    )
    poll(
        reg_stack.envoy.output,
        lambda out: "tenant registry reachable again" in out,
        what="the recovery log line",
        timeout=5,
    )
    # And changes flow again.
    api.patch("reg-outage", suspended=True)
    settled(
        lambda: chat(gw, key),
        refused(403, "tenant_suspended"),
        what="a change after the outage",
        timeout=PROPAGATION_S,
    )


def test_make_run_demo_follows_the_registry(tmp_path):
    """`make run`'s launcher with the demo configuration: the command it prints creates a
    tenant whose key works through the gateway within seconds (the demo polls every 2 s)."""
    from test_launcher import READY, Launcher

    launcher = Launcher(tmp_path, stack.Ports.free())
    try:
        launcher.wait_for_line(READY)
        lines = [line.strip() for line in launcher.lines]
        at = next(i for i, line in enumerate(lines) if line.startswith("tenant registry"))
        export, create = lines[at + 1], lines[at + 2]
        assert export == f"export COLLECTOR_ADMIN_TOKEN={stack.DEMO_ADMIN_TOKEN}", export
        assert " tenant --url " in create and " create my-tenant " in create, create

        result = subprocess.run(
            f"{export}; {create}", shell=True, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        key = json.loads(result.stdout)["api_key"]
        gateway = Gateway(f"http://127.0.0.1:{launcher.ports.listener}")
        # The demo ticks every second: the other worker follows within one.
        response, took = settled(
            lambda: chat(gateway, key),
            ok,
            what="the demo's new tenant",
            timeout=10,
            confirm=4,
            tick=1.1,
        )
        report("make run: create -> key works", took)
        assert response.headers["x-ratelimit-limit-requests"] == "60", response
        # The demo tenants still work beside it.
        assert chat(gateway, "demo-acme-key").status == 200
    finally:
        launcher.stop()
    assert launcher.process.returncode == 0, launcher.tail()


def test_no_log_shows_a_key_or_token(api, reg_stack):
    """After everything above: neither Envoy's log nor the collector's holds a key the
    registry issued, the static tenant's key or either token."""
    assert len(api.issued) >= 10, api.issued
    secrets_ = [*api.issued, STATIC.key, TEST_INGEST_TOKEN, TEST_ADMIN_TOKEN]
    for child in (reg_stack.envoy, reg_stack.collector):
        log = child.output()
        assert log, child.name
        leaked = [s[:12] + "..." for s in secrets_ if s in log]
        assert not leaked, f"{child.name}'s log holds {leaked}"
