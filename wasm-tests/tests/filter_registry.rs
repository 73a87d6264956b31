//! The built filter in the harness, following the tenant registry: one worker polls the
//! collector's snapshot (with the ingest token and the ETag in force), publishes it in shared
//! data, and the other worker takes it on its next tick; an unchanged registry is a `304`; a
//! failed poll keeps the last snapshot and counts; the drain flag answers `/healthz` and
//! inference with `503` on every worker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::time::Duration;

use gate::{
    assert_openai_error, config, digest, reply_json, send, Gate, Request, Response, ACME,
    INGEST_TOKEN,
};
use serde_json::{json, Value};
use wasm_tests::{PendingCall, Vm};

const SNAPSHOT_PATH: &str = "/v1/tenants/snapshot";
const REGISTRY_KEY: &str = "ig-registry-key-0001";
const STATIC_KEY_OF_REGISTRY_ACME: &str = "ig-registry-acme-0001";

/// A static ACME beside the registry, polled every 500 ms.
fn registry_gate() -> Gate {
    let mut cfg = config(&[ACME]);
    cfg["registry"] = json!({"interval_ms": 500, "timeout_ms": 2000});
    Gate::start(&cfg, 2)
}

fn snapshot(version: u64, healthy: bool, tenants: Value) -> Vec<u8> {
    json!({"version": version, "healthy": healthy, "tenants": tenants})
        .to_string()
        .into_bytes()
}

fn initech(suspended: bool) -> Value {
    json!([
        {"id": "initech", "rate_limit": 7, "token_budget": 7000, "suspended": suspended,
         "api_key_sha256": [digest(REGISTRY_KEY)]},
        // The static tenant's id: left out whole (static wins).
        {"id": "acme", "rate_limit": 1, "token_budget": 1,
         "api_key_sha256": [digest(STATIC_KEY_OF_REGISTRY_ACME)]},
    ])
}

/// How a test answers a worker's call.
type Answer = dyn Fn(&Vm, u32);

/// The snapshot calls a worker has out (the record flusher's are left aside).
fn snapshot_calls(vm: &Vm) -> Vec<PendingCall> {
    vm.pending_calls()
        .into_iter()
        .filter(|c| c.header(":path") == Some(SNAPSHOT_PATH))
        .collect()
}

fn one_snapshot_call(vm: &Vm) -> PendingCall {
    let calls = snapshot_calls(vm);
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.into_iter().next().unwrap()
}

/// What a chat request with `key` gets on `vm`: 200 when admitted, else the local reply's.
fn status(vm: &Vm, key: &str) -> u32 {
    let exchange = send(vm, &Request::chat(key, 5), &Response::usage(1, 1)).unwrap();
    exchange.reply().map_or(200, |r| r.status)
}

fn healthz(vm: &Vm) -> (u32, Value) {
    let exchange = send(vm, &Request::get("/healthz"), &Response::usage(0, 0)).unwrap();
    let reply = exchange.expect_reply();
    (reply.status, reply_json(&reply))
}

#[test]
fn one_worker_polls_and_every_worker_follows() {
    let gate = registry_gate();
    let (a, b) = (gate.vm(0), gate.vm(1));
    a.tick().unwrap();
    b.tick().unwrap();
    let call = one_snapshot_call(a);
    assert!(snapshot_calls(b).is_empty(), "one poller per Envoy");
    assert_eq!(call.upstream, "collector");
    assert_eq!(call.header(":method"), Some("GET"));
    let bearer = format!("Bearer {INGEST_TOKEN}");
    assert_eq!(call.header("authorization"), Some(bearer.as_str()));
    assert_eq!(call.header("if-none-match"), None, "nothing in force yet");
    assert_eq!(call.timeout, Duration::from_secs(2));
    assert_eq!(status(a, REGISTRY_KEY), 401, "before the first snapshot");

    a.respond_call(
        call.token,
        200,
        &[("etag", "\"3\"")],
        &snapshot(3, true, initech(false)),
    )
    .unwrap();
    assert_eq!(gate.metric("inference_gate.registry.version"), 3);
    assert_eq!(gate.metric("inference_gate.registry.tenants"), 2);
    assert_eq!(gate.metric("inference_gate.registry.updates"), 1);
    // The poller has it at once; the other worker on its next tick.
    assert_eq!(status(a, REGISTRY_KEY), 200);
    assert_eq!(status(b, REGISTRY_KEY), 401);
    b.tick().unwrap();
    assert_eq!(status(b, REGISTRY_KEY), 200);
    let exchange = send(b, &Request::chat(REGISTRY_KEY, 5), &Response::usage(1, 1)).unwrap();
    assert_eq!(
        exchange.stream.request_header("x-tenant-id").as_deref(),
        Some("initech")
    );
    assert_eq!(
        exchange
            .stream
            .response_header("x-ratelimit-limit-requests")
            .as_deref(),
        Some("7")
    );
    // Static wins: the registry's "acme" is left out, the static one keeps its key.
    for vm in [a, b] {
        assert_eq!(status(vm, ACME.key()), 200);
        assert_eq!(status(vm, STATIC_KEY_OF_REGISTRY_ACME), 401);
    }
    assert!(!gate
        .host
        .logs_containing("registry tenant acme ignored: a static tenant has this id")
        .is_empty());

    // The next poll, an interval later, names the version: 304 changes nothing.
    gate.host.advance(Duration::from_millis(400));
    a.tick().unwrap();
    assert!(snapshot_calls(a).is_empty(), "not due yet");
    gate.host.advance(Duration::from_millis(200));
    a.tick().unwrap();
    let call = one_snapshot_call(a);
    assert_eq!(call.header("if-none-match"), Some("\"3\""));
    a.respond_call(call.token, 304, &[("etag", "\"3\"")], b"")
        .unwrap();
    assert_eq!(gate.metric("inference_gate.registry.unchanged"), 1);
    assert_eq!(gate.metric("inference_gate.registry.updates"), 1);

    // Suspended, then drained: on both workers once they ticked.
    gate.host.advance(Duration::from_millis(600));
    a.tick().unwrap();
    let call = one_snapshot_call(a);
    a.respond_call(
        call.token,
        200,
        &[("etag", "\"4\"")],
        &snapshot(4, true, initech(true)),
    )
    .unwrap();
    b.tick().unwrap();
    for vm in [a, b] {
        let exchange = send(vm, &Request::chat(REGISTRY_KEY, 5), &Response::usage(1, 1)).unwrap();
        let code = assert_openai_error(&exchange.expect_reply(), 403, "permission_error");
        assert_eq!(code, "tenant_suspended");
    }
    gate.host.advance(Duration::from_millis(600));
    a.tick().unwrap();
    let call = one_snapshot_call(a);
    a.respond_call(
        call.token,
        200,
        &[("etag", "\"5\"")],
        &snapshot(5, false, initech(false)),
    )
    .unwrap();
    b.tick().unwrap();
    for vm in [a, b] {
        assert_eq!(healthz(vm), (503, json!({"status": "degraded"})));
        let exchange = send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
        let code = assert_openai_error(&exchange.expect_reply(), 503, "server_error");
        assert_eq!(code, "service_draining");
    }
    gate.assert_logs_free_of(&[INGEST_TOKEN, REGISTRY_KEY]);
}

#[test]
fn a_failed_poll_keeps_the_last_snapshot_and_counts() {
    let gate = registry_gate();
    let (a, b) = (gate.vm(0), gate.vm(1));
    a.tick().unwrap();
    let call = one_snapshot_call(a);
    a.respond_call(
        call.token,
        200,
        &[("etag", "\"3\"")],
        &snapshot(3, true, initech(false)),
    )
    .unwrap();
    b.tick().unwrap();

    // A reset, a 503 (the collector down: Envoy's own answer) and a body that is no snapshot.
    let failures: [&Answer; 3] = [
        &|vm, token| vm.fail_call(token).unwrap(),
        &|vm, token| {
            vm.respond_call(token, 503, &[], b"no healthy upstream")
                .unwrap()
        },
        &|vm, token| {
            vm.respond_call(token, 200, &[("etag", "\"9\"")], b"{\"tenants\": 1}")
                .unwrap()
        },
    ];
    for (i, fail) in failures.iter().enumerate() {
        gate.host.advance(Duration::from_millis(1000));
        a.tick().unwrap();
        let call = one_snapshot_call(a);
        fail(a, call.token);
        assert_eq!(
            gate.metric("inference_gate.registry.failures"),
            i as u64 + 1
        );
        for vm in [a, b] {
            vm.tick().unwrap();
            assert_eq!(status(vm, REGISTRY_KEY), 200, "after failure {i}");
        }
    }
    assert_eq!(gate.metric("inference_gate.registry.version"), 3);
    // Three seconds since the collector last answered.
    gate.host.advance(Duration::from_millis(10));
    a.tick().unwrap();
    assert_eq!(gate.metric("inference_gate.registry.stale_seconds"), 3);
    assert_eq!(
        gate.host
            .logs_containing("tenant registry not synced")
            .len(),
        1,
        "a lasting failure is logged once a minute, not once a poll"
    );

    // The collector answers again: the staleness is back to 0.
    gate.host.advance(Duration::from_millis(1000));
    a.tick().unwrap();
    let call = one_snapshot_call(a);
    a.respond_call(call.token, 304, &[], b"").unwrap();
    assert_eq!(gate.metric("inference_gate.registry.stale_seconds"), 0);
    assert!(!gate
        .host
        .logs_containing("tenant registry reachable again after 3 failed polls")
        .is_empty());
}
