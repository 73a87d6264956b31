//! The built filter in the harness: the one flusher per process that moves records from
//! the shared queue to the collector, its lease, retries and hand-over.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::time::Duration;

use gate::{
    config, send, Gate, Request, Response, ACME, GLOBEX, INFLIGHT_KEY, INGEST_TOKEN, LEASE_KEY,
    QUEUE,
};
use serde_json::{json, Value};
use wasm_tests::{PendingCall, Status, Vm};

const MS: Duration = Duration::from_millis(1);

/// Two workers with traffic on both: five records in the shared queue.
fn two_busy_workers(cfg: &Value) -> Gate {
    let gate = Gate::start(cfg, 2);
    send(
        gate.vm(0),
        &Request::chat(ACME.key(), 5),
        &Response::usage(3, 4),
    )
    .unwrap();
    send(
        gate.vm(1),
        &Request::chat(GLOBEX.key(), 5),
        &Response::usage(5, 6),
    )
    .unwrap();
    send(
        gate.vm(1),
        &Request::chat("sk-nobody", 5),
        &Response::usage(1, 1),
    )
    .unwrap();
    assert_eq!(gate.queued().len(), 5);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 5);
    gate
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// The records of a collector call, checking the call's shape on the way.
fn batch(call: &PendingCall) -> Vec<Value> {
    assert_eq!(call.upstream, "collector");
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":path"), Some("/v1/records"));
    assert_eq!(call.header(":authority"), Some("collector"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    let bearer = format!("Bearer {INGEST_TOKEN}");
    assert_eq!(call.header("authorization"), Some(bearer.as_str()));
    let body: Value = serde_json::from_slice(&call.body)
        .unwrap_or_else(|e| panic!("batch body is not JSON ({e}): {}", call.body_text()));
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 1, "{body}");
    body["records"].as_array().unwrap().clone()
}

/// The one call a worker has out.
fn one_call(vm: &Vm) -> PendingCall {
    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.into_iter().next().unwrap()
}

fn no_call(vm: &Vm, when: &str) {
    let calls = vm.pending_calls();
    assert!(calls.is_empty(), "{when}: unexpected call {calls:?}");
}

#[test]
fn only_the_lease_holder_sends_every_worker_s_records_in_one_batch() {
    let gate = two_busy_workers(&config(&[ACME, GLOBEX]));
    let queued = ids(&gate.queued());
    // Both workers' records met in the one queue.
    let prefixes: std::collections::BTreeSet<&str> = queued.iter().map(|id| &id[..16]).collect();
    assert_eq!(prefixes.len(), 2, "{queued:?}");
    // Queue notifications go to the worker that registered last; they must be harmless.
    gate.vm(1).deliver_queue_ready().unwrap();

    gate.vm(0).tick().unwrap();
    gate.vm(1).tick().unwrap();
    let call = one_call(gate.vm(0));
    no_call(gate.vm(1), "not the lease holder");
    assert!(gate.host.shared_data(LEASE_KEY).is_some());
    assert_eq!(call.timeout, Duration::from_secs(5));

    let records = batch(&call);
    assert_eq!(ids(&records), queued);
    assert_eq!(records.iter().filter(|r| r["kind"] == "billing").count(), 2);
    assert!(gate.queued().is_empty(), "the batch left the queue");
    let (inflight, _) = gate.host.shared_data(INFLIGHT_KEY).unwrap();
    assert!(
        inflight.len() > 16,
        "the batch in flight is kept in shared data"
    );

    // Ticks while the call is out send nothing more.
    gate.host.advance(Duration::from_secs(1));
    gate.vm(0).tick().unwrap();
    gate.vm(1).tick().unwrap();
    assert_eq!(gate.vm(0).pending_calls().len(), 1);
    no_call(gate.vm(1), "still not the lease holder");

    gate.vm(0)
        .respond_call(call.token, 200, &[], b"{}")
        .unwrap();
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
    let (inflight, _) = gate.host.shared_data(INFLIGHT_KEY).unwrap();
    assert!(inflight.is_empty());
    no_call(gate.vm(0), "the queue is empty");

    // Idle ticks stay quiet; new traffic goes in the next batch, alone.
    gate.host.advance(Duration::from_secs(1));
    gate.vm(0).tick().unwrap();
    no_call(gate.vm(0), "idle");
    send(
        gate.vm(1),
        &Request::chat(ACME.key(), 5),
        &Response::usage(1, 2),
    )
    .unwrap();
    let fresh = ids(&gate.queued());
    gate.host.advance(Duration::from_secs(1));
    gate.vm(1).tick().unwrap();
    gate.vm(0).tick().unwrap();
    no_call(gate.vm(1), "the lease is still held by worker 0");
    assert_eq!(ids(&batch(&one_call(gate.vm(0)))), fresh);
    gate.assert_logs_free_of(&[INGEST_TOKEN]);
}

#[test]
fn a_failed_call_is_retried_after_its_backoff_with_the_same_batch() {
    let gate = two_busy_workers(&config(&[ACME, GLOBEX]));
    let a = gate.vm(0);
    a.tick().unwrap();
    let first = one_call(a);
    let sent_ids = ids(&batch(&first));

    // No response at all (a reset): zero headers.
    a.fail_call(first.token).unwrap();
    assert!(!gate
        .host
        .logs_containing("collector batch of 5 records failed (no response); will retry")
        .is_empty());
    assert_eq!(gate.metric("inference_gate.batches.failed"), 1);
    assert_eq!(gate.metric("inference_gate.records.retried"), 5);
    assert_eq!(gate.metric("inference_gate.records.sent"), 0);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 5);

    // The first backoff is between 500 ms and 1 s: nothing before, the same batch after.
    a.tick().unwrap();
    gate.host.advance(499 * MS);
    a.tick().unwrap();
    gate.vm(1).tick().unwrap();
    no_call(a, "inside the backoff");
    no_call(gate.vm(1), "not the lease holder");
    gate.host.advance(501 * MS);
    a.tick().unwrap();
    let second = one_call(a);
    assert_eq!(ids(&batch(&second)), sent_ids);
    assert_eq!(second.body, first.body);

    // A 503 doubles the backoff: 1 s to 2 s.
    a.respond_call(second.token, 503, &[], b"unavailable")
        .unwrap();
    assert!(!gate
        .host
        .logs_containing("collector batch of 5 records failed (status 503); will retry")
        .is_empty());
    gate.host.advance(999 * MS);
    a.tick().unwrap();
    no_call(a, "inside the second backoff");
    gate.host.advance(1001 * MS);
    a.tick().unwrap();
    let third = one_call(a);
    assert_eq!(ids(&batch(&third)), sent_ids);

    a.respond_call(third.token, 200, &[], b"").unwrap();
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
    assert_eq!(gate.metric("inference_gate.batches.failed"), 2);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
    assert!(gate.queued().is_empty());
    assert!(!gate
        .host
        .logs_containing("collector reachable again after 2 failed attempts")
        .is_empty());
}

#[test]
fn a_batch_that_cannot_be_dispatched_is_kept_and_sent_later() {
    let gate = two_busy_workers(&config(&[ACME, GLOBEX]));
    gate.host
        .refuse_calls_to("collector", Status::InternalFailure);
    gate.vm(0).tick().unwrap();
    no_call(gate.vm(0), "dispatch refused");
    assert!(!gate
        .host
        .logs_containing("collector call could not be dispatched")
        .is_empty());
    assert_eq!(gate.metric("inference_gate.batches.failed"), 1);

    gate.host.accept_calls_to("collector");
    gate.host.advance(Duration::from_secs(1));
    gate.vm(0).tick().unwrap();
    let call = one_call(gate.vm(0));
    assert_eq!(batch(&call).len(), 5);
    gate.vm(0).respond_call(call.token, 204, &[], b"").unwrap();
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
}

#[test]
fn the_queue_drains_batch_after_batch_without_waiting_for_ticks() {
    let mut cfg = config(&[ACME, GLOBEX]);
    cfg["collector"]["batch_size"] = 2.into();
    let gate = two_busy_workers(&cfg);
    let queued = ids(&gate.queued());
    gate.vm(1).tick().unwrap();
    let mut sent = Vec::new();
    for size in [2, 2, 1] {
        let call = one_call(gate.vm(1));
        let records = batch(&call);
        assert_eq!(records.len(), size);
        sent.extend(ids(&records));
        gate.vm(1)
            .respond_call(call.token, 200, &[], b"{}")
            .unwrap();
    }
    assert_eq!(sent, queued);
    no_call(gate.vm(1), "drained");
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
}

#[test]
fn a_batch_the_collector_refuses_as_malformed_is_dropped_and_counted() {
    let gate = two_busy_workers(&config(&[ACME, GLOBEX]));
    gate.vm(0).tick().unwrap();
    let call = one_call(gate.vm(0));
    gate.vm(0)
        .respond_call(
            call.token,
            400,
            &[("content-type", "application/json")],
            br#"{"error":{}}"#,
        )
        .unwrap();
    assert_eq!(gate.metric("inference_gate.records.dropped"), 5);
    assert_eq!(gate.metric("inference_gate.records.sent"), 0);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
    let refused = gate.host.logs_containing(
        "collector refused a batch of 5 records with status 400 (no reason given); records dropped",
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].level, wasm_tests::LogLevel::Error);

    // Never resent.
    gate.host.advance(Duration::from_secs(60));
    gate.vm(0).tick().unwrap();
    no_call(gate.vm(0), "a refused batch is not retried");

    // The next record goes alone.
    send(
        gate.vm(0),
        &Request::chat("sk-nobody", 5),
        &Response::usage(1, 1),
    )
    .unwrap();
    let fresh = ids(&gate.queued());
    gate.host.advance(Duration::from_secs(1));
    gate.vm(0).tick().unwrap();
    assert_eq!(ids(&batch(&one_call(gate.vm(0)))), fresh);
}

#[test]
fn when_the_lease_holder_goes_silent_the_other_worker_resends_its_batch() {
    let gate = two_busy_workers(&config(&[ACME, GLOBEX]));
    let (a, b) = (gate.vm(0), gate.vm(1));
    a.tick().unwrap();
    let lost = one_call(a);
    let lost_ids = ids(&batch(&lost));

    // Worker 0 stops ticking and never hears back. Its lease (three flush intervals) holds
    // until it expires.
    gate.host.advance(Duration::from_millis(2_999));
    b.tick().unwrap();
    no_call(b, "the lease has not expired");
    gate.host.advance(MS);
    b.tick().unwrap();
    let resent = one_call(b);
    assert_eq!(ids(&batch(&resent)), lost_ids);
    assert_eq!(resent.body, lost.body);

    b.respond_call(resent.token, 200, &[], b"{}").unwrap();
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);

    // The old holder's late acknowledgement counts nothing twice, and it does not take the
    // lease back while the new holder renews it.
    a.respond_call(lost.token, 200, &[], b"{}").unwrap();
    assert_eq!(gate.metric("inference_gate.records.sent"), 5);
    send(a, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    gate.host.advance(Duration::from_secs(1));
    a.tick().unwrap();
    b.tick().unwrap();
    no_call(a, "worker 0 lost the lease");
    assert_eq!(batch(&one_call(b)).len(), 2);
}

#[test]
fn a_full_buffer_refuses_new_work_under_the_reject_policy() {
    let mut cfg = config(&[ACME]);
    cfg["collector"]["max_buffered_records"] = 6.into();
    let gate = Gate::start(&cfg, 1);
    let vm = gate.vm(0);

    // Audit entries of refused requests may fill only half of the buffer: a flood of bad
    // keys during a collector outage cannot lock paying tenants out.
    for _ in 0..4 {
        send(vm, &Request::chat("sk-nobody", 5), &Response::usage(1, 1)).unwrap();
    }
    assert_eq!(gate.metric("inference_gate.buffer.records"), 3);
    assert_eq!(gate.metric("inference_gate.records.dropped"), 1);

    // Served requests keep all their records, up to the bound and a little past it.
    for _ in 0..2 {
        let served = send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
        assert!(served.admitted());
    }
    assert_eq!(gate.metric("inference_gate.buffer.records"), 7);

    let refused = send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    let reply = refused.expect_reply();
    assert_eq!(
        gate::assert_openai_error(&reply, 503, "server_error"),
        "usage_recording_unavailable"
    );
    assert!(refused.stream.forwarded_request_body().is_empty());
    // The refusal's own audit entry is counted as dropped, and the buffer holds.
    assert_eq!(gate.metric("inference_gate.records.dropped"), 2);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 7);
    assert_eq!(gate.queued().len(), 7);

    vm.tick().unwrap();
    let call = one_call(vm);
    vm.respond_call(call.token, 200, &[], b"{}").unwrap();
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
    assert!(
        send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1))
            .unwrap()
            .admitted()
    );
}

#[test]
fn a_full_buffer_under_the_drop_policy_serves_and_counts_the_loss() {
    let mut cfg = config(&[ACME]);
    cfg["collector"]["max_buffered_records"] = 2.into();
    cfg["collector"]["on_buffer_full"] = json!("drop");
    let gate = Gate::start(&cfg, 1);
    let vm = gate.vm(0);
    assert!(
        send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1))
            .unwrap()
            .admitted()
    );
    let served = send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    assert!(served.admitted());
    assert_eq!(gate.metric("inference_gate.records.dropped"), 2);
    assert_eq!(gate.queued().len(), 2);
    assert!(!gate
        .host
        .logs_containing("records dropped (record buffer full)")
        .is_empty());
}

#[test]
fn the_buffer_is_bounded_in_bytes_too() {
    let mut cfg = config(&[ACME]);
    cfg["collector"]["max_buffered_bytes"] = 4096.into();
    let gate = Gate::start(&cfg, 1);
    let vm = gate.vm(0);

    // Served requests fill the buffer until its bytes reach the bound; the next is refused.
    let mut served = 0;
    loop {
        let exchange = send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
        if !exchange.admitted() {
            let reply = exchange.expect_reply();
            assert_eq!(
                gate::assert_openai_error(&reply, 503, "server_error"),
                "usage_recording_unavailable"
            );
            break;
        }
        served += 1;
        assert!(served < 100, "the byte bound never refused a request");
    }
    assert!(served >= 2, "refused after {served} requests");
    // The gauge counts exactly the bytes of the records in the queue.
    let queued_bytes: usize = gate.host.queue_items(QUEUE).iter().map(|r| r.len()).sum();
    assert_eq!(
        gate.metric("inference_gate.buffer.bytes"),
        queued_bytes as u64
    );
    assert!(queued_bytes >= 4096);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 2 * served);

    // Once the collector has the records, both gauges are back at zero and traffic flows.
    vm.tick().unwrap();
    let call = one_call(vm);
    vm.respond_call(call.token, 200, &[], b"{}").unwrap();
    assert_eq!(gate.metric("inference_gate.buffer.bytes"), 0);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 0);
    assert!(
        send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1))
            .unwrap()
            .admitted()
    );
}

#[test]
fn drops_that_follow_a_reported_one_are_reported_on_a_later_tick() {
    let mut cfg = config(&[ACME]);
    cfg["collector"]["max_buffered_records"] = 2.into();
    cfg["collector"]["on_buffer_full"] = json!("drop");
    let gate = Gate::start(&cfg, 1);
    let vm = gate.vm(0);
    let report = "records dropped (record buffer full)";

    send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    assert_eq!(gate.host.logs_containing(report).len(), 1);
    // Within the interval, further drops are counted but not logged one by one...
    send(vm, &Request::chat(ACME.key(), 5), &Response::usage(1, 1)).unwrap();
    assert_eq!(gate.metric("inference_gate.records.dropped"), 4);
    assert_eq!(gate.host.logs_containing(report).len(), 1);

    // ...and reported by a tick once it has passed, with no further traffic.
    gate.host.advance(Duration::from_secs(11));
    vm.tick().unwrap();
    let lines = gate.host.logs_containing(report);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].message.starts_with("2 records dropped"),
        "{lines:?}"
    );
}
