//! The built filter in the harness: response chunks larger than the slice the filter reads
//! them in (64 KiB). From a fast upstream Envoy hands over several MB at once; the filter
//! meters them a slice at a time, so events and JSON cut across slices must read as whole.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use gate::{send, Gate, Request, Response, ACME, CHAT};
use serde_json::json;

/// A streamed chat request that asked for usage, so the filter rewrites nothing.
fn streamed_request() -> Request {
    let body = json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Count to six hundred."}],
        "max_tokens": 50,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    Request::post(CHAT, ACME.key(), &body.to_string())
}

#[test]
fn a_stream_delivered_in_one_chunk_of_several_slices_is_billed_its_usage() {
    let gate = Gate::default_one();
    let mut stream = Vec::new();
    // Over four slices, events straddling their boundaries; long events, so that the callback
    // stays within the harness's instruction budget.
    let padding = "x".repeat(400);
    for i in 0..600 {
        let event = json!({
            "id": "c1", "object": "chat.completion.chunk", "model": "gpt-test",
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} {padding}")},
                         "finish_reason": null}],
        });
        stream.extend_from_slice(format!("data: {event}\n\n").as_bytes());
    }
    let usage = json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [],
        "usage": {"prompt_tokens": 30, "completion_tokens": 600, "total_tokens": 630},
    });
    stream.extend_from_slice(format!("data: {usage}\n\ndata: [DONE]\n\n").as_bytes());
    assert!(stream.len() > 4 * 64 * 1024);

    let exchange = send(gate.vm(0), &streamed_request(), &Response::sse(&[&stream])).unwrap();
    assert_eq!(exchange.stream.forwarded_response_body(), stream);
    let billing = gate.billing();
    assert_eq!(billing.len(), 1, "{billing:?}");
    assert_eq!(billing[0]["input_tokens"], 30);
    assert_eq!(billing[0]["output_tokens"], 600);
    assert_eq!(billing[0]["usage_source"], "reported");
}

#[test]
fn a_json_answer_larger_than_a_slice_is_billed_its_usage() {
    let gate = Gate::default_one();
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x".repeat(200_000)},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 50_000, "total_tokens": 50_012},
    })
    .to_string();

    let request = Request::chat(ACME.key(), 60_000);
    let exchange = send(gate.vm(0), &request, &Response::json(200, &body)).unwrap();
    assert_eq!(exchange.stream.forwarded_response_body(), body.as_bytes());
    let billing = gate.billing();
    assert_eq!(billing.len(), 1, "{billing:?}");
    assert_eq!(billing[0]["input_tokens"], 12);
    assert_eq!(billing[0]["output_tokens"], 50_000);
    assert_eq!(billing[0]["usage_source"], "reported");
}
