//! The built filter in the harness: request rate and token budget under a clock the test
//! owns, across one and two workers, with reservation and settlement.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::time::Duration;

use gate::{
    assert_openai_error, begin, config, send, Exchange, Gate, Request, Response, ACME,
    CHAT_PROMPT_ESTIMATE, GLOBEX,
};
use wasm_tests::Action;

const MINUTE_NS: u64 = 60_000_000_000;
const MILLI: Duration = Duration::from_millis(1);

/// A response that reports exactly what [`Request::chat`] with `max_tokens` reserved, so
/// settlement changes nothing and the token figures stay predictable.
fn exact(max_tokens: u64) -> Response {
    Response::usage(CHAT_PROMPT_ESTIMATE, max_tokens)
}

fn chat(gate: &Gate, worker: usize, max_tokens: u64) -> Exchange {
    let request = Request::chat(ACME.key(), max_tokens);
    send(gate.vm(worker), &request, &exact(max_tokens)).unwrap()
}

/// Asserts a `429` with this code and `retry-after`; returns the reply's headers.
fn assert_429(exchange: &Exchange, code: &str, retry_after: &str) -> Vec<(String, String)> {
    let reply = exchange.expect_reply();
    assert_eq!(
        assert_openai_error(&reply, 429, "rate_limit_error"),
        code,
        "{}",
        reply.body_text()
    );
    assert_eq!(reply.header("retry-after"), Some(retry_after));
    assert!(
        exchange.stream.forwarded_request_body().is_empty(),
        "a refused request's body must not reach the model server"
    );
    reply.headers
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn three_per_minute_lets_exactly_three_through_then_says_when_to_retry() {
    let gate = Gate::start(&config(&[ACME.limits(3, 100_000)]), 1);
    let reserved = CHAT_PROMPT_ESTIMATE + 10;

    for i in 1..=3u64 {
        let exchange = chat(&gate, 0, 10);
        assert!(exchange.admitted(), "request {i}");
        let s = &exchange.stream;
        let h = |name: &str| s.response_header(name);
        assert_eq!(h("x-ratelimit-limit-requests").as_deref(), Some("3"));
        assert_eq!(
            h("x-ratelimit-remaining-requests"),
            Some((3 - i).to_string())
        );
        // One request drains every 20 s.
        let reset = ["20s", "40s", "1m0s"][i as usize - 1];
        assert_eq!(h("x-ratelimit-reset-requests").as_deref(), Some(reset));
        assert_eq!(h("x-ratelimit-limit-tokens").as_deref(), Some("100000"));
        assert_eq!(
            h("x-ratelimit-remaining-tokens"),
            Some((100_000 - i * reserved).to_string())
        );
        assert!(h("x-ratelimit-reset-tokens").is_some());
    }
    assert_eq!(gate.bucket("acme").requests_micro, 3_000_000);

    // The fourth at the same instant is refused on its headers, before any body is read.
    let refused = chat(&gate, 0, 10);
    assert_eq!(refused.headers_action, Action::Pause);
    assert!(refused.body_actions.is_empty());
    let headers = assert_429(&refused, "rate_limit_exceeded", "20");
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(header(&headers, "x-ratelimit-reset-requests"), Some("1m0s"));
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("100000"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-tokens"),
        Some((100_000 - 3 * reserved).to_string().as_str())
    );
    assert_eq!(
        gate.bucket("acme").requests_micro,
        3_000_000,
        "a refusal reserves nothing"
    );
    assert_eq!(gate.metric("inference_gate.requests.rate_limited"), 1);

    // The wait is rounded up to whole seconds: 14.5 s left is 15.
    gate.host.advance(Duration::from_millis(5_500));
    assert_429(&chat(&gate, 0, 10), "rate_limit_exceeded", "15");
    gate.host.advance(Duration::from_millis(14_499));
    assert_429(&chat(&gate, 0, 10), "rate_limit_exceeded", "1");

    // Twenty seconds after the burst, exactly one more.
    gate.host.advance(MILLI);
    assert!(chat(&gate, 0, 10).admitted());
    assert_429(&chat(&gate, 0, 10), "rate_limit_exceeded", "20");
    assert_eq!(gate.metric("inference_gate.requests.success"), 4);
    assert_eq!(gate.metric("inference_gate.requests.rate_limited"), 4);
}

#[test]
fn advancing_by_retry_after_lets_exactly_one_more_through() {
    let gate = Gate::start(&config(&[ACME.limits(3, 100_000)]), 1);
    for _ in 0..3 {
        assert!(chat(&gate, 0, 10).admitted());
    }
    let refused = chat(&gate, 0, 10);
    let wait: u64 = refused
        .expect_reply()
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    gate.host.advance(Duration::from_secs(wait));
    assert!(chat(&gate, 0, 10).admitted());
    assert!(!chat(&gate, 0, 10).admitted());
}

#[test]
fn no_second_burst_across_a_minute_boundary() {
    let gate = Gate::start(&config(&[ACME.limits(3, 100_000)]), 1);
    let now = gate.host.now_nanos();
    let boundary = now - now % MINUTE_NS + MINUTE_NS;

    gate.host.set_time(boundary - 1_000_000);
    for _ in 0..3 {
        assert!(chat(&gate, 0, 10).admitted());
    }
    assert!(!chat(&gate, 0, 10).admitted());

    // A new minute on the wall clock gives nothing back: 2 ms drained, not a fresh window.
    gate.host.set_time(boundary + 1_000_000);
    for _ in 0..3 {
        assert_429(&chat(&gate, 0, 10), "rate_limit_exceeded", "20");
    }

    // 20 s after the burst, one.
    gate.host.set_time(boundary - 1_000_000 + 20_000_000_000);
    assert!(chat(&gate, 0, 10).admitted());
    assert!(!chat(&gate, 0, 10).admitted());
    assert_eq!(gate.metric("inference_gate.requests.success"), 4);
}

#[test]
fn one_tenant_budget_holds_across_two_workers() {
    let gate = Gate::start(&config(&[ACME.limits(5, 1_000_000), GLOBEX]), 2);
    let mut admitted = [0, 0];
    for i in 0..12 {
        if chat(&gate, i % 2, 10).admitted() {
            admitted[i % 2] += 1;
        }
    }
    assert_eq!(admitted[0] + admitted[1], 5, "{admitted:?}");
    assert_eq!(admitted, [3, 2], "both workers draw on the same bucket");
    assert_eq!(gate.bucket("acme").requests_micro, 5_000_000);

    // Another tenant is not affected.
    let other = send(gate.vm(1), &Request::chat(GLOBEX.key(), 10), &exact(10)).unwrap();
    assert!(other.admitted());

    // Requests whose bodies are read in an interleaved order, a minute later when the
    // bucket is empty again: still exactly five.
    gate.host.advance(Duration::from_secs(60));
    // Every request's headers first, then every body's last chunk.
    let flights: Vec<Exchange> = (0..10)
        .map(|i| {
            let vm = gate.vm(i % 2);
            let stream = vm.http().unwrap();
            let body = gate::chat_body(Some("m"), 10);
            let headers = [
                (":method", "POST"),
                (":path", gate::CHAT),
                (":authority", "gateway.test"),
                ("authorization", "Bearer sk-acme-0002"),
            ];
            let action = stream.request_headers(&headers, false).unwrap();
            assert_eq!(
                action,
                Action::Continue,
                "nobody is admitted yet at request {i}"
            );
            stream.request_body(&body.as_bytes()[..5], false).unwrap();
            (stream, body)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(stream, body)| {
            let action = stream.request_body(&body.as_bytes()[5..], true).unwrap();
            Exchange {
                stream,
                headers_action: Action::Continue,
                body_actions: vec![Action::Pause, action],
            }
        })
        .collect();
    let passed = flights.iter().filter(|f| f.admitted()).count();
    assert_eq!(passed, 5);
    for flight in &flights {
        flight.respond(&exact(10)).unwrap();
    }
    assert_eq!(gate.metric("inference_gate.requests.success"), 11);
    assert_eq!(gate.metric("inference_gate.requests.rate_limited"), 12);
}

#[test]
fn a_request_larger_than_the_whole_budget_is_refused_and_not_forwarded() {
    let gate = Gate::start(&config(&[ACME.limits(100, 1000)]), 1);
    let request = Request::chat(ACME.key(), 1000);
    let exchange = send(gate.vm(0), &request, &exact(1000)).unwrap();
    // The headers pass the quick check; the estimate needs the body.
    assert_eq!(exchange.headers_action, Action::Continue);
    assert_eq!(exchange.body_actions, [Action::Pause]);
    let headers = assert_429(&exchange, "request_too_large", "60");
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("1000"));
    let reply = exchange.expect_reply();
    assert!(reply.body_text().contains("1008"), "{}", reply.body_text());
    assert_eq!(
        gate.bucket("acme"),
        gate::Bucket {
            at_ns: 0,
            requests_micro: 0,
            tokens_micro: 0
        }
    );

    // One that fits the budget exactly passes.
    let fits = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 1000 - CHAT_PROMPT_ESTIMATE),
        &exact(992),
    )
    .unwrap();
    assert!(fits.admitted());
    assert_eq!(
        fits.stream
            .response_header("x-ratelimit-remaining-tokens")
            .as_deref(),
        Some("0")
    );
}

#[test]
fn settlement_refunds_a_reservation_the_response_did_not_use() {
    let gate = Gate::start(&config(&[ACME.limits(100, 1000)]), 1);

    // A reserves 908 of 1000 and is still running.
    let a = begin(gate.vm(0), &Request::chat(ACME.key(), 900)).unwrap();
    assert!(a.admitted());
    assert_eq!(gate.bucket("acme").tokens_micro, 908_000_000);

    // B needs 208 more: it does not fit while A holds its reservation.
    let b = send(gate.vm(0), &Request::chat(ACME.key(), 200), &exact(200)).unwrap();
    assert_eq!(b.body_actions, [Action::Pause]);
    // 116 tokens over the budget drain in 6.96 s.
    assert_429(&b, "token_budget_exceeded", "7");

    // A used 10 tokens: 898 flow back.
    a.respond(&Response::usage(6, 4)).unwrap();
    assert_eq!(gate.bucket("acme").tokens_micro, 10_000_000);

    // Now B fits, at the same instant.
    let c = send(gate.vm(0), &Request::chat(ACME.key(), 200), &exact(200)).unwrap();
    assert!(c.admitted());
    assert_eq!(
        c.stream
            .response_header("x-ratelimit-remaining-tokens")
            .as_deref(),
        Some("782")
    );
    let billed: Vec<(u64, u64)> = gate
        .billing()
        .iter()
        .map(|b| {
            (
                b["input_tokens"].as_u64().unwrap(),
                b["output_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(billed, [(6, 4), (CHAT_PROMPT_ESTIMATE, 200)]);
}

#[test]
fn usage_beyond_the_reservation_is_charged_past_the_budget() {
    let gate = Gate::start(&config(&[ACME.limits(100, 1000)]), 1);
    let a = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 10),
        &Response::usage(500, 1000),
    )
    .unwrap();
    assert!(a.admitted());
    assert_eq!(gate.bucket("acme").tokens_micro, 1_500_000_000);
    assert_eq!(gate.billing()[0]["input_tokens"], 500);
    assert_eq!(gate.billing()[0]["output_tokens"], 1000);

    // In debt: even the smallest request is refused on its headers until 501 tokens drained.
    let b = send(gate.vm(0), &Request::chat(ACME.key(), 1), &exact(1)).unwrap();
    assert_eq!(b.headers_action, Action::Pause);
    let headers = assert_429(&b, "token_budget_exceeded", "31");
    assert_eq!(header(&headers, "x-ratelimit-remaining-tokens"), Some("0"));

    // After 30 s, 500 of the 1500 have drained: a 9-token request still waits...
    gate.host.advance(Duration::from_secs(30));
    assert!(!send(gate.vm(0), &Request::chat(ACME.key(), 1), &exact(1))
        .unwrap()
        .admitted());
    // ... and once the debt is gone, it passes.
    gate.host.advance(Duration::from_millis(600));
    assert!(send(gate.vm(0), &Request::chat(ACME.key(), 1), &exact(1))
        .unwrap()
        .admitted());
}
