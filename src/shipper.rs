//! Moving records from the shared queue to the collector.
//!
//! Every worker's HTTP contexts enqueue records into one shared queue. One worker at a time,
//! the holder of a lease in shared data, drains it: it takes up to a batch of records, stores
//! the batch in shared data as the batch in flight, and posts it to the collector. Only an
//! acknowledgement (`2xx`) removes the batch; a failure keeps it and retries with exponential
//! backoff and jitter. If the holder stops renewing its lease (its worker is gone, or its VM
//! was replaced by a configuration reload), another worker takes the lease and resends the
//! batch in flight first. The collector stores a record id once, so a resend is harmless.
//!
//! A batch the collector refuses as malformed (`400`, `413`, `422`) would be refused forever;
//! it is dropped, counted and logged at error so that an operator looks.

use crate::shared::{self, HostError, SharedData, UpdateError, Write};

pub const LEASE_KEY: &str = "inference-gate/flusher-lease";
pub const INFLIGHT_KEY: &str = "inference-gate/batch-in-flight";

/// Counters the shipper moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Records acknowledged by the collector.
    Sent,
    /// Records in a batch attempt that failed and will be retried.
    Retried,
    /// Records given up on.
    Dropped,
    /// Batch attempts that failed.
    BatchesFailed,
    /// Records waiting in the queue or in flight (a gauge).
    Buffered,
    /// Bytes of those records (a gauge): the sum of each record's JSON.
    BufferedBytes,
}

/// What the shipper needs from the host.
pub trait ShipperHost: SharedData {
    fn now_ns(&self) -> u64;
    fn dequeue(&self) -> Result<Option<Vec<u8>>, HostError>;
    fn enqueue(&self, record: &[u8]) -> Result<(), HostError>;
    /// Posts a batch body to the collector; returns the call's token.
    fn dispatch(&self, body: &[u8]) -> Result<u32, HostError>;
    fn count(&self, what: Count, delta: i64);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub batch_size: usize,
    pub max_batch_bytes: usize,
    pub flush_interval_ms: u64,
    pub timeout_ms: u64,
    pub max_backoff_ms: u64,
}

const MS: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    token: u32,
    batch_id: u64,
    records: u64,
    /// Bytes of the records' JSON, as counted in the buffer gauge.
    bytes: u64,
    deadline_ns: u64,
}

/// A batch as stored in shared data while it is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: u64,
    pub records: u64,
    pub body: Vec<u8>,
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.body.len());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// The bytes of its records' JSON, without the envelope [`assemble`] puts around them:
    /// what the buffer gauge counted for them when they were queued.
    pub fn record_bytes(&self) -> u64 {
        (self.body.len() as u64).saturating_sub(13 + self.records)
    }

    /// `None` for an empty slot or anything that is not a batch.
    pub fn decode(bytes: &[u8]) -> Option<Batch> {
        let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let records = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let body = bytes.get(16..)?;
        if body.is_empty() {
            return None;
        }
        Some(Batch {
            id,
            records,
            body: body.to_vec(),
        })
    }
}

/// The body of `POST /v1/records` from records that are each a JSON object.
pub fn assemble(records: &[Vec<u8>]) -> Vec<u8> {
    let len = records.iter().map(|r| r.len() + 1).sum::<usize>() + 16;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"{\"records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r);
    }
    body.extend_from_slice(b"]}");
    body
}

/// A batch body without its record number `index`; `None` if the body is not a batch or has
/// no such record.
pub fn without_record(body: &[u8], index: usize) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        records: Vec<&'a serde_json::value::RawValue>,
    }
    let parsed: Body<'_> = serde_json::from_slice(body).ok()?;
    if index >= parsed.records.len() {
        return None;
    }
    let kept: Vec<Vec<u8>> = parsed
        .records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, r)| r.get().as_bytes().to_vec())
        .collect();
    Some(assemble(&kept))
}

/// What the collector said when it refused a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// The record it named (`param: "records[3].input_tokens"`).
    pub index: Option<usize>,
    /// Its message, which names a field but never a value; clipped for the log.
    pub message: String,
}

impl Refusal {
    pub fn read(body: &[u8]) -> Refusal {
        #[derive(serde::Deserialize)]
        struct Answer {
            error: Detail,
        }
        #[derive(serde::Deserialize)]
        struct Detail {
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            param: Option<String>,
        }
        let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
            return Refusal {
                index: None,
                message: "no readable reason".to_string(),
            };
        };
        let index = answer.error.param.as_deref().and_then(|p| {
            let rest = p.strip_prefix("records[")?;
            rest.get(..rest.find(']')?)?.parse().ok()
        });
        let mut message = answer
            .error
            .message
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "no reason given".to_string());
        if let Some((cut, _)) = message.char_indices().nth(200) {
            message.truncate(cut);
        }
        Refusal { index, message }
    }
}

/// What a collector answer means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Stored,
    /// The collector will never take this batch.
    Refused,
    Retry,
}

/// Classifies a callout result; `None` is a call that got no response (reset, timeout).
pub fn classify(status: Option<u32>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Stored,
        Some(400 | 413 | 422) => Verdict::Refused,
        _ => Verdict::Retry,
    }
}

/// Takes or renews the lease: returns the value to store (if any) and whether `me` holds it.
pub fn lease(current: Option<&[u8]>, me: u64, now_ns: u64, ttl_ns: u64) -> (Option<Vec<u8>>, bool) {
    let held_by = current.and_then(|b| {
        let owner = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let expiry = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some((owner, expiry))
    });
    match held_by {
        Some((owner, expiry)) if owner != me && expiry > now_ns => (None, false),
        _ => {
            let mut v = me.to_le_bytes().to_vec();
            v.extend_from_slice(&now_ns.saturating_add(ttl_ns).to_le_bytes());
            (Some(v), true)
        }
    }
}

/// Delay before retry number `failures` (1-based): doubling from `base_ms` up to `max_ms`,
/// with "equal jitter" (half fixed, half random) so that many gateways do not retry in step.
pub fn backoff_ms(failures: u32, base_ms: u64, max_ms: u64, random: u64) -> u64 {
    let exp = failures.saturating_sub(1).min(32);
    let delay = base_ms.saturating_mul(1u64 << exp).min(max_ms);
    let half = delay / 2;
    half + random % (delay - half + 1)
}

/// One worker's flusher state.
#[derive(Debug)]
pub struct Shipper {
    me: u64,
    settings: Settings,
    inflight: Option<InFlight>,
    failures: u32,
    next_attempt_ns: u64,
    rng: u64,
    batches: u64,
}

impl Shipper {
    /// `me` identifies this worker in the lease; it also seeds the jitter.
    pub fn new(me: u64, settings: Settings) -> Self {
        Shipper {
            me,
            settings,
            inflight: None,
            failures: 0,
            next_attempt_ns: 0,
            rng: me | 1,
            batches: 0,
        }
    }

    pub fn holds_call(&self, token: u32) -> bool {
        self.inflight.is_some_and(|f| f.token == token)
    }

    /// Consecutive failed attempts (0 when the last one succeeded).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Called on every tick.
    pub fn on_tick(&mut self, host: &dyn ShipperHost) {
        let now = host.now_ns();

        // The lease is renewed even while a call is out, so a slow collector does not hand
        // the queue to a second flusher.
        let ttl = (3 * self.settings.flush_interval_ms).max(1000) * MS;
        match shared::update(host, LEASE_KEY, |cur| lease(cur, self.me, now, ttl)) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::warn!("flusher lease not renewed: {e}");
                return;
            }
        }

        if let Some(f) = self.inflight {
            if now < f.deadline_ns {
                return;
            }
            // Envoy always answers a call, with a timeout at worst; this is a safety net.
            log::warn!("collector call {} never answered", f.token);
            self.inflight = None;
            self.failed(host, now, f.records);
            return;
        }
        if now < self.next_attempt_ns {
            return;
        }
        self.send(host, now);
    }

    /// Called with the status of a collector call (`None`: no response at all).
    /// `body` is the collector's answer, read only when it refused the batch.
    pub fn on_response(
        &mut self,
        host: &dyn ShipperHost,
        token: u32,
        status: Option<u32>,
        body: &[u8],
    ) {
        let Some(f) = self.inflight.filter(|f| f.token == token) else {
            return;
        };
        self.inflight = None;
        let now = host.now_ns();

        match classify(status) {
            Verdict::Stored => {
                if self.failures > 0 {
                    log::info!(
                        "collector reachable again after {} failed attempts",
                        self.failures
                    );
                }
                self.failures = 0;
                self.next_attempt_ns = now;
                if self.clear_inflight(host, f.batch_id) {
                    host.count(Count::Sent, to_i64(f.records));
                    unbuffer(host, f.records, f.bytes);
                }
                // More may be waiting: keep draining without waiting for the next tick.
                self.send(host, now);
            }
            Verdict::Refused => {
                self.failures = 0;
                let refusal = Refusal::read(body);
                // The collector names the record it refused: drop that one, send the rest.
                if let Some(index) = refusal.index {
                    if self.drop_one(host, f.batch_id, index) {
                        log::error!(
                            "collector refused record {index} of a batch ({}); that record dropped, the other {} resent",
                            refusal.message,
                            f.records - 1
                        );
                        self.send(host, now);
                        return;
                    }
                }
                log::error!(
                    "collector refused a batch of {} records with status {} ({}); records dropped",
                    f.records,
                    status.unwrap_or(0),
                    refusal.message
                );
                if self.clear_inflight(host, f.batch_id) {
                    host.count(Count::Dropped, to_i64(f.records));
                    unbuffer(host, f.records, f.bytes);
                }
            }
            Verdict::Retry => {
                let why = status.map_or("no response".to_string(), |s| format!("status {s}"));
                log::warn!(
                    "collector batch of {} records failed ({why}); will retry",
                    f.records
                );
                self.failed(host, now, f.records);
            }
        }
    }

    fn send(&mut self, host: &dyn ShipperHost, now: u64) {
        let batch = match self.take_batch(host) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                log::warn!("could not prepare a batch: {e}");
                return;
            }
        };
        match host.dispatch(&batch.body) {
            Ok(token) => {
                self.inflight = Some(InFlight {
                    token,
                    batch_id: batch.id,
                    records: batch.records,
                    bytes: batch.record_bytes(),
                    deadline_ns: now + (self.settings.timeout_ms + 5000) * MS,
                });
            }
            Err(e) => {
                log::warn!("collector call could not be dispatched: {e}");
                self.failed(host, now, batch.records);
            }
        }
    }

    /// The batch in flight, or a new one from the queue; `None` when there is nothing to send.
    fn take_batch(&mut self, host: &dyn ShipperHost) -> Result<Option<Batch>, UpdateError> {
        let (stored, cas) = host.get(INFLIGHT_KEY).map_err(UpdateError::Host)?;
        if let Some(batch) = stored.as_deref().and_then(Batch::decode) {
            return Ok(Some(batch));
        }

        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < self.settings.batch_size && bytes < self.settings.max_batch_bytes {
            match host.dequeue() {
                Ok(Some(r)) => {
                    bytes += r.len();
                    records.push(r);
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("record queue read failed: {e}");
                    break;
                }
            }
        }
        if records.is_empty() {
            return Ok(None);
        }

        self.batches += 1;
        let batch = Batch {
            id: self.me.rotate_left(17) ^ self.batches,
            records: records.len() as u64,
            body: assemble(&records),
        };
        match host.set(INFLIGHT_KEY, &batch.encode(), cas) {
            Ok(Write::Stored) => Ok(Some(batch)),
            other => {
                // Another flusher stored a batch meanwhile: put these records back.
                for r in &records {
                    if let Err(e) = host.enqueue(r) {
                        log::error!("1 record dropped: lost while requeueing ({e}); see inference_gate.records.dropped");
                        host.count(Count::Dropped, 1);
                        unbuffer(host, 1, r.len() as u64);
                    }
                }
                match other {
                    Err(e) => Err(UpdateError::Host(e)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Replaces the batch in flight by the same batch without record `index`; true if done.
    fn drop_one(&mut self, host: &dyn ShipperHost, batch_id: u64, index: usize) -> bool {
        let Ok((stored, cas)) = host.get(INFLIGHT_KEY) else {
            return false;
        };
        let Some(batch) = stored.as_deref().and_then(Batch::decode) else {
            return false;
        };
        if batch.id != batch_id || batch.records < 2 {
            return false;
        }
        let Some(body) = without_record(&batch.body, index) else {
            return false;
        };
        self.batches += 1;
        let next = Batch {
            id: self.me.rotate_left(17) ^ self.batches,
            records: batch.records - 1,
            body,
        };
        if !matches!(
            host.set(INFLIGHT_KEY, &next.encode(), cas),
            Ok(Write::Stored)
        ) {
            return false;
        }
        host.count(Count::Dropped, 1);
        unbuffer(
            host,
            1,
            batch.record_bytes().saturating_sub(next.record_bytes()),
        );
        true
    }

    /// Empties the in-flight slot if it still holds `batch_id`; true if this call did it.
    fn clear_inflight(&self, host: &dyn ShipperHost, batch_id: u64) -> bool {
        let Ok((stored, cas)) = host.get(INFLIGHT_KEY) else {
            return false;
        };
        match stored.as_deref().and_then(Batch::decode) {
            Some(b) if b.id == batch_id => {
                matches!(host.set(INFLIGHT_KEY, &[], cas), Ok(Write::Stored))
            }
            _ => false,
        }
    }

    fn failed(&mut self, host: &dyn ShipperHost, now: u64, records: u64) {
        self.failures = self.failures.saturating_add(1);
        host.count(Count::BatchesFailed, 1);
        host.count(Count::Retried, to_i64(records));
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.settings.flush_interval_ms.max(200);
        let delay = backoff_ms(self.failures, base, self.settings.max_backoff_ms, self.rng);
        self.next_attempt_ns = now + delay * MS;
    }
}

/// Takes records that left the buffer (acknowledged or dropped) off both buffer gauges.
fn unbuffer(host: &dyn ShipperHost, records: u64, bytes: u64) {
    host.count(Count::Buffered, -to_i64(records));
    host.count(Count::BufferedBytes, -to_i64(bytes));
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::shared::fake::FakeShared;
    use std::cell::{Cell, RefCell};
    use std::collections::{HashMap, VecDeque};
    use std::rc::Rc;

    /// Two workers share data and the queue; each has its own calls.
    #[derive(Default)]
    struct World {
        shared: FakeShared,
        queue: RefCell<VecDeque<Vec<u8>>>,
        now: Cell<u64>,
        counts: RefCell<HashMap<String, i64>>,
    }

    struct Worker {
        world: Rc<World>,
        calls: RefCell<Vec<(u32, Vec<u8>)>>,
        next_token: Cell<u32>,
        refuse_dispatch: Cell<bool>,
    }

    impl Worker {
        fn new(world: &Rc<World>) -> Self {
            Worker {
                world: world.clone(),
                calls: RefCell::default(),
                next_token: Cell::new(1),
                refuse_dispatch: Cell::new(false),
            }
        }
        fn last_call(&self) -> (u32, serde_json::Value) {
            let calls = self.calls.borrow();
            let (t, body) = calls.last().unwrap();
            (*t, serde_json::from_slice(body).unwrap())
        }
    }

    impl SharedData for Worker {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
            self.world.shared.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
            self.world.shared.set(key, value, cas)
        }
    }

    impl ShipperHost for Worker {
        fn now_ns(&self) -> u64 {
            self.world.now.get()
        }
        fn dequeue(&self) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.world.queue.borrow_mut().pop_front())
        }
        fn enqueue(&self, record: &[u8]) -> Result<(), HostError> {
            self.world.queue.borrow_mut().push_back(record.to_vec());
            Ok(())
        }
        fn dispatch(&self, body: &[u8]) -> Result<u32, HostError> {
            if self.refuse_dispatch.get() {
                return Err(HostError(2));
            }
            let t = self.next_token.get();
            self.next_token.set(t + 1);
            self.calls.borrow_mut().push((t, body.to_vec()));
            Ok(t)
        }
        fn count(&self, what: Count, delta: i64) {
            *self
                .world
                .counts
                .borrow_mut()
                .entry(format!("{what:?}"))
                .or_default() += delta;
        }
    }

    const SETTINGS: Settings = Settings {
        batch_size: 3,
        max_batch_bytes: 1 << 20,
        flush_interval_ms: 1000,
        timeout_ms: 5000,
        max_backoff_ms: 30_000,
    };

    fn put(world: &World, n: usize) {
        let mut bytes = 0;
        for i in 0..n {
            let record = format!("{{\"n\":{i}}}").into_bytes();
            bytes += record.len() as i64;
            world.queue.borrow_mut().push_back(record);
        }
        let mut counts = world.counts.borrow_mut();
        *counts.entry("Buffered".into()).or_default() += n as i64;
        *counts.entry("BufferedBytes".into()).or_default() += bytes;
    }

    fn count(world: &World, what: &str) -> i64 {
        world.counts.borrow().get(what).copied().unwrap_or(0)
    }

    #[test]
    fn batches_are_sent_and_drained_after_an_ack() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 5);

        s.on_tick(&w);
        let (t, body) = w.last_call();
        assert_eq!(body["records"].as_array().unwrap().len(), 3);
        // No second call while one is out.
        s.on_tick(&w);
        assert_eq!(w.calls.borrow().len(), 1);

        s.on_response(&w, t, Some(200), b"");
        // The ack sends the rest at once.
        let (t2, body) = w.last_call();
        assert_eq!(body["records"].as_array().unwrap().len(), 2);
        s.on_response(&w, t2, Some(200), b"");
        assert_eq!(count(&world, "Sent"), 5);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
        assert!(world.queue.borrow().is_empty());
        // Idle: no call.
        s.on_tick(&w);
        assert_eq!(w.calls.borrow().len(), 2);
    }

    #[test]
    fn failed_batch_is_kept_and_retried_with_backoff() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 2);

        s.on_tick(&w);
        let (t, first) = w.last_call();
        s.on_response(&w, t, None, b"");
        assert_eq!(s.failures(), 1);
        assert_eq!(count(&world, "BatchesFailed"), 1);

        // Too early: the backoff holds it back.
        s.on_tick(&w);
        assert_eq!(w.calls.borrow().len(), 1);

        world.now.set(world.now.get() + 2000 * MS);
        s.on_tick(&w);
        let (t, again) = w.last_call();
        assert_eq!(again, first, "the same batch is resent");
        s.on_response(&w, t, Some(503), b"");
        assert_eq!(s.failures(), 2);

        world.now.set(world.now.get() + 10_000 * MS);
        s.on_tick(&w);
        let (t, _) = w.last_call();
        s.on_response(&w, t, Some(200), b"");
        assert_eq!(s.failures(), 0);
        assert_eq!(count(&world, "Sent"), 2);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
    }

    #[test]
    fn refused_batch_is_dropped_and_counted() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 2);
        s.on_tick(&w);
        let (t, _) = w.last_call();
        s.on_response(&w, t, Some(400), b"");
        assert_eq!(count(&world, "Dropped"), 2);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
        assert_eq!(
            Batch::decode(&world.shared.get(INFLIGHT_KEY).unwrap().0.unwrap()),
            None
        );
    }

    #[test]
    fn a_refused_record_is_dropped_alone_and_the_rest_resent() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 3);
        s.on_tick(&w);
        let (t, _) = w.last_call();
        let answer = br#"{"error":{"message":"records[1].input_tokens: must be at most 9007199254740992","type":"invalid_request_error","param":"records[1].input_tokens","code":"invalid_request"}}"#;
        s.on_response(&w, t, Some(400), answer);
        let (t, body) = w.last_call();
        assert_eq!(body, serde_json::json!({"records": [{"n": 0}, {"n": 2}]}));
        assert_eq!(count(&world, "Dropped"), 1);
        s.on_response(&w, t, Some(200), b"");
        assert_eq!(count(&world, "Sent"), 2);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
    }

    #[test]
    fn a_refusal_naming_no_record_drops_the_batch() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 2);
        s.on_tick(&w);
        let (t, _) = w.last_call();
        s.on_response(
            &w,
            t,
            Some(400),
            br#"{"error":{"param":"records[7].id","message":"x"}}"#,
        );
        assert_eq!(count(&world, "Dropped"), 2);
        assert_eq!(w.calls.borrow().len(), 1);
    }

    #[test]
    fn refusals_are_read() {
        let r = Refusal::read(br#"{"error":{"message":"m","param":"records[12].timestamp"}}"#);
        assert_eq!(
            r,
            Refusal {
                index: Some(12),
                message: "m".into()
            }
        );
        assert_eq!(Refusal::read(b"oops").index, None);
        assert_eq!(
            Refusal::read(br#"{"error":{"param":"records[x]"}}"#).index,
            None
        );
        assert_eq!(Refusal::read(br#"{"error":{"param":null}}"#).index, None);
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "é".repeat(300));
        assert_eq!(Refusal::read(long.as_bytes()).message.chars().count(), 200);
    }

    #[test]
    fn records_are_removed_by_index() {
        let body = assemble(&[b"{\"a\":1}".to_vec(), b"{\"b\":[1,2]}".to_vec()]);
        assert_eq!(
            without_record(&body, 0).unwrap(),
            b"{\"records\":[{\"b\":[1,2]}]}"
        );
        assert_eq!(without_record(&body, 2), None);
        assert_eq!(without_record(b"nope", 0), None);
    }

    #[test]
    fn dispatch_failure_backs_off() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        w.refuse_dispatch.set(true);
        let mut s = Shipper::new(1, SETTINGS);
        put(&world, 1);
        s.on_tick(&w);
        assert_eq!(s.failures(), 1);
        w.refuse_dispatch.set(false);
        world.now.set(world.now.get() + 60_000 * MS);
        s.on_tick(&w);
        assert_eq!(w.calls.borrow().len(), 1);
    }

    #[test]
    fn only_the_lease_holder_flushes_and_a_silent_holder_is_replaced() {
        let world = Rc::new(World::default());
        let (a, b) = (Worker::new(&world), Worker::new(&world));
        let (mut sa, mut sb) = (Shipper::new(1, SETTINGS), Shipper::new(2, SETTINGS));
        put(&world, 2);

        sa.on_tick(&a);
        sb.on_tick(&b);
        assert_eq!(a.calls.borrow().len(), 1);
        assert_eq!(b.calls.borrow().len(), 0);

        // Worker a goes silent with its batch unacknowledged; after the lease expires,
        // b takes over and resends the same batch.
        let (_, sent_by_a) = a.last_call();
        world.now.set(world.now.get() + 3001 * MS);
        sb.on_tick(&b);
        let (tb, sent_by_b) = b.last_call();
        assert_eq!(sent_by_a, sent_by_b);
        sb.on_response(&b, tb, Some(200), b"");
        assert_eq!(count(&world, "Sent"), 2);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
    }

    #[test]
    fn a_late_ack_for_a_batch_already_acked_is_not_counted_twice() {
        let world = Rc::new(World::default());
        let (a, b) = (Worker::new(&world), Worker::new(&world));
        let (mut sa, mut sb) = (Shipper::new(1, SETTINGS), Shipper::new(2, SETTINGS));
        put(&world, 2);
        sa.on_tick(&a);
        let (ta, _) = a.last_call();
        world.now.set(world.now.get() + 3001 * MS);
        sb.on_tick(&b);
        let (tb, _) = b.last_call();
        sb.on_response(&b, tb, Some(200), b"");
        sa.on_response(&a, ta, Some(200), b"");
        assert_eq!(count(&world, "Sent"), 2);
        assert_eq!(count(&world, "Buffered"), 0);
        assert_eq!(count(&world, "BufferedBytes"), 0);
    }

    #[test]
    fn unknown_tokens_are_ignored() {
        let world = Rc::new(World::default());
        let w = Worker::new(&world);
        let mut s = Shipper::new(1, SETTINGS);
        s.on_response(&w, 99, Some(200), b"");
        assert!(world.counts.borrow().is_empty());
    }

    #[test]
    fn record_bytes_are_the_batch_without_its_envelope() {
        let records = [b"{\"a\":1}".to_vec(), b"{\"bb\":22}".to_vec()];
        let batch = Batch {
            id: 1,
            records: 2,
            body: assemble(&records),
        };
        assert_eq!(batch.record_bytes(), 7 + 9);
        let one = Batch {
            id: 1,
            records: 1,
            body: without_record(&batch.body, 0).unwrap(),
        };
        assert_eq!(one.record_bytes(), 9);
    }

    #[test]
    fn batch_encoding() {
        let b = Batch {
            id: 7,
            records: 2,
            body: b"{}".to_vec(),
        };
        assert_eq!(Batch::decode(&b.encode()), Some(b));
        assert_eq!(Batch::decode(&[]), None);
        assert_eq!(Batch::decode(&[0; 16]), None);
        assert_eq!(Batch::decode(&[0; 5]), None);
    }

    #[test]
    fn assemble_joins_records() {
        let body = assemble(&[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(body, b"{\"records\":[{\"a\":1},{\"b\":2}]}");
        assert_eq!(assemble(&[]), b"{\"records\":[]}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        for r in [0, 1, 12345, u64::MAX] {
            let d1 = backoff_ms(1, 1000, 30_000, r);
            assert!((500..=1000).contains(&d1), "{d1}");
            let d3 = backoff_ms(3, 1000, 30_000, r);
            assert!((2000..=4000).contains(&d3), "{d3}");
            let d40 = backoff_ms(40, 1000, 30_000, r);
            assert!((15_000..=30_000).contains(&d40), "{d40}");
        }
    }

    #[test]
    fn lease_rules() {
        let (v, held) = lease(None, 1, 100, 50);
        assert!(held);
        let v = v.unwrap();
        assert_eq!(lease(Some(&v), 2, 120, 50), (None, false));
        assert!(lease(Some(&v), 2, 151, 50).1);
        assert!(lease(Some(&v), 1, 120, 50).1);
        assert!(lease(Some(b"junk"), 2, 0, 50).1);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Some(200)), Verdict::Stored);
        assert_eq!(classify(Some(204)), Verdict::Stored);
        assert_eq!(classify(Some(400)), Verdict::Refused);
        assert_eq!(classify(Some(401)), Verdict::Retry);
        assert_eq!(classify(Some(503)), Verdict::Retry);
        assert_eq!(classify(None), Verdict::Retry);
    }
}
