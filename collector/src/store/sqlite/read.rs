//! Queries: billing and audit listings, and usage sums.

use rusqlite::types::Type;
use rusqlite::{params, Connection, Row};

use crate::records::{Action, AuditEntry, AuditResult, BillingRecord, UsageSource};
use crate::store::{AuditQuery, BillingQuery, StoreError, TimeRange, Usage};
use crate::timestamp::Timestamp;

const BILLING: &str = "
    SELECT id, tenant_id, timestamp, instant_us, input_tokens, output_tokens,
           cached_input_tokens, cache_write_input_tokens, reasoning_tokens, model, request_id,
           api, usage_source
    FROM billing
    WHERE tenant_id = ?1 AND instant_us >= ?2 AND instant_us < ?3
    ORDER BY instant_us, id
    LIMIT ?4";

// Each token count is summed as its high and low 32 bits apart. A count is at most 2^53, so
// neither partial sum can overflow SQLite's 64-bit integers below 2^31 rows, where one plain
// sum of 2^53-sized counts would overflow after 1024. The halves are joined in `u128`.
const USAGE: &str = "
    SELECT count(*),
           sum(input_tokens >> 32), sum(input_tokens & 4294967295),
           sum(output_tokens >> 32), sum(output_tokens & 4294967295)
    FROM billing
    WHERE tenant_id = ?1 AND instant_us >= ?2 AND instant_us < ?3";

const AUDIT_COLUMNS: &str = "
    SELECT id, timestamp, instant_us, tenant_id, action, result, resource, status_code,
           method, path, remote_addr, request_id, actor
    FROM audit";

pub(super) fn billing(
    conn: &Connection,
    query: &BillingQuery,
) -> Result<Vec<BillingRecord>, StoreError> {
    let (from, to) = query.range.bounds();
    let mut statement = conn.prepare_cached(BILLING)?;
    let rows = statement.query_map(params![query.tenant_id, from, to, query.limit], billing_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn usage(
    conn: &Connection,
    tenant_id: &str,
    range: TimeRange,
) -> Result<Usage, StoreError> {
    let (from, to) = range.bounds();
    let mut statement = conn.prepare_cached(USAGE)?;
    let usage = statement.query_row(params![tenant_id, from, to], |row| {
        Ok(Usage {
            requests: count(row, 0)?,
            input_tokens: joined(row, 1, 2)?,
            output_tokens: joined(row, 3, 4)?,
        })
    })?;
    Ok(usage)
}

pub(super) fn audit(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    let (from, to) = query.range.bounds();
    let order = "ORDER BY instant_us, id LIMIT";

    // Two statements rather than `(?1 IS NULL OR tenant_id = ?1)`, which SQLite cannot answer
    // from the (tenant_id, instant_us) index.
    let entries = match &query.tenant_id {
        Some(tenant_id) => {
            let sql = format!(
                "{AUDIT_COLUMNS} WHERE tenant_id = ?1 AND instant_us >= ?2 AND instant_us < ?3 \
                 {order} ?4"
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![tenant_id, from, to, query.limit], audit_row)?;
            rows.collect::<Result<_, _>>()?
        }
        None => {
            let sql =
                format!("{AUDIT_COLUMNS} WHERE instant_us >= ?1 AND instant_us < ?2 {order} ?3");
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![from, to, query.limit], audit_row)?;
            rows.collect::<Result<_, _>>()?
        }
    };
    Ok(entries)
}

fn billing_row(row: &Row<'_>) -> rusqlite::Result<BillingRecord> {
    Ok(BillingRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        timestamp: Timestamp::from_stored(row.get(2)?, row.get(3)?),
        input_tokens: count(row, 4)?,
        output_tokens: count(row, 5)?,
        cached_input_tokens: optional_count(row, 6)?,
        cache_write_input_tokens: optional_count(row, 7)?,
        reasoning_tokens: optional_count(row, 8)?,
        model: row.get(9)?,
        request_id: row.get(10)?,
        api: row.get(11)?,
        usage_source: wire(row, 12, UsageSource::parse)?,
    })
}

fn audit_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get(0)?,
        timestamp: Timestamp::from_stored(row.get(1)?, row.get(2)?),
        tenant_id: row.get(3)?,
        action: wire(row, 4, Action::parse)?,
        result: wire(row, 5, AuditResult::parse)?,
        resource: row.get(6)?,
        status_code: row.get(7)?,
        method: row.get(8)?,
        path: row.get(9)?,
        remote_addr: row.get(10)?,
        request_id: row.get(11)?,
        actor: row.get(12)?,
    })
}

fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}

fn optional_count(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(index)? {
        Some(_) => count(row, index).map(Some),
        None => Ok(None),
    }
}

/// Joins the high and low partial sums of `USAGE`; no rows sum to NULL, which is zero.
fn joined(row: &Row<'_>, high: usize, low: usize) -> rusqlite::Result<u128> {
    let part = |index| -> rusqlite::Result<u128> {
        let value: Option<i64> = row.get(index)?;
        let value = value.unwrap_or(0);
        u128::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
    };
    Ok((part(high)? << 32) + part(low)?)
}

/// A closed-set string column, such as `usage_source`.
fn wire<T>(row: &Row<'_>, index: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).ok_or_else(|| {
        let problem = format!("unknown value {text:?}");
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, problem.into())
    })
}
