//! The registry on SQLite. Changes run on the writer connection in `IMMEDIATE` transactions
//! (one writer at a time), reads on the reader, the snapshot inside one read transaction so
//! that its version and its rows are of the same moment.

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::write::{insert_audit, now_us, INSERT_AUDIT};
use crate::records::AuditEntry;
use crate::registry::{
    KeyRecord, NewTenant, RegistryState, Snapshot, SnapshotTenant, TenantPatch, TenantRecord,
    MAX_ACTIVE_KEYS,
};
use crate::store::registry::{
    attach_keys, models_from_text, models_to_text, signed, unsigned, NewKey, RegistryError,
};
use crate::store::StoreError;

const TENANT_COLUMNS: &str =
    "SELECT id, rate_limit, token_budget, suspended, allowed_models, created_us, updated_us \
     FROM tenants";
const KEY_COLUMNS: &str =
    "SELECT tenant_id, key_id, sha256, created_us, revoked_us FROM tenant_keys";

pub(super) fn create_tenant(
    conn: &mut Connection,
    tenant: &NewTenant,
    key: &NewKey,
    audit: &AuditEntry,
) -> Result<TenantRecord, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if find(&tx, &tenant.id)?.is_some() {
        return Err(RegistryError::TenantExists(tenant.id.clone()));
    }
    let now = now_us();
    insert_tenant(&tx, tenant, now)?;
    insert_key(&tx, &tenant.id, key, now)?;
    finish(tx, audit)?;
    Ok(TenantRecord {
        id: tenant.id.clone(),
        rate_limit: tenant.rate_limit,
        token_budget: tenant.token_budget,
        suspended: tenant.suspended,
        allowed_models: tenant.allowed_models.clone(),
        created_us: now,
        updated_us: now,
        keys: vec![KeyRecord {
            key_id: key.key_id.clone(),
            sha256: key.sha256.clone(),
            created_us: now,
            revoked_us: None,
        }],
    })
}

pub(super) fn tenant(conn: &Connection, id: &str) -> Result<Option<TenantRecord>, StoreError> {
    let Some(mut tenant) = find(conn, id)? else {
        return Ok(None);
    };
    let sql = format!("{KEY_COLUMNS} WHERE tenant_id = ?1 ORDER BY created_us, key_id");
    let mut statement = conn.prepare_cached(&sql)?;
    let keys = statement.query_map([id], key_row)?;
    for key in keys {
        tenant.keys.push(key?.1);
    }
    Ok(Some(tenant))
}

pub(super) fn tenants(
    conn: &Connection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<TenantRecord>, StoreError> {
    let sql = format!("{TENANT_COLUMNS} WHERE id > ?1 ORDER BY id LIMIT ?2");
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params![after.unwrap_or(""), limit], tenant_row)?;
    let mut tenants = rows.collect::<Result<Vec<_>, _>>()?;
    let (Some(first), Some(last)) = (tenants.first(), tenants.last()) else {
        return Ok(tenants);
    };

    let sql = format!(
        "{KEY_COLUMNS} WHERE tenant_id >= ?1 AND tenant_id <= ?2 \
         ORDER BY tenant_id, created_us, key_id"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let keys = statement
        .query_map([&first.id, &last.id], key_row)?
        .collect::<Result<Vec<_>, _>>()?;
    attach_keys(&mut tenants, keys);
    Ok(tenants)
}

pub(super) fn update_tenant(
    conn: &mut Connection,
    id: &str,
    patch: &TenantPatch,
    audit: &AuditEntry,
) -> Result<TenantRecord, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(current) = tenant(&tx, id)? else {
        return Err(RegistryError::TenantNotFound(id.to_owned()));
    };
    let mut next = patch.apply(current);
    next.updated_us = now_us();
    tx.execute(
        "UPDATE tenants SET rate_limit = ?2, token_budget = ?3, suspended = ?4, \
         allowed_models = ?5, updated_us = ?6 WHERE id = ?1",
        params![
            id,
            signed(next.rate_limit, "rate_limit")?,
            signed(next.token_budget, "token_budget")?,
            next.suspended,
            models_to_text(&next.allowed_models),
            next.updated_us,
        ],
    )?;
    finish(tx, audit)?;
    Ok(next)
}

pub(super) fn delete_tenant(
    conn: &mut Connection,
    id: &str,
    audit: &AuditEntry,
) -> Result<(), RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM tenant_keys WHERE tenant_id = ?1", [id])?;
    if tx.execute("DELETE FROM tenants WHERE id = ?1", [id])? == 0 {
        return Err(RegistryError::TenantNotFound(id.to_owned()));
    }
    finish(tx, audit)?;
    Ok(())
}

pub(super) fn add_key(
    conn: &mut Connection,
    tenant: &str,
    key: &NewKey,
    audit: &AuditEntry,
) -> Result<KeyRecord, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if find(&tx, tenant)?.is_none() {
        return Err(RegistryError::TenantNotFound(tenant.to_owned()));
    }
    let active: u32 = tx.query_row(
        "SELECT count(*) FROM tenant_keys WHERE tenant_id = ?1 AND revoked_us IS NULL",
        [tenant],
        |row| row.get(0),
    )?;
    if active >= MAX_ACTIVE_KEYS {
        return Err(RegistryError::TooManyKeys {
            tenant: tenant.to_owned(),
            max: MAX_ACTIVE_KEYS,
        });
    }
    let now = now_us();
    insert_key(&tx, tenant, key, now)?;
    touch(&tx, tenant, now)?;
    finish(tx, audit)?;
    Ok(KeyRecord {
        key_id: key.key_id.clone(),
        sha256: key.sha256.clone(),
        created_us: now,
        revoked_us: None,
    })
}

pub(super) fn revoke_key(
    conn: &mut Connection,
    tenant: &str,
    key_id: &str,
    audit: &AuditEntry,
) -> Result<KeyRecord, RegistryError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if find(&tx, tenant)?.is_none() {
        return Err(RegistryError::TenantNotFound(tenant.to_owned()));
    }
    let now = now_us();
    let revoked = tx.execute(
        "UPDATE tenant_keys SET revoked_us = ?3 \
         WHERE key_id = ?1 AND tenant_id = ?2 AND revoked_us IS NULL",
        params![key_id, tenant, now],
    )?;
    if revoked == 0 {
        return Err(RegistryError::KeyNotFound {
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
        });
    }
    let sql = format!("{KEY_COLUMNS} WHERE key_id = ?1");
    let (_, key) = tx.query_row(&sql, [key_id], key_row)?;
    touch(&tx, tenant, now)?;
    finish(tx, audit)?;
    Ok(key)
}

pub(super) fn set_healthy(
    conn: &mut Connection,
    healthy: bool,
    audit: &AuditEntry,
) -> Result<RegistryState, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = state(&tx)?;
    if current.healthy == healthy {
        // Nothing changes, so the version stays; the call is audited all the same.
        record(&tx, audit)?;
        tx.commit()?;
        return Ok(current);
    }
    tx.execute(
        "UPDATE registry SET healthy = ?1 WHERE singleton = 1",
        [healthy],
    )?;
    let version = finish(tx, audit)?;
    Ok(RegistryState { version, healthy })
}

pub(super) fn state(conn: &Connection) -> Result<RegistryState, StoreError> {
    let (version, healthy): (i64, bool) = conn.query_row(
        "SELECT version, healthy FROM registry WHERE singleton = 1",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(RegistryState {
        version: unsigned(version, "registry version")?,
        healthy,
    })
}

pub(super) fn snapshot(conn: &mut Connection) -> Result<Snapshot, StoreError> {
    // A read transaction: the version and every row below are of one commit.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let RegistryState { version, healthy } = state(&tx)?;
    let mut tenants = Vec::new();
    {
        let sql = format!("{TENANT_COLUMNS} ORDER BY id");
        let mut statement = tx.prepare_cached(&sql)?;
        let rows = statement.query_map([], tenant_row)?;
        for row in rows {
            let t = row?;
            tenants.push(SnapshotTenant {
                id: t.id,
                rate_limit: t.rate_limit,
                token_budget: t.token_budget,
                suspended: t.suspended,
                allowed_models: t.allowed_models,
                api_key_sha256: Vec::new(),
            });
        }
        let mut statement = tx.prepare_cached(
            "SELECT tenant_id, sha256 FROM tenant_keys WHERE revoked_us IS NULL \
             ORDER BY tenant_id, created_us, key_id",
        )?;
        let keys = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let mut tenant = tenants.iter_mut().peekable();
        for key in keys {
            let (owner, sha256): (String, String) = key?;
            while tenant.next_if(|t| t.id < owner).is_some() {}
            if let Some(t) = tenant.peek_mut().filter(|t| t.id == owner) {
                t.api_key_sha256.push(sha256);
            }
        }
    }
    tx.commit()?;
    Ok(Snapshot {
        version,
        healthy,
        tenants,
    })
}

pub(super) fn import_tenants(
    conn: &mut Connection,
    tenants: &[(NewTenant, Vec<NewKey>)],
) -> Result<RegistryState, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_us();
    for (tenant, keys) in tenants {
        insert_tenant(&tx, tenant, now)?;
        for key in keys {
            insert_key(&tx, &tenant.id, key, now)?;
        }
    }
    let version = bump(&tx)?;
    let healthy = state(&tx)?.healthy;
    tx.commit()?;
    Ok(RegistryState { version, healthy })
}

fn insert_tenant(tx: &Transaction<'_>, tenant: &NewTenant, now: i64) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO tenants (id, rate_limit, token_budget, suspended, allowed_models, \
         created_us, updated_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?;
    statement.execute(params![
        tenant.id,
        signed(tenant.rate_limit, "rate_limit")?,
        signed(tenant.token_budget, "token_budget")?,
        tenant.suspended,
        models_to_text(&tenant.allowed_models),
        now,
    ])?;
    Ok(())
}

fn insert_key(
    tx: &Transaction<'_>,
    tenant: &str,
    key: &NewKey,
    now: i64,
) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO tenant_keys (key_id, tenant_id, sha256, created_us) VALUES (?1, ?2, ?3, ?4)",
    )?;
    statement.execute(params![key.key_id, tenant, key.sha256, now])?;
    Ok(())
}

fn touch(tx: &Transaction<'_>, tenant: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tenants SET updated_us = ?2 WHERE id = ?1",
        params![tenant, now],
    )?;
    Ok(())
}

/// Bumps the version, stores the audit entry and commits; the new version.
fn finish(tx: Transaction<'_>, audit: &AuditEntry) -> Result<u64, StoreError> {
    let version = bump(&tx)?;
    record(&tx, audit)?;
    tx.commit()?;
    Ok(version)
}

fn bump(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let version: i64 = tx.query_row(
        "UPDATE registry SET version = version + 1 WHERE singleton = 1 RETURNING version",
        [],
        |row| row.get(0),
    )?;
    unsigned(version, "registry version")
}

fn record(tx: &Transaction<'_>, audit: &AuditEntry) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(INSERT_AUDIT)?;
    insert_audit(&mut statement, audit, now_us())?;
    Ok(())
}

fn find(conn: &Connection, id: &str) -> Result<Option<TenantRecord>, StoreError> {
    let sql = format!("{TENANT_COLUMNS} WHERE id = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    Ok(statement.query_row([id], tenant_row).optional()?)
}

fn tenant_row(row: &Row<'_>) -> rusqlite::Result<TenantRecord> {
    let text: Option<String> = row.get(4)?;
    let allowed_models = models_from_text(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(TenantRecord {
        id: row.get(0)?,
        rate_limit: positive(row, 1)?,
        token_budget: positive(row, 2)?,
        suspended: row.get(3)?,
        allowed_models,
        created_us: row.get(5)?,
        updated_us: row.get(6)?,
        keys: Vec::new(),
    })
}

fn key_row(row: &Row<'_>) -> rusqlite::Result<(String, KeyRecord)> {
    Ok((
        row.get(0)?,
        KeyRecord {
            key_id: row.get(1)?,
            sha256: row.get(2)?,
            created_us: row.get(3)?,
            revoked_us: row.get(4)?,
        },
    ))
}

fn positive(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}
