//! The tenant registry, from the filter's side: the collector owns it, and one worker per
//! Envoy polls its snapshot and publishes it in shared data for every worker.
//!
//! - `snapshot`: the collector's JSON, and the binary form kept in shared data;
//! - `directory`: the static and registry tenants merged into one O(1) key table;
//! - `sync`: the lease-holding syncer that polls the collector and publishes;
//! - here: the `registry` configuration section, and what workers read to follow along.
//!
//! Shared data: `…/lease` (the syncer's lease), `…/table` (the snapshot in binary),
//! `…/current` (its version and ETag, written after the table: the small value every worker
//! reads on each tick) and `…/synced-at` (when the collector last answered, for the
//! staleness gauge). A worker reads the table only when `current` names a version it does
//! not have, and then rebuilds its own directory once; requests never touch shared data to
//! find a tenant.

pub mod directory;
pub mod snapshot;
pub mod sync;

use serde::Deserialize;

use crate::config::{CollectorConfig, ConfigError};
use crate::shared::SharedData;
use snapshot::Snapshot;

pub const LEASE_KEY: &str = "inference-gate/registry/lease";
pub const TABLE_KEY: &str = "inference-gate/registry/table";
pub const CURRENT_KEY: &str = "inference-gate/registry/current";
pub const SYNCED_KEY: &str = "inference-gate/registry/synced-at";

/// `registry` in the plugin configuration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

/// Where and how often the snapshot is fetched. The ingest token is the collector's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

pub const DEFAULT_PATH: &str = "/v1/tenants/snapshot";
pub const DEFAULT_INTERVAL_MS: u64 = 5000;
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// The `registry` section: `None` without it (static tenants only). Its cluster and
/// authority default to the collector's.
pub fn compile(
    raw: Option<RawRegistry>,
    collector: &CollectorConfig,
) -> Result<Option<RegistryConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let error = |field: &str, message: String| ConfigError {
        field: format!("registry.{field}"),
        message,
    };
    let (cluster, authority) = match raw.cluster {
        Some(cluster) if cluster.trim().is_empty() => {
            return Err(error("cluster", "must not be empty".to_string()))
        }
        Some(cluster) => (cluster.clone(), raw.authority.unwrap_or(cluster)),
        None => (
            collector.cluster.clone(),
            raw.authority.unwrap_or_else(|| collector.authority.clone()),
        ),
    };
    if authority.trim().is_empty() {
        return Err(error("authority", "must not be empty".to_string()));
    }
    let path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
    if !path.starts_with('/') {
        return Err(error("path", "must start with '/'".to_string()));
    }
    let range = |field: &str, value: Option<u64>, default: u64, min: u64, max: u64| {
        let v = value.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(error(
                field,
                format!("must be between {min} and {max}, got {v}"),
            ))
        }
    };
    Ok(Some(RegistryConfig {
        cluster,
        authority,
        path,
        interval_ms: range(
            "interval_ms",
            raw.interval_ms,
            DEFAULT_INTERVAL_MS,
            100,
            600_000,
        )?,
        timeout_ms: range("timeout_ms", raw.timeout_ms, DEFAULT_TIMEOUT_MS, 10, 60_000)?,
    }))
}

/// The snapshot in force, as `current` names it: its version and the ETag to poll with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: u64,
    pub etag: String,
}

impl Published {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.version.to_le_bytes().to_vec();
        out.extend_from_slice(self.etag.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Published> {
        let version = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let etag = std::str::from_utf8(bytes.get(8..)?).ok()?.to_string();
        Some(Published { version, etag })
    }
}

/// What `current` says, if anything was published (or readable).
pub fn published(store: &dyn SharedData) -> Option<Published> {
    let (bytes, _) = store.get(CURRENT_KEY).ok()?;
    Published::decode(&bytes?)
}

/// The published snapshot, decoded (a copy of the whole table: only when it changed).
pub fn published_snapshot(store: &dyn SharedData) -> Option<Snapshot> {
    let (bytes, _) = store.get(TABLE_KEY).ok()?;
    Snapshot::decode(&bytes?)
}

/// When the collector last answered a poll (ns since the epoch), if it ever did.
pub fn synced_at(store: &dyn SharedData) -> Option<u64> {
    let (bytes, _) = store.get(SYNCED_KEY).ok()?;
    Some(u64::from_le_bytes(bytes?.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(registry: serde_json::Value) -> Result<Config, ConfigError> {
        let json = serde_json::json!({
            "tenants": [],
            "collector": {"cluster": "records", "authority": "records.local", "ingest_token": "ingest-token-1"},
            "registry": registry,
        });
        Config::parse(json.to_string().as_bytes())
    }

    #[test]
    fn the_registry_defaults_to_the_collector() {
        let c = parse(serde_json::json!({})).unwrap();
        let r = c.registry.unwrap();
        assert_eq!(
            r,
            RegistryConfig {
                cluster: "records".into(),
                authority: "records.local".into(),
                path: DEFAULT_PATH.into(),
                interval_ms: 5000,
                timeout_ms: 5000,
            }
        );
        let r = parse(serde_json::json!({"cluster": "registry", "interval_ms": 300}))
            .unwrap()
            .registry
            .unwrap();
        assert_eq!(
            (r.cluster.as_str(), r.authority.as_str()),
            ("registry", "registry")
        );
        assert_eq!(r.interval_ms, 300);

        let json = serde_json::json!({"tenants": [], "collector": {"cluster": "c", "ingest_token": "ingest-token-1"}});
        assert_eq!(
            Config::parse(json.to_string().as_bytes()).unwrap().registry,
            None
        );
    }

    #[test]
    fn registry_fields_are_checked() {
        for (registry, field) in [
            (serde_json::json!({"cluster": " "}), "registry.cluster"),
            (serde_json::json!({"authority": ""}), "registry.authority"),
            (serde_json::json!({"path": "v1/tenants"}), "registry.path"),
            (
                serde_json::json!({"interval_ms": 99}),
                "registry.interval_ms",
            ),
            (
                serde_json::json!({"interval_ms": 600_001}),
                "registry.interval_ms",
            ),
            (serde_json::json!({"timeout_ms": 9}), "registry.timeout_ms"),
            (
                serde_json::json!({"intervall_ms": 500}),
                "registry.intervall_ms",
            ),
            (serde_json::json!("yes"), "registry"),
        ] {
            let e = parse(registry.clone()).unwrap_err();
            assert_eq!(e.field, field, "{registry}: {e}");
        }
    }

    #[test]
    fn published_round_trips() {
        let p = Published {
            version: 42,
            etag: "\"42\"".into(),
        };
        assert_eq!(Published::decode(&p.encode()), Some(p));
        assert_eq!(Published::decode(&[1, 2, 3]), None);
    }
}
