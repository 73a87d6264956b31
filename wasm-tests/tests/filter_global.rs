//! The built filter in global mode: after its own buckets admit a request it asks the
//! rate-limit service (`ShouldRateLimit` over gRPC, answered here by the test) and holds the
//! request until both answers are in; the fast path, refusals with the service's figures, the
//! failure modes, timeouts, and the report of tokens used beyond a reservation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::time::Duration;

use gate::rls::{self, Kind};
use gate::{
    assert_openai_error, begin, config, Exchange, Gate, Request, Response, ACME,
    CHAT_PROMPT_ESTIMATE,
};
use serde_json::{json, Value};
use wasm_tests::{grpc_status, Action, Host, PendingGrpcCall};

const CALLS: &str = "inference_gate.limits.global_calls";
const FAILURES: &str = "inference_gate.limits.global_failures";

fn global(limits: gate::Tenant, service: Value) -> Value {
    let mut c = config(&[limits]);
    c["limits"] = json!({"mode": "global", "service": service});
    c
}

fn gate_with(limits: gate::Tenant, service: Value) -> Gate {
    Gate::start(&global(limits, service), 1)
}

fn default_gate() -> Gate {
    gate_with(ACME.limits(100, 100_000), json!({"cluster": "ratelimit"}))
}

/// A chat request with `max_tokens` through worker 0, up to the end of its body.
fn ask(gate: &Gate, max_tokens: u64) -> Exchange {
    begin(gate.vm(0), &Request::chat(ACME.key(), max_tokens)).unwrap()
}

/// The service's calls now pending, with their decoded requests, requests call first.
fn calls(gate: &Gate) -> Vec<(PendingGrpcCall, rls::Asked)> {
    let mut calls: Vec<_> = gate
        .vm(0)
        .pending_grpc_calls()
        .into_iter()
        .map(|c| {
            let asked = rls::decode_request(&c.message);
            (c, asked)
        })
        .collect();
    calls.sort_by_key(|(_, a)| a.kind != Kind::Requests);
    calls
}

fn answer(gate: &Gate, call: &PendingGrpcCall, message: Vec<u8>) {
    gate.vm(0).respond_grpc_call(call.token, &message).unwrap();
}

#[test]
fn an_admitted_request_waits_for_both_answers_then_goes_on() {
    let gate = default_gate();
    let exchange = ask(&gate, 100);
    assert_eq!(exchange.body_actions, vec![Action::Pause]);
    assert!(exchange.stream.forwarded_request_body().is_empty());

    let calls = calls(&gate);
    assert_eq!(calls.len(), 2, "one call per limit");
    let reserved = CHAT_PROMPT_ESTIMATE + 100;
    for ((call, asked), (kind, hits, limit)) in calls
        .iter()
        .zip([(Kind::Requests, 1, 100), (Kind::Tokens, reserved, 100_000)])
    {
        assert_eq!(call.cluster, "ratelimit");
        assert!(call.serialized_service, "named inside a GrpcService");
        assert_eq!(call.service, "envoy.service.ratelimit.v3.RateLimitService");
        assert_eq!(call.method, "ShouldRateLimit");
        assert_eq!(
            call.timeout,
            Duration::from_millis(50),
            "the default timeout"
        );
        assert_eq!(call.context_id, exchange.stream.id());
        assert_eq!(asked.domain, "inference-gate");
        assert_eq!(asked.tenant, "acme");
        assert_eq!(asked.kind, kind);
        // The hits on the descriptor and on the request alike.
        assert_eq!(
            (asked.descriptor_hits, asked.request_hits),
            (Some(hits), hits)
        );
        // The tenant's own limit of that kind, per minute (unit 2), as the override.
        assert_eq!(asked.limit, Some((limit, 2)));
    }

    answer(&gate, &calls[1].0, rls::ok(Some((100_000, 60_000, 30))));
    assert_eq!(exchange.stream.continued_request(), 0, "still waiting");
    answer(&gate, &calls[0].0, rls::ok(Some((100, 40, 30))));
    assert_eq!(exchange.stream.continued_request(), 1);
    assert!(exchange.reply().is_none());
    assert_eq!(
        exchange.stream.forwarded_request_body(),
        Request::chat(ACME.key(), 100).body_bytes()
    );

    exchange.respond(&Response::usage(8, 100)).unwrap();
    let h = |name: &str| exchange.stream.response_header(name);
    // The service's limit and reset, and the lower of the two remainders.
    assert_eq!(h("x-ratelimit-limit-requests").as_deref(), Some("100"));
    assert_eq!(h("x-ratelimit-remaining-requests").as_deref(), Some("40"));
    assert_eq!(h("x-ratelimit-reset-requests").as_deref(), Some("30s"));
    assert_eq!(h("x-ratelimit-remaining-tokens").as_deref(), Some("60000"));
    assert_eq!(gate.metric(CALLS), 2);
    assert_eq!(gate.metric(FAILURES), 0);
    assert_eq!(gate.billing().len(), 1);
}

#[test]
fn a_tenant_out_of_its_own_budget_is_refused_without_a_call() {
    let gate = gate_with(ACME.limits(1, 100_000), json!({"cluster": "ratelimit"}));
    let first = ask(&gate, 10);
    for (call, _) in calls(&gate) {
        answer(&gate, &call, rls::ok(None));
    }
    first.respond(&Response::usage(8, 10)).unwrap();
    assert_eq!(gate.metric(CALLS), 2);

    // This Envoy's bucket is empty: refused at the headers, no call.
    let refused = ask(&gate, 10);
    let reply = refused.expect_reply();
    assert_eq!(
        assert_openai_error(&reply, 429, "rate_limit_error"),
        "rate_limit_exceeded"
    );
    assert!(gate.vm(0).pending_grpc_calls().is_empty());
    assert_eq!(gate.metric(CALLS), 2);

    // A request larger than the whole budget never asks either.
    let gate = gate_with(ACME.limits(10, 50), json!({"cluster": "ratelimit"}));
    let too_large = ask(&gate, 100);
    assert_eq!(too_large.error_code(), "request_too_large");
    assert_eq!(gate.metric(CALLS), 0);
}

#[test]
fn over_the_fleet_wide_budget_is_a_429_with_the_services_figures() {
    let gate = default_gate();
    let before = gate.bucket("acme");
    let exchange = ask(&gate, 100);
    let calls = calls(&gate);
    answer(&gate, &calls[0].0, rls::ok(Some((100, 12, 20))));
    answer(&gate, &calls[1].0, rls::over(Some((5000, 0, 17))));

    let reply = exchange.expect_reply();
    assert_eq!(
        assert_openai_error(&reply, 429, "rate_limit_error"),
        "token_budget_exceeded"
    );
    assert_eq!(reply.header("retry-after"), Some("17"));
    assert_eq!(reply.header("x-ratelimit-limit-tokens"), Some("5000"));
    assert_eq!(reply.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(reply.header("x-ratelimit-reset-tokens"), Some("17s"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("12"));
    assert_eq!(exchange.stream.continued_request(), 0);
    assert!(exchange.stream.forwarded_request_body().is_empty());

    // The request never ran: this Envoy's reservation is given back whole.
    let after = gate.bucket("acme");
    assert_eq!(
        (after.requests_micro, after.tokens_micro),
        (before.requests_micro, before.tokens_micro)
    );
    exchange.respond(&Response::usage(0, 0)).unwrap();
    assert!(gate.billing().is_empty());
    assert_eq!(gate.audits()[0]["result"], "rate_limited");
    assert_eq!(gate.metric("inference_gate.requests.rate_limited"), 1);
}

#[test]
fn without_figures_from_the_service_the_refusal_waits_a_window() {
    let gate = default_gate();
    let exchange = ask(&gate, 10);
    let calls = calls(&gate);
    // Limitador answers with no statuses.
    answer(&gate, &calls[0].0, rls::over(None));
    answer(&gate, &calls[1].0, rls::ok(None));
    let reply = exchange.expect_reply();
    assert_eq!(exchange.error_code(), "rate_limit_exceeded");
    assert_eq!(reply.header("retry-after"), Some("60"));
    // This Envoy's own figures, as before the refused request.
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("100"));
}

#[test]
fn a_timeout_lets_the_request_through_under_allow_and_is_counted() {
    let gate = default_gate();
    let exchange = ask(&gate, 10);
    let calls = calls(&gate);
    // Envoy ends a call past its timeout with DEADLINE_EXCEEDED.
    gate.vm(0)
        .fail_grpc_call(calls[0].0.token, grpc_status::DEADLINE_EXCEEDED, "timeout")
        .unwrap();
    answer(&gate, &calls[1].0, rls::ok(None));
    assert_eq!(exchange.stream.continued_request(), 1);
    assert!(exchange.reply().is_none());
    assert_eq!(gate.metric(FAILURES), 1);
    assert!(!gate.host.logs_containing("timed out").is_empty());
}

#[test]
fn a_failure_refuses_under_deny_and_gives_the_reservation_back() {
    let gate = gate_with(
        ACME.limits(100, 100_000),
        json!({"cluster": "ratelimit", "failure_mode": "deny", "timeout_ms": 25}),
    );
    let before = gate.bucket("acme");
    let exchange = ask(&gate, 10);
    let calls = calls(&gate);
    assert_eq!(calls[0].0.timeout, Duration::from_millis(25));
    answer(&gate, &calls[0].0, rls::ok(None));
    gate.vm(0)
        .fail_grpc_call(
            calls[1].0.token,
            grpc_status::UNAVAILABLE,
            "no healthy upstream",
        )
        .unwrap();
    let reply = exchange.expect_reply();
    assert_eq!(
        assert_openai_error(&reply, 503, "server_error"),
        "limiter_unavailable"
    );
    let after = gate.bucket("acme");
    assert_eq!(after.tokens_micro, before.tokens_micro);
    assert_eq!(gate.metric(FAILURES), 1);
}

#[test]
fn a_service_that_cannot_be_called_decides_at_once() {
    for (mode, allowed) in [("allow", true), ("deny", false)] {
        let host = Host::new();
        host.set_clusters(&["collector"]);
        let gate = Gate::start_on(
            host,
            &global(
                ACME.limits(100, 100_000),
                json!({"cluster": "ratelimit", "failure_mode": mode}),
            ),
            1,
        );
        let exchange = ask(&gate, 10);
        assert!(gate.vm(0).pending_grpc_calls().is_empty());
        assert_eq!(exchange.admitted(), allowed, "{mode}");
        assert_eq!(gate.metric(FAILURES), 2, "{mode}: both calls failed");
    }
}

#[test]
fn garbage_from_the_service_is_a_failure_not_a_trap() {
    let gate = default_gate();
    for garbage in [vec![0xff, 0xff, 0xff], vec![], vec![0x08, 0x07]] {
        let exchange = ask(&gate, 10);
        for (call, _) in calls(&gate) {
            answer(&gate, &call, garbage.clone());
        }
        assert!(
            exchange.reply().is_none(),
            "failure_mode allow lets it through"
        );
        exchange.respond(&Response::usage(8, 10)).unwrap();
    }
    assert_eq!(gate.metric(FAILURES), 6);
}

#[test]
fn tokens_used_beyond_the_reservation_are_reported_from_the_tick() {
    let gate = default_gate();
    let exchange = ask(&gate, 10);
    for (call, _) in calls(&gate) {
        answer(&gate, &call, rls::ok(None));
    }
    // Reserved 8 + 10; the model reports 8 + 40: 30 more.
    exchange.respond(&Response::usage(8, 40)).unwrap();
    assert!(
        gate.vm(0).pending_grpc_calls().is_empty(),
        "not from the log phase"
    );

    gate.vm(0).tick().unwrap();
    let calls = calls(&gate);
    assert_eq!(calls.len(), 1);
    let (call, asked) = &calls[0];
    assert_eq!(
        call.context_id,
        gate.vm(0).root_context_id(),
        "the root reports it"
    );
    assert_eq!((asked.kind, asked.tenant.as_str()), (Kind::Tokens, "acme"));
    assert_eq!((asked.descriptor_hits, asked.request_hits), (Some(30), 30));
    answer(&gate, call, rls::over(None));
    assert_eq!(
        gate.metric(FAILURES),
        0,
        "over the limit is an answer, not a failure"
    );

    // Nothing more to report; a failed report is counted.
    gate.vm(0).tick().unwrap();
    assert!(gate.vm(0).pending_grpc_calls().is_empty());
    let exchange = ask(&gate, 10);
    for (call, _) in self::calls(&gate) {
        answer(&gate, &call, rls::ok(None));
    }
    exchange.respond(&Response::usage(8, 20)).unwrap();
    gate.vm(0).tick().unwrap();
    let report = gate.vm(0).pending_grpc_calls().pop().unwrap();
    gate.vm(0)
        .fail_grpc_call(report.token, grpc_status::DEADLINE_EXCEEDED, "timeout")
        .unwrap();
    assert_eq!(gate.metric(FAILURES), 1);
}

/// The protocol cannot give hits back: a reservation larger than the usage is refunded to
/// this Envoy's bucket, but the service keeps counting the whole reservation.
#[test]
fn a_surplus_is_refunded_here_but_not_at_the_service() {
    let gate = default_gate();
    let exchange = ask(&gate, 500);
    let asked: Vec<_> = calls(&gate);
    assert_eq!(asked[1].1.descriptor_hits, Some(CHAT_PROMPT_ESTIMATE + 500));
    for (call, _) in &asked {
        answer(&gate, call, rls::ok(None));
    }
    exchange.respond(&Response::usage(8, 2)).unwrap();
    // Here: only the 10 tokens used stay counted.
    assert_eq!(gate.bucket("acme").tokens_micro, 10_000_000);
    // There: no call takes the 498 back.
    gate.vm(0).tick().unwrap();
    assert!(gate.vm(0).pending_grpc_calls().is_empty());
    assert_eq!(gate.metric(CALLS), 2);
}

#[test]
fn a_client_that_leaves_while_waiting_gives_its_reservation_back() {
    let gate = default_gate();
    let before = gate.bucket("acme");
    let exchange = ask(&gate, 10);
    assert_eq!(gate.vm(0).pending_grpc_calls().len(), 2);
    exchange.stream.finish().unwrap();
    assert!(
        gate.vm(0).pending_grpc_calls().is_empty(),
        "cancelled with the stream"
    );
    let after = gate.bucket("acme");
    assert_eq!(
        (after.requests_micro, after.tokens_micro),
        (before.requests_micro, before.tokens_micro)
    );
    assert!(gate.billing().is_empty(), "it never ran");
    assert_eq!(gate.audits().len(), 1);
}

#[test]
fn send_limits_false_leaves_the_limits_to_the_service() {
    let gate = gate_with(
        ACME.limits(100, 100_000),
        json!({"cluster": "ratelimit", "send_limits": false}),
    );
    let _exchange = ask(&gate, 10);
    let calls = calls(&gate);
    assert_eq!(calls.len(), 2);
    for (_, asked) in &calls {
        assert_eq!(asked.limit, None, "{asked:?}");
    }
}

#[test]
fn a_service_in_local_mode_is_not_called_and_the_log_says_so() {
    let mut c = config(&[ACME]);
    c["limits"] = json!({"service": {"cluster": "ratelimit"}});
    let gate = Gate::start(&c, 1);
    let exchange = ask(&gate, 10);
    assert!(exchange.admitted());
    assert!(gate.vm(0).pending_grpc_calls().is_empty());
    assert_eq!(
        gate.host
            .logs_containing("limits.mode is not \"global\"")
            .len(),
        1
    );
}
