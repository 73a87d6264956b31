"""SAML sign-on for the integration tests: the `sso` tenant signs in through the test IdP
(tests/fixtures/saml/test-idp), whose responses are signed here with signxml at the current
time (tests/saml/samlgen.py), as the IdP's page would post them."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "saml"))

import samlgen  # noqa: E402

TENANT_ID = "sso"
IDP = "https://idp.integration.example/saml2"
SP = "https://gateway.integration.example/saml/metadata"
ACS_PATH = "/sso/saml/acs"
ACS = "https://gateway.integration.example" + ACS_PATH
TOKEN_SECRET = "test-sso-" + secrets.token_hex(16)
FORM = "application/x-www-form-urlencoded"


def section() -> dict:
    """The plugin configuration's `sso`."""
    return {"token_secret": TOKEN_SECRET, "clock_skew_seconds": 60, "token_ttl_seconds": 600}


def saml_entry() -> dict:
    """`tenants[].saml` of the `sso` tenant."""
    metadata = samlgen.metadata_xml(IDP, IDP + "/sso", samlgen.load_keypair("idp"))
    return {"idp_metadata": metadata, "sp_entity_id": SP, "acs_url": ACS}


def response(
    subject: str,
    *,
    attacker: bool = False,
    issued: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(minutes=5),
) -> bytes:
    """A response issued now (or at `issued`), valid for `lifetime`, the assertion and the
    response signed; with the attacker's key (its certificate in KeyInfo) if `attacker`."""
    login = samlgen.Login(
        idp_entity_id=IDP,
        sp_entity_id=SP,
        acs_url=ACS,
        issued=issued or dt.datetime.now(dt.UTC).replace(microsecond=0),
        lifetime=lifetime,
        subject=subject,
        email=subject,
        response_id="_r-" + secrets.token_hex(8),
        assertion_id="_a-" + secrets.token_hex(8),
    )
    keypair = samlgen.load_keypair("attacker" if attacker else "idp")
    return samlgen.signed_response(login, keypair, response=True, assertion=True)


def form(xml: bytes, relay_state: str | None = None) -> bytes:
    fields = {"SAMLResponse": base64.b64encode(xml).decode()}
    if relay_state is not None:
        fields["RelayState"] = relay_state
    return urllib.parse.urlencode(fields).encode()
