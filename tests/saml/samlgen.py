"""SAML responses signed by an independent XML-DSig implementation (signxml, on lxml and
cryptography), for the test vectors (make_vectors.py) and the real-Envoy sign-on test.

Nothing here uses the gateway's code. The test IdP's key and certificate live in
tests/fixtures/saml/test-idp/ (made once by `make_vectors.py --new-keys`); they exist only for
tests. RSA PKCS#1 v1.5 signatures are deterministic, so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import XMLSigner

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "tests" / "fixtures" / "saml" / "test-idp"

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
XS = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"

RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"


def q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Keypair:
    key_pem: bytes
    cert_pem: bytes

    @property
    def key(self) -> rsa.RSAPrivateKey:
        return serialization.load_pem_private_key(self.key_pem, password=None)

    @property
    def cert_b64(self) -> str:
        """The certificate's DER in base64, as metadata and KeyInfo carry it."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    @property
    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_keypair(name: str) -> Keypair:
    return Keypair(
        (KEYS / f"{name}-key.pem").read_bytes(), (KEYS / f"{name}-cert.pem").read_bytes()
    )


def new_keypair(common_name: str) -> Keypair:
    """A fresh 2048-bit key and a self-signed certificate valid 2020-2100 (run once)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return Keypair(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def metadata_xml(entity_id: str, sso_url: str, keypair: Keypair) -> str:
    """IdP metadata with one signing certificate, as an IdP publishes it."""
    return (
        f'<md:EntityDescriptor xmlns:md="{MD}" entityID="{entity_id}">\n'
        f'  <md:IDPSSODescriptor protocolSupportEnumeration="{SAMLP}">\n'
        '    <md:KeyDescriptor use="signing">\n'
        f'      <ds:KeyInfo xmlns:ds="{DS}"><ds:X509Data><ds:X509Certificate>'
        f"{keypair.cert_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>\n"
        "    </md:KeyDescriptor>\n"
        f"    <md:NameIDFormat>{EMAIL_FORMAT}</md:NameIDFormat>\n"
        '    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'Location="{sso_url}"/>\n'
        "  </md:IDPSSODescriptor>\n"
        "</md:EntityDescriptor>\n"
    )


@dataclass
class Login:
    """What goes into a response; change fields to make the variants."""

    idp_entity_id: str
    sp_entity_id: str
    acs_url: str
    issued: dt.datetime
    subject: str = "alice@example.com"
    email: str | None = "alice@example.com"
    response_id: str = "_response-0001"
    assertion_id: str = "_assertion-0001"
    lifetime: dt.timedelta = dt.timedelta(minutes=5)
    not_before: dt.datetime | None = None
    confirmation_not_on_or_after: dt.datetime | None = None
    destination: str | None = None
    recipient: str | None = None
    audience: str | None = None
    issuer: str | None = None
    method: str = BEARER
    status: str = SUCCESS
    in_response_to: str | None = None
    extra_attributes: dict[str, str] = field(default_factory=dict)


def response_tree(login: Login) -> tuple[etree._Element, etree._Element]:
    """The unsigned Response and its Assertion (a child of it)."""
    issued = login.issued
    not_before = login.not_before or issued - dt.timedelta(minutes=5)
    not_on_or_after = issued + login.lifetime
    scd_end = login.confirmation_not_on_or_after or not_on_or_after

    response = etree.Element(
        q(SAMLP, "Response"),
        nsmap={"samlp": SAMLP, "saml": SAML},
        ID=login.response_id,
        Version="2.0",
        IssueInstant=iso(issued),
        Destination=login.destination or login.acs_url,
    )
    if login.in_response_to:
        response.set("InResponseTo", login.in_response_to)
    etree.SubElement(response, q(SAML, "Issuer")).text = login.issuer or login.idp_entity_id
    status = etree.SubElement(response, q(SAMLP, "Status"))
    etree.SubElement(status, q(SAMLP, "StatusCode"), Value=login.status)

    assertion = etree.SubElement(
        response,
        q(SAML, "Assertion"),
        nsmap={"saml": SAML, "xs": XS, "xsi": XSI},
        ID=login.assertion_id,
        Version="2.0",
        IssueInstant=iso(issued),
    )
    etree.SubElement(assertion, q(SAML, "Issuer")).text = login.issuer or login.idp_entity_id
    subject = etree.SubElement(assertion, q(SAML, "Subject"))
    etree.SubElement(subject, q(SAML, "NameID"), Format=EMAIL_FORMAT).text = login.subject
    confirmation = etree.SubElement(subject, q(SAML, "SubjectConfirmation"), Method=login.method)
    data = etree.SubElement(
        confirmation,
        q(SAML, "SubjectConfirmationData"),
        NotOnOrAfter=iso(scd_end),
        Recipient=login.recipient or login.acs_url,
    )
    if login.in_response_to:
        data.set("InResponseTo", login.in_response_to)
    conditions = etree.SubElement(
        assertion,
        q(SAML, "Conditions"),
        NotBefore=iso(not_before),
        NotOnOrAfter=iso(not_on_or_after),
    )
    restriction = etree.SubElement(conditions, q(SAML, "AudienceRestriction"))
    etree.SubElement(restriction, q(SAML, "Audience")).text = login.audience or login.sp_entity_id
    statement = etree.SubElement(
        assertion,
        q(SAML, "AuthnStatement"),
        AuthnInstant=iso(issued),
        SessionIndex=login.assertion_id,
    )
    context = etree.SubElement(statement, q(SAML, "AuthnContext"))
    etree.SubElement(
        context, q(SAML, "AuthnContextClassRef")
    ).text = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    attributes = {"email": login.email} if login.email else {}
    attributes.update(login.extra_attributes)
    if attributes:
        statement_el = etree.SubElement(assertion, q(SAML, "AttributeStatement"))
        for name, value in attributes.items():
            attribute = etree.SubElement(statement_el, q(SAML, "Attribute"), Name=name)
            value_el = etree.SubElement(attribute, q(SAML, "AttributeValue"))
            value_el.set(q(XSI, "type"), "xs:string")
            value_el.text = value
    return response, assertion


def sign(
    element: etree._Element,
    keypair: Keypair,
    *,
    signature_algorithm: str = "rsa-sha256",
    digest_algorithm: str = "sha256",
    c14n: str = EXC_C14N,
    reference_uri: str | list[str] | None = "",
    inclusive_ns_prefixes: list[str] | None = None,
    key: bytes | None = None,
) -> etree._Element:
    """Signs `element` in place with signxml (enveloped, the Signature after its Issuer).

    `reference_uri=""` (the default) references the element's own ID; None leaves the URI
    empty (the whole document).
    """
    if reference_uri == "":
        reference_uri = "#" + element.get("ID")
    # signxml puts an enveloped signature where a placeholder stands: after the Issuer.
    issuer = element.find(q(SAML, "Issuer"))
    placeholder = etree.Element(q(DS, "Signature"), nsmap={"ds": DS}, Id="placeholder")
    if issuer is not None:
        issuer.addnext(placeholder)
    else:
        element.insert(0, placeholder)
    signer = XMLSigner(
        signature_algorithm=signature_algorithm,
        digest_algorithm=digest_algorithm,
        c14n_algorithm=c14n,
    )
    signer.namespaces = {"ds": DS}
    standalone = etree.fromstring(etree.tostring(element))
    signed = signer.sign(
        standalone,
        key=key if key is not None else keypair.key_pem,
        cert=None if key is not None else [keypair.cert_pem.decode()],
        reference_uri=reference_uri,
        id_attribute="ID",
        inclusive_ns_prefixes=inclusive_ns_prefixes,
    )
    parent = element.getparent()
    if parent is None:
        return signed
    parent.replace(element, signed)
    return signed


def resign(signature: etree._Element, keypair: Keypair, algorithm: str = RSA_SHA256) -> None:
    """Recomputes SignatureValue over the (edited) SignedInfo: lxml's exclusive C14N and
    cryptography's RSA, so a hand-edited SignedInfo still carries a valid signature."""
    signed_info = signature.find(q(DS, "SignedInfo"))
    signature.find(q(DS, "SignedInfo") + "/" + q(DS, "SignatureMethod")).set("Algorithm", algorithm)
    inclusive = signed_info.find(
        f"{q(DS, 'CanonicalizationMethod')}/{q(EXC_C14N, 'InclusiveNamespaces')}"
    )
    prefixes = inclusive.get("PrefixList").split() if inclusive is not None else None
    data = etree.tostring(
        signed_info,
        method="c14n",
        exclusive=True,
        with_comments=False,
        inclusive_ns_prefixes=prefixes,
    )
    hash_ = hashes.SHA1() if algorithm == RSA_SHA1 else hashes.SHA256()
    value = keypair.key.sign(data, padding.PKCS1v15(), hash_)
    signature.find(q(DS, "SignatureValue")).text = base64.b64encode(value).decode()


def redigest(signature: etree._Element, signed: etree._Element, algorithm: str = SHA1) -> None:
    """Recomputes the Reference digest of `signed` (less this signature) with `algorithm`."""
    reference = signature.find(q(DS, "SignedInfo") + "/" + q(DS, "Reference"))
    reference.find(q(DS, "DigestMethod")).set("Algorithm", algorithm)
    clone = copy.deepcopy(signed)
    for s in clone.findall(q(DS, "Signature")):
        if s.find(q(DS, "SignedInfo")) is not None:
            clone.remove(s)
    data = etree.tostring(clone, method="c14n", exclusive=True, with_comments=False)
    digest = hashlib.sha1(data) if algorithm == SHA1 else hashlib.sha256(data)
    reference.find(q(DS, "DigestValue")).text = base64.b64encode(digest.digest()).decode()


def redigest_document(signature: etree._Element) -> None:
    """Recomputes a SHA-256 Reference digest for URI="": the whole document, less this
    signature (the enveloped transform), canonicalised."""
    reference = signature.find(q(DS, "SignedInfo") + "/" + q(DS, "Reference"))
    value = signature.find(q(DS, "SignatureValue")).text
    clone = copy.deepcopy(signature.getroottree().getroot())
    for s in clone.iter(q(DS, "Signature")):
        if s.find(q(DS, "SignatureValue")).text == value:
            s.getparent().remove(s)
            break
    data = etree.tostring(clone, method="c14n", exclusive=True, with_comments=False)
    digest = hashlib.sha256(data).digest()
    reference.find(q(DS, "DigestValue")).text = base64.b64encode(digest).decode()


def to_bytes(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def signed_response(login: Login, keypair: Keypair, *, response: bool, assertion: bool) -> bytes:
    """A response with the assertion signed, the response signed, or both."""
    root, assertion_el = response_tree(login)
    if assertion:
        sign(assertion_el, keypair)
    if response:
        root = sign(root, keypair)
    return to_bytes(root)
