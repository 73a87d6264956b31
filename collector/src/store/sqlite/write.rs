//! Storing a batch: one transaction, skipping ids already stored.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, TransactionBehavior};

use crate::records::{AuditEntry, BillingRecord, Record};
use crate::store::{Inserted, Kind, Outcome, StoreError};

// `ON CONFLICT (id) DO NOTHING` rather than `INSERT OR IGNORE`: the latter would also skip a
// row that breaks a NOT NULL or CHECK constraint and count it as a duplicate.
const INSERT_BILLING: &str = "
    INSERT INTO billing (
        id, tenant_id, timestamp, instant_us, input_tokens, output_tokens,
        cached_input_tokens, cache_write_input_tokens, reasoning_tokens, model, request_id, api,
        usage_source, received_us
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    ON CONFLICT (id) DO NOTHING";

pub(super) const INSERT_AUDIT: &str = "
    INSERT INTO audit (
        id, timestamp, instant_us, tenant_id, action, result, resource, status_code,
        method, path, remote_addr, request_id, received_us, actor
    ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
    ON CONFLICT (id) DO NOTHING";

/// Stores `records` in one transaction; on any error it rolls back and nothing is stored.
pub(super) fn insert_batch(
    conn: &mut Connection,
    records: &[Record],
) -> Result<Inserted, StoreError> {
    let received_us = now_us();
    let mut inserted = Inserted::default();

    // Immediate: take the write lock now rather than upgrading midway, which can fail busy.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut billing = tx.prepare_cached(INSERT_BILLING)?;
        let mut audit = tx.prepare_cached(INSERT_AUDIT)?;
        for record in records {
            let (changed, outcome) = match record {
                Record::Billing(record) => (
                    insert_billing(&mut billing, record, received_us)?,
                    &mut inserted.billing,
                ),
                Record::Audit(entry) => (
                    insert_audit(&mut audit, entry, received_us)?,
                    &mut inserted.audit,
                ),
            };
            count(outcome, changed);
        }
    }
    tx.commit()?;

    Ok(inserted)
}

fn count(outcome: &mut Outcome, changed: usize) {
    if changed == 0 {
        outcome.duplicates += 1;
    } else {
        outcome.accepted += 1;
    }
}

/// Deletes at most `limit` rows of `kind` older than `before`, in one short transaction.
pub(super) fn delete_before(
    conn: &mut Connection,
    kind: Kind,
    before: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    // `rowid` picks the rows through the time index without sorting; the table names are
    // fixed strings, never input.
    let sql = match kind {
        Kind::Billing => {
            "DELETE FROM billing WHERE rowid IN \
             (SELECT rowid FROM billing WHERE instant_us < ?1 LIMIT ?2)"
        }
        Kind::Audit => {
            "DELETE FROM audit WHERE rowid IN \
             (SELECT rowid FROM audit WHERE instant_us < ?1 LIMIT ?2)"
        }
    };
    let deleted = conn.prepare_cached(sql)?.execute(params![before, limit])?;
    Ok(deleted as u64)
}

fn insert_billing(
    statement: &mut rusqlite::CachedStatement<'_>,
    record: &BillingRecord,
    received_us: i64,
) -> Result<usize, StoreError> {
    Ok(statement.execute(params![
        record.id,
        record.tenant_id,
        record.timestamp.as_str(),
        record.timestamp.unix_micros(),
        integer(record.input_tokens, "input_tokens")?,
        integer(record.output_tokens, "output_tokens")?,
        record
            .cached_input_tokens
            .map(|n| integer(n, "cached_input_tokens"))
            .transpose()?,
        record
            .cache_write_input_tokens
            .map(|n| integer(n, "cache_write_input_tokens"))
            .transpose()?,
        record
            .reasoning_tokens
            .map(|n| integer(n, "reasoning_tokens"))
            .transpose()?,
        record.model,
        record.request_id,
        record.api,
        record.usage_source.as_str(),
        received_us,
    ])?)
}

pub(super) fn insert_audit(
    statement: &mut rusqlite::CachedStatement<'_>,
    entry: &AuditEntry,
    received_us: i64,
) -> Result<usize, StoreError> {
    Ok(statement.execute(params![
        entry.id,
        entry.timestamp.as_str(),
        entry.timestamp.unix_micros(),
        entry.tenant_id,
        entry.action.as_str(),
        entry.result.as_str(),
        entry.resource,
        entry.status_code,
        entry.method,
        entry.path,
        entry.remote_addr,
        entry.request_id,
        received_us,
        entry.actor,
    ])?)
}

/// SQLite integers are signed 64-bit; validation keeps counts far below that.
fn integer(count: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(count).map_err(|_| StoreError::OutOfRange(format!("{field} = {count}")))
}

pub(super) fn now_us() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}
