//! The registry's operations on either backend. Each change runs in one transaction that
//! also bumps the registry's version and stores the audit entry of the call that made it, so
//! a change is never in force without its entry, nor its entry without it.

use thiserror::Error;

use super::{Store, StoreError};
use crate::records::AuditEntry;
use crate::registry::{KeyRecord, NewTenant, RegistryState, Snapshot, TenantPatch, TenantRecord};

/// Why a registry change did not happen.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("a tenant with the id {0:?} already exists")]
    TenantExists(String),
    #[error("no tenant with the id {0:?}")]
    TenantNotFound(String),
    #[error("tenant {tenant:?} has no active key {key_id:?}")]
    KeyNotFound { tenant: String, key_id: String },
    #[error("tenant {tenant:?} already has {max} active keys; revoke one first")]
    TooManyKeys { tenant: String, max: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(err: rusqlite::Error) -> Self {
        RegistryError::Store(err.into())
    }
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(err: tokio_postgres::Error) -> Self {
        RegistryError::Store(err.into())
    }
}

/// A key to store for a tenant: its id and digest (the key itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub key_id: String,
    pub sha256: String,
}

impl Store {
    /// Creates a tenant with its first key.
    pub async fn create_tenant(
        &self,
        tenant: NewTenant,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => s.create_tenant(tenant, key, audit).await,
            Store::Postgres(s) => s.create_tenant(tenant, key, audit).await,
        }
    }

    pub async fn tenant(&self, id: String) -> Result<Option<TenantRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tenant(id).await,
            Store::Postgres(s) => s.tenant(id).await,
        }
    }

    /// Tenants in id order after `after`, at most `limit` of them.
    pub async fn tenants(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.tenants(after, limit).await,
            Store::Postgres(s) => s.tenants(after, limit).await,
        }
    }

    pub async fn update_tenant(
        &self,
        id: String,
        patch: TenantPatch,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => s.update_tenant(id, patch, audit).await,
            Store::Postgres(s) => s.update_tenant(id, patch, audit).await,
        }
    }

    /// Deletes a tenant and its keys; its billing records and audit entries stay.
    pub async fn delete_tenant(&self, id: String, audit: AuditEntry) -> Result<(), RegistryError> {
        match self {
            Store::Sqlite(s) => s.delete_tenant(id, audit).await,
            Store::Postgres(s) => s.delete_tenant(id, audit).await,
        }
    }

    pub async fn add_key(
        &self,
        tenant: String,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => s.add_key(tenant, key, audit).await,
            Store::Postgres(s) => s.add_key(tenant, key, audit).await,
        }
    }

    /// Marks an active key revoked (it stays listed, with the time).
    pub async fn revoke_key(
        &self,
        tenant: String,
        key_id: String,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        match self {
            Store::Sqlite(s) => s.revoke_key(tenant, key_id, audit).await,
            Store::Postgres(s) => s.revoke_key(tenant, key_id, audit).await,
        }
    }

    /// Sets the drain flag; the version moves only if the flag does.
    pub async fn set_healthy(
        &self,
        healthy: bool,
        audit: AuditEntry,
    ) -> Result<RegistryState, StoreError> {
        match self {
            Store::Sqlite(s) => s.set_healthy(healthy, audit).await,
            Store::Postgres(s) => s.set_healthy(healthy, audit).await,
        }
    }

    pub async fn registry_state(&self) -> Result<RegistryState, StoreError> {
        match self {
            Store::Sqlite(s) => s.registry_state().await,
            Store::Postgres(s) => s.registry_state().await,
        }
    }

    /// Every tenant with its active keys' digests, read at one version.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        match self {
            Store::Sqlite(s) => s.snapshot().await,
            Store::Postgres(s) => s.snapshot().await,
        }
    }

    /// Creates many tenants with their key digests in one transaction and one version (for
    /// benchmarks and tests; no audit entry). Fails, storing nothing, if any id is taken.
    pub async fn import_tenants(
        &self,
        tenants: Vec<(NewTenant, Vec<NewKey>)>,
    ) -> Result<RegistryState, StoreError> {
        match self {
            Store::Sqlite(s) => s.import_tenants(tenants).await,
            Store::Postgres(s) => s.import_tenants(tenants).await,
        }
    }
}

/// `allowed_models` as stored: a JSON array, or NULL.
pub(super) fn models_to_text(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::Value::from(m.clone()).to_string())
}

pub(super) fn models_from_text(text: Option<String>) -> Result<Option<Vec<String>>, StoreError> {
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|_| StoreError::Corrupt(format!("allowed_models {t:?} is not a list")))
    })
    .transpose()
}

/// Gives each tenant (in id order) its keys (in tenant id order, then creation order).
pub(super) fn attach_keys(tenants: &mut [TenantRecord], keys: Vec<(String, KeyRecord)>) {
    let mut keys = keys.into_iter().peekable();
    for tenant in tenants.iter_mut() {
        while let Some((owner, _)) = keys.peek() {
            if owner.as_str() < tenant.id.as_str() {
                keys.next();
            } else {
                break;
            }
        }
        while let Some((owner, key)) = keys.next_if(|(owner, _)| *owner == tenant.id) {
            let _ = owner;
            tenant.keys.push(key);
        }
    }
}

/// A count read from the database as a non-negative integer.
pub(super) fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value}")))
}

pub(super) fn signed(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange(format!("{what} = {value}")))
}
