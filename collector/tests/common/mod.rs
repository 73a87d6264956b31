//! Helpers shared by the integration tests: record builders and a store in a temp directory.

#![allow(dead_code)]

use collector::records::{Action, AuditEntry, AuditResult, BillingRecord, Record, UsageSource};
use collector::store::{PostgresStore, SqliteStore, Store};
use collector::timestamp::Timestamp;
use tempfile::TempDir;

pub const ADMIN: &str = "admin-token-for-tests";
pub const INGEST: &str = "ingest-token-for-tests";

/// A store on a fresh database file; the directory lives as long as the returned guard.
pub async fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("collector.db"))
        .await
        .unwrap();
    (dir, Store::Sqlite(store))
}

pub fn billing(id: &str, tenant: &str, timestamp: &str, input: u64, output: u64) -> BillingRecord {
    BillingRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        input_tokens: input,
        output_tokens: output,
        timestamp: Timestamp::parse(timestamp).unwrap(),
        model: Some("demo-model".into()),
        request_id: None,
        api: "openai_chat".into(),
        usage_source: UsageSource::Reported,
        cached_input_tokens: Some(0),
        cache_write_input_tokens: None,
        reasoning_tokens: None,
    }
}

pub fn audit(id: &str, tenant: Option<&str>, timestamp: &str) -> AuditEntry {
    AuditEntry {
        id: id.into(),
        timestamp: Timestamp::parse(timestamp).unwrap(),
        tenant_id: tenant.map(Into::into),
        action: Action::Inference,
        result: AuditResult::Success,
        resource: Some("demo-model".into()),
        status_code: 200,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        remote_addr: Some("127.0.0.1:5000".into()),
        request_id: Some("req-1".into()),
        actor: None,
    }
}

pub fn bill(id: &str, tenant: &str, timestamp: &str) -> Record {
    Record::Billing(billing(id, tenant, timestamp, 1, 2))
}

pub fn entry(id: &str, tenant: Option<&str>, timestamp: &str) -> Record {
    Record::Audit(audit(id, tenant, timestamp))
}

/// The environment variable with the URL of a PostgreSQL server the tests may use (set by
/// `scripts/postgres.py run`, which `make test` wraps around `cargo test`).
pub const POSTGRES_URL_ENV: &str = "COLLECTOR_TEST_POSTGRES_URL";
/// When set (CI sets it), a missing PostgreSQL fails the tests instead of skipping them.
pub const REQUIRE_POSTGRES_ENV: &str = "INFERENCE_GATE_REQUIRE_POSTGRES";

/// A store on a fresh, empty database of one backend, and what keeps that database alive.
pub struct TestDb {
    pub store: Store,
    /// A database location the `collector` binary understands (`--database`).
    pub location: String,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A SQLite file in a new temp directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.db");
        let store = Store::Sqlite(SqliteStore::open(&path).await.unwrap());
        TestDb {
            store,
            location: path.display().to_string(),
            _dir: Some(dir),
        }
    }

    /// A new, empty schema on the test PostgreSQL server; `None` (after saying why) when no
    /// server was given.
    pub async fn postgres() -> Option<TestDb> {
        let location = postgres_location().await?;
        let store = Store::Postgres(PostgresStore::connect(&location, 4).await.unwrap());
        Some(TestDb {
            store,
            location,
            _dir: None,
        })
    }
}

/// The test server's URL, or `None` after printing why the PostgreSQL tests skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let required =
                std::env::var(REQUIRE_POSTGRES_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(
                !required,
                "{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_URL_ENV} is not: run the tests \
                 through scripts/postgres.py (make test does)"
            );
            eprintln!(
                "SKIPPED: no PostgreSQL test server ({POSTGRES_URL_ENV} is not set; \
                 `make test` starts one)"
            );
            None
        }
    }
}

/// A URL for a fresh schema of its own on the test server: tests running side by side each
/// see empty tables.
pub async fn postgres_location() -> Option<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let url = postgres_url()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;

    let separator = if url.contains('?') { '&' } else { '?' };
    Some(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}

/// Runs each test body once per backend: `name::sqlite` and `name::postgres` (which skips,
/// saying so, without a PostgreSQL server).
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($(async fn $name:ident($db:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($db: &common::TestDb) $body

            #[tokio::test]
            async fn sqlite() {
                run(&common::TestDb::sqlite().await).await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = common::TestDb::postgres().await {
                    run(&db).await;
                }
            }
        }
    )*};
}
