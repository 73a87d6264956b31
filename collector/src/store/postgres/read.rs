//! Queries: billing and audit listings, and usage sums.

use tokio_postgres::{Client, Row};

use crate::records::{Action, AuditEntry, AuditResult, BillingRecord, UsageSource};
use crate::store::{AuditQuery, BillingQuery, StoreError, TimeRange, Usage};
use crate::timestamp::Timestamp;

const BILLING: &str = "
    SELECT id, tenant_id, timestamp, instant_us, input_tokens, output_tokens,
           cached_input_tokens, cache_write_input_tokens, reasoning_tokens, model, request_id,
           api, usage_source
    FROM billing
    WHERE tenant_id = $1 AND instant_us >= $2 AND instant_us < $3
    ORDER BY instant_us, id
    LIMIT $4";

// `sum` over `bigint` is `numeric`, exact at any size; it comes back as text and is read
// into `u128`.
const USAGE: &str = "
    SELECT count(*), coalesce(sum(input_tokens), 0)::text, coalesce(sum(output_tokens), 0)::text
    FROM billing
    WHERE tenant_id = $1 AND instant_us >= $2 AND instant_us < $3";

const AUDIT_COLUMNS: &str = "
    SELECT id, timestamp, instant_us, tenant_id, action, result, resource, status_code,
           method, path, remote_addr, request_id, actor
    FROM audit";

pub(super) async fn billing(
    client: &Client,
    query: &BillingQuery,
) -> Result<Vec<BillingRecord>, StoreError> {
    let (from, to) = query.range.bounds();
    let limit = i64::from(query.limit);
    let rows = client
        .query(BILLING, &[&query.tenant_id, &from, &to, &limit])
        .await?;
    rows.iter().map(billing_row).collect()
}

pub(super) async fn usage(
    client: &Client,
    tenant_id: &str,
    range: TimeRange,
) -> Result<Usage, StoreError> {
    let (from, to) = range.bounds();
    let row = client.query_one(USAGE, &[&tenant_id, &from, &to]).await?;
    Ok(Usage {
        requests: count(row.get(0))?,
        input_tokens: sum(row.get(1))?,
        output_tokens: sum(row.get(2))?,
    })
}

pub(super) async fn audit(
    client: &Client,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, StoreError> {
    let (from, to) = query.range.bounds();
    let limit = i64::from(query.limit);
    let order = "ORDER BY instant_us, id LIMIT";

    // Two statements rather than `($1 IS NULL OR tenant_id = $1)`, so that each can use its
    // index.
    let rows = match &query.tenant_id {
        Some(tenant_id) => {
            let sql = format!(
                "{AUDIT_COLUMNS} WHERE tenant_id = $1 AND instant_us >= $2 AND instant_us < $3 \
                 {order} $4"
            );
            client.query(&sql, &[tenant_id, &from, &to, &limit]).await?
        }
        None => {
            let sql =
                format!("{AUDIT_COLUMNS} WHERE instant_us >= $1 AND instant_us < $2 {order} $3");
            client.query(&sql, &[&from, &to, &limit]).await?
        }
    };
    rows.iter().map(audit_row).collect()
}

fn billing_row(row: &Row) -> Result<BillingRecord, StoreError> {
    Ok(BillingRecord {
        id: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        timestamp: Timestamp::from_stored(row.try_get(2)?, row.try_get(3)?),
        input_tokens: count(row.try_get(4)?)?,
        output_tokens: count(row.try_get(5)?)?,
        cached_input_tokens: row.try_get::<_, Option<i64>>(6)?.map(count).transpose()?,
        cache_write_input_tokens: row.try_get::<_, Option<i64>>(7)?.map(count).transpose()?,
        reasoning_tokens: row.try_get::<_, Option<i64>>(8)?.map(count).transpose()?,
        model: row.try_get(9)?,
        request_id: row.try_get(10)?,
        api: row.try_get(11)?,
        usage_source: wire(row.try_get(12)?, UsageSource::parse)?,
    })
}

fn audit_row(row: &Row) -> Result<AuditEntry, StoreError> {
    let status: i32 = row.try_get(7)?;
    Ok(AuditEntry {
        id: row.try_get(0)?,
        timestamp: Timestamp::from_stored(row.try_get(1)?, row.try_get(2)?),
        tenant_id: row.try_get(3)?,
        action: wire(row.try_get(4)?, Action::parse)?,
        result: wire(row.try_get(5)?, AuditResult::parse)?,
        resource: row.try_get(6)?,
        status_code: u16::try_from(status)
            .map_err(|_| StoreError::Corrupt(format!("status_code {status}")))?,
        method: row.try_get(8)?,
        path: row.try_get(9)?,
        remote_addr: row.try_get(10)?,
        request_id: row.try_get(11)?,
        actor: row.try_get(12)?,
    })
}

fn count(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative count {value}")))
}

fn sum(text: String) -> Result<u128, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("token sum {text:?}")))
}

/// A closed-set string column, such as `usage_source`.
fn wire<T>(text: String, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("unknown value {text:?}")))
}
