//! Property tests of every parser in the filter: arbitrary bytes in, a clear answer out, never
//! a panic (a panic in the filter aborts a worker's Wasm VM), and the same answer however the
//! input is split into chunks.

#![allow(clippy::indexing_slicing)]

use inference_gate::auth::{self, Credential};
use inference_gate::config::Config;
use inference_gate::limits::{self, BucketState, Decision, Limits};
use inference_gate::metering::include_usage::{self, UsageStripper};
use inference_gate::metering::json::flag_of;
use inference_gate::metering::ndjson::NdjsonDecoder;
use inference_gate::metering::sse::SseDecoder;
use inference_gate::metering::{self, Api, ResponseMeter, MAX_REPORTED_TOKENS};
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

fn ndjson_lines(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, u64) {
    let mut d = NdjsonDecoder::new(max);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, &mut |l| out.push(l.to_vec()));
    }
    d.finish(&mut |l| out.push(l.to_vec()));
    (out, d.oversized_lines)
}

/// What a client gets of a stream through the usage stripper.
fn stripped(chunks: &[&[u8]], max: usize) -> (Vec<u8>, u64) {
    let mut s = UsageStripper::new(max);
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    (out, s.removed)
}

/// Stream events with or without usage, null usage, comments and odd line ends, as bytes.
fn usage_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        Just(&b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}"[..]),
        Just(&b"data: {\"usage\": null, \"choices\": [{\"text\": \"x\"}]}"[..]),
        Just(
            &b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}"[..]
        ),
        Just(&b"data: {\"usage\":{\"prompt_tokens\":3}}"[..]),
        Just(&b"data: [DONE]"[..]),
        Just(&b": keep-alive"[..]),
        Just(&b"event: x\ndata: {\"usage\":null}"[..]),
        Just(&b"data:{\"usage\"\r\ndata::null}"[..]),
    ];
    let end = prop::sample::select(vec![
        &b"\n\n"[..],
        b"\r\n\r\n",
        b"\r\r",
        b"\n\r\n",
        b"\r\n\r",
    ]);
    prop::collection::vec((event, end), 0..12).prop_map(|events| {
        events
            .into_iter()
            .flat_map(|(e, end)| [e, end].concat())
            .collect()
    })
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
        let mut m = ResponseMeter::new(Api::OpenAiChat, Some("text/event-stream; charset=utf-8"), None, 1 << 20);
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
        api in prop::sample::select(Api::ALL.to_vec()),
        ct in prop::sample::select(vec!["application/json", "text/event-stream", "application/x-ndjson", "text/plain", ""]),
        points in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let ct = if ct.is_empty() { None } else { Some(ct) };
        let mut m = ResponseMeter::new(api, ct, None, 256);
        for c in split_at_points(&bytes, points) {
            m.feed(c);
        }
        let o = m.finish();
        // Never more output than bytes seen, never a report past the cap.
        prop_assert!(o.output_estimate <= bytes.len() as u64);
        for u in [o.usage, o.reported_input].into_iter().flatten() {
            prop_assert!(u.input_tokens <= MAX_REPORTED_TOKENS && u.output_tokens <= MAX_REPORTED_TOKENS);
        }
    }

    #[test]
    fn every_shape_reads_any_json_the_same_at_any_chunking(
        v in arb_json(),
        api in prop::sample::select(Api::ALL.to_vec()),
        framing in prop::sample::select(vec!["text/event-stream", "application/x-ndjson", "application/json"]),
        points in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let body = match framing {
            "text/event-stream" => format!("event: e\ndata: {v}\n\ndata: {v}\r\n\r\n"),
            "application/x-ndjson" => format!("{v}\n{v}\r\n"),
            _ => v.to_string(),
        };
        let read = |chunks: Vec<&[u8]>| {
            let mut m = ResponseMeter::new(api, Some(framing), None, 1 << 20);
            for c in chunks {
                m.feed(c);
            }
            m.finish()
        };
        let whole = read(vec![body.as_bytes()]);
        prop_assert_eq!(&whole, &read(split_at_points(body.as_bytes(), points)));
        prop_assert!(whole.output_estimate <= body.len() as u64);
    }

    #[test]
    fn ndjson_chunking_never_changes_the_lines(
        bytes in prop::collection::vec(prop_oneof![prop::sample::select(b"{}\"\r\n\n x".to_vec()), any::<u8>()], 0..400),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = ndjson_lines(&[&bytes], 64);
        let split = ndjson_lines(&split_at_points(&bytes, points), 64);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn the_stripper_takes_any_bytes_the_same_at_any_chunking(
        bytes in prop_oneof![usage_stream(), sse_bytes()],
        points in prop::collection::vec(any::<usize>(), 0..8),
        max in prop::sample::select(vec![16usize, 64, 4096]),
    ) {
        let (whole, removed) = stripped(&[&bytes], max);
        let (split, removed_split) = stripped(&split_at_points(&bytes, points), max);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(removed, removed_split);
        // It only ever takes bytes away.
        prop_assert!(whole.len() <= bytes.len());
    }

    #[test]
    fn a_stream_without_usage_passes_the_stripper_untouched(
        words in prop::collection::vec("[a-z ]{0,6}", 0..10),
        points in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut body = Vec::new();
        for w in &words {
            body.extend_from_slice(format!("data: {}\r\n\r\n", serde_json::json!({"choices": [{"delta": {"content": w}}]})).as_bytes());
        }
        body.extend_from_slice(b": ping\n\ndata: [DONE]\n\n");
        prop_assert_eq!(stripped(&split_at_points(&body, points), 1 << 16), (body.clone(), 0));
    }

    #[test]
    fn include_usage_is_added_to_any_streamed_request_as_valid_json(v in arb_json()) {
        let mut v = v;
        if let Some(map) = v.as_object_mut() {
            map.insert("stream".into(), true.into());
        }
        let body = v.to_string();
        if let Some(asked) = include_usage::add_to_request(body.as_bytes()) {
            let parsed: serde_json::Value = serde_json::from_slice(&asked).expect("valid JSON");
            prop_assert_eq!(&parsed["stream_options"]["include_usage"], &serde_json::Value::Bool(true));
            // Nothing else changed.
            let mut back = parsed.clone();
            // (Parsed from the same text: serde_json's float parsing is not exact.)
            let mut orig: serde_json::Value = serde_json::from_str(&body).unwrap();
            back.as_object_mut().unwrap().remove("stream_options");
            orig.as_object_mut().unwrap().remove("stream_options");
            prop_assert_eq!(back, orig);
        } else if let Some(map) = v.as_object() {
            // Only a client that asked already, or a `stream_options` the server refuses.
            let options = map.get("stream_options");
            let asked = options.is_some_and(|o| flag_of(&o["include_usage"]) == Some(true));
            let refused = options.is_some_and(|o| !o.is_null() && !o.is_object());
            prop_assert!(asked || refused, "{}", body);
        }
    }

    #[test]
    fn include_usage_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = include_usage::add_to_request(&bytes);
    }

    #[test]
    fn request_estimates_take_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for api in Api::ALL {
            match metering::estimate_request(api, "POST", &bytes, 100) {
                Ok(e) => prop_assert!(e.total() >= e.input_tokens),
                // Only the inference shapes refuse a body, and only one serde_json cannot read.
                Err(_) => prop_assert!(
                    api.is_inference() && serde_json::from_slice::<serde_json::Value>(&bytes).is_err()
                ),
            }
        }
    }

    #[test]
    fn request_estimates_take_any_json(v in arb_json()) {
        let body = v.to_string();
        for api in Api::ALL {
            let e = metering::estimate_request(api, "POST", body.as_bytes(), 100);
            prop_assert!(e.is_ok(), "{}", body);
            if let Ok(e) = e {
                prop_assert!(e.input_tokens <= body.len() as u64 + 1_000);
            }
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
            "text",
            "message_start",
            "message_delta",
            "content_block_delta",
            "response.completed",
            "response.output_text.delta"
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
                    "usage",
                    "choices",
                    "delta",
                    "type",
                    "message",
                    "done",
                    "prompt_eval_count",
                    "eval_count",
                    "prompt_tokens",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "stream_options",
                    "include_usage",
                    "system",
                    "options",
                    "num_predict",
                    "response",
                    "max_output_tokens",
                ])
                .prop_map(str::to_string),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
