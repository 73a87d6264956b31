//! Token metering: what a request is expected to cost, and what the model server reports.
//!
//! - `routes`: which API shape a request speaks, from its path;
//! - `openai`, `responses`, `anthropic`, `ollama`, `generate`: one module per API shape, each
//!   reading its requests (the admission estimate) and its responses (usage, model, generated
//!   text); `openai` also reads llama.cpp's own completion format;
//! - `include_usage`: asking OpenAI streams for usage on the client's behalf, and hiding the
//!   answer from the client;
//! - `sse`, `ndjson`: the incremental stream decoders;
//! - `json`: reading JSON as the Python servers do; `estimate`: the fallback rule for tokens
//!   nobody reported.
//!
//! A response is read as it passes, chunk by chunk: a JSON body is kept up to a bound and
//! read at its end (past the bound, only its tail, where usage is); a stream is decoded event
//! by event (SSE) or line by line (NDJSON), keeping only the event being assembled. Nothing
//! here fails on a response: input that cannot be read leaves the usage unknown, and the
//! request is billed an estimate from what was seen. A request body on an inference route
//! must be JSON the filter can read ([`BadBody`] otherwise): a body it cannot size could not be
//! reserved or billed for what it costs.

pub mod anthropic;
pub mod estimate;
pub mod generate;
pub mod include_usage;
pub mod json;
pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod routes;
pub mod sse;

use std::fmt;

pub use json::MAX_REPORTED_TOKENS;
use serde_json::Value;

use estimate::Generated;
use ndjson::NdjsonDecoder;
use sse::SseDecoder;

/// The largest single stream event (or NDJSON line) kept for parsing. Usage events are
/// small; an event this large is content, and skipping it costs only an output estimate.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// How much of the end of a JSON body too large to keep whole is kept anyway: usage comes last.
const TAIL_BYTES: usize = 64 * 1024;

/// The API shape of a request, decided by its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiResponses,
    /// vLLM's SageMaker route: an OpenAI chat, completions or embeddings request, told apart
    /// by its fields.
    OpenAiInvocations,
    AnthropicMessages,
    OllamaChat,
    OllamaGenerate,
    /// llama.cpp server's own completion format (`/completion`, `/infill`).
    LlamaCppCompletion,
    /// The native `/generate` of TGI and of SGLang.
    Generate,
    /// A route that does no billable work (counting tokens): forwarded and limited, billed
    /// only what its response reports in the OpenAI shape.
    Unmetered,
    /// Any other route: forwarded and limited, billed what its response reports in the
    /// OpenAI shape; a `POST` with a body that reports nothing is billed an estimate.
    Other,
}

impl Api {
    /// Every shape, by the name billing records and the configuration use.
    pub const ALL: [Api; 12] = [
        Api::OpenAiChat,
        Api::OpenAiCompletions,
        Api::OpenAiEmbeddings,
        Api::OpenAiResponses,
        Api::OpenAiInvocations,
        Api::AnthropicMessages,
        Api::OllamaChat,
        Api::OllamaGenerate,
        Api::LlamaCppCompletion,
        Api::Generate,
        Api::Unmetered,
        Api::Other,
    ];

    /// The name written into billing records and read from `metering.routes[].api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiCompletions => "openai_completions",
            Api::OpenAiEmbeddings => "openai_embeddings",
            Api::OpenAiResponses => "openai_responses",
            Api::OpenAiInvocations => "openai_invocations",
            Api::AnthropicMessages => "anthropic_messages",
            Api::OllamaChat => "ollama_chat",
            Api::OllamaGenerate => "ollama_generate",
            Api::LlamaCppCompletion => "llamacpp_completion",
            Api::Generate => "generate",
            Api::Unmetered => "unmetered",
            Api::Other => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether this is a model-serving shape: its body must be readable JSON, and a
    /// successful response without usage still consumed tokens worth estimating.
    pub fn is_inference(self) -> bool {
        !matches!(self, Api::Unmetered | Api::Other)
    }

    /// Whether a stream of this shape reports usage only when the request asks for it
    /// (`stream_options.include_usage`).
    pub fn usage_on_request(self) -> bool {
        matches!(
            self,
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiInvocations
        )
    }
}

/// What admission reserves for a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEstimate {
    pub model: Option<String>,
    pub input_tokens: u64,
    /// The most output the request allows, over all choices.
    pub output_tokens: u64,
    pub stream: bool,
    /// A request the model server may do paid work for (an inference shape, or a `POST` with
    /// a body on an unknown route): billed this estimate when its response reports nothing.
    pub billable: bool,
}

impl RequestEstimate {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Why a request body on an inference route is refused: the filter could neither size it
/// nor make sure it is billed (it cannot ask a stream it cannot read for its usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadBody {
    Empty,
    /// Not JSON as RFC 8259 defines it (Python servers also take `NaN`, lone surrogates,
    /// numbers past the double range and deeper nesting; serde_json, like the standard,
    /// does not). Where the reading stopped, never the bytes themselves.
    NotJson {
        line: usize,
        column: usize,
    },
}

impl BadBody {
    /// The `code` of the `400` reply.
    pub fn code(self) -> &'static str {
        "invalid_json"
    }

    /// The `message` of the `400` reply: in words, never quoting the body.
    pub fn message(self) -> String {
        match self {
            BadBody::Empty => {
                "The request body is empty. Send the request as a JSON object.".to_string()
            }
            BadBody::NotJson { line, column } => format!(
                "The request body is not valid JSON (at line {line}, column {column}). Send \
                 standard JSON: no NaN or Infinity, no lone surrogate escapes, numbers within \
                 the range of a double, at most 128 levels of nesting."
            ),
        }
    }
}

impl fmt::Display for BadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadBody::Empty => f.write_str("empty request body"),
            BadBody::NotJson { line, column } => {
                write!(f, "request body not JSON at line {line} column {column}")
            }
        }
    }
}

/// Estimates a request body for admission.
///
/// On an inference route the body must be readable JSON ([`BadBody`] otherwise). Its input
/// estimate is the larger of what its shape counts (message text and the like, with a few
/// tokens of framing per message) and the size of the whole body ([`estimate::value_tokens`]),
/// so that tool definitions, schemas, images and anything else the model reads count too.
///
/// Other routes take any body, sized from the whole of it. A `POST` that sends a body to a
/// route of no known shape may be inference in a format nobody reads: it reserves
/// `default_max_tokens` of output and is billed an estimate if its response reports nothing.
pub fn estimate_request(
    api: Api,
    method: &str,
    body: &[u8],
    default_max_tokens: u64,
) -> Result<RequestEstimate, BadBody> {
    let d = default_max_tokens;
    if !api.is_inference() {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let billable = api == Api::Other && method == "POST" && !body.is_empty();
        return Ok(RequestEstimate {
            // Unmetered routes are checked against the tenant's models like the shapes.
            model: parsed
                .as_ref()
                .filter(|_| api == Api::Unmetered)
                .and_then(|v| v.get("model")?.as_str().map(str::to_string)),
            input_tokens: parsed
                .as_ref()
                .map_or_else(|| estimate::raw_tokens(body), estimate::value_tokens),
            output_tokens: if billable { d } else { 0 },
            stream: false,
            billable,
        });
    }

    if body.is_empty() {
        return Err(BadBody::Empty);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| BadBody::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let whole = estimate::value_tokens(&value);
    let shaped = if value.is_object() {
        match api {
            Api::OpenAiChat => openai::estimate_request(openai::Endpoint::Chat, value, d),
            Api::OpenAiCompletions => {
                openai::estimate_request(openai::Endpoint::Completions, value, d)
            }
            Api::OpenAiEmbeddings => {
                openai::estimate_request(openai::Endpoint::Embeddings, value, d)
            }
            Api::OpenAiInvocations => openai::estimate_request(openai::Endpoint::Any, value, d),
            Api::LlamaCppCompletion => {
                openai::estimate_request(openai::Endpoint::LlamaCpp, value, d)
            }
            Api::OpenAiResponses => responses::estimate_request(value, d),
            Api::AnthropicMessages => anthropic::estimate_request(value, d),
            Api::OllamaChat => ollama::estimate_request(ollama::Endpoint::Chat, value, d),
            Api::OllamaGenerate => ollama::estimate_request(ollama::Endpoint::Generate, value, d),
            Api::Generate => generate::estimate_request(value, d),
            Api::Unmetered | Api::Other => None,
        }
    } else {
        None
    };
    let mut estimate = shaped.unwrap_or(RequestEstimate {
        output_tokens: d,
        ..RequestEstimate::default()
    });
    estimate.input_tokens = estimate.input_tokens.max(whole);
    estimate.billable = true;
    Ok(estimate)
}

/// Token usage as a model server reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token processed, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from the server's prompt cache (part of `input_tokens`).
    pub cached_input_tokens: Option<u64>,
    /// Input tokens written to the prompt cache (part of `input_tokens`; Anthropic).
    pub cache_write_input_tokens: Option<u64>,
    /// Output tokens spent reasoning (part of `output_tokens`).
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// What a response said, whole or so far: one shape module's reading of a body or stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub model: Option<String>,
    /// The complete usage report.
    pub usage: Option<Usage>,
    /// Input usage reported ahead of the rest (Anthropic's `message_start`): exact input
    /// figures for a stream that ends before its output count.
    pub input: Option<Usage>,
    /// Output tokens reported without the input (TGI's `details.generated_tokens`).
    pub output: Option<u64>,
    pub generated: Generated,
}

/// What a finished response told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub usage: Option<Usage>,
    /// See [`Reading::input`]; only when `usage` is missing.
    pub reported_input: Option<Usage>,
    /// See [`Reading::output`]; only when `usage` is missing.
    pub reported_output: Option<u64>,
    pub model: Option<String>,
    /// Output tokens estimated from what was seen, for when `usage` is missing. `u64::MAX`
    /// when nothing could be read (a compressed body): the caller bills its reservation.
    pub output_estimate: u64,
    /// Why usage could not be read, if a limit or an encoding was in the way.
    pub unreadable: Option<&'static str>,
}

/// What a finished request is billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub usage: Usage,
    /// The model server reported it; otherwise it is an estimate.
    pub reported: bool,
    /// The model the request asked for, or the one the response names.
    pub model: Option<String>,
}

/// The bill of a finished request: the usage the server reported, or, for a billable
/// request (see [`RequestEstimate::billable`]) the model server ran (`ran`: it answered with
/// success, or the client left before it answered), an estimate: the reported input if there
/// was one, else the prompt estimate, and the reported output if there was one, else the
/// output seen, never more than the request allowed. `None`: nothing to bill.
pub fn bill(api: Api, estimate: &RequestEstimate, outcome: &Outcome, ran: bool) -> Option<Bill> {
    let model = estimate.model.clone().or_else(|| outcome.model.clone());
    if let Some(usage) = outcome.usage {
        return Some(Bill {
            usage,
            reported: true,
            model,
        });
    }
    if !ran || !estimate.billable || api == Api::Unmetered {
        return None;
    }
    let input = outcome.reported_input.unwrap_or(Usage {
        input_tokens: estimate.input_tokens,
        ..Usage::default()
    });
    let output = outcome
        .reported_output
        .unwrap_or_else(|| outcome.output_estimate.min(estimate.output_tokens));
    Some(Bill {
        usage: Usage {
            output_tokens: output,
            reasoning_tokens: None,
            ..input
        },
        reported: false,
        model,
    })
}

fn read_body(api: Api, json: &[u8]) -> Option<Reading> {
    match api {
        Api::OpenAiResponses => responses::read_body(json),
        Api::AnthropicMessages => anthropic::read_body(json),
        Api::OllamaChat | Api::OllamaGenerate => ollama::read_body(json),
        // Several prompts in one request are answered with a list.
        Api::LlamaCppCompletion => openai::read_bodies(json),
        Api::Generate => generate::read_body(json),
        _ => openai::read_body(json),
    }
}

/// A body labelled JSON that holds one JSON object per line: a stream (Ollama's) whose type a
/// proxy changed. `None` if no line reads as an object.
fn read_lines(api: Api, body: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    let mut objects = 0;
    let mut decoder = NdjsonDecoder::new(MAX_EVENT_BYTES);
    let mut on_line = |line: &[u8]| {
        if json::starts_object(line) {
            objects += 1;
            read_event(api, &mut reading, line);
        }
    };
    decoder.feed(body, &mut on_line);
    decoder.finish(&mut on_line);
    (objects > 1).then_some(reading)
}

fn read_event(api: Api, reading: &mut Reading, data: &[u8]) {
    match api {
        Api::OpenAiResponses => responses::read_event(reading, data),
        Api::AnthropicMessages => anthropic::read_event(reading, data),
        Api::OllamaChat | Api::OllamaGenerate => ollama::read_event(reading, data),
        Api::Generate => generate::read_event(reading, data),
        _ => openai::read_event(reading, data),
    }
}

fn usage_in_tail(api: Api, tail: &[u8]) -> Option<Usage> {
    match api {
        Api::OpenAiResponses => responses::usage_in_tail(tail),
        Api::AnthropicMessages => anthropic::usage_in_tail(tail),
        Api::OllamaChat | Api::OllamaGenerate => ollama::usage_in_tail(tail),
        Api::Generate => generate::usage_in_tail(tail),
        _ => openai::usage_in_tail(tail),
    }
}

enum Framing {
    Sse(SseDecoder),
    Ndjson(NdjsonDecoder),
}

enum Mode {
    /// A JSON body, kept whole up to a bound; past it, only its last bytes.
    Json {
        body: Vec<u8>,
        overflowed: bool,
        seen: usize,
    },
    /// A stream, read event by event (or line by line).
    Events {
        framing: Framing,
        reading: Box<Reading>,
    },
    /// Nothing to parse: a compressed body, or a type that carries no usage.
    Skip {
        why: &'static str,
        compressed: bool,
        seen: usize,
    },
}

/// Reads usage from a response as it streams past.
pub struct ResponseMeter {
    api: Api,
    mode: Mode,
    max_body: usize,
    /// Bytes of body seen, whatever the mode.
    seen: usize,
}

impl ResponseMeter {
    /// Chooses how to read a response of this shape from its headers.
    pub fn new(
        api: Api,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        max_body: usize,
    ) -> Self {
        let encoded = content_encoding
            .map(str::trim)
            .is_some_and(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let events = |framing| Mode::Events {
            framing,
            reading: Box::default(),
        };
        let mode = if encoded {
            Mode::Skip {
                why: "the response is compressed",
                compressed: true,
                seen: 0,
            }
        } else {
            match media.as_deref() {
                Some("text/event-stream") => events(Framing::Sse(SseDecoder::new(MAX_EVENT_BYTES))),
                Some(
                    "application/x-ndjson"
                    | "application/ndjson"
                    | "application/jsonl"
                    | "application/x-jsonlines",
                ) => events(Framing::Ndjson(NdjsonDecoder::new(MAX_EVENT_BYTES))),
                // Some servers omit the type; their body is still worth a look.
                Some("application/json") | None => Mode::Json {
                    body: Vec::new(),
                    overflowed: false,
                    seen: 0,
                },
                Some(m) if m.ends_with("+json") => Mode::Json {
                    body: Vec::new(),
                    overflowed: false,
                    seen: 0,
                },
                Some(_) => Mode::Skip {
                    why: "the response is not JSON or a stream",
                    compressed: false,
                    seen: 0,
                },
            }
        };
        ResponseMeter {
            api,
            mode,
            max_body,
            seen: 0,
        }
    }

    /// Whether the response is an uncompressed event stream (one the filter can edit).
    pub fn is_event_stream(&self) -> bool {
        matches!(
            self.mode,
            Mode::Events {
                framing: Framing::Sse(_),
                ..
            }
        )
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let api = self.api;
        self.seen = self.seen.saturating_add(chunk.len());
        match &mut self.mode {
            Mode::Json {
                body,
                overflowed,
                seen,
            } => {
                *seen = seen.saturating_add(chunk.len());
                body.extend_from_slice(chunk);
                let bound = if *overflowed {
                    TAIL_BYTES
                } else {
                    self.max_body
                };
                if body.len() > bound {
                    *overflowed = true;
                    let excess = body.len().saturating_sub(TAIL_BYTES);
                    body.drain(..excess);
                }
            }
            Mode::Events { framing, reading } => match framing {
                Framing::Sse(d) => d.feed(chunk, &mut |e| read_event(api, reading, e.data)),
                Framing::Ndjson(d) => d.feed(chunk, &mut |line| read_event(api, reading, line)),
            },
            Mode::Skip { seen, .. } => *seen = seen.saturating_add(chunk.len()),
        }
    }

    /// Ends the body and returns what it said.
    pub fn finish(mut self) -> Outcome {
        let api = self.api;
        let mut outcome = Outcome::default();
        match &mut self.mode {
            Mode::Json {
                body,
                overflowed,
                seen,
            } => {
                if *overflowed {
                    outcome.usage = usage_in_tail(api, body);
                    if outcome.usage.is_none() {
                        outcome.unreadable = Some(
                            "the body is over max_response_body_bytes and its end holds no usage",
                        );
                        outcome.output_estimate = estimate::bytes_tokens(*seen);
                    }
                } else if let Some(r) = read_body(api, body).or_else(|| read_lines(api, body)) {
                    outcome.usage = r.usage;
                    outcome.reported_input = r.input.filter(|_| r.usage.is_none());
                    outcome.reported_output = r.output.filter(|_| r.usage.is_none());
                    outcome.model = r.model;
                    outcome.output_estimate = r.generated.tokens();
                } else {
                    outcome.output_estimate = estimate::bytes_tokens(*seen);
                }
            }
            Mode::Events { framing, reading } => {
                match framing {
                    Framing::Sse(d) => d.finish(&mut |e| read_event(api, reading, e.data)),
                    Framing::Ndjson(d) => d.finish(&mut |line| read_event(api, reading, line)),
                }
                let reading = std::mem::take(&mut **reading);
                outcome.usage = reading.usage;
                outcome.reported_input = reading.input.filter(|_| reading.usage.is_none());
                outcome.reported_output = reading.output.filter(|_| reading.usage.is_none());
                outcome.model = reading.model;
                outcome.output_estimate = reading.generated.tokens();
            }
            Mode::Skip {
                why,
                compressed,
                seen,
            } => {
                outcome.unreadable = Some(why);
                // Nothing of a compressed body can be read: the caller bills its reservation.
                outcome.output_estimate = if *compressed {
                    u64::MAX
                } else {
                    estimate::bytes_tokens(*seen)
                };
            }
        }
        // A route of no known shape may put its answer anywhere: all of what came counts.
        if api == Api::Other && outcome.output_estimate != u64::MAX {
            outcome.output_estimate = outcome
                .output_estimate
                .max(estimate::bytes_tokens(self.seen));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn api_names_round_trip() {
        for api in Api::ALL {
            assert_eq!(Api::from_name(api.as_str()), Some(api));
        }
        assert_eq!(Api::from_name("openai"), None);
    }

    fn est(api: Api, body: &[u8]) -> Result<RequestEstimate, BadBody> {
        estimate_request(api, "POST", body, 64)
    }

    #[test]
    fn an_inference_body_must_be_readable_json() {
        let not_json: [&[u8]; 10] = [
            b"hello world!",
            br#"{"messages":[],"temperature":NaN}"#,
            br#"{"messages":[],"temperature":Infinity}"#,
            br#"{"messages":[],"\ud800":1}"#,
            br#"{"messages":[{"role":"user","content":"\udc00"}]}"#,
            br#"{"messages":[],"temperature":1e999}"#,
            b"\xef\xbb\xbf{\"messages\":[]}",
            b"{\"messages\": [",
            b"\xff\xfe{\x00}\x00",
            b"   ",
        ];
        for body in not_json {
            for api in Api::ALL.into_iter().filter(|a| a.is_inference()) {
                let e = est(api, body);
                assert!(
                    matches!(e, Err(BadBody::NotJson { .. })),
                    "{} {}: {e:?}",
                    api.as_str(),
                    String::from_utf8_lossy(body)
                );
            }
            // Other routes take any body, sized from all of it.
            let e = est(Api::Other, body).unwrap();
            assert!(e.input_tokens >= 1 && e.billable, "{e:?}");
        }
        // Nesting deeper than serde_json follows (128), which Python servers take.
        let deep = format!(
            r#"{{"messages":[],"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            est(Api::OpenAiChat, deep.as_bytes()),
            Err(BadBody::NotJson { .. })
        ));
        assert_eq!(est(Api::OllamaChat, b""), Err(BadBody::Empty));

        let bad = est(Api::OpenAiChat, br#"{"a":NaN}"#).unwrap_err();
        assert_eq!(bad.code(), "invalid_json");
        let message = bad.message();
        assert!(message.contains("line 1, column 6"), "{message}");
        assert!(
            !message.contains("NaN,") && !message.contains("\"a\""),
            "{message}"
        );
        assert!(BadBody::Empty.message().contains("empty"));

        // Readable JSON that is not an object is the server's to refuse: estimated from size.
        let e = est(Api::OpenAiChat, b"[1,2]").unwrap();
        assert_eq!((e.input_tokens, e.output_tokens), (3, 64));
    }

    #[test]
    fn other_routes_reserve_and_bill_only_a_post_that_sends_something() {
        let e = est(Api::Other, b"hello world!").unwrap();
        assert_eq!((e.input_tokens, e.output_tokens, e.billable), (3, 64, true));
        for (method, body) in [
            ("GET", &b""[..]),
            ("POST", b""),
            ("DELETE", b"{\"model\":\"m\"}"),
        ] {
            let e = estimate_request(Api::Other, method, body, 64).unwrap();
            assert_eq!((e.output_tokens, e.billable), (0, false), "{method}");
        }
        // A body that is not text (a file upload) is sized at the media rate.
        let upload = vec![0xffu8; 1 << 20];
        let e = est(Api::Other, &upload).unwrap();
        assert_eq!(e.input_tokens, 4096);
        // Counting routes are checked against the tenant's models, never billed an estimate.
        let e = est(Api::Unmetered, br#"{"model":"claude-x","messages":[]}"#).unwrap();
        assert_eq!(e.model.as_deref(), Some("claude-x"));
        assert_eq!((e.output_tokens, e.billable), (0, false));
        assert_eq!(est(Api::Other, br#"{"model":"m"}"#).unwrap().model, None);
    }

    #[test]
    fn the_input_estimate_is_never_below_the_body_size() {
        // 100 KB of tool definitions besides a one-word message.
        let tool = serde_json::json!({"type": "function", "function": {"name": "lookup",
            "description": "d".repeat(1000), "parameters": {"type": "object",
            "properties": {"q": {"type": "string", "description": "x".repeat(1000)}}}}});
        let tools: Vec<_> = (0..50).map(|_| tool.clone()).collect();
        let body = serde_json::json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}], "tools": tools})
        .to_string();
        assert!(body.len() > 100_000);
        let e = est(Api::OpenAiChat, body.as_bytes()).unwrap();
        assert!(
            e.input_tokens >= (body.len() as u64) * 9 / 40,
            "{} for {}",
            e.input_tokens,
            body.len()
        );
        assert!(e.input_tokens <= (body.len() as u64).div_ceil(4));

        // Whatever the shape: a response schema, tool calls, Anthropic tools.
        for (api, body) in [
            (
                Api::OpenAiResponses,
                serde_json::json!({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"description": "s".repeat(40_000)}}}}),
            ),
            (
                Api::AnthropicMessages,
                serde_json::json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "t", "description": "t".repeat(40_000), "input_schema": {"type": "object"}}]}),
            ),
            (
                Api::OllamaChat,
                serde_json::json!({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": "a".repeat(40_000)}}}]}]}),
            ),
            (
                Api::OpenAiChat,
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "file", "file": {"file_data": format!("data:application/pdf;base64,JVBER{}", "A".repeat(40_000))}}]}]}),
            ),
        ] {
            let e = est(api, body.to_string().as_bytes()).unwrap();
            assert!(
                (10_000..10_100).contains(&e.input_tokens),
                "{}: {}",
                api.as_str(),
                e.input_tokens
            );
        }

        // Images count, at the media rate: a 400 KB base64 PNG is not 100 000 tokens.
        let png = format!("data:image/png;base64,iVBORw0KGgo{}", "A".repeat(400_000));
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": png}}]}]});
        let e = est(Api::OpenAiChat, body.to_string().as_bytes()).unwrap();
        assert!(
            (1_563..1_600).contains(&e.input_tokens),
            "{}",
            e.input_tokens
        );
    }

    #[test]
    fn zero_caps_fall_through_in_every_shape() {
        for (api, body, want) in [
            (
                Api::OpenAiChat,
                r#"{"messages":[],"max_completion_tokens":0,"max_tokens":5000}"#,
                5000,
            ),
            (
                Api::OpenAiResponses,
                r#"{"input":"x","max_output_tokens":0}"#,
                64,
            ),
            (
                Api::AnthropicMessages,
                r#"{"messages":[],"max_tokens":0}"#,
                64,
            ),
            (
                Api::OllamaChat,
                r#"{"messages":[],"options":{"num_predict":0}}"#,
                64,
            ),
            (
                Api::OllamaGenerate,
                r#"{"prompt":"x","options":{"num_predict":-2}}"#,
                64,
            ),
            (
                Api::LlamaCppCompletion,
                r#"{"prompt":"x","n_predict":0,"max_tokens":0}"#,
                64,
            ),
            (
                Api::Generate,
                r#"{"inputs":"x","parameters":{"max_new_tokens":0}}"#,
                64,
            ),
        ] {
            let e = est(api, body.as_bytes()).unwrap();
            assert_eq!(e.output_tokens, want, "{}", api.as_str());
        }
    }

    fn meter(api: Api, ct: &str, chunks: &[&[u8]]) -> Outcome {
        let mut m = ResponseMeter::new(api, Some(ct), None, 1 << 20);
        for c in chunks {
            m.feed(c);
        }
        m.finish()
    }

    #[test]
    fn json_body_split_in_chunks() {
        let body = br#"{"model":"m","choices":[{"message":{"content":"abcdefgh"}}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;
        let (a, b) = body.split_at(40);
        let o = meter(Api::OpenAiChat, "application/json; charset=utf-8", &[a, b]);
        assert_eq!(
            o.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 9))
        );
        assert_eq!(o.model.as_deref(), Some("m"));
        assert_eq!(o.output_estimate, 2);
    }

    #[test]
    fn json_body_over_the_bound_without_usage_is_estimated_from_its_size() {
        let mut m = ResponseMeter::new(Api::OpenAiChat, Some("application/json"), None, 1024);
        m.feed(&[b' '; 1000]);
        m.feed(&[b' '; 100]);
        let o = m.finish();
        assert_eq!(o.usage, None);
        assert!(o.unreadable.is_some());
        assert_eq!(o.output_estimate, 275);
    }

    #[test]
    fn json_body_over_the_bound_still_yields_the_usage_at_its_end() {
        let mut body = br#"{"object":"list","data":[{"embedding":["#.to_vec();
        for _ in 0..40_000 {
            body.extend_from_slice(b"0.125,");
        }
        body.extend_from_slice(
            br#"0.5]}],"model":"e","usage":{"prompt_tokens":321,"total_tokens":321}}"#,
        );
        for chunk_size in [7, 1000, 65_536, body.len()] {
            let mut m =
                ResponseMeter::new(Api::OpenAiEmbeddings, Some("application/json"), None, 1024);
            for c in body.chunks(chunk_size) {
                m.feed(c);
            }
            let o = m.finish();
            let u = o.usage.map(|u| (u.input_tokens, u.output_tokens));
            assert_eq!(u, Some((321, 0)), "chunks of {chunk_size}");
            assert!(o.unreadable.is_none());
        }
    }

    #[test]
    fn compressed_and_foreign_bodies_are_skipped() {
        let mut m = ResponseMeter::new(
            Api::OpenAiChat,
            Some("application/json"),
            Some("gzip"),
            1024,
        );
        m.feed(b"\x1f\x8b...");
        let o = m.finish();
        assert_eq!(o.unreadable, Some("the response is compressed"));
        assert_eq!(o.output_estimate, u64::MAX);
        let o = meter(Api::OpenAiChat, "text/html", &[b"<html>"]);
        assert!(o.unreadable.is_some());
        assert_eq!(o.output_estimate, 2);
        let m = ResponseMeter::new(
            Api::OpenAiChat,
            Some("application/json"),
            Some("identity"),
            1024,
        );
        assert!(m.finish().unreadable.is_none());
    }

    #[test]
    fn event_streams_and_line_streams_are_told_apart() {
        let sse = ResponseMeter::new(Api::OpenAiChat, Some("text/event-stream"), None, 1024);
        assert!(sse.is_event_stream());
        for (ct, ce) in [
            ("application/x-ndjson", None),
            ("application/json", None),
            ("text/event-stream", Some("br")),
        ] {
            assert!(!ResponseMeter::new(Api::OllamaChat, Some(ct), ce, 1024).is_event_stream());
        }
        let o = meter(
            Api::OllamaGenerate,
            "application/x-ndjson",
            &[
                b"{\"response\":\"a\",\"done\":false}\n{\"done\":true,",
                b"\"eval_count\":2}\n",
            ],
        );
        assert_eq!(
            o.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((0, 2))
        );
    }

    #[test]
    fn a_line_stream_labelled_json_is_read_line_by_line() {
        let body = b"{\"model\":\"m\",\"response\":\"abcd\",\"done\":false}\n{\"done\":true,\"prompt_eval_count\":3,\"eval_count\":1}\n";
        let o = meter(Api::OllamaGenerate, "application/json", &[body]);
        assert_eq!(
            o.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 1))
        );
        assert_eq!(o.model.as_deref(), Some("m"));
        let o = meter(
            Api::OllamaGenerate,
            "application/json",
            &[b"{\"a\":1}\nnot json\n"],
        );
        assert_eq!((o.usage, o.output_estimate), (None, 5));
    }

    #[test]
    fn stream_without_usage_is_estimated_from_its_text() {
        let o = meter(
            Api::OpenAiChat,
            "text/event-stream",
            &[b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"bcdefghijk\"}}]}\n\ndata: [DONE]\n\n"],
        );
        assert_eq!(o.usage, None);
        assert_eq!(o.output_estimate, 3);
        assert_eq!(o.model.as_deref(), Some("m"));
    }

    #[test]
    fn garbage_stream_does_not_panic() {
        let o = meter(
            Api::AnthropicMessages,
            "text/event-stream",
            &[b"data: {\"usage\": nope\n\n\xff\xfe\r\r\n", b"data:"],
        );
        assert_eq!(o.usage, None);
    }

    fn outcome(usage: Option<Usage>, input: Option<Usage>, output: u64) -> Outcome {
        Outcome {
            usage,
            reported_input: input,
            output_estimate: output,
            ..Outcome::default()
        }
    }

    #[test]
    fn what_is_billed() {
        let estimate = RequestEstimate {
            model: Some("asked".into()),
            input_tokens: 10,
            output_tokens: 50,
            stream: true,
            billable: true,
        };
        let reported = Usage {
            input_tokens: 7,
            output_tokens: 70,
            ..Usage::default()
        };
        // Reported usage is billed as it is, even past the reservation or after an error.
        let b = bill(
            Api::Other,
            &estimate,
            &outcome(Some(reported), None, 0),
            false,
        )
        .unwrap();
        assert_eq!(
            (b.usage, b.reported, b.model.as_deref()),
            (reported, true, Some("asked"))
        );
        // No usage: an estimate, capped at the reservation, for inference that ran.
        let b = bill(Api::OpenAiChat, &estimate, &outcome(None, None, 80), true).unwrap();
        assert_eq!(
            (b.usage.input_tokens, b.usage.output_tokens, b.reported),
            (10, 50, false)
        );
        // Input reported on its own replaces the prompt estimate.
        let input = Usage {
            input_tokens: 30,
            cached_input_tokens: Some(20),
            ..Usage::default()
        };
        let b = bill(
            Api::AnthropicMessages,
            &estimate,
            &outcome(None, Some(input), 4),
            true,
        )
        .unwrap();
        assert_eq!(
            (
                b.usage.input_tokens,
                b.usage.cached_input_tokens,
                b.usage.output_tokens
            ),
            (30, Some(20), 4)
        );
        assert_eq!(
            bill(Api::OpenAiChat, &estimate, &outcome(None, None, 3), false),
            None
        );
        // A route of no known shape: billed an estimate only for a POST with a body.
        let b = bill(Api::Other, &estimate, &outcome(None, None, 80), true).unwrap();
        assert_eq!((b.usage.input_tokens, b.usage.output_tokens), (10, 50));
        let unbillable = RequestEstimate {
            billable: false,
            ..estimate.clone()
        };
        assert_eq!(
            bill(Api::Other, &unbillable, &outcome(None, None, 3), true),
            None
        );
        assert_eq!(
            bill(Api::Unmetered, &estimate, &outcome(None, None, 3), true),
            None
        );
        // Output reported alone (TGI) is billed as reported, past what was seen.
        let tgi = Outcome {
            reported_output: Some(20),
            output_estimate: 3,
            ..Outcome::default()
        };
        let b = bill(Api::Generate, &estimate, &tgi, true).unwrap();
        assert_eq!(
            (b.usage.input_tokens, b.usage.output_tokens, b.reported),
            (10, 20, false)
        );
    }

    #[test]
    fn an_unknown_route_is_billed_all_it_answered() {
        let o = meter(
            Api::Other,
            "application/json",
            &[br#"{"content":"a long answer in a format nobody reads"}"#],
        );
        assert_eq!((o.usage, o.output_estimate), (None, 13));
        let o = meter(
            Api::Other,
            "text/event-stream",
            &[b"data: {\"token\":\"abcd\"}\n\n"],
        );
        assert_eq!(o.output_estimate, 6);
        let o = meter(
            Api::OpenAiChat,
            "text/event-stream",
            &[b"data: {\"token\":\"abcd\"}\n\n"],
        );
        assert_eq!(o.output_estimate, 0);
    }
}
