//! Calls to the rate-limit service of global mode (`crate::ratelimit` says what is asked):
//! dispatching one, reading its answer, and reporting the tokens used beyond their
//! reservation, which the root context does from its tick.
//!
//! A call is answered through `on_grpc_call_response` of the context that made it: the HTTP
//! context for admission (the request waits), the root context for the excess, which is
//! reported after the request is gone (Envoy cancels the calls of a context that ends).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Status};

use super::Worker;
use crate::config::GlobalLimits;
use crate::ratelimit::{self, Answer, Kind};

/// Asks the service for `hits` of one limit of a tenant whose limit of that kind is `limit`
/// per minute; the token of the call.
pub fn dispatch(
    worker: &Worker,
    global: &GlobalLimits,
    tenant: &str,
    kind: Kind,
    hits: u64,
    limit: u64,
) -> Result<u32, Status> {
    worker.metrics.global_call();
    let limit = global.send_limits.then_some(limit);
    let message = ratelimit::request(&global.domain, tenant, kind, hits, limit);
    hostcalls::dispatch_grpc_call(
        &global.grpc_service,
        ratelimit::SERVICE,
        ratelimit::METHOD,
        vec![],
        Some(&message),
        Duration::from_millis(global.timeout_ms),
    )
}

/// The answer delivered to `on_grpc_call_response`: `status` is the gRPC status (0 for a
/// message of `size` bytes). Failures are counted here.
pub fn answer(worker: &Worker, status: u32, size: usize) -> Answer {
    let answer = if status == 0 {
        let bytes = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        ratelimit::read_answer(&bytes)
    } else {
        ratelimit::grpc_failure(status)
    };
    if matches!(answer, Answer::Failed(_)) {
        worker.metrics.global_failure();
    }
    answer
}

/// Reports the excess tokens gathered since the last tick, one `tokens` call per tenant.
/// The answer only matters for the failure count: the tokens were used either way. A call
/// that cannot go out is counted and logged, and its excess is not retried.
pub fn report_excess(worker: &Worker) {
    let Some(global) = &worker.config.global else {
        return;
    };
    let excess = std::mem::take(&mut *worker.excess.borrow_mut());
    for (tenant, (tokens, budget)) in excess {
        if let Err(e) = dispatch(worker, global, &tenant, Kind::Tokens, tokens, budget) {
            worker.metrics.global_failure();
            log::warn!(
                "tenant={tenant} excess of {tokens} tokens not reported to the rate-limit service ({e:?})"
            );
        }
    }
}
