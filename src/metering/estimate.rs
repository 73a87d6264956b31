//! Token estimates for when the real count is not known yet (admission) or never arrives.
//!
//! The rule is deliberately simple and errs high for English: one token per four bytes of
//! UTF-8 text, rounded up. Byte-based rather than character-based so that scripts with many
//! tokens per character (CJK text is close to one token per character, three bytes each)
//! are not under-counted by much. Reservations are replaced by the model server's own figures
//! once the response is in, so this only decides admission and fills in when usage is missing.
//!
//! A request is more than its message text: tool definitions, earlier tool calls, response
//! schemas, images and documents reach the model too. [`value_tokens`] sizes the whole body
//! (see there for what it leaves out), and a request is never estimated below it.

use serde::Deserialize;
use serde_json::Value;

use super::json::lenient;

/// Members of a request that never reach the model as input: the model's name and
/// parameter sets (OpenAI `stream_options`, `metadata`, `logit_bias`; Ollama `options`; TGI
/// `parameters`; SGLang `sampling_params`). Top level only.
const PARAMETERS: [&str; 7] = [
    "model",
    "stream_options",
    "metadata",
    "logit_bias",
    "options",
    "parameters",
    "sampling_params",
];

/// Keys whose strings (or lists of strings) may hold bare base64 media: Anthropic's and
/// OpenAI's `data`, Ollama's `images`, llama.cpp's `multimodal_data`, `file_data`, ... A
/// `data:` URL is media wherever it is.
const MEDIA_KEYS: [&str; 7] = [
    "data",
    "images",
    "image",
    "file_data",
    "multimodal_data",
    "audio",
    "video",
];

/// A base64 payload at least this long is media (an image, audio) and is counted at
/// [`MEDIA_BYTES_PER_TOKEN`]; a shorter one costs what its text would.
const MEDIA_MIN_BYTES: usize = 1024;
/// Media cost what the model server makes of them (a few hundred to a few thousand tokens per
/// image, depending on the model and the size), not their length in base64: one token per
/// this many bytes, and never less than the text rate gives at `MEDIA_MIN_BYTES`.
const MEDIA_BYTES_PER_TOKEN: u64 = 256;
const MEDIA_MIN_TOKENS: u64 = (MEDIA_MIN_BYTES as u64) / 4;

/// Tokens added per chat message for role and framing, as common chat templates spend.
pub const PER_MESSAGE: u64 = 4;
/// Tokens that prime the assistant's reply in chat templates.
pub const PER_CONVERSATION: u64 = 3;

/// Message content as the chat APIs write it: a string, or a list of parts of which only the
/// text ones count (an image part costs what the model server says, not its URL's length).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
}

impl Content {
    pub fn tokens(&self) -> u64 {
        let mut n = 0;
        self.each_text(|t| n += text_tokens(t));
        n
    }

    pub fn each_text(&self, mut f: impl FnMut(&str)) {
        match self {
            Content::Text(t) => f(t),
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).for_each(f),
        }
    }
}

/// Estimated tokens of a text.
pub fn text_tokens(text: &str) -> u64 {
    bytes_tokens(text.len())
}

/// Estimated tokens of `n` bytes of text.
pub fn bytes_tokens(n: usize) -> u64 {
    (n as u64).div_ceil(4)
}

/// Estimated tokens of a request body that is not JSON: text at the text rate, anything else
/// (a multipart upload, binary data) at the media rate.
pub fn raw_tokens(body: &[u8]) -> u64 {
    if std::str::from_utf8(body).is_ok() {
        bytes_tokens(body.len())
    } else {
        media_tokens(body.len())
    }
}

/// Estimated input tokens of a whole JSON request: the body written out compactly, at the
/// text rate, without what never reaches the model as input. Left out: the top-level
/// [`PARAMETERS`], numbers, booleans and nulls at the top level (sampling settings), and the
/// `role` and `cache_control` members of messages and content blocks (template framing, which
/// the shapes' per-message allowance covers). Every string counts by the bytes of its text
/// (whatever escapes the client used), a list of integers one token per element (token ids),
/// and a long base64 payload (a data URL, an Anthropic or Ollama image) at the media rate; a
/// PDF, whose text the model reads, at the text rate.
pub fn value_tokens(value: &Value) -> u64 {
    let mut size = Size::default();
    match value {
        Value::Object(members) => {
            size.bytes += 2;
            let kept = members
                .iter()
                .filter(|(k, v)| !PARAMETERS.contains(&k.as_str()) && !scalar(v));
            for (i, (key, v)) in kept.enumerate() {
                size.member(i, key);
                size.add(v, media_key(key));
            }
        }
        other => size.add(other, false),
    }
    size.tokens()
}

fn scalar(v: &Value) -> bool {
    matches!(v, Value::Null | Value::Bool(_) | Value::Number(_))
}

/// The bytes of text and the tokens of media and token lists seen so far.
#[derive(Default)]
struct Size {
    bytes: u64,
    tokens: u64,
}

impl Size {
    fn tokens(&self) -> u64 {
        self.bytes.div_ceil(4).saturating_add(self.tokens)
    }

    /// `"key":`, and a comma before every member but the first.
    fn member(&mut self, index: usize, key: &str) {
        self.bytes += key.len() as u64 + 3 + u64::from(index > 0);
    }

    /// Adds a value; `media`: it sits under a key that may hold bare base64 media.
    fn add(&mut self, value: &Value, media: bool) {
        match value {
            Value::Null => self.bytes += 4,
            Value::Bool(b) => self.bytes += if *b { 4 } else { 5 },
            Value::Number(n) => self.bytes += n.to_string().len() as u64,
            Value::String(s) => {
                self.bytes += 2;
                match media_len(s, media) {
                    Some(media) => {
                        self.bytes += (s.len() - media) as u64;
                        self.tokens = self.tokens.saturating_add(media_tokens(media));
                    }
                    None => self.bytes += s.len() as u64,
                }
            }
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_i64) => {
                self.bytes += 2;
                self.tokens = self.tokens.saturating_add(items.len() as u64);
            }
            Value::Array(items) => {
                self.bytes += 2 + items.len().saturating_sub(1) as u64;
                items.iter().for_each(|v| self.add(v, media));
            }
            Value::Object(members) => {
                self.bytes += 2;
                let kept = members.iter().filter(|(k, v)| !framing(k, v));
                for (i, (key, v)) in kept.enumerate() {
                    self.member(i, key);
                    self.add(v, media_key(key));
                }
            }
        }
    }
}

/// A message's `role` and a block's `cache_control`: framing, not content. (A property named
/// `role` in a tool's schema is an object, and counts.)
fn framing(key: &str, value: &Value) -> bool {
    (key == "role" && value.is_string()) || key == "cache_control"
}

fn media_key(key: &str) -> bool {
    MEDIA_KEYS.contains(&key)
}

/// The length of the base64 payload in `s`, if `s` is one long enough to count as media: a
/// `data:` URL, or (`bare`: under a media key) base64 alone. A PDF is a document, whose text
/// the model reads: not media.
fn media_len(s: &str, bare: bool) -> Option<usize> {
    let payload = match s.strip_prefix("data:") {
        Some(url) => {
            let (meta, data) = url.split_once(',')?;
            let media_type = meta.strip_suffix(";base64")?;
            if media_type.eq_ignore_ascii_case("application/pdf") {
                return None;
            }
            data
        }
        None if bare => s,
        None => return None,
    };
    let base64 = |b: u8| b.is_ascii_alphanumeric() || b"+/=-_\r\n".contains(&b);
    // Encoded binary mixes cases and digits; a run of one letter is text, however odd.
    let mixed = [
        u8::is_ascii_uppercase,
        u8::is_ascii_lowercase,
        u8::is_ascii_digit,
    ]
    .iter()
    .all(|class| payload.bytes().any(|b| class(&b)));
    let is_media = payload.len() >= MEDIA_MIN_BYTES
        && !payload.starts_with("JVBER")
        && mixed
        && payload.bytes().all(base64);
    is_media.then_some(payload.len())
}

/// Estimated tokens of `n` bytes of media.
fn media_tokens(n: usize) -> u64 {
    let n = n as u64;
    if n < MEDIA_MIN_BYTES as u64 {
        return n.div_ceil(4);
    }
    n.div_ceil(MEDIA_BYTES_PER_TOKEN).max(MEDIA_MIN_TOKENS)
}

/// Generated text seen in a response, for when its usage never comes.
///
/// The estimate is the larger of the byte rule and the number of pieces: a stream sends at
/// least one token per non-empty piece (servers flush per token or per few tokens), so a
/// stream of one-letter tokens is not under-counted by the byte rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    pieces: u64,
    bytes: u64,
}

impl Generated {
    /// Counts one piece of generated text (a stream delta, or a whole answer).
    pub fn add(&mut self, text: &str) {
        self.add_len(text.len());
    }

    pub fn add_len(&mut self, len: usize) {
        if len > 0 {
            self.pieces = self.pieces.saturating_add(1);
            self.bytes = self.bytes.saturating_add(len as u64);
        }
    }

    pub fn tokens(&self) -> u64 {
        self.pieces.max(self.bytes.div_ceil(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("a"), 1);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("日本語"), 3);
    }

    fn tokens(v: serde_json::Value) -> u64 {
        value_tokens(&v)
    }

    #[test]
    fn a_body_counts_as_written_without_parameters_and_roles() {
        // `{"messages":[{"content":"hi"}]}`: 31 bytes.
        let v = serde_json::json!({"model": "gpt-test", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(tokens(v), 8);
        // Escapes count as the text they stand for; whitespace between tokens not at all.
        let a: serde_json::Value =
            serde_json::from_str("{ \"input\" : \"\\u00e9t\\u00e9\" }").unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"input":"été"}"#).unwrap();
        assert_eq!(tokens(a), tokens(b));
        // Token ids: one each.
        assert_eq!(
            tokens(serde_json::json!({"prompt": [1, 2, 3, 4, 5, 6, 7, 8]})),
            4 + 8
        );
        // A role that is a property of a tool's schema counts.
        let schema = serde_json::json!({"tools": [{"properties": {"role": {"type": "string"}}}]});
        assert_eq!(tokens(schema), 14);
    }

    #[test]
    fn media_count_at_their_own_rate() {
        let b64 = "iVBORw0KGgoAAAANSUhEUgAA".repeat(10_000);
        let n = b64.len() as u64;
        let url = format!("data:image/png;base64,{b64}");
        let at_media_rate = n.div_ceil(MEDIA_BYTES_PER_TOKEN);
        for v in [
            serde_json::json!({"images": [b64.clone()]}),
            serde_json::json!({"messages": [{"content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64.clone()}}]}]}),
            serde_json::json!({"x": [{"image_url": {"url": url.clone()}}]}),
        ] {
            let t = tokens(v);
            assert!(t > at_media_rate && t < at_media_rate + 40, "{t}");
        }
        // Small payloads cost what their text would, and the rate never drops below it.
        assert_eq!(media_tokens(1023), 256);
        assert_eq!(media_tokens(1024), 256);
        assert_eq!(media_tokens(65_536), 256);
        assert_eq!(media_tokens(65_537), 257);
        // Not media: base64 under another key, a PDF, text without mixed classes.
        let text_rate = n.div_ceil(4);
        for v in [
            serde_json::json!({"description": b64.clone()}),
            serde_json::json!({"data": format!("JVBERi0xLjcK{b64}")}),
            serde_json::json!({"file_data": format!("data:application/pdf;base64,{b64}")}),
            serde_json::json!({"data": "a".repeat(b64.len())}),
        ] {
            assert!(tokens(v) >= text_rate);
        }
        assert_eq!(raw_tokens(b"abcdefgh"), 2);
        assert_eq!(raw_tokens(&[0xff; 2048]), 256);
    }

    #[test]
    fn generated_text_counts_pieces_or_bytes() {
        let mut g = Generated::default();
        assert_eq!(g.tokens(), 0);
        for piece in ["a", "", "b", "c"] {
            g.add(piece);
        }
        assert_eq!(g.tokens(), 3);
        g.add(&"x".repeat(40));
        assert_eq!(g.tokens(), 11);
    }
}
