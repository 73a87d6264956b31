"""Records are never lost: the real filter in a real Envoy, the real collector on SQLite and on
PostgreSQL, and faults between them. The collector stopped under traffic, killed with SIGKILL
mid-ingest, or answering 500; the record buffer filled under both policies; the Envoy
configuration reloaded with records buffered. Each request that succeeded must end with exactly
one billing record and each request with exactly one audit entry, or with its loss counted.
"""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import COLLECTOR_BIN, DEMO_MODEL_BIN, ENVOY_BIN, FILTER_WASM
from faults import Bed, Sent, Traffic, fault_tenants, plugin_config, wait_exactly_once
from support import poll

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import postgres  # noqa: E402

KEYS = fault_tenants()


@pytest.fixture(scope="module")
def pg_cluster():
    """A throwaway PostgreSQL for the PostgreSQL runs (skipped, saying why, without one)."""
    try:
        cluster = postgres.Cluster()
        cluster.start()
    except postgres.Unavailable as err:
        if postgres.required():
            pytest.fail(f"PostgreSQL is required here but unavailable: {err}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {err}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def bed(request, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"faults-{request.param}")
    if request.param == "postgres":
        database = request.getfixturevalue("pg_cluster").url
    else:
        database = str(workdir / "collector.db")
    bed = Bed(
        workdir,
        envoy_bin=ENVOY_BIN,
        collector_bin=COLLECTOR_BIN,
        demo_model_bin=DEMO_MODEL_BIN,
        wasm=FILTER_WASM,
        database=database,
    )
    try:
        bed.start()
    except Exception as err:
        bed.stop()
        pytest.fail(f"the fault bed did not start: {err}", pytrace=False)
    yield bed
    bed.stop()


@pytest.fixture(scope="module")
def envoy(bed):
    """The Envoy the collector fault tests share: small batches, fast flushes."""
    return bed.envoy("envoy-main", plugin_config())


def test_pipeline_metrics_are_envoy_stats_on_prometheus(bed, envoy):
    assert envoy.chat(KEYS["steady"])[0] == 200
    assert envoy.chat("sk-fault-nobody-0123456789")[0] == 401
    text = envoy.prometheus()
    names = [
        "inference_gate_records_queued",
        "inference_gate_records_sent",
        "inference_gate_records_retried",
        "inference_gate_records_dropped",
        "inference_gate_batches_failed",
        "inference_gate_buffer_records",
        "inference_gate_buffer_bytes",
    ] + [
        f"inference_gate_requests_{result}"
        for result in ("success", "unauthorized", "rate_limited", "denied", "error")
    ]
    for name in names:
        assert re.search(rf"^{name}\{{\}} \d+$", text, re.M), f"{name} missing:\n{text}"
    assert re.search(r"^# TYPE inference_gate_buffer_records gauge$", text, re.M)
    assert re.search(r"^# TYPE inference_gate_records_sent counter$", text, re.M)
    stats = envoy.gate()
    assert stats["requests.success"] >= 1 and stats["requests.unauthorized"] >= 1, stats


def test_collector_stopped_under_steady_traffic(bed, envoy):
    before = envoy.gate()
    with Traffic(envoy, "steady", KEYS["steady"]) as traffic:
        time.sleep(1.0)
        bed.collector.stop()
        # Down long enough for several failed deliveries and retries.
        poll(
            lambda: envoy.gate()["batches.failed"],
            lambda n: n >= before["batches.failed"] + 3,
            what="failed deliveries to the stopped collector",
        )
        time.sleep(1.0)
        bed.start_collector()
        time.sleep(1.0)

    sent = traffic.sent
    assert len(sent.ok()) >= 50 and len(sent.statuses) > len(sent.ok()), sent.statuses
    wait_exactly_once(bed, sent)
    poll(envoy.gate, lambda s: s["buffer.records"] == 0, what="an empty buffer")
    after = envoy.gate()
    assert after["records.dropped"] == before["records.dropped"]
    assert after["records.retried"] > before["records.retried"]
    assert after["buffer.bytes"] == 0


def test_collector_killed_mid_ingest_loses_nothing_acknowledged(bed, envoy):
    before = envoy.gate()
    unreachable_before = bed.proxy.answered[503]
    with Traffic(envoy, "kill", KEYS["kill"], interval=0.005) as traffic:
        # Batches of 20 every 100 ms: the collector is storing one at almost any moment.
        poll(
            lambda: envoy.gate()["records.sent"],
            lambda n: n >= before["records.sent"] + 100,
            what="the collector to take some batches",
        )
        bed.kill_collector()
        time.sleep(1.0)
        bed.start_collector()
        time.sleep(1.0)

    wait_exactly_once(bed, traffic.sent)
    # Every record whose batch the collector acknowledged is stored (the proxy saw the 200s).
    stored = {e["id"] for e in bed.audit()}
    for tenant in KEYS:
        stored |= {r["id"] for r in bed.billing(tenant)}
    missing = bed.proxy.acked_ids - stored
    assert not missing, f"{len(missing)} acknowledged records missing"
    # Deliveries failed while it was down: the records arrived through retries.
    assert bed.proxy.answered[503] > unreachable_before
    assert envoy.gate()["records.dropped"] == before["records.dropped"]


def test_collector_answering_500_for_a_while(bed, envoy):
    before = envoy.gate()
    duplicates_before = _duplicates(bed.metrics())
    with Traffic(envoy, "flaky", KEYS["flaky"]) as traffic:
        time.sleep(0.5)
        # 500 without storing...
        bed.proxy.mode = "fail"
        time.sleep(1.5)
        # ...then 500 after storing: the filter resends batches the collector already has.
        bed.proxy.mode = "fail_after"
        time.sleep(1.5)
        bed.proxy.mode = "pass"
        time.sleep(1.0)

    wait_exactly_once(bed, traffic.sent)
    after = envoy.gate()
    assert after["batches.failed"] > before["batches.failed"]
    assert after["records.dropped"] == before["records.dropped"]
    # The resent batches were recognised and stored once.
    assert _duplicates(bed.metrics()) > duplicates_before


def _duplicates(metrics: str) -> int:
    return sum(
        int(m)
        for m in re.findall(r"^collector_records_duplicates_total\{[^}]*\} (\d+)$", metrics, re.M)
    )


def _fill_buffer(bed: Bed, policy: str) -> tuple[object, Sent, dict[str, int]]:
    """An Envoy whose buffer holds 20 records, the collector unreachable, and requests until
    the buffer is full and then some; returns the Envoy, what was sent and its stats before."""
    envoy = bed.envoy(
        f"envoy-{policy}",
        plugin_config(max_buffered_records=20, on_buffer_full=policy),
    )
    before = envoy.gate()
    sent = Sent("steady")
    bed.proxy.mode = "fail"
    try:
        for n in range(40):
            sent.add(*envoy.chat(KEYS["steady"], f"{policy} {n}"))
    finally:
        bed.proxy.mode = "pass"
    return envoy, sent, before


@pytest.mark.parametrize("bed", ["sqlite"], indirect=True)
def test_a_full_buffer_under_reject_refuses_and_loses_no_usage(bed):
    envoy, sent, before = _fill_buffer(bed, "reject")
    statuses = set(sent.statuses.values())
    assert statuses == {200, 503}, sent.statuses
    refused = [rid for rid, status in sent.statuses.items() if status == 503]
    served = sent.ok()
    # One request at a time: the bound of 20 records held exactly (10 requests of 2).
    assert len(served) == 10, len(served)

    # Every served request is billed and audited once; the refusals' own audit entries could
    # not be kept (the buffer was full) and are counted as dropped, nothing else.
    only_served = Sent("steady", {rid: 200 for rid in served})
    wait_exactly_once(bed, only_served)
    stored_refusals = {e["request_id"] for e in bed.audit()} & set(refused)
    after = poll(envoy.gate, lambda s: s["buffer.records"] == 0, what="an empty buffer")
    dropped = after["records.dropped"] - before["records.dropped"]
    assert dropped == len(refused) - len(stored_refusals)
    assert after["records.sent"] - before["records.sent"] == 2 * len(served) + len(stored_refusals)


@pytest.mark.parametrize("bed", ["sqlite"], indirect=True)
def test_a_full_buffer_under_drop_serves_and_counts_every_loss(bed):
    envoy, sent, before = _fill_buffer(bed, "drop")
    assert set(sent.statuses.values()) == {200}, sent.statuses

    after = poll(envoy.gate, lambda s: s["buffer.records"] == 0, what="an empty buffer")
    produced = 2 * len(sent.statuses)
    billing = {r["request_id"] for r in bed.billing("steady")} & set(sent.statuses)
    audit = {e["request_id"] for e in bed.audit()} & set(sent.statuses)
    stored = len(billing) + len(audit)
    dropped = after["records.dropped"] - before["records.dropped"]
    assert dropped > 0
    assert produced - stored == dropped, (produced, stored, dropped)
    assert after["records.sent"] - before["records.sent"] == stored


@pytest.mark.parametrize("bed", ["sqlite"], indirect=True)
def test_what_survives_a_configuration_reload(bed):
    """Records buffered across two live reloads of the listener: one that changes the plugin
    configuration (Envoy keeps the VM and starts a new plugin in it) and one that changes the
    VM configuration (Envoy starts new VMs). The shared queue, the batch in flight, the lease
    and the stats all outlive both; every record is delivered once."""
    plugin = plugin_config()
    envoy = bed.envoy("envoy-lds", plugin, lds=True)
    start = envoy.gate()
    sent = Sent("steady")
    bed.proxy.mode = "fail"
    try:
        for n in range(5):
            sent.add(*envoy.chat(KEYS["steady"], f"before reloads {n}"))
        stats = envoy.gate()
        assert stats["buffer.records"] - start["buffer.records"] == 10, stats

        # A plugin configuration change: a tenant's limit, visible in the answers after it.
        changed = copy.deepcopy(plugin)
        changed["tenants"][0]["rate_limit"] = 99_999
        envoy.reload(changed)
        status, headers = envoy.chat_headers(KEYS["steady"], "after one reload")
        sent.add(status, headers.get("x-request-id"))
        assert headers.get("x-ratelimit-limit-requests") == "99999", headers
        stats = envoy.gate()
        assert stats["buffer.records"] - start["buffer.records"] == 12, stats
        assert stats["records.queued"] - start["records.queued"] == 12, stats
        assert stats["requests.success"] - start["requests.success"] == 6, stats

        # A VM configuration change: new VMs, which find the same queue and stats.
        vms_before = envoy.stats()["wasm.envoy.wasm.runtime.v8.created"]
        envoy.reload(changed, vm_configuration="fault-tests-v2")
        assert envoy.stats()["wasm.envoy.wasm.runtime.v8.created"] > vms_before
        for n in range(5):
            sent.add(*envoy.chat(KEYS["steady"], f"after reloads {n}"))
        stats = envoy.gate()
        assert stats["buffer.records"] - start["buffer.records"] == 22, stats
        assert stats["requests.success"] - start["requests.success"] == 11, stats
    finally:
        bed.proxy.mode = "pass"

    assert set(sent.statuses.values()) == {200}
    wait_exactly_once(bed, sent)
    after = poll(envoy.gate, lambda s: s["buffer.records"] == 0, what="an empty buffer")
    assert after["records.sent"] - start["records.sent"] == 22
    assert after["records.dropped"] == start["records.dropped"]
    assert after["buffer.bytes"] == 0
