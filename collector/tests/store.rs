//! Both stores, each on a fresh database (a SQLite temp file; a PostgreSQL schema of its own):
//! idempotence, ranges, ordering, sums, atomicity, retention deletes.

#[macro_use]
mod common;

use std::time::Duration;

use collector::metrics::Metrics;
use collector::records::{BillingRecord, Record, MAX_TOKENS};
use collector::retention::{self, Retention};
use collector::store::{
    AuditQuery, BillingQuery, Inserted, Kind, PostgresStore, SqliteStore, Store, StoreError,
    TimeRange,
};
use collector::timestamp::Timestamp;
use common::{audit, bill, billing, entry};

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

backend_tests! {
    async fn a_batch_sent_twice_is_stored_once(db) {
        let store = &db.store;
        let batch = vec![
            bill("b1", "acme", "2026-12-03T18:00:00Z"),
            entry("a1", Some("acme"), "2026-12-03T18:00:00Z"),
        ];

        let first = store.insert_batch(batch.clone()).await.unwrap();
        assert_eq!((first.accepted(), first.duplicates()), (2, 0));
        let second = store.insert_batch(batch).await.unwrap();
        assert_eq!((second.accepted(), second.duplicates()), (0, 2));

        assert_eq!(
            billing_ids(store, "acme", TimeRange::default()).await,
            ["b1"]
        );
        assert_eq!(audit_ids(store, None, TimeRange::default()).await, ["a1"]);
    }

    async fn a_repeated_id_within_one_batch_counts_as_a_duplicate(db) {
        let store = &db.store;
        let batch = vec![
            bill("b1", "acme", "2026-12-03T18:00:00Z"),
            bill("b1", "acme", "2026-12-03T19:00:00Z"),
            bill("b2", "acme", "2026-12-03T18:00:00Z"),
        ];
        let inserted = store.insert_batch(batch).await.unwrap();
        assert_eq!((inserted.accepted(), inserted.duplicates()), (2, 1));
    }

    async fn records_come_back_as_they_were_sent(db) {
        let store = &db.store;
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

    async fn cache_reads_and_writes_come_back_apart(db) {
        let store = &db.store;
        // Anthropic's usage: 3 fresh input tokens, 2000 read from the cache, 100 written.
        let mut written = billing("b1", "acme", "2026-12-03T18:00:00Z", 2103, 40);
        written.api = "anthropic_messages".into();
        written.cached_input_tokens = Some(2000);
        written.cache_write_input_tokens = Some(100);
        let mut zero = billing("b2", "acme", "2026-12-03T18:00:01Z", 5, 1);
        zero.cache_write_input_tokens = Some(0);
        let none = billing("b3", "acme", "2026-12-03T18:00:02Z", 5, 1);
        let batch = vec![
            Record::Billing(written.clone()),
            Record::Billing(zero.clone()),
            Record::Billing(none.clone()),
        ];

        let first = store.insert_batch(batch.clone()).await.unwrap();
        assert_eq!((first.accepted(), first.duplicates()), (3, 0));
        // A retry with another figure for a stored id changes nothing: the first one stands.
        let mut retried = batch;
        if let Record::Billing(record) = &mut retried[0] {
            record.cache_write_input_tokens = Some(7);
        }
        let second = store.insert_batch(retried).await.unwrap();
        assert_eq!((second.accepted(), second.duplicates()), (0, 3));

        let query = BillingQuery {
            tenant_id: "acme".into(),
            range: TimeRange::default(),
            limit: 10,
        };
        assert_eq!(store.billing(query).await.unwrap(), vec![written, zero, none]);
    }

    async fn from_is_inclusive_and_to_is_exclusive(db) {
        let store = &db.store;
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
        assert_eq!(billing_ids(store, "acme", hour).await, ["b1", "b2"]);
        assert_eq!(audit_ids(store, Some("acme"), hour).await, ["a1"]);

        let from_only = TimeRange {
            from: at("2026-12-03T18:30:00Z"),
            to: None,
        };
        assert_eq!(billing_ids(store, "acme", from_only).await, ["b2", "b3"]);
        let to_only = TimeRange {
            from: None,
            to: at("2026-12-03T18:00:00Z"),
        };
        assert_eq!(billing_ids(store, "acme", to_only).await, ["b0"]);

        // The same bound written with another offset is the same instant.
        let shifted = TimeRange {
            from: at("2026-12-03T20:00:00+02:00"),
            to: at("2026-12-03T14:00:00-05:00"),
        };
        assert_eq!(billing_ids(store, "acme", shifted).await, ["b1", "b2"]);

        let empty = TimeRange {
            from: at("2026-12-03T18:00:00Z"),
            to: at("2026-12-03T18:00:00Z"),
        };
        assert!(billing_ids(store, "acme", empty).await.is_empty());
    }

    async fn timestamps_with_different_offsets_are_ordered_as_instants(db) {
        let store = &db.store;
        let batch = vec![
            bill("noon-utc", "acme", "2026-12-03T12:00:00Z"),
            bill("eleven-utc", "acme", "2026-12-03T13:00:00+02:00"),
            bill("one-pm-utc", "acme", "2026-12-03T08:00:00-05:00"),
            bill("also-noon-b", "acme", "2026-12-03T17:30:00+05:30"),
            bill("also-noon-a", "acme", "2026-12-03T12:00:00.000Z"),
        ];
        store.insert_batch(batch).await.unwrap();

        // Ties at one instant are broken by id.
        let ids = billing_ids(store, "acme", TimeRange::default()).await;
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

    async fn queries_see_only_their_tenant_and_audit_can_see_all(db) {
        let store = &db.store;
        let batch = vec![
            bill("b-acme", "acme", "2026-12-03T18:00:00Z"),
            bill("b-globex", "globex", "2026-12-03T18:00:01Z"),
            entry("a-acme", Some("acme"), "2026-12-03T18:00:00Z"),
            entry("a-none", None, "2026-12-03T18:00:01Z"),
            entry("a-globex", Some("globex"), "2026-12-03T18:00:02Z"),
        ];
        store.insert_batch(batch).await.unwrap();

        assert_eq!(
            billing_ids(store, "acme", TimeRange::default()).await,
            ["b-acme"]
        );
        assert!(billing_ids(store, "ACME", TimeRange::default())
            .await
            .is_empty());
        assert_eq!(
            audit_ids(store, Some("globex"), TimeRange::default()).await,
            ["a-globex"]
        );
        let all = audit_ids(store, None, TimeRange::default()).await;
        assert_eq!(all, ["a-acme", "a-none", "a-globex"]);
    }

    async fn limit_keeps_the_oldest(db) {
        let store = &db.store;
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

    async fn usage_sums_are_exact(db) {
        let store = &db.store;

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

    async fn usage_sums_do_not_overflow_64_bits(db) {
        let store = &db.store;
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

    async fn usage_respects_the_range(db) {
        let store = &db.store;
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

    async fn a_failed_batch_stores_nothing(db) {
        let store = &db.store;
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

        assert!(billing_ids(store, "acme", TimeRange::default())
            .await
            .is_empty());
        assert!(audit_ids(store, None, TimeRange::default())
            .await
            .is_empty());

        // Nothing half-stored: a retry of the good records is new, not duplicate.
        let retried = store.insert_batch(good).await.unwrap();
        assert_eq!((retried.accepted(), retried.duplicates()), (2, 0));
    }

    async fn an_empty_batch_is_a_no_op(db) {
        let store = &db.store;
        assert_eq!(
            store.insert_batch(vec![]).await.unwrap(),
            Inserted::default()
        );
    }

    async fn a_closed_store_refuses_work(db) {
        let store = &db.store;
        store.ping().await.unwrap();
        store.close().await.unwrap();

        assert!(matches!(store.ping().await, Err(StoreError::Closed)));
        let result = store
            .insert_batch(vec![bill("b1", "acme", "2026-12-03T18:00:00Z")])
            .await;
        assert!(matches!(result, Err(StoreError::Closed)));
        assert!(store.close().await.is_ok(), "closing twice is harmless");
    }

    async fn old_records_are_deleted_in_chunks_by_timestamp(db) {
        let store = &db.store;
        let batch = vec![
            bill("b-old-1", "acme", "2026-01-01T00:00:00Z"),
            bill("b-old-2", "acme", "2026-01-02T00:00:00+02:00"),
            bill("b-old-3", "globex", "2026-01-03T00:00:00Z"),
            bill("b-new", "acme", "2026-02-01T00:00:00Z"),
            entry("a-old", None, "2026-01-01T00:00:00Z"),
            entry("a-new", Some("acme"), "2026-02-01T00:00:00Z"),
        ];
        store.insert_batch(batch).await.unwrap();
        let cutoff = at("2026-01-15T00:00:00Z").unwrap();

        assert_eq!(store.delete_before(Kind::Billing, cutoff, 2).await.unwrap(), 2);
        assert_eq!(store.delete_before(Kind::Billing, cutoff, 2).await.unwrap(), 1);
        assert_eq!(store.delete_before(Kind::Billing, cutoff, 2).await.unwrap(), 0);
        assert_eq!(billing_ids(store, "acme", TimeRange::default()).await, ["b-new"]);
        assert!(billing_ids(store, "globex", TimeRange::default()).await.is_empty());
        // Each kind apart: the audit table is untouched until asked.
        assert_eq!(audit_ids(store, None, TimeRange::default()).await, ["a-old", "a-new"]);
        assert_eq!(store.delete_before(Kind::Audit, cutoff, 100).await.unwrap(), 1);
        assert_eq!(audit_ids(store, None, TimeRange::default()).await, ["a-new"]);
    }

    async fn the_retention_job_keeps_each_kind_for_its_own_period(db) {
        let store = &db.store;
        let batch = vec![
            bill("b-40d", "acme", "2026-10-25T00:00:00Z"),
            bill("b-2d", "acme", "2026-12-02T00:00:00Z"),
            entry("a-40d", Some("acme"), "2026-10-25T00:00:00Z"),
            entry("a-2d", Some("acme"), "2026-12-02T00:00:00Z"),
        ];
        store.insert_batch(batch).await.unwrap();
        let day = Duration::from_secs(86_400);
        let retention = Retention {
            billing: Some(30 * day),
            audit: Some(day),
            interval: day,
        };
        let metrics = Metrics::new();
        let now = at("2026-12-04T00:00:00Z").unwrap();

        let deleted = retention::run_once(store, &metrics, &retention, now).await.unwrap();
        assert_eq!(deleted, [1, 2]);
        assert_eq!(billing_ids(store, "acme", TimeRange::default()).await, ["b-2d"]);
        assert!(audit_ids(store, None, TimeRange::default()).await.is_empty());
        let text = metrics.render();
        assert!(text.contains("collector_retention_deleted_total{kind=\"audit\"} 2"), "{text}");

        // Kept forever when no period is set.
        let forever = Retention { billing: None, audit: None, interval: day };
        let far_future = at("2100-01-01T00:00:00Z").unwrap();
        let deleted = retention::run_once(store, &metrics, &forever, far_future).await.unwrap();
        assert_eq!(deleted, [0, 0]);
        assert_eq!(billing_ids(store, "acme", TimeRange::default()).await, ["b-2d"]);
    }

    async fn concurrent_batches_sharing_ids_store_each_id_once(db) {
        // Eight senders, each with 300 records of which most are also in other batches, all
        // at once: every id stored once, and the accepted counts add up to the ids.
        let store = db.store.clone();
        let mut tasks = Vec::new();
        for sender in 0..8u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let batch: Vec<Record> = (0..300u32)
                    .map(|i| {
                        let n = (sender * 100 + i) % 1000;
                        if n % 2 == 0 {
                            bill(&format!("r{n:04}"), "acme", "2026-12-03T18:00:00Z")
                        } else {
                            entry(&format!("r{n:04}"), Some("acme"), "2026-12-03T18:00:00Z")
                        }
                    })
                    .collect();
                store.insert_batch(batch).await.unwrap()
            }));
        }
        let mut accepted = 0;
        let mut duplicates = 0;
        for task in tasks {
            let inserted = task.await.unwrap();
            accepted += inserted.accepted();
            duplicates += inserted.duplicates();
        }
        assert_eq!(accepted + duplicates, 8 * 300);
        let billing = billing_ids(&store, "acme", TimeRange::default()).await;
        let audit = audit_ids(&store, Some("acme"), TimeRange::default()).await;
        assert_eq!(accepted, (billing.len() + audit.len()) as u64);
        let mut all: Vec<String> = billing.into_iter().chain(audit).collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(all.len(), before, "an id was stored twice");
        // Senders cover 0..1000 in steps: 8 windows of 300 starting every 100 cover it all.
        assert_eq!(all.len(), 1000);
    }
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
    assert_eq!(version, 4);
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
            known: 4
        })
    ));
}

#[tokio::test]
async fn a_postgres_database_from_a_newer_collector_is_refused() {
    let Some(location) = common::postgres_location().await else {
        return;
    };
    let store = PostgresStore::connect(&location, 1).await.unwrap();
    Store::Postgres(store.clone()).close().await.unwrap();

    let (client, connection) = tokio_postgres::connect(&location, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let version: i64 = client
        .query_one("SELECT version FROM collector_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 3);
    client
        .batch_execute("UPDATE collector_schema SET version = 99")
        .await
        .unwrap();

    let result = PostgresStore::connect(&location, 1).await;
    assert!(matches!(
        result,
        Err(StoreError::SchemaTooNew {
            found: 99,
            known: 3
        })
    ));
}

#[tokio::test]
async fn postgres_urls_that_cannot_work_are_refused_with_a_reason() {
    let Err(StoreError::Config(message)) =
        PostgresStore::connect("postgres://h:notaport/db", 1).await
    else {
        panic!("a bad port was accepted");
    };
    assert!(message.contains("invalid PostgreSQL URL"), "{message}");

    let Err(StoreError::Config(message)) =
        PostgresStore::connect("postgres://h/db?sslmode=require", 1).await
    else {
        panic!("sslmode=require was accepted");
    };
    assert!(message.contains("without TLS"), "{message}");
}
