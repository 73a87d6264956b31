//! The syncer: one worker per Envoy polls the collector's snapshot and publishes it.
//!
//! The worker that holds the lease (a key in shared data with an owner and an expiry, taken
//! and renewed with compare-and-swap, as the record flusher's) fetches
//! `GET /v1/tenants/snapshot` every `interval_ms` with the ingest token and `If-None-Match`
//! naming the snapshot in force. `304`: nothing changed. `200`: a new snapshot, read and
//! checked, then published: first every new tenant's limit state is created (so that no
//! request path ever creates one), then the table, then `current`, which workers compare on
//! their tick. Anything else (no answer, a `5xx`, a body that is not a snapshot) leaves the
//! last good snapshot in force: the staleness grows, is reported as a gauge, and is logged
//! when it starts and once a minute while it lasts.

use std::collections::HashSet;

use super::snapshot::{self, Snapshot};
use super::{published, synced_at, Published, CURRENT_KEY, LEASE_KEY, SYNCED_KEY, TABLE_KEY};
use crate::shared::{self, HostError, SharedData, Write};
use crate::shipper::lease;

const MS: u64 = 1_000_000;
/// How often a lasting failure is logged again.
const FAILURE_LOG_INTERVAL_NS: u64 = 60_000 * MS;

/// What the syncer needs from the host.
pub trait SyncHost: SharedData {
    fn now_ns(&self) -> u64;
    /// Dispatches the snapshot request (`If-None-Match: etag` when given); the call's token.
    fn fetch(&self, etag: Option<&str>) -> Result<u32, HostError>;
    /// Creates a tenant's limit state if it is missing.
    fn ensure_tenant(&self, id: &str) -> Result<(), HostError>;
    fn report(&self, event: Event);
}

/// What the syncer reports for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new snapshot is in force.
    Published { version: u64, tenants: u64 },
    /// The collector answered `304`.
    Unchanged,
    /// A poll failed; the last good snapshot stays.
    Failed,
    /// Seconds since the collector last answered (or since this syncer started).
    Staleness { seconds: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// How long the lease holds without renewal (a few ticks).
    pub lease_ms: u64,
}

/// A collector's answer as the host delivers it; `status: None` is no answer at all.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: Option<u32>,
    pub etag: Option<&'a str>,
    pub body: &'a [u8],
}

/// One worker's syncer.
#[derive(Debug)]
pub struct Syncer {
    me: u64,
    settings: Settings,
    started_ns: Option<u64>,
    inflight: Option<(u32, u64)>,
    next_fetch_ns: u64,
    failures: u32,
    last_failure_log_ns: u64,
    /// Tenants whose limit state this syncer created (or found), so that a snapshot only
    /// costs a shared-data write for the new ones.
    ensured: HashSet<String>,
    rng: u64,
}

impl Syncer {
    pub fn new(me: u64, settings: Settings) -> Syncer {
        Syncer {
            me,
            settings,
            started_ns: None,
            inflight: None,
            next_fetch_ns: 0,
            failures: 0,
            last_failure_log_ns: 0,
            ensured: HashSet::new(),
            rng: me | 1,
        }
    }

    pub fn holds_call(&self, token: u32) -> bool {
        self.inflight.is_some_and(|(t, _)| t == token)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Called on every tick: keeps the lease, reports the staleness, polls when due.
    pub fn on_tick(&mut self, host: &dyn SyncHost) {
        let now = host.now_ns();
        let started = *self.started_ns.get_or_insert(now);
        if !self.renew(host, now) {
            return;
        }
        let last = synced_at(host).unwrap_or(started);
        host.report(Event::Staleness {
            seconds: now.saturating_sub(last) / (1000 * MS),
        });

        if let Some((token, deadline)) = self.inflight {
            if now < deadline {
                return;
            }
            // Envoy always answers a call, with a timeout at worst; this is a safety net.
            self.inflight = None;
            self.failed(host, now, &format!("call {token} never answered"));
            return;
        }
        if now < self.next_fetch_ns {
            return;
        }
        let etag = published(host).map(|p| p.etag).filter(|e| !e.is_empty());
        match host.fetch(etag.as_deref()) {
            Ok(token) => {
                let deadline = now + (self.settings.timeout_ms + 5000) * MS;
                self.inflight = Some((token, deadline));
            }
            Err(e) => self.failed(host, now, &format!("not dispatched ({e})")),
        }
    }

    /// Called with the collector's answer. Returns the snapshot this call put in force, for
    /// the caller's own directory (and log lines), if it put one.
    pub fn on_response(
        &mut self,
        host: &dyn SyncHost,
        token: u32,
        answer: Answer<'_>,
    ) -> Option<(Snapshot, Vec<String>)> {
        if !self.holds_call(token) {
            return None;
        }
        self.inflight = None;
        let now = host.now_ns();
        self.next_fetch_ns = now + self.jittered_interval_ns();

        let outcome = match answer.status {
            Some(304) => Ok(None),
            Some(200) => self.take(host, now, answer),
            Some(status) => Err(format!("status {status}")),
            None => Err("no response".to_string()),
        };
        match outcome {
            Ok(published) => {
                self.recovered(now);
                let _ = host.set(SYNCED_KEY, &now.to_le_bytes(), None);
                host.report(Event::Staleness { seconds: 0 });
                if published.is_none() {
                    host.report(Event::Unchanged);
                }
                published
            }
            Err(why) => {
                self.failed(host, now, &why);
                None
            }
        }
    }

    /// A `200`: read the snapshot and publish it, unless it is the one in force.
    fn take(
        &mut self,
        host: &dyn SyncHost,
        now: u64,
        answer: Answer<'_>,
    ) -> Result<Option<(Snapshot, Vec<String>)>, String> {
        let (snapshot, problems) =
            snapshot::parse(answer.body).map_err(|e| format!("not a snapshot ({e})"))?;
        let current = published(host);
        if current
            .as_ref()
            .is_some_and(|p| p.version == snapshot.version)
        {
            return Ok(None);
        }
        // The lease may have moved on while the call was out: only its holder publishes.
        if !self.renew(host, now) {
            return Err("lease lost while the call was out".to_string());
        }

        let mut ensured = HashSet::with_capacity(snapshot.tenants.len());
        for t in &snapshot.tenants {
            if !self.ensured.contains(&t.id) {
                host.ensure_tenant(&t.id)
                    .map_err(|e| format!("limit state of tenant {} not created ({e})", t.id))?;
            }
            ensured.insert(t.id.clone());
        }
        self.ensured = ensured;

        let published = Published {
            version: snapshot.version,
            etag: answer.etag.unwrap_or_default().to_string(),
        };
        for (key, value) in [
            (TABLE_KEY, snapshot.encode()),
            (CURRENT_KEY, published.encode()),
        ] {
            match host.set(key, &value, None) {
                Ok(Write::Stored) => {}
                Ok(Write::Conflict) => return Err(format!("{key} not stored (conflict)")),
                Err(e) => return Err(format!("{key} not stored ({e})")),
            }
        }
        host.report(Event::Published {
            version: snapshot.version,
            tenants: snapshot.tenants.len() as u64,
        });
        Ok(Some((snapshot, problems)))
    }

    fn renew(&self, host: &dyn SyncHost, now: u64) -> bool {
        let ttl = self.settings.lease_ms.max(1000) * MS;
        match shared::update(host, LEASE_KEY, |cur| lease(cur, self.me, now, ttl)) {
            Ok(held) => held,
            Err(e) => {
                log::warn!("registry lease not renewed: {e}");
                false
            }
        }
    }

    fn failed(&mut self, host: &dyn SyncHost, now: u64, why: &str) {
        self.failures = self.failures.saturating_add(1);
        host.report(Event::Failed);
        if self.failures > 1
            && now.saturating_sub(self.last_failure_log_ns) < FAILURE_LOG_INTERVAL_NS
        {
            return;
        }
        self.last_failure_log_ns = now;
        let in_force = published(host).map_or("none yet (static tenants only)".to_string(), |p| {
            format!("version {}", p.version)
        });
        let age = synced_at(host).map_or("never synced".to_string(), |t| {
            format!("last synced {}s ago", now.saturating_sub(t) / (1000 * MS))
        });
        log::warn!(
            "tenant registry not synced ({why}; {} failed polls); the snapshot in force stays: {in_force}, {age}",
            self.failures
        );
    }

    fn recovered(&mut self, now: u64) {
        if self.failures > 0 {
            log::info!(
                "tenant registry reachable again after {} failed polls",
                self.failures
            );
        }
        self.failures = 0;
        self.last_failure_log_ns = now;
    }

    /// The interval less up to a tenth, so that a fleet of Envoys does not poll in step.
    fn jittered_interval_ns(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let interval = self.settings.interval_ms * MS;
        interval - self.rng % (interval / 10 + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::auth::digest_key;
    use crate::shared::fake::FakeShared;

    #[derive(Default)]
    struct Host {
        shared: std::rc::Rc<FakeShared>,
        now: std::rc::Rc<Cell<u64>>,
        calls: RefCell<Vec<(u32, Option<String>)>>,
        next: Cell<u32>,
        ensured: RefCell<Vec<String>>,
        events: RefCell<Vec<Event>>,
        refuse: Cell<bool>,
    }

    impl Host {
        fn sharing(other: &Host) -> Host {
            Host {
                shared: other.shared.clone(),
                now: other.now.clone(),
                ..Host::default()
            }
        }
        fn last_call(&self) -> (u32, Option<String>) {
            self.calls.borrow().last().cloned().unwrap()
        }
    }

    impl SharedData for Host {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
            self.shared.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
            self.shared.set(key, value, cas)
        }
    }

    impl SyncHost for Host {
        fn now_ns(&self) -> u64 {
            self.now.get()
        }
        fn fetch(&self, etag: Option<&str>) -> Result<u32, HostError> {
            if self.refuse.get() {
                return Err(HostError(2));
            }
            let token = self.next.get() + 1;
            self.next.set(token);
            self.calls
                .borrow_mut()
                .push((token, etag.map(str::to_string)));
            Ok(token)
        }
        fn ensure_tenant(&self, id: &str) -> Result<(), HostError> {
            self.ensured.borrow_mut().push(id.to_string());
            Ok(())
        }
        fn report(&self, event: Event) {
            self.events.borrow_mut().push(event);
        }
    }

    const SETTINGS: Settings = Settings {
        interval_ms: 1000,
        timeout_ms: 500,
        lease_ms: 1000,
    };

    fn body(version: u64, ids: &[&str]) -> Vec<u8> {
        let tenants: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                serde_json::json!({"id": id, "rate_limit": 5, "token_budget": 50,
                    "api_key_sha256": [hex::encode(digest_key(&format!("key-{id}")))]})
            })
            .collect();
        serde_json::json!({"version": version, "healthy": true, "tenants": tenants})
            .to_string()
            .into_bytes()
    }

    fn ok<'a>(etag: &'a str, body: &'a [u8]) -> Answer<'a> {
        Answer {
            status: Some(200),
            etag: Some(etag),
            body,
        }
    }

    #[test]
    fn a_new_snapshot_is_published_after_its_limit_state_exists() {
        let host = Host::default();
        host.now.set(1_000 * MS);
        let mut s = Syncer::new(1, SETTINGS);
        s.on_tick(&host);
        let (token, etag) = host.last_call();
        assert_eq!(etag, None, "nothing to compare with yet");

        let b = body(3, &["acme", "globex"]);
        let (snapshot, problems) = s.on_response(&host, token, ok("\"3\"", &b)).unwrap();
        assert!(problems.is_empty());
        assert_eq!(snapshot.version, 3);
        assert_eq!(*host.ensured.borrow(), ["acme", "globex"]);
        assert_eq!(
            published(&host),
            Some(Published {
                version: 3,
                etag: "\"3\"".into()
            })
        );
        let table = super::super::published_snapshot(&host).unwrap();
        assert_eq!(table, snapshot);
        assert_eq!(synced_at(&host), Some(1_000 * MS));
        assert!(host.events.borrow().contains(&Event::Published {
            version: 3,
            tenants: 2
        }));

        // The next poll, an interval later, names the version; a new tenant alone is ensured.
        s.on_tick(&host);
        assert_eq!(host.calls.borrow().len(), 1, "not due yet");
        host.now.set(2_001 * MS);
        s.on_tick(&host);
        let (token, etag) = host.last_call();
        assert_eq!(etag.as_deref(), Some("\"3\""));
        let b = body(4, &["acme", "globex", "initech"]);
        s.on_response(&host, token, ok("\"4\"", &b)).unwrap();
        assert_eq!(*host.ensured.borrow(), ["acme", "globex", "initech"]);
    }

    #[test]
    fn a_304_changes_nothing_and_failures_keep_the_last_good_snapshot() {
        let host = Host::default();
        let mut s = Syncer::new(1, SETTINGS);
        s.on_tick(&host);
        let b = body(3, &["acme"]);
        s.on_response(&host, host.last_call().0, ok("\"3\"", &b));
        let table = host.shared.get(TABLE_KEY).unwrap();

        for (i, answer) in [
            Answer {
                status: Some(304),
                etag: Some("\"3\""),
                body: b"",
            },
            Answer {
                status: Some(503),
                etag: None,
                body: b"",
            },
            Answer {
                status: None,
                etag: None,
                body: b"",
            },
            ok("\"9\"", b"{\"version\": 9}"),
            Answer {
                status: Some(401),
                etag: None,
                body: b"",
            },
        ]
        .into_iter()
        .enumerate()
        {
            host.now.set(host.now.get() + 2_000 * MS);
            s.on_tick(&host);
            assert_eq!(host.calls.borrow().len(), i + 2);
            assert_eq!(
                s.on_response(&host, host.last_call().0, answer)
                    .map(|(s, _)| s.version),
                None
            );
            assert_eq!(host.shared.get(TABLE_KEY).unwrap().0, table.0, "answer {i}");
        }
        assert_eq!(s.failures(), 4);
        assert_eq!(published(&host).unwrap().version, 3);
        // The staleness grows from the last answer (the 304).
        host.now.set(host.now.get() + 1_000 * MS);
        s.on_tick(&host);
        let stale = host.events.borrow().iter().rev().find_map(|e| match e {
            Event::Staleness { seconds } => Some(*seconds),
            _ => None,
        });
        assert_eq!(stale, Some(9));

        // The same version again is not published twice.
        host.now.set(host.now.get() + 2_000 * MS);
        s.on_tick(&host);
        assert!(s
            .on_response(&host, host.last_call().0, ok("\"3\"", &b))
            .is_none());
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn one_worker_polls_and_a_silent_one_is_replaced() {
        let a = Host::default();
        let b = Host::sharing(&a);
        let (mut sa, mut sb) = (Syncer::new(1, SETTINGS), Syncer::new(2, SETTINGS));
        sa.on_tick(&a);
        sb.on_tick(&b);
        assert_eq!((a.calls.borrow().len(), b.calls.borrow().len()), (1, 0));

        // a stops ticking with its call out; once its lease expires, b polls.
        a.now.set(a.now.get() + 1_001 * MS);
        sb.on_tick(&b);
        assert_eq!(b.calls.borrow().len(), 1);
        // a's late answer is not published: the lease is b's.
        let body = body(5, &["acme"]);
        assert!(sa
            .on_response(&a, a.last_call().0, ok("\"5\"", &body))
            .is_none());
        assert_eq!(published(&a), None);
        assert!(sb
            .on_response(&b, b.last_call().0, ok("\"5\"", &body))
            .is_some());
    }

    #[test]
    fn a_call_that_cannot_go_out_or_never_returns_is_a_failure() {
        let host = Host::default();
        let mut s = Syncer::new(1, SETTINGS);
        host.refuse.set(true);
        s.on_tick(&host);
        assert_eq!(s.failures(), 1);
        host.refuse.set(false);
        s.on_tick(&host);
        assert_eq!(host.calls.borrow().len(), 1);
        host.now.set(host.now.get() + 5_499 * MS);
        s.on_tick(&host);
        assert_eq!(s.failures(), 1, "still within the call's deadline");
        host.now.set(host.now.get() + 2 * MS);
        s.on_tick(&host);
        assert_eq!(s.failures(), 2);
        assert!(!s.holds_call(1));
    }

    #[test]
    fn the_interval_is_jittered_down_never_up() {
        let mut s = Syncer::new(12345, SETTINGS);
        for _ in 0..1000 {
            let d = s.jittered_interval_ns();
            assert!((900 * MS..=1000 * MS).contains(&d), "{d}");
        }
    }
}
