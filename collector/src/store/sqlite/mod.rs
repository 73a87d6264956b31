//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, so that a batch whose
//! commit returned survives a crash or a power cut.
//!
//! rusqlite blocks, so every call runs on tokio's blocking pool, never on the async runtime.
//! There are two connections, each behind its own mutex: one writes and one reads. WAL lets
//! the reader see the last commit while a batch is being written, so queries and health
//! checks do not queue behind inserts.

mod read;
mod registry;
mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::registry::{NewKey, RegistryError};
use super::{AuditQuery, BillingQuery, Inserted, Kind, StoreError, TimeRange, Usage};
use crate::records::{AuditEntry, BillingRecord, Record};
use crate::registry::{KeyRecord, NewTenant, RegistryState, Snapshot, TenantPatch, TenantRecord};

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to one SQLite database; clones share the same connections.
#[derive(Clone)]
pub struct SqliteStore {
    connections: Arc<Connections>,
}

/// `None` once the store is closed, so that late calls fail instead of reopening anything.
struct Connections {
    writer: Mutex<Option<Connection>>,
    reader: Mutex<Option<Connection>>,
}

#[derive(Clone, Copy)]
enum Role {
    Writer,
    Reader,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and its parent directory, and
    /// brings the schema up to date.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let connections = tokio::task::spawn_blocking(move || open_blocking(&path)).await??;
        Ok(Self {
            connections: Arc::new(connections),
        })
    }

    pub(super) async fn insert_batch(&self, records: Vec<Record>) -> Result<Inserted, StoreError> {
        self.run(Role::Writer, move |conn| {
            write::insert_batch(conn, &records)
        })
        .await
    }

    pub(super) async fn billing(
        &self,
        query: BillingQuery,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        self.run(Role::Reader, move |conn| read::billing(conn, &query))
            .await
    }

    pub(super) async fn usage(
        &self,
        tenant_id: String,
        range: TimeRange,
    ) -> Result<Usage, StoreError> {
        self.run(Role::Reader, move |conn| {
            read::usage(conn, &tenant_id, range)
        })
        .await
    }

    pub(super) async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.run(Role::Reader, move |conn| read::audit(conn, &query))
            .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        // Reads page 1 of the file, so it fails if the file is gone or unreadable.
        self.run(Role::Reader, |conn| {
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    pub(super) async fn delete_before(
        &self,
        kind: Kind,
        before: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.run(Role::Writer, move |conn| {
            write::delete_before(conn, kind, before, limit)
        })
        .await
    }

    pub(super) async fn create_tenant(
        &self,
        tenant: NewTenant,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        self.run(Role::Writer, move |conn| {
            registry::create_tenant(conn, &tenant, &key, &audit)
        })
        .await
    }

    pub(super) async fn tenant(&self, id: String) -> Result<Option<TenantRecord>, StoreError> {
        self.run(Role::Reader, move |conn| registry::tenant(conn, &id))
            .await
    }

    pub(super) async fn tenants(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        self.run(Role::Reader, move |conn| {
            registry::tenants(conn, after.as_deref(), limit)
        })
        .await
    }

    pub(super) async fn update_tenant(
        &self,
        id: String,
        patch: TenantPatch,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        self.run(Role::Writer, move |conn| {
            registry::update_tenant(conn, &id, &patch, &audit)
        })
        .await
    }

    pub(super) async fn delete_tenant(
        &self,
        id: String,
        audit: AuditEntry,
    ) -> Result<(), RegistryError> {
        self.run(Role::Writer, move |conn| {
            registry::delete_tenant(conn, &id, &audit)
        })
        .await
    }

    pub(super) async fn add_key(
        &self,
        tenant: String,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        self.run(Role::Writer, move |conn| {
            registry::add_key(conn, &tenant, &key, &audit)
        })
        .await
    }

    pub(super) async fn revoke_key(
        &self,
        tenant: String,
        key_id: String,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        self.run(Role::Writer, move |conn| {
            registry::revoke_key(conn, &tenant, &key_id, &audit)
        })
        .await
    }

    pub(super) async fn set_healthy(
        &self,
        healthy: bool,
        audit: AuditEntry,
    ) -> Result<RegistryState, StoreError> {
        self.run(Role::Writer, move |conn| {
            registry::set_healthy(conn, healthy, &audit)
        })
        .await
    }

    pub(super) async fn registry_state(&self) -> Result<RegistryState, StoreError> {
        self.run(Role::Reader, |conn| registry::state(conn)).await
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run(Role::Reader, registry::snapshot).await
    }

    pub(super) async fn import_tenants(
        &self,
        tenants: Vec<(NewTenant, Vec<NewKey>)>,
    ) -> Result<RegistryState, StoreError> {
        self.run(Role::Writer, move |conn| {
            registry::import_tenants(conn, &tenants)
        })
        .await
    }

    pub(super) async fn close(&self) -> Result<(), StoreError> {
        let connections = Arc::clone(&self.connections);
        tokio::task::spawn_blocking(move || {
            // Taking each lock waits for the operation holding it; the writer goes last so
            // that closing it, the last connection, checkpoints the WAL into the main file.
            let reader = lock(&connections.reader).take();
            let writer = lock(&connections.writer).take();
            for conn in [reader, writer].into_iter().flatten() {
                conn.close().map_err(|(_, err)| err)?;
            }
            Ok(())
        })
        .await?
    }

    /// Runs `operation` on the blocking pool with the connection of `role`.
    async fn run<T, E, F>(&self, role: Role, operation: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let connections = Arc::clone(&self.connections);
        let outcome = tokio::task::spawn_blocking(move || {
            let slot = match role {
                Role::Writer => &connections.writer,
                Role::Reader => &connections.reader,
            };
            let mut guard = lock(slot);
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            operation(conn)
        })
        .await;
        outcome.unwrap_or_else(|err| Err(StoreError::from(err).into()))
    }
}

/// A panic while holding a connection leaves nothing half-done (an open transaction rolls
/// back when dropped), so a poisoned lock is safe to keep using.
fn lock(slot: &Mutex<Option<Connection>>) -> std::sync::MutexGuard<'_, Option<Connection>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_blocking(path: &Path) -> Result<Connections, StoreError> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }

    let mut writer = Connection::open(path)?;
    writer.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal { mode });
    }
    writer.pragma_update(None, "synchronous", "FULL")?;
    schema::migrate(&mut writer)?;

    // Opened after the writer, so the WAL and its index already exist for a read-only peer.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let reader = Connection::open_with_flags(path, flags)?;
    reader.busy_timeout(BUSY_TIMEOUT)?;

    Ok(Connections {
        writer: Mutex::new(Some(writer)),
        reader: Mutex::new(Some(reader)),
    })
}
