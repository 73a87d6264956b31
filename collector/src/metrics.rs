//! The collector's own metrics, served as Prometheus text on `GET /metrics`.
//!
//! Each [`Metrics`] has its own registry (no process-wide global), so that tests can build
//! as many apps as they like and read each one's figures apart.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder, TEXT_FORMAT,
};

use crate::store::{Inserted, Kind, StoreError};

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = TEXT_FORMAT;

/// Request latency buckets, in seconds: a durable commit takes a few milliseconds, a slow
/// disk or a busy PostgreSQL a few hundred.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub struct Metrics {
    registry: Registry,
    ingested: IntCounterVec,
    duplicates: IntCounterVec,
    batches: IntCounterVec,
    store_errors: IntCounterVec,
    retention_deleted: IntCounterVec,
    denied_unaudited: IntCounterVec,
    request_seconds: HistogramVec,
}

/// How an ingest batch ended, for `collector_ingest_batches_total{result}`.
#[derive(Debug, Clone, Copy)]
pub enum BatchResult {
    /// Committed (some or all records may have been duplicates).
    Stored,
    /// Refused as malformed; nothing stored.
    Invalid,
    /// The store failed; nothing stored, the sender retries.
    Failed,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            // The names and labels are constants, each registered once: these cannot fail.
            let counter =
                IntCounterVec::new(Opts::new(name, help), labels).expect("a well-formed metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("a metric registered once");
            counter
        };

        let ingested = counter(
            "collector_records_ingested_total",
            "Records stored for the first time, by kind.",
            &["kind"],
        );
        let duplicates = counter(
            "collector_records_duplicates_total",
            "Records skipped because their id was already stored (a retried batch), by kind.",
            &["kind"],
        );
        let batches = counter(
            "collector_ingest_batches_total",
            "Record batches received, by result: stored, invalid (refused, nothing stored) or \
             failed (store error, nothing stored).",
            &["result"],
        );
        let store_errors = counter(
            "collector_store_errors_total",
            "Failed database operations, by operation.",
            &["operation"],
        );
        let denied_unaudited = counter(
            "collector_registry_denied_unaudited_total",
            "Unauthorized registry calls over the audit budget (20 a second): counted here \
             instead of audited one by one.",
            &[],
        );
        denied_unaudited.with_label_values::<&str>(&[]);
        let retention_deleted = counter(
            "collector_retention_deleted_total",
            "Records deleted by the retention job, by kind.",
            &["kind"],
        );
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "collector_http_request_duration_seconds",
                "Time to answer an HTTP request, by method, route and status.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )
        .expect("a well-formed histogram");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("a histogram registered once");

        // Every kind shows from the start, at zero, so a dashboard need not wait for traffic.
        for kind in Kind::ALL {
            ingested.with_label_values(&[kind.as_str()]);
            duplicates.with_label_values(&[kind.as_str()]);
            retention_deleted.with_label_values(&[kind.as_str()]);
        }
        for result in ["stored", "invalid", "failed"] {
            batches.with_label_values(&[result]);
        }

        Self {
            registry,
            ingested,
            duplicates,
            batches,
            store_errors,
            retention_deleted,
            request_seconds,
            denied_unaudited,
        }
    }

    /// An unauthorized registry call not audited: over the budget.
    pub fn denied_unaudited(&self) {
        self.denied_unaudited.with_label_values::<&str>(&[]).inc();
    }

    pub fn stored(&self, inserted: &Inserted) {
        for kind in Kind::ALL {
            let outcome = inserted.of(kind);
            self.ingested
                .with_label_values(&[kind.as_str()])
                .inc_by(outcome.accepted);
            self.duplicates
                .with_label_values(&[kind.as_str()])
                .inc_by(outcome.duplicates);
        }
        self.batch(BatchResult::Stored);
    }

    pub fn batch(&self, result: BatchResult) {
        let label = match result {
            BatchResult::Stored => "stored",
            BatchResult::Invalid => "invalid",
            BatchResult::Failed => "failed",
        };
        self.batches.with_label_values(&[label]).inc();
    }

    /// Counts a failed store call; `operation` is one of a few fixed names.
    pub fn store_error(&self, operation: &'static str, _err: &StoreError) {
        self.store_errors.with_label_values(&[operation]).inc();
    }

    pub fn retention_deleted(&self, kind: Kind, rows: u64) {
        self.retention_deleted
            .with_label_values(&[kind.as_str()])
            .inc_by(rows);
    }

    pub fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.request_seconds
            .with_label_values(&[method, route, &status.to_string()])
            .observe(elapsed.as_secs_f64());
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# metrics could not be encoded: {err}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
