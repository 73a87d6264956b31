//! The built filter in the harness: bytes no client or model server should send. Nothing may
//! trap the VM (a trap would fail every request on that worker); unreadable input degrades
//! to an estimate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use gate::{
    completion_body, config, send, Gate, Request, Response, ACME, CHAT, CHAT_PROMPT_ESTIMATE,
};
use serde_json::{json, Value};

/// After the garbage, the worker still serves and meters a normal request.
fn assert_still_serving(gate: &Gate) {
    assert_eq!(gate.vm(0).failure(), None);
    let before = gate.billing().len();
    let ok = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 5),
        &Response::usage(2, 3),
    )
    .unwrap();
    assert!(ok.admitted());
    let billing = gate.billing();
    assert_eq!(billing.len(), before + 1);
    assert_eq!(billing[before]["input_tokens"], 2);
    assert_eq!(billing[before]["output_tokens"], 3);
}

#[test]
fn garbage_request_bodies_are_refused_and_an_array_is_estimated_from_its_size() {
    let gate = Gate::default_one();
    let mut nested = String::from("{\"messages\":[{\"content\":");
    nested.push_str(&"[".repeat(20_000));
    // Bodies the filter cannot read as JSON: refused before the model server sees them
    // (metering::BadBody), never an estimate that the stream could run past.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid UTF-8",
            b"\xff\xfe\x00{\"messages\":[\xc3\x28]}".to_vec(),
        ),
        (
            "truncated JSON",
            br#"{"model":"m","messages":[{"role":"user","content":"hi"#.to_vec(),
        ),
        (
            "a float too large",
            br#"{"model":"m","messages":[],"max_tokens":1e400}"#.to_vec(),
        ),
        ("deep nesting", nested.into_bytes()),
        ("nothing but spaces", b"     \n\t ".to_vec()),
        ("a NUL", b"\0".to_vec()),
    ];
    for (what, body) in &cases {
        let request = Request::new("POST", CHAT).bearer(ACME.key()).body(body);
        let exchange = send(
            gate.vm(0),
            &request,
            &Response::json(200, r#"{"choices":[]}"#),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let reply = exchange.expect_reply();
        assert_eq!(
            gate::assert_openai_error(&reply, 400, "invalid_request_error"),
            "invalid_json",
            "{what}"
        );
        assert!(
            exchange.stream.forwarded_request_body().is_empty(),
            "{what}"
        );
    }
    assert!(gate.billing().is_empty());
    assert_eq!(gate.bucket("acme").tokens_micro, 0);

    // JSON that is not an object goes on (the server refuses it); billed its admission
    // estimate if it is served anyway (a quarter token per byte, rounded up; no output seen).
    let array = br#"[{"model":"m","max_tokens":5}]"#;
    let request = Request::new("POST", CHAT).bearer(ACME.key()).body(array);
    let exchange = send(
        gate.vm(0),
        &request,
        &Response::json(200, r#"{"choices":[]}"#),
    )
    .unwrap();
    assert!(exchange.admitted());
    assert_eq!(exchange.stream.forwarded_request_body(), array);
    let billing = gate.billing();
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0]["usage_source"], "estimated");
    assert_eq!(billing[0]["input_tokens"], array.len().div_ceil(4) as u64);
    assert_eq!(billing[0]["output_tokens"], 0);
    assert_still_serving(&gate);
}

#[test]
fn absurd_numbers_in_a_request_are_refused_or_defaulted_without_overflow() {
    let gate = Gate::default_one();
    let saturating = json!({"messages": [], "max_tokens": u64::MAX, "n": u64::MAX}).to_string();
    let exchange = send(
        gate.vm(0),
        &Request::post(CHAT, ACME.key(), &saturating),
        &Response::usage(1, 1),
    )
    .unwrap();
    assert_eq!(exchange.error_code(), "request_too_large");

    // One past u64 reads as the largest count (a float, as Python reads it): too large.
    let past_u64 = r#"{"messages":[],"max_tokens":18446744073709551616}"#;
    let exchange = send(
        gate.vm(0),
        &Request::post(CHAT, ACME.key(), past_u64),
        &Response::usage(1, 1),
    )
    .unwrap();
    assert_eq!(exchange.error_code(), "request_too_large");

    // Counts no server would take are absent, so the default output reservation applies.
    let past_u64 = r#"{"messages":[],"max_tokens":-1,"n":-3,"best_of":"x"}"#;
    let exchange = send(
        gate.vm(0),
        &Request::post(CHAT, ACME.key(), past_u64),
        &Response::json(200, "{}"),
    )
    .unwrap();
    assert!(exchange.admitted());
    let record = &gate.billing()[0];
    assert_eq!(record["usage_source"], "estimated");
    // The body as written, without its numbers: `{"messages":[],"best_of":"x"}`.
    assert_eq!(record["input_tokens"], 8);
    assert_still_serving(&gate);
}

#[test]
fn a_body_over_the_bound_is_refused_with_413() {
    let mut cfg = config(&[ACME]);
    cfg["metering"] = json!({"max_request_body_bytes": 1024});
    let gate = Gate::start(&cfg, 1);
    let big = vec![b'a'; 700];
    let request = Request::new("POST", CHAT)
        .bearer(ACME.key())
        .chunks(&[&big, &big]);
    let exchange = send(gate.vm(0), &request, &Response::usage(1, 1)).unwrap();
    let reply = exchange.expect_reply();
    assert_eq!(
        gate::assert_openai_error(&reply, 413, "invalid_request_error"),
        "request_too_large"
    );
    assert!(exchange.stream.forwarded_request_body().is_empty());
    assert_eq!(gate.audits()[0]["status_code"], 413);
    assert_eq!(gate.bucket("acme").requests_micro, 0);
    assert_still_serving(&gate);
}

#[test]
fn a_body_in_one_byte_chunks_is_estimated_as_a_whole() {
    let gate = Gate::default_one();
    let body = gate::chat_body(Some("gpt-test"), 7);
    let chunks: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
    let request = Request::new("POST", CHAT)
        .bearer(ACME.key())
        .chunks(&chunks);
    let exchange = send(gate.vm(0), &request, &Response::json(200, "{}")).unwrap();
    assert!(exchange.admitted());
    assert_eq!(exchange.stream.forwarded_request_body(), body.as_bytes());
    assert_eq!(
        exchange
            .stream
            .response_header("x-ratelimit-remaining-tokens")
            .as_deref(),
        Some((1_000_000 - CHAT_PROMPT_ESTIMATE - 7).to_string().as_str())
    );
}

#[test]
fn garbage_response_bodies_degrade_to_estimates() {
    let gate = Gate::default_one();
    let mut deep = String::from("{\"choices\":");
    deep.push_str(&"[".repeat(50_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", br#"{"usage":{"prompt_tokens":1"#.to_vec()),
        (
            "negative usage",
            br#"{"usage":{"prompt_tokens":-5,"completion_tokens":1}}"#.to_vec(),
        ),
        (
            "a float usage",
            br#"{"usage":{"prompt_tokens":1e30,"completion_tokens":1}}"#.to_vec(),
        ),
        (
            "usage of the wrong type",
            br#"{"usage":"lots","choices":"many"}"#.to_vec(),
        ),
        ("an array", b"[1,2,3]".to_vec()),
        (
            "invalid UTF-8",
            b"{\"usage\":{\"prompt_tokens\":\xff}}\xc3".to_vec(),
        ),
        ("deep nesting", deep.into_bytes()),
        ("empty", Vec::new()),
    ];
    for (what, body) in &bodies {
        let response = Response::new(200, "application/json", &[body]);
        send(gate.vm(0), &Request::chat(ACME.key(), 5), &response)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let billing = gate.billing();
    assert_eq!(billing.len(), bodies.len());
    for ((what, _), record) in bodies.iter().zip(&billing) {
        assert_eq!(record["usage_source"], "estimated", "{what}: {record}");
        assert_eq!(record["input_tokens"], CHAT_PROMPT_ESTIMATE, "{what}");
    }
    assert_eq!(
        gate.metric("inference_gate.usage.estimated"),
        bodies.len() as u64
    );
    assert_still_serving(&gate);
}

#[test]
fn garbage_streams_degrade_to_estimates() {
    let gate = Gate::default_one();
    let streams: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "broken events",
            vec![
                b"data: {\"usage\": nope\n\n\xff\xfe\r\r\n".to_vec(),
                b"data:".to_vec(),
            ],
        ),
        (
            "only line ends",
            vec![b"\r\r\r\n\n\r".to_vec(), b"\n\n".to_vec()],
        ),
        ("no field names", vec![b":::\n: :\ndata\ndata\n\n".to_vec()]),
        (
            "usage of the wrong type",
            vec![
                b"data: {\"usage\":{\"prompt_tokens\":\"9\"}}\n\ndata: {\"usage\":7}\n\n".to_vec(),
            ],
        ),
        ("binary", vec![(0..=255u8).cycle().take(4096).collect()]),
    ];
    for (what, chunks) in &streams {
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        send(
            gate.vm(0),
            &Request::chat(ACME.key(), 5),
            &Response::sse(&chunks),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let billing = gate.billing();
    assert_eq!(billing.len(), streams.len());
    for ((what, _), record) in streams.iter().zip(&billing) {
        assert_eq!(record["usage_source"], "estimated", "{what}: {record}");
        // Never more output than the request allowed.
        assert!(
            record["output_tokens"].as_u64().unwrap() <= 5,
            "{what}: {record}"
        );
    }
    assert_still_serving(&gate);
}

#[test]
fn an_oversized_stream_event_is_skipped_and_the_usage_after_it_is_read() {
    let gate = Gate::default_one();
    let mut huge = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 300 * 1024));
    huge.extend_from_slice(b"\"}}]}\n\n");
    let usage = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 70_000}})
    );
    let usage = usage.as_bytes();
    let chunks: Vec<&[u8]> = huge.chunks(64 * 1024).chain([usage]).collect();
    send(
        gate.vm(0),
        &Request::chat(ACME.key(), 100_000),
        &Response::sse(&chunks),
    )
    .unwrap();
    let record = &gate.billing()[0];
    assert_eq!(record["usage_source"], "reported");
    assert_eq!(record["input_tokens"], 4);
    assert_eq!(record["output_tokens"], 70_000);
    assert_still_serving(&gate);
}

#[test]
fn huge_reported_usage_saturates_instead_of_overflowing() {
    let gate = Gate::default_one();
    let body =
        json!({"usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX}}).to_string();
    send(
        gate.vm(0),
        &Request::chat(ACME.key(), 5),
        &Response::json(200, &body),
    )
    .unwrap();
    // Capped at 2^53, the most a record carries exactly, so the collector takes it.
    let record = &gate.billing()[0];
    assert_eq!(record["input_tokens"], 1u64 << 53);
    assert_eq!(record["output_tokens"], 1u64 << 53);
    assert_eq!(gate.vm(0).failure(), None);
    // The tenant is now in debt (at most ten minutes' worth); refused, not crashed.
    let next = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 5),
        &Response::usage(1, 1),
    )
    .unwrap();
    assert_eq!(next.error_code(), "token_budget_exceeded");
}

#[test]
fn odd_response_headers_and_long_values_do_no_harm() {
    let gate = Gate::default_one();
    let long_id = "é".repeat(300);
    let long_path = format!("/v1/{}", "p".repeat(5000));
    let mut response = Response::json(200, &completion_body(None, 3, 3));
    response.headers[0].1 = "two hundred".into();
    response = response.header("content-type", "application/json; charset=\u{7f}");
    let requests = [
        Request::post(&long_path, ACME.key(), "{}").header("x-request-id", &long_id),
        Request::post(
            CHAT,
            ACME.key(),
            &gate::chat_body(Some(&"m".repeat(400)), 5),
        ),
    ];
    for request in &requests {
        send(gate.vm(0), request, &response).unwrap();
    }

    let records = gate.queued();
    assert_eq!(records.len(), 4, "{records:?}");
    let id = records[0]["request_id"].as_str().unwrap();
    assert!(
        id.len() <= 256 && long_id.starts_with(id) && !id.is_empty(),
        "{id}"
    );
    let audits = gate.audits();
    let path = audits[0]["path"].as_str().unwrap();
    assert!(path.len() <= 2048 && long_path.starts_with(path), "{path}");
    let model = audits[1]["resource"].as_str().unwrap();
    assert!(
        model.len() <= 256 && model.bytes().all(|b| b == b'm'),
        "{model}"
    );
    assert_eq!(gate.billing()[1]["model"].as_str().unwrap(), model);
    // A status the filter cannot read is recorded as an error, not a success.
    assert_eq!(audits[0]["result"], "error");
    assert_still_serving(&gate);
}

/// serde reads a struct from a JSON array by position; usage that is not an object must
/// not be taken as reported figures (`[1]` would be "1 input token, no output").
#[test]
fn usage_that_is_not_an_object_is_not_believed() {
    let gate = Gate::default_one();
    let json_body = Response::json(200, r#"{"choices":[],"usage":[1,0]}"#);
    let stream = Response::sse(&[b"data: {\"choices\":[],\"usage\":[1]}\n\ndata: [DONE]\n\n"]);
    for response in [json_body, stream] {
        send(gate.vm(0), &Request::chat(ACME.key(), 500), &response).unwrap();
    }
    let wrong: Vec<String> = gate
        .billing()
        .iter()
        .filter(|r| r["usage_source"] != "estimated")
        .map(Value::to_string)
        .collect();
    assert!(
        wrong.is_empty(),
        "an array was read as reported usage:\n{}",
        wrong.join("\n")
    );
}
