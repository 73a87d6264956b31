//! Durable storage of records.
//!
//! [`Store`] is an enum over the backends rather than a trait object: every method is async,
//! async trait methods cannot be called through `dyn`, and an enum keeps the dispatch static
//! without boxing each future. The `match` in each method is where the compiler insists that
//! every backend has them all.
//!
//! - [`SqliteStore`]: one file, one collector process; the default.
//! - [`PostgresStore`]: a server that several collector processes share.
//!
//! Both keep the same promises: a batch is stored in one transaction or not at all, a record
//! id is stored once however often and however concurrently it is sent, and a call that
//! returned `Ok` has been committed durably.

pub mod postgres;
pub mod registry;
pub mod sqlite;

use std::fmt;

use thiserror::Error;

use crate::records::{AuditEntry, BillingRecord, Record};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Most rows one query may return.
pub const MAX_LIMIT: u32 = 10_000;

/// The storage backend the collector runs on.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Where the records live, as the command line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL names a PostgreSQL database; any other URL is
    /// refused (rather than taken for a file name); anything else is the path of a SQLite file.
    pub fn parse(text: &str) -> Result<Location, StoreError> {
        let scheme = text
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .filter(|scheme| {
                scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
            });
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Location::Postgres(text.to_owned())),
            Some(other) => Err(StoreError::Config(format!(
                "unsupported database URL scheme {other}://; give a postgres:// URL or the \
                 path of a SQLite file"
            ))),
            None => Ok(Location::Sqlite(text.into())),
        }
    }
}

/// For logs: the SQLite path, or the PostgreSQL URL without its password.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Location::Postgres(url) => f.write_str(&postgres::redact_url(url)),
        }
    }
}

/// The two kinds of record, each in its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Billing,
    Audit,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Billing, Kind::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Billing => "billing",
            Kind::Audit => "audit",
        }
    }
}

impl Store {
    /// Opens the database `location` names and brings its schema up to date.
    /// `max_connections` bounds the PostgreSQL pool; SQLite always uses two connections.
    pub async fn open(location: &Location, max_connections: usize) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Store::Sqlite(SqliteStore::open(path).await?)),
            Location::Postgres(url) => Ok(Store::Postgres(
                PostgresStore::connect(url, max_connections).await?,
            )),
        }
    }

    /// Stores a batch in one transaction. A record whose id is already stored is skipped and
    /// counted as a duplicate; on error nothing of the batch is stored.
    pub async fn insert_batch(&self, records: Vec<Record>) -> Result<Inserted, StoreError> {
        match self {
            Store::Sqlite(store) => store.insert_batch(records).await,
            Store::Postgres(store) => store.insert_batch(records).await,
        }
    }

    /// A tenant's billing records in `range`, oldest first (by instant, then id).
    pub async fn billing(&self, query: BillingQuery) -> Result<Vec<BillingRecord>, StoreError> {
        match self {
            Store::Sqlite(store) => store.billing(query).await,
            Store::Postgres(store) => store.billing(query).await,
        }
    }

    /// A tenant's request count and exact token sums in `range`.
    pub async fn usage(&self, tenant_id: String, range: TimeRange) -> Result<Usage, StoreError> {
        match self {
            Store::Sqlite(store) => store.usage(tenant_id, range).await,
            Store::Postgres(store) => store.usage(tenant_id, range).await,
        }
    }

    /// Audit entries in `range`, oldest first (by instant, then id).
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(store) => store.audit(query).await,
            Store::Postgres(store) => store.audit(query).await,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
            Store::Postgres(store) => store.ping().await,
        }
    }

    /// Deletes at most `limit` records of `kind` whose timestamp is before `before` (an
    /// instant in microseconds since the Unix epoch) and returns how many it deleted. The
    /// retention job calls it until it returns less than `limit`, so that no single
    /// transaction holds the database for long.
    pub async fn delete_before(
        &self,
        kind: Kind,
        before: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.delete_before(kind, before, limit).await,
            Store::Postgres(store) => store.delete_before(kind, before, limit).await,
        }
    }

    /// Waits for running operations, then closes the database. Later calls fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.close().await,
            Store::Postgres(store) => store.close().await,
        }
    }
}

/// The outcome of a stored batch, by kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    pub billing: Outcome,
    pub audit: Outcome,
}

/// Records of one kind in a stored batch: newly stored, or skipped as already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted: u64,
    pub duplicates: u64,
}

impl Inserted {
    /// Records this batch stored.
    pub fn accepted(&self) -> u64 {
        self.billing.accepted + self.audit.accepted
    }

    /// Records skipped because their id was already stored.
    pub fn duplicates(&self) -> u64 {
        self.billing.duplicates + self.audit.duplicates
    }

    pub fn of(&self, kind: Kind) -> Outcome {
        match kind {
            Kind::Billing => self.billing,
            Kind::Audit => self.audit,
        }
    }
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

    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    /// No connection could be had from the pool (the server is down, slow or full).
    #[error("postgres connection: {0}")]
    Pool(String),

    /// The database URL or another setting cannot work; the message says why.
    #[error("{0}")]
    Config(String),

    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },

    #[error("the database file system does not support WAL (journal_mode stays {mode})")]
    NoWal { mode: String },

    #[error("the database has schema version {found}; this collector knows up to {known}")]
    SchemaTooNew { found: i64, known: i64 },

    /// A value read back that the schema should have made impossible.
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),

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
            StoreError::Postgres(err) => postgres::is_transient(err),
            StoreError::Pool(_) | StoreError::Closed => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Location;

    #[test]
    fn a_postgres_url_names_postgres_other_urls_are_refused_and_the_rest_is_a_file() {
        for url in [
            "postgres://gate@db/records",
            "postgresql://db/records",
            "POSTGRES://db/records",
        ] {
            let expected = Location::Postgres(url.to_owned());
            assert_eq!(Location::parse(url).ok(), Some(expected));
        }
        for path in ["./data/collector.db", "/var/lib/x://y", "postgres.db", "é"] {
            let expected = Location::Sqlite(path.into());
            assert_eq!(Location::parse(path).ok(), Some(expected));
        }
        for url in ["mysql://db/records", "sqlite://data.db"] {
            assert!(Location::parse(url).is_err(), "{url}");
        }
        let redacted = Location::parse("postgres://gate:secret@db/records").map(|l| l.to_string());
        assert_eq!(redacted.ok().as_deref(), Some("postgres://gate@db/records"));
    }
}
