//! The part of the `rocksdb` API that `limitador`'s disk storage names, with no database
//! behind it: opening a store fails, so nothing else is ever reached. See Cargo.toml for why
//! this exists.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

/// Why every call fails.
const MESSAGE: &str = "RocksDB is not built in: this build has no disk storage";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotSupported,
    TimedOut,
    TryAgain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::NotSupported
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MESSAGE)
    }
}

impl std::error::Error for Error {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionDecision {
    Keep,
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DBCompressionType {
    None,
    Bz2,
}

pub enum IteratorMode {
    Start,
}

pub struct MultiThreaded;

/// The operands of a merge; always empty here.
pub struct MergeOperands {
    operands: Vec<Vec<u8>>,
}

impl<'a> IntoIterator for &'a MergeOperands {
    type Item = &'a [u8];
    type IntoIter = std::iter::Map<std::slice::Iter<'a, Vec<u8>>, fn(&Vec<u8>) -> &[u8]>;

    fn into_iter(self) -> Self::IntoIter {
        self.operands.iter().map(Vec::as_slice)
    }
}

#[derive(Default)]
pub struct Options;

impl Options {
    pub fn set_compression_type(&mut self, _kind: DBCompressionType) {}

    pub fn set_compaction_filter<F>(&mut self, _name: &str, _filter: F)
    where
        F: Fn(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static,
    {
    }

    pub fn set_merge_operator_associative<F>(&mut self, _name: &str, _merge: F)
    where
        F: Fn(&[u8], Option<&[u8]>, &MergeOperands) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
    }

    pub fn create_if_missing(&mut self, _create: bool) {}
}

pub type KeyValue = Result<(Box<[u8]>, Box<[u8]>), Error>;

pub struct DBWithThreadMode<T> {
    mode: PhantomData<T>,
}

pub type DB = DBWithThreadMode<MultiThreaded>;

impl<T> DBWithThreadMode<T> {
    pub fn open<P: AsRef<Path>>(_options: &Options, _path: P) -> Result<Self, Error> {
        Err(Error)
    }

    pub fn get<K: AsRef<[u8]>>(&self, _key: K) -> Result<Option<Vec<u8>>, Error> {
        Err(Error)
    }

    pub fn merge<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, _key: K, _value: V) -> Result<(), Error> {
        Err(Error)
    }

    pub fn delete<K: AsRef<[u8]>>(&self, _key: K) -> Result<(), Error> {
        Err(Error)
    }

    pub fn iterator(&self, _mode: IteratorMode) -> std::iter::Once<KeyValue> {
        std::iter::once(Err(Error))
    }

    pub fn prefix_iterator<P: AsRef<[u8]>>(&self, _prefix: P) -> std::iter::Once<KeyValue> {
        std::iter::once(Err(Error))
    }
}
