"""Audit entries for successful, refused and unauthenticated requests."""

from __future__ import annotations

from conftest import UNKNOWN_KEYS
from support import CHAT

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
    ok = gateway.chat(tenant.key)
    limited = gateway.chat(tenant.key)
    unauthorized = gateway.chat(UNKNOWN_KEYS[0])
    assert (ok.status, limited.status, unauthorized.status) == (200, 429, 401)

    # Envoy is the edge (use_remote_address): it assigns the request id, whatever the client
    # sends, and returns it on every response, local replies included.
    ids = {
        "ok": ok.request_id,
        "limited": limited.request_id,
        "unauthorized": unauthorized.request_id,
    }
    assert all(ids.values()), ids
    assert len(set(ids.values())) == 3, ids

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


def test_a_client_cannot_choose_its_request_id(gateway, collector, tenants):
    chosen = "client-chosen-id"
    response = gateway.chat(tenants["audit"].key, headers={"x-request-id": chosen})
    assert response.request_id and response.request_id != chosen, response


def test_audit_ids_are_unique(collector):
    entries = collector.audit(None)
    assert entries, "no audit entries at all"
    assert len({e["id"] for e in entries}) == len(entries)
