//! An identity provider's SAML metadata, read once at configuration load: its entity ID, its
//! single sign-on URL, the NameID formats it names, and the RSA keys of its signing
//! certificates. Those keys are the only ones a response's signature is checked against.
//!
//! The certificates are pinned as keys: their validity dates and issuers are not checked
//! (the operator vouches for the metadata by putting it in the configuration), and neither
//! is the metadata's own signature or `validUntil`.

use base64::Engine as _;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use sha2::{Digest as _, Sha256};
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

use super::dsig::DSIG_NS;
use super::xml::{self, Document, Limits, NodeId};

pub const MD_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const MIN_KEY_BITS: usize = 2048;

/// A signing key of the IdP, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub key: RsaPublicKey,
    /// SHA-256 of the certificate's DER, lowercase hex: for logs.
    pub certificate_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpMetadata {
    pub entity_id: String,
    /// Where users start a sign-on (HTTP-POST or HTTP-Redirect binding), if named.
    pub sso_url: Option<String>,
    pub name_id_formats: Vec<String>,
    pub keys: Vec<SigningKey>,
}

/// Reads an `EntityDescriptor` holding one `IDPSSODescriptor`. The error says what is
/// missing or wrong, without quoting the metadata.
pub fn parse(text: &str) -> Result<IdpMetadata, String> {
    let doc = xml::parse(text.as_bytes(), Limits::METADATA).map_err(|e| e.to_string())?;
    let root = doc.root();
    if !doc.is(root, MD_NS, "EntityDescriptor") {
        return Err("must be one SAML 2.0 metadata EntityDescriptor".to_string());
    }
    let entity_id = doc
        .attr(root, "entityID")
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 1024)
        .ok_or("the EntityDescriptor has no entityID (1-1024 characters)")?
        .to_string();

    let mut idps = doc
        .children_named(root, MD_NS, "IDPSSODescriptor")
        .filter(|d| {
            doc.attr(*d, "protocolSupportEnumeration")
                .is_some_and(|p| p.split_ascii_whitespace().any(|p| p == PROTOCOL))
        });
    let idp = idps
        .next()
        .ok_or("no IDPSSODescriptor for the SAML 2.0 protocol")?;
    if idps.next().is_some() {
        return Err("more than one IDPSSODescriptor for the SAML 2.0 protocol".to_string());
    }

    let mut keys = Vec::new();
    for (k, descriptor) in doc.children_named(idp, MD_NS, "KeyDescriptor").enumerate() {
        // `use` absent means the key serves both signing and encryption.
        if doc
            .attr(descriptor, "use")
            .is_some_and(|u| u.trim() != "signing")
        {
            continue;
        }
        for cert in certificates(&doc, descriptor) {
            let key = signing_key(&cert).map_err(|m| format!("KeyDescriptor {}: {m}", k + 1))?;
            if !keys.iter().any(|s: &SigningKey| s.key == key.key) {
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        return Err(
            "no signing certificate (a KeyDescriptor use=\"signing\" with an X509Certificate)"
                .to_string(),
        );
    }

    let sso_url = doc
        .children_named(idp, MD_NS, "SingleSignOnService")
        .filter(|s| {
            doc.attr(*s, "Binding").is_some_and(|b| {
                b.ends_with(":bindings:HTTP-POST") || b.ends_with(":bindings:HTTP-Redirect")
            })
        })
        .find_map(|s| doc.attr(s, "Location"))
        .map(|s| s.trim().to_string());
    let name_id_formats = doc
        .children_named(idp, MD_NS, "NameIDFormat")
        .filter_map(|n| doc.text(n))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();

    Ok(IdpMetadata {
        entity_id,
        sso_url,
        name_id_formats,
        keys,
    })
}

/// The base64 text of every `ds:KeyInfo/ds:X509Data/ds:X509Certificate` of a descriptor.
fn certificates(doc: &Document, descriptor: NodeId) -> Vec<String> {
    doc.children_named(descriptor, DSIG_NS, "KeyInfo")
        .flat_map(|ki| {
            doc.children_named(ki, DSIG_NS, "X509Data")
                .collect::<Vec<_>>()
        })
        .flat_map(|xd| {
            doc.children_named(xd, DSIG_NS, "X509Certificate")
                .collect::<Vec<_>>()
        })
        .filter_map(|c| doc.text(c))
        .collect()
}

fn signing_key(base64_text: &str) -> Result<SigningKey, String> {
    let compact: String = base64_text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| "the X509Certificate is not base64")?;
    let cert = Certificate::from_der(&der).map_err(|_| "the X509Certificate is not X.509 DER")?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| "the certificate's public key cannot be read")?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|_| "the certificate's key is not an RSA key (up to 4096 bits)")?;
    let bits = key.size() * 8;
    if bits < MIN_KEY_BITS {
        return Err(format!(
            "the certificate's RSA key has {bits} bits; at least {MIN_KEY_BITS} are required"
        ));
    }
    Ok(SigningKey {
        key,
        certificate_sha256: hex::encode(Sha256::digest(&der)),
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    const GOOGLE: &str =
        include_str!("../../tests/fixtures/saml/google-workspace-idp-metadata.xml");

    #[test]
    fn google_workspace_metadata() {
        let m = parse(GOOGLE).unwrap();
        assert_eq!(
            m.entity_id,
            "https://accounts.google.com/o/saml2?idpid=C02dfl1r1"
        );
        assert_eq!(
            m.sso_url.as_deref(),
            Some("https://accounts.google.com/o/saml2/idp?idpid=C02dfl1r1")
        );
        assert_eq!(
            m.name_id_formats,
            ["urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"]
        );
        assert_eq!(m.keys.len(), 1);
        assert_eq!(m.keys[0].key.size(), 256);
    }

    #[test]
    fn refusals_name_the_problem() {
        let no_idp = GOOGLE.replace("IDPSSODescriptor", "SPSSODescriptor");
        assert!(parse(&no_idp).unwrap_err().contains("IDPSSODescriptor"));
        let no_key = GOOGLE.replace("use=\"signing\"", "use=\"encryption\"");
        assert!(parse(&no_key).unwrap_err().contains("signing certificate"));
        let bad_cert = GOOGLE.replace(
            "MIIDdDCCAlygAwIBAgIGAVISlIlYMA0",
            "MIIDdDCCAlygAwIBAgIGAVISlIlYMA1",
        );
        assert!(parse(&bad_cert).unwrap_err().contains("KeyDescriptor 1"));
        let no_entity = GOOGLE.replace("entityID=", "entity=");
        assert!(parse(&no_entity).unwrap_err().contains("entityID"));
        assert!(parse("<x/>").unwrap_err().contains("EntityDescriptor"));
        assert!(parse("<!DOCTYPE x><x/>").unwrap_err().contains("DOCTYPE"));
        assert!(parse("not xml").is_err());
    }
}
