//! HTTP callouts: dispatch from a tick or a stream, scripted answers and failures, and the
//! dispatch errors Envoy gives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{echo_vm, get};
use wasm_tests::{Action, Error, Status};

#[test]
fn a_tick_dispatches_and_the_response_is_delivered() {
    let (host, vm) = echo_vm("tick_ms=1000");
    vm.tick().unwrap();

    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "collector");
    assert_eq!(call.header(":path"), Some("/tick"));
    assert_eq!(call.timeout, Duration::from_secs(5));
    assert_eq!(call.context_id, vm.root_context_id());
    assert!(call.body.is_empty());

    vm.respond_call(call.token, 200, &[("content-type", "text/plain")], b"ok")
        .unwrap();
    let line = format!("callout {} answered 200: ok", call.token);
    assert_eq!(host.logs_containing(&line).len(), 1);
    assert!(vm.pending_calls().is_empty());
}

#[test]
fn a_failed_callout_has_no_headers_and_reports_a_reset() {
    let (host, vm) = echo_vm("tick_ms=1000");
    vm.tick().unwrap();
    let token = vm.pending_calls()[0].token;
    vm.fail_call(token).unwrap();
    let line = format!("callout {token} failed: status 11 reset");
    assert_eq!(host.logs_containing(&line).len(), 1);
}

#[test]
fn an_unknown_cluster_is_a_bad_argument() {
    let (host, vm) = echo_vm("tick_ms=1000");
    host.set_clusters(&["billing"]);
    vm.tick().unwrap();
    assert!(vm.pending_calls().is_empty());
    assert_eq!(
        host.logs_containing("could not dispatch: BadArgument")
            .len(),
        1
    );

    host.set_clusters(&["collector"]);
    vm.tick().unwrap();
    assert_eq!(vm.pending_calls().len(), 1);
}

#[test]
fn a_refused_dispatch_fails_with_the_chosen_status() {
    let (host, vm) = echo_vm("tick_ms=1000");
    host.refuse_calls_to("collector", Status::InternalFailure);
    vm.tick().unwrap();
    assert!(vm.pending_calls().is_empty());
    assert_eq!(
        host.logs_containing("could not dispatch: InternalFailure")
            .len(),
        1
    );

    host.accept_calls_to("collector");
    vm.tick().unwrap();
    assert_eq!(vm.pending_calls().len(), 1);
}

#[test]
fn tokens_are_distinct_and_answers_may_come_out_of_order() {
    let (host, vm) = echo_vm("tick_ms=1000");
    vm.tick().unwrap();
    vm.tick().unwrap();
    let tokens: Vec<u32> = vm.pending_calls().iter().map(|c| c.token).collect();
    assert_eq!(tokens.len(), 2);
    assert_ne!(tokens[0], tokens[1]);

    vm.respond_call(tokens[1], 503, &[], b"busy").unwrap();
    vm.respond_call(tokens[0], 200, &[], b"").unwrap();
    assert_eq!(host.logs_containing("answered 503: busy").len(), 1);
    assert_eq!(host.logs_containing("answered 200: ").len(), 1);
}

#[test]
fn a_stream_pauses_on_its_callout_and_resumes_on_the_answer() {
    let (_, vm) = echo_vm("");
    let stream = vm.http().unwrap();
    let action = stream
        .request_headers(&[(":path", "/callout"), (":method", "GET")], true)
        .unwrap();
    assert_eq!(action, Action::Pause);

    let call = vm.pending_calls().pop().unwrap();
    assert_eq!(call.context_id, stream.id());
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.body_text(), "check me");
    assert_eq!(call.timeout, Duration::from_millis(250));

    // The headers stay writable while the request is paused.
    vm.respond_call(call.token, 204, &[], b"").unwrap();
    assert_eq!(stream.request_header("x-checked").as_deref(), Some("204"));
    assert_eq!(stream.continued_request(), 1);
}

#[test]
fn a_stream_that_cannot_dispatch_replies_locally() {
    let (host, vm) = echo_vm("");
    host.set_clusters(&[]);
    let stream = vm.http().unwrap();
    stream
        .request_headers(&[(":path", "/callout"), (":method", "GET")], true)
        .unwrap();
    assert_eq!(stream.local_reply().unwrap().status, 503);
}

#[test]
fn a_finished_stream_cancels_its_callouts() {
    let (_, vm) = echo_vm("");
    let stream = get(&vm, "/callout", &[]);
    let token = vm.pending_calls()[0].token;
    stream.done().unwrap();
    assert!(vm.pending_calls().is_empty());
    assert!(matches!(
        vm.respond_call(token, 200, &[], b""),
        Err(Error::Usage(_))
    ));
}
