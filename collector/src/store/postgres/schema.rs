//! The schema and its version. The table `collector_schema` holds the version; each
//! migration runs in the transaction that also bumps it (PostgreSQL's DDL is
//! transactional), under an advisory lock, so that several collectors starting at once
//! migrate one after the other and a crash leaves the old schema or the new one.

use deadpool_postgres::Object;

use crate::store::StoreError;

/// The newest schema this code knows. Add a step to `STEPS` to migrate.
const VERSION: i64 = 3;

/// `STEPS[n]` takes the schema from version `n` to `n + 1`.
const STEPS: [&str; VERSION as usize] = [V1, V2, V3];

/// Any constant both collectors agree on: the key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6967_6174_6500_0001;

/// Version 1: the same tables as the SQLite backend. `id` and `tenant_id` use the "C"
/// collation, so that ties are ordered by id byte for byte, as SQLite does, whatever the
/// database's locale.
const V1: &str = r#"
CREATE TABLE billing (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text COLLATE "C" NOT NULL,
    timestamp           text NOT NULL,
    instant_us          bigint NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),
    cached_input_tokens bigint CHECK (cached_input_tokens >= 0),
    reasoning_tokens    bigint CHECK (reasoning_tokens >= 0),
    model               text,
    request_id          text,
    api                 text NOT NULL,
    usage_source        text NOT NULL,
    received_us         bigint NOT NULL
);

CREATE INDEX billing_by_tenant_time ON billing (tenant_id, instant_us, id);
CREATE INDEX billing_by_time ON billing (instant_us, id);

CREATE TABLE audit (
    id          text COLLATE "C" PRIMARY KEY,
    timestamp   text NOT NULL,
    instant_us  bigint NOT NULL,
    tenant_id   text COLLATE "C",
    action      text NOT NULL,
    result      text NOT NULL,
    resource    text,
    status_code integer NOT NULL CHECK (status_code BETWEEN 100 AND 599),
    method      text NOT NULL,
    path        text NOT NULL,
    remote_addr text,
    request_id  text,
    received_us bigint NOT NULL
);

CREATE INDEX audit_by_tenant_time ON audit (tenant_id, instant_us, id);
CREATE INDEX audit_by_time ON audit (instant_us, id);
"#;

/// Version 2: the tenant registry and the operator behind an audit entry, as in the SQLite
/// backend (its version 3). Changes to the registry take the row lock of `registry` first,
/// so that concurrent changes from several collectors get one version each, in order.
const V2: &str = r#"
ALTER TABLE audit ADD COLUMN actor text;

CREATE TABLE registry (
    singleton integer PRIMARY KEY CHECK (singleton = 1),
    version   bigint NOT NULL,
    healthy   boolean NOT NULL
);

INSERT INTO registry (singleton, version, healthy) VALUES (1, 0, true);

CREATE TABLE tenants (
    id             text COLLATE "C" PRIMARY KEY,
    rate_limit     bigint NOT NULL CHECK (rate_limit > 0),
    token_budget   bigint NOT NULL CHECK (token_budget > 0),
    suspended      boolean NOT NULL,
    allowed_models text,
    created_us     bigint NOT NULL,
    updated_us     bigint NOT NULL
);

CREATE TABLE tenant_keys (
    key_id     text COLLATE "C" PRIMARY KEY,
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (id),
    sha256     text NOT NULL UNIQUE,
    created_us bigint NOT NULL,
    revoked_us bigint
);

CREATE INDEX tenant_keys_by_tenant ON tenant_keys (tenant_id, created_us);
"#;

/// Version 3: the input written to the prompt cache, as in the SQLite backend (its version
/// 4). Adding a nullable column without a default rewrites no rows; old rows read NULL.
const V3: &str = r#"
ALTER TABLE billing ADD COLUMN cache_write_input_tokens bigint
    CHECK (cache_write_input_tokens >= 0);
"#;

/// Brings the schema up to [`VERSION`]; refuses a database written by a newer collector.
pub(super) async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    migrate_to(client, VERSION).await
}

/// Brings the schema up to `target` (at most [`VERSION`]; the tests stop short of it to make
/// the database an older collector left behind).
async fn migrate_to(client: &mut Object, target: i64) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS collector_schema (version bigint NOT NULL);
         INSERT INTO collector_schema (version)
             SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM collector_schema);",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT version FROM collector_schema", &[])
        .await?
        .get(0);
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: VERSION,
        });
    }

    for (from, step) in STEPS
        .iter()
        .enumerate()
        .take(usize::try_from(target).unwrap_or(0))
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(step).await?;
        let to = from as i64 + 1;
        tx.execute("UPDATE collector_schema SET version = $1", &[&to])
            .await?;
        tracing::info!(version = to, "database schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    use tokio_postgres::NoTls;

    use super::{migrate_to, VERSION};
    use crate::records::{BillingRecord, Record, UsageSource};
    use crate::store::postgres::PostgresStore;
    use crate::store::{BillingQuery, TimeRange};
    use crate::timestamp::Timestamp;

    /// The URL of an empty schema of its own on the test server (as the integration tests'
    /// `common` module makes one), or `None` after saying why the test skips.
    async fn fresh_location() -> Option<String> {
        let url = match std::env::var("COLLECTOR_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                let required = std::env::var("INFERENCE_GATE_REQUIRE_POSTGRES")
                    .is_ok_and(|v| !v.is_empty() && v != "0");
                assert!(
                    !required,
                    "no PostgreSQL test server: run through scripts/postgres.py"
                );
                eprintln!("SKIPPED: no PostgreSQL test server (COLLECTOR_TEST_POSTGRES_URL)");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!("m_{}_{nanos}", std::process::id());

        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
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

    #[tokio::test]
    async fn a_version_2_database_upgrades_in_place_and_keeps_its_rows() {
        let Some(location) = fresh_location().await else {
            return;
        };

        // The database a version-2 collector left: its steps, and a row in its columns.
        let config: tokio_postgres::Config = location.parse().unwrap();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(1).build().unwrap();
        let mut client = pool.get().await.unwrap();
        migrate_to(&mut client, 2).await.unwrap();
        let instant = Timestamp::parse("2026-12-03T18:00:00Z")
            .unwrap()
            .unix_micros();
        client
            .execute(
                "INSERT INTO billing (id, tenant_id, timestamp, instant_us, input_tokens,
                     output_tokens, cached_input_tokens, reasoning_tokens, model, request_id,
                     api, usage_source, received_us)
                 VALUES ('old-1', 'acme', '2026-12-03T18:00:00Z', $1, 2103, 40, 2000, NULL,
                     'claude-test', 'req-old', 'anthropic_messages', 'reported', 0)",
                &[&instant],
            )
            .await
            .unwrap();
        drop(client);
        pool.close();

        let store = PostgresStore::connect(&location, 2).await.unwrap();
        let old = BillingRecord {
            id: "old-1".into(),
            tenant_id: "acme".into(),
            input_tokens: 2103,
            output_tokens: 40,
            timestamp: Timestamp::parse("2026-12-03T18:00:00Z").unwrap(),
            model: Some("claude-test".into()),
            request_id: Some("req-old".into()),
            api: "anthropic_messages".into(),
            usage_source: UsageSource::Reported,
            cached_input_tokens: Some(2000),
            cache_write_input_tokens: None,
            reasoning_tokens: None,
        };
        let new = BillingRecord {
            id: "new-1".into(),
            timestamp: Timestamp::parse("2026-12-03T19:00:00Z").unwrap(),
            cache_write_input_tokens: Some(100),
            ..old.clone()
        };

        // Ingest still skips a stored id, and stores the new column.
        let batch = vec![Record::Billing(old.clone()), Record::Billing(new.clone())];
        let inserted = store.insert_batch(batch).await.unwrap();
        assert_eq!((inserted.accepted(), inserted.duplicates()), (1, 1));

        let query = BillingQuery {
            tenant_id: "acme".into(),
            range: TimeRange::default(),
            limit: 10,
        };
        assert_eq!(store.billing(query).await.unwrap(), vec![old, new]);

        let client = store.pool.get().await.unwrap();
        let version: i64 = client
            .query_one("SELECT version FROM collector_schema", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(version, VERSION);
        let negative = client
            .execute(
                "UPDATE billing SET cache_write_input_tokens = -1 WHERE id = 'new-1'",
                &[],
            )
            .await;
        assert!(negative.is_err(), "the CHECK constraint is missing");
    }
}
