//! The native `/generate` of Text Generation Inference (TGI) and of SGLang, which share the
//! path and little else.
//!
//! - TGI: the request holds `inputs` and `parameters` (`max_new_tokens`, `best_of`,
//!   `details`). The answer is `{"generated_text", "details"}` (a list of them on TGI's `/`
//!   route); `details` comes only when the request set `details: true` and carries
//!   `generated_tokens`, but the prompt's size only in some versions (`prompt_tokens`), or as
//!   the `prefill` tokens listed with `decoder_input_details: true`. `/generate_stream` sends
//!   one event per token (`token.text`); the last one has `generated_text` and `details`
//!   (`generated_tokens`, and `input_length` in recent versions). Without the prompt's size,
//!   the output is billed as reported and the input as estimated.
//! - SGLang: the request holds `text` (or `input_ids`), a list of them for a batch, and
//!   `sampling_params` (`max_new_tokens`, `n`). The answer is `{"text", "meta_info"}` (a list
//!   for a batch), `meta_info` holding `prompt_tokens` (cached ones included),
//!   `completion_tokens` and `cached_tokens`. A stream (`"stream": true`) repeats the whole
//!   text so far and the counts so far in every event, so the last event counts.

use serde::Deserialize;
use serde_json::Value;

use super::json::{self, cap, clamp, count, flag, lenient, object};
use super::{estimate, Reading, RequestEstimate, Usage};

#[derive(Deserialize)]
struct Request {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    /// TGI's prompt.
    #[serde(default, deserialize_with = "lenient")]
    inputs: Option<String>,
    /// SGLang's prompt, or prompts.
    #[serde(default, deserialize_with = "lenient")]
    text: Option<Texts>,
    #[serde(default, deserialize_with = "lenient")]
    input_ids: Option<Ids>,
    #[serde(default, deserialize_with = "object")]
    parameters: Option<Parameters>,
    #[serde(default, deserialize_with = "object")]
    sampling_params: Option<Parameters>,
    #[serde(default, deserialize_with = "flag")]
    stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Batch(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ids {
    One(Vec<u64>),
    Batch(Vec<Vec<u64>>),
}

/// TGI's `parameters` or SGLang's `sampling_params`.
#[derive(Deserialize)]
struct Parameters {
    #[serde(default, deserialize_with = "cap")]
    max_new_tokens: Option<u64>,
    /// TGI: candidates generated, the best one returned.
    #[serde(default, deserialize_with = "count")]
    best_of: Option<u64>,
    /// SGLang: completions generated per prompt.
    #[serde(default, deserialize_with = "count")]
    n: Option<u64>,
}

/// Estimates a request body (a JSON object). `None` if it is not an object.
pub fn estimate_request(body: Value, default_max_tokens: u64) -> Option<RequestEstimate> {
    // serde would also fill a struct from a list, by position.
    if !body.is_object() {
        return None;
    }
    let req = Request::deserialize(body).ok()?;
    let mut input_tokens = req.inputs.as_deref().map_or(0, estimate::text_tokens);
    let mut prompts = 1;
    match &req.text {
        Some(Texts::One(t)) => input_tokens += estimate::text_tokens(t),
        Some(Texts::Batch(ts)) => {
            input_tokens += ts.iter().map(|t| estimate::text_tokens(t)).sum::<u64>();
            prompts = ts.len().max(1) as u64;
        }
        None => {}
    }
    match &req.input_ids {
        Some(Ids::One(ids)) => input_tokens += ids.len() as u64,
        Some(Ids::Batch(lists)) => {
            input_tokens += lists.iter().map(|l| l.len() as u64).sum::<u64>();
            prompts = prompts.max(lists.len().max(1) as u64);
        }
        None => {}
    }
    let params = req.parameters.as_ref().or(req.sampling_params.as_ref());
    let per_choice = params
        .and_then(|p| p.max_new_tokens)
        .unwrap_or(default_max_tokens);
    let choices = params.map_or(1, |p| {
        [p.best_of, p.n].into_iter().flatten().fold(1, u64::max)
    });
    Some(RequestEstimate {
        model: req.model,
        input_tokens,
        output_tokens: per_choice.saturating_mul(choices).saturating_mul(prompts),
        stream: req.stream.unwrap_or(false),
        billable: true,
    })
}

/// One answer, whole or one stream event, of either server.
#[derive(Deserialize)]
struct Reply {
    /// TGI: the whole text (in a stream, again in the last event).
    #[serde(default, deserialize_with = "lenient")]
    generated_text: Option<String>,
    #[serde(default, deserialize_with = "object")]
    details: Option<Details>,
    /// TGI stream: this event's token.
    #[serde(default, deserialize_with = "object")]
    token: Option<Token>,
    /// SGLang: the text (in a stream, all of it so far).
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "object")]
    meta_info: Option<MetaInfo>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "lenient")]
    generated_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    input_length: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prefill: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    best_of_sequences: Option<Vec<Sequence>>,
}

/// One of the other `best_of` candidates: generated, and billed, too.
#[derive(Deserialize)]
struct Sequence {
    #[serde(default, deserialize_with = "lenient")]
    generated_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Token {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MetaInfo {
    prompt_tokens: u64,
    completion_tokens: u64,
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

/// What one answer reports: complete usage, or the output alone.
enum Counts {
    Usage(Usage),
    Output(u64),
    None,
}

impl Details {
    fn counts(&self) -> Counts {
        let Some(generated) = self.generated_tokens else {
            return Counts::None;
        };
        let others: u64 = self
            .best_of_sequences
            .iter()
            .flatten()
            .filter_map(|s| s.generated_tokens)
            .fold(0, u64::saturating_add);
        let output = clamp(generated.saturating_add(others));
        let prefill = self
            .prefill
            .as_ref()
            .map(|p| p.len() as u64)
            .filter(|&n| n > 0);
        match self.prompt_tokens.or(self.input_length).or(prefill) {
            Some(input) => Counts::Usage(Usage {
                input_tokens: clamp(input),
                output_tokens: output,
                ..Usage::default()
            }),
            None => Counts::Output(output),
        }
    }
}

impl From<MetaInfo> for Usage {
    fn from(m: MetaInfo) -> Usage {
        Usage {
            input_tokens: clamp(m.prompt_tokens),
            output_tokens: clamp(m.completion_tokens),
            cached_input_tokens: m.cached_tokens.filter(|&c| c <= m.prompt_tokens).map(clamp),
            ..Usage::default()
        }
    }
}

fn counts(reply: &mut Reply) -> Counts {
    if let Some(meta) = reply.meta_info.take() {
        return Counts::Usage(meta.into());
    }
    reply.details.as_ref().map_or(Counts::None, Details::counts)
}

/// Reads a whole response body: one answer, or a list of them (a batch), whose counts add
/// up. `None` if it is neither.
pub fn read_body(json: &[u8]) -> Option<Reading> {
    let mut reading = Reading::default();
    let mut usage = Some(Usage::default());
    let mut output = Some(0u64);
    let replies = json::parse_replies::<Reply>(json)?;
    if replies.is_empty() {
        return Some(reading);
    }
    for mut reply in replies {
        for text in [&reply.generated_text, &reply.text].into_iter().flatten() {
            reading.generated.add(text);
        }
        // A figure stands only if every answer of the batch gave its part.
        match counts(&mut reply) {
            Counts::Usage(u) => {
                usage = usage.map(|sum| add(sum, u));
                output = output.map(|sum| sum.saturating_add(u.output_tokens));
            }
            Counts::Output(n) => {
                usage = None;
                output = output.map(|sum| sum.saturating_add(n));
            }
            Counts::None => (usage, output) = (None, None),
        }
    }
    match usage {
        Some(u) => reading.usage = Some(u),
        None => reading.output = output.map(clamp),
    }
    Some(reading)
}

/// Reads one stream event.
pub fn read_event(reading: &mut Reading, data: &[u8]) {
    let Some(mut reply) = json::parse_reply::<Reply>(data) else {
        return;
    };
    // TGI sends each token once; the last event repeats the whole text, already counted.
    // SGLang repeats the text so far in every event, with counts that make it moot.
    if let Some(text) = reply.token.as_ref().and_then(|t| t.text.as_ref()) {
        reading.generated.add(text);
    }
    match counts(&mut reply) {
        Counts::Usage(u) => reading.usage = Some(u),
        Counts::Output(n) => reading.output = Some(n),
        Counts::None => {}
    }
}

/// Finds the counts in the last bytes of a body too large to keep whole: SGLang's
/// `meta_info` comes last. (TGI's `details` hold the generated tokens, listed: too large to
/// find whole in a tail; such a body is estimated.)
pub fn usage_in_tail(tail: &[u8]) -> Option<Usage> {
    let value = json::value_in_tail(tail, "meta_info")?;
    if !value.is_object() {
        return None;
    }
    MetaInfo::deserialize(value).ok().map(Usage::from)
}

fn add(a: Usage, b: Usage) -> Usage {
    let sum = |x: u64, y: u64| clamp(x.saturating_add(y));
    Usage {
        input_tokens: sum(a.input_tokens, b.input_tokens),
        output_tokens: sum(a.output_tokens, b.output_tokens),
        cached_input_tokens: match (a.cached_input_tokens, b.cached_input_tokens) {
            (None, None) => None,
            (x, y) => Some(sum(x.unwrap_or(0), y.unwrap_or(0))),
        },
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn est(body: &str) -> RequestEstimate {
        estimate_request(serde_json::from_str(body).unwrap(), 100).unwrap()
    }

    #[test]
    fn tgi_and_sglang_requests() {
        let e = est(
            r#"{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":20,"details":true}}"#,
        );
        assert_eq!((e.input_tokens, e.output_tokens), (6, 20));
        assert!(!e.stream);
        let e = est(r#"{"inputs":"abcd","parameters":{"max_new_tokens":20,"best_of":3}}"#);
        assert_eq!(e.output_tokens, 60);
        let e = est(
            r#"{"text":"The capital of France is","sampling_params":{"temperature":0,"max_new_tokens":32},"stream":true}"#,
        );
        assert_eq!((e.input_tokens, e.output_tokens), (6, 32));
        assert!(e.stream);
        // A batch: every prompt is answered; zero is no cap.
        let e = est(r#"{"text":["abcd","abcdefgh"],"sampling_params":{"max_new_tokens":0,"n":2}}"#);
        assert_eq!((e.input_tokens, e.output_tokens), (3, 400));
        let e = est(r#"{"input_ids":[[1,2,3],[4,5]],"sampling_params":{"max_new_tokens":8}}"#);
        assert_eq!((e.input_tokens, e.output_tokens), (5, 16));
        let e = est(r#"{"inputs":7,"parameters":[1]}"#);
        assert_eq!((e.input_tokens, e.output_tokens), (0, 100));
    }

    #[test]
    fn tgi_body_reports_the_output_alone_unless_it_knows_the_prompt() {
        let r = read_body(br#"{"generated_text":" Deep learning is","details":{"finish_reason":"length","generated_tokens":4,"seed":null,"prefill":[],"tokens":[]}}"#).unwrap();
        assert_eq!(r.usage, None);
        assert_eq!(r.output, Some(4));
        assert_eq!(r.generated.tokens(), 5);
        let r = read_body(br#"{"generated_text":"x","details":{"generated_tokens":4,"prefill":[{"id":1,"text":"<s>","logprob":null},{"id":2,"text":"Hi","logprob":-1.5}],"tokens":[],"best_of_sequences":[{"generated_text":"y","generated_tokens":3}]}}"#).unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((2, 7))
        );
        // Without details: nothing reported.
        let r = read_body(br#"[{"generated_text":"abcdefgh"}]"#).unwrap();
        assert_eq!((r.usage, r.output), (None, None));
        assert_eq!(r.generated.tokens(), 2);
    }

    #[test]
    fn tgi_stream_counts_tokens_and_reads_the_last_details() {
        let mut r = Reading::default();
        for data in [
            &br#"{"index":1,"token":{"id":18682,"text":" Deep","logprob":-0.01,"special":false},"generated_text":null,"details":null}"#[..],
            br#"{"index":2,"token":{"id":6975,"text":" learning","logprob":-0.02,"special":false},"generated_text":null,"details":null}"#,
        ] {
            read_event(&mut r, data);
        }
        assert_eq!((r.usage, r.output), (None, None));
        assert_eq!(r.generated.tokens(), 4);
        read_event(
            &mut r,
            br#"{"index":3,"token":{"id":13,"text":".","logprob":-0.5,"special":false},"generated_text":" Deep learning.","details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null}}"#,
        );
        assert_eq!((r.usage, r.output), (None, Some(3)));
        read_event(
            &mut r,
            br#"{"index":3,"token":{"id":13,"text":"","special":true},"generated_text":"","details":{"generated_tokens":3,"input_length":7}}"#,
        );
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((7, 3))
        );
    }

    #[test]
    fn sglang_counts_in_every_answer() {
        let r = read_body(br#"{"text":" Paris.","output_ids":[12095,13],"meta_info":{"id":"a1","finish_reason":{"type":"stop","matched":151645},"prompt_tokens":6,"completion_tokens":2,"cached_tokens":1,"e2e_latency":0.05}}"#).unwrap();
        let u = r.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_input_tokens),
            (6, 2, Some(1))
        );
        let r = read_body(br#"[{"text":"a","meta_info":{"prompt_tokens":3,"completion_tokens":1,"cached_tokens":0}},{"text":"b","meta_info":{"prompt_tokens":4,"completion_tokens":2,"cached_tokens":0}}]"#).unwrap();
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((7, 3))
        );
        let mut r = Reading::default();
        read_event(
            &mut r,
            br#"{"text":" Paris","meta_info":{"prompt_tokens":6,"completion_tokens":1,"cached_tokens":0}}"#,
        );
        read_event(
            &mut r,
            br#"{"text":" Paris.","meta_info":{"prompt_tokens":6,"completion_tokens":2,"cached_tokens":0}}"#,
        );
        read_event(&mut r, b"[DONE]");
        assert_eq!(
            r.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((6, 2))
        );
        // The text so far is not counted again and again.
        assert_eq!(r.generated.tokens(), 0);
        assert_eq!(
            usage_in_tail(br#"2,13],"meta_info":{"prompt_tokens":6,"completion_tokens":2}}"#)
                .map(|u| u.total()),
            Some(8)
        );
        assert_eq!(usage_in_tail(br#""meta_info":{"prompt_tokens":"#), None);
    }
}
