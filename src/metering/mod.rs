//! Token metering: what a request is expected to cost, and what the model server reports.
//!
//! - `routes`: which API shape a request speaks, from its path;
//! - `openai`, `responses`, `anthropic`, `ollama`: one module per API shape, each reading
//!   its requests (the admission estimate) and its responses (usage, model, generated text);
//! - `include_usage`: asking OpenAI streams for usage on the client's behalf, and hiding the
//!   answer from the client;
//! - `sse`, `ndjson`: the incremental stream decoders;
//! - `json`: reading JSON as the Python servers do; `estimate`: the fallback rule for tokens
//!   nobody reported.
//!
//! A response is read as it passes, chunk by chunk: a JSON body is kept up to a bound and
//! read at its end (past the bound, only its tail, where usage is); a stream is decoded event
//! by event (SSE) or line by line (NDJSON), keeping only the event being assembled. Nothing
//! here fails: input that cannot be read leaves the usage unknown, and the request is billed
//! an estimate from what was seen.

pub mod anthropic;
pub mod estimate;
pub mod include_usage;
pub mod json;
pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod routes;
pub mod sse;

pub use json::MAX_REPORTED_TOKENS;

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
    AnthropicMessages,
    OllamaChat,
    OllamaGenerate,
    /// Any other route: forwarded and limited, metered only if the response reports usage
    /// in the OpenAI shape.
    Other,
}

impl Api {
    /// Every shape, by the name billing records and the configuration use.
    pub const ALL: [Api; 8] = [
        Api::OpenAiChat,
        Api::OpenAiCompletions,
        Api::OpenAiEmbeddings,
        Api::OpenAiResponses,
        Api::AnthropicMessages,
        Api::OllamaChat,
        Api::OllamaGenerate,
        Api::Other,
    ];

    /// The name written into billing records and read from `metering.routes[].api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiCompletions => "openai_completions",
            Api::OpenAiEmbeddings => "openai_embeddings",
            Api::OpenAiResponses => "openai_responses",
            Api::AnthropicMessages => "anthropic_messages",
            Api::OllamaChat => "ollama_chat",
            Api::OllamaGenerate => "ollama_generate",
            Api::Other => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether a successful response without usage still consumed tokens worth estimating.
    pub fn is_inference(self) -> bool {
        self != Api::Other
    }

    /// Whether a stream of this shape reports usage only when the request asks for it
    /// (`stream_options.include_usage`).
    pub fn usage_on_request(self) -> bool {
        matches!(self, Api::OpenAiChat | Api::OpenAiCompletions)
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
}

impl RequestEstimate {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Estimates a request body. Bodies that are not JSON objects, or routes of no known
/// shape, are estimated from their size with the default output reservation.
pub fn estimate_request(api: Api, body: &[u8], default_max_tokens: u64) -> RequestEstimate {
    if body.is_empty() {
        return RequestEstimate::default();
    }
    let d = default_max_tokens;
    let shaped = match api {
        Api::OpenAiChat => openai::estimate_request(openai::Endpoint::Chat, body, d),
        Api::OpenAiCompletions => openai::estimate_request(openai::Endpoint::Completions, body, d),
        Api::OpenAiEmbeddings => openai::estimate_request(openai::Endpoint::Embeddings, body, d),
        Api::OpenAiResponses => responses::estimate_request(body, d),
        Api::AnthropicMessages => anthropic::estimate_request(body, d),
        Api::OllamaChat => ollama::estimate_request(ollama::Endpoint::Chat, body, d),
        Api::OllamaGenerate => ollama::estimate_request(ollama::Endpoint::Generate, body, d),
        Api::Other => None,
    };
    shaped.unwrap_or_else(|| RequestEstimate {
        input_tokens: estimate::bytes_tokens(body.len()),
        output_tokens: if api.is_inference() { d } else { 0 },
        ..RequestEstimate::default()
    })
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
    pub generated: Generated,
}

/// What a finished response told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub usage: Option<Usage>,
    /// See [`Reading::input`]; only when `usage` is missing.
    pub reported_input: Option<Usage>,
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

/// The bill of a finished request: the usage the server reported, or, for an inference
/// request the model server ran (`ran`: it answered with success, or the client left before
/// it answered), an estimate: the reported input if there was one, else the prompt estimate,
/// and the output seen, never more than the request allowed. `None`: nothing to bill.
pub fn bill(api: Api, estimate: &RequestEstimate, outcome: &Outcome, ran: bool) -> Option<Bill> {
    let model = estimate.model.clone().or_else(|| outcome.model.clone());
    if let Some(usage) = outcome.usage {
        return Some(Bill {
            usage,
            reported: true,
            model,
        });
    }
    if !ran || !api.is_inference() {
        return None;
    }
    let input = outcome.reported_input.unwrap_or(Usage {
        input_tokens: estimate.input_tokens,
        ..Usage::default()
    });
    Some(Bill {
        usage: Usage {
            output_tokens: outcome.output_estimate.min(estimate.output_tokens),
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
        _ => openai::read_event(reading, data),
    }
}

fn usage_in_tail(api: Api, tail: &[u8]) -> Option<Usage> {
    match api {
        Api::OpenAiResponses => responses::usage_in_tail(tail),
        Api::AnthropicMessages => anthropic::usage_in_tail(tail),
        Api::OllamaChat | Api::OllamaGenerate => ollama::usage_in_tail(tail),
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

    #[test]
    fn request_that_is_not_json_is_estimated_from_size() {
        let e = estimate_request(Api::OpenAiChat, b"hello world!", 64);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 64));
        let e = estimate_request(Api::AnthropicMessages, b"hello world!", 64);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 64));
        let e = estimate_request(Api::Other, b"hello world!", 64);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 0));
        assert_eq!(
            estimate_request(Api::OpenAiChat, b"", 64),
            RequestEstimate::default()
        );
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
        assert_eq!(
            bill(Api::Other, &estimate, &outcome(None, None, 3), true),
            None
        );
    }
}
