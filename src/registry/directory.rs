//! The tenants a worker enforces: the static ones of the plugin configuration merged with
//! the registry's, behind one key table (O(1) lookups, whatever the number of tenants).
//!
//! Merge rule: **static wins**. A registry tenant whose id a static tenant has is left out
//! whole (the configuration deployed with Envoy cannot be overridden over the network); a
//! registry key whose digest a static tenant holds is left out. A digest two registry
//! tenants both hold (the collector never allows it) is given to neither: a key must never
//! map to two tenants. Static tenants are never suspended and may use every model.
//!
//! Static tenants come first, in configuration order, so a static tenant's index is the
//! same in every directory (SAML session tokens name static tenants by that index).

use std::collections::HashSet;

use super::snapshot::Snapshot;
use crate::auth::{Digest, KeyTable};
use crate::config::{Config, Tenant};

/// Where a tenant comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Registry,
}

/// A tenant and what the registry says about it beyond its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub tenant: Tenant,
    pub suspended: bool,
    /// `None`: every model; otherwise sorted.
    pub allowed_models: Option<Vec<String>>,
    pub source: Source,
}

impl Entry {
    /// Whether this tenant may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|models| models.binary_search_by(|m| m.as_str().cmp(model)).is_ok())
    }
}

/// The merged table of one worker. Read-only once built; a newer snapshot builds a new one.
#[derive(Debug)]
pub struct Directory {
    entries: Vec<Entry>,
    keys: KeyTable,
    /// The registry snapshot merged in; 0 before the first one.
    pub version: u64,
    /// The drain flag: `false` answers `/healthz` and inference with `503`.
    pub healthy: bool,
    /// Registry tenants in force.
    pub registry_tenants: usize,
}

impl Directory {
    /// The static tenants alone: before the first snapshot, or without a registry.
    pub fn from_config(config: &Config) -> Directory {
        Directory {
            entries: config.tenants.iter().map(static_entry).collect(),
            keys: config.keys.clone(),
            version: 0,
            healthy: true,
            registry_tenants: 0,
        }
    }

    /// The static tenants and the snapshot's, merged; and a line for each thing the merge
    /// left out.
    pub fn build(config: &Config, snapshot: &Snapshot) -> (Directory, Vec<String>) {
        let mut directory = Directory::from_config(config);
        directory.version = snapshot.version;
        directory.healthy = snapshot.healthy;
        directory.entries.reserve(snapshot.tenants.len());
        let statics = directory.entries.len();
        let static_ids: HashSet<&str> = config.tenants.iter().map(|t| t.id.as_str()).collect();

        let mut notes = Vec::new();
        // Digests two registry tenants claim: taken out, and kept out.
        let mut ambiguous: HashSet<Digest> = HashSet::new();
        for t in &snapshot.tenants {
            if static_ids.contains(t.id.as_str()) {
                notes.push(format!(
                    "registry tenant {} ignored: a static tenant has this id (static wins)",
                    t.id
                ));
                continue;
            }
            let index = directory.entries.len();
            for digest in &t.keys {
                if ambiguous.contains(digest) {
                    continue;
                }
                match directory.keys.insert(*digest, index) {
                    None => {}
                    // The same digest twice in one tenant.
                    Some(owner) if owner == index => {}
                    Some(owner) if owner < statics => notes.push(format!(
                        "a key of registry tenant {} ignored: a static tenant holds it (static wins)",
                        t.id
                    )),
                    Some(owner) => {
                        let other = directory.entries.get(owner).map_or("?", |e| e.tenant.id.as_str());
                        notes.push(format!(
                            "a key held by registry tenants {other} and {} works for neither",
                            t.id
                        ));
                        directory.keys.remove(digest);
                        ambiguous.insert(*digest);
                    }
                }
            }
            directory.entries.push(Entry {
                tenant: Tenant {
                    id: t.id.clone(),
                    rate_limit: t.rate_limit,
                    token_budget: t.token_budget,
                },
                suspended: t.suspended,
                allowed_models: t.allowed_models.clone(),
                source: Source::Registry,
            });
        }
        directory.registry_tenants = directory.entries.len() - statics;
        (directory, notes)
    }

    /// The index of the tenant that holds `key`, compared in constant time.
    pub fn lookup(&self, key: &str) -> Option<usize> {
        self.keys.lookup(key)
    }

    pub fn entry(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    pub fn tenant(&self, index: usize) -> Option<&Tenant> {
        self.entry(index).map(|e| &e.tenant)
    }

    /// Tenants in force, static and registry.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }
}

fn static_entry(t: &Tenant) -> Entry {
    Entry {
        tenant: t.clone(),
        suspended: false,
        allowed_models: None,
        source: Source::Static,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::digest_key;
    use crate::registry::snapshot::RegistryTenant;

    fn config() -> Config {
        let json = serde_json::json!({
            "tenants": [
                {"id": "acme", "api_key_sha256": hex::encode(digest_key("static-acme")),
                 "rate_limit": 60, "token_budget": 1000}
            ],
            "collector": {"cluster": "collector", "ingest_token": "ingest-token-1"}
        });
        Config::parse(json.to_string().as_bytes()).unwrap()
    }

    fn tenant(id: &str, keys: &[&str]) -> RegistryTenant {
        RegistryTenant {
            id: id.into(),
            rate_limit: 5,
            token_budget: 50,
            suspended: false,
            allowed_models: None,
            keys: keys.iter().map(|k| digest_key(k)).collect(),
        }
    }

    fn snapshot(tenants: Vec<RegistryTenant>) -> Snapshot {
        Snapshot {
            version: 3,
            healthy: true,
            tenants,
        }
    }

    fn who(d: &Directory, key: &str) -> Option<String> {
        d.lookup(key)
            .and_then(|i| d.tenant(i))
            .map(|t| t.id.clone())
    }

    #[test]
    fn static_tenants_come_first_and_registry_tenants_join_them() {
        let c = config();
        let alone = Directory::from_config(&c);
        assert_eq!((alone.len(), alone.version, alone.healthy), (1, 0, true));
        assert_eq!(who(&alone, "static-acme").as_deref(), Some("acme"));

        let (d, notes) = Directory::build(&c, &snapshot(vec![tenant("globex", &["g1", "g2"])]));
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((d.len(), d.registry_tenants, d.version), (2, 1, 3));
        assert_eq!(d.entry(0).unwrap().source, Source::Static);
        assert_eq!(who(&d, "static-acme").as_deref(), Some("acme"));
        assert_eq!(who(&d, "g1").as_deref(), Some("globex"));
        assert_eq!(who(&d, "g2").as_deref(), Some("globex"));
        assert_eq!(who(&d, "nobody"), None);
    }

    #[test]
    fn static_wins_on_an_id_and_on_a_key() {
        let c = config();
        let (d, notes) = Directory::build(
            &c,
            &snapshot(vec![
                tenant("acme", &["registry-acme"]),
                tenant("globex", &["static-acme", "g1"]),
            ]),
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("registry tenant acme ignored"),
            "{notes:?}"
        );
        assert!(notes[1].contains("static tenant holds it"), "{notes:?}");
        assert_eq!(d.tenant(0).unwrap().rate_limit, 60, "the static acme stays");
        assert_eq!(who(&d, "registry-acme"), None);
        assert_eq!(who(&d, "static-acme").as_deref(), Some("acme"));
        assert_eq!(who(&d, "g1").as_deref(), Some("globex"));
    }

    #[test]
    fn a_key_two_registry_tenants_hold_works_for_neither() {
        let (d, notes) = Directory::build(
            &config(),
            &snapshot(vec![
                tenant("a", &["shared", "a1"]),
                tenant("b", &["shared", "b1"]),
                tenant("c", &["shared"]),
            ]),
        );
        assert_eq!(who(&d, "shared"), None);
        assert_eq!(who(&d, "a1").as_deref(), Some("a"));
        assert_eq!(who(&d, "b1").as_deref(), Some("b"));
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    /// The scale the registry is built for: 100,000 tenants, each key found by one hash-map
    /// probe (the key table is keyed by the digest's first 8 bytes), so the lookup does not
    /// depend on the number of tenants. Timed in BENCHMARKS.md (`registry-scale`), not here.
    #[test]
    fn a_directory_of_100k_tenants_finds_every_key() {
        const N: usize = 100_000;
        let tenants: Vec<RegistryTenant> = (0..N)
            .map(|i| RegistryTenant {
                rate_limit: 1 + i as u64,
                ..tenant(&format!("tenant-{i:06}"), &[&format!("key-{i}")])
            })
            .collect();
        let snapshot = snapshot(tenants);
        // Through the form the workers read from shared data, as in the filter.
        let decoded = Snapshot::decode(&snapshot.encode()).unwrap();
        let (d, notes) = Directory::build(&config(), &decoded);
        assert!(notes.is_empty(), "{:?}", notes.first());
        assert_eq!((d.len(), d.registry_tenants), (N + 1, N));

        for i in [0, 1, N / 2, N - 2, N - 1] {
            let index = d.lookup(&format!("key-{i}")).unwrap();
            let t = d.tenant(index).unwrap();
            assert_eq!(t.id, format!("tenant-{i:06}"));
            assert_eq!(t.rate_limit, 1 + i as u64);
        }
        assert_eq!(who(&d, "static-acme").as_deref(), Some("acme"));
        assert_eq!(who(&d, &format!("key-{N}")), None);
        assert_eq!(who(&d, "key-"), None);
    }

    #[test]
    fn model_allow_lists() {
        let mut e = static_entry(&config().tenants[0]);
        assert!(e.allows("anything"));
        e.allowed_models = Some(vec!["a".into(), "m1".into(), "z".into()]);
        assert!(e.allows("m1") && e.allows("z"));
        assert!(!e.allows("m2") && !e.allows("M1") && !e.allows(""));
    }
}
