//! The tenant registry: which tenants exist, their limits, whether they are suspended, which
//! models they may use, and the digests of their API keys. Operators change it over the API
//! (`api::tenants`); the filter in every Envoy polls a versioned snapshot of it.
//!
//! - here: the records as stored and the snapshot as served;
//! - [`input`]: the bodies operators send, checked rule by rule;
//! - [`keys`]: new API keys (shown once) and their digests (kept).
//!
//! Every change bumps the registry's version in the transaction that makes it, so a filter
//! that holds version `n` has exactly what the registry held at `n`.

pub mod input;
pub mod keys;

use serde::Serialize;

/// Most keys a tenant may hold at once (a rotation needs two).
pub const MAX_ACTIVE_KEYS: u32 = 16;

/// A tenant as stored, with every key it ever had (revoked ones too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub rate_limit: u64,
    pub token_budget: u64,
    pub suspended: bool,
    /// `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// Microseconds since the Unix epoch.
    pub created_us: i64,
    pub updated_us: i64,
    pub keys: Vec<KeyRecord>,
}

/// One API key of a tenant: never the key, only its SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub sha256: String,
    pub created_us: i64,
    pub revoked_us: Option<i64>,
}

/// A tenant to create (already checked by [`input`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub id: String,
    pub rate_limit: u64,
    pub token_budget: u64,
    pub suspended: bool,
    pub allowed_models: Option<Vec<String>>,
}

/// What a `PATCH` changes; `None` leaves a field as it is. `allowed_models: Some(None)` allows
/// every model again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    pub rate_limit: Option<u64>,
    pub token_budget: Option<u64>,
    pub suspended: Option<bool>,
    pub allowed_models: Option<Option<Vec<String>>>,
}

impl TenantPatch {
    pub fn is_empty(&self) -> bool {
        self == &TenantPatch::default()
    }

    /// `record` with this patch applied (timestamps untouched).
    pub fn apply(&self, mut record: TenantRecord) -> TenantRecord {
        if let Some(v) = self.rate_limit {
            record.rate_limit = v;
        }
        if let Some(v) = self.token_budget {
            record.token_budget = v;
        }
        if let Some(v) = self.suspended {
            record.suspended = v;
        }
        if let Some(v) = &self.allowed_models {
            record.allowed_models = v.clone();
        }
        record
    }
}

/// The registry's version and the drain flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegistryState {
    pub version: u64,
    pub healthy: bool,
}

/// What the filter polls (`GET /v1/tenants/snapshot`): every tenant with the digests of its
/// active keys, at one version. Fields at their default (`suspended: false`,
/// `allowed_models: null`) are left out, which keeps a snapshot of many tenants small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub version: u64,
    pub healthy: bool,
    pub tenants: Vec<SnapshotTenant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotTenant {
    pub id: String,
    pub rate_limit: u64,
    pub token_budget: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    pub api_key_sha256: Vec<String>,
}
