"""SAML sign-on through a real Envoy: an IdP-initiated response posted to the ACS gives a
session token; the token is accepted on the inference route, billed and audited under the
tenant; a replayed or forged response is refused; no token shows in a log or a record; an
assertion issued too long ago is refused whatever its NotOnOrAfter says."""

from __future__ import annotations

import datetime as dt
import json

import sso
from support import assert_openai_error, poll


def post(gateway, body: bytes):
    return gateway.request("POST", sso.ACS_PATH, headers={"content-type": sso.FORM}, body=body)


def auth_entries(collector, tenant: str | None) -> list[dict]:
    return [e for e in collector.audit(tenant) if e["action"] == "auth"]


def test_sign_on_then_inference_with_the_session_token(the_stack, gateway, collector):
    signed = sso.form(sso.response("carol@example.com"), relay_state="/playground")

    signed_on = post(gateway, signed)
    assert signed_on.status == 200, signed_on
    body = signed_on.json()
    assert body["token_type"] == "Bearer"
    assert (body["tenant_id"], body["subject"], body["email"]) == (
        sso.TENANT_ID,
        "carol@example.com",
        "carol@example.com",
    )
    assert body["relay_state"] == "/playground"
    assert signed_on.headers.get("cache-control") == "no-store"
    # Never past the assertion's end (five minutes after its issue, now).
    expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    now = dt.datetime.now(dt.UTC)
    assert now < expires <= now + dt.timedelta(minutes=5, seconds=5), body
    token = body["token"]

    chat = gateway.chat(token)
    assert chat.status == 200, chat
    assert chat.request_id, chat

    replayed = post(gateway, signed)
    assert_openai_error(replayed, 401, "saml_replayed")
    forged = post(gateway, sso.form(sso.response("admin@example.com", attacker=True)))
    assert_openai_error(forged, 401, "saml_signature_invalid")
    assert "admin@example.com" not in forged.body.decode()

    # Billed and audited as the tenant.
    billing = collector.wait_billing(sso.TENANT_ID, {chat.request_id})
    assert billing[chat.request_id]["input_tokens"] > 0
    audit = collector.wait_audit(sso.TENANT_ID, {chat.request_id})
    assert audit[chat.request_id]["action"] == "inference"
    entries = poll(
        lambda: auth_entries(collector, sso.TENANT_ID),
        lambda got: len(got) >= 2,
        what="the sign-on's auth audit entries",
    )
    summary = [(e["result"], e["status_code"], e["resource"], e["path"]) for e in entries]
    assert summary == [
        ("success", 200, "saml", sso.ACS_PATH),
        ("unauthorized", 401, "saml:replayed", sso.ACS_PATH),
    ], entries
    # A forgery proves no tenant: it is audited without one.
    forgeries = poll(
        lambda: [
            e for e in auth_entries(collector, None) if e["resource"] == "saml:signature_invalid"
        ],
        bool,
        what="the forgery's audit entry",
    )
    assert [e["tenant_id"] for e in forgeries] == [None], forgeries

    places = {child.name + " output": child.output() for child in the_stack.children}
    places["records"] = json.dumps([collector.billing(sso.TENANT_ID), collector.audit(None)])
    for where, text in places.items():
        for what, secret in (("token", token), ("token secret", sso.TOKEN_SECRET)):
            assert secret not in text, f"the {what} is in the {where}"


def test_an_old_assertion_is_refused_however_long_it_claims_to_be_valid(gateway):
    # Issued ten minutes ago and valid for ten years by its own word: more than five minutes
    # (plus the skew) after its IssueInstant, the gateway refuses it.
    issued = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    stale = sso.response("dave@example.com", issued=issued, lifetime=dt.timedelta(days=3650))
    error = assert_openai_error(post(gateway, sso.form(stale)), 401, "saml_expired")
    assert "(IssueInstant)" in error["message"], error
