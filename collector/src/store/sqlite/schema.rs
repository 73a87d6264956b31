//! The schema and its version. `PRAGMA user_version` holds the version; each migration runs
//! in the transaction that also bumps it, so a crash leaves the old schema or the new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// The newest schema this code knows. Add a step to `STEPS` to migrate.
const VERSION: i64 = 4;

/// `STEPS[n]` takes the schema from version `n` to `n + 1`.
const STEPS: [&str; VERSION as usize] = [V1, V2, V3, V4];

/// Version 1. `timestamp` is the text as received; `instant_us` is the instant it names in
/// microseconds since the Unix epoch (UTC), used for ranges and ordering. `received_us` is
/// when the collector stored the row, kept for investigating retries.
const V1: &str = "
CREATE TABLE billing (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    timestamp           TEXT NOT NULL,
    instant_us          INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens       INTEGER NOT NULL CHECK (output_tokens >= 0),
    cached_input_tokens INTEGER CHECK (cached_input_tokens >= 0),
    reasoning_tokens    INTEGER CHECK (reasoning_tokens >= 0),
    model               TEXT,
    request_id          TEXT,
    api                 TEXT NOT NULL,
    usage_source        TEXT NOT NULL,
    received_us         INTEGER NOT NULL
) STRICT;

CREATE INDEX billing_by_tenant_time ON billing (tenant_id, instant_us, id);

CREATE TABLE audit (
    id          TEXT PRIMARY KEY,
    timestamp   TEXT NOT NULL,
    instant_us  INTEGER NOT NULL,
    tenant_id   TEXT,
    action      TEXT NOT NULL,
    result      TEXT NOT NULL,
    resource    TEXT,
    status_code INTEGER NOT NULL CHECK (status_code BETWEEN 100 AND 599),
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    remote_addr TEXT,
    request_id  TEXT,
    received_us INTEGER NOT NULL
) STRICT;

CREATE INDEX audit_by_tenant_time ON audit (tenant_id, instant_us, id);
CREATE INDEX audit_by_time ON audit (instant_us, id);
";

/// Version 2: billing by time alone, for the retention job (audit had it from the start).
const V2: &str = "
CREATE INDEX billing_by_time ON billing (instant_us, id);
";

/// Version 3: the tenant registry, and the operator behind an audit entry.
///
/// `registry` is one row: the version of the registry, bumped in the transaction of every
/// change (the filter's snapshot is tagged with it), and the drain flag. A key is stored as
/// the SHA-256 of its text only; a revoked key stays, with `revoked_us`, so that its id and
/// digest prefix still mean something in the audit trail. `allowed_models` is a JSON array,
/// or NULL for every model.
const V3: &str = "
ALTER TABLE audit ADD COLUMN actor TEXT;

CREATE TABLE registry (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    version   INTEGER NOT NULL,
    healthy   INTEGER NOT NULL CHECK (healthy IN (0, 1))
) STRICT;

INSERT INTO registry (singleton, version, healthy) VALUES (1, 0, 1);

CREATE TABLE tenants (
    id             TEXT PRIMARY KEY,
    rate_limit     INTEGER NOT NULL CHECK (rate_limit > 0),
    token_budget   INTEGER NOT NULL CHECK (token_budget > 0),
    suspended      INTEGER NOT NULL CHECK (suspended IN (0, 1)),
    allowed_models TEXT,
    created_us     INTEGER NOT NULL,
    updated_us     INTEGER NOT NULL
) STRICT;

CREATE TABLE tenant_keys (
    key_id     TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    sha256     TEXT NOT NULL UNIQUE,
    created_us INTEGER NOT NULL,
    revoked_us INTEGER
) STRICT;

CREATE INDEX tenant_keys_by_tenant ON tenant_keys (tenant_id, created_us);
";

/// Version 4: the input written to the prompt cache (Anthropic), priced apart from the rest.
/// Rows stored before it have NULL, as records that never reported it do.
const V4: &str = "
ALTER TABLE billing ADD COLUMN cache_write_input_tokens INTEGER
    CHECK (cache_write_input_tokens >= 0);
";

/// Brings the schema up to [`VERSION`]; refuses a database written by a newer collector.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, VERSION)
}

/// Brings the schema up to `target` (at most [`VERSION`]; the tests stop short of it to make
/// the database an older collector left behind).
fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
    // Immediate: two collectors starting on one file cannot both run the same step.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
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
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::{migrate_to, VERSION};
    use crate::records::{BillingRecord, Record, UsageSource};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{BillingQuery, TimeRange};
    use crate::timestamp::Timestamp;

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn a_version_3_database_upgrades_in_place_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.db");

        // The database a version-3 collector left: its steps, and a row in its columns.
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, 3).unwrap();
        assert_eq!(version(&conn), 3);
        conn.execute(
            "INSERT INTO billing (id, tenant_id, timestamp, instant_us, input_tokens,
                 output_tokens, cached_input_tokens, reasoning_tokens, model, request_id, api,
                 usage_source, received_us)
             VALUES ('old-1', 'acme', '2026-12-03T18:00:00Z', ?1, 2103, 40, 2000, NULL,
                 'claude-test', 'req-old', 'anthropic_messages', 'reported', 0)",
            params![Timestamp::parse("2026-12-03T18:00:00Z")
                .unwrap()
                .unix_micros()],
        )
        .unwrap();
        drop(conn);

        let store = SqliteStore::open(&path).await.unwrap();
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
        store.close().await.unwrap();

        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn), VERSION);
        let negative = conn.execute(
            "UPDATE billing SET cache_write_input_tokens = -1 WHERE id = 'new-1'",
            [],
        );
        assert!(negative.is_err(), "the CHECK constraint is missing");
    }
}
