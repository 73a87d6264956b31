//! Exact usage for OpenAI streams whose client did not ask for it.
//!
//! A chat or completions stream reports usage only when the request sets
//! `stream_options.include_usage`. When a client streams without it, the filter sets it in
//! the request body ([`add_to_request`]) and takes out of the stream what the option added
//! ([`UsageStripper`]), so that the client receives the stream it asked for:
//!
//! - the usage chunk (an event whose JSON has a `usage` object and no choices: `choices`
//!   absent, `null` or `[]`) is removed, blank line and all, whether its data comes in one
//!   `data:` line or several (which SSE joins with `\n`);
//! - the `"usage": null` member that OpenAI adds to every other chunk when the option is set
//!   is removed from each chunk (member, separator and nothing else; in data over several
//!   lines, only where both lie on one line), so those chunks read byte for byte as OpenAI
//!   sends them without the option. Servers that write
//!   `"usage": null` whatever the request says (TGI, SGLang) lose it too; in the API's schema
//!   a null and an absent `usage` mean the same;
//! - every other byte passes unchanged: comments, `[DONE]`, line endings, chunks that carry
//!   usage together with choices (llama.cpp's older final chunk, which it sends anyway).
//!
//! The request body is edited in place rather than re-serialised, so numbers, key order,
//! spacing and duplicate keys reach the model server exactly as the client wrote them.
//!
//! The option is not added when the client turned on `continuous_usage_stats` (vLLM,
//! SGLang): vLLM sends usage in every chunk only together with `include_usage`, SGLang
//! whatever `include_usage` says, so the two answer the edited request alike, and no
//! stripping could give both clients back their own stream. Such a stream is billed from the
//! usage the server sends on its own (SGLang's, in every chunk), else estimated.

use std::collections::HashMap;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::json;

type Members<'a> = HashMap<String, &'a RawValue>;

/// The request body with `stream_options.include_usage: true`, for a streamed request that
/// does not ask for usage already. `None` when there is nothing to do, or nothing safe to do
/// (a body that is not a JSON object, a `stream_options` that is not an object or that turns
/// on continuous usage, whose meaning the option would change).
pub fn add_to_request(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    if !json::starts_object(body) {
        return None;
    }
    // A key given twice counts with its last value (as in the Python servers); the map
    // keeps the last one, so the edit lands on the value the server will read.
    let members: Members = serde_json::from_str(text).ok()?;
    if members.get("stream").and_then(|raw| flag(raw)) != Some(true) {
        return None;
    }

    let (range, replacement) = match members.get("stream_options") {
        None => {
            let open = text.find('{')? + 1;
            (open..open, r#""stream_options":{"include_usage":true},"#)
        }
        Some(raw) if raw.get() == "null" => (span(text, raw)?, r#"{"include_usage":true}"#),
        Some(raw) if raw.get().starts_with('{') => {
            let options: Members = serde_json::from_str(raw.get()).ok()?;
            let at = span(text, raw)?;
            let asked = options.get("include_usage");
            if asked.is_some_and(|a| flag(a) == Some(true)) || !unaffected(&options) {
                return None;
            }
            match asked {
                Some(asked) => (span(text, asked)?, "true"),
                None if options.is_empty() => (at, r#"{"include_usage":true}"#),
                None => (at.start + 1..at.start + 1, r#""include_usage":true,"#),
            }
        }
        // The server refuses such a request anyway.
        Some(_) => return None,
    };

    let mut out = Vec::with_capacity(body.len() + replacement.len());
    out.extend_from_slice(body.get(..range.start)?);
    out.extend_from_slice(replacement.as_bytes());
    out.extend_from_slice(body.get(range.end..)?);
    serde_json::from_slice::<IgnoredAny>(&out).ok()?;
    Some(out)
}

fn flag(raw: &RawValue) -> Option<bool> {
    json::flag_of(&serde_json::from_str(raw.get()).ok()?)
}

/// Whether the client's stream options mean the same once `include_usage` is set too.
fn unaffected(options: &Members) -> bool {
    // vLLM and SGLang: usage in every chunk. Off, it changes nothing; on, the two servers
    // read it differently (see the module's doc). Other options (OpenAI's
    // `include_obfuscation`) do not depend on usage.
    options
        .get("continuous_usage_stats")
        .is_none_or(|on| on.get() == "null" || flag(on) == Some(false))
}

/// Where a value parsed out of `text` lies in it.
fn span(text: &str, raw: &RawValue) -> Option<Range<usize>> {
    let value = raw.get();
    let start = (value.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let range = start..start.checked_add(value.len())?;
    (text.get(range.clone()) == Some(value)).then_some(range)
}

/// Takes out of an event stream, as it passes, what asking for usage added to it.
///
/// Events are held only until they are complete (their blank line has arrived), so the
/// stream is delayed by no more than the partial event at the end of each chunk. An event
/// larger than the bound is passed on as it comes, unread.
#[derive(Debug)]
pub struct UsageStripper {
    framer: Framer,
    /// The start of the event being assembled.
    pending: Vec<u8>,
    max_event_bytes: usize,
    /// Passing on the rest of an event that outgrew the bound.
    skipping: bool,
    /// The last event ended with a `\r` at the end of a chunk: the `\n` that may open the
    /// next chunk belongs to it, and goes (`true`) or not with it.
    lf_owed: Option<bool>,
    /// Usage chunks removed.
    pub removed: u64,
    /// Events passed on unread because they outgrew the bound.
    pub oversized: u64,
}

impl UsageStripper {
    pub fn new(max_event_bytes: usize) -> Self {
        UsageStripper {
            framer: Framer::default(),
            pending: Vec::new(),
            max_event_bytes,
            skipping: false,
            lf_owed: None,
            removed: 0,
            oversized: 0,
        }
    }

    /// Takes the next chunk of the stream; appends what the client gets to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        loop {
            if rest.is_empty() {
                return;
            }
            if let Some(keep) = self.lf_owed.take() {
                if let Some(after) = rest.strip_prefix(b"\n") {
                    if keep {
                        out.push(b'\n');
                    }
                    rest = after;
                    self.framer.after_cr = false;
                    continue;
                }
            }
            let Some(end) = self.framer.event_end(rest) else {
                if self.skipping {
                    out.extend_from_slice(rest);
                } else {
                    self.pending.extend_from_slice(rest);
                    if self.pending.len() > self.max_event_bytes {
                        out.append(&mut self.pending);
                        self.skipping = true;
                        self.oversized += 1;
                    }
                }
                return;
            };
            let (event, tail) = (
                rest.get(..end).unwrap_or_default(),
                rest.get(end..).unwrap_or_default(),
            );
            let kept = if std::mem::take(&mut self.skipping) {
                out.extend_from_slice(event);
                true
            } else if self.pending.len() + event.len() > self.max_event_bytes {
                // Judged or not, the same whatever the chunking.
                out.append(&mut self.pending);
                out.extend_from_slice(event);
                self.oversized += 1;
                true
            } else {
                self.pending.extend_from_slice(event);
                let whole = std::mem::take(&mut self.pending);
                let kept = self.emit(&whole, out);
                self.pending = whole;
                self.pending.clear();
                kept
            };
            if tail.is_empty() && event.last() == Some(&b'\r') {
                self.lf_owed = Some(kept);
            }
            rest = tail;
        }
    }

    /// Ends the stream: a last event without its blank line is judged like any other.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.skipping && !self.pending.is_empty() {
            let whole = std::mem::take(&mut self.pending);
            self.emit(&whole, out);
        }
        self.skipping = false;
        self.lf_owed = None;
    }

    /// Appends the event as the client gets it; whether it was kept.
    fn emit(&mut self, event: &[u8], out: &mut Vec<u8>) -> bool {
        match judge(event) {
            Verdict::Keep => out.extend_from_slice(event),
            Verdict::Remove => {
                self.removed += 1;
                return false;
            }
            Verdict::Cut(range) => {
                out.extend_from_slice(event.get(..range.start).unwrap_or_default());
                out.extend_from_slice(event.get(range.end..).unwrap_or_default());
            }
        }
        true
    }
}

/// Finds where events end, whatever the chunking; state carries from one chunk to the next.
#[derive(Debug, Default)]
struct Framer {
    /// The current line has bytes.
    line_has_bytes: bool,
    /// The last byte seen was a `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
}

impl Framer {
    /// The index just past the blank line that ends the current event (its `\r\n` whole,
    /// when both bytes are here), or `None` if `bytes` does not end it.
    fn event_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i += 1;
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            if b != b'\r' && b != b'\n' {
                self.line_has_bytes = true;
                continue;
            }
            self.after_cr = b == b'\r';
            if std::mem::take(&mut self.line_has_bytes) {
                continue;
            }
            if self.after_cr && bytes.get(i) == Some(&b'\n') {
                self.after_cr = false;
                i += 1;
            }
            return Some(i);
        }
        None
    }
}

enum Verdict {
    Keep,
    Remove,
    /// Keep the event without these bytes.
    Cut(Range<usize>),
}

fn judge(event: &[u8]) -> Verdict {
    let lines = data_lines(event);
    let joined;
    let data = match lines.as_slice() {
        [] => return Verdict::Keep,
        [one] => event.get(one.clone()).unwrap_or_default(),
        // SSE joins the values of several `data` fields with `\n`.
        many => {
            joined = many
                .iter()
                .map(|line| event.get(line.clone()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(&b'\n');
            joined.as_slice()
        }
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return Verdict::Keep;
    };
    if !json::starts_object(text.as_bytes()) {
        return Verdict::Keep;
    }
    let Ok(members) = serde_json::from_str::<Members>(text) else {
        return Verdict::Keep;
    };
    let Some(usage) = members.get("usage") else {
        return Verdict::Keep;
    };
    if usage.get() == "null" {
        return match null_member(text, usage).and_then(|cut| in_event(&lines, cut)) {
            Some(cut) => Verdict::Cut(cut),
            None => Verdict::Keep,
        };
    }
    // Content comes only in choices; some servers write none as `null` (Go's nil slice).
    let no_choices = members.get("choices").is_none_or(|c| {
        c.get() == "null"
            || serde_json::from_str::<Vec<IgnoredAny>>(c.get()).is_ok_and(|v| v.is_empty())
    });
    if usage.get().starts_with('{') && no_choices {
        Verdict::Remove
    } else {
        Verdict::Keep
    }
}

/// The values of the event's `data` fields, in order.
fn data_lines(event: &[u8]) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(rest) = event.get(pos..).filter(|r| !r.is_empty()) {
        let len = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let line = rest.get(..len).unwrap_or_default();
        let name_len = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        if line.get(..name_len) == Some(b"data") {
            let mut start = pos + name_len + 1;
            if event.get(start) == Some(&b' ') {
                start += 1;
            }
            found.push(start.min(pos + len)..pos + len);
        }
        pos += len + 1;
        if rest.get(len) == Some(&b'\r') && rest.get(len + 1) == Some(&b'\n') {
            pos += 1;
        }
    }
    found
}

/// Where bytes of the joined data lie in the event, if they lie within one of its lines:
/// cutting across a line break would also cut the field name of the next line.
fn in_event(lines: &[Range<usize>], cut: Range<usize>) -> Option<Range<usize>> {
    let mut at = 0;
    for line in lines {
        let end = at + line.len();
        if at <= cut.start && cut.end <= end {
            return Some(line.start + (cut.start - at)..line.start + (cut.end - at));
        }
        at = end + 1;
    }
    None
}

/// The bytes that make up the top-level member `"usage": null` in `text`, with one
/// separating comma, so that what remains is the object without that member.
fn null_member(text: &str, value: &RawValue) -> Option<Range<usize>> {
    const KEY: &[u8] = b"\"usage\"";
    let bytes = text.as_bytes();
    let at = span(text, value)?;
    let skip_back = |mut i: usize| {
        while i > 0 && bytes.get(i - 1).is_some_and(u8::is_ascii_whitespace) {
            i -= 1;
        }
        i
    };
    let skip_forward = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };

    let colon = skip_back(at.start).checked_sub(1)?;
    if bytes.get(colon) != Some(&b':') {
        return None;
    }
    let key_end = skip_back(colon);
    let key_start = key_end.checked_sub(KEY.len())?;
    if bytes.get(key_start..key_end) != Some(KEY) {
        return None;
    }
    let before = skip_back(key_start).checked_sub(1)?;
    match bytes.get(before) {
        // `, "usage": null` after another member.
        Some(b',') => Some(before..at.end),
        // `"usage": null, ` as the first member, or the only one.
        Some(b'{') => {
            let after = skip_forward(at.end);
            if bytes.get(after) == Some(&b',') {
                Some(key_start..skip_forward(after + 1))
            } else {
                Some(key_start..at.end)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn add(body: &str) -> Option<String> {
        add_to_request(body.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn the_option_is_added_where_the_server_reads_it() {
        assert_eq!(
            add(r#"{"model":"m","stream":true}"#).as_deref(),
            Some(r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#)
        );
        assert_eq!(
            add(" {\"stream\": \"yes\", \"stream_options\": null}").as_deref(),
            Some(" {\"stream\": \"yes\", \"stream_options\": {\"include_usage\":true}}")
        );
        assert_eq!(
            add(r#"{"stream":true,"stream_options":{ }}"#).as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            add(r#"{"stream":true,"stream_options":{"continuous_usage_stats":false}}"#).as_deref(),
            Some(
                r#"{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":false}}"#
            )
        );
        assert_eq!(
            add(r#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#).as_deref(),
            Some(
                r#"{"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false}}"#
            )
        );
        assert_eq!(
            add(r#"{"stream":1,"stream_options":{"include_usage": false}}"#).as_deref(),
            Some(r#"{"stream":1,"stream_options":{"include_usage": true}}"#)
        );
        // Numbers and spacing stay as the client wrote them.
        assert_eq!(
            add(r#"{"temperature":0.70,"max_tokens":1e3,"stream":true}"#).as_deref(),
            Some(
                r#"{"stream_options":{"include_usage":true},"temperature":0.70,"max_tokens":1e3,"stream":true}"#
            )
        );
    }

    #[test]
    fn the_last_of_duplicate_keys_is_the_one_edited() {
        assert_eq!(
            add(r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":false}}"#)
                .as_deref(),
            Some(r#"{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(add(r#"{"stream":true,"stream":false}"#), None);
    }

    #[test]
    fn nothing_to_do_or_nothing_safe_to_do() {
        for body in [
            r#"{"model":"m"}"#,
            r#"{"stream":false}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":"true"}}"#,
            r#"{"stream":true,"stream_options":"x"}"#,
            r#"{"stream":true,"stream_options":[]}"#,
            r#"[{"stream":true}]"#,
            r#"{"stream":true"#,
            "",
        ] {
            assert_eq!(add(body), None, "{body}");
        }
        assert_eq!(add_to_request(b"{\"stream\":true,\"x\":\"\xff\"}"), None);
    }

    #[test]
    fn options_whose_meaning_would_change_are_left_alone() {
        // vLLM sends continuous usage only with include_usage, SGLang without it too: adding
        // the option would put usage in every chunk of a vLLM stream, and removing it from
        // every chunk would take from an SGLang client what it gets without the gateway.
        for body in [
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":"yes","include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":null,"continuous_usage_stats":1}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":"maybe"}}"#,
            // The last of duplicate keys counts.
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":false,"continuous_usage_stats":true}}"#,
        ] {
            assert_eq!(add(body), None, "{body}");
        }
        // Off, continuous usage changes nothing.
        for body in [
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":null}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":"false","include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":0,"include_obfuscation":true}}"#,
        ] {
            let sent = add(body).unwrap_or_else(|| panic!("{body}"));
            let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
            assert_eq!(sent["stream_options"]["include_usage"], true, "{body}");
        }
    }

    fn strip(chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut s = UsageStripper::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        (out, s.removed)
    }

    const ASKED: &[u8] = b": keep-alive\r\n\r\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n\
data: {\"usage\": null, \"id\": \"c\", \"choices\": []}\r\n\r\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\r\n\r\n\
data: [DONE]\r\n\r\n";

    const PLAIN: &[u8] = b": keep-alive\r\n\r\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
data: {\"id\": \"c\", \"choices\": []}\r\n\r\n\
data: [DONE]\r\n\r\n";

    #[test]
    fn the_client_gets_the_stream_it_asked_for_at_any_split() {
        for i in 0..=ASKED.len() {
            for j in (i..=ASKED.len()).step_by(7) {
                let (out, removed) = strip(&[&ASKED[..i], &ASKED[i..j], &ASKED[j..]]);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(PLAIN),
                    "split at {i},{j}"
                );
                assert_eq!(removed, 1);
            }
        }
    }

    #[test]
    fn a_lone_cr_ending_a_removed_event_takes_its_lf_along() {
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\r";
        let (out, removed) = strip(&[b"data: a\r\r", usage, b"\ndata: [DONE]\r\r"]);
        assert_eq!(removed, 1);
        // `\r\r\n` ends the usage event: a line, then a blank line written `\r\n`.
        assert_eq!(out, b"data: a\r\rdata: [DONE]\r\r");
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\n\r";
        let (out, _) = strip(&[b"data: a\n\n", usage, b"\n", b"\ndata: [DONE]\n\n"]);
        assert_eq!(out, b"data: a\n\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn other_events_pass_unchanged() {
        let stream: &[u8] =
            b"event: x\nid: 1\ndata: {\"usage\":{\"a\":1},\"choices\":[{\"text\":\"x\"}]}\n\n\
data: {\"usage\":\ndata: null}\n\n\
data: {\"usage\":null}\n\n\
data: {\"usage\":[]}\n\n\
data: {\"x\":\"\\\"usage\\\":null\"}\n\n\
data: not json\n\n\
data: {\"usage\":{\"prompt_tokens\":1}}";
        let (out, removed) = strip(&[stream]);
        assert_eq!(removed, 1);
        let want: &[u8] =
            b"event: x\nid: 1\ndata: {\"usage\":{\"a\":1},\"choices\":[{\"text\":\"x\"}]}\n\n\
data: {\"usage\":\ndata: null}\n\n\
data: {}\n\n\
data: {\"usage\":[]}\n\n\
data: {\"x\":\"\\\"usage\\\":null\"}\n\n\
data: not json\n\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
    }

    #[test]
    fn an_oversized_event_passes_unread_and_the_next_is_judged() {
        let mut big = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 3000));
        big.extend_from_slice(b"\"}}],\"usage\":null}\n\n");
        let usage = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let mut stream = big.clone();
        stream.extend_from_slice(usage);
        for size in [1, 100, 5000] {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let mut s = UsageStripper::new(1024);
            let mut out = Vec::new();
            for c in &chunks {
                s.push(c, &mut out);
            }
            s.finish(&mut out);
            let mut want = big.clone();
            want.extend_from_slice(b"data: [DONE]\n\n");
            assert_eq!(out, want, "chunks of {size}");
            assert_eq!((s.removed, s.oversized), (1, 1));
        }
    }

    /// Every split of `stream` into three chunks gives `want`, with `removed` chunks removed.
    fn assert_stripped(stream: &[u8], want: &[u8], removed: u64) {
        for i in 0..=stream.len() {
            for j in (i..=stream.len()).step_by(5) {
                let (out, n) = strip(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "split at {i},{j}"
                );
                assert_eq!(n, removed, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn a_usage_chunk_with_null_choices_is_removed() {
        // Go servers write an empty choice list as `null` (Cloudflare Workers AI, and
        // OpenAI-compatible layers built on Go structs).
        let asked: &[u8] = b"data: {\"id\":\"id-1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"@cf/meta/llama-3.1-8b-instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"id-1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"@cf/meta/llama-3.1-8b-instruct\",\"choices\":null,\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13}}\n\n\
data: [DONE]\n\n";
        let plain: &[u8] = b"data: {\"id\":\"id-1\",\"object\":\"chat.completion.chunk\",\"created\":1740036312,\"model\":\"@cf/meta/llama-3.1-8b-instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";
        assert_stripped(asked, plain, 1);
        // Spacing around the null does not matter either.
        let (out, n) =
            strip(&[b"data: {\"choices\" : null , \"usage\":{\"prompt_tokens\":1}}\r\n\r\n"]);
        assert_eq!((out.as_slice(), n), (&b""[..], 1));
    }

    #[test]
    fn a_usage_chunk_over_several_data_lines_is_removed() {
        // The HTML standard joins the values of an event's `data` fields with a line feed;
        // servers that write a payload holding line breaks (sse-starlette, for one) give each
        // line a `data:` field of its own.
        let asked: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\r\n\
data: \"usage\":{\"prompt_tokens\":9,\"total_tokens\":10,\"completion_tokens\":1}}\r\n\r\n\
data: {\r\ndata:   \"choices\": null,\r\ndata:   \"usage\": {\"prompt_tokens\": 9}\r\ndata: }\r\n\r\n\
data: [DONE]\r\n\r\n";
        let plain: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
data: [DONE]\r\n\r\n";
        assert_stripped(asked, plain, 2);
    }

    #[test]
    fn a_chunk_that_carries_content_is_never_removed() {
        let stream: &[u8] = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\n\
data: \"delta\":{\"content\":\"Hi\"}}],\"usage\":{\"prompt_tokens\":9}}\n\n\
data: {\"choices\":null,\ndata: \"usage\":null}\n\n\
data: {\"choices\":{},\"usage\":{\"prompt_tokens\":9}}\n\n\
data: {\"choices\":[{\"text\":\"x\"}],\ndata: \"usage\":{\"prompt_tokens\":9}}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9}}\ndata: [DONE]\n\n";
        // (The last event lacks its blank line: its data, joined, is not JSON.)
        assert_stripped(stream, stream, 0);
    }

    #[test]
    fn the_null_usage_of_a_chunk_over_several_data_lines_is_cut_within_its_line() {
        let stream: &[u8] = b"data: {\"id\":\"c\",\r\n\
data: \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}], \"usage\":null}\r\n\r\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}],\r\n\
data: \"usage\":null}\r\n\r\n";
        // The second one's member starts on one line and ends on the next: cutting it would
        // join the two lines, so it stays (a null usage and none mean the same).
        let want: &[u8] = b"data: {\"id\":\"c\",\r\n\
data: \"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"}}],\r\n\
data: \"usage\":null}\r\n\r\n";
        assert_stripped(stream, want, 0);
    }
}
