"""The collector goes down: traffic still flows, and the records arrive once it is back."""

from __future__ import annotations

import re
from collections import Counter

from support import poll


def collector_connect_failures(the_stack) -> int:
    """Envoy's count of failed connections to the collector cluster."""
    import stack

    status, _, body = stack.http_request(
        "GET",
        f"{the_stack.admin_url}/stats?filter=^cluster\\.collector\\.upstream_cx_connect_fail$",
    )
    assert status == 200, body
    match = re.search(rb"upstream_cx_connect_fail: (\d+)", body)
    return int(match.group(1)) if match else 0


def test_records_survive_a_collector_outage(the_stack, gateway, collector, demo_log, tenants):
    tenant = tenants["outage"]
    failures_before = collector_connect_failures(the_stack)
    the_stack.collector.stop()
    try:
        request_ids = []
        for i in range(4):
            response = gateway.chat(
                tenant.key,
                f"while the collector is down {i}",
                stream=bool(i % 2),
                stream_options={"include_usage": True},
            )
            assert response.status == 200, response
            request_ids.append(response.request_id)

        # The filter has tried, and failed, to deliver at least once before the collector
        # comes back (a real retry, not a first attempt that happens to succeed).
        poll(
            lambda: collector_connect_failures(the_stack),
            lambda n: n > failures_before,
            what="a failed delivery to the stopped collector",
            timeout=15,
        )
    finally:
        the_stack.restart_collector()

    records = collector.wait_billing(tenant.id, set(request_ids), timeout=30)
    for request_id in request_ids:
        reported = demo_log.by_request_id(request_id)
        record = records[request_id]
        assert (record["input_tokens"], record["output_tokens"]) == (
            reported["prompt_tokens"],
            reported["completion_tokens"],
        ), record
    audited = collector.wait_audit(tenant.id, set(request_ids), timeout=30)
    assert all(e["result"] == "success" for e in audited.values()), audited

    # Later traffic is delivered too; by the time its records are in, any duplicate of the
    # retried batch would be as well.
    marker = gateway.chat(tenant.key, "after the outage")
    assert marker.status == 200
    collector.wait_billing(tenant.id, {marker.request_id})
    collector.wait_audit(tenant.id, {marker.request_id})

    billing = collector.billing(tenant.id)
    by_request = Counter(r["request_id"] for r in billing)
    assert all(n == 1 for n in by_request.values()), f"duplicated billing records: {by_request}"
    assert len(billing) == len(request_ids) + 1
    audit = Counter(e["request_id"] for e in collector.audit(tenant.id))
    assert all(n == 1 for n in audit.values()), f"duplicated audit entries: {audit}"
