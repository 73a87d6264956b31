//! Token metering: what a request is expected to cost, and what the model server reports.
//!
//! - `openai`: the OpenAI request and response shapes;
//! - `sse`: the incremental `text/event-stream` decoder;
//! - `estimate`: the fallback rule for tokens nobody reported.
//!
//! A response is read as it passes, chunk by chunk: a JSON body is kept up to a bound and
//! read at its end; a stream is decoded event by event and only the events that mention
//! `usage` are parsed. Nothing here fails: input that cannot be read leaves the usage
//! unknown, and the caller falls back to an estimate.

pub mod estimate;
pub mod openai;
pub mod sse;

use openai::Endpoint;
use sse::SseDecoder;

/// The largest single stream event kept for parsing. Usage events are small; an event this
/// large is content, and skipping it costs only an output estimate.
const MAX_EVENT_BYTES: usize = 256 * 1024;

/// How much of the end of a JSON body too large to keep is kept anyway: usage comes last.
const TAIL_BYTES: usize = 64 * 1024;

/// The API shape of a request, decided by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    /// Any other path: forwarded and limited, metered only if the response reports usage.
    Other,
}

impl Api {
    pub fn from_path(path: &str) -> Api {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        match path {
            "/v1/chat/completions" | "/chat/completions" => Api::OpenAiChat,
            "/v1/completions" | "/completions" => Api::OpenAiCompletions,
            "/v1/embeddings" | "/embeddings" => Api::OpenAiEmbeddings,
            _ => Api::Other,
        }
    }

    /// The name written into billing records.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai_chat",
            Api::OpenAiCompletions => "openai_completions",
            Api::OpenAiEmbeddings => "openai_embeddings",
            Api::Other => "unknown",
        }
    }

    /// Whether a successful response without usage still consumed tokens worth estimating.
    pub fn is_inference(self) -> bool {
        self != Api::Other
    }

    fn endpoint(self) -> Option<Endpoint> {
        match self {
            Api::OpenAiChat => Some(Endpoint::Chat),
            Api::OpenAiCompletions => Some(Endpoint::Completions),
            Api::OpenAiEmbeddings => Some(Endpoint::Embeddings),
            Api::Other => None,
        }
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

/// Estimates a request body. Bodies that are not JSON objects, or paths of no known
/// shape, are estimated from their size with the default output reservation.
pub fn estimate_request(api: Api, body: &[u8], default_max_tokens: u64) -> RequestEstimate {
    if body.is_empty() {
        return RequestEstimate::default();
    }
    api.endpoint()
        .and_then(|e| openai::estimate_request(e, body, default_max_tokens))
        .unwrap_or_else(|| RequestEstimate {
            input_tokens: estimate::bytes_tokens(body.len()),
            output_tokens: if api.is_inference() {
                default_max_tokens
            } else {
                0
            },
            ..RequestEstimate::default()
        })
}

/// Token usage as a model server reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token processed, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// What a finished response told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub usage: Option<Usage>,
    pub model: Option<String>,
    /// Output tokens estimated from what was seen, for when `usage` is missing. `u64::MAX`
    /// when nothing could be read (a compressed body): the caller bills its reservation.
    pub output_estimate: u64,
    /// Why usage could not be read, if a limit or an encoding was in the way.
    pub unreadable: Option<&'static str>,
}

enum Mode {
    /// A JSON body, kept whole up to a bound; past it, only its last bytes.
    Json {
        body: Vec<u8>,
        overflowed: bool,
        seen: usize,
    },
    Sse {
        decoder: SseDecoder,
        events: u64,
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
    mode: Mode,
    max_body: usize,
    outcome: Outcome,
}

impl ResponseMeter {
    /// Chooses how to read a response from its headers.
    pub fn new(
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
        let json = Mode::Json {
            body: Vec::new(),
            overflowed: false,
            seen: 0,
        };
        let mode = if encoded {
            Mode::Skip {
                why: "the response is compressed",
                compressed: true,
                seen: 0,
            }
        } else {
            match media.as_deref() {
                Some("text/event-stream") => Mode::Sse {
                    decoder: SseDecoder::new(MAX_EVENT_BYTES),
                    events: 0,
                },
                Some(m) if m == "application/json" || m.ends_with("+json") => json,
                // Some servers omit the type; their body is still worth a look.
                None => json,
                Some(_) => Mode::Skip {
                    why: "the response is not JSON or an event stream",
                    compressed: false,
                    seen: 0,
                },
            }
        };
        ResponseMeter {
            mode,
            max_body,
            outcome: Outcome::default(),
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let outcome = &mut self.outcome;
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
            Mode::Sse { decoder, events } => {
                decoder.feed(chunk, &mut |e| on_event(outcome, events, e.data));
            }
            Mode::Skip { seen, .. } => *seen = seen.saturating_add(chunk.len()),
        }
    }

    /// Ends the body and returns what it said.
    pub fn finish(mut self) -> Outcome {
        let mut outcome = self.outcome;
        match &mut self.mode {
            Mode::Json {
                body,
                overflowed,
                seen,
            } => {
                if *overflowed {
                    outcome.usage = openai::usage_in_tail(body);
                    if outcome.usage.is_none() {
                        outcome.unreadable = Some(
                            "the body is over max_response_body_bytes and its end holds no usage",
                        );
                        outcome.output_estimate = estimate::bytes_tokens(*seen);
                    }
                } else if let Some(r) = openai::read_response(body) {
                    outcome.usage = r.usage;
                    outcome.model = r.model;
                    outcome.output_estimate = r.text_tokens;
                } else {
                    outcome.output_estimate = estimate::bytes_tokens(*seen);
                }
            }
            Mode::Sse { decoder, events } => {
                decoder.finish(&mut |e| on_event(&mut outcome, events, e.data));
                outcome.output_estimate = *events;
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

fn on_event(outcome: &mut Outcome, events: &mut u64, data: &[u8]) {
    if data == b"[DONE]" {
        return;
    }
    // Most chunks carry one generated token; their count stands in for a missing usage.
    *events += 1;
    let mentions_usage = data.windows(7).any(|w| w == b"\"usage\"");
    if !mentions_usage && outcome.model.is_some() {
        return;
    }
    if let Some(r) = openai::read_response(data) {
        if outcome.model.is_none() {
            outcome.model = r.model;
        }
        if r.usage.is_some() {
            outcome.usage = r.usage;
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn api_from_path() {
        assert_eq!(Api::from_path("/v1/chat/completions"), Api::OpenAiChat);
        assert_eq!(Api::from_path("/v1/chat/completions?x=1"), Api::OpenAiChat);
        assert_eq!(Api::from_path("/v1/chat/completions/"), Api::OpenAiChat);
        assert_eq!(Api::from_path("/v1/completions"), Api::OpenAiCompletions);
        assert_eq!(Api::from_path("/v1/embeddings"), Api::OpenAiEmbeddings);
        assert_eq!(Api::from_path("/api/chat"), Api::Other);
        assert_eq!(Api::from_path(""), Api::Other);
    }

    #[test]
    fn request_that_is_not_json_is_estimated_from_size() {
        let e = estimate_request(Api::OpenAiChat, b"hello world!", 64);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 64));
        let e = estimate_request(Api::Other, b"hello world!", 64);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 0));
        assert_eq!(
            estimate_request(Api::OpenAiChat, b"", 64),
            RequestEstimate::default()
        );
    }

    fn meter(ct: &str, chunks: &[&[u8]]) -> Outcome {
        let mut m = ResponseMeter::new(Some(ct), None, 1 << 20);
        for c in chunks {
            m.feed(c);
        }
        m.finish()
    }

    #[test]
    fn json_body_split_in_chunks() {
        let body = br#"{"model":"m","choices":[{"message":{"content":"abcdefgh"}}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;
        let (a, b) = body.split_at(40);
        let o = meter("application/json; charset=utf-8", &[a, b]);
        assert_eq!(
            o.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 9))
        );
        assert_eq!(o.model.as_deref(), Some("m"));
        assert_eq!(o.output_estimate, 2);
    }

    #[test]
    fn json_body_over_the_bound_without_usage_is_estimated_from_its_size() {
        let mut m = ResponseMeter::new(Some("application/json"), None, 1024);
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
            let mut m = ResponseMeter::new(Some("application/json"), None, 1024);
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
        let mut m = ResponseMeter::new(Some("application/json"), Some("gzip"), 1024);
        m.feed(b"\x1f\x8b...");
        let o = m.finish();
        assert_eq!(o.unreadable, Some("the response is compressed"));
        assert_eq!(o.output_estimate, u64::MAX);
        let o = meter("text/html", &[b"<html>"]);
        assert!(o.unreadable.is_some());
        assert_eq!(o.output_estimate, 2);
        let m = ResponseMeter::new(Some("application/json"), Some("identity"), 1024);
        assert!(m.finish().unreadable.is_none());
    }

    /// A stream as OpenAI sends it with `stream_options.include_usage`.
    const OPENAI_STREAM: &[u8] = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn stream_usage_from_the_final_chunk_at_any_split() {
        for i in 0..OPENAI_STREAM.len() {
            let (a, b) = OPENAI_STREAM.split_at(i);
            let o = meter("text/event-stream", &[a, b]);
            let u = o.usage.unwrap();
            assert_eq!((u.input_tokens, u.output_tokens), (9, 1), "split at {i}");
            assert_eq!(u.cached_input_tokens, Some(0));
            assert_eq!(o.model.as_deref(), Some("gpt-4o-mini"));
            assert_eq!(o.output_estimate, 4);
        }
    }

    #[test]
    fn stream_without_usage_counts_events() {
        let o = meter(
            "text/event-stream",
            &[b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\ndata: [DONE]\n\n"],
        );
        assert_eq!(o.usage, None);
        assert_eq!(o.output_estimate, 2);
        assert_eq!(o.model.as_deref(), Some("m"));
    }

    #[test]
    fn garbage_stream_does_not_panic() {
        let o = meter(
            "text/event-stream",
            &[b"data: {\"usage\": nope\n\n\xff\xfe\r\r\n", b"data:"],
        );
        assert_eq!(o.usage, None);
    }
}
