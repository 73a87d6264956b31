"""Health, authentication and what reaches the upstream."""

from __future__ import annotations

import pytest
from conftest import UNKNOWN_KEYS
from support import CHAT, assert_openai_error, new_request_id


def test_healthz_is_answered_by_the_filter(gateway, demo_log):
    response = gateway.request("GET", "/healthz")
    assert response.status == 200, response
    assert response.json() == {"status": "ok"}
    assert not [e for e in demo_log.entries() if e["path"] == "/healthz"], (
        "healthz reached the model"
    )


def test_missing_key_is_401(gateway):
    response = gateway.chat(None)
    assert_openai_error(response, 401, "missing_api_key")


def test_unknown_key_is_401(gateway):
    assert_openai_error(gateway.chat(UNKNOWN_KEYS[0]), 401, "invalid_api_key")
    response = gateway.chat(None, headers={"x-api-key": UNKNOWN_KEYS[1]})
    assert_openai_error(response, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic {key}", id="basic-scheme"),
        pytest.param("Bearer", id="bearer-without-key"),
        pytest.param("Bearer ", id="bearer-and-space"),
        pytest.param("{key}", id="no-scheme"),
    ],
)
def test_malformed_authorization_is_401(gateway, tenants, authorization):
    # A valid key in a malformed header still does not authenticate.
    value = authorization.format(key=tenants["basic"].key)
    response = gateway.chat(None, headers={"Authorization": value})
    assert response.status == 401, response
    assert_openai_error(response, 401, response.error_code)
    assert response.error_code in {"missing_api_key", "invalid_api_key"}, response


def test_401_reaches_no_upstream(gateway, demo_log):
    response = gateway.chat(UNKNOWN_KEYS[2])
    assert response.status == 401
    assert response.request_id
    assert not [e for e in demo_log.entries() if e.get("request_id") == response.request_id]


@pytest.mark.parametrize(
    "how",
    ["Bearer", "bearer", "BEARER", "x-api-key"],
)
def test_key_is_accepted(gateway, tenants, how):
    tenant = tenants["basic"]
    if how == "x-api-key":
        response = gateway.chat(None, headers={"x-api-key": tenant.key})
    else:
        response = gateway.request(
            "POST",
            CHAT,
            key=tenant.key,
            scheme=how,
            body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert response.status == 200, response
    assert response.json()["object"] == "chat.completion"


def test_single_string_digest_in_config(gateway, tenants):
    response = gateway.chat(tenants["single-digest"].key)
    assert response.status == 200, response


def test_upstream_gets_tenant_and_no_credentials(gateway, tenants, demo_log):
    tenant = tenants["basic"]
    for headers in (
        {"Authorization": f"Bearer {tenant.key}"},
        {"x-api-key": tenant.key},
        # Both at once, and a forged tenant id.
        {"Authorization": f"Bearer {tenant.key}", "x-api-key": tenant.key, "x-tenant-id": "other"},
    ):
        request_id = new_request_id()
        response = gateway.chat(None, headers={**headers, "x-request-id": request_id})
        assert response.status == 200, response
        seen = demo_log.by_request_id(response.request_id or request_id)
        assert seen["tenant_id"] == tenant.id, seen
        names = {name.lower() for name in seen["header_names"]}
        assert "authorization" not in names, seen
        assert "x-api-key" not in names, seen
        assert "x-tenant-id" in names


def test_client_tenant_header_is_replaced(gateway, tenants, demo_log):
    response = gateway.chat(tenants["basic"].key, headers={"x-tenant-id": "other"})
    assert response.status == 200, response
    assert response.request_id, "Envoy returns x-request-id (always_set_request_id_in_response)"
    seen = demo_log.by_request_id(response.request_id)
    assert seen["tenant_id"] == "basic"


def test_every_path_reaches_the_upstream(gateway, tenants, demo_log):
    # Ollama-style and unknown paths go to the model server too (the demo answers 404).
    response = gateway.request(
        "POST", "/api/chat", key=tenants["basic"].key, body={"model": "demo-model", "messages": []}
    )
    assert response.status == 404, response
    assert demo_log.by_request_id(response.request_id)["path"] == "/api/chat"


def test_underscore_spellings_of_credential_headers_never_reach_the_upstream(
    gateway, tenants, demo_log
):
    # CGI-style servers read `x_tenant_id` as `x-tenant-id`; Envoy drops such headers.
    tenant = tenants["basic"]
    response = gateway.chat(tenant.key, headers={"x_tenant_id": "other", "x_api_key": tenant.key})
    assert response.status == 200, response
    seen = demo_log.by_request_id(response.request_id)
    assert seen["tenant_id"] == tenant.id, seen
    names = {name.lower() for name in seen["header_names"]}
    assert not names & {"x_tenant_id", "x_api_key"}, names
