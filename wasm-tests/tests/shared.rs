//! What Envoy workers share: shared data with compare-and-swap, shared queues, metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{echo_vm, echo_wasm, get};
use wasm_tests::Host;

fn two_workers(config: &str) -> (Host, wasm_tests::Vm, wasm_tests::Vm) {
    let host = Host::new();
    let first = host.start_vm(&echo_wasm(), config).unwrap();
    let second = host.start_vm(&echo_wasm(), config).unwrap();
    (host, first, second)
}

#[test]
fn a_counter_in_shared_data_counts_across_workers() {
    let (host, first, second) = two_workers("");
    let mut seen = Vec::new();
    for round in 0..10 {
        let worker = if round % 2 == 0 { &first } else { &second };
        let stream = get(worker, "/count", &[]);
        seen.push(stream.request_header("x-count").unwrap());
    }
    let expected: Vec<String> = (1..=10).map(|n| n.to_string()).collect();
    assert_eq!(seen, expected);

    let (value, cas) = host.shared_data("hits").unwrap();
    assert_eq!(value, b"10");
    assert_ne!(cas, 0);
}

#[test]
fn the_host_can_write_shared_data_like_another_worker() {
    let (host, vm) = echo_vm("");
    host.set_shared_data("hits", b"41");
    let stream = get(&vm, "/count", &[]);
    assert_eq!(stream.request_header("x-count").as_deref(), Some("42"));
}

#[test]
fn a_stale_cas_is_refused() {
    let (host, vm) = echo_vm("");
    get(&vm, "/stale", &[]);
    assert_eq!(host.logs_containing("stale cas rejected").len(), 1);
    assert_eq!(host.shared_data("stale").unwrap().0, b"first");
    assert!(host.shared_data("never-set").is_none());
}

#[test]
fn queue_items_go_to_the_worker_that_registered_last() {
    let (host, first, second) = two_workers("");
    get(&first, "/", &[("x-enqueue", "a")]);
    get(&first, "/", &[("x-enqueue", "b")]);
    assert_eq!(
        host.queue_items("echo-queue"),
        [b"a".to_vec(), b"b".to_vec()]
    );

    assert_eq!(first.queue_ready_pending(), 0);
    assert_eq!(second.queue_ready_pending(), 2);
    assert_eq!(second.deliver_queue_ready().unwrap(), 2);

    let dequeued: Vec<String> = second
        .logs()
        .into_iter()
        .map(|entry| entry.message)
        .filter(|message| message.starts_with("dequeued") || message == "queue drained")
        .collect();
    // The first notification drains both items; the second finds the queue empty.
    assert_eq!(
        dequeued,
        ["dequeued a", "dequeued b", "queue drained", "queue drained"]
    );
    assert!(host.queue_items("echo-queue").is_empty());
    assert_eq!(host.dequeue("echo-queue"), None);
}

#[test]
fn the_host_can_enqueue_and_dequeue_like_another_worker() {
    let (host, vm) = echo_vm("queue=records");
    assert!(host.queue_id("records").is_some());
    assert!(host.enqueue("missing", b"x").is_err());

    host.enqueue("records", b"from the host").unwrap();
    assert_eq!(vm.deliver_queue_ready().unwrap(), 1);
    assert_eq!(host.logs_containing("dequeued from the host").len(), 1);

    get(&vm, "/", &[("x-enqueue", "for the host")]);
    assert_eq!(
        host.dequeue("records").as_deref(),
        Some(&b"for the host"[..])
    );
}

#[test]
fn metrics_are_shared_by_name() {
    let (host, first, second) = two_workers("");
    get(&first, "/", &[]);
    get(&second, "/", &[]).done().unwrap();
    get(&second, "/", &[]);

    assert_eq!(host.metric("echo_requests"), Some(3));
    assert_eq!(host.metric("echo_active"), Some(2));
    assert_eq!(host.metric("no_such_metric"), None);
    assert_eq!(host.metric_names().len(), 3);
}
