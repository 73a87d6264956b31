//! New API keys and key ids. A key is `ig-` and 32 random bytes in base64url (256 bits from
//! the operating system's generator); it is shown once, when it is made, and only its SHA-256
//! is stored. A key id (`key_` and 12 hex digits) names a key in the API and the audit trail.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// What every key starts with, so that one found in a log or a repository is recognisable.
pub const KEY_PREFIX: &str = "ig-";

/// A new key: the text to hand to the tenant once, and what is stored.
pub struct IssuedKey {
    pub key_id: String,
    pub api_key: String,
    pub sha256: String,
}

/// Never prints the key.
impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why no key could be made: the system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

pub fn issue() -> Result<IssuedKey, NoRandomness> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| NoRandomness(e.to_string()))?;
    let api_key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    Ok(IssuedKey {
        key_id: format!("key_{}", random_hex(6)?),
        sha256: sha256_hex(&api_key),
        api_key,
    })
}

/// SHA-256 of a key's text in lowercase hex: what the filter compares.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `bytes` random bytes in hex, for ids.
pub fn random_hex(bytes: usize) -> Result<String, NoRandomness> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| NoRandomness(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// Whether `text` has the shape of an API key (`ig-` and 43 base64url characters). Such text
/// is never a tenant id, and never kept in the audit trail or a log where an operator pasted
/// it by mistake (a key given for its key id).
pub fn looks_like_key(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_TEXT_LEN
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

/// What stands in the audit trail and the log for text that looks like a key.
pub const REDACTED_KEY: &str = "ig-<redacted>";

/// Length of a key after its prefix: 32 bytes in unpadded base64url.
const KEY_TEXT_LEN: usize = 43;

/// The part of a digest the API shows, to tell a tenant's keys apart.
pub fn digest_prefix(sha256: &str) -> &str {
    sha256.get(..8).unwrap_or(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_stored_as_their_digest() {
        let a = issue().unwrap();
        let b = issue().unwrap();
        assert!(a.api_key.starts_with("ig-"));
        // 32 bytes in unpadded base64url.
        assert_eq!(a.api_key.len(), 3 + 43);
        assert!(a.api_key[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a.api_key, b.api_key);
        assert_ne!(a.key_id, b.key_id);
        assert_eq!(a.sha256, sha256_hex(&a.api_key));
        assert_eq!(a.sha256.len(), 64);
        assert!(!format!("{a:?}").contains(&a.api_key));
        assert!(a.key_id.starts_with("key_") && a.key_id.len() == 16);
        assert!(looks_like_key(&a.api_key));
        assert!(!looks_like_key(&a.key_id));
        assert!(!looks_like_key(&a.api_key[..45]));
        assert!(!looks_like_key(&format!("{}x", a.api_key)));
        assert!(!looks_like_key(&a.api_key.replacen("ig-", "ig+", 1)));
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest_prefix("ba7816bf8f01cfea"), "ba7816bf");
        assert_eq!(digest_prefix("ab"), "ab");
    }
}
