//! The router called in-process, plus one test over a real socket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use demo_model::request_log::RequestLog;
use demo_model::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

fn router() -> Router {
    app(AppState::default())
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// The JSON chunks of an SSE body, after checking that `[DONE]` ends it.
    fn chunks(&self) -> Vec<Value> {
        let events: Vec<&str> = self.body.split_terminator("\n\n").collect();
        let (done, rest) = events.split_last().unwrap();
        assert_eq!(*done, "data: [DONE]");
        rest.iter()
            .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }
}

async fn send(app: Router, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn post(uri: &str, body: Value) -> Reply {
    send(
        router(),
        "POST",
        uri,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn assert_error(reply: &Reply, status: StatusCode) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let body = reply.json();
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["type"].is_string());
    assert!(error["code"].is_string());
    body
}

#[tokio::test]
async fn chat_plain_shape_and_usage() {
    // "Be brief." = 2 words + 1 punctuation; "Hi, there!" = 2 + 2; 2 messages * 3; plus 1.
    let reply = post(
        "/v1/chat/completions",
        json!({"model": "my-model", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi, there!"}
        ]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");

    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "my-model");

    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["finish_reason"], "stop");

    let content = choices[0]["message"]["content"].as_str().unwrap();
    let generated = words(content);
    assert!((5..=44).contains(&generated));
    let prompt = 3 + 4 + 2 * 3 + 1;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": generated,
               "total_tokens": prompt + generated})
    );
}

#[tokio::test]
async fn usage_differs_between_requests() {
    let mut seen = std::collections::HashSet::new();
    for text in ["a", "a b", "a b c", "a, b", "longer prompt here"] {
        let reply = post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": text}]}),
        )
        .await;
        seen.insert(reply.json()["usage"].to_string());
    }
    assert_eq!(seen.len(), 5);
}

#[tokio::test]
async fn text_parts_count_and_other_parts_are_ignored() {
    let reply = post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe this"},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
            {"type": "text", "text": "briefly."}
        ]}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["model"], "demo-model");
    assert_eq!(body["usage"]["prompt_tokens"], 2 + 2 + 3 + 1);
}

#[tokio::test]
async fn max_tokens_caps_and_sets_length() {
    for field in ["max_tokens", "max_completion_tokens"] {
        let reply = post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Tell me a long story."}],
                   field: 3}),
        )
        .await;
        let body = reply.json();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(
            words(body["choices"][0]["message"]["content"].as_str().unwrap()),
            3
        );
        assert_eq!(body["usage"]["completion_tokens"], 3);
    }

    // A cap above the natural length changes nothing.
    let reply = post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Tell me a long story."}],
               "max_tokens": 1000}),
    )
    .await;
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn n_choices_sum_into_usage() {
    let reply = post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Pick a colour."}], "n": 3}),
    )
    .await;
    let body = reply.json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut total = 0;
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        total += words(choice["message"]["content"].as_str().unwrap());
    }
    assert_eq!(body["usage"]["completion_tokens"], total);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_u64().unwrap() + total
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let reply = post(
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "Stream, please."}],
               "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "text/event-stream");

    let chunks = reply.chunks();
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    let (first, _) = rest.split_first().unwrap();
    let (finish, words_chunks) = rest[1..].split_last().unwrap();

    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "demo-model");
    }
    for chunk in rest {
        assert!(chunk.get("usage").is_some_and(Value::is_null), "{chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }

    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(first["choices"][0]["finish_reason"].is_null());

    // One event per word, each without a finish reason.
    let mut text = String::new();
    for chunk in words_chunks {
        let delta = &chunk["choices"][0]["delta"];
        assert!(delta.get("role").is_none());
        assert!(chunk["choices"][0]["finish_reason"].is_null());
        let piece = delta["content"].as_str().unwrap();
        assert_eq!(words(piece), 1);
        text.push_str(piece);
    }
    assert_eq!(words(&text), words_chunks.len() as u64);

    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");

    assert_eq!(usage_chunk["choices"], json!([]));
    let prompt = 2 + 2 + 3 + 1;
    let generated = words(&text);
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": generated,
               "total_tokens": prompt + generated})
    );
}

#[tokio::test]
async fn stream_without_usage_has_no_usage_field() {
    for options in [json!(null), json!({}), json!({"include_usage": false})] {
        let reply = post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                   "stream_options": options}),
        )
        .await;
        let chunks = reply.chunks();
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty()));
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn stream_matches_the_plain_answer() {
    let request = json!({"messages": [{"role": "user", "content": "Same answer?"}],
                         "n": 2, "max_tokens": 9});
    let plain = post("/v1/chat/completions", request.clone()).await.json();

    let mut streamed = request;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = post("/v1/chat/completions", streamed).await.chunks();

    let mut texts = [String::new(), String::new()];
    let mut finish = [Value::Null, Value::Null];
    for chunk in &chunks {
        if let Some(choice) = chunk["choices"].as_array().unwrap().first() {
            let i = choice["index"].as_u64().unwrap() as usize;
            texts[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if !choice["finish_reason"].is_null() {
                finish[i] = choice["finish_reason"].clone();
            }
        }
    }
    for i in 0..2 {
        assert_eq!(plain["choices"][i]["message"]["content"], texts[i]);
        assert_eq!(plain["choices"][i]["finish_reason"], finish[i]);
    }
    assert_eq!(plain["usage"], chunks.last().unwrap()["usage"]);
}

#[tokio::test]
async fn completions_plain_with_list_prompt() {
    let reply = post(
        "/v1/completions",
        json!({"model": "m", "prompt": ["Once upon a time", "Hello."], "n": 2,
               "max_tokens": 100}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "m");

    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let mut total = 0;
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["finish_reason"], "stop");
        total += words(choice["text"].as_str().unwrap());
    }
    assert_eq!(body["usage"]["prompt_tokens"], (4 + 1) + (2 + 1));
    assert_eq!(body["usage"]["completion_tokens"], total);
}

#[tokio::test]
async fn completions_default_to_16_tokens() {
    let prompt = "many words in this prompt so the natural reply is long ".repeat(4);
    let mut capped = 0;
    for extra in 0..8 {
        let body = post(
            "/v1/completions",
            json!({"prompt": format!("{prompt}{}", "x ".repeat(extra))}),
        )
        .await
        .json();
        let generated = body["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(generated <= 16);
        if body["choices"][0]["finish_reason"] == "length" {
            assert_eq!(generated, 16);
            capped += 1;
        }
    }
    assert!(capped > 0);
}

#[tokio::test]
async fn completions_stream() {
    let reply = post(
        "/v1/completions",
        json!({"prompt": "Say this is a test", "stream": true, "max_tokens": 4,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = reply.chunks();
    assert_eq!(chunks.len(), 4 + 1 + 1);
    let text: String = chunks[..4]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(words(&text), 4);
    for chunk in &chunks[..5] {
        assert_eq!(chunk["object"], "text_completion");
        assert!(chunk.get("usage").is_some_and(Value::is_null));
    }
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"][0]["text"], "");
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10})
    );
}

#[tokio::test]
async fn models_lists_the_demo_model() {
    let reply = send(router(), "GET", "/v1/models", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "demo-model");
    assert_eq!(body["data"][0]["object"], "model");
}

#[tokio::test]
async fn bad_requests_are_openai_shaped_400s() {
    for body in [
        "",
        "{not json",
        "[1, 2]",
        r#"{"messages": "hello"}"#,
        r#"{"messages": [{"role": "user", "content": 42}]}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "n": "two"}"#,
        r#"{"messages": []}"#,
    ] {
        let reply = send(router(), "POST", "/v1/chat/completions", &[], body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST);
    }
    let reply = send(router(), "POST", "/v1/completions", &[], r#"{"prompt": 7}"#).await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_404() {
    for (method, uri) in [
        ("GET", "/"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
    ] {
        let reply = send(router(), method, uri, &[], "").await;
        let body = assert_error(&reply, StatusCode::NOT_FOUND);
        assert_eq!(
            body["error"]["message"],
            format!("Invalid URL ({method} {uri})")
        );
    }
}

#[tokio::test]
async fn forced_server_error_still_reports_usage() {
    let request = json!({"messages": [{"role": "user", "content": "Fail, please."}],
                         "stream": true, "stream_options": {"include_usage": true}});
    for code in ["500", "503"] {
        let reply = send(
            router(),
            "POST",
            "/v1/chat/completions",
            &[("x-demo-status", code)],
            &request.to_string(),
        )
        .await;
        let status = StatusCode::from_bytes(code.as_bytes()).unwrap();
        let body = assert_error(&reply, status);
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["usage"]["prompt_tokens"], 2 + 2 + 3 + 1);
        let usage = &body["usage"];
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        );
    }

    let reply = send(
        router(),
        "POST",
        "/v1/completions",
        &[("x-demo-status", "200")],
        r#"{"prompt": "x"}"#,
    )
    .await;
    assert_error(&reply, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn log_file_gets_one_json_line_per_request() {
    let path = std::env::temp_dir().join(format!("demo-model-test-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let state = AppState {
        log: Arc::new(RequestLog::to_file(&path).unwrap()),
        ..AppState::default()
    };

    let chat = json!({"messages": [{"role": "user", "content": "Count me."}], "stream": true,
                      "stream_options": {"include_usage": true}});
    let reply = send(
        app(state.clone()),
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Tenant-Id", "acme"),
            ("x-request-id", "req-1"),
            ("authorization", "Bearer secret-key"),
        ],
        &chat.to_string(),
    )
    .await;
    let usage = reply.chunks().last().unwrap()["usage"].clone();
    send(app(state), "GET", "/nowhere", &[], "").await;

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!text.contains("secret-key"));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);

    let first = &lines[0];
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["status"], 200);
    assert_eq!(first["tenant_id"], "acme");
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["model"], "demo-model");
    assert_eq!(first["stream"], true);
    assert_eq!(first["include_usage"], true);
    assert_eq!(first["prompt_tokens"], usage["prompt_tokens"]);
    assert_eq!(first["completion_tokens"], usage["completion_tokens"]);
    assert_eq!(
        first["header_names"],
        json!(["authorization", "x-request-id", "x-tenant-id"])
    );

    let second = &lines[1];
    assert_eq!(second["path"], "/nowhere");
    assert_eq!(second["status"], 404);
    assert!(second["tenant_id"].is_null());
    assert!(second["prompt_tokens"].is_null());
    assert_eq!(second["header_names"], json!([]));
}

#[tokio::test]
async fn chunk_delay_paces_the_stream() {
    let state = AppState {
        chunk_delay: Duration::from_millis(10),
        ..AppState::default()
    };
    let started = Instant::now();
    let reply = send(
        app(state),
        "POST",
        "/v1/completions",
        &[],
        r#"{"prompt": "slow", "stream": true, "max_tokens": 5}"#,
    )
    .await;

    // Five words, the finish chunk and [DONE]: six pauses.
    assert_eq!(reply.chunks().len(), 6);
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_socket_streams_chunked_sse() {
    use std::io::{Read, Write};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router()).await });

    let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let raw = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            socket,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        socket.read_to_string(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    server.abort();

    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"));
    assert!(head.contains("transfer-encoding: chunked"));
    assert!(rest.contains("data: [DONE]\n\n"));
}
