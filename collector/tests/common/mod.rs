//! Helpers shared by the integration tests: record builders and a store in a temp directory.

#![allow(dead_code)]

use collector::records::{Action, AuditEntry, AuditResult, BillingRecord, Record, UsageSource};
use collector::store::{SqliteStore, Store};
use collector::timestamp::Timestamp;
use tempfile::TempDir;

pub const ADMIN: &str = "admin-token-for-tests";
pub const INGEST: &str = "ingest-token-for-tests";

/// A store on a fresh database file; the directory lives as long as the returned guard.
pub async fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("collector.db"))
        .await
        .unwrap();
    (dir, Store::Sqlite(store))
}

pub fn billing(id: &str, tenant: &str, timestamp: &str, input: u64, output: u64) -> BillingRecord {
    BillingRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        input_tokens: input,
        output_tokens: output,
        timestamp: Timestamp::parse(timestamp).unwrap(),
        model: Some("demo-model".into()),
        request_id: None,
        api: "openai_chat".into(),
        usage_source: UsageSource::Reported,
        cached_input_tokens: Some(0),
        reasoning_tokens: None,
    }
}

pub fn audit(id: &str, tenant: Option<&str>, timestamp: &str) -> AuditEntry {
    AuditEntry {
        id: id.into(),
        timestamp: Timestamp::parse(timestamp).unwrap(),
        tenant_id: tenant.map(Into::into),
        action: Action::Inference,
        result: AuditResult::Success,
        resource: Some("demo-model".into()),
        status_code: 200,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        remote_addr: Some("127.0.0.1:5000".into()),
        request_id: Some("req-1".into()),
    }
}

pub fn bill(id: &str, tenant: &str, timestamp: &str) -> Record {
    Record::Billing(billing(id, tenant, timestamp, 1, 2))
}

pub fn entry(id: &str, tenant: Option<&str>, timestamp: &str) -> Record {
    Record::Audit(audit(id, tenant, timestamp))
}
