//! Incremental decoder for `text/event-stream` bodies.
//!
//! Bytes arrive in chunks split anywhere: inside a line, between `\r` and `\n`, inside a
//! UTF-8 sequence. The decoder keeps only the event being assembled, so memory stays bounded
//! however long the stream runs; an event larger than the bound is skipped and counted.
//!
//! Field handling follows the HTML living standard's event-stream rules: lines end with
//! `\r\n`, `\n` or `\r`; a line starting with `:` is a comment; `data:` values (one optional
//! leading space removed) accumulate joined by `\n`; an empty line dispatches the event.

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, empty when absent.
    pub name: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Vec<u8>,
    name: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended with `\r`: a leading `\n` in the next one ends nothing.
    after_cr: bool,
    /// The current event outgrew the bound and is being skipped.
    oversized: bool,
    /// The current line has bytes, kept or (while oversized) skipped.
    line_started: bool,
    max_event_bytes: usize,
    /// Events dropped because they outgrew the bound.
    pub oversized_events: u64,
}

impl SseDecoder {
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            data: Vec::new(),
            name: Vec::new(),
            has_data: false,
            after_cr: false,
            oversized: false,
            line_started: false,
            max_event_bytes,
            oversized_events: 0,
        }
    }

    /// Feeds a chunk; calls `on_event` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.push_line_bytes(chunk);
                    return;
                }
                Some(end) => {
                    let (head, rest) = chunk.split_at(end);
                    self.push_line_bytes(head);
                    let mut rest = rest.get(1..).unwrap_or_default();
                    if chunk.get(end) == Some(&b'\r') {
                        match rest.first() {
                            Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                            None => self.after_cr = true,
                            Some(_) => {}
                        }
                    }
                    self.end_line(on_event);
                    chunk = rest;
                }
            }
        }
    }

    /// Ends the stream. A last event without its closing blank line is still delivered:
    /// servers that omit it exist, and metering would rather read their usage than lose it.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.line_started {
            self.end_line(on_event);
        }
        self.dispatch(on_event);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.line_started = true;
        if self.oversized {
            return;
        }
        if self.line.len() + self.data.len() + bytes.len() > self.max_event_bytes {
            self.oversized = true;
            self.line.clear();
            self.data.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if !std::mem::take(&mut self.line_started) {
            if self.oversized {
                // The blank line that ends the oversized event.
                self.oversized = false;
                self.oversized_events += 1;
                self.reset_event();
            } else {
                self.dispatch(on_event);
            }
            return;
        }
        if self.oversized {
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.field(&line);
        self.line = line;
        self.line.clear();
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                (
                    line.get(..i).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if self.oversized {
            self.oversized = false;
            self.oversized_events += 1;
        } else if self.has_data {
            on_event(Event {
                name: &self.name,
                data: &self.data,
            });
        }
        self.reset_event();
    }

    fn reset_event(&mut self) {
        self.data.clear();
        self.name.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    type Owned = (String, String);

    fn decode_chunks(chunks: &[&[u8]], max: usize) -> (Vec<Owned>, u64) {
        let mut d = SseDecoder::new(max);
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| {
            out.push((
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ))
        };
        for c in chunks {
            d.feed(c, &mut push);
        }
        d.finish(&mut push);
        (out, d.oversized_events)
    }

    fn decode(body: &[u8]) -> Vec<Owned> {
        decode_chunks(&[body], 1 << 20).0
    }

    fn ev(data: &str) -> Owned {
        (String::new(), data.to_string())
    }

    #[test]
    fn plain_events() {
        assert_eq!(
            decode(b"data: {\"a\":1}\n\ndata: [DONE]\n\n"),
            vec![ev("{\"a\":1}"), ev("[DONE]")]
        );
    }

    #[test]
    fn every_line_ending() {
        for body in [
            &b"data: x\r\n\r\ndata: y\r\n\r\n"[..],
            b"data: x\r\rdata: y\r\r",
            b"data: x\n\ndata: y\n\n",
            b"data: x\r\n\ndata: y\n\r\n",
        ] {
            assert_eq!(decode(body), vec![ev("x"), ev("y")], "{body:?}");
        }
    }

    #[test]
    fn split_at_every_byte() {
        let body = b": keep-alive\r\nevent: message_delta\r\ndata: {\"usage\":\r\ndata:  {\"x\":1}}\r\n\r\ndata:[DONE]\r\n\r\n";
        let expected = vec![
            (
                "message_delta".to_string(),
                "{\"usage\":\n {\"x\":1}}".to_string(),
            ),
            ev("[DONE]"),
        ];
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let (got, _) = decode_chunks(&[&body[..i], &body[i..j], &body[j..]], 1 << 20);
                assert_eq!(got, expected, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            decode(b":ping\n\nid: 4\nretry: 10\nfoo\ndata\n\n"),
            vec![ev("")]
        );
        assert_eq!(decode(b": only a comment\n\n"), vec![]);
    }

    #[test]
    fn data_without_space_and_multiline() {
        assert_eq!(decode(b"data:a\ndata:  b\n\n"), vec![ev("a\n b")]);
    }

    #[test]
    fn last_event_without_blank_line_is_delivered() {
        assert_eq!(decode(b"data: x\n\ndata: y"), vec![ev("x"), ev("y")]);
        assert_eq!(decode(b"data: y\n"), vec![ev("y")]);
    }

    #[test]
    fn oversized_events_are_skipped_and_counted() {
        let mut body = b"data: ok\n\ndata: ".to_vec();
        body.extend(std::iter::repeat_n(b'x', 100));
        body.extend_from_slice(b"\ndata: more\n\ndata: after\n\n");
        let (got, oversized) = decode_chunks(&[&body], 32);
        assert_eq!(got, vec![ev("ok"), ev("after")]);
        assert_eq!(oversized, 1);
        let (got, oversized) = decode_chunks(&[&body[..50], &body[50..]], 32);
        assert_eq!(got, vec![ev("ok"), ev("after")]);
        assert_eq!(oversized, 1);
    }

    #[test]
    fn an_oversized_event_at_the_end_is_counted() {
        let (got, oversized) = decode_chunks(&[b"data: 0123456789abcdef"], 8);
        assert!(got.is_empty());
        assert_eq!(oversized, 1);
    }

    #[test]
    fn memory_stays_bounded_on_a_long_stream() {
        let mut d = SseDecoder::new(1024);
        let mut n = 0;
        for _ in 0..10_000 {
            d.feed(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                &mut |_| n += 1,
            );
        }
        assert_eq!(n, 10_000);
        assert!(d.line.capacity() <= 1024 && d.data.capacity() <= 1024);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let mut d = SseDecoder::new(64);
            let mut buf = Vec::new();
            for _ in 0..64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                buf.push(b"da:\r\n t\xff"[(seed >> 60) as usize % 8]);
            }
            d.feed(&buf, &mut |_| {});
            d.finish(&mut |_| {});
        }
    }
}
