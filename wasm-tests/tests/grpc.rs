//! Unary gRPC calls: dispatch by cluster name or serialized `GrpcService`, answers, failures
//! (a timeout among them), cancellation, and the dispatch errors Envoy gives.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

use common::{echo_vm, get};
use wasm_tests::{grpc_status, Action, Error, Status};

#[test]
fn a_stream_pauses_on_its_grpc_call_and_resumes_on_the_answer() {
    let (host, vm) = echo_vm("cluster=ratelimit");
    let stream = vm.http().unwrap();
    let action = stream
        .request_headers(&[(":path", "/grpc"), (":method", "GET")], true)
        .unwrap();
    assert_eq!(action, Action::Pause);

    let calls = vm.pending_grpc_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.context_id, stream.id());
    assert_eq!(call.cluster, "ratelimit");
    assert!(!call.serialized_service);
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("echo.Echo", "Ask")
    );
    assert_eq!(call.message, b"ask");
    assert_eq!(call.timeout, Duration::from_millis(40));
    assert_eq!(
        call.initial_metadata,
        vec![("x-echo".to_string(), "1".to_string())]
    );
    assert!(vm.pending_calls().is_empty(), "no HTTP callout was made");

    vm.respond_grpc_call(call.token, b"yes").unwrap();
    assert_eq!(stream.request_header("x-grpc").as_deref(), Some("yes"));
    assert_eq!(stream.continued_request(), 1);
    assert!(vm.pending_grpc_calls().is_empty());
    let line = format!("grpc {} answered: yes", call.token);
    assert_eq!(host.logs_containing(&line).len(), 1);
}

#[test]
fn a_serialized_grpc_service_names_its_cluster() {
    let (_, vm) = echo_vm("cluster=outbound|8081||ratelimit.ns.svc.cluster.local");
    get(&vm, "/grpc-service", &[]);
    let call = vm.pending_grpc_calls().pop().unwrap();
    assert_eq!(
        call.cluster,
        "outbound|8081||ratelimit.ns.svc.cluster.local"
    );
    assert!(call.serialized_service);
}

#[test]
fn a_failed_call_is_closed_with_its_status() {
    let (host, vm) = echo_vm("cluster=ratelimit");
    let stream = get(&vm, "/grpc", &[]);
    let token = vm.pending_grpc_calls()[0].token;
    vm.fail_grpc_call(token, grpc_status::DEADLINE_EXCEEDED, "timeout")
        .unwrap();
    let line = format!("grpc {token} failed: 4 (4 timeout)");
    assert_eq!(host.logs_containing(&line).len(), 1);
    assert_eq!(stream.local_reply().unwrap().status, 503);
    assert!(vm.pending_grpc_calls().is_empty());

    // The status is reported only while the failure is delivered.
    let stream = get(&vm, "/grpc", &[]);
    let token = vm.pending_grpc_calls()[0].token;
    vm.respond_grpc_call(token, b"fine").unwrap();
    assert_eq!(stream.request_header("x-grpc").as_deref(), Some("fine"));
}

#[test]
fn unknown_clusters_fail_as_envoy_fails_them() {
    let (host, vm) = echo_vm("cluster=ratelimit");
    host.set_clusters(&["collector"]);

    // A plain name Envoy does not know: ParseFailure.
    let stream = get(&vm, "/grpc", &[]);
    assert_eq!(stream.local_reply().unwrap().status, 503);
    assert_eq!(
        host.logs_containing("grpc not dispatched: ParseFailure")
            .len(),
        1
    );
    // Inside a GrpcService: Envoy cannot start the call, InternalFailure.
    get(&vm, "/grpc-service", &[]);
    assert_eq!(
        host.logs_containing("grpc not dispatched: InternalFailure")
            .len(),
        1
    );
    assert!(vm.pending_grpc_calls().is_empty());

    host.set_clusters(&["ratelimit"]);
    host.refuse_calls_to("ratelimit", Status::InternalFailure);
    get(&vm, "/grpc", &[]);
    assert_eq!(
        host.logs_containing("grpc not dispatched: InternalFailure")
            .len(),
        2
    );
    host.accept_calls_to("ratelimit");
    get(&vm, "/grpc", &[]);
    assert_eq!(vm.pending_grpc_calls().len(), 1);
}

#[test]
fn a_cancelled_call_is_never_answered() {
    let (host, vm) = echo_vm("cluster=ratelimit");
    get(&vm, "/grpc-cancel", &[]);
    assert!(vm.pending_grpc_calls().is_empty());
    assert_eq!(host.logs_containing("cancelled grpc").len(), 1);
}

#[test]
fn a_finished_stream_cancels_its_grpc_calls() {
    let (_, vm) = echo_vm("cluster=ratelimit");
    let stream = get(&vm, "/grpc", &[]);
    let token = vm.pending_grpc_calls()[0].token;
    stream.done().unwrap();
    assert!(vm.pending_grpc_calls().is_empty());
    assert!(matches!(
        vm.respond_grpc_call(token, b""),
        Err(Error::Usage(_))
    ));
}

#[test]
fn grpc_and_http_tokens_do_not_collide() {
    let (_, vm) = echo_vm("cluster=ratelimit");
    get(&vm, "/grpc", &[]);
    get(&vm, "/callout", &[]);
    let grpc = vm.pending_grpc_calls()[0].token;
    let http = vm.pending_calls()[0].token;
    assert_ne!(grpc, http);
    assert!(matches!(
        vm.respond_call(grpc, 200, &[], b""),
        Err(Error::Usage(_))
    ));
}
