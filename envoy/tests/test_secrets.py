"""No key or token ever shows in a log or a record. Runs last, over everything the suite sent."""

from __future__ import annotations

import json

import pytest
from conftest import TEST_ADMIN_TOKEN, TEST_INGEST_TOKEN, UNKNOWN_KEYS
from support import CHAT


@pytest.mark.last
def test_no_secret_in_logs_or_records(the_stack, gateway, collector, demo_log, tenants):
    tenant = tenants["secrets"]

    # Every way a key can arrive, good and bad, so each code path had its chance to leak.
    request_ids = []
    for headers in (
        {"Authorization": f"Bearer {tenant.key}"},
        {"authorization": f"bearer {tenant.key}"},
        {"x-api-key": tenant.key},
        {"Authorization": f"Basic {tenant.key}"},
        {"Authorization": f"Bearer {UNKNOWN_KEYS[2]}"},
        {"x-api-key": UNKNOWN_KEYS[2]},
    ):
        request_ids.append(gateway.chat(None, headers=headers).request_id)
    # A key in the query string (some clients do that) is no credential here, but it is a
    # secret all the same: the audit path must not keep it.
    response = gateway.request(
        "POST",
        f"{CHAT}?api_key={UNKNOWN_KEYS[0]}",
        body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    request_ids.append(response.request_id)
    assert all(request_ids), request_ids

    # Everything sent so far is flushed once these entries are in.
    collector.wait_audit(None, set(request_ids))

    secrets = {f"key of {t.id}": t.key for t in tenants.values()}
    secrets |= {f"unknown key {i}": key for i, key in enumerate(UNKNOWN_KEYS)}
    secrets |= {"ingest token": TEST_INGEST_TOKEN, "admin token": TEST_ADMIN_TOKEN}

    places = {child.name + " output": child.output() for child in the_stack.children}
    places["demo model request log"] = demo_log.path.read_text()
    places["billing records"] = json.dumps([collector.billing(t) for t in tenants])
    places["audit entries"] = json.dumps(collector.audit(None))
    places["usage"] = json.dumps([collector.usage(t) for t in tenants])

    assert places["envoy output"], "no Envoy output captured"
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, secret in secrets.items()
        if secret in text
    ]
    assert not leaks, leaks
