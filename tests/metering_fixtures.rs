//! Every fixture under `tests/fixtures/metering/` through the metering code, at many chunkings:
//! the bill must be exactly the one its sidecar names, and a stream whose client did not ask
//! for usage must reach the client as the sidecar says. See `tests/fixtures/metering/README.md`
//! for the sidecar format; the Envoy integration tests replay the same fixtures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use inference_gate::metering::include_usage::{self, UsageStripper};
use inference_gate::metering::{self, Api, Bill, ResponseMeter};
use serde_json::Value;

/// `metering.default_max_tokens` the expected figures assume (as in `envoy/tests`).
const DEFAULT_MAX_TOKENS: u64 = 256;

struct Fixture {
    name: String,
    api: Api,
    meta: Value,
    /// The body as the server sends it, cut where the sidecar says the connection died.
    body: Vec<u8>,
    dir: PathBuf,
}

impl Fixture {
    fn content_type(&self) -> &str {
        self.meta["content_type"].as_str().unwrap()
    }

    fn request(&self) -> Vec<u8> {
        serde_json::to_vec(&self.meta["request"]).unwrap()
    }

    fn ran(&self) -> bool {
        (200..300).contains(&self.meta["status"].as_u64().unwrap())
    }

    /// What the client must receive: the sidecar's `client_sees` file, the body itself when
    /// it names none, nothing to check for a cut stream (`null`).
    fn client_sees(&self) -> Option<Vec<u8>> {
        match self.meta.get("client_sees") {
            None => Some(self.body.clone()),
            Some(Value::Null) => None,
            Some(v) => Some(std::fs::read(self.dir.join(v.as_str().unwrap())).unwrap()),
        }
    }
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metering");
    let mut out = Vec::new();
    for shape in std::fs::read_dir(&root).unwrap() {
        let dir = shape.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let api_name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let api = Api::from_name(&api_name).unwrap_or_else(|| panic!("{api_name}: no such API"));
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let Some(stem) = file.strip_suffix(".meta.json") else {
                continue;
            };
            let meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let mut body = std::fs::read(dir.join(meta["body"].as_str().unwrap())).unwrap();
            if let Some(needle) = meta["cut_before"].as_str() {
                let at = body
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .unwrap_or_else(|| panic!("{file}: cut_before not found"));
                body.truncate(at);
            }
            out.push(Fixture {
                name: format!("{api_name}/{stem}"),
                api,
                meta,
                body,
                dir: dir.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(out.len() >= 25, "only {} fixtures found", out.len());
    out
}

/// Split points: the whole body, fixed sizes from one byte up, and seeded random cuts.
fn chunkings(len: usize) -> Vec<Vec<usize>> {
    let mut all = vec![vec![]];
    for size in [1, 2, 3, 5, 8, 13, 64, 500] {
        all.push((size..len).step_by(size).collect());
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..24 {
        let mut cuts = Vec::new();
        for _ in 0..6 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            cuts.push((seed % (len as u64 + 1)) as usize);
        }
        cuts.sort_unstable();
        all.push(cuts);
    }
    all
}

fn split<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for &c in cuts {
        chunks.push(&body[start..c]);
        start = c;
    }
    chunks.push(&body[start..]);
    chunks
}

fn bill_of(f: &Fixture, chunks: &[&[u8]]) -> Option<Bill> {
    let estimate = metering::estimate_request(f.api, "POST", &f.request(), DEFAULT_MAX_TOKENS)
        .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    let mut meter = ResponseMeter::new(f.api, Some(f.content_type()), None, 1 << 20);
    for c in chunks {
        meter.feed(c);
    }
    metering::bill(f.api, &estimate, &meter.finish(), f.ran())
}

/// A bill in the sidecar's terms.
fn as_json(bill: &Option<Bill>) -> Value {
    let Some(b) = bill else {
        return Value::Null;
    };
    let mut v = serde_json::json!({
        "input_tokens": b.usage.input_tokens,
        "output_tokens": b.usage.output_tokens,
        "usage_source": if b.reported { "reported" } else { "estimated" },
        "model": b.model,
    });
    for (name, value) in [
        ("cached_input_tokens", b.usage.cached_input_tokens),
        ("cache_write_input_tokens", b.usage.cache_write_input_tokens),
        ("reasoning_tokens", b.usage.reasoning_tokens),
    ] {
        if let Some(n) = value {
            v[name] = n.into();
        }
    }
    v
}

#[test]
fn every_fixture_is_billed_exactly_at_every_chunking() {
    let mut wrong = Vec::new();
    for f in fixtures() {
        let got = as_json(&bill_of(&f, &[&f.body]));
        if got != f.meta["expect"] {
            wrong.push(format!("{}: {got}", f.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for f in fixtures() {
        let expected = &f.meta["expect"];
        for cuts in chunkings(f.body.len()) {
            let got = as_json(&bill_of(&f, &split(&f.body, &cuts)));
            assert_eq!(&got, expected, "{} cut at {cuts:?}", f.name);
        }
    }
}

#[test]
fn every_stream_reaches_the_client_as_it_asked_for_it() {
    for f in fixtures() {
        let Some(want) = f.client_sees() else {
            continue;
        };
        let request = f.request();
        let asked = if f.api.usage_on_request() {
            include_usage::add_to_request(&request)
        } else {
            None
        };
        // The filter asks for usage exactly where the shape needs it and the client did not.
        let streamed_openai = f.api.usage_on_request() && f.meta["request"]["stream"] == true;
        let client_asked = f.meta["request"]["stream_options"]["include_usage"] == true;
        assert_eq!(
            asked.is_some(),
            streamed_openai && !client_asked,
            "{}: include_usage added?",
            f.name
        );
        for cuts in chunkings(f.body.len()) {
            let chunks = split(&f.body, &cuts);
            let seen = if asked.is_some() && f.content_type() == "text/event-stream" {
                let mut s = UsageStripper::new(metering::MAX_EVENT_BYTES);
                let mut out = Vec::new();
                for c in &chunks {
                    s.push(c, &mut out);
                }
                s.finish(&mut out);
                out
            } else {
                chunks.concat()
            };
            assert!(
                seen == want,
                "{} cut at {cuts:?}: the client got\n{}\ninstead of\n{}",
                f.name,
                String::from_utf8_lossy(&seen),
                String::from_utf8_lossy(&want)
            );
        }
    }
}

#[test]
fn every_shape_has_fixtures() {
    let all = fixtures();
    for api in Api::ALL {
        if api == Api::Other {
            continue;
        }
        assert!(
            all.iter().any(|f| f.api == api),
            "no fixture for {}",
            api.as_str()
        );
    }
}
