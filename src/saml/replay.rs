//! Replay protection: an assertion is accepted once, by any worker of the Envoy process.
//!
//! Accepted assertions are remembered in shared data until they could no longer be accepted
//! anyway. The store is bounded: `BUCKETS` keys of at most `PER_BUCKET` entries each (an entry
//! is 16 bytes of SHA-256 over the issuer and the assertion ID, and its expiry), chosen by the
//! fingerprint, updated with compare-and-swap. Expired entries are dropped on each write. A
//! full bucket refuses the sign-on rather than forgetting an assertion that could still be
//! replayed: only assertions an IdP really signed take room, and how long each stays is
//! bounded by the caller (`assertion::MAX_AGE_MS` after its issue, plus the skew).
//!
//! One IdP cannot crowd out the others: when several share the store, each may hold at most
//! `PER_BUCKET / min(IdPs, MAX_SHARES)` live entries of a bucket (`issuer_quota`), so an IdP
//! that signs a flood of assertions (or one whose signing key an attacker holds) refuses its
//! own tenant's sign-ons, not everyone's.
//!
//! Each entry is followed by a record naming its issuer, written as an entry that expired
//! before 1970. The previous version of this filter, which may still run beside this one while
//! Envoy drains, drops those records as expired and keeps every real entry, so neither version
//! forgets what the other remembered; entries it wrote back count as no issuer's.
//!
//! The keys are created at configuration time (`shared::ensure`), as Envoy does not check
//! the version of a write to a missing key.

use sha2::{Digest as _, Sha256};

use crate::shared::{self, SharedData, UpdateError};

pub const BUCKETS: usize = 64;
pub const PER_BUCKET: usize = 128;
/// The smallest share of a bucket an IdP gets: a quarter, however many IdPs there are.
pub const MAX_SHARES: usize = 4;
const FINGERPRINT: usize = 16;
const ENTRY: usize = FINGERPRINT + 8;
const VERSION: u8 = 1;
/// The expiry field of a record that names the issuer of the entry before it.
const ISSUER_RECORD: i64 = -1;

type Fingerprint = [u8; FINGERPRINT];

/// What became of an assertion offered to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remember {
    /// First time seen; now remembered.
    Fresh,
    /// Accepted before, and still remembered.
    Replayed,
    /// Its issuer already holds its share of the bucket in live entries; nothing was written.
    IssuerFull,
    /// Its bucket is full of live entries; nothing was written.
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    fingerprint: Fingerprint,
    /// Who issued it; `None` for an entry written back by the previous version.
    issuer: Option<Fingerprint>,
    until_ms: i64,
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

/// How many live entries of one bucket an issuer may hold when `issuers` IdPs sign in
/// through this gateway.
pub fn issuer_quota(issuers: usize) -> usize {
    PER_BUCKET / issuers.clamp(1, MAX_SHARES)
}

/// Remembers `assertion_id` of `issuer` until `keep_until_ms`, unless it is already there;
/// `issuers` is how many IdPs share the store.
pub fn remember(
    store: &dyn SharedData,
    issuer: &str,
    assertion_id: &str,
    keep_until_ms: i64,
    now_ms: i64,
    issuers: usize,
) -> Result<Remember, UpdateError> {
    let fingerprint = fingerprint(issuer, assertion_id);
    let issuer_tag = issuer_tag(issuer);
    let bucket = bucket_of(&fingerprint);

    shared::update(store, &bucket_key(bucket), |current| {
        let mut entries: Vec<Entry> = decode(current.unwrap_or(&[]))
            .into_iter()
            .filter(|e| e.until_ms > now_ms)
            .collect();
        if entries.iter().any(|e| e.fingerprint == fingerprint) {
            return (None, Remember::Replayed);
        }
        let held = entries
            .iter()
            .filter(|e| e.issuer == Some(issuer_tag))
            .count();
        if held >= issuer_quota(issuers) {
            return (None, Remember::IssuerFull);
        }
        if entries.len() >= PER_BUCKET {
            return (None, Remember::Full);
        }
        entries.push(Entry {
            fingerprint,
            issuer: Some(issuer_tag),
            until_ms: keep_until_ms,
        });
        (Some(encode(&entries)), Remember::Fresh)
    })
}

/// The shared-data key that would remember `assertion_id` of `issuer`.
#[cfg(test)]
pub(crate) fn key_of(issuer: &str, assertion_id: &str) -> String {
    bucket_key(bucket_of(&fingerprint(issuer, assertion_id)))
}

fn fingerprint(issuer: &str, assertion_id: &str) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0u8]);
    h.update(assertion_id.as_bytes());
    truncate(h)
}

fn issuer_tag(issuer: &str) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"inference-gate saml issuer\0");
    h.update(issuer.as_bytes());
    truncate(h)
}

fn truncate(h: Sha256) -> Fingerprint {
    let digest = h.finalize();
    let mut out = [0u8; FINGERPRINT];
    out.copy_from_slice(digest.get(..FINGERPRINT).unwrap_or(&[0; FINGERPRINT]));
    out
}

fn bucket_of(fingerprint: &Fingerprint) -> usize {
    usize::from(u16::from_le_bytes([fingerprint[0], fingerprint[1]])) % BUCKETS
}

fn decode(bytes: &[u8]) -> Vec<Entry> {
    let Some((&VERSION, body)) = bytes.split_first() else {
        return Vec::new();
    };
    let mut entries: Vec<Entry> = Vec::new();
    for chunk in body.chunks_exact(ENTRY) {
        let (f, until) = chunk.split_at(FINGERPRINT);
        let (Ok(f), Ok(until)) = (Fingerprint::try_from(f), <[u8; 8]>::try_from(until)) else {
            continue;
        };
        match i64::from_le_bytes(until) {
            ISSUER_RECORD => {
                if let Some(last) = entries.last_mut().filter(|e| e.issuer.is_none()) {
                    last.issuer = Some(f);
                }
            }
            until_ms => entries.push(Entry {
                fingerprint: f,
                issuer: None,
                until_ms,
            }),
        }
    }
    entries
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + entries.len() * 2 * ENTRY);
    out.push(VERSION);
    for e in entries {
        out.extend_from_slice(&e.fingerprint);
        out.extend_from_slice(&e.until_ms.to_le_bytes());
        if let Some(issuer) = e.issuer {
            out.extend_from_slice(&issuer);
            out.extend_from_slice(&ISSUER_RECORD.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::shared::fake::FakeShared;

    /// IDs of `issuer` whose entries fall in the same bucket as `first`'s.
    fn same_bucket(issuer: &str, first: &str, n: usize) -> Vec<String> {
        let bucket = bucket_of(&fingerprint(issuer, first));
        (1..)
            .map(|i| format!("{first}-{i}"))
            .filter(|id| bucket_of(&fingerprint(issuer, id)) == bucket)
            .take(n)
            .collect()
    }

    #[test]
    fn an_assertion_is_accepted_once_until_it_expires() {
        let s = FakeShared::default();
        assert_eq!(remember(&s, "idp", "a1", 1000, 0, 1), Ok(Remember::Fresh));
        assert_eq!(
            remember(&s, "idp", "a1", 1000, 999, 1),
            Ok(Remember::Replayed)
        );
        // The same ID from another IdP is another assertion.
        assert_eq!(remember(&s, "idp2", "a1", 1000, 10, 2), Ok(Remember::Fresh));
        // Forgotten once it could no longer be accepted anyway.
        assert_eq!(
            remember(&s, "idp", "a1", 3000, 1000, 1),
            Ok(Remember::Fresh)
        );
    }

    #[test]
    fn a_full_bucket_refuses_and_expired_entries_make_room() {
        let s = FakeShared::default();
        // With one IdP, it may fill a whole bucket: there is no one else to crowd out.
        let same = same_bucket("idp", "x0", PER_BUCKET);
        assert_eq!(remember(&s, "idp", "x0", 500, 0, 1), Ok(Remember::Fresh));
        for id in &same[..PER_BUCKET - 1] {
            assert_eq!(remember(&s, "idp", id, 1000, 0, 1), Ok(Remember::Fresh));
        }
        let last = &same[PER_BUCKET - 1];
        let before = s.map.borrow().clone();
        assert_eq!(
            remember(&s, "idp", last, 1000, 0, 1),
            Ok(Remember::IssuerFull)
        );
        assert_eq!(*s.map.borrow(), before, "a full bucket is not written");
        // Once "x0" (kept until 500) has expired, there is room again.
        assert_eq!(remember(&s, "idp", last, 1000, 600, 1), Ok(Remember::Fresh));
        assert_eq!(
            remember(&s, "idp", last, 1000, 600, 1),
            Ok(Remember::Replayed)
        );

        // A bucket full of entries that are no issuer's (written back by the previous
        // version) refuses every issuer.
        let key = key_of("idp", "x0");
        let theirs: Vec<(Fingerprint, i64)> = (0..PER_BUCKET)
            .map(|i| ([u8::try_from(i).unwrap(); FINGERPRINT], 1000))
            .collect();
        s.map
            .borrow_mut()
            .insert(key.clone(), (previous_encode(&theirs), 7));
        assert_eq!(remember(&s, "idp", "x0", 1000, 600, 2), Ok(Remember::Full));
        assert_eq!(
            remember(&s, "idp", "x0", 1000, 1000, 2),
            Ok(Remember::Fresh)
        );
    }

    #[test]
    fn one_issuer_cannot_take_more_than_its_share_of_a_bucket() {
        let s = FakeShared::default();
        let flood = same_bucket("evil-idp", "x", PER_BUCKET);
        let bucket = bucket_of(&fingerprint("evil-idp", &flood[0]));
        let quota = issuer_quota(5);
        assert_eq!(quota, PER_BUCKET / MAX_SHARES);

        // A flood of far-future assertions from one IdP takes its share, then is refused.
        for id in &flood[..quota] {
            assert_eq!(
                remember(&s, "evil-idp", id, i64::MAX, 0, 5),
                Ok(Remember::Fresh)
            );
        }
        let before = s.map.borrow().clone();
        for id in &flood[quota..] {
            assert_eq!(
                remember(&s, "evil-idp", id, i64::MAX, 0, 5),
                Ok(Remember::IssuerFull)
            );
        }
        assert_eq!(*s.map.borrow(), before, "nothing is written over the quota");
        // What it did store is still remembered.
        assert_eq!(
            remember(&s, "evil-idp", &flood[0], i64::MAX, 0, 5),
            Ok(Remember::Replayed)
        );

        // Every other IdP still signs in through that bucket, each up to its own share.
        for other in ["idp-a", "idp-b", "idp-c"] {
            let ids: Vec<String> = (0..)
                .map(|i| format!("{other}-{i}"))
                .filter(|id| bucket_of(&fingerprint(other, id)) == bucket)
                .take(quota + 1)
                .collect();
            for id in &ids[..quota] {
                assert_eq!(remember(&s, other, id, 1000, 0, 5), Ok(Remember::Fresh));
            }
            assert_eq!(
                remember(&s, other, &ids[quota], 1000, 0, 5),
                Ok(Remember::IssuerFull)
            );
        }
        // The bucket is now full, every IdP at its share.
        assert_eq!(
            decode(&s.map.borrow()[&bucket_key(bucket)].0).len(),
            PER_BUCKET
        );
    }

    #[test]
    fn the_share_shrinks_with_the_number_of_idps_down_to_a_quarter() {
        let shares: Vec<usize> = [0, 1, 2, 3, 4, 5, 1000]
            .into_iter()
            .map(issuer_quota)
            .collect();
        assert_eq!(shares, [128, 128, 64, 42, 32, 32, 32]);
    }

    /// How the previous version of the filter read a bucket (one record per entry, no issuer).
    fn previous_decode(bytes: &[u8]) -> Vec<(Fingerprint, i64)> {
        let Some((&1, body)) = bytes.split_first() else {
            return Vec::new();
        };
        body.chunks_exact(ENTRY)
            .map(|c| {
                let (f, until) = c.split_at(FINGERPRINT);
                (
                    f.try_into().unwrap(),
                    i64::from_le_bytes(until.try_into().unwrap()),
                )
            })
            .collect()
    }

    fn previous_encode(entries: &[(Fingerprint, i64)]) -> Vec<u8> {
        let mut out = vec![1];
        for (f, until) in entries {
            out.extend_from_slice(f);
            out.extend_from_slice(&until.to_le_bytes());
        }
        out
    }

    #[test]
    fn the_previous_version_keeps_every_entry_and_this_one_reads_its_buckets() {
        let s = FakeShared::default();
        let ids = same_bucket("idp", "p", 3);
        for id in &ids[..2] {
            assert_eq!(remember(&s, "idp", id, 1000, 0, 2), Ok(Remember::Fresh));
        }
        let key = bucket_key(bucket_of(&fingerprint("idp", &ids[0])));
        let written = s.map.borrow()[&key].0.clone();

        // The previous version sees the two entries, live, and the issuer records as expired
        // entries it drops: what it writes back still holds both.
        let live: Vec<(Fingerprint, i64)> = previous_decode(&written)
            .into_iter()
            .filter(|(_, until)| *until > 0)
            .collect();
        let expected: Vec<(Fingerprint, i64)> = ids[..2]
            .iter()
            .map(|id| (fingerprint("idp", id), 1000))
            .collect();
        assert_eq!(live, expected);

        // This version reads a bucket the previous one wrote: the entries are there, as no
        // issuer's, and are still refused as replays.
        let mut theirs = live.clone();
        theirs.push((fingerprint("idp", &ids[2]), 1000));
        s.map
            .borrow_mut()
            .insert(key, (previous_encode(&theirs), 99));
        for id in &ids {
            assert_eq!(remember(&s, "idp", id, 1000, 10, 2), Ok(Remember::Replayed));
        }
        assert!(decode(&previous_encode(&theirs))
            .iter()
            .all(|e| e.issuer.is_none()));
    }

    #[test]
    fn store_errors_are_reported() {
        let s = FakeShared::default();
        s.fail.set(true);
        assert!(remember(&s, "idp", "a", 1, 0, 1).is_err());
        s.fail.set(false);
        s.conflicts.set(crate::shared::MAX_CAS_ATTEMPTS);
        assert_eq!(
            remember(&s, "idp", "a", 1, 0, 1),
            Err(UpdateError::Contended)
        );
    }

    #[test]
    fn a_damaged_bucket_reads_as_empty() {
        assert!(decode(&[9, 1, 2]).is_empty());
        assert!(decode(&[]).is_empty());
        let entry = Entry {
            fingerprint: [7; FINGERPRINT],
            issuer: Some([8; FINGERPRINT]),
            until_ms: 42,
        };
        assert_eq!(decode(&encode(&[entry])), vec![entry]);
        // An issuer record with no entry before it is ignored.
        let mut stray = vec![VERSION];
        stray.extend_from_slice(&[8; FINGERPRINT]);
        stray.extend_from_slice(&ISSUER_RECORD.to_le_bytes());
        assert!(decode(&stray).is_empty());
    }

    #[test]
    fn keys_are_fixed() {
        let keys: Vec<String> = bucket_keys().collect();
        assert_eq!(keys.len(), BUCKETS);
        assert_eq!(keys[0], "inference-gate/saml-replay/00");
    }
}
