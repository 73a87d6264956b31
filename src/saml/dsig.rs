//! XML-DSig verification of one enveloped signature, narrowed to what SAML needs and nothing
//! an attacker could steer:
//!
//! - the `Signature` is a direct child of the element it signs, and holds exactly one
//!   `SignedInfo`, one `SignatureValue` and at most one `KeyInfo` (no `Object`);
//! - `SignedInfo` holds one `CanonicalizationMethod` (exclusive C14N without comments, with
//!   or without an `InclusiveNamespaces` prefix list), one `SignatureMethod` (RSA with
//!   SHA-256, SHA-384 or SHA-512) and exactly one `Reference`;
//! - the `Reference` `URI` is `#` and the `ID` of that same signed element (not empty, not
//!   external, not an XPointer), its transforms are exactly the enveloped-signature transform
//!   then exclusive C14N, its digest SHA-256, SHA-384 or SHA-512;
//! - the digest is over the signed element, less this signature, canonicalised; the
//!   signature over the canonicalised `SignedInfo` must verify with one of the pinned keys.
//!   `KeyInfo` is never read: a certificate there adds no trust.

use base64::Engine as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

use super::c14n;
use super::xml::{Document, NodeId};
use super::Check;

pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";

/// A refusal: which check, and what exactly (safe to show; never quotes the document).
pub type Refusal = (Check, &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn pkcs1v15(self) -> Pkcs1v15Sign {
        match self {
            Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
            Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// Verifies `signature`, which must be a child of `signed`, against `keys`.
pub fn verify(
    doc: &Document,
    signed: NodeId,
    signature: NodeId,
    keys: &[&RsaPublicKey],
) -> Result<(), Refusal> {
    let parent = doc.element(signature).and_then(|e| e.parent);
    if !doc.is(signature, DSIG_NS, "Signature") || parent != Some(signed) {
        return Err((
            Check::SignaturePlacement,
            "the signature is not a direct child of the element it signs",
        ));
    }

    // Signature: SignedInfo, SignatureValue, KeyInfo?
    let parts = strict_children(doc, signature)?;
    let names: Vec<&str> = parts.iter().map(|p| local(doc, *p)).collect();
    let signed_infos = names.iter().filter(|n| **n == "SignedInfo").count();
    if signed_infos != 1 {
        return Err((
            Check::SignatureStructure,
            "a signature must hold exactly one SignedInfo",
        ));
    }
    if !matches!(
        names.as_slice(),
        ["SignedInfo", "SignatureValue"] | ["SignedInfo", "SignatureValue", "KeyInfo"]
    ) {
        return Err((
            Check::SignatureStructure,
            "a signature must hold SignedInfo, SignatureValue and at most a KeyInfo, in that order",
        ));
    }
    let (signed_info, signature_value) = match parts.as_slice() {
        [si, sv, ..] => (*si, *sv),
        _ => return Err((Check::SignatureStructure, "the signature is incomplete")),
    };

    // SignedInfo: CanonicalizationMethod, SignatureMethod, Reference.
    let info = strict_children(doc, signed_info)?;
    let references = info
        .iter()
        .filter(|i| local(doc, **i) == "Reference")
        .count();
    if references != 1 {
        return Err((
            Check::SignatureStructure,
            "SignedInfo must hold exactly one Reference",
        ));
    }
    let [c14n_method, signature_method, reference] = info.as_slice() else {
        return Err((
            Check::SignatureStructure,
            "SignedInfo must hold CanonicalizationMethod, SignatureMethod and Reference, in that order",
        ));
    };
    let names = [c14n_method, signature_method, reference].map(|n| local(doc, *n));
    if names != ["CanonicalizationMethod", "SignatureMethod", "Reference"] {
        return Err((
            Check::SignatureStructure,
            "SignedInfo must hold CanonicalizationMethod, SignatureMethod and Reference, in that order",
        ));
    }
    let info_prefixes = exclusive_c14n(doc, *c14n_method, Check::CanonicalizationAlgorithm)?;
    let signature_hash = signature_algorithm(doc, *signature_method)?;

    // Reference: the signed element itself, enveloped, then exclusive C14N.
    let uri = doc.attr(*reference, "URI").ok_or((
        Check::ReferenceUri,
        "the Reference has no URI (the whole document)",
    ))?;
    let id = match uri.strip_prefix('#') {
        _ if uri.is_empty() => {
            return Err((
                Check::ReferenceUri,
                "the Reference URI is empty (the whole document)",
            ))
        }
        None => return Err((Check::ReferenceUri, "the Reference URI is external")),
        Some(id) if id.is_empty() || id.starts_with("xpointer(") => {
            return Err((
                Check::ReferenceUri,
                "the Reference URI must name an ID, as #ID",
            ))
        }
        Some(id) => id,
    };
    if doc.attr(signed, "ID") != Some(id) {
        return Err((
            Check::ReferenceUri,
            "the Reference does not point at the element that holds the signature",
        ));
    }
    let parts = strict_children(doc, *reference)?;
    let [transforms, digest_method, digest_value] = parts.as_slice() else {
        return Err((
            Check::SignatureStructure,
            "a Reference must hold Transforms, DigestMethod and DigestValue, in that order",
        ));
    };
    if [transforms, digest_method, digest_value].map(|n| local(doc, *n))
        != ["Transforms", "DigestMethod", "DigestValue"]
    {
        return Err((
            Check::SignatureStructure,
            "a Reference must hold Transforms, DigestMethod and DigestValue, in that order",
        ));
    }
    let reference_prefixes = reference_transforms(doc, *transforms)?;
    let digest_hash = digest_algorithm(doc, *digest_method)?;
    let expected = base64_text(doc, *digest_value)
        .ok_or((Check::SignatureStructure, "the DigestValue is not base64"))?;

    let canonical = c14n::canonicalize(doc, signed, Some(signature), &reference_prefixes);
    let actual = digest_hash.digest(&canonical);
    if !bool::from(actual.ct_eq(&expected)) {
        return Err((
            Check::DigestMismatch,
            "the signed content was changed after signing (digest mismatch)",
        ));
    }

    let value = base64_text(doc, signature_value).ok_or((
        Check::SignatureStructure,
        "the SignatureValue is not base64",
    ))?;
    let canonical_info = c14n::canonicalize(doc, signed_info, None, &info_prefixes);
    let hashed = signature_hash.digest(&canonical_info);
    let verified = keys
        .iter()
        .any(|k| k.verify(signature_hash.pkcs1v15(), &hashed, &value).is_ok());
    if !verified {
        return Err((
            Check::SignatureInvalid,
            "the signature was not made with a key from the IdP metadata",
        ));
    }
    Ok(())
}

/// The element children of `id`, all of which must be in the XML-DSig namespace; text
/// other than white space is refused.
fn strict_children(doc: &Document, id: NodeId) -> Result<Vec<NodeId>, Refusal> {
    if doc.has_loose_text(id) {
        return Err((
            Check::SignatureStructure,
            "a signature element holds unexpected text",
        ));
    }
    let children: Vec<NodeId> = doc.child_elements(id).collect();
    if children
        .iter()
        .any(|c| doc.element(*c).is_none_or(|e| e.ns != DSIG_NS))
    {
        return Err((
            Check::SignatureStructure,
            "a signature element holds an element from another namespace",
        ));
    }
    Ok(children)
}

fn local(doc: &Document, id: NodeId) -> &str {
    doc.element(id).map_or("", |e| e.local.as_str())
}

fn algorithm(doc: &Document, id: NodeId) -> &str {
    doc.attr(id, "Algorithm").unwrap_or("")
}

/// Checks an exclusive-C14N method (in `SignedInfo` or as a transform) and returns its
/// `InclusiveNamespaces` `PrefixList`.
fn exclusive_c14n(doc: &Document, id: NodeId, check: Check) -> Result<Vec<String>, Refusal> {
    let alg = algorithm(doc, id);
    if alg.ends_with("#WithComments") {
        return Err((check, "canonicalisation #WithComments is not accepted"));
    }
    if alg != EXC_C14N {
        return Err((check, "only exclusive XML canonicalisation is accepted"));
    }
    if doc.has_loose_text(id) {
        return Err((check, "the canonicalisation method holds unexpected text"));
    }
    let mut prefixes = Vec::new();
    for (i, child) in doc.child_elements(id).enumerate() {
        let inclusive = doc.is(child, EXC_C14N, "InclusiveNamespaces");
        if !inclusive || i > 0 || doc.child_elements(child).next().is_some() {
            return Err((
                check,
                "the canonicalisation method may hold only one InclusiveNamespaces",
            ));
        }
        prefixes = doc
            .attr(child, "PrefixList")
            .unwrap_or("")
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect();
    }
    Ok(prefixes)
}

fn signature_algorithm(doc: &Document, id: NodeId) -> Result<Hash, Refusal> {
    if doc.child_elements(id).next().is_some() || doc.has_loose_text(id) {
        return Err((
            Check::SignatureAlgorithm,
            "the SignatureMethod takes no parameters",
        ));
    }
    match algorithm(doc, id) {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" => Ok(Hash::Sha256),
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384" => Ok(Hash::Sha384),
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512" => Ok(Hash::Sha512),
        a if a.contains("hmac") => Err((
            Check::SignatureAlgorithm,
            "HMAC signatures are not accepted (RSA with SHA-256 or stronger only)",
        )),
        a if a.ends_with("sha1") => Err((
            Check::SignatureAlgorithm,
            "SHA-1 signatures are not accepted (RSA with SHA-256 or stronger only)",
        )),
        _ => Err((
            Check::SignatureAlgorithm,
            "only RSA signatures with SHA-256, SHA-384 or SHA-512 are accepted",
        )),
    }
}

fn digest_algorithm(doc: &Document, id: NodeId) -> Result<Hash, Refusal> {
    if doc.child_elements(id).next().is_some() || doc.has_loose_text(id) {
        return Err((
            Check::DigestAlgorithm,
            "the DigestMethod takes no parameters",
        ));
    }
    match algorithm(doc, id) {
        "http://www.w3.org/2001/04/xmlenc#sha256" => Ok(Hash::Sha256),
        "http://www.w3.org/2001/04/xmldsig-more#sha384" => Ok(Hash::Sha384),
        "http://www.w3.org/2001/04/xmlenc#sha512" => Ok(Hash::Sha512),
        a if a.ends_with("sha1") => Err((
            Check::DigestAlgorithm,
            "SHA-1 digests are not accepted (SHA-256 or stronger only)",
        )),
        _ => Err((
            Check::DigestAlgorithm,
            "only SHA-256, SHA-384 or SHA-512 digests are accepted",
        )),
    }
}

/// Exactly the enveloped-signature transform, then exclusive C14N; returns its prefix list.
fn reference_transforms(doc: &Document, transforms: NodeId) -> Result<Vec<String>, Refusal> {
    let list = strict_children(doc, transforms)?;
    if list.iter().any(|t| local(doc, *t) != "Transform") {
        return Err((
            Check::SignatureStructure,
            "Transforms may hold only Transform elements",
        ));
    }
    let refuse = (
        Check::Transform,
        "the transforms must be exactly enveloped-signature then exclusive C14N",
    );
    let [enveloped, c14n] = list.as_slice() else {
        return Err(refuse);
    };
    for t in [enveloped, c14n] {
        if algorithm(doc, *t).ends_with("#WithComments") {
            return Err((
                Check::Transform,
                "canonicalisation #WithComments is not accepted",
            ));
        }
    }
    let enveloped_ok = algorithm(doc, *enveloped) == ENVELOPED
        && doc.child_elements(*enveloped).next().is_none()
        && !doc.has_loose_text(*enveloped);
    if !enveloped_ok || algorithm(doc, *c14n) != EXC_C14N {
        return Err(refuse);
    }
    exclusive_c14n(doc, *c14n, Check::Transform)
}

fn base64_text(doc: &Document, id: NodeId) -> Option<Vec<u8>> {
    let text = doc.text(id)?;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}
