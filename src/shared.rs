//! Shared data with bounded compare-and-swap.
//!
//! Envoy runs one copy of the filter per worker thread; state that must hold across workers
//! (a tenant's limit counters, the flusher lease, the batch in flight) lives in the host's
//! shared data, read with a version number (`cas`) and written only if nobody wrote since.
//! A conflict is retried a fixed number of times, re-reading each time. Running out of
//! attempts is reported to the caller, which decides what it means (and counts it).
//!
//! Envoy stores a write to a missing key unconditionally, whatever `cas` says, so two
//! workers could both create the same key and one write would be lost. Keys that take
//! updates are therefore created before traffic can touch them (see `ensure`).

use std::fmt;

/// How many times an update is tried before it gives up.
pub const MAX_CAS_ATTEMPTS: u32 = 32;

/// A host failure other than a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host status {}", self.0)
    }
}

/// Outcome of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Stored,
    Conflict,
}

/// The host's shared key-value store.
pub trait SharedData {
    /// The value and its version, or `(None, None)` when the key is missing.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError>;
    /// Stores `value` if the key's version is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt met a concurrent write.
    Contended,
    Host(HostError),
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Contended => {
                write!(f, "gave up after {MAX_CAS_ATTEMPTS} conflicting writes")
            }
            UpdateError::Host(e) => e.fmt(f),
        }
    }
}

/// Reads `key`, lets `f` decide the new value (or no write), and stores it if nobody wrote in
/// between; retries on conflict. `f` may run several times and must not have side effects.
pub fn update<T>(
    store: &dyn SharedData,
    key: &str,
    mut f: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, UpdateError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = store.get(key).map_err(UpdateError::Host)?;
        let (next, result) = f(current.as_deref());
        let Some(next) = next else {
            return Ok(result);
        };
        match store.set(key, &next, cas).map_err(UpdateError::Host)? {
            Write::Stored => return Ok(result),
            Write::Conflict => continue,
        }
    }
    Err(UpdateError::Contended)
}

/// Creates `key` with `initial` if it does not exist yet. Returns whether it wrote.
pub fn ensure(store: &dyn SharedData, key: &str, initial: &[u8]) -> Result<bool, HostError> {
    match store.get(key)? {
        (Some(_), _) => Ok(false),
        (None, _) => store.set(key, initial, None).map(|_| true),
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory store with Envoy's semantics, for unit tests.

    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakeShared {
        pub map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Number of upcoming `set` calls to answer with a conflict (another writer won).
        pub conflicts: Cell<u32>,
        pub fail: Cell<bool>,
    }

    impl SharedData for FakeShared {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
            if self.fail.get() {
                return Err(HostError(10));
            }
            Ok(match self.map.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
            if self.fail.get() {
                return Err(HostError(10));
            }
            if self.conflicts.get() > 0 {
                self.conflicts.set(self.conflicts.get() - 1);
                return Ok(Write::Conflict);
            }
            let mut map = self.map.borrow_mut();
            if let (Some((_, current)), Some(cas)) = (map.get(key), cas) {
                if *current != cas {
                    return Ok(Write::Conflict);
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            map.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
            Ok(Write::Stored)
        }
    }
}

#[cfg(test)]
mod tests {

    use super::fake::FakeShared;
    use super::*;

    fn incr(store: &FakeShared) -> Result<u8, UpdateError> {
        update(store, "k", |v| {
            let n = v.and_then(|v| v.first().copied()).unwrap_or(0) + 1;
            (Some(vec![n]), n)
        })
    }

    #[test]
    fn update_writes_and_returns() {
        let s = FakeShared::default();
        assert_eq!(incr(&s), Ok(1));
        assert_eq!(incr(&s), Ok(2));
    }

    #[test]
    fn conflicts_are_retried_with_a_fresh_read() {
        let s = FakeShared::default();
        incr(&s).unwrap();
        s.conflicts.set(MAX_CAS_ATTEMPTS - 1);
        assert_eq!(incr(&s), Ok(2));
    }

    #[test]
    fn persistent_conflict_gives_up() {
        let s = FakeShared::default();
        s.conflicts.set(MAX_CAS_ATTEMPTS);
        assert_eq!(incr(&s), Err(UpdateError::Contended));
    }

    #[test]
    fn host_errors_are_reported() {
        let s = FakeShared::default();
        s.fail.set(true);
        assert_eq!(incr(&s), Err(UpdateError::Host(HostError(10))));
    }

    #[test]
    fn no_write_when_f_declines() {
        let s = FakeShared::default();
        let r = update(&s, "k", |_| (None, 7));
        assert_eq!(r, Ok(7));
        assert!(s.map.borrow().is_empty());
    }

    #[test]
    fn a_stale_cas_is_refused() {
        let s = FakeShared::default();
        s.set("k", b"a", None).unwrap();
        let (_, cas) = s.get("k").unwrap();
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.set("k", b"c", cas), Ok(Write::Conflict));
    }

    #[test]
    fn ensure_creates_once() {
        let s = FakeShared::default();
        assert_eq!(ensure(&s, "k", b"x"), Ok(true));
        incr(&s).unwrap();
        assert_eq!(ensure(&s, "k", b"x"), Ok(false));
        assert_eq!(s.map.borrow()["k"].0, vec![b'x' + 1]);
    }
}
