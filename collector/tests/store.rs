//! The SQLite store on a temp-file database: idempotence, ranges, ordering, sums, atomicity.

mod common;

use collector::records::{BillingRecord, Record, MAX_TOKENS};
use collector::store::{
    AuditQuery, BillingQuery, Inserted, SqliteStore, Store, StoreError, TimeRange,
};
use collector::timestamp::Timestamp;
use common::{audit, bill, billing, entry, temp_store};

fn at(text: &str) -> Option<i64> {
    Some(Timestamp::parse(text).unwrap().unix_micros())
}

async fn billing_ids(store: &Store, tenant: &str, range: TimeRange) -> Vec<String> {
    let query = BillingQuery {
        tenant_id: tenant.into(),
        range,
        limit: 10_000,
    };
    store
        .billing(query)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

async fn audit_ids(store: &Store, tenant: Option<&str>, range: TimeRange) -> Vec<String> {
    let query = AuditQuery {
        tenant_id: tenant.map(Into::into),
        range,
        limit: 10_000,
    };
    store
        .audit(query)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[tokio::test]
async fn a_batch_sent_twice_is_stored_once() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        bill("b1", "acme", "2026-12-03T18:00:00Z"),
        entry("a1", Some("acme"), "2026-12-03T18:00:00Z"),
    ];

    let first = store.insert_batch(batch.clone()).await.unwrap();
    assert_eq!(
        first,
        Inserted {
            accepted: 2,
            duplicates: 0
        }
    );
    let second = store.insert_batch(batch).await.unwrap();
    assert_eq!(
        second,
        Inserted {
            accepted: 0,
            duplicates: 2
        }
    );

    assert_eq!(
        billing_ids(&store, "acme", TimeRange::default()).await,
        ["b1"]
    );
    assert_eq!(audit_ids(&store, None, TimeRange::default()).await, ["a1"]);
}

#[tokio::test]
async fn a_repeated_id_within_one_batch_counts_as_a_duplicate() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        bill("b1", "acme", "2026-12-03T18:00:00Z"),
        bill("b1", "acme", "2026-12-03T19:00:00Z"),
        bill("b2", "acme", "2026-12-03T18:00:00Z"),
    ];
    let inserted = store.insert_batch(batch).await.unwrap();
    assert_eq!(
        inserted,
        Inserted {
            accepted: 2,
            duplicates: 1
        }
    );
}

#[tokio::test]
async fn records_come_back_as_they_were_sent() {
    let (_dir, store) = temp_store().await;
    let mut sent = billing("b1", "acme", "2026-12-03T18:07:14.123456789+05:30", 12, 34);
    sent.request_id = Some("req-9".into());
    sent.reasoning_tokens = Some(7);
    let sent_entry = audit("a1", None, "2026-12-03T18:07:14.1Z");
    store
        .insert_batch(vec![
            Record::Billing(sent.clone()),
            Record::Audit(sent_entry.clone()),
        ])
        .await
        .unwrap();

    let query = BillingQuery {
        tenant_id: "acme".into(),
        range: TimeRange::default(),
        limit: 10,
    };
    assert_eq!(store.billing(query).await.unwrap(), vec![sent]);
    let query = AuditQuery {
        tenant_id: None,
        range: TimeRange::default(),
        limit: 10,
    };
    assert_eq!(store.audit(query).await.unwrap(), vec![sent_entry]);
}

#[tokio::test]
async fn from_is_inclusive_and_to_is_exclusive() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        bill("b0", "acme", "2026-12-03T17:59:59.999999Z"),
        bill("b1", "acme", "2026-12-03T18:00:00Z"),
        bill("b2", "acme", "2026-12-03T18:30:00Z"),
        bill("b3", "acme", "2026-12-03T19:00:00Z"),
        entry("a1", Some("acme"), "2026-12-03T18:00:00Z"),
        entry("a3", Some("acme"), "2026-12-03T19:00:00Z"),
    ];
    store.insert_batch(batch).await.unwrap();

    let hour = TimeRange {
        from: at("2026-12-03T18:00:00Z"),
        to: at("2026-12-03T19:00:00Z"),
    };
    assert_eq!(billing_ids(&store, "acme", hour).await, ["b1", "b2"]);
    assert_eq!(audit_ids(&store, Some("acme"), hour).await, ["a1"]);

    let from_only = TimeRange {
        from: at("2026-12-03T18:30:00Z"),
        to: None,
    };
    assert_eq!(billing_ids(&store, "acme", from_only).await, ["b2", "b3"]);
    let to_only = TimeRange {
        from: None,
        to: at("2026-12-03T18:00:00Z"),
    };
    assert_eq!(billing_ids(&store, "acme", to_only).await, ["b0"]);

    // The same bound written with another offset is the same instant.
    let shifted = TimeRange {
        from: at("2026-12-03T20:00:00+02:00"),
        to: at("2026-12-03T14:00:00-05:00"),
    };
    assert_eq!(billing_ids(&store, "acme", shifted).await, ["b1", "b2"]);

    let empty = TimeRange {
        from: at("2026-12-03T18:00:00Z"),
        to: at("2026-12-03T18:00:00Z"),
    };
    assert!(billing_ids(&store, "acme", empty).await.is_empty());
}

#[tokio::test]
async fn timestamps_with_different_offsets_are_ordered_as_instants() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        bill("noon-utc", "acme", "2026-12-03T12:00:00Z"),
        bill("eleven-utc", "acme", "2026-12-03T13:00:00+02:00"),
        bill("one-pm-utc", "acme", "2026-12-03T08:00:00-05:00"),
        bill("also-noon-b", "acme", "2026-12-03T17:30:00+05:30"),
        bill("also-noon-a", "acme", "2026-12-03T12:00:00.000Z"),
    ];
    store.insert_batch(batch).await.unwrap();

    // Ties at one instant are broken by id.
    let ids = billing_ids(&store, "acme", TimeRange::default()).await;
    assert_eq!(
        ids,
        [
            "eleven-utc",
            "also-noon-a",
            "also-noon-b",
            "noon-utc",
            "one-pm-utc"
        ]
    );

    let query = BillingQuery {
        tenant_id: "acme".into(),
        range: TimeRange::default(),
        limit: 1,
    };
    let first = store.billing(query).await.unwrap();
    assert_eq!(first[0].timestamp.as_str(), "2026-12-03T13:00:00+02:00");
}

#[tokio::test]
async fn queries_see_only_their_tenant_and_audit_can_see_all() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        bill("b-acme", "acme", "2026-12-03T18:00:00Z"),
        bill("b-globex", "globex", "2026-12-03T18:00:01Z"),
        entry("a-acme", Some("acme"), "2026-12-03T18:00:00Z"),
        entry("a-none", None, "2026-12-03T18:00:01Z"),
        entry("a-globex", Some("globex"), "2026-12-03T18:00:02Z"),
    ];
    store.insert_batch(batch).await.unwrap();

    assert_eq!(
        billing_ids(&store, "acme", TimeRange::default()).await,
        ["b-acme"]
    );
    assert!(billing_ids(&store, "ACME", TimeRange::default())
        .await
        .is_empty());
    assert_eq!(
        audit_ids(&store, Some("globex"), TimeRange::default()).await,
        ["a-globex"]
    );
    let all = audit_ids(&store, None, TimeRange::default()).await;
    assert_eq!(all, ["a-acme", "a-none", "a-globex"]);
}

#[tokio::test]
async fn limit_keeps_the_oldest() {
    let (_dir, store) = temp_store().await;
    let batch = (0..5).map(|i| bill(&format!("b{i}"), "acme", &format!("2026-12-03T18:00:0{i}Z")));
    store.insert_batch(batch.collect()).await.unwrap();

    let query = BillingQuery {
        tenant_id: "acme".into(),
        range: TimeRange::default(),
        limit: 2,
    };
    let ids: Vec<String> = store
        .billing(query)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["b0", "b1"]);
}

#[tokio::test]
async fn usage_sums_are_exact() {
    let (_dir, store) = temp_store().await;

    // 2^53 + 1 cannot be represented as an f64; a float sum would lose the 1.
    let batch = vec![
        Record::Billing(billing("b1", "acme", "2026-12-03T18:00:00Z", MAX_TOKENS, 1)),
        Record::Billing(billing("b2", "acme", "2026-12-03T18:00:01Z", 1, MAX_TOKENS)),
        Record::Billing(billing("b3", "globex", "2026-12-03T18:00:01Z", 5, 5)),
    ];
    store.insert_batch(batch).await.unwrap();
    let usage = store
        .usage("acme".into(), TimeRange::default())
        .await
        .unwrap();
    assert_eq!(usage.requests, 2);
    assert_eq!(usage.input_tokens, (1u128 << 53) + 1);
    assert_eq!(usage.output_tokens, (1u128 << 53) + 1);

    let none = store
        .usage("nobody".into(), TimeRange::default())
        .await
        .unwrap();
    assert_eq!(
        (none.requests, none.input_tokens, none.output_tokens),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn usage_sums_do_not_overflow_64_bits() {
    let (_dir, store) = temp_store().await;
    let records = 1100u64;
    let batch: Vec<Record> = (0..records)
        .map(|i| {
            let record = billing(
                &format!("b{i}"),
                "acme",
                "2026-12-03T18:00:00Z",
                MAX_TOKENS,
                MAX_TOKENS - 1,
            );
            Record::Billing(record)
        })
        .collect();
    store.insert_batch(batch).await.unwrap();

    let usage = store
        .usage("acme".into(), TimeRange::default())
        .await
        .unwrap();
    assert_eq!(usage.requests, records);
    assert_eq!(
        usage.input_tokens,
        u128::from(records) * u128::from(MAX_TOKENS)
    );
    assert_eq!(
        usage.output_tokens,
        u128::from(records) * u128::from(MAX_TOKENS - 1)
    );
    assert!(usage.input_tokens > u128::from(u64::MAX) / 2);
}

#[tokio::test]
async fn usage_respects_the_range() {
    let (_dir, store) = temp_store().await;
    let batch = vec![
        Record::Billing(billing("b1", "acme", "2026-12-03T17:00:00Z", 10, 1)),
        Record::Billing(billing("b2", "acme", "2026-12-03T18:00:00Z", 20, 2)),
        Record::Billing(billing("b3", "acme", "2026-12-03T19:00:00Z", 40, 4)),
    ];
    store.insert_batch(batch).await.unwrap();

    let range = TimeRange {
        from: at("2026-12-03T18:00:00Z"),
        to: at("2026-12-03T19:00:00Z"),
    };
    let usage = store.usage("acme".into(), range).await.unwrap();
    assert_eq!(
        (usage.requests, usage.input_tokens, usage.output_tokens),
        (1, 20, 2)
    );
}

#[tokio::test]
async fn a_failed_batch_stores_nothing() {
    let (_dir, store) = temp_store().await;
    let good = vec![
        bill("b1", "acme", "2026-12-03T18:00:00Z"),
        entry("a1", Some("acme"), "2026-12-03T18:00:00Z"),
    ];

    // Validation keeps this out in service; here it makes the third insert fail mid-transaction.
    let bad = BillingRecord {
        input_tokens: u64::MAX,
        ..billing("b2", "acme", "2026-12-03T18:00:00Z", 0, 0)
    };
    let mut batch = good.clone();
    batch.push(Record::Billing(bad));
    assert!(matches!(
        store.insert_batch(batch).await,
        Err(StoreError::OutOfRange(_))
    ));

    assert!(billing_ids(&store, "acme", TimeRange::default())
        .await
        .is_empty());
    assert!(audit_ids(&store, None, TimeRange::default())
        .await
        .is_empty());

    // Nothing half-stored: a retry of the good records is new, not duplicate.
    let retried = store.insert_batch(good).await.unwrap();
    assert_eq!(
        retried,
        Inserted {
            accepted: 2,
            duplicates: 0
        }
    );
}

#[tokio::test]
async fn an_empty_batch_is_a_no_op() {
    let (_dir, store) = temp_store().await;
    assert_eq!(
        store.insert_batch(vec![]).await.unwrap(),
        Inserted::default()
    );
}

#[tokio::test]
async fn data_survives_a_reopen_and_the_schema_is_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/collector.db");

    let store = Store::Sqlite(SqliteStore::open(&path).await.unwrap());
    store
        .insert_batch(vec![bill("b1", "acme", "2026-12-03T18:00:00Z")])
        .await
        .unwrap();
    store.close().await.unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    let store = Store::Sqlite(SqliteStore::open(&path).await.unwrap());
    assert_eq!(
        billing_ids(&store, "acme", TimeRange::default()).await,
        ["b1"]
    );
}

#[tokio::test]
async fn a_database_from_a_newer_collector_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();

    let result = SqliteStore::open(&path).await;
    assert!(matches!(
        result,
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 1
        })
    ));
}

#[tokio::test]
async fn a_closed_store_refuses_work() {
    let (_dir, store) = temp_store().await;
    store.ping().await.unwrap();
    store.close().await.unwrap();

    assert!(matches!(store.ping().await, Err(StoreError::Closed)));
    let result = store
        .insert_batch(vec![bill("b1", "acme", "2026-12-03T18:00:00Z")])
        .await;
    assert!(matches!(result, Err(StoreError::Closed)));
    assert!(store.close().await.is_ok(), "closing twice is harmless");
}
