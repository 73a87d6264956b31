//! The collector's tenant snapshot: reading its JSON (what `GET /v1/tenants/snapshot`
//! answers) and the compact binary form the syncing worker publishes in shared data for the
//! other workers.
//!
//! JSON, unknown fields ignored so that a newer collector can add some:
//!
//! ```json
//! {"version": 42, "healthy": true, "tenants": [
//!   {"id": "acme", "rate_limit": 600, "token_budget": 200000,
//!    "suspended": false, "allowed_models": ["m1"], "api_key_sha256": ["<64 hex>"]}]}
//! ```
//!
//! A document of the wrong shape is refused whole (the last good snapshot stays in force);
//! a tenant that breaks a rule of the filter's configuration (its id, a limit, a digest) is
//! left out, and the caller logs why. The filter never fails open: a tenant it cannot read
//! is a tenant whose keys do not work.

use std::borrow::Cow;

use serde::Deserialize;

use crate::auth::Digest;
use crate::config::{check_limit, check_tenant_id, parse_digest};

/// Most models an allow-list may hold, and the longest name in characters (the collector's
/// own bounds: a name the collector took must never make the filter leave its tenant out).
pub const MAX_MODELS: usize = 1000;
pub const MAX_MODEL_LEN: usize = 256;
/// Most keys one tenant may hold in a snapshot.
pub const MAX_KEYS: usize = 1024;

/// A registry snapshot as the filter enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    /// `false`: the operator drains the fleet (`PUT /v1/health {"healthy": false}`).
    pub healthy: bool,
    pub tenants: Vec<RegistryTenant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTenant {
    pub id: String,
    pub rate_limit: u64,
    pub token_budget: u64,
    pub suspended: bool,
    /// `None`: every model; otherwise sorted, without repeats.
    pub allowed_models: Option<Vec<String>>,
    pub keys: Vec<Digest>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    version: u64,
    healthy: bool,
    #[serde(borrow)]
    tenants: Vec<WireTenant<'a>>,
}

#[derive(Deserialize)]
struct WireTenant<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    rate_limit: u64,
    token_budget: u64,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    allowed_models: Option<Vec<String>>,
    #[serde(borrow, default)]
    api_key_sha256: Vec<Cow<'a, str>>,
}

/// Reads a snapshot body. `Err` for a document that is not a snapshot; otherwise the
/// snapshot and, for each tenant left out, why (naming the tenant, never a digest).
pub fn parse(body: &[u8]) -> Result<(Snapshot, Vec<String>), String> {
    let wire: Wire<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    // Ids are checked for repeats on the borrowed text: no copy of each id just for that.
    let mut seen = std::collections::HashSet::with_capacity(wire.tenants.len());
    let mut tenants = Vec::with_capacity(wire.tenants.len());
    for (i, t) in wire.tenants.iter().enumerate() {
        if !seen.insert(t.id.as_ref()) {
            problems.push(format!("tenants[{i}] ({}): the id is given twice", t.id));
            continue;
        }
        match tenant(t) {
            Ok(t) => tenants.push(t),
            Err(why) => problems.push(format!("tenants[{i}]: {why}")),
        }
    }
    Ok((
        Snapshot {
            version: wire.version,
            healthy: wire.healthy,
            tenants,
        },
        problems,
    ))
}

fn tenant(t: &WireTenant<'_>) -> Result<RegistryTenant, String> {
    check_tenant_id(&t.id).map_err(|m| format!("id: {m}"))?;
    let named = |field: &str, m: String| format!("({}) {field}: {m}", t.id);
    check_limit(t.rate_limit).map_err(|m| named("rate_limit", m))?;
    check_limit(t.token_budget).map_err(|m| named("token_budget", m))?;
    if t.api_key_sha256.len() > MAX_KEYS {
        return Err(named(
            "api_key_sha256",
            format!("more than {MAX_KEYS} keys"),
        ));
    }
    let mut keys = Vec::with_capacity(t.api_key_sha256.len());
    for (k, hex) in t.api_key_sha256.iter().enumerate() {
        keys.push(parse_digest(hex).map_err(|m| named(&format!("api_key_sha256[{k}]"), m))?);
    }
    let allowed_models = match &t.allowed_models {
        None => None,
        Some(models) => {
            let mut models = models.clone();
            let bad = models.iter().any(|m| {
                m.is_empty() || m.chars().count() > MAX_MODEL_LEN || m.contains(char::is_control)
            });
            if models.is_empty() || models.len() > MAX_MODELS || bad {
                return Err(named(
                    "allowed_models",
                    format!("must hold 1 to {MAX_MODELS} names of 1 to {MAX_MODEL_LEN} characters"),
                ));
            }
            models.sort_unstable();
            models.dedup();
            Some(models)
        }
    };
    Ok(RegistryTenant {
        id: t.id.to_string(),
        rate_limit: t.rate_limit,
        token_budget: t.token_budget,
        suspended: t.suspended,
        allowed_models,
        keys,
    })
}

// ---------------------------------------------------------------------------------------------
// The binary form in shared data: `IGR1`, then little-endian fields:
//   version u64, healthy u8, tenant count u32, and per tenant:
//   id (u8 length + bytes), rate_limit u64, token_budget u64, suspended u8,
//   models: u16 count (0xFFFF: every model) + each (u16 length + bytes),
//   keys: u16 count + 32 bytes each.

const MAGIC: &[u8; 4] = b"IGR1";
const EVERY_MODEL: u16 = u16::MAX;

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let per_tenant: usize = self
            .tenants
            .iter()
            .map(|t| 1 + t.id.len() + 8 + 8 + 1 + 2 + 2 + 32 * t.keys.len())
            .sum();
        let mut out = Vec::with_capacity(4 + 8 + 1 + 4 + per_tenant);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(u8::from(self.healthy));
        out.extend_from_slice(&u32::try_from(self.tenants.len()).unwrap_or(0).to_le_bytes());
        for t in &self.tenants {
            // Ids are at most 128 bytes, model names 256, keys 1024 (checked in `parse`).
            out.push(u8::try_from(t.id.len()).unwrap_or(0));
            out.extend_from_slice(t.id.as_bytes());
            out.extend_from_slice(&t.rate_limit.to_le_bytes());
            out.extend_from_slice(&t.token_budget.to_le_bytes());
            out.push(u8::from(t.suspended));
            match &t.allowed_models {
                None => out.extend_from_slice(&EVERY_MODEL.to_le_bytes()),
                Some(models) => {
                    out.extend_from_slice(&u16::try_from(models.len()).unwrap_or(0).to_le_bytes());
                    for m in models {
                        out.extend_from_slice(&u16::try_from(m.len()).unwrap_or(0).to_le_bytes());
                        out.extend_from_slice(m.as_bytes());
                    }
                }
            }
            out.extend_from_slice(&u16::try_from(t.keys.len()).unwrap_or(0).to_le_bytes());
            for k in &t.keys {
                out.extend_from_slice(k);
            }
        }
        out
    }

    /// `None` for anything that is not a snapshot this code wrote.
    pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let version = r.u64()?;
        let healthy = r.u8()? != 0;
        let count = r.u32()? as usize;
        // Each tenant takes at least 24 bytes: a count larger than that is corrupt.
        let mut tenants = Vec::with_capacity(count.min(bytes.len() / 24));
        for _ in 0..count {
            let id_len = usize::from(r.u8()?);
            let id = std::str::from_utf8(r.take(id_len)?).ok()?.to_string();
            let rate_limit = r.u64()?;
            let token_budget = r.u64()?;
            let suspended = r.u8()? != 0;
            let allowed_models = match r.u16()? {
                EVERY_MODEL => None,
                n => {
                    let mut models = Vec::with_capacity(usize::from(n));
                    for _ in 0..n {
                        let len = usize::from(r.u16()?);
                        models.push(std::str::from_utf8(r.take(len)?).ok()?.to_string());
                    }
                    Some(models)
                }
            };
            let key_count = usize::from(r.u16()?);
            let mut keys = Vec::with_capacity(key_count);
            for _ in 0..key_count {
                keys.push(Digest::try_from(r.take(32)?).ok()?);
            }
            tenants.push(RegistryTenant {
                id,
                rate_limit,
                token_budget,
                suspended,
                allowed_models,
                keys,
            });
        }
        (r.at == bytes.len()).then_some(Snapshot {
            version,
            healthy,
            tenants,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::digest_key;

    fn hex_of(key: &str) -> String {
        hex::encode(digest_key(key))
    }

    fn body(tenants: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"version": 7, "healthy": true, "tenants": tenants})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_snapshot_is_read_with_its_defaults() {
        let (s, problems) = parse(&body(serde_json::json!([
            {"id": "acme", "rate_limit": 60, "token_budget": 1000, "api_key_sha256": [hex_of("k1")],
             "allowed_models": ["m2", "m1", "m2"], "suspended": true, "plan": "gold"},
            {"id": "globex", "rate_limit": 5, "token_budget": 200, "api_key_sha256": []}
        ])))
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((s.version, s.healthy), (7, true));
        let acme = &s.tenants[0];
        assert_eq!(acme.keys, vec![digest_key("k1")]);
        assert!(acme.suspended);
        assert_eq!(acme.allowed_models, Some(vec!["m1".into(), "m2".into()]));
        let globex = &s.tenants[1];
        assert!(!globex.suspended && globex.allowed_models.is_none() && globex.keys.is_empty());
    }

    #[test]
    fn a_document_of_the_wrong_shape_is_refused_whole() {
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"version": 1, "healthy": true}"#,
            br#"{"version": -1, "healthy": true, "tenants": []}"#,
            br#"{"version": 1, "healthy": "yes", "tenants": []}"#,
            br#"{"version": 1, "healthy": true, "tenants": [{"id": "a"}]}"#,
            br#"{"version": 1, "healthy": true, "tenants": [{"id": "a", "rate_limit": "1", "token_budget": 1}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_tenant_that_breaks_a_rule_is_left_out_and_named() {
        let (s, problems) = parse(&body(serde_json::json!([
            {"id": "ok", "rate_limit": 1, "token_budget": 1, "api_key_sha256": [hex_of("a")]},
            {"id": "bad id", "rate_limit": 1, "token_budget": 1},
            {"id": "zero", "rate_limit": 0, "token_budget": 1},
            {"id": "digest", "rate_limit": 1, "token_budget": 1, "api_key_sha256": ["abc"]},
            {"id": "models", "rate_limit": 1, "token_budget": 1, "allowed_models": []},
            {"id": "ok", "rate_limit": 2, "token_budget": 2},
        ])))
        .unwrap();
        assert_eq!(s.tenants.len(), 1);
        assert_eq!(s.tenants[0].rate_limit, 1);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].starts_with("tenants[1]: id:"), "{problems:?}");
        assert!(
            problems[2].contains("(digest) api_key_sha256[0]"),
            "{problems:?}"
        );
        assert!(problems[4].contains("given twice"), "{problems:?}");
    }

    /// The collector's rule for model names counts characters, not bytes.
    #[test]
    fn model_names_are_bounded_in_characters_as_the_collector_does() {
        let long = "模".repeat(MAX_MODEL_LEN);
        let (s, problems) = parse(&body(serde_json::json!([
            {"id": "a", "rate_limit": 1, "token_budget": 1, "allowed_models": [long]},
            {"id": "b", "rate_limit": 1, "token_budget": 1, "allowed_models": [format!("{long}x")]},
        ])))
        .unwrap();
        assert_eq!(s.tenants.len(), 1, "{problems:?}");
        assert_eq!(s.tenants[0].allowed_models, Some(vec![long.clone()]));
        assert!(problems[0].contains("(b) allowed_models"), "{problems:?}");
        assert_eq!(Snapshot::decode(&s.encode()), Some(s));
    }

    #[test]
    fn the_binary_form_round_trips_and_refuses_damage() {
        let (s, _) = parse(&body(serde_json::json!([
            {"id": "acme", "rate_limit": 60, "token_budget": 1000,
             "api_key_sha256": [hex_of("k1"), hex_of("k2")], "allowed_models": ["m1"]},
            {"id": "x", "rate_limit": 1u64 << 40, "token_budget": 1, "suspended": true}
        ])))
        .unwrap();
        let bytes = s.encode();
        assert_eq!(Snapshot::decode(&bytes), Some(s.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(Snapshot::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Snapshot::decode(&longer), None);
        let empty = Snapshot {
            version: 0,
            healthy: false,
            tenants: vec![],
        };
        assert_eq!(Snapshot::decode(&empty.encode()), Some(empty));
        // A tenant count no body could hold does not allocate for it.
        let mut huge = b"IGR1".to_vec();
        huge.extend_from_slice(&[0; 9]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Snapshot::decode(&huge), None);
    }
}
