//! SAML 2.0 sign-on (IdP-initiated, HTTP-POST binding): from the bytes an IdP posts to the
//! identity of a user, or the name of the check that refused them. Pure Rust, no host calls.
//!
//! One job per module:
//! - `xml`: hardened XML reading into a small tree (no DTD, entities or instructions;
//!   bounded size, depth and element count);
//! - `c14n`: exclusive XML canonicalisation, with or without an inclusive prefix list;
//! - `dsig`: XML-DSig verification of one enveloped RSA signature against pinned keys;
//! - `metadata`: the IdP's metadata, read at configuration load;
//! - `time`: SAML times;
//! - `assertion`: the response and assertion rules, and where identity is read from;
//! - `replay`: each assertion accepted once, across workers, in a bounded shared store;
//! - `token`: the gateway's session token (HMAC-SHA256, key ids for rotation);
//! - `acs`: the assertion consumer service: form post in, reply and audit facts out.
//!
//! Signature wrapping is defeated by construction: the document must hold exactly one
//! `Assertion`, as a direct child of the root `Response`; every `Signature` must be a direct
//! child of one of those two and refer to that element's own `ID`; IDs are unique in the
//! document; and identity is read from that one assertion, in the same tree whose bytes were
//! canonicalised and verified.

pub mod acs;
pub mod assertion;
pub mod c14n;
pub mod dsig;
pub mod metadata;
pub mod replay;
#[cfg(test)]
mod testing;
pub mod time;
pub mod token;
pub mod xml;

use std::fmt;

/// The check that refused a response. `code()` is stable: it is the `error.code` of the
/// `401` (prefixed `saml_`), the audit entry's resource, and what the test vectors expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// `SAMLResponse` is not base64.
    Encoding,
    XmlTooLarge,
    XmlLimits,
    /// DOCTYPE, entity, processing instruction.
    XmlForbidden,
    XmlMalformed,
    NotAResponse,
    DuplicateId,
    SignaturePlacement,
    AssertionCount,
    EncryptedAssertion,
    Unsigned,
    SignatureStructure,
    CanonicalizationAlgorithm,
    SignatureAlgorithm,
    DigestAlgorithm,
    Transform,
    ReferenceUri,
    DigestMismatch,
    SignatureInvalid,
    Version,
    Destination,
    Issuer,
    /// No tenant has an IdP with the response's issuer.
    UnknownIssuer,
    Status,
    InResponseTo,
    Subject,
    BearerConfirmation,
    Recipient,
    NotYetValid,
    Expired,
    Conditions,
    Audience,
    AuthnStatement,
    Replayed,
}

impl Check {
    pub fn code(self) -> &'static str {
        match self {
            Check::Encoding => "encoding",
            Check::XmlTooLarge => "xml_too_large",
            Check::XmlLimits => "xml_limits",
            Check::XmlForbidden => "xml_forbidden",
            Check::XmlMalformed => "xml_malformed",
            Check::NotAResponse => "not_a_response",
            Check::DuplicateId => "duplicate_id",
            Check::SignaturePlacement => "signature_placement",
            Check::AssertionCount => "assertion_count",
            Check::EncryptedAssertion => "encrypted_assertion",
            Check::Unsigned => "unsigned",
            Check::SignatureStructure => "signature_structure",
            Check::CanonicalizationAlgorithm => "canonicalization_algorithm",
            Check::SignatureAlgorithm => "signature_algorithm",
            Check::DigestAlgorithm => "digest_algorithm",
            Check::Transform => "transform",
            Check::ReferenceUri => "reference_uri",
            Check::DigestMismatch => "digest_mismatch",
            Check::SignatureInvalid => "signature_invalid",
            Check::Version => "version",
            Check::Destination => "destination",
            Check::Issuer => "issuer",
            Check::UnknownIssuer => "unknown_issuer",
            Check::Status => "status",
            Check::InResponseTo => "in_response_to",
            Check::Subject => "subject",
            Check::BearerConfirmation => "bearer_confirmation",
            Check::Recipient => "recipient",
            Check::NotYetValid => "not_yet_valid",
            Check::Expired => "expired",
            Check::Conditions => "conditions",
            Check::Audience => "audience",
            Check::AuthnStatement => "authn_statement",
            Check::Replayed => "replayed",
        }
    }

    /// Whether a refusal at this check comes after the signature was verified, i.e. the
    /// response provably came from the IdP (the audit entry then names the tenant).
    pub fn after_signature(self) -> bool {
        matches!(
            self,
            Check::Version
                | Check::Destination
                | Check::Issuer
                | Check::Status
                | Check::InResponseTo
                | Check::Subject
                | Check::BearerConfirmation
                | Check::Recipient
                | Check::NotYetValid
                | Check::Expired
                | Check::Conditions
                | Check::Audience
                | Check::AuthnStatement
                | Check::Replayed
        )
    }
}

/// A refused response: the check, and a sentence that is safe to send back (it never
/// quotes the response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub check: Check,
    pub detail: String,
}

impl Failure {
    pub fn new(check: Check, detail: impl Into<String>) -> Self {
        Failure {
            check,
            detail: detail.into(),
        }
    }
}

impl From<(Check, &'static str)> for Failure {
    fn from((check, detail): (Check, &'static str)) -> Self {
        Failure::new(check, detail)
    }
}

impl From<xml::XmlError> for Failure {
    fn from(e: xml::XmlError) -> Self {
        match e {
            xml::XmlError::TooLarge { .. } => {
                Failure::new(Check::XmlTooLarge, "the SAML response is too large")
            }
            xml::XmlError::Limit(_) | xml::XmlError::Forbidden(_) => {
                let check = match e {
                    xml::XmlError::Limit(_) => Check::XmlLimits,
                    _ => Check::XmlForbidden,
                };
                Failure::new(check, e.to_string())
            }
            xml::XmlError::Malformed { what, .. } => Failure::new(
                Check::XmlMalformed,
                format!("the SAML response is not well-formed XML ({what})"),
            ),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.detail, self.check.code())
    }
}
