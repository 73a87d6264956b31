//! Replay protection: an assertion is accepted once, by any worker of the Envoy process.
//!
//! Accepted assertions are remembered in shared data until they could no longer be accepted
//! anyway (their `NotOnOrAfter` plus the clock skew). The store is bounded: `BUCKETS` keys of
//! at most `PER_BUCKET` entries each (an entry is 16 bytes of SHA-256 over the issuer and the
//! assertion ID, and its expiry), chosen by the fingerprint, updated with compare-and-swap.
//! Expired entries are dropped on each write. A full bucket refuses the sign-on rather than
//! forgetting an assertion that could still be replayed: only assertions the IdP really
//! signed take room, so filling it takes more concurrent live sign-ons than the store holds.
//!
//! The keys are created at configuration time (`shared::ensure`), as Envoy does not check
//! the version of a write to a missing key.

use sha2::{Digest as _, Sha256};

use crate::shared::{self, SharedData, UpdateError};

pub const BUCKETS: usize = 64;
pub const PER_BUCKET: usize = 128;
const FINGERPRINT: usize = 16;
const ENTRY: usize = FINGERPRINT + 8;
const VERSION: u8 = 1;

/// What became of an assertion offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remember {
    /// First time seen; now remembered.
    Fresh,
    /// Accepted before, and still remembered.
    Replayed,
    /// Its bucket is full of live entries; nothing was written.
    Full,
}

/// Every shared-data key of the store.
pub fn bucket_keys() -> impl Iterator<Item = String> {
    (0..BUCKETS).map(bucket_key)
}

fn bucket_key(i: usize) -> String {
    format!("inference-gate/saml-replay/{i:02}")
}

/// The value of an empty bucket.
pub fn empty_bucket() -> Vec<u8> {
    vec![VERSION]
}

/// Remembers `assertion_id` of `issuer` until `keep_until_ms`, unless it is already there.
pub fn remember(
    store: &dyn SharedData,
    issuer: &str,
    assertion_id: &str,
    keep_until_ms: i64,
    now_ms: i64,
) -> Result<Remember, UpdateError> {
    let fingerprint = fingerprint(issuer, assertion_id);
    let bucket = bucket_of(&fingerprint);

    shared::update(store, &bucket_key(bucket), |current| {
        let mut entries: Vec<([u8; FINGERPRINT], i64)> = decode(current.unwrap_or(&[]))
            .into_iter()
            .filter(|(_, until)| *until > now_ms)
            .collect();
        if entries.iter().any(|(f, _)| *f == fingerprint) {
            return (None, Remember::Replayed);
        }
        if entries.len() >= PER_BUCKET {
            return (None, Remember::Full);
        }
        entries.push((fingerprint, keep_until_ms));
        (Some(encode(&entries)), Remember::Fresh)
    })
}

fn fingerprint(issuer: &str, assertion_id: &str) -> [u8; FINGERPRINT] {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0u8]);
    h.update(assertion_id.as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; FINGERPRINT];
    out.copy_from_slice(digest.get(..FINGERPRINT).unwrap_or(&[0; FINGERPRINT]));
    out
}

fn bucket_of(fingerprint: &[u8; FINGERPRINT]) -> usize {
    usize::from(u16::from_le_bytes([fingerprint[0], fingerprint[1]])) % BUCKETS
}

fn decode(bytes: &[u8]) -> Vec<([u8; FINGERPRINT], i64)> {
    let Some((&VERSION, body)) = bytes.split_first() else {
        return Vec::new();
    };
    body.chunks_exact(ENTRY)
        .filter_map(|chunk| {
            let (f, until) = chunk.split_at(FINGERPRINT);
            Some((
                f.try_into().ok()?,
                i64::from_le_bytes(until.try_into().ok()?),
            ))
        })
        .collect()
}

fn encode(entries: &[([u8; FINGERPRINT], i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * ENTRY);
    out.push(VERSION);
    for (f, until) in entries {
        out.extend_from_slice(f);
        out.extend_from_slice(&until.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::shared::fake::FakeShared;

    #[test]
    fn an_assertion_is_accepted_once_until_it_expires() {
        let s = FakeShared::default();
        assert_eq!(remember(&s, "idp", "a1", 1000, 0), Ok(Remember::Fresh));
        assert_eq!(remember(&s, "idp", "a1", 1000, 999), Ok(Remember::Replayed));
        // The same ID from another IdP is another assertion.
        assert_eq!(remember(&s, "idp2", "a1", 1000, 10), Ok(Remember::Fresh));
        // Forgotten once it could no longer be accepted anyway.
        assert_eq!(remember(&s, "idp", "a1", 3000, 1000), Ok(Remember::Fresh));
    }

    #[test]
    fn a_full_bucket_refuses_and_expired_entries_make_room() {
        let s = FakeShared::default();
        let bucket = bucket_of(&fingerprint("idp", "x0"));
        let same: Vec<String> = (1..)
            .map(|i| format!("x{i}"))
            .filter(|id| bucket_of(&fingerprint("idp", id)) == bucket)
            .take(PER_BUCKET)
            .collect();
        assert_eq!(remember(&s, "idp", "x0", 500, 0), Ok(Remember::Fresh));
        for id in &same[..PER_BUCKET - 1] {
            assert_eq!(remember(&s, "idp", id, 1000, 0), Ok(Remember::Fresh));
        }
        let last = &same[PER_BUCKET - 1];
        let before = s.map.borrow().clone();
        assert_eq!(remember(&s, "idp", last, 1000, 0), Ok(Remember::Full));
        assert_eq!(*s.map.borrow(), before, "a full bucket is not written");
        // Once "x0" (kept until 500) has expired, there is room again.
        assert_eq!(remember(&s, "idp", last, 1000, 600), Ok(Remember::Fresh));
        assert_eq!(remember(&s, "idp", last, 1000, 600), Ok(Remember::Replayed));
    }

    #[test]
    fn store_errors_are_reported() {
        let s = FakeShared::default();
        s.fail.set(true);
        assert!(remember(&s, "idp", "a", 1, 0).is_err());
        s.fail.set(false);
        s.conflicts.set(crate::shared::MAX_CAS_ATTEMPTS);
        assert_eq!(remember(&s, "idp", "a", 1, 0), Err(UpdateError::Contended));
    }

    #[test]
    fn a_damaged_bucket_reads_as_empty() {
        assert!(decode(&[9, 1, 2]).is_empty());
        assert!(decode(&[]).is_empty());
        let e = encode(&[([7; FINGERPRINT], 42)]);
        assert_eq!(decode(&e), vec![([7; FINGERPRINT], 42)]);
    }

    #[test]
    fn keys_are_fixed() {
        let keys: Vec<String> = bucket_keys().collect();
        assert_eq!(keys.len(), BUCKETS);
        assert_eq!(keys[0], "inference-gate/saml-replay/00");
    }
}
