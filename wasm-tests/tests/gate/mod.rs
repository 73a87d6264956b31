//! Shared by the scenario tests of the real filter (`filter_*.rs`): plugin configurations
//! with key digests, an Envoy process with one or more workers running the built filter,
//! and a driver that takes one request through the whole stream the way Envoy delivers it.
//!
//! The harness's own tests use `tests/common`; this module is apart so that they do not
//! depend on the filter being built.

#![allow(dead_code)] // each test binary uses its own part

pub mod rls;

use std::sync::OnceLock;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wasm_tests::{load_filter_wasm, Action, Error, Host, HttpStream, LocalReply, Vm};

/// The collector's ingest token in every configuration built here.
pub const INGEST_TOKEN: &str = "ingest-7f3a-secret-token";
/// The filter's record queue and shared-data keys (part of its contract with itself across
/// workers; the tests read them to see what the workers share).
pub const QUEUE: &str = "inference-gate/records";
pub const LEASE_KEY: &str = "inference-gate/flusher-lease";
pub const INFLIGHT_KEY: &str = "inference-gate/batch-in-flight";
pub const CHAT: &str = "/v1/chat/completions";
pub const COMPLETIONS: &str = "/v1/completions";

/// The filter, read once per test binary.
pub fn filter() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| load_filter_wasm().unwrap_or_else(|e| panic!("{e}")))
}

/// SHA-256 of a key in lowercase hex, as `api_key_sha256` holds it.
pub fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One tenant of a test configuration.
#[derive(Clone, Copy, Debug)]
pub struct Tenant {
    pub id: &'static str,
    pub keys: &'static [&'static str],
    pub rate_limit: u64,
    pub token_budget: u64,
}

pub const ACME: Tenant = Tenant {
    id: "acme",
    keys: &["sk-acme-0001", "sk-acme-0002"],
    rate_limit: 1000,
    token_budget: 1_000_000,
};

pub const GLOBEX: Tenant = Tenant {
    id: "globex",
    keys: &["sk-globex-0001"],
    rate_limit: 1000,
    token_budget: 1_000_000,
};

impl Tenant {
    pub fn limits(self, rate_limit: u64, token_budget: u64) -> Tenant {
        Tenant {
            rate_limit,
            token_budget,
            ..self
        }
    }

    pub fn key(self) -> &'static str {
        self.keys[0]
    }

    fn to_json(self) -> Value {
        let digests: Vec<String> = self.keys.iter().map(|k| digest(k)).collect();
        json!({
            "id": self.id,
            "api_key_sha256": digests,
            "rate_limit": self.rate_limit,
            "token_budget": self.token_budget,
        })
    }
}

/// A plugin configuration for these tenants and the `collector` cluster; tests change it
/// further as a JSON value.
pub fn config(tenants: &[Tenant]) -> Value {
    json!({
        "tenants": tenants.iter().map(|t| t.to_json()).collect::<Vec<_>>(),
        "collector": {"cluster": "collector", "ingest_token": INGEST_TOKEN},
    })
}

/// One Envoy process running the filter on `workers` workers.
pub struct Gate {
    pub host: Host,
    pub workers: Vec<Vm>,
}

impl Gate {
    pub fn start(config: &Value, workers: usize) -> Gate {
        Gate::start_on(Host::new(), config, workers)
    }

    /// As [`Gate::start`], on a host the test prepared (random seed, clusters, clock).
    pub fn start_on(host: Host, config: &Value, workers: usize) -> Gate {
        let text = config.to_string();
        let workers = (0..workers)
            .map(|_| {
                host.start_vm(filter(), &text)
                    .unwrap_or_else(|e| panic!("the filter refused a valid configuration: {e}"))
            })
            .collect();
        Gate { host, workers }
    }

    /// One worker with ACME and GLOBEX.
    pub fn default_one() -> Gate {
        Gate::start(&config(&[ACME, GLOBEX]), 1)
    }

    pub fn vm(&self, worker: usize) -> &Vm {
        &self.workers[worker]
    }

    /// Takes `request` and `response` through worker 0; see [`send`].
    pub fn send(&self, request: &Request, response: &Response) -> Exchange {
        send(self.vm(0), request, response).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The records waiting in the shared queue, oldest first, without taking them.
    pub fn queued(&self) -> Vec<Value> {
        self.host
            .queue_items(QUEUE)
            .iter()
            .map(|r| serde_json::from_slice(r).expect("a queued record is JSON"))
            .collect()
    }

    pub fn queued_of(&self, kind: &str) -> Vec<Value> {
        self.queued()
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    }

    pub fn billing(&self) -> Vec<Value> {
        self.queued_of("billing")
    }

    pub fn audits(&self) -> Vec<Value> {
        self.queued_of("audit")
    }

    /// A counter or gauge, 0 when the filter never touched it.
    pub fn metric(&self, name: &str) -> u64 {
        self.host.metric(name).unwrap_or(0)
    }

    /// A tenant's limit state as the workers share it.
    pub fn bucket(&self, tenant: &str) -> Bucket {
        let key = format!("inference-gate/limits/{tenant}");
        let (bytes, _) = self
            .host
            .shared_data(&key)
            .unwrap_or_else(|| panic!("no shared limit state for {tenant}"));
        Bucket::decode(&bytes)
    }

    /// Every log line of every worker, one per line.
    pub fn log_text(&self) -> String {
        self.host
            .logs()
            .iter()
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts that no log line contains any of `secrets`.
    pub fn assert_logs_free_of(&self, secrets: &[&str]) {
        for line in self.host.logs() {
            for secret in secrets {
                assert!(
                    !line.message.contains(secret),
                    "a log line holds {secret:?}: {line}"
                );
            }
        }
    }
}

/// A tenant's buckets (`limits.rs`: version 2, then `at_ns`, requests and tokens in use, in
/// millionths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub at_ns: u64,
    pub requests_micro: u64,
    pub tokens_micro: u64,
}

impl Bucket {
    fn decode(bytes: &[u8]) -> Bucket {
        assert_eq!(
            bytes.len(),
            25,
            "limit state of an unknown shape: {bytes:?}"
        );
        assert_eq!(bytes[0], 2, "limit state of an unknown version");
        let field = |i: usize| u64::from_le_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().unwrap());
        Bucket {
            at_ns: field(0),
            requests_micro: field(1),
            tokens_micro: field(2),
        }
    }
}

/// A client request: headers in order and the body in the chunks Envoy delivers.
#[derive(Clone, Debug)]
pub struct Request {
    pub headers: Vec<(String, String)>,
    pub body: Vec<Vec<u8>>,
    pub remote_addr: String,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            headers: vec![
                (":method".into(), method.into()),
                (":path".into(), path.into()),
                (":authority".into(), "gateway.test".into()),
                (":scheme".into(), "https".into()),
            ],
            body: Vec::new(),
            remote_addr: "203.0.113.7:51000".into(),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// `POST` of a JSON body to `path` with `Authorization: Bearer <key>`.
    pub fn post(path: &str, key: &str, body: &str) -> Request {
        Request::new("POST", path)
            .bearer(key)
            .header("content-type", "application/json")
            .body(body)
    }

    /// A chat completion of [`chat_body`] for `gpt-test` with `Authorization: Bearer <key>`.
    pub fn chat(key: &str, max_tokens: u64) -> Request {
        Request::post(CHAT, key, &chat_body(Some("gpt-test"), max_tokens))
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn bearer(self, key: &str) -> Request {
        self.header("authorization", &format!("Bearer {key}"))
    }

    /// The whole body in one chunk.
    pub fn body(self, body: impl AsRef<[u8]>) -> Request {
        self.chunks(&[body.as_ref()])
    }

    pub fn chunks(mut self, chunks: &[&[u8]]) -> Request {
        self.body = chunks.iter().map(|c| c.to_vec()).collect();
        self
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        self.body.concat()
    }
}

/// `{"model", "messages": [one user message "hi"], "max_tokens"}`: the filter estimates
/// its prompt at 8 tokens (1 for the text, 4 for the message, 3 for the reply priming).
pub fn chat_body(model: Option<&str>, max_tokens: u64) -> String {
    let mut body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    });
    if let Some(model) = model {
        body["model"] = model.into();
    }
    body.to_string()
}

/// The prompt estimate of [`chat_body`].
pub const CHAT_PROMPT_ESTIMATE: u64 = 8;

/// What the model server answers.
#[derive(Clone, Debug)]
pub struct Response {
    pub headers: Vec<(String, String)>,
    pub body: Vec<Vec<u8>>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, chunks: &[&[u8]]) -> Response {
        Response {
            headers: vec![
                (":status".into(), status.to_string()),
                ("content-type".into(), content_type.into()),
            ],
            body: chunks.iter().map(|c| c.to_vec()).collect(),
        }
    }

    pub fn json(status: u16, body: &str) -> Response {
        Response::new(status, "application/json", &[body.as_bytes()])
    }

    /// A chat completion that reports `prompt` and `completion` tokens.
    pub fn usage(prompt: u64, completion: u64) -> Response {
        Response::json(200, &completion_body(None, prompt, completion))
    }

    pub fn sse(chunks: &[&[u8]]) -> Response {
        Response::new(200, "text/event-stream", chunks)
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// An OpenAI chat completion body with usage.
pub fn completion_body(model: Option<&str>, prompt: u64, completion: u64) -> String {
    let mut body = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    });
    if let Some(model) = model {
        body["model"] = model.into();
    }
    body.to_string()
}

/// One request as it went through the filter.
pub struct Exchange {
    pub stream: HttpStream,
    pub headers_action: Action,
    /// What the filter returned for each request body chunk delivered.
    pub body_actions: Vec<Action>,
}

impl Exchange {
    /// The reply the filter gave itself, if any.
    pub fn reply(&self) -> Option<LocalReply> {
        self.stream.local_reply()
    }

    /// Whether the request went on to the model server: no local reply, and the body (if
    /// any) released.
    pub fn admitted(&self) -> bool {
        self.reply().is_none()
            && self
                .body_actions
                .last()
                .is_none_or(|a| *a == Action::Continue)
    }

    /// The local reply, which must be there.
    pub fn expect_reply(&self) -> LocalReply {
        self.reply()
            .expect("the filter should have answered itself")
    }

    /// The `error.code` of the local reply.
    pub fn error_code(&self) -> String {
        let reply = self.expect_reply();
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
            panic!("local reply body is not JSON ({e}): {}", reply.body_text())
        });
        body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {body}"))
            .to_string()
    }

    /// The response phase and the end of the stream. An admitted request gets `response`
    /// from the model server; a local reply goes back through the filter's response path,
    /// as Envoy runs it through the encoder filters.
    pub fn respond(&self, response: &Response) -> Result<(), Error> {
        match self.reply() {
            Some(reply) => {
                let status = reply.status.to_string();
                let mut headers = vec![(":status", status.as_str())];
                headers.extend(reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                self.stream.response_headers(&headers, false)?;
                self.stream.response_body(&reply.body, true)?;
            }
            None => {
                let headers: Vec<(&str, &str)> = response
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let no_body = response.body.is_empty();
                self.stream.response_headers(&headers, no_body)?;
                let last = response.body.len().saturating_sub(1);
                for (i, chunk) in response.body.iter().enumerate() {
                    self.stream.response_body(chunk, i == last)?;
                }
            }
        }
        self.stream.finish()
    }
}

/// The request phase: headers, then the body chunks unless the filter answered already.
pub fn begin(vm: &Vm, request: &Request) -> Result<Exchange, Error> {
    let stream = vm.http()?;
    stream.set_property(&["source", "address"], &request.remote_addr)?;
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let headers_action = stream.request_headers(&headers, request.body.is_empty())?;
    let mut body_actions = Vec::new();
    if stream.local_reply().is_none() {
        let last = request.body.len().saturating_sub(1);
        for (i, chunk) in request.body.iter().enumerate() {
            body_actions.push(stream.request_body(chunk, i == last)?);
            if stream.local_reply().is_some() {
                break;
            }
        }
    }
    Ok(Exchange {
        stream,
        headers_action,
        body_actions,
    })
}

/// A whole stream: the request phase, the response (or the local reply) and the log phase.
pub fn send(vm: &Vm, request: &Request, response: &Response) -> Result<Exchange, Error> {
    let exchange = begin(vm, request)?;
    exchange.respond(response)?;
    Ok(exchange)
}

/// The JSON body of a local reply.
pub fn reply_json(reply: &LocalReply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {}", reply.body_text()))
}

/// Asserts the OpenAI error shape and returns `error.code`.
pub fn assert_openai_error(reply: &LocalReply, status: u32, kind: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.body_text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply_json(reply);
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    error["code"].as_str().expect("error.code").to_string()
}
