//! The retention job: deletes billing records and audit entries older than their configured
//! retention period, by record timestamp.
//!
//! It runs once at startup and then every `interval`, in chunks of [`CHUNK`] rows so that no
//! single transaction holds the database for long. With several collectors on one
//! PostgreSQL each runs the job; they delete the same rows at worst, which is harmless.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::store::{Kind, Store, StoreError};

/// Rows one delete statement removes at most.
pub const CHUNK: u32 = 5_000;

/// Shortest retention accepted from the command line: a typo such as `30s` for `30d` must not
/// empty the database.
pub const MIN_PERIOD: Duration = Duration::from_secs(3600);

/// How long each kind of record is kept; `None` keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub billing: Option<Duration>,
    pub audit: Option<Duration>,
    /// Time between two runs.
    pub interval: Duration,
}

impl Retention {
    pub fn period(&self, kind: Kind) -> Option<Duration> {
        match kind {
            Kind::Billing => self.billing,
            Kind::Audit => self.audit,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.billing.is_some() || self.audit.is_some()
    }
}

/// Runs the job until the task is dropped.
pub async fn run(store: Store, metrics: Arc<Metrics>, retention: Retention) {
    let mut ticker = tokio::time::interval(retention.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // A failure is logged and counted; the next run tries again.
        let _ = run_once(&store, &metrics, &retention, now_us()).await;
    }
}

/// One pass over both kinds, as of `now_us`; returns the rows deleted by kind.
pub async fn run_once(
    store: &Store,
    metrics: &Metrics,
    retention: &Retention,
    now_us: i64,
) -> Result<[u64; 2], StoreError> {
    let mut deleted = [0; 2];
    for (slot, kind) in deleted.iter_mut().zip(Kind::ALL) {
        let Some(period) = retention.period(kind) else {
            continue;
        };
        let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX);
        let before = now_us.saturating_sub(period_us);
        match delete_all_before(store, metrics, kind, before).await {
            Ok(rows) => {
                *slot = rows;
                if rows > 0 {
                    tracing::info!(kind = kind.as_str(), rows, "retention: deleted old records");
                }
            }
            Err(err) => {
                metrics.store_error("retention", &err);
                tracing::error!(
                    kind = kind.as_str(),
                    error = %err,
                    "retention: deleting old records failed; will retry at the next run"
                );
                return Err(err);
            }
        }
    }
    Ok(deleted)
}

async fn delete_all_before(
    store: &Store,
    metrics: &Metrics,
    kind: Kind,
    before: i64,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let rows = store.delete_before(kind, before, CHUNK).await?;
        metrics.retention_deleted(kind, rows);
        total += rows;
        if rows < u64::from(CHUNK) {
            return Ok(total);
        }
    }
}

fn now_us() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}
