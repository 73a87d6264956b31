//! The schema and its version. `PRAGMA user_version` holds the version; each migration runs
//! in the transaction that also bumps it, so a crash leaves the old schema or the new one.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// The newest schema this code knows. Add a step to `STEPS` to migrate.
const VERSION: i64 = 3;

/// `STEPS[n]` takes the schema from version `n` to `n + 1`.
const STEPS: [&str; VERSION as usize] = [V1, V2, V3];

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

/// Brings the schema up to [`VERSION`]; refuses a database written by a newer collector.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}
