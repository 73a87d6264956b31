//! Incremental decoder for newline-delimited JSON bodies (`application/x-ndjson`, Ollama's
//! stream format).
//!
//! One JSON value per line; lines end with `\n`, optionally preceded by `\r`. Bytes arrive in
//! chunks split anywhere, and only the line being assembled is kept, so memory stays bounded
//! however long the stream runs; a line longer than the bound is skipped and counted. Blank
//! lines are ignored. A last line without its `\n` is still delivered when the body ends.

#[derive(Debug)]
pub struct NdjsonDecoder {
    line: Vec<u8>,
    /// The current line outgrew the bound and is being skipped up to its end.
    oversized: bool,
    max_line_bytes: usize,
    /// Lines dropped because they outgrew the bound.
    pub oversized_lines: u64,
}

impl NdjsonDecoder {
    pub fn new(max_line_bytes: usize) -> Self {
        NdjsonDecoder {
            line: Vec::new(),
            oversized: false,
            max_line_bytes,
            oversized_lines: 0,
        }
    }

    /// Feeds a chunk; calls `on_line` for every non-blank line it completes.
    pub fn feed(&mut self, mut chunk: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&b| b == b'\n') {
                None => {
                    self.push(chunk);
                    return;
                }
                Some(end) => {
                    self.push(chunk.get(..end).unwrap_or_default());
                    self.end_line(on_line);
                    chunk = chunk.get(end + 1..).unwrap_or_default();
                }
            }
        }
    }

    /// Ends the body, delivering a last line that has no `\n`.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        self.end_line(on_line);
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.oversized || bytes.is_empty() {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line_bytes {
            self.oversized = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if std::mem::take(&mut self.oversized) {
            self.oversized_lines += 1;
            return;
        }
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            on_line(line);
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn decode_chunks(chunks: &[&[u8]], max: usize) -> (Vec<String>, u64) {
        let mut d = NdjsonDecoder::new(max);
        let mut out = Vec::new();
        let mut push = |l: &[u8]| out.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            d.feed(c, &mut push);
        }
        d.finish(&mut push);
        (out, d.oversized_lines)
    }

    #[test]
    fn lines_at_every_split() {
        let body = b"{\"a\":1}\n\r\n{\"b\":2}\r\n  \n{\"c\":3}";
        let want = vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"];
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let (got, _) = decode_chunks(&[&body[..i], &body[i..j], &body[j..]], 64);
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn oversized_lines_are_skipped_and_counted() {
        let mut body = b"{\"ok\":1}\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 100));
        body.extend_from_slice(b"\n{\"after\":2}\n");
        for size in [1, 7, 50, body.len()] {
            let chunks: Vec<&[u8]> = body.chunks(size).collect();
            let (got, oversized) = decode_chunks(&chunks, 32);
            assert_eq!(got, vec!["{\"ok\":1}", "{\"after\":2}"], "chunks of {size}");
            assert_eq!(oversized, 1);
        }
        let (got, oversized) = decode_chunks(&[&[b'y'; 40]], 32);
        assert!(got.is_empty());
        assert_eq!(oversized, 1);
    }

    #[test]
    fn memory_stays_bounded_on_a_long_stream() {
        let mut d = NdjsonDecoder::new(1024);
        let mut n = 0;
        for _ in 0..10_000 {
            d.feed(b"{\"response\":\"hi\",\"done\":false}\n", &mut |_| n += 1);
        }
        assert_eq!(n, 10_000);
        assert!(d.line.capacity() <= 1024);
    }
}
