//! Property tests of every parser in the filter: arbitrary bytes in, a clear answer out, never
//! a panic (a panic in the filter aborts a worker's Wasm VM), and the same answer however the
//! input is split into chunks.

#![allow(clippy::indexing_slicing)]

use inference_gate::auth::{self, Credential};
use inference_gate::config::Config;
use inference_gate::limits::{self, BucketState, Decision, Limits};
use inference_gate::metering::sse::SseDecoder;
use inference_gate::metering::{self, Api, ResponseMeter};
use inference_gate::shipper::Batch;
use proptest::prelude::*;

/// Dispatched events as (name, data), and the number of oversized events skipped.
type Decoded = (Vec<(Vec<u8>, Vec<u8>)>, u64);

fn sse_events(chunks: &[&[u8]], max: usize) -> Decoded {
    let mut d = SseDecoder::new(max);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, &mut |e| out.push((e.name.to_vec(), e.data.to_vec())));
    }
    d.finish(&mut |e| out.push((e.name.to_vec(), e.data.to_vec())));
    (out, d.oversized_events)
}

/// Bytes biased towards what matters to an SSE decoder.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = prop::sample::select(b"data:event: x{}\"\r\n\n\n\xff\x00".to_vec());
    prop::collection::vec(prop_oneof![alphabet, any::<u8>()], 0..400)
}

/// A stream as vLLM sends it with `stream_options.include_usage`: usage null on every
/// chunk but the last.
fn vllm_stream(words: usize, prompt: u64, completion: u64) -> Vec<u8> {
    let mut s = Vec::new();
    for i in 0..words {
        s.extend_from_slice(
            format!(
                "data: {{\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    s.extend_from_slice(
        format!(
            "data: {{\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"total_tokens\":{},\"completion_tokens\":{completion}}}}}\r\n\r\ndata: [DONE]\r\n\r\n",
            prompt + completion
        )
        .as_bytes(),
    );
    s
}

fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.iter_mut().for_each(|p| *p %= bytes.len() + 1);
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(&bytes[last..p]);
        last = p;
    }
    chunks.push(&bytes[last..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sse_chunking_never_changes_the_events(bytes in sse_bytes(), points in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = sse_events(&[&bytes], 64);
        let split = sse_events(&split_at_points(&bytes, points), 64);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn stream_usage_is_exact_at_any_chunking(
        words in 0usize..20,
        prompt in 0u64..1_000_000,
        completion in 0u64..1_000_000,
        points in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let body = vllm_stream(words, prompt, completion);
        let mut m = ResponseMeter::new(Some("text/event-stream; charset=utf-8"), None, 1 << 20);
        for c in split_at_points(&body, points) {
            m.feed(c);
        }
        let o = m.finish();
        let u = o.usage.expect("usage");
        prop_assert_eq!((u.input_tokens, u.output_tokens), (prompt, completion));
        prop_assert_eq!(o.model.as_deref(), Some("m"));
    }

    #[test]
    fn response_meter_takes_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        ct in prop::sample::select(vec!["application/json", "text/event-stream", "text/plain", ""]),
        points in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let ct = if ct.is_empty() { None } else { Some(ct) };
        let mut m = ResponseMeter::new(ct, None, 256);
        for c in split_at_points(&bytes, points) {
            m.feed(c);
        }
        let _ = m.finish();
    }

    #[test]
    fn request_estimates_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for api in [Api::OpenAiChat, Api::OpenAiCompletions, Api::OpenAiEmbeddings, Api::Other] {
            let e = metering::estimate_request(api, &bytes, 100);
            prop_assert!(e.total() >= e.input_tokens);
        }
    }

    #[test]
    fn request_estimates_take_any_json(v in arb_json()) {
        let body = v.to_string();
        for api in [Api::OpenAiChat, Api::OpenAiCompletions, Api::OpenAiEmbeddings] {
            let _ = metering::estimate_request(api, body.as_bytes(), 100);
        }
    }

    #[test]
    fn config_parse_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(Config::parse(&bytes).is_err());
    }

    #[test]
    fn config_parse_takes_any_json(v in arb_json()) {
        if let Err(e) = Config::parse(v.to_string().as_bytes()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn credentials_take_any_header_values(a in proptest::option::of(".{0,80}"), k in proptest::option::of(".{0,80}")) {
        match auth::extract(a.as_deref(), k.as_deref()) {
            Credential::Key(key) => {
                prop_assert!(!key.is_empty());
                prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()));
            }
            Credential::Missing => prop_assert!(a.is_none() && k.is_none()),
            Credential::Malformed(_) => {}
        }
    }

    #[test]
    fn stored_state_decoders_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = BucketState::decode(&bytes);
        let _ = Batch::decode(&bytes);
    }

    #[test]
    fn a_burst_never_passes_more_than_the_limit(
        requests in 1u64..50,
        tokens in 1u64..100_000,
        costs in prop::collection::vec(0u64..5000, 1..200),
        start in 0u64..u64::MAX / 2,
    ) {
        let l = Limits { requests, tokens };
        let mut s = BucketState::default();
        let (mut n, mut spent) = (0u64, 0u64);
        for cost in costs {
            if let Decision::Admit { state, requests: rv, tokens: tv } = limits::admit(s, l, start, cost) {
                s = state;
                n += 1;
                spent += cost;
                prop_assert!(rv.remaining <= requests && tv.remaining <= tokens);
            }
        }
        prop_assert!(n <= requests);
        prop_assert!(spent <= tokens);
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "messages",
            "prompt",
            "input",
            "max_tokens",
            "n",
            "content",
            "text"
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "model",
                    "messages",
                    "prompt",
                    "input",
                    "max_tokens",
                    "max_completion_tokens",
                    "n",
                    "best_of",
                    "stream",
                    "content",
                    "text",
                    "role",
                    "tenants",
                    "collector",
                ])
                .prop_map(str::to_string),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
