"""Global mode with a real rate-limit service: two Envoys share one tenant budget exactly, for
requests and for tokens; the protocol cannot refund a reservation larger than the usage; and
when the service is down or hangs, the configured failure mode applies within the timeout and
the metric counts it. See global_limits.py for the bed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import global_limits as gl
import yaml
import pytest
from conftest import COLLECTOR_BIN, DEMO_MODEL_BIN, ENVOY_BIN, FILTER_WASM
from support import Gateway, Response, assert_openai_error, assert_retry_after

import stack

SERVER_BIN = Path(
    os.environ.get("RATELIMIT_TEST_SERVER_BIN")
    or stack.ROOT / "target" / "debug" / "ratelimit-test-server"
)

# Tenant id -> (key, requests per minute, tokens per minute), the same in the filter and in the
# service. Each test has its own.
TENANTS = {
    "g-requests": ("sk-g-requests-0123456789abcdef", 10, 1_000_000),
    "g-tokens": ("sk-g-tokens-0123456789abcdef", 1000, 1000),
    "g-outage": ("sk-g-outage-0123456789abcdef", 1000, 1_000_000),
    "g-timeout": ("sk-g-timeout-0123456789abcdef", 1000, 1_000_000),
    # Not in the service's limits file: its limits reach the service only as the descriptors'
    # overrides (`send_limits`), as a registry tenant's would.
    "g-override": ("sk-g-override-0123456789abcdef", 7, 1_000_000),
}
UNLISTED = {"g-override"}
# The two Envoys that share budgets: a service that fails refuses (`deny`), and the timeout is
# long enough that a loaded machine cannot turn a slow answer into a refusal.
# They send no limits, so the service decides on its own limits file, as Limitador does.
SHARED = {"timeout_ms": 1000, "failure_mode": "deny", "send_limits": False}
# Two more that send each tenant's limits as overrides (the default), for a service that
# honours them, as envoyproxy/ratelimit does.
OVERRIDING = {"timeout_ms": 1000, "failure_mode": "deny"}
# The third Envoy's service never answers: `allow` after 50 ms.
HANGING = {"timeout_ms": 50, "failure_mode": "allow"}

# A chat of "hi" is estimated at 8 tokens of prompt; with max_tokens 92 it reserves 100. The
# demo model reports 5 of prompt and at most 44 of completion, never more than reserved.
PROMPT_ESTIMATE = 8


class Bed:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = gl.Redis(workdir)
        listed = {t: (r, k) for t, (_, r, k) in TENANTS.items() if t not in UNLISTED}
        limits = gl.limitador_limits(listed)
        self.ratelimit = gl.RateLimitServer(SERVER_BIN, workdir, self.redis, limits)
        self.silent = gl.Silent()
        collector_port, model_port = stack.free_ports(2)
        self.collector = stack.Child(
            "collector",
            [
                COLLECTOR_BIN,
                "serve",
                "--listen",
                f"127.0.0.1:{collector_port}",
                "--database",
                workdir / "collector.db",
            ],
            env={
                "COLLECTOR_ADMIN_TOKEN": gl.ADMIN_TOKEN,
                "COLLECTOR_INGEST_TOKEN": gl.INGEST_TOKEN,
            },
            log_path=workdir / "collector.log",
        )
        self.model = stack.Child(
            "demo-model",
            [DEMO_MODEL_BIN, "--listen", f"127.0.0.1:{model_port}"],
            log_path=workdir / "demo-model.log",
        )

        def envoy(name: str, service: dict, ratelimit_port: int) -> gl.Envoy:
            return gl.Envoy(
                name,
                ENVOY_BIN,
                FILTER_WASM,
                workdir / name,
                plugin=gl.plugin_config(TENANTS, service),
                collector_port=collector_port,
                model_port=model_port,
                ratelimit_port=ratelimit_port,
            )

        self.a = envoy("envoy-a", SHARED, self.ratelimit.port)
        self.b = envoy("envoy-b", SHARED, self.ratelimit.port)
        self.c = envoy("envoy-c", OVERRIDING, self.ratelimit.port)
        self.d = envoy("envoy-d", OVERRIDING, self.ratelimit.port)
        self.hanging = envoy("envoy-hanging", HANGING, self.silent.port)
        self.envoys = [self.a, self.b, self.c, self.d, self.hanging]

    def start(self) -> None:
        self.redis.start()
        self.ratelimit.start()
        self.collector.start()
        self.model.start()
        for envoy in self.envoys:
            envoy.start()
        for envoy in self.envoys:
            envoy.wait()

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for child in (self.ratelimit, self.collector, self.model, self.redis):
            child.stop()
        self.silent.stop()

    def logs(self) -> str:
        children = [self.redis.child, self.ratelimit.child, self.collector, self.model]
        children += [e.child for e in self.envoys]
        return "".join(f"\n----- {c.name} -----\n{c.tail(30)}\n" for c in children)

    def failures(self, *envoys: gl.Envoy) -> int:
        return sum(e.gate().get("limits.global_failures", 0) for e in envoys)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    try:
        gl.redis_server()
    except gl.Unavailable as err:
        if gl.redis_required():
            pytest.fail(f"{err}, and INFERENCE_GATE_REQUIRE_REDIS=1", pytrace=False)
        pytest.skip(str(err))
    if not SERVER_BIN.is_file():
        pytest.fail(f"{SERVER_BIN} not found: cargo build -p ratelimit-test-server", pytrace=False)
    bed = Bed(tmp_path_factory.mktemp("global"))
    try:
        bed.start()
    except stack.StackError as err:
        bed.stop()
        pytest.fail(f"the global-mode bed did not start: {err}", pytrace=False)
    yield bed
    bed.stop()


def burst(envoys: list[gl.Envoy], tenant: str, count: int, **fields) -> list[Response]:
    """`count` chats of one tenant at once, spread evenly over the Envoys."""
    key = TENANTS[tenant][0]
    barrier = threading.Barrier(count)
    responses: list[Response | BaseException] = [None] * count  # type: ignore[list-item]

    def send(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            gateway = Gateway(envoys[i % len(envoys)].url)
            responses[i] = gateway.chat(key, "hi", **fields)
        except BaseException as err:  # reported below, with the others
            responses[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    failures = [r for r in responses if not isinstance(r, Response)]
    assert not failures, failures
    return responses  # type: ignore[return-value]


def test_two_envoys_share_one_request_limit_exactly(bed):
    """3L requests at once, half through each Envoy: each Envoy's own bucket would let L
    through (2L in all); the service lets exactly L through."""
    tenant = "g-requests"
    limit = TENANTS[tenant][1]
    responses = burst([bed.a, bed.b], tenant, 3 * limit, max_tokens=5)
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: limit, 429: 2 * limit}, statuses
    for response in responses:
        if response.status == 429:
            assert_openai_error(response, 429, "rate_limit_exceeded")
            assert_retry_after(response)
            assert response.int_header("x-ratelimit-limit-requests") == limit
    assert bed.failures(bed.a, bed.b) == 0, "every call was answered"


def test_limits_sent_as_overrides_hold_across_envoys_with_no_service_configuration(bed):
    """A tenant the service's file does not know, as a tenant created in the registry would
    be: its limit travels in each descriptor, and two Envoys still let exactly that many
    through. Without the override the service would know no limit for it and each Envoy would
    let its whole limit through."""
    tenant = "g-override"
    limit = TENANTS[tenant][1]
    responses = burst([bed.c, bed.d], tenant, 3 * limit, max_tokens=5)
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: limit, 429: 2 * limit}, statuses
    for response in responses:
        if response.status == 429:
            assert_openai_error(response, 429, "rate_limit_exceeded")
            assert response.int_header("x-ratelimit-limit-requests") == limit
    assert bed.failures(bed.c, bed.d) == 0, "every call was answered"


def test_without_overrides_a_tenant_the_service_does_not_know_is_limited_per_envoy(bed):
    """The same tenant through the Envoys that send no limits: the service has no limit for
    it, so only each Envoy's own bucket holds, and two Envoys let twice the limit through.
    This is why `send_limits` is on by default."""
    tenant = "g-override"
    limit = TENANTS[tenant][1]
    responses = burst([bed.a, bed.b], tenant, 3 * limit, max_tokens=5)
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: 2 * limit, 429: limit}, statuses
    assert bed.failures(bed.a, bed.b) == 0


def test_two_envoys_share_one_token_budget_exactly_and_nothing_is_refunded(bed):
    """Each request reserves 100 of a 1000-token budget: exactly 10 pass across both Envoys.
    They use far less than they reserved, but the protocol cannot give the surplus back to
    the service, so the budget stays spent until its window ends."""
    tenant = "g-tokens"
    budget = TENANTS[tenant][2]
    max_tokens = 100 - PROMPT_ESTIMATE
    responses = burst([bed.a, bed.b], tenant, 30, max_tokens=max_tokens)
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: budget // 100, 429: 30 - budget // 100}, statuses
    for response in responses:
        if response.status == 429:
            assert_openai_error(response, 429, "token_budget_exceeded")
    used = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status == 200)
    assert used < budget / 2, f"the admitted requests used {used} tokens"

    # Each Envoy's own bucket got its surplus back and admits the next request; the service
    # still counts every reservation in full and refuses it.
    time.sleep(0.5)
    for envoy in (bed.a, bed.b):
        response = Gateway(envoy.url).chat(TENANTS[tenant][0], "hi", max_tokens=max_tokens)
        assert_openai_error(response, 429, "token_budget_exceeded")
        assert response.int_header("x-ratelimit-limit-tokens") == budget
        assert response.int_header("x-ratelimit-remaining-tokens") == 0
        assert_retry_after(response)
    assert bed.failures(bed.a, bed.b) == 0


def test_a_hanging_service_costs_the_timeout_and_failure_mode_allow_lets_through(bed):
    tenant = "g-timeout"
    gateway = Gateway(bed.hanging.url)
    before = bed.failures(bed.hanging)
    for _ in range(3):
        started = time.monotonic()
        response = gateway.chat(TENANTS[tenant][0], "hi", max_tokens=5)
        elapsed = time.monotonic() - started
        assert response.status == 200, response
        # 50 ms for the calls (made at once), plus the request itself.
        assert 0.05 <= elapsed < 1.0, f"{elapsed:.3f}s"
    # Two calls (requests and tokens) failed for each request.
    assert bed.failures(bed.hanging) - before == 6


def test_a_stopped_service_refuses_at_once_under_failure_mode_deny(bed):
    tenant = "g-outage"
    key = TENANTS[tenant][0]
    before = bed.failures(bed.a, bed.b)
    bed.ratelimit.stop()
    try:
        for envoy in (bed.a, bed.b, bed.a, bed.b):
            started = time.monotonic()
            response = Gateway(envoy.url).chat(key, "hi", max_tokens=5)
            elapsed = time.monotonic() - started
            assert_openai_error(response, 503, "limiter_unavailable")
            # Nothing listens: Envoy fails the calls without waiting for the 1 s timeout.
            assert elapsed < 1.0, f"{elapsed:.3f}s"
        assert bed.failures(bed.a, bed.b) - before == 8
    finally:
        bed.ratelimit.start()
    # Back: the next request is asked about and served.
    response = Gateway(bed.a.url).chat(key, "hi", max_tokens=5)
    assert response.status == 200, response


# ---------------------------------------------------------------------------------------------
# What ships in envoy/ratelimit/ for operators (no bed needed)

RATELIMIT_DIR = stack.ROOT / "envoy" / "ratelimit"


def _demo_limits() -> dict[str, tuple[int, int]]:
    plugin = stack.load_plugin_config(stack.DEMO_PLUGIN_CONFIG)
    return {t["id"]: (t["rate_limit"], t["token_budget"]) for t in plugin["tenants"]}


def test_the_shipped_global_plugin_config_is_the_demo_one_in_global_mode():
    from deploy_schemas import plugin_config_errors

    shipped = stack.load_plugin_config(RATELIMIT_DIR / "global-plugin.json")
    assert not plugin_config_errors(shipped), plugin_config_errors(shipped)
    demo = stack.load_plugin_config(stack.DEMO_PLUGIN_CONFIG)
    assert {k: v for k, v in shipped.items() if k != "limits"} == demo
    service = shipped["limits"]["service"]
    assert shipped["limits"]["mode"] == "global"
    assert service["domain"] == gl.DOMAIN
    cluster = yaml.safe_load((RATELIMIT_DIR / "cluster.yaml").read_text())
    assert service["cluster"] == cluster["name"]


def test_the_shipped_envoyproxy_ratelimit_config_has_the_demo_limits():
    config = yaml.safe_load((RATELIMIT_DIR / "envoyproxy-ratelimit.yaml").read_text())
    assert config["domain"] == gl.DOMAIN
    found = {}
    for tenant in config["descriptors"]:
        assert tenant["key"] == "tenant"
        kinds = {}
        for limit in tenant["descriptors"]:
            assert limit["key"] == "limit"
            assert limit["rate_limit"]["unit"] == "minute"
            kinds[limit["value"]] = limit["rate_limit"]["requests_per_unit"]
        found[tenant["value"]] = (kinds["requests"], kinds["tokens"])
    assert found == _demo_limits()


def test_the_shipped_limitador_limits_are_what_the_bed_writes_for_the_demo_tenants():
    shipped = yaml.safe_load((RATELIMIT_DIR / "limitador-limits.yaml").read_text())
    written = yaml.safe_load(gl.limitador_limits(_demo_limits()))
    assert shipped == written


def test_the_shipped_cluster_speaks_http2_with_a_short_connect_timeout():
    cluster = yaml.safe_load((RATELIMIT_DIR / "cluster.yaml").read_text())
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert float(cluster["connect_timeout"].rstrip("s")) <= 0.5
