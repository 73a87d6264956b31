//! HTTP streams: header changes, properties, local replies, bodies, the log phase, and
//! the controlled clock and randomness as a guest sees them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{echo_vm, echo_wasm, get};
use wasm_tests::{Action, Error, Host};

#[test]
fn headers_are_added_replaced_and_removed() {
    let (_, vm) = echo_vm("");
    let stream = get(
        &vm,
        "/anything",
        &[
            ("X-Remove-Me", "secret"),
            ("x-replace", "original"),
            ("x-keep", "1"),
        ],
    );

    let headers = stream.request_header_map();
    assert!(headers.contains(&("x-echo".into(), "1".into())));
    assert!(headers.contains(&("x-keep".into(), "1".into())));
    assert!(!headers.iter().any(|(key, _)| key == "x-remove-me"));
    assert_eq!(
        stream.request_header("x-replace").as_deref(),
        Some("replaced")
    );
    assert_eq!(
        headers.iter().filter(|(key, _)| key == "x-replace").count(),
        1
    );

    assert_eq!(
        stream
            .response_headers(&[(":status", "200")], false)
            .unwrap(),
        Action::Continue
    );
    assert_eq!(
        stream.response_header("x-echo-response").as_deref(),
        Some("1")
    );
}

#[test]
fn properties_are_per_stream_over_per_vm() {
    let (_, vm) = echo_vm("");
    let unknown = get(&vm, "/", &[]);
    assert_eq!(
        unknown.request_header("x-source").as_deref(),
        Some("unknown")
    );

    vm.set_property(&["source", "address"], "10.0.0.1:1");
    let from_vm = get(&vm, "/", &[]);
    assert_eq!(
        from_vm.request_header("x-source").as_deref(),
        Some("10.0.0.1:1")
    );

    let stream = vm.http().unwrap();
    stream
        .set_property(&["source", "address"], "127.0.0.1:5555")
        .unwrap();
    stream
        .request_headers(&[(":path", "/"), (":method", "GET")], true)
        .unwrap();
    assert_eq!(
        stream.request_header("x-source").as_deref(),
        Some("127.0.0.1:5555")
    );
}

#[test]
fn local_reply_is_recorded_and_the_test_may_send_it_through() {
    let (_, vm) = echo_vm("");
    let stream = vm.http().unwrap();
    let action = stream
        .request_headers(&[(":path", "/deny"), (":method", "GET")], true)
        .unwrap();
    assert_eq!(action, Action::Pause);

    let reply = stream.local_reply().expect("a local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-reason"), Some("denied by echo"));
    assert_eq!(reply.body_text(), "denied");
    assert_eq!(reply.grpc_status, -1);
    assert_eq!(stream.local_replies().len(), 1);

    // Envoy runs the local reply through the filter's response path; the test may too.
    stream
        .response_headers(&[(":status", "403")], false)
        .unwrap();
    assert_eq!(
        stream.response_header("x-echo-response").as_deref(),
        Some("1")
    );
}

#[test]
fn a_paused_body_is_buffered_and_seen_whole() {
    let (host, vm) = echo_vm("");
    let stream = vm.http().unwrap();
    let headers = [(":path", "/body"), (":method", "POST")];
    assert_eq!(
        stream.request_headers(&headers, false).unwrap(),
        Action::Continue
    );
    assert_eq!(
        stream.request_body(b"hello ", false).unwrap(),
        Action::Pause
    );
    assert!(stream.forwarded_request_body().is_empty());
    assert_eq!(
        stream.request_body(b"world", true).unwrap(),
        Action::Continue
    );

    assert_eq!(
        host.logs_containing("request body 11 bytes: hello world")
            .len(),
        1
    );
    assert_eq!(stream.forwarded_request_body(), b"HELLO WORLD");
    assert_eq!(host.histogram("echo_body_bytes"), vec![11]);
}

#[test]
fn streamed_chunks_pass_through_one_by_one() {
    let (host, vm) = echo_vm("");
    let stream = get(&vm, "/", &[]);
    stream
        .response_headers(&[(":status", "200")], false)
        .unwrap();
    for (chunk, end) in [(&b"abc"[..], false), (b"de", false), (b"", true)] {
        assert_eq!(stream.response_body(chunk, end).unwrap(), Action::Continue);
    }
    assert_eq!(stream.forwarded_response_body(), b"abcde");
    let chunks: Vec<String> = host
        .logs_containing("response chunk")
        .into_iter()
        .map(|entry| entry.message)
        .collect();
    assert_eq!(
        chunks,
        [
            "response chunk 3 bytes, end false",
            "response chunk 2 bytes, end false",
            "response chunk 0 bytes, end true"
        ]
    );
}

/// Envoy drops the filter's access to request headers once it continued them; the SDK
/// panics on the `BadArgument` it then gets. The harness reproduces that.
#[test]
fn request_headers_are_gone_in_the_response_phase_as_in_envoy() {
    let (_, vm) = echo_vm("");
    let stream = get(&vm, "/late-read", &[]);
    let err = stream
        .response_headers(&[(":status", "200")], false)
        .unwrap_err();
    assert!(matches!(err, Error::Trap { .. }));
    assert!(err.to_string().contains("unexpected status: 2"), "{err}");
}

#[test]
fn the_log_phase_reads_the_final_headers() {
    let (host, vm) = echo_vm("");
    let stream = get(&vm, "/logged", &[]);
    stream
        .response_headers(&[(":status", "201")], true)
        .unwrap();
    stream.finish().unwrap();
    let line = r#"access path=Some("/logged") status=Some("201")"#;
    assert_eq!(host.logs_containing(line).len(), 1);
}

#[test]
fn a_finished_stream_refuses_events_but_stays_inspectable() {
    let (host, vm) = echo_vm("");
    let stream = get(&vm, "/", &[]);
    assert_eq!(host.metric("echo_active"), Some(1));
    stream.done().unwrap();
    assert_eq!(host.metric("echo_active"), Some(0));

    assert!(matches!(
        stream.request_body(b"x", true),
        Err(Error::Usage(_))
    ));
    assert!(matches!(stream.done(), Err(Error::Usage(_))));
    assert_eq!(stream.request_header("x-echo").as_deref(), Some("1"));
}

#[test]
fn the_guest_reads_the_controlled_clock() {
    let (host, vm) = echo_vm("");
    host.set_time(1_800_000_000 * 1_000_000_000);
    host.advance(std::time::Duration::from_secs(5));
    let stream = get(&vm, "/", &[]);
    // Through proxy_get_current_time_nanoseconds and through WASI clock_time_get.
    assert_eq!(
        stream.request_header("x-now").as_deref(),
        Some("1800000005")
    );
    assert_eq!(
        stream.request_header("x-std-now").as_deref(),
        Some("1800000005")
    );
}

#[test]
fn randomness_follows_the_seed() {
    let random_with_seed = |seed: u64| {
        let host = Host::new();
        host.set_random_seed(seed);
        let vm = host.start_vm(&echo_wasm(), "").unwrap();
        get(&vm, "/", &[]).request_header("x-random").unwrap()
    };
    assert_eq!(random_with_seed(7), random_with_seed(7));
    assert_ne!(random_with_seed(7), random_with_seed(8));
    assert_eq!(random_with_seed(7).len(), 16);
}
