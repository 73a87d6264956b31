//! The registry on PostgreSQL. Every change first locks the one `registry` row, so changes
//! from any number of collectors happen one at a time and each gets the next version. The
//! snapshot reads in one `REPEATABLE READ` transaction: its version and its rows are of the
//! same moment.

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Transaction};
use tokio_postgres::{IsolationLevel, Row};

use super::write::{now_us, AuditColumns};
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

pub(super) async fn create_tenant(
    client: &mut Object,
    tenant: &NewTenant,
    key: &NewKey,
    audit: &AuditEntry,
) -> Result<TenantRecord, RegistryError> {
    let tx = begin(client).await?;
    if find(&tx, &tenant.id).await?.is_some() {
        return Err(RegistryError::TenantExists(tenant.id.clone()));
    }
    let now = now_us();
    insert_tenant(&tx, tenant, now).await?;
    insert_key(&tx, &tenant.id, key, now).await?;
    finish(tx, audit).await?;
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

pub(super) async fn tenant<C: GenericClient>(
    client: &C,
    id: &str,
) -> Result<Option<TenantRecord>, StoreError> {
    let Some(mut tenant) = find(client, id).await? else {
        return Ok(None);
    };
    let sql = format!("{KEY_COLUMNS} WHERE tenant_id = $1 ORDER BY created_us, key_id");
    for row in client.query(&sql, &[&id]).await? {
        tenant.keys.push(key_row(&row)?.1);
    }
    Ok(Some(tenant))
}

pub(super) async fn tenants(
    client: &Object,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<TenantRecord>, StoreError> {
    let sql = format!("{TENANT_COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = client
        .query(&sql, &[&after.unwrap_or(""), &i64::from(limit)])
        .await?;
    let mut tenants = rows.iter().map(tenant_row).collect::<Result<Vec<_>, _>>()?;
    let (Some(first), Some(last)) = (tenants.first(), tenants.last()) else {
        return Ok(tenants);
    };
    let sql = format!(
        "{KEY_COLUMNS} WHERE tenant_id >= $1 AND tenant_id <= $2 \
         ORDER BY tenant_id, created_us, key_id"
    );
    let keys = client
        .query(&sql, &[&first.id, &last.id])
        .await?
        .iter()
        .map(key_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_keys(&mut tenants, keys);
    Ok(tenants)
}

pub(super) async fn update_tenant(
    client: &mut Object,
    id: &str,
    patch: &TenantPatch,
    audit: &AuditEntry,
) -> Result<TenantRecord, RegistryError> {
    let tx = begin(client).await?;
    let Some(current) = tenant(&tx, id).await? else {
        return Err(RegistryError::TenantNotFound(id.to_owned()));
    };
    let mut next = patch.apply(current);
    next.updated_us = now_us();
    tx.execute(
        "UPDATE tenants SET rate_limit = $2, token_budget = $3, suspended = $4, \
         allowed_models = $5, updated_us = $6 WHERE id = $1",
        &[
            &id,
            &signed(next.rate_limit, "rate_limit")?,
            &signed(next.token_budget, "token_budget")?,
            &next.suspended,
            &models_to_text(&next.allowed_models),
            &next.updated_us,
        ],
    )
    .await?;
    finish(tx, audit).await?;
    Ok(next)
}

pub(super) async fn delete_tenant(
    client: &mut Object,
    id: &str,
    audit: &AuditEntry,
) -> Result<(), RegistryError> {
    let tx = begin(client).await?;
    tx.execute("DELETE FROM tenant_keys WHERE tenant_id = $1", &[&id])
        .await?;
    if tx
        .execute("DELETE FROM tenants WHERE id = $1", &[&id])
        .await?
        == 0
    {
        return Err(RegistryError::TenantNotFound(id.to_owned()));
    }
    finish(tx, audit).await?;
    Ok(())
}

pub(super) async fn add_key(
    client: &mut Object,
    tenant: &str,
    key: &NewKey,
    audit: &AuditEntry,
) -> Result<KeyRecord, RegistryError> {
    let tx = begin(client).await?;
    if find(&tx, tenant).await?.is_none() {
        return Err(RegistryError::TenantNotFound(tenant.to_owned()));
    }
    let active: i64 = tx
        .query_one(
            "SELECT count(*) FROM tenant_keys WHERE tenant_id = $1 AND revoked_us IS NULL",
            &[&tenant],
        )
        .await?
        .get(0);
    if active >= i64::from(MAX_ACTIVE_KEYS) {
        return Err(RegistryError::TooManyKeys {
            tenant: tenant.to_owned(),
            max: MAX_ACTIVE_KEYS,
        });
    }
    let now = now_us();
    insert_key(&tx, tenant, key, now).await?;
    touch(&tx, tenant, now).await?;
    finish(tx, audit).await?;
    Ok(KeyRecord {
        key_id: key.key_id.clone(),
        sha256: key.sha256.clone(),
        created_us: now,
        revoked_us: None,
    })
}

pub(super) async fn revoke_key(
    client: &mut Object,
    tenant: &str,
    key_id: &str,
    audit: &AuditEntry,
) -> Result<KeyRecord, RegistryError> {
    let tx = begin(client).await?;
    if find(&tx, tenant).await?.is_none() {
        return Err(RegistryError::TenantNotFound(tenant.to_owned()));
    }
    let now = now_us();
    let sql = "UPDATE tenant_keys SET revoked_us = $3 \
               WHERE key_id = $1 AND tenant_id = $2 AND revoked_us IS NULL \
               RETURNING tenant_id, key_id, sha256, created_us, revoked_us";
    let Some(row) = tx.query_opt(sql, &[&key_id, &tenant, &now]).await? else {
        return Err(RegistryError::KeyNotFound {
            tenant: tenant.to_owned(),
            key_id: key_id.to_owned(),
        });
    };
    let (_, key) = key_row(&row)?;
    touch(&tx, tenant, now).await?;
    finish(tx, audit).await?;
    Ok(key)
}

pub(super) async fn set_healthy(
    client: &mut Object,
    healthy: bool,
    audit: &AuditEntry,
) -> Result<RegistryState, StoreError> {
    let tx = begin(client).await?;
    let current = state(&tx).await?;
    if current.healthy == healthy {
        // Nothing changes, so the version stays; the call is audited all the same.
        record(&tx, audit).await?;
        tx.commit().await?;
        return Ok(current);
    }
    tx.execute(
        "UPDATE registry SET healthy = $1 WHERE singleton = 1",
        &[&healthy],
    )
    .await?;
    let version = finish(tx, audit).await?;
    Ok(RegistryState { version, healthy })
}

pub(super) async fn state<C: GenericClient>(client: &C) -> Result<RegistryState, StoreError> {
    let row = client
        .query_one(
            "SELECT version, healthy FROM registry WHERE singleton = 1",
            &[],
        )
        .await?;
    Ok(RegistryState {
        version: unsigned(row.try_get(0)?, "registry version")?,
        healthy: row.try_get(1)?,
    })
}

pub(super) async fn snapshot(client: &mut Object) -> Result<Snapshot, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let RegistryState { version, healthy } = state(&tx).await?;
    let sql = format!("{TENANT_COLUMNS} ORDER BY id");
    let mut tenants = Vec::new();
    for row in tx.query(&sql, &[]).await? {
        let t = tenant_row(&row)?;
        tenants.push(SnapshotTenant {
            id: t.id,
            rate_limit: t.rate_limit,
            token_budget: t.token_budget,
            suspended: t.suspended,
            allowed_models: t.allowed_models,
            api_key_sha256: Vec::new(),
        });
    }
    let keys = tx
        .query(
            "SELECT tenant_id, sha256 FROM tenant_keys WHERE revoked_us IS NULL \
             ORDER BY tenant_id, created_us, key_id",
            &[],
        )
        .await?;
    let mut tenant = tenants.iter_mut().peekable();
    for row in keys {
        let owner: String = row.try_get(0)?;
        while tenant.next_if(|t| t.id < owner).is_some() {}
        if let Some(t) = tenant.peek_mut().filter(|t| t.id == owner) {
            t.api_key_sha256.push(row.try_get(1)?);
        }
    }
    tx.commit().await?;
    Ok(Snapshot {
        version,
        healthy,
        tenants,
    })
}

pub(super) async fn import_tenants(
    client: &mut Object,
    tenants: &[(NewTenant, Vec<NewKey>)],
) -> Result<RegistryState, StoreError> {
    let tx = begin(client).await?;
    let now = now_us();
    for (tenant, keys) in tenants {
        insert_tenant(&tx, tenant, now).await?;
        for key in keys {
            insert_key(&tx, &tenant.id, key, now).await?;
        }
    }
    let version = bump(&tx).await?;
    let healthy = state(&tx).await?.healthy;
    tx.commit().await?;
    Ok(RegistryState { version, healthy })
}

/// A change's transaction, holding the registry row's lock until it ends.
async fn begin(client: &mut Object) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT version FROM registry WHERE singleton = 1 FOR UPDATE",
        &[],
    )
    .await?;
    Ok(tx)
}

async fn insert_tenant(
    tx: &Transaction<'_>,
    tenant: &NewTenant,
    now: i64,
) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO tenants (id, rate_limit, token_budget, suspended, allowed_models, \
             created_us, updated_us) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &tenant.id,
            &signed(tenant.rate_limit, "rate_limit")?,
            &signed(tenant.token_budget, "token_budget")?,
            &tenant.suspended,
            &models_to_text(&tenant.allowed_models),
            &now,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_key(
    tx: &Transaction<'_>,
    tenant: &str,
    key: &NewKey,
    now: i64,
) -> Result<(), StoreError> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO tenant_keys (key_id, tenant_id, sha256, created_us) \
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    tx.execute(&statement, &[&key.key_id, &tenant, &key.sha256, &now])
        .await?;
    Ok(())
}

async fn touch(tx: &Transaction<'_>, tenant: &str, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE tenants SET updated_us = $2 WHERE id = $1",
        &[&tenant, &now],
    )
    .await?;
    Ok(())
}

/// Bumps the version, stores the audit entry and commits; the new version.
async fn finish(tx: Transaction<'_>, audit: &AuditEntry) -> Result<u64, StoreError> {
    let version = bump(&tx).await?;
    record(&tx, audit).await?;
    tx.commit().await?;
    Ok(version)
}

async fn bump(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE registry SET version = version + 1 WHERE singleton = 1 RETURNING version",
            &[],
        )
        .await?;
    unsigned(row.try_get(0)?, "registry version")
}

async fn record(tx: &Transaction<'_>, audit: &AuditEntry) -> Result<(), StoreError> {
    let mut columns = AuditColumns::default();
    columns.push(audit);
    columns.insert(tx, now_us()).await?;
    Ok(())
}

async fn find<C: GenericClient>(client: &C, id: &str) -> Result<Option<TenantRecord>, StoreError> {
    let sql = format!("{TENANT_COLUMNS} WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(tenant_row)
        .transpose()
}

fn tenant_row(row: &Row) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: row.try_get(0)?,
        rate_limit: unsigned(row.try_get(1)?, "rate_limit")?,
        token_budget: unsigned(row.try_get(2)?, "token_budget")?,
        suspended: row.try_get(3)?,
        allowed_models: models_from_text(row.try_get(4)?)?,
        created_us: row.try_get(5)?,
        updated_us: row.try_get(6)?,
        keys: Vec::new(),
    })
}

fn key_row(row: &Row) -> Result<(String, KeyRecord), StoreError> {
    Ok((
        row.try_get(0)?,
        KeyRecord {
            key_id: row.try_get(1)?,
            sha256: row.try_get(2)?,
            created_us: row.try_get(3)?,
            revoked_us: row.try_get(4)?,
        },
    ))
}
