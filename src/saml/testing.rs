//! The signed test vectors (`tests/fixtures/saml/vectors/`, made by
//! `tests/saml/make_vectors.py` with signxml), for the unit tests of this module.

use super::metadata::{self, IdpMetadata};
use super::xml::{self, Document, Limits};

pub const IDP: &str = "https://idp.test.example/saml2";
pub const SP: &str = "https://gateway.test.example/saml/metadata";
pub const ACS: &str = "https://gateway.test.example/sso/saml/acs";
pub const SKEW_MS: i64 = 60_000;

/// Milliseconds since the epoch of 2030-01-01 at `hh:mm:ss` UTC: the vectors are issued at
/// midnight, and their clock reads 00:01:00.
pub fn at(hh: i64, mm: i64, ss: i64) -> i64 {
    (1_893_456_000 + hh * 3600 + mm * 60 + ss) * 1000
}

pub fn bytes(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/saml/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn vector(name: &str) -> Document {
    xml::parse(&bytes(&format!("{name}.xml")), Limits::RESPONSE).unwrap()
}

pub fn metadata_xml() -> String {
    String::from_utf8(bytes("idp-metadata.xml")).unwrap()
}

pub fn idp() -> IdpMetadata {
    metadata::parse(&metadata_xml()).unwrap()
}
