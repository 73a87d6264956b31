//! Credential extraction and key lookup.
//!
//! Keys are never stored: the configuration holds SHA-256 digests. A presented key is hashed
//! and looked up by the first eight bytes of its digest; the full digest is then compared in
//! constant time, so response timing reveals nothing about how close a guess came to a stored
//! digest.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

pub type Digest = [u8; 32];

/// SHA-256 of a key, as stored in `api_key_sha256`.
pub fn digest_key(key: &str) -> Digest {
    Sha256::digest(key.as_bytes()).into()
}

/// Key digests mapped to tenant indexes.
#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    buckets: HashMap<u64, Vec<(Digest, usize)>>,
}

impl KeyTable {
    /// Adds a digest; returns the tenant that already holds it, if any.
    pub fn insert(&mut self, digest: Digest, tenant: usize) -> Option<usize> {
        let bucket = self.buckets.entry(bucket_of(&digest)).or_default();
        if let Some((_, owner)) = bucket.iter().find(|(d, _)| d == &digest) {
            return Some(*owner);
        }
        bucket.push((digest, tenant));
        None
    }

    /// Takes a digest out; returns the tenant that held it.
    pub fn remove(&mut self, digest: &Digest) -> Option<usize> {
        let prefix = bucket_of(digest);
        let bucket = self.buckets.get_mut(&prefix)?;
        let at = bucket.iter().position(|(d, _)| d == digest)?;
        let (_, owner) = bucket.swap_remove(at);
        if bucket.is_empty() {
            self.buckets.remove(&prefix);
        }
        Some(owner)
    }

    /// The tenant index that holds `key`, if any.
    pub fn lookup(&self, key: &str) -> Option<usize> {
        let digest = digest_key(key);
        let bucket = self.buckets.get(&bucket_of(&digest))?;
        let mut found = None;
        // Every candidate in the bucket is compared, so the time taken does not depend on
        // which one matched.
        for (stored, tenant) in bucket {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(*tenant);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

fn bucket_of(digest: &Digest) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(digest.get(..8).unwrap_or(&[0u8; 8]));
    u64::from_le_bytes(prefix)
}

/// What the client presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Missing,
    /// A credential header is present but unusable; the reason is safe to show the client.
    Malformed(&'static str),
    Key(&'a str),
}

/// Reads the key from `Authorization: Bearer <key>` (scheme in any case) or `x-api-key`.
///
/// An `Authorization` header that is present wins: if it is not a usable bearer credential
/// the request is refused rather than silently falling back to another header.
pub fn extract<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Credential<'a> {
    if let Some(value) = authorization {
        return parse_bearer(value);
    }
    match x_api_key.map(str::trim) {
        None => Credential::Missing,
        Some("") => Credential::Malformed("the x-api-key header is empty"),
        Some(key) if !is_token(key) => Credential::Malformed("the x-api-key header is malformed"),
        Some(key) => Credential::Key(key),
    }
}

fn parse_bearer(value: &str) -> Credential<'_> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once([' ', '\t']) {
        Some((scheme, rest)) => (scheme, rest.trim()),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Malformed("the Authorization header must use the Bearer scheme");
    }
    if rest.is_empty() {
        return Credential::Malformed("the Authorization header has no key after Bearer");
    }
    if !is_token(rest) {
        return Credential::Malformed("the Authorization header is malformed");
    }
    Credential::Key(rest)
}

/// A key is one run of visible ASCII characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 4096 && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn digest_matches_known_vector() {
        // The FIPS 180-2 test vector for "abc".
        assert_eq!(
            hex::encode(digest_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer k",
            "bearer k",
            "BEARER k",
            "  Bearer   k  ",
            "Bearer\tk",
        ] {
            assert_eq!(extract(Some(v), None), Credential::Key("k"), "{v:?}");
        }
    }

    #[test]
    fn x_api_key_is_used_without_authorization() {
        assert_eq!(extract(None, Some("k")), Credential::Key("k"));
        assert_eq!(extract(None, Some(" k ")), Credential::Key("k"));
    }

    #[test]
    fn authorization_wins_over_x_api_key() {
        assert_eq!(extract(Some("Bearer a"), Some("b")), Credential::Key("a"));
        assert!(matches!(
            extract(Some("Basic dXNlcjpwYXNz"), Some("b")),
            Credential::Malformed(_)
        ));
    }

    #[test]
    fn malformed_credentials() {
        for v in [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearerk",
            "Bearer a b",
            "Token k",
            "Bearer \u{7f}",
        ] {
            assert!(
                matches!(extract(Some(v), None), Credential::Malformed(_)),
                "{v:?}"
            );
        }
        assert!(matches!(extract(None, Some("")), Credential::Malformed(_)));
        assert!(matches!(
            extract(None, Some("a b")),
            Credential::Malformed(_)
        ));
        let long = "k".repeat(5000);
        assert!(matches!(
            extract(None, Some(&long)),
            Credential::Malformed(_)
        ));
    }

    #[test]
    fn missing_credentials() {
        assert_eq!(extract(None, None), Credential::Missing);
    }

    #[test]
    fn lookup_finds_only_exact_keys() {
        let mut t = KeyTable::default();
        assert!(t.is_empty());
        assert_eq!(t.insert(digest_key("alpha"), 0), None);
        assert_eq!(t.insert(digest_key("beta"), 1), None);
        assert_eq!(t.insert(digest_key("alpha"), 2), Some(0));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup("alpha"), Some(0));
        assert_eq!(t.lookup("beta"), Some(1));
        assert_eq!(t.lookup("alpha "), None);
        assert_eq!(t.lookup("Alpha"), None);
        assert_eq!(t.lookup(""), None);
    }

    #[test]
    fn a_removed_digest_is_no_longer_found() {
        let mut t = KeyTable::default();
        t.insert(digest_key("a"), 0);
        t.insert(digest_key("b"), 1);
        assert_eq!(t.remove(&digest_key("a")), Some(0));
        assert_eq!(t.remove(&digest_key("a")), None);
        assert_eq!(t.lookup("a"), None);
        assert_eq!(t.lookup("b"), Some(1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn digests_sharing_a_bucket_are_told_apart() {
        let mut t = KeyTable::default();
        let mut a = digest_key("x");
        let mut b = a;
        b[31] ^= 1;
        t.insert(a, 0);
        t.insert(b, 1);
        assert_eq!(t.lookup("x"), Some(0));
        a[31] ^= 2;
        assert_eq!(t.insert(a, 2), None);
        assert_eq!(t.buckets.len(), 1);
        assert_eq!(t.len(), 3);
    }
}
