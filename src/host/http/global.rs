//! Global mode on the request path: after this Envoy's own buckets admitted a request, ask
//! the rate-limit service (`crate::ratelimit`) and hold the request until it answers; give
//! the local reservation back when the service refuses; gather the tokens used beyond the
//! reservation for the root context to report.
//!
//! The service is asked only when its answer decides: a request this Envoy's buckets refuse
//! is refused without a call (at its headers when nothing is left, or once its body is
//! sized), since no answer from the service could let it through. A request they admit waits
//! for both calls (at most `limits.service.timeout_ms`, which Envoy enforces on each call).

use proxy_wasm::hostcalls;
use proxy_wasm::types::Action;

use super::{limits_key, Env, HttpFilter, Reservation};
use crate::config::FailureMode;
use crate::host::ratelimit as host_ratelimit;
use crate::limits::{self, BucketState, LimitView};
use crate::ratelimit::{self, Answer, Kind, Outcome, Pending};
use crate::reply;
use crate::shared;

impl HttpFilter {
    /// Asks the service for one request and `cost` tokens of this tenant. `Pause` while the
    /// calls are out; otherwise (none could go out) what the failure mode says.
    pub(super) fn ask_service(&mut self, cost: u64) -> Action {
        let config = std::rc::Rc::clone(&self.worker.config);
        let (Some(global), Some(tenant)) = (&config.global, self.tenant()) else {
            return Action::Continue;
        };
        let (tenant, requests_limit, tokens_limit) =
            (tenant.id.clone(), tenant.rate_limit, tenant.token_budget);
        let mut pending = Pending::new(cost > 0);
        for (kind, hits, limit) in [
            (Kind::Requests, 1, requests_limit),
            (Kind::Tokens, cost, tokens_limit),
        ] {
            if hits == 0 {
                continue;
            }
            match host_ratelimit::dispatch(&self.worker, global, &tenant, kind, hits, limit) {
                Ok(token) => pending.dispatched(token, kind),
                Err(e) => {
                    self.worker.metrics.global_failure();
                    pending.set(kind, Answer::Failed(format!("not dispatched ({e:?})")));
                }
            }
        }
        if pending.waiting() {
            log::trace!("{} waits for the rate-limit service", self.who());
            self.global = Some(pending);
            return Action::Pause;
        }
        self.conclude(&pending)
    }

    /// An answer from the service (`on_grpc_call_response`).
    pub(super) fn on_service_answer(&mut self, token: u32, status: u32, size: usize) {
        let Some(mut pending) = self.global.take() else {
            return;
        };
        let answer = host_ratelimit::answer(&self.worker, status, size);
        if !pending.answered(token, answer) || pending.waiting() {
            self.global = Some(pending);
            return;
        }
        if self.conclude(&pending) == Action::Continue {
            if let Err(e) = hostcalls::resume_http_request() {
                log::error!("{} request not resumed: {e:?}", self.who());
            }
        }
    }

    /// The decision once every answer is in: `Continue`, or the reply that was sent.
    fn conclude(&mut self, pending: &Pending) -> Action {
        let allow = self
            .worker
            .config
            .global
            .as_ref()
            .is_none_or(|g| g.failure_mode == FailureMode::Allow);
        let Some(outcome) = pending.outcome(allow) else {
            return Action::Pause;
        };
        match outcome {
            Outcome::Admit {
                requests,
                tokens,
                failures,
            } => {
                if !failures.is_empty() {
                    log::warn!(
                        "{} rate-limit service failed ({}); let through (failure_mode allow)",
                        self.who(),
                        failures.join("; ")
                    );
                }
                if let Some(r) = &mut self.reservation {
                    r.requests = ratelimit::merged(r.requests, requests);
                    r.token_view = ratelimit::merged(r.token_view, tokens);
                }
                Action::Continue
            }
            Outcome::Refuse {
                refusal,
                retry_after_ns,
                requests,
                tokens,
            } => {
                let Some(r) = self.release_reservation() else {
                    return Action::Continue;
                };
                log::debug!("{} rate limited by the service: {refusal:?}", self.who());
                let (local_requests, local_tokens) = unreserved(&r);
                self.reply(reply::rate_limited(
                    refusal,
                    retry_after_ns,
                    &requests.unwrap_or(local_requests),
                    &tokens.unwrap_or(local_tokens),
                    Some(r.tokens),
                ))
            }
            Outcome::Unavailable { failures } => {
                self.release_reservation();
                log::warn!(
                    "{} rate-limit service failed ({}); refused (failure_mode deny)",
                    self.who(),
                    failures.join("; ")
                );
                self.reply(reply::error(
                    503,
                    "server_error",
                    "limiter_unavailable",
                    "The gateway could not check limits. Retry shortly.",
                ))
            }
        }
    }

    /// Gives this Envoy's reservation back: the request will not run.
    fn release_reservation(&mut self) -> Option<Reservation> {
        let r = self.reservation.take()?;
        let Some(tenant) = self.tenant().map(|t| t.id.clone()) else {
            return Some(r);
        };
        let now = super::now_ns();
        let env = Env {
            worker: &self.worker,
        };
        let result = shared::update(&env, &limits_key(&tenant), |current| {
            let state = current.and_then(BucketState::decode).unwrap_or_default();
            let next = limits::release(state, r.limits, now, r.tokens);
            (Some(next.encode()), ())
        });
        if let Err(e) = result {
            self.worker.metrics.limiter_contended();
            log::warn!(
                "{} reservation not given back ({e}); it drains with time",
                self.who()
            );
        }
        Some(r)
    }

    /// The log phase of a request still waiting for the service (the client left): it never
    /// ran, so its reservation goes back. Envoy cancels the calls with the context.
    pub(super) fn abandon_service_wait(&mut self) {
        if self.global.take().is_some() {
            self.release_reservation();
        }
    }

    /// The log phase: tokens used beyond the reservation, for the root's tick to report (the
    /// service cannot take back a reservation that was too large; see `crate::ratelimit`).
    pub(super) fn queue_excess(&self, actual: u64) {
        if self.worker.config.global.is_none() {
            return;
        }
        let (Some(tenant), Some(r)) = (self.tenant(), &self.reservation) else {
            return;
        };
        if actual > r.tokens {
            let mut excess = self.worker.excess.borrow_mut();
            let entry = excess.entry(tenant.id.clone()).or_default();
            entry.0 = entry.0.saturating_add(actual - r.tokens);
            entry.1 = tenant.token_budget;
        }
    }
}

/// This Envoy's views as they were before the reservation of a refused request.
fn unreserved(r: &Reservation) -> (LimitView, LimitView) {
    let add = |v: LimitView, n: u64| LimitView {
        remaining: v.remaining.saturating_add(n).min(v.limit),
        ..v
    };
    (add(r.requests, 1), add(r.token_view, r.tokens))
}
