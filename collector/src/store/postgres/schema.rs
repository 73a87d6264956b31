//! The schema and its version. The table `collector_schema` holds the version; each
//! migration runs in the transaction that also bumps it (PostgreSQL's DDL is
//! transactional), under an advisory lock, so that several collectors starting at once
//! migrate one after the other and a crash leaves the old schema or the new one.

use deadpool_postgres::Object;

use crate::store::StoreError;

/// The newest schema this code knows. Add a step to `STEPS` to migrate.
const VERSION: i64 = 2;

/// `STEPS[n]` takes the schema from version `n` to `n + 1`.
const STEPS: [&str; VERSION as usize] = [V1, V2];

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

/// Brings the schema up to [`VERSION`]; refuses a database written by a newer collector.
pub(super) async fn migrate(client: &mut Object) -> Result<(), StoreError> {
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
