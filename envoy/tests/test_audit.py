"""Audit entries for successful, refused and unauthenticated requests."""

from __future__ import annotations

from conftest import UNKNOWN_KEYS
from support import CHAT, new_request_id

AUDIT_FIELDS = {
    "id",
    "timestamp",
    "tenant_id",
    "action",
    "result",
    "resource",
    "status_code",
    "method",
    "path",
    "remote_addr",
    "request_id",
}


def test_success_429_and_401_are_audited(gateway, collector, tenants):
    tenant = tenants["audit"]  # 1 request per minute
    ids = {name: new_request_id() for name in ("ok", "limited", "unauthorized")}

    ok = gateway.chat(tenant.key, headers={"x-request-id": ids["ok"]})
    limited = gateway.chat(tenant.key, headers={"x-request-id": ids["limited"]})
    unauthorized = gateway.chat(UNKNOWN_KEYS[0], headers={"x-request-id": ids["unauthorized"]})
    assert (ok.status, limited.status, unauthorized.status) == (200, 429, 401)

    # The filter records Envoy's request id, which is the client's here (trusted loopback).
    for name, response in (("ok", ok), ("limited", limited), ("unauthorized", unauthorized)):
        if response.request_id:
            assert response.request_id == ids[name], (name, response)

    mine = collector.wait_audit(tenant.id, {ids["ok"], ids["limited"]})
    expected = {
        ids["ok"]: ("success", 200),
        ids["limited"]: ("rate_limited", 429),
    }
    for request_id, (result, status) in expected.items():
        entry = mine[request_id]
        assert set(entry) >= AUDIT_FIELDS, entry
        assert (entry["result"], entry["status_code"]) == (result, status), entry
        assert entry["tenant_id"] == tenant.id
        assert (entry["method"], entry["path"]) == ("POST", CHAT), entry
        assert entry["action"] == "inference", entry

    # A 401 has no tenant: it is listed among every tenant's entries only.
    entry = collector.wait_audit(None, {ids["unauthorized"]})[ids["unauthorized"]]
    assert entry["tenant_id"] is None, entry
    assert (entry["result"], entry["status_code"]) == ("unauthorized", 401), entry
    assert (entry["method"], entry["path"]) == ("POST", CHAT), entry
    assert entry["action"] in ("inference", "auth"), entry
    assert entry["remote_addr"] is None or entry["remote_addr"].startswith("127.0.0.1"), entry


def test_audit_ids_are_unique(collector):
    entries = collector.audit(None)
    assert entries, "no audit entries at all"
    assert len({e["id"] for e in entries}) == len(entries)
