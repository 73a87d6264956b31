//! The built filter on every API shape: each fixture of `tests/fixtures/metering/` sent on its
//! default route is billed exactly as its sidecar says; OpenAI streams that do not ask for usage
//! are made to, and the client gets the stream it asked for.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::path::PathBuf;

use gate::{begin, config, Gate, Request, ACME, CHAT};
use serde_json::{json, Value};
use wasm_tests::{workspace_root, Action};

/// `metering.default_max_tokens` the fixtures' figures assume.
const DEFAULT_MAX_TOKENS: u64 = 256;

fn gate() -> Gate {
    let mut cfg = config(&[ACME]);
    cfg["metering"] = json!({"default_max_tokens": DEFAULT_MAX_TOKENS});
    Gate::start(&cfg, 1)
}

struct Fixture {
    name: String,
    path: &'static str,
    meta: Value,
    body: Vec<u8>,
    dir: PathBuf,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let (shape, stem) = name.split_once('/').unwrap();
        let dir = workspace_root().join("tests/fixtures/metering").join(shape);
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.meta.json"))).unwrap())
                .unwrap();
        let mut body = std::fs::read(dir.join(meta["body"].as_str().unwrap())).unwrap();
        if let Some(needle) = meta["cut_before"].as_str() {
            let at = body
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap();
            body.truncate(at);
        }
        let path = match shape {
            "openai_chat" => "/v1/chat/completions",
            "openai_completions" => "/v1/completions",
            "openai_embeddings" => "/v1/embeddings",
            "openai_responses" => "/v1/responses",
            "anthropic_messages" => "/v1/messages",
            "ollama_chat" => "/api/chat",
            "ollama_generate" => "/api/generate",
            "openai_invocations" => "/invocations",
            "llamacpp_completion" => "/completion",
            "generate" => "/generate",
            "unmetered" => "/v1/messages/count_tokens",
            other => panic!("no route for {other}"),
        };
        Fixture {
            name: name.to_string(),
            path,
            meta,
            body,
            dir,
        }
    }

    fn all() -> Vec<Fixture> {
        let root = workspace_root().join("tests/fixtures/metering");
        let mut names = Vec::new();
        for shape in std::fs::read_dir(&root).unwrap() {
            let shape = shape.unwrap().path();
            if !shape.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&shape).unwrap() {
                let file = f.unwrap().file_name().into_string().unwrap();
                if let Some(stem) = file.strip_suffix(".meta.json") {
                    let shape = shape.file_name().unwrap().to_str().unwrap();
                    names.push(format!("{shape}/{stem}"));
                }
            }
        }
        names.sort();
        names.iter().map(|n| Fixture::load(n)).collect()
    }

    fn request(&self) -> Request {
        let body = self.meta["request"].to_string();
        Request::post(self.path, ACME.key(), &body)
            .header("content-length", &body.len().to_string())
    }

    fn client_sees(&self) -> Option<Vec<u8>> {
        match self.meta.get("client_sees") {
            None => Some(self.body.clone()),
            Some(Value::Null) => None,
            Some(v) => Some(std::fs::read(self.dir.join(v.as_str().unwrap())).unwrap()),
        }
    }

    fn is_cut(&self) -> bool {
        self.meta.get("cut_before").is_some()
    }
}

/// Sends the fixture's request and its response in chunks of `size`; a cut stream ends
/// without its last chunk marked, as when the server dies. Returns what the client got.
fn exchange(gate: &Gate, f: &Fixture, size: usize) -> Vec<u8> {
    let exchange = begin(gate.vm(0), &f.request()).unwrap();
    assert!(exchange.admitted(), "{}", f.name);
    let s = &exchange.stream;
    let status = f.meta["status"].to_string();
    let ct = f.meta["content_type"].as_str().unwrap();
    s.response_headers(&[(":status", status.as_str()), ("content-type", ct)], false)
        .unwrap();
    let chunks: Vec<&[u8]> = f.body.chunks(size.max(1)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len() && !f.is_cut();
        assert_eq!(s.response_body(chunk, last).unwrap(), Action::Continue);
    }
    if chunks.is_empty() && !f.is_cut() {
        s.response_body(b"", true).unwrap();
    }
    s.finish().unwrap();
    s.forwarded_response_body()
}

#[test]
fn every_fixture_is_billed_as_its_sidecar_says_through_the_filter() {
    let gate = gate();
    let mut expected = Vec::new();
    let fixtures = Fixture::all();
    assert!(fixtures.len() >= 25);
    for f in &fixtures {
        for size in [1, 7, 4096] {
            let seen = exchange(&gate, f, size);
            if let Some(want) = f.client_sees() {
                assert!(
                    seen == want,
                    "{} in chunks of {size}: the client got\n{}",
                    f.name,
                    String::from_utf8_lossy(&seen)
                );
            }
            expected.push((f, size));
        }
    }

    let billing = gate.billing();
    let mut records = billing.iter();
    for (f, size) in expected {
        let want = &f.meta["expect"];
        if want.is_null() {
            continue;
        }
        let record = records
            .next()
            .unwrap_or_else(|| panic!("{}: no record", f.name));
        let shape = f.name.split('/').next().unwrap();
        assert_eq!(record["api"], shape, "{} in chunks of {size}", f.name);
        for (field, value) in want.as_object().unwrap() {
            assert_eq!(
                &record[field], value,
                "{} in chunks of {size}: {field} in {record}",
                f.name
            );
        }
        for detail in [
            "cached_input_tokens",
            "cache_write_input_tokens",
            "reasoning_tokens",
        ] {
            if want.get(detail).is_none() {
                assert!(record.get(detail).is_none(), "{}: {record}", f.name);
            }
        }
    }
    assert!(records.next().is_none(), "a record too many");
}

#[test]
fn a_stream_that_does_not_ask_for_usage_is_made_to() {
    let gate = gate();
    let f = Fixture::load("openai_chat/openai_stream_usage");
    let body = f.meta["request"].to_string();
    // The body in three chunks: held until whole, then replaced.
    let b = body.as_bytes();
    let request = f.request().chunks(&[&b[..5], &b[5..30], &b[30..]]);
    let exchange = begin(gate.vm(0), &request).unwrap();
    assert_eq!(
        exchange.body_actions,
        [Action::Pause, Action::Pause, Action::Continue]
    );
    let s = &exchange.stream;
    // The length the client sent no longer holds; the buffer filter after this one sets it.
    assert_eq!(s.request_header("content-length"), None);
    let sent: Value = serde_json::from_slice(&s.forwarded_request_body()).unwrap();
    let mut want: Value = serde_json::from_str(&body).unwrap();
    want["stream_options"] = json!({"include_usage": true});
    assert_eq!(sent, want);
    let text = String::from_utf8(s.forwarded_request_body()).unwrap();
    assert!(
        text.starts_with(r#"{"stream_options":{"include_usage":true},"#),
        "{text}"
    );
    assert!(
        text.ends_with(&body[1..]),
        "the rest as the client wrote it"
    );
}

#[test]
fn the_usage_chunk_and_the_null_usage_never_reach_the_client() {
    let gate = gate();
    let f = Fixture::load("openai_chat/openai_stream_usage");
    let want = f.client_sees().unwrap();
    // Splits of the stream into two all along it (the bytes around every event boundary are
    // covered natively, in tests/metering_fixtures.rs).
    for at in (0..=f.body.len()).step_by(11) {
        let exchange = begin(gate.vm(0), &f.request()).unwrap();
        let s = &exchange.stream;
        s.response_headers(
            &[
                (":status", "200"),
                ("content-type", "text/event-stream; charset=utf-8"),
                ("content-length", &f.body.len().to_string()),
            ],
            false,
        )
        .unwrap();
        // The stream the client gets is shorter than the server said.
        assert_eq!(s.response_header("content-length"), None);
        s.response_body(&f.body[..at], false).unwrap();
        s.response_body(&f.body[at..], true).unwrap();
        s.finish().unwrap();
        assert!(
            s.forwarded_response_body() == want,
            "split at {at}: {}",
            String::from_utf8_lossy(&s.forwarded_response_body())
        );
    }
    for record in gate.billing() {
        assert_eq!(
            (&record["input_tokens"], &record["output_tokens"]),
            (&json!(19), &json!(10))
        );
        assert_eq!(record["usage_source"], "reported");
    }
    assert_eq!(gate.metric("inference_gate.usage.estimated"), 0);
}

#[test]
fn a_client_that_asked_for_usage_gets_the_stream_untouched() {
    let gate = gate();
    let f = Fixture::load("openai_chat/openai_stream_usage");
    let mut body = f.meta["request"].clone();
    body["stream_options"] = json!({"include_usage": true});
    let body = body.to_string();
    let request = Request::post(CHAT, ACME.key(), &body).header("content-length", "7");
    let exchange = begin(gate.vm(0), &request).unwrap();
    let s = &exchange.stream;
    assert_eq!(s.forwarded_request_body(), body.as_bytes());
    s.response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )
    .unwrap();
    for chunk in f.body.chunks(50) {
        s.response_body(chunk, false).unwrap();
    }
    s.response_body(b"", true).unwrap();
    s.finish().unwrap();
    assert_eq!(s.forwarded_response_body(), f.body);
    assert_eq!(gate.billing()[0]["usage_source"], "reported");
}

#[test]
fn with_injection_off_nothing_is_rewritten_and_the_stream_is_estimated() {
    let mut cfg = config(&[ACME]);
    cfg["metering"] =
        json!({"default_max_tokens": DEFAULT_MAX_TOKENS, "inject_include_usage": false});
    let gate = Gate::start(&cfg, 1);
    let f = Fixture::load("openai_chat/openai_stream");
    let body = f.meta["request"].to_string();
    let request = Request::post(CHAT, ACME.key(), &body).header("content-length", "42");
    let exchange = begin(gate.vm(0), &request).unwrap();
    let s = &exchange.stream;
    assert_eq!(s.request_header("content-length").as_deref(), Some("42"));
    assert_eq!(s.forwarded_request_body(), body.as_bytes());
    s.response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )
    .unwrap();
    s.response_body(&f.body, true).unwrap();
    s.finish().unwrap();
    assert_eq!(s.forwarded_response_body(), f.body);
    let record = &gate.billing()[0];
    assert_eq!(record["usage_source"], "estimated");
    assert_eq!(record["output_tokens"], f.meta["expect"]["output_tokens"]);
}

#[test]
fn an_answer_that_is_not_an_event_stream_passes_untouched() {
    let gate = gate();
    let f = Fixture::load("openai_chat/openai_stream_usage");
    let error = br#"{"error":{"message":"stream_options is not supported","type":"invalid_request_error"}}"#;
    for (status, ct, encoding) in [
        ("400", "application/json", None),
        ("200", "text/event-stream", Some("gzip")),
    ] {
        let exchange = begin(gate.vm(0), &f.request()).unwrap();
        let s = &exchange.stream;
        let mut headers = vec![(":status", status), ("content-type", ct)];
        headers.extend(encoding.map(|e| ("content-encoding", e)));
        s.response_headers(&headers, false).unwrap();
        s.response_body(error, true).unwrap();
        s.finish().unwrap();
        assert_eq!(s.forwarded_response_body(), error);
    }
}
