//! The thin adapter between Envoy and the filter's logic: the only code that calls the host.
//!
//! - `root`: one per worker; configuration, the tick, the record shipper;
//! - `http`: one per request; the request flow from credentials to records;
//! - `metrics`: the counters exposed as Envoy stats;
//! - `ratelimit`: calls to the fleet-wide rate-limit service (global mode);
//! - `registry`: the tenant registry's syncer, and each worker following its snapshot.
//!
//! Host results are never unwrapped: a host call that fails degrades (a header read as
//! absent, a metric not counted) and is logged where an operator needs to know.

pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod registry;
pub mod root;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::config::Config;
use crate::records::{self, IdGen};
use crate::registry::directory::Directory;
use crate::shared::{HostError, SharedData, Write};
use crate::shipper::{Count, ShipperHost};
use metrics::Metrics;

/// Name of the shared queue that carries records from every worker to the flusher.
pub const QUEUE_NAME: &str = "inference-gate/records";

/// What every context of one worker shares: built in `on_configure`, read-only afterwards.
pub struct Worker {
    pub config: Rc<Config>,
    pub queue: Option<u32>,
    pub metrics: Metrics,
    pub ids: IdGen,
    /// Records dropped since the last log line about it, why the last of them was, and when
    /// that line was written: a flood of drops is logged as one line per interval, not one
    /// per record, and the tick writes the line for drops still unreported.
    pub drops: Cell<(u64, &'static str, u64)>,
    /// Global mode: tokens used beyond their reservation (and the tenant's token budget), by
    /// tenant id, not yet reported
    /// to the rate-limit service (the tick reports them).
    pub excess: RefCell<BTreeMap<String, (u64, u64)>>,
    /// The tenants in force, static and registry; replaced whole when a new registry
    /// snapshot arrives (see `registry`).
    pub directory: RefCell<Rc<Directory>>,
}

/// How often dropped records are reported in the log, at most.
const DROP_LOG_INTERVAL_NS: u64 = 10_000_000_000;

impl Worker {
    /// The tenants in force now. A request keeps the one it started with.
    pub fn directory(&self) -> Rc<Directory> {
        Rc::clone(&self.directory.borrow())
    }

    pub fn set_directory(&self, directory: Rc<Directory>) {
        *self.directory.borrow_mut() = directory;
    }

    /// Counts records that will never reach the collector, and says so in the log.
    pub fn records_dropped(&self, n: u64, why: &'static str) {
        self.metrics
            .count(Count::Dropped, i64::try_from(n).unwrap_or(i64::MAX));
        let (pending, _, last) = self.drops.get();
        self.drops.set((pending.saturating_add(n), why, last));
        self.report_drops();
    }

    /// Whether the record buffer has reached its bound in records or in bytes.
    pub fn buffer_full(&self) -> bool {
        self.buffer_reaches(1)
    }

    /// Whether the record buffer holds half of either bound: the share audit entries of
    /// refused requests may fill.
    pub fn buffer_half_full(&self) -> bool {
        self.buffer_reaches(2)
    }

    fn buffer_reaches(&self, divisor: u64) -> bool {
        let c = &self.config.collector;
        self.metrics.buffered() >= c.max_buffered_records / divisor
            || self.metrics.buffered_bytes() >= c.max_buffered_bytes / divisor
    }

    /// Writes the log line for dropped records not yet reported, at most once per interval.
    /// Called on every drop and on every tick, so none goes unreported for long.
    pub fn report_drops(&self) {
        let (pending, why, last) = self.drops.get();
        let now = now_ns();
        if pending == 0 || now.saturating_sub(last) < DROP_LOG_INTERVAL_NS {
            return;
        }
        log::error!("{pending} records dropped ({why}); see inference_gate.records.dropped");
        self.drops.set((0, why, now));
    }
}

/// The host seen through the traits the logic modules are written against.
pub struct Env<'a> {
    pub worker: &'a Worker,
}

fn host_error(s: Status) -> HostError {
    HostError(s as u32)
}

impl SharedData for Env<'_> {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        hostcalls::get_shared_data(key).map_err(host_error)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(Write::Stored),
            Err(Status::CasMismatch) => Ok(Write::Conflict),
            Err(s) => Err(host_error(s)),
        }
    }
}

impl ShipperHost for Env<'_> {
    fn now_ns(&self) -> u64 {
        now_ns()
    }

    fn dequeue(&self) -> Result<Option<Vec<u8>>, HostError> {
        let Some(queue) = self.worker.queue else {
            return Ok(None);
        };
        hostcalls::dequeue_shared_queue(queue).map_err(host_error)
    }

    fn enqueue(&self, record: &[u8]) -> Result<(), HostError> {
        let Some(queue) = self.worker.queue else {
            return Err(HostError(Status::NotFound as u32));
        };
        hostcalls::enqueue_shared_queue(queue, Some(record)).map_err(host_error)
    }

    fn dispatch(&self, body: &[u8]) -> Result<u32, HostError> {
        let c = &self.worker.config.collector;
        let auth = format!("Bearer {}", c.ingest_token);
        hostcalls::dispatch_http_call(
            &c.cluster,
            vec![
                (":method", "POST"),
                (":path", &c.path),
                (":authority", &c.authority),
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            Some(body),
            vec![],
            Duration::from_millis(c.timeout_ms),
        )
        .map_err(host_error)
    }

    fn count(&self, what: Count, delta: i64) {
        self.worker.metrics.count(what, delta);
    }
}

/// Host time in nanoseconds since the Unix epoch (0 if the host cannot tell).
pub fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .map(records::unix_ns)
        .unwrap_or(0)
}

/// A header value as text; values that are not UTF-8 are read as absent.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok()??;
    String::from_utf8(bytes).ok()
}

pub fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

/// An integer property: Envoy serialises them as eight little-endian bytes.
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    match <[u8; 8]>::try_from(bytes.as_slice()) {
        Ok(b) => Some(u64::from_le_bytes(b)),
        Err(_) => std::str::from_utf8(&bytes).ok()?.trim().parse().ok(),
    }
}

pub fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::get_buffer(kind, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Random bytes from the host (WASI `random_get`), for ids and lease owners.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        // Without randomness, fall back to the clock: unique enough per worker start.
        return now_ns() ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_le_bytes(b)
}
