//! The filter's counters, exposed as Envoy stats: `wasmcustom.inference_gate.*` on the admin
//! `/stats` page and `inference_gate_*` on `/stats/prometheus` (Envoy files Proxy-Wasm
//! metrics under its `wasmcustom` namespace, which the Prometheus format leaves out).
//!
//! Envoy keeps one stat per name for the whole process, so every worker adds to the same
//! counter. A metric that could not be defined is simply not recorded; it never fails a
//! request.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::records::AuditResult;
use crate::shipper::Count;

#[derive(Debug, Default, Clone, Copy)]
pub struct Metrics {
    requests: [Option<u32>; 5],
    records_queued: Option<u32>,
    records_sent: Option<u32>,
    records_retried: Option<u32>,
    records_dropped: Option<u32>,
    batches_failed: Option<u32>,
    buffered: Option<u32>,
    buffered_bytes: Option<u32>,
    limiter_contended: Option<u32>,
    usage_estimated: Option<u32>,
    global_calls: Option<u32>,
    global_failures: Option<u32>,
}

fn define(kind: MetricType, name: &str) -> Option<u32> {
    match hostcalls::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("metric {name} not defined: {e:?}");
            None
        }
    }
}

fn result_index(r: AuditResult) -> usize {
    match r {
        AuditResult::Success => 0,
        AuditResult::Unauthorized => 1,
        AuditResult::RateLimited => 2,
        AuditResult::Denied => 3,
        AuditResult::Error => 4,
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        let counter = |name: &str| define(MetricType::Counter, name);
        let mut requests = [None; 5];
        for r in [
            AuditResult::Success,
            AuditResult::Unauthorized,
            AuditResult::RateLimited,
            AuditResult::Denied,
            AuditResult::Error,
        ] {
            if let Some(slot) = requests.get_mut(result_index(r)) {
                *slot = counter(&format!("inference_gate.requests.{}", r.as_str()));
            }
        }
        Metrics {
            requests,
            records_queued: counter("inference_gate.records.queued"),
            records_sent: counter("inference_gate.records.sent"),
            records_retried: counter("inference_gate.records.retried"),
            records_dropped: counter("inference_gate.records.dropped"),
            batches_failed: counter("inference_gate.batches.failed"),
            buffered: define(MetricType::Gauge, "inference_gate.buffer.records"),
            buffered_bytes: define(MetricType::Gauge, "inference_gate.buffer.bytes"),
            limiter_contended: counter("inference_gate.limiter.contended"),
            usage_estimated: counter("inference_gate.usage.estimated"),
            global_calls: counter("inference_gate.limits.global_calls"),
            global_failures: counter("inference_gate.limits.global_failures"),
        }
    }

    pub fn request(&self, r: AuditResult) {
        add(self.requests.get(result_index(r)).copied().flatten(), 1);
    }

    /// `n` records of `bytes` bytes in all went into the shared queue.
    pub fn queued(&self, n: u64, bytes: u64) {
        add(self.records_queued, to_i64(n));
        add(self.buffered, to_i64(n));
        add(self.buffered_bytes, to_i64(bytes));
    }

    pub fn limiter_contended(&self) {
        add(self.limiter_contended, 1);
    }

    /// A `ShouldRateLimit` call to the rate-limit service (global mode) was attempted.
    pub fn global_call(&self) {
        add(self.global_calls, 1);
    }

    /// A call to the rate-limit service gave no usable answer (not dispatched, timed out,
    /// a gRPC error, an unreadable answer): the failure mode decided instead.
    pub fn global_failure(&self) {
        add(self.global_failures, 1);
    }

    pub fn usage_estimated(&self) {
        add(self.usage_estimated, 1);
    }

    /// Records waiting in the queue or in flight, process-wide.
    pub fn buffered(&self) -> u64 {
        gauge(self.buffered)
    }

    /// Bytes of record JSON waiting in the queue or in flight, process-wide.
    pub fn buffered_bytes(&self) -> u64 {
        gauge(self.buffered_bytes)
    }

    pub fn count(&self, what: Count, delta: i64) {
        match what {
            Count::Sent => add(self.records_sent, delta),
            Count::Retried => add(self.records_retried, delta),
            Count::Dropped => add(self.records_dropped, delta),
            Count::BatchesFailed => add(self.batches_failed, delta),
            Count::Buffered => add(self.buffered, floored(delta, self.buffered())),
            Count::BufferedBytes => add(self.buffered_bytes, floored(delta, self.buffered_bytes())),
        }
    }
}

fn gauge(id: Option<u32>) -> u64 {
    let v = id
        .and_then(|id| hostcalls::get_metric(id).ok())
        .unwrap_or(0);
    // A gauge that went below zero (see `floored`) reads as a huge number; count it as empty.
    if v > u64::MAX / 2 {
        0
    } else {
        v
    }
}

/// A decrement no larger than the gauge's value. The buffer gauges carry on across a
/// configuration reload (the stats belong to the Envoy process, see the README), but should
/// one ever read less than the queue holds, it stops at zero rather than wrapping around.
fn floored(delta: i64, current: u64) -> i64 {
    if delta < 0 {
        -(i64::try_from(delta.unsigned_abs().min(current)).unwrap_or(i64::MAX))
    } else {
        delta
    }
}

fn add(id: Option<u32>, delta: i64) {
    if let Some(id) = id {
        if delta != 0 {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
