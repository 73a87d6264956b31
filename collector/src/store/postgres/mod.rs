//! The PostgreSQL backend: a server that several collector processes share.
//!
//! A pool of connections (deadpool) serves every call; each batch is one transaction that
//! inserts all its rows of a kind with one statement. Concurrent collectors sending the same
//! record id meet at the primary key: `ON CONFLICT (id) DO NOTHING` makes the later one wait
//! for the earlier transaction and then skip the row, so an id is stored once. Rows are
//! inserted in id order, so two batches that share ids take their row locks in the same order
//! and cannot deadlock.
//!
//! A commit is durable when the server says so: every connection runs with
//! `synchronous_commit` at least `on` (a server configured `off` is overridden for our
//! sessions, since a `200` promises that the batch survives a crash).
//!
//! Connections are plain TCP or a Unix socket: this build has no TLS, so a URL that asks for
//! it (`sslmode=require`) is refused at startup with a message that says so.

mod read;
mod registry;
mod schema;
mod write;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::registry::{NewKey, RegistryError};
use super::{AuditQuery, BillingQuery, Inserted, Kind, StoreError, TimeRange, Usage};
use crate::records::{AuditEntry, BillingRecord, Record};
use crate::registry::{KeyRecord, NewTenant, RegistryState, Snapshot, TenantPatch, TenantRecord};

/// How long a call waits for a free connection, and how long a new connection may take.
const POOL_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of connections to one PostgreSQL database; clones share it.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects to the database `url` names (`postgres://user:password@host:port/db`, with
    /// any libpq-style parameters) and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|err| StoreError::Config(format!("invalid PostgreSQL URL: {err}")))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Config(
                "this collector connects without TLS; sslmode=require cannot be met \
                 (use a Unix socket, a private network or a TLS-terminating proxy)"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("inference-gate-collector");
        }

        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(1)))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move { durable_commits(client).await.map_err(HookError::Backend) })
            }))
            .build()
            .map_err(|err| {
                StoreError::Config(format!("cannot build the connection pool: {err}"))
            })?;

        let store = Self { pool };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    pub(super) async fn insert_batch(&self, records: Vec<Record>) -> Result<Inserted, StoreError> {
        let mut client = self.client().await?;
        write::insert_batch(&mut client, &records).await
    }

    pub(super) async fn billing(
        &self,
        query: BillingQuery,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let client = self.client().await?;
        read::billing(&client, &query).await
    }

    pub(super) async fn usage(
        &self,
        tenant_id: String,
        range: TimeRange,
    ) -> Result<Usage, StoreError> {
        let client = self.client().await?;
        read::usage(&client, &tenant_id, range).await
    }

    pub(super) async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        read::audit(&client, &query).await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub(super) async fn delete_before(
        &self,
        kind: Kind,
        before: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        write::delete_before(&client, kind, before, limit).await
    }

    pub(super) async fn create_tenant(
        &self,
        tenant: NewTenant,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        let mut client = self.client().await?;
        registry::create_tenant(&mut client, &tenant, &key, &audit).await
    }

    pub(super) async fn tenant(&self, id: String) -> Result<Option<TenantRecord>, StoreError> {
        let client = self.client().await?;
        registry::tenant(&client, &id).await
    }

    pub(super) async fn tenants(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<TenantRecord>, StoreError> {
        let client = self.client().await?;
        registry::tenants(&client, after.as_deref(), limit).await
    }

    pub(super) async fn update_tenant(
        &self,
        id: String,
        patch: TenantPatch,
        audit: AuditEntry,
    ) -> Result<TenantRecord, RegistryError> {
        let mut client = self.client().await?;
        registry::update_tenant(&mut client, &id, &patch, &audit).await
    }

    pub(super) async fn delete_tenant(
        &self,
        id: String,
        audit: AuditEntry,
    ) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        registry::delete_tenant(&mut client, &id, &audit).await
    }

    pub(super) async fn add_key(
        &self,
        tenant: String,
        key: NewKey,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        let mut client = self.client().await?;
        registry::add_key(&mut client, &tenant, &key, &audit).await
    }

    pub(super) async fn revoke_key(
        &self,
        tenant: String,
        key_id: String,
        audit: AuditEntry,
    ) -> Result<KeyRecord, RegistryError> {
        let mut client = self.client().await?;
        registry::revoke_key(&mut client, &tenant, &key_id, &audit).await
    }

    pub(super) async fn set_healthy(
        &self,
        healthy: bool,
        audit: AuditEntry,
    ) -> Result<RegistryState, StoreError> {
        let mut client = self.client().await?;
        registry::set_healthy(&mut client, healthy, &audit).await
    }

    pub(super) async fn registry_state(&self) -> Result<RegistryState, StoreError> {
        let client = self.client().await?;
        registry::state(&client).await
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        registry::snapshot(&mut client).await
    }

    pub(super) async fn import_tenants(
        &self,
        tenants: Vec<(NewTenant, Vec<NewKey>)>,
    ) -> Result<RegistryState, StoreError> {
        let mut client = self.client().await?;
        registry::import_tenants(&mut client, &tenants).await
    }

    /// Closes the pool: later calls fail with [`StoreError::Closed`], and each connection in
    /// use closes when its call returns it.
    pub(super) async fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| match err {
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(err) => StoreError::Postgres(err),
            other => StoreError::Pool(other.to_string()),
        })
    }
}

/// Raises `synchronous_commit` to `on` for this session if the server has it `off`; any
/// other setting (`local`, `remote_write`, `on`, `remote_apply`) already waits for a local
/// flush and is kept.
async fn durable_commits(
    client: &mut deadpool_postgres::ClientWrapper,
) -> Result<(), tokio_postgres::Error> {
    let row = client.query_one("SHOW synchronous_commit", &[]).await?;
    let setting: String = row.get(0);
    if setting == "off" {
        tracing::warn!("the server has synchronous_commit=off; this collector's sessions use on");
        client.batch_execute("SET synchronous_commit = on").await?;
    }
    Ok(())
}

/// Whether an error may go away on its own (the server is restarting, busy, or chose this
/// transaction as a deadlock victim), so that the caller should retry rather than page
/// someone.
pub(super) fn is_transient(err: &tokio_postgres::Error) -> bool {
    let Some(code) = err.code() else {
        // No SQLSTATE: the connection broke or could not be made.
        return err.is_closed() || err.as_db_error().is_none();
    };
    let class = code.code().get(..2).unwrap_or("");
    matches!(class, "08" | "40" | "53" | "57")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

/// The URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://(unreadable URL)".to_owned();
    };
    // The credentials end at the last `@` before the host part.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or("");
    let tail = rest.get(authority_end..).unwrap_or("");
    let host = match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    // A password may also come as a query parameter.
    let query = match tail.split_once('?') {
        Some((path, params)) => {
            let kept: Vec<&str> = params
                .split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{host}{query}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_logged_without_passwords() {
        assert_eq!(
            redact_url("postgres://gate:s3cret@db.internal:5432/records"),
            "postgres://gate@db.internal:5432/records"
        );
        assert_eq!(
            redact_url("postgresql://db/records?user=gate&password=s3cret&sslmode=disable"),
            "postgresql://db/records?user=gate&sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://localhost/records?password=x"),
            "postgres://localhost/records"
        );
        assert_eq!(redact_url("postgres://h"), "postgres://h");
    }
}
