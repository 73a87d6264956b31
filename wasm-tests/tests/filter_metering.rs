//! The built filter in the harness: usage read from JSON bodies and event streams as they
//! pass, and the billing record that follows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::collections::BTreeSet;

use gate::{
    begin, completion_body, config, send, Gate, Request, Response, ACME, CHAT,
    CHAT_PROMPT_ESTIMATE, COMPLETIONS,
};
use serde_json::{json, Value};
use wasm_tests::Action;

const NOON_NS: u64 = 1_717_243_200_250_000_000; // 2024-06-01T12:00:00.250Z

fn usage_of(record: &Value) -> (u64, u64) {
    (
        record["input_tokens"].as_u64().unwrap(),
        record["output_tokens"].as_u64().unwrap(),
    )
}

fn only_billing(gate: &Gate) -> Value {
    let billing = gate.billing();
    assert_eq!(billing.len(), 1, "{billing:?}");
    billing.into_iter().next().unwrap()
}

#[test]
fn a_json_response_is_billed_with_exactly_its_usage() {
    let gate = Gate::default_one();
    gate.host.set_time(NOON_NS);
    let request = Request::chat(ACME.key(), 50).header("x-request-id", "req-json-1");
    let body = json!({
        "id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-test-2024-05-13",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 3},
                  "completion_tokens_details": {"reasoning_tokens": 4}}
    })
    .to_string();
    // Split mid-token: the filter must join chunks before reading.
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    let response = Response::new(200, "application/json; charset=utf-8", &[a, b]);
    let exchange = send(gate.vm(0), &request, &response).unwrap();
    assert_eq!(exchange.stream.forwarded_response_body(), body.as_bytes());

    let record = only_billing(&gate);
    let keys: BTreeSet<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "kind",
        "id",
        "tenant_id",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "timestamp",
        "model",
        "request_id",
        "api",
        "usage_source",
    ]
    .into();
    assert_eq!(keys, expected);
    assert_eq!(record["tenant_id"], "acme");
    assert_eq!(usage_of(&record), (19, 10));
    assert_eq!(record["cached_input_tokens"], 3);
    assert_eq!(record["reasoning_tokens"], 4);
    // The model the request asked for, not the snapshot the response names.
    assert_eq!(record["model"], "gpt-test");
    assert_eq!(record["request_id"], "req-json-1");
    assert_eq!(record["api"], "openai_chat");
    assert_eq!(record["usage_source"], "reported");
    assert_eq!(record["timestamp"], "2024-06-01T12:00:00.250Z");
    let id = record["id"].as_str().unwrap();
    assert!(
        id.len() >= 16 && id.bytes().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );

    let audits = gate.audits();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0]["result"], "success");
    assert_eq!(audits[0]["status_code"], 200);
    assert_eq!(audits[0]["resource"], "gpt-test");
    assert_eq!(audits[0]["request_id"], "req-json-1");
    assert_eq!(gate.metric("inference_gate.records.queued"), 2);
    assert_eq!(gate.metric("inference_gate.buffer.records"), 2);
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 0);
}

#[test]
fn the_model_comes_from_the_response_when_the_request_names_none() {
    let gate = Gate::default_one();
    let request = Request::post(
        COMPLETIONS,
        ACME.key(),
        r#"{"prompt":"Say hi","max_tokens":5}"#,
    );
    let response = Response::json(
        200,
        r#"{"id":"cmpl-1","object":"text_completion","model":"served-model",
            "choices":[{"text":" hi","index":0,"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
    );
    send(gate.vm(0), &request, &response).unwrap();
    let record = only_billing(&gate);
    assert_eq!(usage_of(&record), (3, 2));
    assert_eq!(record["model"], "served-model");
    assert_eq!(record["api"], "openai_completions");
    assert_eq!(record["usage_source"], "reported");
    assert!(record.get("cached_input_tokens").is_none());

    // Same for chat.
    let request = Request::post(CHAT, ACME.key(), &gate::chat_body(None, 5));
    let response = Response::json(200, &completion_body(Some("chat-served"), 7, 1));
    send(gate.vm(0), &request, &response).unwrap();
    let billing = gate.billing();
    assert_eq!(billing[1]["model"], "chat-served");
    assert_eq!(billing[1]["api"], "openai_chat");
    assert_eq!(usage_of(&billing[1]), (7, 1));
}

#[test]
fn embeddings_are_billed_input_only() {
    let gate = Gate::default_one();
    let request = Request::post(
        "/v1/embeddings",
        ACME.key(),
        r#"{"model":"embed-1","input":["abcd","efgh"]}"#,
    );
    let response = Response::json(
        200,
        r#"{"object":"list","data":[],"model":"embed-1",
            "usage":{"prompt_tokens":8,"total_tokens":8}}"#,
    );
    send(gate.vm(0), &request, &response).unwrap();
    let record = only_billing(&gate);
    assert_eq!(usage_of(&record), (8, 0));
    assert_eq!(record["api"], "openai_embeddings");
    assert_eq!(record["model"], "embed-1");
}

/// One chunk of an OpenAI chat stream.
fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "c1", "object": "chat.completion.chunk", "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": null,
    })
}

/// A chat stream as OpenAI sends it with `stream_options.include_usage`, with CRLF line
/// endings and a keep-alive comment.
fn stream_body(usage: bool) -> Vec<u8> {
    let mut events = vec![
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Hel"}), None),
        chunk(json!({"content": "lo"}), Some("stop")),
    ];
    if usage {
        events.push(json!({
            "id": "c1", "object": "chat.completion.chunk", "model": "gpt-test", "choices": [],
            "usage": {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24,
                      "prompt_tokens_details": {"cached_tokens": 16}},
        }));
    }
    let mut body = b": keep-alive\r\n\r\n".to_vec();
    for event in events {
        body.extend_from_slice(format!("data: {event}\r\n\r\n").as_bytes());
    }
    body.extend_from_slice(b"data: [DONE]\r\n\r\n");
    body
}

/// Cuts `body` at each position, in order.
fn cut<'a>(body: &'a [u8], positions: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &p in positions {
        chunks.push(&body[start..p]);
        start = p;
    }
    chunks.push(&body[start..]);
    chunks
}

fn position(body: &[u8], needle: &str, nth: usize) -> usize {
    let needle = needle.as_bytes();
    body.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
        .0
}

/// Delivers a stream chunk by chunk, checking that each one passes at once.
fn stream_through(gate: &Gate, request: &Request, chunks: &[&[u8]]) {
    let exchange = begin(gate.vm(0), request).unwrap();
    assert!(exchange.admitted());
    let s = &exchange.stream;
    s.response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )
    .unwrap();
    let mut sent = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let action = s.response_body(chunk, i + 1 == chunks.len()).unwrap();
        assert_eq!(action, Action::Continue, "a stream is never held back");
        sent += chunk.len();
        assert_eq!(
            s.forwarded_response_body().len(),
            sent,
            "chunk {i} passed at once"
        );
    }
    s.finish().unwrap();
}

#[test]
fn a_stream_split_at_awkward_places_is_billed_with_its_final_usage() {
    let gate = Gate::default_one();
    let body = stream_body(true);
    // The fourth data line (after three content chunks) carries the usage.
    let usage_event = position(&body, "data: ", 3);
    let usage_end = usage_event + position(&body[usage_event..], "\r\n", 0);
    let usage_line = String::from_utf8_lossy(&body[usage_event..usage_end]);
    assert!(usage_line.contains("\"prompt_tokens\":21"), "{usage_line}");
    let mut cuts = [
        // Between the \r and the \n of the comment line.
        position(&body, "\r\n", 0) + 1,
        // Inside a data: field name.
        position(&body, "data: ", 1) + 2,
        // Between \r and \n of a data line.
        position(&body, "\r\n", 3) + 1,
        // Inside the usage event's field name, and again inside its JSON.
        usage_event + 3,
        usage_event + position(&body[usage_event..], "prompt_tok", 0) + 5,
        // Between \r and \n, and between the two CRLFs that end the usage event.
        usage_end + 1,
        usage_end + 2,
    ];
    cuts.sort_unstable();
    let chunks = cut(&body, &cuts);
    assert!(chunks.iter().all(|c| !c.is_empty()));
    assert!(chunks.iter().any(|c| c.starts_with(b"\n")));
    stream_through(&gate, &Request::chat(ACME.key(), 50), &chunks);

    let record = only_billing(&gate);
    assert_eq!(usage_of(&record), (21, 3));
    assert_eq!(record["cached_input_tokens"], 16);
    assert_eq!(record["usage_source"], "reported");
    assert_eq!(record["model"], "gpt-test");
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 0);
}

#[test]
fn a_stream_cut_anywhere_in_two_still_yields_the_exact_usage() {
    let gate = Gate::default_one();
    let body = stream_body(true);
    let positions: Vec<usize> = (1..body.len()).step_by(17).collect();
    for &p in &positions {
        stream_through(&gate, &Request::chat(ACME.key(), 50), &cut(&body, &[p]));
    }
    let billing = gate.billing();
    assert_eq!(billing.len(), positions.len());
    for (record, p) in billing.iter().zip(&positions) {
        assert_eq!(usage_of(record), (21, 3), "cut at {p}");
        assert_eq!(record["usage_source"], "reported", "cut at {p}");
    }
}

#[test]
fn a_stream_without_usage_is_billed_an_estimate() {
    let gate = Gate::default_one();
    let body = stream_body(false);
    let chunks = cut(&body, &[5, 40, 41, 200]);
    stream_through(&gate, &Request::chat(ACME.key(), 50), &chunks);

    let record = only_billing(&gate);
    assert_eq!(record["usage_source"], "estimated");
    // The prompt as estimated at admission; the output from the text seen ("Hel", "lo": two
    // pieces of text, five bytes).
    assert_eq!(usage_of(&record), (CHAT_PROMPT_ESTIMATE, 2));
    assert_eq!(record["model"], "gpt-test");
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 1);
    // Settlement replaced the reservation (8 + 50) by the estimate.
    assert_eq!(
        gate.bucket("acme").tokens_micro,
        (CHAT_PROMPT_ESTIMATE + 2) * 1_000_000
    );
}

#[test]
fn a_server_error_that_reports_usage_is_still_billed() {
    let gate = Gate::default_one();
    let response = Response::json(500, &completion_body(Some("gpt-test"), 12, 7));
    send(gate.vm(0), &Request::chat(ACME.key(), 50), &response).unwrap();
    let record = only_billing(&gate);
    assert_eq!(usage_of(&record), (12, 7));
    assert_eq!(record["usage_source"], "reported");
    let audits = gate.audits();
    assert_eq!(audits[0]["result"], "error");
    assert_eq!(audits[0]["status_code"], 500);
    assert_eq!(gate.metric("inference_gate.requests.error"), 1);
}

#[test]
fn a_server_error_without_usage_bills_nothing_and_refunds_the_reservation() {
    let gate = Gate::default_one();
    let response = Response::json(503, r#"{"error":{"message":"overloaded"}}"#);
    send(gate.vm(0), &Request::chat(ACME.key(), 50), &response).unwrap();
    assert!(gate.billing().is_empty());
    assert_eq!(gate.audits()[0]["status_code"], 503);
    assert_eq!(gate.bucket("acme").tokens_micro, 0);
    assert_eq!(gate.bucket("acme").requests_micro, 1_000_000);
}

#[test]
fn a_request_outside_the_inference_apis_gets_an_audit_entry_only() {
    let gate = Gate::default_one();
    let request = Request::get("/v1/models").bearer(ACME.key());
    let response = Response::json(
        200,
        r#"{"object":"list","data":[{"id":"gpt-test","object":"model"}]}"#,
    );
    let exchange = send(gate.vm(0), &request, &response).unwrap();
    assert!(exchange.admitted());
    assert_eq!(exchange.headers_action, Action::Continue);
    // Still counted against the request rate and told so.
    assert_eq!(
        exchange
            .stream
            .response_header("x-ratelimit-remaining-requests")
            .as_deref(),
        Some("999")
    );
    assert!(gate.billing().is_empty(), "{:?}", gate.billing());
    let audits = gate.audits();
    assert_eq!(audits.len(), 1);
    let audit = &audits[0];
    assert_eq!(audit["tenant_id"], "acme");
    assert_eq!(audit["method"], "GET");
    assert_eq!(audit["path"], "/v1/models");
    assert_eq!(audit["result"], "success");
    assert_eq!(audit["resource"], Value::Null);
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 0);
}

#[test]
fn a_body_over_the_bound_is_billed_from_the_usage_at_its_end() {
    let mut cfg = config(&[ACME]);
    cfg["metering"] = json!({"max_response_body_bytes": 1024});
    let gate = Gate::start(&cfg, 1);

    // 4000 characters of generated text, then usage: the body outgrows the 1 KiB bound, and
    // the usage at its end is still read.
    let long =
        completion_body(Some("gpt-test"), 9, 1000).replace("Hello there", &"word ".repeat(800));
    assert!(long.len() > 4000);
    let chunks: Vec<&[u8]> = long.as_bytes().chunks(700).collect();
    let response = Response::new(200, "application/json", &chunks);
    send(gate.vm(0), &Request::chat(ACME.key(), 2000), &response).unwrap();

    // The same without usage: billed an estimate from the size of what was seen.
    let no_usage = long.replace(r#""usage""#, r#""other""#);
    let chunks: Vec<&[u8]> = no_usage.as_bytes().chunks(700).collect();
    let response = Response::new(200, "application/json", &chunks);
    send(gate.vm(0), &Request::chat(ACME.key(), 2000), &response).unwrap();

    let billing = gate.billing();
    assert_eq!(billing.len(), 2);
    assert_eq!(billing[0]["usage_source"], "reported");
    assert_eq!(billing[0]["input_tokens"], 9);
    assert_eq!(billing[0]["output_tokens"], 1000);
    assert_eq!(billing[1]["usage_source"], "estimated");
    assert_eq!(billing[1]["input_tokens"], CHAT_PROMPT_ESTIMATE);
    assert_eq!(
        billing[1]["output_tokens"].as_u64().unwrap(),
        (no_usage.len() as u64).div_ceil(4)
    );
    let log = gate.log_text();
    assert!(log.contains("its end holds no usage"), "{log}");
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 1);
}

#[test]
fn a_compressed_body_is_billed_its_whole_reservation() {
    let gate = Gate::start(&config(&[ACME]), 1);
    // Compressed, although the filter asked for identity: nothing can be read, so the
    // output the request was allowed is billed.
    let gzip = Response::new(
        200,
        "application/json",
        &[b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"],
    )
    .header("content-encoding", "gzip");
    send(gate.vm(0), &Request::chat(ACME.key(), 2000), &gzip).unwrap();

    let log = gate.log_text();
    assert!(
        log.contains("usage not readable (the response is compressed)"),
        "{log}"
    );
    let billing = gate.billing();
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0]["usage_source"], "estimated");
    assert_eq!(billing[0]["input_tokens"], CHAT_PROMPT_ESTIMATE);
    assert_eq!(billing[0]["output_tokens"], 2000);
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 1);
}

#[test]
fn a_client_that_hangs_up_mid_stream_is_billed_what_was_seen() {
    let gate = Gate::default_one();
    let body = stream_body(true);
    // The client leaves after the first two content events, before the usage event.
    let cut_at = position(&body, "data: ", 3);
    let exchange = begin(gate.vm(0), &Request::chat(ACME.key(), 50)).unwrap();
    let s = &exchange.stream;
    s.response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )
    .unwrap();
    s.response_body(&body[..cut_at], false).unwrap();
    s.finish().unwrap();

    let record = only_billing(&gate);
    assert_eq!(record["usage_source"], "estimated");
    assert_eq!(usage_of(&record), (CHAT_PROMPT_ESTIMATE, 2));
    assert_eq!(gate.audits()[0]["status_code"], 200);
}

#[test]
fn a_client_that_leaves_before_any_response_is_billed_its_prompt() {
    let gate = Gate::default_one();
    let exchange = begin(gate.vm(0), &Request::chat(ACME.key(), 50)).unwrap();
    assert!(exchange.admitted());
    assert_eq!(
        gate.bucket("acme").tokens_micro,
        (CHAT_PROMPT_ESTIMATE + 50) * 1_000_000
    );
    exchange.stream.finish().unwrap();

    // The request reached the model server, which read the prompt: that much is billed,
    // as an estimate; no output is.
    let billing = gate.billing();
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0]["usage_source"], "estimated");
    assert_eq!(billing[0]["input_tokens"], CHAT_PROMPT_ESTIMATE);
    assert_eq!(billing[0]["output_tokens"], 0);
    let audit = &gate.audits()[0];
    assert_eq!(audit["status_code"], 499);
    assert_eq!(audit["result"], "error");
    // The request counts against the rate; the unused output reservation is returned.
    let bucket = gate.bucket("acme");
    assert_eq!(
        (bucket.requests_micro, bucket.tokens_micro),
        (1_000_000, CHAT_PROMPT_ESTIMATE * 1_000_000)
    );
}

/// Bodies Python servers accept and serde_json (like RFC 8259) does not.
fn unreadable_bodies() -> Vec<(&'static str, String)> {
    let deep = format!(
        r#"{{"model":"gpt-test","stream":true,"messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    vec![
        (
            "NaN",
            r#"{"model":"gpt-test","stream":true,"temperature":NaN,"messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        ),
        (
            "a lone surrogate key",
            r#"{"model":"gpt-test","stream":true,"\ud800":1,"messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        ),
        (
            "1e999",
            r#"{"model":"gpt-test","stream":true,"top_p":1e999,"messages":[{"role":"user","content":"hi"}]}"#.to_string(),
        ),
        ("nesting deeper than 128", deep),
    ]
}

#[test]
fn a_body_the_filter_cannot_read_is_refused_before_the_model_server_sees_it() {
    let gate = Gate::default_one();
    for (what, body) in unreadable_bodies() {
        let request = Request::post(CHAT, ACME.key(), &body).header("x-request-id", what);
        let exchange = send(gate.vm(0), &request, &Response::usage(1, 1)).unwrap();
        let reply = exchange.expect_reply();
        assert_eq!(
            gate::assert_openai_error(&reply, 400, "invalid_request_error"),
            "invalid_json",
            "{what}"
        );
        // Said in words (naming what it does not read), without quoting the body.
        let message = gate::reply_json(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains("not valid JSON"), "{what}: {message}");
        for fragment in [
            "ud800",
            "1e999",
            "[[",
            "gpt-test",
            "temperature",
            "top_p",
            "\"content\"",
        ] {
            assert!(!message.contains(fragment), "{what}: {message}");
        }
        // Nothing went upstream, not even with include_usage added.
        assert!(
            exchange.stream.forwarded_request_body().is_empty(),
            "{what}"
        );
        assert_eq!(exchange.stream.continued_request(), 0, "{what}");
    }
    assert!(gate.billing().is_empty(), "{:?}", gate.billing());
    let audits = gate.audits();
    assert_eq!(audits.len(), 4);
    assert!(audits.iter().all(|a| a["status_code"] == 400), "{audits:?}");
    // No request was reserved.
    assert_eq!(gate.bucket("acme").requests_micro, 0);

    // The same on every other inference shape; an empty body too.
    for path in [
        "/v1/messages",
        "/v1/responses",
        "/api/chat",
        "/completion",
        "/generate",
    ] {
        for body in [r#"{"max_tokens":NaN}"#, ""] {
            let exchange = send(
                gate.vm(0),
                &Request::post(path, ACME.key(), body),
                &Response::usage(1, 1),
            )
            .unwrap();
            assert_eq!(exchange.error_code(), "invalid_json", "{path} {body:?}");
        }
    }

    // A route of no known shape takes it: its format is the server's business.
    let (_, nan) = &unreadable_bodies()[0];
    let exchange = send(
        gate.vm(0),
        &Request::post("/v1/custom", ACME.key(), nan),
        &Response::json(200, "{}"),
    )
    .unwrap();
    assert!(exchange.admitted());
    assert_eq!(exchange.stream.forwarded_request_body(), nan.as_bytes());
}

/// What the filter reserved for a request, from the `x-ratelimit-remaining-tokens` it tells.
fn reserved(gate: &Gate, request: &Request, response: &Response) -> u64 {
    let budget = 1_000_000;
    let exchange = send(gate.vm(0), request, response).unwrap();
    assert!(exchange.admitted());
    let remaining: u64 = exchange
        .stream
        .response_header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    budget - remaining
}

#[test]
fn a_zero_output_cap_is_no_cap() {
    // A fresh gate per request, so that each reservation is read on a full bucket.
    let one = |path: &str, body: Value| {
        let gate = Gate::default_one();
        let request = Request::post(path, ACME.key(), &body.to_string());
        reserved(&gate, &request, &Response::json(500, "{}"))
    };
    let hi = json!([{"role": "user", "content": "hi"}]);
    // Servers read `max_completion_tokens or max_tokens`: a zero is not a cap.
    let r = one(
        CHAT,
        json!({"model": "gpt-test", "messages": hi, "max_completion_tokens": 0, "max_tokens": 5000}),
    );
    assert_eq!(r, CHAT_PROMPT_ESTIMATE + 5000);
    let r = one(
        CHAT,
        json!({"model": "gpt-test", "messages": hi, "max_completion_tokens": 0}),
    );
    assert_eq!(r, CHAT_PROMPT_ESTIMATE + 1024);
    // Ollama: `num_predict` 0 or negative (-1 no limit, -2 fill the context) is no cap.
    for n in [0, -1, -2] {
        let r = one(
            "/api/chat",
            json!({"model": "gpt-test", "messages": hi, "options": {"num_predict": n}}),
        );
        assert_eq!(r, CHAT_PROMPT_ESTIMATE + 1024, "num_predict {n}");
    }
    for (path, body) in [
        (
            "/v1/responses",
            json!({"input": "hi", "max_output_tokens": 0}),
        ),
        ("/v1/messages", json!({"messages": hi, "max_tokens": 0})),
    ] {
        assert!(one(path, body) > 1024, "{path}");
    }
}

#[test]
fn tool_definitions_count_against_the_token_budget() {
    // 100 KB of tool definitions beside a one-word message, on a 3000-token budget.
    let cfg = config(&[ACME.limits(1000, 3000)]);
    let gate = Gate::start(&cfg, 1);
    let tool = json!({"type": "function", "function": {"name": "lookup",
        "description": "Looks a record up. ".repeat(100),
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}});
    let tools: Vec<Value> = (0..50).map(|_| tool.clone()).collect();
    let body = json!({"model": "gpt-test", "max_tokens": 10, "tools": tools,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    assert!(body.len() > 100_000);
    let mut admitted = 0;
    for _ in 0..30 {
        let exchange = send(
            gate.vm(0),
            &Request::post(CHAT, ACME.key(), &body),
            &Response::usage(25_000, 10),
        )
        .unwrap();
        if exchange.admitted() {
            admitted += 1;
        } else {
            // More than the whole budget: it can never pass, and the client is told so.
            assert_eq!(exchange.error_code(), "request_too_large");
        }
    }
    assert_eq!(admitted, 0);

    // On a budget that fits one, the reservation covers the tools, not just "hi".
    let gate = Gate::default_one();
    let r = reserved(
        &gate,
        &Request::post(CHAT, ACME.key(), &body),
        &Response::json(500, "{}"),
    );
    assert!(
        r >= body.len() as u64 / 5 && r <= body.len() as u64 / 4 + 10,
        "{r}"
    );
}

#[test]
fn well_known_native_routes_are_metered() {
    let gate = Gate::default_one();
    // llama.cpp's own /completion: counts in its last object.
    let llama = json!({"content": " Paris.", "id_slot": 0, "index": 0, "model": "gpt-3.5-turbo",
        "prompt": "The capital of France is", "stop": true, "stop_type": "eos", "stopping_word": "",
        "timings": {"cache_n": 0, "predicted_n": 3, "prompt_n": 6}, "tokens": [],
        "tokens_cached": 8, "tokens_evaluated": 6, "tokens_predicted": 3, "truncated": false});
    send(
        gate.vm(0),
        &Request::post(
            "/completion",
            ACME.key(),
            r#"{"prompt":"The capital of France is","n_predict":16}"#,
        ),
        &Response::json(200, &llama.to_string()),
    )
    .unwrap();
    // SGLang's /generate.
    let sglang = json!({"text": " Paris.", "output_ids": [12095, 13],
        "meta_info": {"id": "a1", "finish_reason": {"type": "stop", "matched": 151645},
        "prompt_tokens": 6, "completion_tokens": 2, "cached_tokens": 0, "e2e_latency": 0.05}});
    send(
        gate.vm(0),
        &Request::post(
            "/generate",
            ACME.key(),
            r#"{"text":"The capital of France is","sampling_params":{"max_new_tokens":16}}"#,
        ),
        &Response::json(200, &sglang.to_string()),
    )
    .unwrap();
    // TGI's /generate_stream: the output is reported, the prompt's size only in newer
    // versions.
    let tgi = b"data:{\"index\":1,\"token\":{\"id\":12366,\"text\":\" Paris\",\"logprob\":-0.1,\"special\":false},\"generated_text\":null,\"details\":null}\n\ndata:{\"index\":2,\"token\":{\"id\":13,\"text\":\".\",\"logprob\":-0.2,\"special\":false},\"generated_text\":\" Paris.\",\"details\":{\"finish_reason\":\"eos_token\",\"generated_tokens\":2,\"seed\":null}}\n\n";
    send(
        gate.vm(0),
        &Request::post("/generate_stream", ACME.key(), r#"{"inputs":"The capital of France is","parameters":{"max_new_tokens":16,"details":true}}"#),
        &Response::sse(&[tgi]),
    )
    .unwrap();

    let billing = gate.billing();
    assert_eq!(billing.len(), 3, "{billing:?}");
    assert_eq!(billing[0]["api"], "llamacpp_completion");
    assert_eq!(
        (usage_of(&billing[0]), &billing[0]["usage_source"]),
        ((6, 3), &json!("reported"))
    );
    assert_eq!(billing[1]["api"], "generate");
    assert_eq!(
        (usage_of(&billing[1]), &billing[1]["usage_source"]),
        ((6, 2), &json!("reported"))
    );
    assert_eq!(billing[2]["api"], "generate");
    // The prompt estimated (`{"inputs":"The capital of France is"}`: 37 bytes), the output
    // as TGI reported it.
    assert_eq!(
        (usage_of(&billing[2]), &billing[2]["usage_source"]),
        ((10, 2), &json!("estimated"))
    );
}

#[test]
fn an_unknown_post_route_that_reports_nothing_is_billed_an_estimate() {
    let gate = Gate::default_one();
    // A server's own format on a route the gateway does not know: what it answered counts,
    // up to the default output reservation.
    let body = r#"{"inputs":"Tell me a story about a dragon."}"#;
    let answer = format!(r#"{{"story":"{}"}}"#, "Once upon a time ".repeat(20));
    let exchange = send(
        gate.vm(0),
        &Request::post("/v1/custom/generate", ACME.key(), body),
        &Response::json(200, &answer),
    )
    .unwrap();
    assert!(exchange.admitted());
    // And a stream of it, larger than the default reservation.
    let event = format!("data: {{\"token\":\"{}\"}}\n\n", "x".repeat(100));
    let stream = event.repeat(50);
    send(
        gate.vm(0),
        &Request::post("/v1/custom/stream", ACME.key(), body),
        &Response::sse(&[stream.as_bytes()]),
    )
    .unwrap();
    // Nothing sent, nothing to bill; a failure is not billed; a count is free.
    send(
        gate.vm(0),
        &Request::new("POST", "/v1/custom/cancel").bearer(ACME.key()),
        &Response::json(200, &answer),
    )
    .unwrap();
    send(
        gate.vm(0),
        &Request::post("/v1/custom/generate", ACME.key(), body),
        &Response::json(500, &answer),
    )
    .unwrap();
    send(
        gate.vm(0),
        &Request::post(
            "/v1/messages/count_tokens",
            ACME.key(),
            r#"{"model":"claude-x","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        &Response::json(200, r#"{"input_tokens":9}"#),
    )
    .unwrap();

    let billing = gate.billing();
    assert_eq!(billing.len(), 2, "{billing:?}");
    for record in &billing {
        assert_eq!(record["api"], "unknown");
        assert_eq!(record["usage_source"], "estimated");
        assert_eq!(record["input_tokens"], (body.len() as u64).div_ceil(4));
    }
    assert_eq!(
        billing[0]["output_tokens"],
        (answer.len() as u64).div_ceil(4)
    );
    assert_eq!(billing[1]["output_tokens"], 1024);
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 2);
}

/// A streamed chat request for `model` with the given `stream_options` (none if `null`).
fn streamed_chat(model: &str, stream_options: Value) -> String {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Count to three."}],
        "max_tokens": 50,
        "stream": true,
    });
    if !stream_options.is_null() {
        body["stream_options"] = stream_options;
    }
    body.to_string()
}

/// The request as the model server got it, and the stream as the client got it.
fn exchange(gate: &Gate, body: &str, chunks: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let request = Request::post(CHAT, ACME.key(), body);
    let exchange = send(gate.vm(0), &request, &Response::sse(chunks)).unwrap();
    (
        exchange.stream.forwarded_request_body(),
        exchange.stream.forwarded_response_body(),
    )
}

#[test]
fn a_client_that_asked_for_continuous_usage_gets_the_stream_its_server_sends() {
    let gate = Gate::default_one();
    let body = streamed_chat(
        "meta-llama/Llama-3.1-8B-Instruct",
        json!({"continuous_usage_stats": true}),
    );
    // vLLM sends continuous usage only together with include_usage: this client gets none.
    // Asking for it would have put usage in every chunk.
    let vllm: &[u8] = b"data: {\"id\":\"chatcmpl-5b1f\",\"object\":\"chat.completion.chunk\",\"created\":1733133122,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-5b1f\",\"object\":\"chat.completion.chunk\",\"created\":1733133122,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"1, 2, 3\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-5b1f\",\"object\":\"chat.completion.chunk\",\"created\":1733133122,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}]}\n\n\
data: [DONE]\n\n";
    let (sent, seen) = exchange(&gate, &body, &[&vllm[..100], &vllm[100..]]);
    assert_eq!(
        String::from_utf8(sent).unwrap(),
        body,
        "sent as the client wrote it"
    );
    assert_eq!(seen, vllm);
    let record = only_billing(&gate);
    assert_eq!(record["usage_source"], "estimated");

    // SGLang sends it whatever include_usage says, and no usage chunk without it: the client
    // keeps its usage in every chunk, and the last one bills the stream exactly.
    let gate = Gate::default_one();
    let body = streamed_chat(
        "Qwen/Qwen2.5-7B-Instruct",
        json!({"include_usage": false, "continuous_usage_stats": true}),
    );
    let sglang: &[u8] = b"data: {\"id\":\"b1a8\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"Qwen/Qwen2.5-7B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":null,\"tool_calls\":null},\"logprobs\":null,\"finish_reason\":null,\"matched_stop\":null}],\"usage\":null}\n\n\
data: {\"id\":\"b1a8\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"Qwen/Qwen2.5-7B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":null,\"content\":\"1, 2, 3\",\"reasoning_content\":null,\"tool_calls\":null},\"logprobs\":null,\"finish_reason\":null,\"matched_stop\":null}],\"usage\":{\"prompt_tokens\":30,\"total_tokens\":37,\"completion_tokens\":7,\"prompt_tokens_details\":null}}\n\n\
data: {\"id\":\"b1a8\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"Qwen/Qwen2.5-7B-Instruct\",\"choices\":[{\"index\":0,\"delta\":{\"role\":null,\"content\":null,\"reasoning_content\":null,\"tool_calls\":null},\"logprobs\":null,\"finish_reason\":\"stop\",\"matched_stop\":151645}],\"usage\":{\"prompt_tokens\":30,\"total_tokens\":37,\"completion_tokens\":7,\"prompt_tokens_details\":null}}\n\n\
data: [DONE]\n\n";
    let (sent, seen) = exchange(&gate, &body, &[sglang]);
    assert_eq!(String::from_utf8(sent).unwrap(), body);
    assert_eq!(
        seen, sglang,
        "nothing taken out of a stream the filter did not change"
    );
    let record = only_billing(&gate);
    assert_eq!(usage_of(&record), (30, 7));
    assert_eq!(record["usage_source"], "reported");
}

#[test]
fn usage_chunks_with_null_choices_or_over_several_data_lines_never_reach_the_client() {
    let body = streamed_chat("gpt-test", Value::Null);
    let content: &[u8] = b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"1, 2, 3\"},\"finish_reason\":\"stop\"}]}\r\n\r\n";
    let usage_chunks: [&[u8]; 2] = [
        // Go servers write no choices as `null`.
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"gpt-test\",\"choices\":null,\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":7,\"total_tokens\":37}}\r\n\r\n",
        // A payload with a line break goes out as two `data:` lines, which SSE joins.
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"gpt-test\",\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":30,\"completion_tokens\":7,\"total_tokens\":37}}\r\n\r\n",
    ];
    let done: &[u8] = b"data: [DONE]\r\n\r\n";
    let mut want = content.to_vec();
    want.extend_from_slice(done);

    for usage in usage_chunks {
        let gate = Gate::default_one();
        let stream = [content, usage, done].concat();
        // Cut inside the usage event's field name, inside its JSON, and between the line
        // ends that close it.
        let at = content.len();
        let cuts = [
            at + 3,
            at + position(usage, "prompt_tok", 0) + 5,
            at + usage.len() - 3,
        ];
        let (sent, seen) = exchange(&gate, &body, &cut(&stream, &cuts));
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&want)
        );
        let record = only_billing(&gate);
        assert_eq!(usage_of(&record), (30, 7));
        assert_eq!(record["usage_source"], "reported");
    }
}
