//! Renders a [`Plan`] as OpenAI renders its answers: a plain JSON body, or the list of
//! server-sent events of a stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::plan::{Choice, Plan, Usage};

/// Which API shape to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
}

/// The last event of every stream.
pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// Id and creation time shared by every chunk of one answer.
#[derive(Debug, Clone)]
pub struct AnswerId {
    pub id: String,
    pub created: u64,
}

impl AnswerId {
    /// A fresh id: the start time of this process and a counter keep it unique per run.
    pub fn new(api: Api) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match api {
            Api::Chat => "chatcmpl",
            Api::Completions => "cmpl",
        };
        let serial = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            id: format!("{prefix}-demo{created:x}{serial:06x}"),
            created,
        }
    }
}

#[derive(Serialize)]
struct Answer<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<C>,
    /// Absent in a plain answer's chunks, null in the chunks of a stream that ends with
    /// usage, the usage object itself in that last chunk or a plain answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

impl<'a, C> Answer<'a, C> {
    fn new(answer_id: &'a AnswerId, object: &'static str, plan: &'a Plan, choices: Vec<C>) -> Self {
        Self {
            id: &answer_id.id,
            object,
            created: answer_id.created,
            model: &plan.model,
            choices,
            usage: None,
        }
    }

    fn with_usage(self, usage: Option<Option<Usage>>) -> Self {
        Self { usage, ..self }
    }
}

#[derive(Serialize)]
struct ChatChoice {
    index: u32,
    message: AssistantMessage,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

impl<'a> Delta<'a> {
    /// The first delta of a chat choice, as OpenAI sends it.
    fn opening() -> Self {
        Self {
            role: Some("assistant"),
            content: Some(""),
        }
    }

    fn text(piece: &'a str) -> Self {
        Self {
            role: None,
            content: Some(piece),
        }
    }
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

/// The non-streaming answer.
pub fn plain_body(api: Api, plan: &Plan, answer_id: &AnswerId) -> serde_json::Result<String> {
    let usage = Some(Some(plan.usage()));
    match api {
        Api::Chat => {
            let choices = plan
                .choices
                .iter()
                .map(|choice| ChatChoice {
                    index: choice.index,
                    message: AssistantMessage {
                        role: "assistant",
                        content: choice.text(),
                    },
                    logprobs: (),
                    finish_reason: choice.finish_reason.as_str(),
                })
                .collect();
            let answer = Answer::new(answer_id, "chat.completion", plan, choices);
            serde_json::to_string(&answer.with_usage(usage))
        }
        Api::Completions => {
            let texts: Vec<String> = plan.choices.iter().map(Choice::text).collect();
            let choices = plan
                .choices
                .iter()
                .zip(&texts)
                .map(|(choice, text)| TextChoice {
                    index: choice.index,
                    text,
                    logprobs: (),
                    finish_reason: Some(choice.finish_reason.as_str()),
                })
                .collect();
            let answer = Answer::new(answer_id, "text_completion", plan, choices);
            serde_json::to_string(&answer.with_usage(usage))
        }
    }
}

/// One step of a stream, before it is rendered for an API.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step<'a> {
    /// The chat API opens each choice with the assistant role.
    Open(&'a Choice),
    /// One word; after the first it carries its leading space, so the pieces join
    /// into the choice's text.
    Word(&'a Choice, String),
    Finish(&'a Choice),
}

/// Steps of a stream: the choices open, then take turns word by word (as OpenAI
/// interleaves choices when `n` > 1), then finish in index order.
fn steps(plan: &Plan) -> Vec<Step<'_>> {
    let longest = plan
        .choices
        .iter()
        .map(|c| c.words.len())
        .max()
        .unwrap_or(0);

    let mut steps: Vec<Step> = plan.choices.iter().map(Step::Open).collect();
    for position in 0..longest {
        for choice in &plan.choices {
            let piece = match choice.words.get(position) {
                Some(word) if position == 0 => (*word).to_owned(),
                Some(word) => format!(" {word}"),
                None => continue,
            };
            steps.push(Step::Word(choice, piece));
        }
    }
    steps.extend(plan.choices.iter().map(Step::Finish));
    steps
}

fn event(value: &impl Serialize) -> serde_json::Result<String> {
    Ok(format!("data: {}\n\n", serde_json::to_string(value)?))
}

/// Every event of a streamed answer, `[DONE]` included.
pub fn stream_events(
    api: Api,
    plan: &Plan,
    answer_id: &AnswerId,
) -> serde_json::Result<Vec<String>> {
    // Chunks carry `"usage": null` only in a stream that will end with the usage chunk.
    let usage = plan.include_usage.then_some(None);
    let object = match api {
        Api::Chat => "chat.completion.chunk",
        Api::Completions => "text_completion",
    };

    let mut events = Vec::new();
    for step in steps(plan) {
        let rendered = match api {
            Api::Chat => {
                let (choice, delta, finish_reason) = match &step {
                    Step::Open(c) => (c, Delta::opening(), None),
                    Step::Word(c, piece) => (c, Delta::text(piece), None),
                    Step::Finish(c) => (c, Delta::default(), Some(c.finish_reason.as_str())),
                };
                let choices = vec![ChunkChoice {
                    index: choice.index,
                    delta,
                    logprobs: (),
                    finish_reason,
                }];
                event(&Answer::new(answer_id, object, plan, choices).with_usage(usage))?
            }
            Api::Completions => {
                let (choice, text, finish_reason) = match &step {
                    // The completions API has no role to announce.
                    Step::Open(_) => continue,
                    Step::Word(c, piece) => (c, piece.as_str(), None),
                    Step::Finish(c) => (c, "", Some(c.finish_reason.as_str())),
                };
                let choices = vec![TextChoice {
                    index: choice.index,
                    text,
                    logprobs: (),
                    finish_reason,
                }];
                event(&Answer::new(answer_id, object, plan, choices).with_usage(usage))?
            }
        };
        events.push(rendered);
    }

    if plan.include_usage {
        let last = Answer::<ChunkChoice>::new(answer_id, object, plan, Vec::new());
        events.push(event(&last.with_usage(Some(Some(plan.usage()))))?);
    }
    events.push(DONE_EVENT.to_owned());
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::FinishReason;
    use serde_json::{json, Value};

    fn plan(lengths: &[usize], include_usage: bool) -> Plan {
        Plan {
            model: "demo-model".into(),
            stream: true,
            include_usage,
            prompt_tokens: 9,
            choices: lengths
                .iter()
                .zip(0..)
                .map(|(&len, index)| Choice {
                    index,
                    words: crate::tokenize::reply_words(len as u32, index),
                    finish_reason: FinishReason::Stop,
                })
                .collect(),
        }
    }

    fn answer_id() -> AnswerId {
        AnswerId {
            id: "chatcmpl-x".into(),
            created: 1,
        }
    }

    fn chunks(events: &[String]) -> Vec<Value> {
        let (done, rest) = events.split_last().unwrap();
        assert_eq!(done, DONE_EVENT);
        rest.iter()
            .map(|e| {
                let json = e
                    .strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\n\n")
                    .unwrap();
                serde_json::from_str(json).unwrap()
            })
            .collect()
    }

    #[test]
    fn plain_chat_body_is_openai_shaped() {
        let body: Value =
            serde_json::from_str(&plain_body(Api::Chat, &plan(&[2], false), &answer_id()).unwrap())
                .unwrap();
        assert_eq!(
            body,
            json!({
                "id": "chatcmpl-x",
                "object": "chat.completion",
                "created": 1,
                "model": "demo-model",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello from"},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
            })
        );
    }

    #[test]
    fn plain_completion_body_is_openai_shaped() {
        let body = plain_body(Api::Completions, &plan(&[1, 1], false), &answer_id()).unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "hello");
        assert_eq!(body["choices"][1]["text"], "demo");
        assert_eq!(body["choices"][1]["index"], 1);
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn chat_stream_opens_with_role_and_interleaves_choices() {
        let events = stream_events(Api::Chat, &plan(&[2, 1], false), &answer_id()).unwrap();
        let chunks = chunks(&events);
        let summary: Vec<(u64, Value, Value)> = chunks
            .iter()
            .map(|c| {
                assert!(c.get("usage").is_none());
                let choice = &c["choices"][0];
                (
                    choice["index"].as_u64().unwrap(),
                    choice["delta"].clone(),
                    choice["finish_reason"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, json!({"role": "assistant", "content": ""}), Value::Null),
                (1, json!({"role": "assistant", "content": ""}), Value::Null),
                (0, json!({"content": "hello"}), Value::Null),
                (1, json!({"content": "demo"}), Value::Null),
                (0, json!({"content": " from"}), Value::Null),
                (0, json!({}), json!("stop")),
                (1, json!({}), json!("stop")),
            ]
        );
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let events = stream_events(Api::Completions, &plan(&[3], true), &answer_id()).unwrap();
        let chunks = chunks(&events);
        let (last, rest) = chunks.split_last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 3);
        assert!(rest
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some()));

        // Three words and the finish chunk; no role chunk in the completions API.
        assert_eq!(rest.len(), 4);
        let text: String = rest
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "hello from the");
    }
}
