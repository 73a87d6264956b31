"""The stack under test: a real Envoy (2 workers) with the built filter, the real collector on a
temporary SQLite database and the demo model, all on loopback ports free at run time.

Binaries come from the environment, with defaults for a plain `pytest envoy/tests` after
`make build`-like steps (`make test-envoy` sets them):

    ENVOY_BIN        .venv/bin/envoy
    COLLECTOR_BIN    target/debug/collector
    DEMO_MODEL_BIN   target/debug/demo-model
    FILTER_WASM      target/wasm32-wasip1/release/inference_gate.wasm

Each test uses its own tenant, so the limits of one never meet the traffic of another.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import sso
from replay_model import ReplayServer
from support import Collector, DemoLog, Gateway, Tenant  # puts scripts/ on the path first

import stack

ROOT = stack.ROOT
TEST_INGEST_TOKEN = "test-ingest-" + secrets.token_hex(12)
TEST_ADMIN_TOKEN = "test-admin-" + secrets.token_hex(12)


def _binary(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    path = Path(value) if value else default
    return path if path.is_absolute() else ROOT / path


ENVOY_BIN = _binary("ENVOY_BIN", ROOT / ".venv" / "bin" / "envoy")
COLLECTOR_BIN = _binary("COLLECTOR_BIN", ROOT / "target" / "debug" / "collector")
DEMO_MODEL_BIN = _binary("DEMO_MODEL_BIN", ROOT / "target" / "debug" / "demo-model")
FILTER_WASM = _binary("FILTER_WASM", stack.DEFAULT_WASM)


def _tenant(tenant_id: str, rate_limit: int, token_budget: int) -> Tenant:
    # Fresh keys each run: the secrets test looks for them in every log and record.
    return Tenant(tenant_id, f"sk-{tenant_id}-{secrets.token_hex(16)}", rate_limit, token_budget)


# One tenant per test (or group of read-only checks), with limits that suit it.
TENANTS = {
    t.id: t
    for t in [
        _tenant("basic", 1000, 1_000_000),
        _tenant("single-digest", 1000, 1_000_000),
        _tenant("headers", 50, 100_000),
        _tenant("ratelimit", 5, 1_000_000),
        _tenant("budget", 1000, 600),
        _tenant("settle", 1000, 5_000),
        _tenant("retry-requests", 30, 1_000_000),
        _tenant("retry-tokens", 1000, 360),
        _tenant("metering", 1000, 10_000_000),
        _tenant("bigbody", 1000, 10_000_000),
        _tenant("nousage", 1000, 1_000_000),
        _tenant("hangup", 1000, 1_000_000),
        _tenant("audit", 1, 1_000_000),
        _tenant("outage", 1000, 1_000_000),
        _tenant("upstream5xx", 1000, 1_000_000),
        _tenant("sdk", 1000, 1_000_000),
        _tenant("sdk-limited", 1, 1_000_000),
        _tenant("secrets", 1000, 1_000_000),
        _tenant(sso.TENANT_ID, 1000, 1_000_000),
    ]
}

# Keys that were sent but belong to no tenant; no log or record may show them either.
UNKNOWN_KEYS = [f"sk-unknown-{secrets.token_hex(16)}" for _ in range(3)]


def plugin_config() -> dict:
    return {
        "tenants": [
            t.plugin_entry(single_digest=(t.id == "single-digest"))
            | ({"saml": sso.saml_entry()} if t.id == sso.TENANT_ID else {})
            for t in TENANTS.values()
        ],
        "collector": {
            "cluster": "collector",
            "ingest_token": TEST_INGEST_TOKEN,
            # Fast flushes keep the tests that wait for records short.
            "flush_interval_ms": 200,
            "batch_size": 100,
            "timeout_ms": 2000,
        },
        "metering": {"default_max_tokens": 256},
        # SAML sign-on for the `sso` tenant (test_sso.py).
        "sso": sso.section(),
    }


@pytest.fixture(scope="session")
def tenants() -> dict[str, Tenant]:
    return TENANTS


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def the_stack(stack_dir: Path):
    gate = stack.Stack(
        workdir=stack_dir,
        plugin_config=plugin_config(),
        ports=stack.Ports.free(),
        envoy_bin=ENVOY_BIN,
        collector_bin=COLLECTOR_BIN,
        demo_model_bin=DEMO_MODEL_BIN,
        wasm_path=FILTER_WASM,
        admin_token=TEST_ADMIN_TOKEN,
        concurrency=2,
        # The filter's lines down to debug, so the secrets test covers them too (trace would add
        # Envoy's own record of every ABI call).
        envoy_args=["--log-level", "warning", "--component-log-level", "wasm:debug"],
        demo_model_args=["--chunk-delay-ms", "2"],
        demo_model_log=stack_dir / "demo-requests.jsonl",
    )
    try:
        gate.start(timeout=60)
    except stack.StackError as err:
        pytest.fail(f"the stack did not start: {err}", pytrace=False)
    try:
        yield gate
    finally:
        gate.stop()


# The tenants of the second stack, whose model server replays the metering fixtures.
REPLAY_TENANTS = {
    t.id: t
    for t in [_tenant("shapes", 10_000, 100_000_000), _tenant("shapes-sdk", 1000, 1_000_000)]
}


@pytest.fixture(scope="session")
def replay_tenants() -> dict[str, Tenant]:
    return REPLAY_TENANTS


@pytest.fixture(scope="session")
def replay_server():
    server = ReplayServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def replay_stack(tmp_path_factory: pytest.TempPathFactory, replay_server: ReplayServer):
    """Envoy with the filter and a collector, in front of the replay server (no demo model).
    `metering.default_max_tokens` is 256, as the fixtures' figures assume."""
    config = plugin_config()
    config["tenants"] = [t.plugin_entry() for t in REPLAY_TENANTS.values()]
    gate = stack.Stack(
        workdir=tmp_path_factory.mktemp("replay-stack"),
        plugin_config=config,
        ports=stack.Ports.free(),
        upstream=stack.Upstream("127.0.0.1", replay_server.port),
        envoy_bin=ENVOY_BIN,
        collector_bin=COLLECTOR_BIN,
        demo_model_bin=DEMO_MODEL_BIN,
        wasm_path=FILTER_WASM,
        admin_token=TEST_ADMIN_TOKEN,
        concurrency=2,
        envoy_args=["--log-level", "warning"],
    )
    try:
        gate.start(timeout=60)
    except stack.StackError as err:
        pytest.fail(f"the replay stack did not start: {err}", pytrace=False)
    try:
        yield gate
    finally:
        gate.stop()


@pytest.fixture(scope="session")
def replay_gateway(replay_stack: stack.Stack) -> Gateway:
    return Gateway(replay_stack.gateway_url)


@pytest.fixture(scope="session")
def replay_collector(replay_stack: stack.Stack) -> Collector:
    return Collector(replay_stack.collector_url, replay_stack.admin_token)


@pytest.fixture(scope="session")
def gateway(the_stack: stack.Stack) -> Gateway:
    return Gateway(the_stack.gateway_url)


@pytest.fixture(scope="session")
def collector(the_stack: stack.Stack) -> Collector:
    return Collector(the_stack.collector_url, the_stack.admin_token)


@pytest.fixture(scope="session")
def demo_log(the_stack: stack.Stack) -> DemoLog:
    assert the_stack.demo_model_log is not None
    return DemoLog(the_stack.demo_model_log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests marked `last` look at everything the others did.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "last: run after every other test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    for name in ("the_stack", "replay_stack"):
        gate = item.funcargs.get(name) if hasattr(item, "funcargs") else None
        if report.failed and isinstance(gate, stack.Stack):
            report.sections.append(
                (f"{name} logs (last lines of each process)", gate.log_tails(30))
            )
    bed = item.funcargs.get("bed") if hasattr(item, "funcargs") else None
    if report.failed and hasattr(bed, "logs"):
        report.sections.append(("fault bed logs (last lines of each process)", bed.logs()))
