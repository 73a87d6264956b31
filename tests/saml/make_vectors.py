"""SAML test vectors, made by an independent implementation (signxml), and their verdicts.

    make_vectors.py OUT_DIR            write the vectors and manifest.json into OUT_DIR
    make_vectors.py --check DIR        regenerate into a temporary folder, fail if DIR differs,
                                       then cross-check DIR's signatures with xmlsec1
    make_vectors.py --new-keys         make new test IdP and attacker keys (changes every vector)

The committed vectors (tests/fixtures/saml/vectors/) are what the Rust tests read;
`make test` runs `--check` first, so they are always what this script makes. Each vector says
which check of the gateway must refuse it (`verdict`; `ok` for none) and, where a
cryptographic verdict means something, what xmlsec1 must say about each signature
(`xmlsec1`): the attacks below mostly carry signatures that are valid as XML-DSig and are
refused by the SAML rules around them, which is the point.

Without xmlsec1 the cross-check is skipped with a message, except under CI, where it fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent))

import samlgen  # noqa: E402
from samlgen import DS, SAML, SAMLP, Login, q  # noqa: E402

IDP = "https://idp.test.example/saml2"
SP = "https://gateway.test.example/saml/metadata"
ACS = "https://gateway.test.example/sso/saml/acs"
ISSUED = dt.datetime(2030, 1, 1, 0, 0, 0, tzinfo=dt.UTC)
NOW = ISSUED + dt.timedelta(minutes=1)
SKEW = 60

IDP_KEYS = samlgen.load_keypair("idp") if (samlgen.KEYS / "idp-key.pem").exists() else None
ATTACKER = (
    samlgen.load_keypair("attacker") if (samlgen.KEYS / "attacker-key.pem").exists() else None
)

INNER_RESPONSE_SIG = (
    "//*[local-name()='Signature']/*[local-name()='Response']/*[local-name()='Signature']"
)
RESPONSE_SIG = "/*[local-name()='Response']/*[local-name()='Signature']"
ASSERTION_SIG = (
    "/*[local-name()='Response']/*[local-name()='Assertion']/*[local-name()='Signature']"
)


def login(**changes) -> Login:
    fields = {"idp_entity_id": IDP, "sp_entity_id": SP, "acs_url": ACS, "issued": ISSUED}
    fields.update(changes)
    return Login(**fields)


def signed(response: bool = False, assertion: bool = True, **changes) -> bytes:
    return samlgen.signed_response(
        login(**changes), IDP_KEYS, response=response, assertion=assertion
    )


def signed_after(change: Callable[[etree._Element], None]) -> bytes:
    """An assertion changed by `change` before the IdP signs it."""
    root, assertion = samlgen.response_tree(login())
    change(assertion)
    samlgen.sign(assertion, IDP_KEYS)
    return out(root)


def set_version(assertion: etree._Element) -> None:
    assertion.set("Version", "1.1")


def unknown_condition(assertion: etree._Element) -> None:
    condition = etree.SubElement(assertion.find(q(SAML, "Conditions")), q(SAML, "Condition"))
    condition.set(q(samlgen.XSI, "type"), "xs:anyType")


def no_authn_statement(assertion: etree._Element) -> None:
    assertion.remove(assertion.find(q(SAML, "AuthnStatement")))


def encrypted_name_id(assertion: etree._Element) -> None:
    name_id = assertion.find(f"{q(SAML, 'Subject')}/{q(SAML, 'NameID')}")
    encrypted = etree.Element(q(SAML, "EncryptedID"))
    etree.SubElement(encrypted, "{http://www.w3.org/2001/04/xmlenc#}EncryptedData")
    name_id.getparent().replace(name_id, encrypted)


def session_ended(assertion: etree._Element) -> None:
    statement = assertion.find(q(SAML, "AuthnStatement"))
    statement.set("SessionNotOnOrAfter", samlgen.iso(NOW - dt.timedelta(seconds=1)))


def far_future(assertion: etree._Element) -> None:
    """NotOnOrAfter ten years ahead on the conditions and the confirmation."""
    end = samlgen.iso(ISSUED + dt.timedelta(days=3650))
    assertion.find(q(SAML, "Conditions")).set("NotOnOrAfter", end)
    assertion.find(SUBJECT_CONFIRMATION_DATA).set("NotOnOrAfter", end)


def two_bearer_confirmations(assertion: etree._Element) -> None:
    """A second bearer confirmation like the first; the first's NotOnOrAfter two minutes after
    issue, the second's (and the conditions') five."""
    first = assertion.find(f"{q(SAML, 'Subject')}/{q(SAML, 'SubjectConfirmation')}")
    first.addnext(copy.deepcopy(first))
    first.find(q(SAML, "SubjectConfirmationData")).set(
        "NotOnOrAfter", samlgen.iso(ISSUED + dt.timedelta(minutes=2))
    )


def parsed(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def parts(root: etree._Element) -> tuple[etree._Element, etree._Element | None]:
    return root, root.find(q(SAML, "Assertion"))


def out(root: etree._Element) -> bytes:
    return samlgen.to_bytes(root)


def edit(data: bytes, change: Callable[[etree._Element], etree._Element | None]) -> bytes:
    root = parsed(data)
    result = change(root)
    return out(result if result is not None else root)


def set_text(path: str, value: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        root.find(path).text = value

    return change


NAME_ID = f"{q(SAML, 'Assertion')}/{q(SAML, 'Subject')}/{q(SAML, 'NameID')}"
SUBJECT_CONFIRMATION_DATA = (
    f"{q(SAML, 'Subject')}/{q(SAML, 'SubjectConfirmation')}/{q(SAML, 'SubjectConfirmationData')}"
)
AUDIENCE = (
    f"{q(SAML, 'Assertion')}/{q(SAML, 'Conditions')}/{q(SAML, 'AudienceRestriction')}/"
    f"{q(SAML, 'Audience')}"
)


# --------------------------------------------------------------------------------------------
# Signature wrapping (XSW1-8 after Somorovsky et al., "On Breaking SAML", 2012, and the
# variants SAML Raider generates), on a response whose assertion or response is signed. Each
# leaves the original signature cryptographically valid.


def evil_assertion(original: etree._Element, keep_id: bool) -> etree._Element:
    evil = copy.deepcopy(original)
    for s in evil.findall(q(DS, "Signature")):
        evil.remove(s)
    evil.find(f"{q(SAML, 'Subject')}/{q(SAML, 'NameID')}").text = "admin@example.com"
    if not keep_id:
        evil.set("ID", "_evil-assertion")
    return evil


def xsw1(root: etree._Element) -> etree._Element:
    """Response signed: an evil unsigned copy becomes the root; the original signed
    Response moves into the copy's Signature."""
    evil = copy.deepcopy(root)
    evil.set("ID", "_evil-response")
    evil.find(q(SAML, "Assertion")).set("ID", "_evil-assertion")
    evil.find(NAME_ID).text = "admin@example.com"
    signature = evil.find(q(DS, "Signature"))
    signature.append(root)
    return evil


def xsw2(root: etree._Element) -> etree._Element:
    """Response signed: as XSW1, the original Response a sibling before the Signature."""
    evil = copy.deepcopy(root)
    evil.set("ID", "_evil-response")
    evil.find(q(SAML, "Assertion")).set("ID", "_evil-assertion")
    evil.find(NAME_ID).text = "admin@example.com"
    signature = evil.find(q(DS, "Signature"))
    signature.addprevious(root)
    return evil


def xsw3(root: etree._Element) -> None:
    """Assertion signed: an evil copy with the same ID before the signed assertion."""
    original = root.find(q(SAML, "Assertion"))
    original.addprevious(evil_assertion(original, keep_id=True))


def xsw3_new_id(root: etree._Element) -> None:
    """XSW3 with a fresh ID for the evil copy."""
    original = root.find(q(SAML, "Assertion"))
    original.addprevious(evil_assertion(original, keep_id=False))


def xsw4(root: etree._Element) -> None:
    """Assertion signed: an evil copy that wraps the signed assertion as its child."""
    original = root.find(q(SAML, "Assertion"))
    evil = evil_assertion(original, keep_id=False)
    original.addprevious(evil)
    evil.append(original)


def xsw5(root: etree._Element) -> None:
    """Assertion signed: the signature moves onto an evil assertion; an unsigned copy of
    the original is appended to the response."""
    original = root.find(q(SAML, "Assertion"))
    signature = original.find(q(DS, "Signature"))
    evil = evil_assertion(original, keep_id=True)
    evil.find(q(SAML, "Issuer")).addnext(copy.deepcopy(signature))
    original.addprevious(evil)
    original.remove(signature)
    root.remove(original)
    root.append(original)


def xsw6(root: etree._Element) -> None:
    """Assertion signed: an evil assertion carries the original signature, the original
    assertion inside that signature."""
    original = root.find(q(SAML, "Assertion"))
    signature = original.find(q(DS, "Signature"))
    evil = evil_assertion(original, keep_id=True)
    moved = copy.deepcopy(signature)
    evil.find(q(SAML, "Issuer")).addnext(moved)
    original.remove(signature)
    root.replace(original, evil)
    moved.append(original)


def xsw7(root: etree._Element) -> None:
    """Assertion signed: the signed assertion hidden in samlp:Extensions, an evil unsigned
    assertion in its place."""
    original = root.find(q(SAML, "Assertion"))
    extensions = etree.Element(q(SAMLP, "Extensions"))
    root.find(q(SAML, "Issuer")).addnext(extensions)
    root.replace(original, evil_assertion(original, keep_id=False))
    extensions.append(original)


def xsw8(root: etree._Element) -> None:
    """Assertion signed: an evil assertion carries the original signature, and that
    signature a ds:Object holding the original assertion (its signature removed)."""
    original = root.find(q(SAML, "Assertion"))
    signature = original.find(q(DS, "Signature"))
    evil = evil_assertion(original, keep_id=True)
    moved = copy.deepcopy(signature)
    evil.find(q(SAML, "Issuer")).addnext(moved)
    original.remove(signature)
    root.replace(original, evil)
    obj = etree.SubElement(moved, q(DS, "Object"))
    obj.append(original)


def signature_moved_to_evil(root: etree._Element) -> None:
    """One assertion only: the evil one, carrying the signature of the (removed) original."""
    original = root.find(q(SAML, "Assertion"))
    signature = original.find(q(DS, "Signature"))
    evil = evil_assertion(original, keep_id=False)
    evil.find(q(SAML, "Issuer")).addnext(copy.deepcopy(signature))
    root.replace(original, evil)


def response_signature_into_assertion(root: etree._Element) -> None:
    """The Response's signature moved into the (unsigned, edited) assertion."""
    signature = root.find(q(DS, "Signature"))
    root.remove(signature)
    assertion = root.find(q(SAML, "Assertion"))
    assertion.find(q(SAML, "Issuer")).addnext(signature)
    assertion.find(f"{q(SAML, 'Subject')}/{q(SAML, 'NameID')}").text = "admin@example.com"


def evil_assertion_into_signed_response(root: etree._Element) -> None:
    """Response signed: the assertion is replaced by an evil one."""
    original = root.find(q(SAML, "Assertion"))
    root.replace(original, evil_assertion(original, keep_id=True))


def foreign_copy_with_same_id(root: etree._Element) -> None:
    """The signed assertion copied, under another element name, into Extensions: the only
    saml:Assertion is the evil one, but the ID appears twice."""
    original = root.find(q(SAML, "Assertion"))
    decoy = copy.deepcopy(original)
    decoy.tag = "{urn:example:decoy}Assertion"
    extensions = etree.Element(q(SAMLP, "Extensions"))
    root.find(q(SAML, "Issuer")).addnext(extensions)
    extensions.append(decoy)
    evil = evil_assertion(original, keep_id=True)
    evil.find(q(SAML, "Issuer")).addnext(copy.deepcopy(original.find(q(DS, "Signature"))))
    root.replace(original, evil)


# --------------------------------------------------------------------------------------------
# Signature mechanics


def signature_of(root: etree._Element, on_assertion: bool) -> etree._Element:
    holder = root.find(q(SAML, "Assertion")) if on_assertion else root
    return holder.find(q(DS, "Signature"))


def two_signed_info(root: etree._Element) -> None:
    signature = signature_of(root, True)
    signature.find(q(DS, "SignedInfo")).addnext(copy.deepcopy(signature.find(q(DS, "SignedInfo"))))


def declare_prefixes(root: etree._Element) -> None:
    """Declares the PrefixList of SignedInfo's canonicalisation on the Reference's exclusive
    C14N transform too, and signs SignedInfo again."""
    signature = signature_of(root, True)
    prefixes = signature.find(
        f"{q(DS, 'SignedInfo')}/{q(DS, 'CanonicalizationMethod')}/"
        f"{q(samlgen.EXC_C14N, 'InclusiveNamespaces')}"
    ).get("PrefixList")
    transform = signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}/{q(DS, 'Transforms')}")[
        1
    ]
    etree.SubElement(
        transform,
        q(samlgen.EXC_C14N, "InclusiveNamespaces"),
        nsmap={"ec": samlgen.EXC_C14N},
        PrefixList=prefixes,
    )
    samlgen.resign(signature, IDP_KEYS)


def with_object(root: etree._Element) -> None:
    etree.SubElement(signature_of(root, True), q(DS, "Object")).text = "extra"


def two_signatures(root: etree._Element) -> None:
    signature = signature_of(root, True)
    signature.addnext(copy.deepcopy(signature))


def signature_in_subject(root: etree._Element) -> None:
    assertion = root.find(q(SAML, "Assertion"))
    signature = assertion.find(q(DS, "Signature"))
    assertion.remove(signature)
    assertion.find(q(SAML, "Subject")).append(signature)


def set_transform(algorithm: str, index: int) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        signature = signature_of(root, True)
        transforms = signature.find(
            f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}/{q(DS, 'Transforms')}"
        )
        transforms[index].set("Algorithm", algorithm)
        samlgen.resign(signature, IDP_KEYS)

    return change


def add_transform(algorithm: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        signature = signature_of(root, True)
        transforms = signature.find(
            f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}/{q(DS, 'Transforms')}"
        )
        t = etree.SubElement(transforms, q(DS, "Transform"), Algorithm=algorithm)
        etree.SubElement(t, q(DS, "XPath")).text = "not(ancestor-or-self::saml:NameID)"
        samlgen.resign(signature, IDP_KEYS)

    return change


def set_reference_uri(uri: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        signature = signature_of(root, True)
        signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}").set("URI", uri)
        samlgen.resign(signature, IDP_KEYS)

    return change


def whole_document_reference(root: etree._Element) -> None:
    signature = signature_of(root, True)
    signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}").set("URI", "")
    samlgen.redigest_document(signature)
    samlgen.resign(signature, IDP_KEYS)


def two_references(root: etree._Element) -> None:
    signature = signature_of(root, True)
    reference = signature.find(f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}")
    reference.addnext(copy.deepcopy(reference))
    samlgen.resign(signature, IDP_KEYS)


def sha1_signature(root: etree._Element) -> None:
    samlgen.resign(signature_of(root, True), IDP_KEYS, samlgen.RSA_SHA1)


def sha1_digest(root: etree._Element) -> None:
    signature = signature_of(root, True)
    samlgen.redigest(signature, root.find(q(SAML, "Assertion")))
    samlgen.resign(signature, IDP_KEYS)


def attacker_resigns(root: etree._Element) -> etree._Element:
    """The assertion edited and signed again with the attacker's key, whose certificate
    goes into KeyInfo."""
    assertion = root.find(q(SAML, "Assertion"))
    assertion.remove(assertion.find(q(DS, "Signature")))
    assertion.find(f"{q(SAML, 'Subject')}/{q(SAML, 'NameID')}").text = "admin@example.com"
    samlgen.sign(assertion, ATTACKER)
    return root


def keyinfo_swapped(root: etree._Element) -> None:
    """A genuine signature whose KeyInfo names the attacker's certificate: KeyInfo is not
    read, so this is still valid."""
    cert = signature_of(root, True).find(
        f"{q(DS, 'KeyInfo')}/{q(DS, 'X509Data')}/{q(DS, 'X509Certificate')}"
    )
    cert.text = ATTACKER.cert_b64


def no_keyinfo(root: etree._Element) -> None:
    signature = signature_of(root, True)
    signature.remove(signature.find(q(DS, "KeyInfo")))


def strip_signature(root: etree._Element) -> None:
    assertion = root.find(q(SAML, "Assertion"))
    assertion.remove(assertion.find(q(DS, "Signature")))


def comment_in_name_id(root: etree._Element) -> None:
    """The IdP signed NameID "alice@example.com.evil.test"; a comment now splits it. The
    signature still holds (C14N drops comments); the subject must be read whole."""
    name_id = root.find(NAME_ID)
    name_id.text = "alice@example.com"
    comment = etree.Comment("")
    comment.tail = ".evil.test"
    name_id.append(comment)


def tamper_signature_value(root: etree._Element) -> None:
    value = signature_of(root, True).find(q(DS, "SignatureValue"))
    text = value.text.strip()
    value.text = ("B" if text[10] == "A" else "A").join([text[:10], text[11:]])


def tamper_digest_value(root: etree._Element) -> None:
    value = signature_of(root, True).find(
        f"{q(DS, 'SignedInfo')}/{q(DS, 'Reference')}/{q(DS, 'DigestValue')}"
    )
    text = value.text.strip()
    value.text = ("B" if text[0] == "A" else "A") + text[1:]


def encrypted(root: etree._Element) -> None:
    assertion = root.find(q(SAML, "Assertion"))
    enc = etree.Element(q(SAML, "EncryptedAssertion"))
    etree.SubElement(enc, "{http://www.w3.org/2001/04/xmlenc#}EncryptedData")
    root.replace(assertion, enc)


def deep_nesting(root: etree._Element) -> None:
    extensions = etree.Element(q(SAMLP, "Extensions"))
    root.find(q(SAML, "Issuer")).addnext(extensions)
    at = extensions
    for _ in range(40):
        at = etree.SubElement(at, "{urn:example:x}n")


def text_prefix(data: bytes, prefix: bytes) -> bytes:
    """`prefix` after the XML declaration (DOCTYPE and PI tricks)."""
    declaration, _, rest = data.partition(b"?>")
    return declaration + b"?>\n" + prefix + rest


# --------------------------------------------------------------------------------------------


def vectors() -> list[dict]:
    """Every vector: name, bytes, verdict, and optional notes."""
    assertion_signed = signed(response=False, assertion=True)
    response_signed = signed(response=True, assertion=False)
    both = signed(response=True, assertion=True)
    minute = dt.timedelta(minutes=1)
    v: list[dict] = []

    def add(name: str, data: bytes, verdict: str, about: str, **extra) -> None:
        v.append({"name": name, "data": data, "verdict": verdict, "about": about, **extra})

    a, r = ASSERTION_SIG, RESPONSE_SIG
    # Valid responses.
    add(
        "signed_assertion",
        assertion_signed,
        "ok",
        "the assertion signed",
        subject="alice@example.com",
        email="alice@example.com",
        xmlsec1={a: "valid"},
    )
    add(
        "signed_response",
        response_signed,
        "ok",
        "the response signed",
        subject="alice@example.com",
        xmlsec1={r: "valid"},
    )
    add(
        "signed_both",
        both,
        "ok",
        "the assertion signed, then the response",
        subject="alice@example.com",
        xmlsec1={r: "valid", a: "valid"},
    )
    rsa512 = login()
    root, assertion = samlgen.response_tree(rsa512)
    samlgen.sign(assertion, IDP_KEYS, signature_algorithm="rsa-sha512", digest_algorithm="sha512")
    add(
        "signed_sha512",
        out(root),
        "ok",
        "RSA-SHA512 signature, SHA-512 digest",
        xmlsec1={a: "valid"},
    )
    root, assertion = samlgen.response_tree(login())
    samlgen.sign(assertion, IDP_KEYS, signature_algorithm="rsa-sha384", digest_algorithm="sha384")
    add(
        "signed_sha384",
        out(root),
        "ok",
        "RSA-SHA384 signature, SHA-384 digest",
        xmlsec1={a: "valid"},
    )
    root, assertion = samlgen.response_tree(login())
    samlgen.sign(assertion, IDP_KEYS, inclusive_ns_prefixes=["xs", "xsi"])
    # signxml digests with the prefix list but declares it on SignedInfo only: a reference
    # whose digest does not match its own transform.
    add(
        "inclusive_prefixes_undeclared",
        out(root),
        "digest_mismatch",
        "a digest made with a PrefixList the Reference's transform does not declare",
        xmlsec1={a: "invalid"},
    )
    declare_prefixes(root)
    add(
        "inclusive_prefixes",
        out(root),
        "ok",
        "exclusive C14N with an InclusiveNamespaces PrefixList (xs xsi) in SignedInfo and in "
        "the Reference",
        xmlsec1={a: "valid"},
    )
    add(
        "comment_in_name_id",
        edit(signed(subject="alice@example.com.evil.test"), comment_in_name_id),
        "ok",
        "a comment inside a signed NameID: read whole, not truncated",
        subject="alice@example.com.evil.test",
        xmlsec1={a: "valid"},
    )
    add(
        "keyinfo_attacker_certificate",
        edit(assertion_signed, keyinfo_swapped),
        "ok",
        "a genuine signature with the attacker's certificate in KeyInfo (KeyInfo is ignored)",
        xmlsec1={a: "valid"},
    )
    add(
        "no_keyinfo",
        edit(assertion_signed, no_keyinfo),
        "ok",
        "no KeyInfo at all",
        xmlsec1={a: "valid"},
    )
    add(
        "skew_not_before",
        signed(not_before=NOW + dt.timedelta(seconds=30)),
        "ok",
        "NotBefore 30 s ahead, within the 60 s skew",
        xmlsec1={a: "valid"},
    )
    add(
        "skew_not_on_or_after",
        signed(issued=NOW - dt.timedelta(minutes=5, seconds=30)),
        "ok",
        "NotOnOrAfter 30 s past, within the skew; the ACS then has no lifetime left for a token",
        acs_verdict="expired",
        xmlsec1={a: "valid"},
    )

    # Tampering and stripping.
    add(
        "tampered_name_id",
        edit(assertion_signed, set_text(NAME_ID, "admin@example.com")),
        "digest_mismatch",
        "NameID changed after signing",
        xmlsec1={a: "invalid"},
    )
    add(
        "tampered_audience",
        edit(assertion_signed, set_text(AUDIENCE, "https://other.example")),
        "digest_mismatch",
        "Audience changed after signing",
        xmlsec1={a: "invalid"},
    )
    add(
        "tampered_signed_response",
        edit(response_signed, set_text(NAME_ID, "admin@example.com")),
        "digest_mismatch",
        "the response signed, its assertion changed",
        xmlsec1={r: "invalid"},
    )
    add(
        "tampered_signature_value",
        edit(assertion_signed, tamper_signature_value),
        "signature_invalid",
        "one character of SignatureValue changed",
        xmlsec1={a: "invalid"},
    )
    add(
        "tampered_digest_value",
        edit(assertion_signed, tamper_digest_value),
        "digest_mismatch",
        "DigestValue changed",
        xmlsec1={a: "invalid"},
    )
    add(
        "stripped_signature",
        edit(assertion_signed, strip_signature),
        "unsigned",
        "the only signature removed",
    )
    add("unsigned", out(samlgen.response_tree(login())[0]), "unsigned", "never signed")
    add(
        "attacker_key",
        edit(assertion_signed, attacker_resigns),
        "signature_invalid",
        "edited and signed again with the attacker's key, its certificate in KeyInfo",
        xmlsec1={a: "invalid"},
    )

    # Algorithms and signature structure.
    add(
        "sha1_signature",
        edit(assertion_signed, sha1_signature),
        "signature_algorithm",
        "a valid RSA-SHA1 signature",
        xmlsec1={a: "valid"},
    )
    add(
        "sha1_digest",
        edit(assertion_signed, sha1_digest),
        "digest_algorithm",
        "a valid SHA-1 reference digest",
        xmlsec1={a: "valid"},
    )
    root, assertion = samlgen.response_tree(login())
    samlgen.sign(
        assertion, IDP_KEYS, signature_algorithm="hmac-sha256", key=b"shared-secret-0123456789"
    )
    add("hmac_signature", out(root), "signature_algorithm", "an HMAC-SHA256 signature")
    root, assertion = samlgen.response_tree(login())
    samlgen.sign(assertion, IDP_KEYS, c14n=samlgen.EXC_C14N + "WithComments")
    add(
        "with_comments_c14n",
        out(root),
        "canonicalization_algorithm",
        "SignedInfo canonicalised #WithComments",
        xmlsec1={a: "valid"},
    )
    root, assertion = samlgen.response_tree(login())
    samlgen.sign(assertion, IDP_KEYS, c14n="http://www.w3.org/TR/2001/REC-xml-c14n-20010315")
    add(
        "inclusive_c14n",
        out(root),
        "canonicalization_algorithm",
        "inclusive C14N 1.0",
        xmlsec1={a: "valid"},
    )
    add(
        "with_comments_transform",
        edit(assertion_signed, set_transform(samlgen.EXC_C14N + "WithComments", 1)),
        "transform",
        "the reference transform #WithComments (re-signed)",
        xmlsec1={a: "valid"},
    )
    add(
        "xpath_transform",
        edit(assertion_signed, add_transform("http://www.w3.org/TR/1999/REC-xpath-19991116")),
        "transform",
        "an XPath transform added (re-signed)",
        xmlsec1={a: "invalid"},
    )
    add(
        "two_signed_info",
        edit(assertion_signed, two_signed_info),
        "signature_structure",
        "a second SignedInfo in the signature",
    )
    add(
        "two_references",
        edit(assertion_signed, two_references),
        "signature_structure",
        "two Reference elements (re-signed)",
        xmlsec1={a: "valid"},
    )
    add(
        "object_in_signature",
        edit(assertion_signed, with_object),
        "signature_structure",
        "a ds:Object in the signature",
        xmlsec1={a: "valid"},
    )
    add(
        "empty_reference_uri",
        edit(assertion_signed, whole_document_reference),
        "reference_uri",
        'a signature in the assertion over URI="" (the whole document; re-signed)',
        xmlsec1={a: "valid"},
    )
    add(
        "external_reference_uri",
        edit(assertion_signed, set_reference_uri("https://evil.example/a.xml")),
        "reference_uri",
        "an external Reference URI (re-signed)",
    )
    add(
        "two_signatures_on_assertion",
        edit(assertion_signed, two_signatures),
        "signature_placement",
        "the assertion carries two signatures",
    )
    add(
        "signature_in_subject",
        edit(assertion_signed, signature_in_subject),
        "signature_placement",
        "the signature moved into the Subject",
    )

    # Signature wrapping.
    add(
        "xsw1",
        edit(response_signed, xsw1),
        "assertion_count",
        "XSW1: evil response at the root, the signed one inside its Signature",
        xmlsec1={INNER_RESPONSE_SIG: "valid"},
    )
    add(
        "xsw2",
        edit(response_signed, xsw2),
        "assertion_count",
        "XSW2: evil response at the root, the signed one before its Signature",
    )
    add(
        "xsw3",
        edit(assertion_signed, xsw3),
        "duplicate_id",
        "XSW3: an evil assertion with the same ID before the signed one",
    )
    add(
        "xsw3_new_id",
        edit(assertion_signed, xsw3_new_id),
        "assertion_count",
        "XSW3 with a fresh ID for the evil assertion",
    )
    add(
        "xsw4",
        edit(assertion_signed, xsw4),
        "assertion_count",
        "XSW4: an evil assertion wrapping the signed one",
        xmlsec1={"//*[@ID='_assertion-0001']/*[local-name()='Signature']": "valid"},
    )
    add(
        "xsw5",
        edit(assertion_signed, xsw5),
        "duplicate_id",
        "XSW5: the signature on an evil assertion, an unsigned copy of the original appended",
    )
    add(
        "xsw6",
        edit(assertion_signed, xsw6),
        "duplicate_id",
        "XSW6: the signature on an evil assertion, the original inside that signature",
    )
    add(
        "xsw7",
        edit(assertion_signed, xsw7),
        "assertion_count",
        "XSW7: the signed assertion hidden in Extensions, an evil one in its place",
        xmlsec1={"//*[local-name()='Extensions']/*/*[local-name()='Signature']": "valid"},
    )
    add(
        "xsw8",
        edit(assertion_signed, xsw8),
        "duplicate_id",
        "XSW8: the signature on an evil assertion, the original in a ds:Object",
    )
    add(
        "signature_moved_to_evil",
        edit(assertion_signed, signature_moved_to_evil),
        "reference_uri",
        "only an evil assertion, carrying the original's signature",
    )
    add(
        "response_signature_into_assertion",
        edit(response_signed, response_signature_into_assertion),
        "reference_uri",
        "the response's signature moved into an edited assertion",
    )
    add(
        "evil_assertion_in_signed_response",
        edit(response_signed, evil_assertion_into_signed_response),
        "digest_mismatch",
        "the response signed, its assertion swapped for an evil one",
    )
    add(
        "decoy_with_same_id",
        edit(assertion_signed, foreign_copy_with_same_id),
        "duplicate_id",
        "the signed assertion copied under a foreign name into Extensions, an evil one signed "
        "with its signature",
    )

    # XML tricks.
    add(
        "doctype",
        text_prefix(assertion_signed, b"<!DOCTYPE Response>\n"),
        "xml_forbidden",
        "a DOCTYPE",
    )
    add(
        "entity_expansion",
        text_prefix(
            assertion_signed,
            b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n',
        ).replace(b"alice@example.com</saml:NameID>", b"&c;</saml:NameID>", 1),
        "xml_forbidden",
        "entity expansion (billion laughs)",
    )
    add(
        "external_entity",
        text_prefix(
            assertion_signed, b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        ).replace(b"alice@example.com</saml:NameID>", b"&x;</saml:NameID>", 1),
        "xml_forbidden",
        "an external entity (XXE)",
    )
    add(
        "undeclared_entity",
        assertion_signed.replace(b"alice@example.com</saml:NameID>", b"alice&x;</saml:NameID>", 1),
        "xml_forbidden",
        "an undeclared entity reference",
    )
    add(
        "processing_instruction",
        text_prefix(assertion_signed, b'<?xml-stylesheet href="x"?>\n'),
        "xml_forbidden",
        "a processing instruction",
    )
    add(
        "deep_nesting",
        edit(assertion_signed, deep_nesting),
        "xml_limits",
        "elements nested 40 deep",
    )
    add("not_well_formed", assertion_signed[:-40], "xml_malformed", "cut short")
    add(
        "encrypted_assertion",
        edit(assertion_signed, encrypted),
        "encrypted_assertion",
        "an EncryptedAssertion (not supported)",
    )
    add(
        "bare_assertion",
        out(parsed(assertion_signed).find(q(SAML, "Assertion"))),
        "not_a_response",
        "a signed assertion without a response around it",
        xmlsec1={"/*[local-name()='Assertion']/*[local-name()='Signature']": "valid"},
    )

    # SAML rules, all validly signed.
    add(
        "expired",
        signed(issued=ISSUED - dt.timedelta(hours=1)),
        "expired",
        "issued an hour ago, valid five minutes",
        xmlsec1={a: "valid"},
    )
    add(
        "confirmation_expired",
        signed(confirmation_not_on_or_after=ISSUED - minute * 2),
        "expired",
        "the bearer confirmation expired, the conditions not",
    )
    add(
        "not_yet_valid",
        signed(not_before=NOW + dt.timedelta(minutes=10)),
        "not_yet_valid",
        "NotBefore ten minutes ahead",
    )
    add(
        "issued_in_future",
        signed(issued=NOW + dt.timedelta(minutes=10), lifetime=minute * 30),
        "not_yet_valid",
        "IssueInstant ten minutes ahead",
    )
    add(
        "wrong_audience",
        signed(audience="https://other-sp.example/metadata"),
        "audience",
        "signed for another service provider",
        xmlsec1={a: "valid"},
    )
    add(
        "wrong_recipient",
        signed(recipient="https://other-sp.example/acs"),
        "recipient",
        "the confirmation's Recipient is another ACS",
        xmlsec1={a: "valid"},
    )
    add(
        "wrong_destination",
        signed(response=True, assertion=False, destination="https://other-sp.example/acs"),
        "destination",
        "a signed response for another ACS",
    )
    add(
        "wrong_issuer",
        signed(issuer="https://evil-idp.example/saml2"),
        "issuer",
        "another issuer, signed with our IdP's key",
        acs_verdict="unknown_issuer",
    )
    add(
        "holder_of_key",
        signed(method="urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"),
        "bearer_confirmation",
        "no bearer confirmation",
    )
    add(
        "status_failure",
        signed(status="urn:oasis:names:tc:SAML:2.0:status:Responder"),
        "status",
        "the IdP reports failure",
    )
    add("assertion_version", signed_after(set_version), "version", "an assertion of version 1.1")
    add(
        "unknown_condition",
        signed_after(unknown_condition),
        "conditions",
        "a condition this service does not understand",
    )
    add(
        "no_authn_statement",
        signed_after(no_authn_statement),
        "authn_statement",
        "no AuthnStatement",
    )
    add(
        "encrypted_name_id",
        signed_after(encrypted_name_id),
        "subject",
        "an EncryptedID instead of a NameID (not supported)",
    )
    add(
        "session_ended",
        signed_after(session_ended),
        "expired",
        "the IdP session ended (SessionNotOnOrAfter) a second ago",
    )
    add(
        "two_bearer_confirmations",
        signed_after(two_bearer_confirmations),
        "ok",
        "two bearer confirmations, ending two and five minutes after issue: the token ends "
        "with the later; the ID is remembered until then (the Rust tests replay it later)",
        xmlsec1={a: "valid"},
    )
    add(
        "far_future_not_on_or_after",
        signed_after(far_future),
        "replayed",
        "NotOnOrAfter ten years ahead, posted twice: accepted once; the ID is remembered only "
        "until five minutes after issue plus the skew, when the assertion is refused as too old "
        "(the Rust tests post it later)",
        after=["far_future_not_on_or_after"],
        xmlsec1={a: "valid"},
    )
    add(
        "issued_long_ago_far_future",
        signed(issued=ISSUED - minute * 10, lifetime=dt.timedelta(days=3650)),
        "expired",
        "issued ten minutes ago, its NotOnOrAfter ten years ahead: too old, whatever its "
        "NotOnOrAfter says",
        xmlsec1={a: "valid"},
    )
    add(
        "in_response_to",
        signed(in_response_to="_request-from-another-sp"),
        "in_response_to",
        "an answer to an AuthnRequest we never sent",
    )
    add(
        "replayed",
        response_signed,
        "replayed",
        "signed_response posted a second time",
        after=["signed_response"],
    )
    return v


def write(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "idp-metadata.xml").write_text(
        samlgen.metadata_xml(IDP, "https://idp.test.example/sso", IDP_KEYS)
    )
    (directory / "idp-public.pem").write_bytes(IDP_KEYS.public_pem)
    manifest = {
        "about": "Written by tests/saml/make_vectors.py (signxml); do not edit by hand.",
        "settings": {
            "idp_entity_id": IDP,
            "sp_entity_id": SP,
            "acs_url": ACS,
            "now": samlgen.iso(NOW),
            "clock_skew_seconds": SKEW,
            "idp_metadata": "idp-metadata.xml",
        },
        "vectors": [],
    }
    names = set()
    for vector in vectors():
        data = vector.pop("data")
        name = vector["name"]
        assert name not in names, name
        names.add(name)
        vector["file"] = f"{name}.xml"
        (directory / vector["file"]).write_bytes(data)
        manifest["vectors"].append(vector)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def check(directory: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "vectors"
        write(fresh)
        expected = sorted(p.name for p in fresh.iterdir())
        actual = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
        differ = [
            n
            for n in expected
            if n not in actual or not filecmp.cmp(fresh / n, directory / n, shallow=False)
        ]
        differ += [n for n in actual if n not in expected]
        if differ:
            print(
                f"SAML vectors in {directory} differ from what make_vectors.py writes: "
                f"{', '.join(differ)}\nrun: .venv/bin/python tests/saml/make_vectors.py {directory}"
            )
            return 1
    print(f"SAML vectors: {len(expected) - 3} regenerated with signxml, identical")
    return cross_check(directory)


def cross_check(directory: Path) -> int:
    """Each vector's expected xmlsec1 verdicts, with only the IdP's public key trusted."""
    xmlsec1 = shutil.which("xmlsec1")
    if xmlsec1 is None:
        message = "xmlsec1 cross-check skipped: xmlsec1 is not installed (apt-get install xmlsec1)"
        if os.environ.get("CI"):
            print(message + "; CI must run it")
            return 1
        print(message)
        return 0
    manifest = json.loads((directory / "manifest.json").read_text())
    passed = failed = 0
    for vector in manifest["vectors"]:
        for xpath, expected in vector.get("xmlsec1", {}).items():
            result = subprocess.run(
                [
                    xmlsec1,
                    "--verify",
                    "--enabled-key-data",
                    "key-name,rsa",
                    "--pubkey-pem",
                    str(directory / "idp-public.pem"),
                    "--id-attr:ID",
                    f"{SAMLP}:Response",
                    "--id-attr:ID",
                    f"{SAML}:Assertion",
                    "--node-xpath",
                    xpath,
                    str(directory / vector["file"]),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            got = "valid" if result.returncode == 0 else "invalid"
            if got == expected:
                passed += 1
            else:
                failed += 1
                print(
                    f"xmlsec1: {vector['name']} {xpath}: expected {expected}, got {got}\n"
                    f"{result.stderr.strip()[-600:]}"
                )
    print(f"xmlsec1 cross-check: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", nargs="?", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--new-keys", action="store_true")
    args = parser.parse_args()
    if args.new_keys:
        samlgen.KEYS.mkdir(parents=True, exist_ok=True)
        for name, cn in (("idp", "inference-gate test IdP"), ("attacker", "attacker")):
            pair = samlgen.new_keypair(cn)
            (samlgen.KEYS / f"{name}-key.pem").write_bytes(pair.key_pem)
            (samlgen.KEYS / f"{name}-cert.pem").write_bytes(pair.cert_pem)
        return 0
    if args.directory is None:
        parser.error("name the vectors directory")
    if args.check:
        return check(args.directory)
    write(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
