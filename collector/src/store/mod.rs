//! Durable storage of records.
//!
//! [`Store`] is an enum over the backends rather than a trait object: every method is async,
//! async trait methods cannot be called through `dyn`, and an enum keeps the dispatch static
//! without boxing each future. A PostgreSQL backend becomes a second variant with the same
//! methods; the `match` in each method is where the compiler insists it has them all.

pub mod sqlite;

use thiserror::Error;

use crate::records::{AuditEntry, BillingRecord, Record};

pub use sqlite::SqliteStore;

/// Most rows one query may return.
pub const MAX_LIMIT: u32 = 10_000;

/// The storage backend the collector runs on.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
}

impl Store {
    /// Stores a batch in one transaction. A record whose id is already stored is skipped and
    /// counted as a duplicate; on error nothing of the batch is stored.
    pub async fn insert_batch(&self, records: Vec<Record>) -> Result<Inserted, StoreError> {
        match self {
            Store::Sqlite(store) => store.insert_batch(records).await,
        }
    }

    /// A tenant's billing records in `range`, oldest first (by instant, then id).
    pub async fn billing(&self, query: BillingQuery) -> Result<Vec<BillingRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.billing(query).await,
        }
    }

    /// A tenant's request count and exact token sums in `range`.
    pub async fn usage(&self, tenant_id: String, range: TimeRange) -> Result<Usage, StoreError> {
        match self {
            Store::Sqlite(store) => store.usage(tenant_id, range).await,
        }
    }

    /// Audit entries in `range`, oldest first (by instant, then id).
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(store) => store.audit(query).await,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
        }
    }

    /// Waits for running operations, then closes the database. Later calls fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.close().await,
        }
    }
}

/// The outcome of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    pub accepted: u64,
    pub duplicates: u64,
}

/// A half-open range of instants in microseconds since the Unix epoch: `from` inclusive, `to`
/// exclusive, either end open when `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    /// Both ends as bounds a query can bind: an open end becomes the extreme instant.
    pub fn bounds(self) -> (i64, i64) {
        (self.from.unwrap_or(i64::MIN), self.to.unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingQuery {
    pub tenant_id: String,
    pub range: TimeRange,
    /// At most [`MAX_LIMIT`].
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// `None` lists every tenant's entries, including those with no tenant.
    pub tenant_id: Option<String>,
    pub range: TimeRange,
    /// At most [`MAX_LIMIT`].
    pub limit: u32,
}

/// Summed usage. The sums are `u128` so that no number of records can overflow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub requests: u64,
    pub input_tokens: u128,
    pub output_tokens: u128,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),

    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },

    #[error("the database file system does not support WAL (journal_mode stays {mode})")]
    NoWal { mode: String },

    #[error("the database has schema version {found}; this collector knows up to {known}")]
    SchemaTooNew { found: i64, known: i64 },

    /// A value the database cannot hold as given (it passed validation, so this is a bug).
    #[error("value out of range: {0}")]
    OutOfRange(String),

    #[error("the store is closed")]
    Closed,

    #[error("a store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// Whether the same call may succeed later (the database is busy or going away), as
    /// opposed to a fault someone has to look at.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(err) => matches!(
                err.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            StoreError::Closed => true,
            _ => false,
        }
    }
}
