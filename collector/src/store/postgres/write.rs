//! Storing a batch: one transaction, one statement per kind, ids already stored skipped.
//!
//! Each statement sends its rows as one array per column and `unnest`s them on the server,
//! so a batch of a thousand records costs two round trips, not two thousand.

use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::Object;
use tokio_postgres::Client;

use crate::records::{AuditEntry, BillingRecord, Record};
use crate::store::{Inserted, Kind, Outcome, StoreError};

// `ORDER BY id`: rows are inserted, and their index entries locked, in id order (see the
// module doc of the backend for why).
const INSERT_BILLING: &str = "
    INSERT INTO billing (
        id, tenant_id, timestamp, instant_us, input_tokens, output_tokens,
        cached_input_tokens, cache_write_input_tokens, reasoning_tokens, model, request_id, api,
        usage_source, received_us
    )
    SELECT r.*, $14::bigint FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
        $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[],
        $13::text[]
    ) AS r
    ORDER BY 1
    ON CONFLICT (id) DO NOTHING";

const INSERT_AUDIT: &str = "
    INSERT INTO audit (
        id, timestamp, instant_us, tenant_id, action, result, resource, status_code,
        method, path, remote_addr, request_id, actor, received_us
    )
    SELECT r.*, $14::bigint FROM unnest(
        $1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::integer[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]
    ) AS r
    ORDER BY 1
    ON CONFLICT (id) DO NOTHING";

/// Stores `records` in one transaction; on any error it rolls back and nothing is stored.
pub(super) async fn insert_batch(
    client: &mut Object,
    records: &[Record],
) -> Result<Inserted, StoreError> {
    let received_us = now_us();
    let mut billing = BillingColumns::default();
    let mut audit = AuditColumns::default();
    for record in records {
        match record {
            Record::Billing(record) => billing.push(record)?,
            Record::Audit(entry) => audit.push(entry),
        }
    }

    let tx = client.transaction().await?;
    let mut inserted = Inserted::default();
    if billing.rows > 0 {
        let stored = billing.insert(&tx, received_us).await?;
        inserted.billing = outcome(billing.rows, stored);
    }
    if audit.rows > 0 {
        let stored = audit.insert(&tx, received_us).await?;
        inserted.audit = outcome(audit.rows, stored);
    }
    tx.commit().await?;
    Ok(inserted)
}

fn outcome(rows: u64, stored: u64) -> Outcome {
    Outcome {
        accepted: stored,
        duplicates: rows.saturating_sub(stored),
    }
}

/// Deletes at most `limit` rows of `kind` older than `before`.
pub(super) async fn delete_before(
    client: &Client,
    kind: Kind,
    before: i64,
    limit: u32,
) -> Result<u64, StoreError> {
    // The table names are fixed strings, never input.
    let sql = match kind {
        Kind::Billing => {
            "DELETE FROM billing WHERE id IN \
             (SELECT id FROM billing WHERE instant_us < $1 LIMIT $2)"
        }
        Kind::Audit => {
            "DELETE FROM audit WHERE id IN \
             (SELECT id FROM audit WHERE instant_us < $1 LIMIT $2)"
        }
    };
    let deleted = client.execute(sql, &[&before, &i64::from(limit)]).await?;
    Ok(deleted)
}

#[derive(Default)]
struct BillingColumns {
    rows: u64,
    id: Vec<String>,
    tenant_id: Vec<String>,
    timestamp: Vec<String>,
    instant_us: Vec<i64>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cached_input_tokens: Vec<Option<i64>>,
    cache_write_input_tokens: Vec<Option<i64>>,
    reasoning_tokens: Vec<Option<i64>>,
    model: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    api: Vec<String>,
    usage_source: Vec<&'static str>,
}

impl BillingColumns {
    fn push(&mut self, record: &BillingRecord) -> Result<(), StoreError> {
        self.rows += 1;
        self.id.push(record.id.clone());
        self.tenant_id.push(record.tenant_id.clone());
        self.timestamp.push(record.timestamp.as_str().to_owned());
        self.instant_us.push(record.timestamp.unix_micros());
        self.input_tokens
            .push(integer(record.input_tokens, "input_tokens")?);
        self.output_tokens
            .push(integer(record.output_tokens, "output_tokens")?);
        self.cached_input_tokens.push(
            record
                .cached_input_tokens
                .map(|n| integer(n, "cached_input_tokens"))
                .transpose()?,
        );
        self.cache_write_input_tokens.push(
            record
                .cache_write_input_tokens
                .map(|n| integer(n, "cache_write_input_tokens"))
                .transpose()?,
        );
        self.reasoning_tokens.push(
            record
                .reasoning_tokens
                .map(|n| integer(n, "reasoning_tokens"))
                .transpose()?,
        );
        self.model.push(record.model.clone());
        self.request_id.push(record.request_id.clone());
        self.api.push(record.api.clone());
        self.usage_source.push(record.usage_source.as_str());
        Ok(())
    }

    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        received_us: i64,
    ) -> Result<u64, StoreError> {
        let statement = tx.prepare_cached(INSERT_BILLING).await?;
        let stored = tx
            .execute(
                &statement,
                &[
                    &self.id,
                    &self.tenant_id,
                    &self.timestamp,
                    &self.instant_us,
                    &self.input_tokens,
                    &self.output_tokens,
                    &self.cached_input_tokens,
                    &self.cache_write_input_tokens,
                    &self.reasoning_tokens,
                    &self.model,
                    &self.request_id,
                    &self.api,
                    &self.usage_source,
                    &received_us,
                ],
            )
            .await?;
        Ok(stored)
    }
}

#[derive(Default)]
pub(super) struct AuditColumns {
    rows: u64,
    id: Vec<String>,
    timestamp: Vec<String>,
    instant_us: Vec<i64>,
    tenant_id: Vec<Option<String>>,
    action: Vec<&'static str>,
    result: Vec<&'static str>,
    resource: Vec<Option<String>>,
    status_code: Vec<i32>,
    method: Vec<String>,
    path: Vec<String>,
    remote_addr: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    actor: Vec<Option<String>>,
}

impl AuditColumns {
    pub(super) fn push(&mut self, entry: &AuditEntry) {
        self.rows += 1;
        self.id.push(entry.id.clone());
        self.timestamp.push(entry.timestamp.as_str().to_owned());
        self.instant_us.push(entry.timestamp.unix_micros());
        self.tenant_id.push(entry.tenant_id.clone());
        self.action.push(entry.action.as_str());
        self.result.push(entry.result.as_str());
        self.resource.push(entry.resource.clone());
        self.status_code.push(i32::from(entry.status_code));
        self.method.push(entry.method.clone());
        self.path.push(entry.path.clone());
        self.remote_addr.push(entry.remote_addr.clone());
        self.request_id.push(entry.request_id.clone());
        self.actor.push(entry.actor.clone());
    }

    pub(super) async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        received_us: i64,
    ) -> Result<u64, StoreError> {
        let statement = tx.prepare_cached(INSERT_AUDIT).await?;
        let stored = tx
            .execute(
                &statement,
                &[
                    &self.id,
                    &self.timestamp,
                    &self.instant_us,
                    &self.tenant_id,
                    &self.action,
                    &self.result,
                    &self.resource,
                    &self.status_code,
                    &self.method,
                    &self.path,
                    &self.remote_addr,
                    &self.request_id,
                    &self.actor,
                    &received_us,
                ],
            )
            .await?;
        Ok(stored)
    }
}

/// PostgreSQL's `bigint` is signed 64-bit; validation keeps counts far below that.
fn integer(count: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(count).map_err(|_| StoreError::OutOfRange(format!("{field} = {count}")))
}

pub(super) fn now_us() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}
