//! Local replies in the OpenAI error shape, and the rate-limit headers.
//!
//! Every error the filter answers itself is `{"error": {"message", "type", "code"}}`, so the
//! official SDKs raise their usual exception for the status (`AuthenticationError`,
//! `RateLimitError`, ...).

use serde::Serialize;

use crate::limits::{LimitView, Refusal};

/// An answer the filter gives without asking the model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

/// An OpenAI-shaped error reply.
pub fn error(status: u32, kind: &str, code: &str, message: &str) -> LocalReply {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorFields {
            message,
            kind,
            param: None,
            code,
        },
    })
    .unwrap_or_else(|_| {
        br#"{"error":{"message":"error","type":"server_error","code":"internal"}}"#.to_vec()
    });
    LocalReply {
        status,
        headers: vec![("content-type", "application/json".to_string())],
        body,
    }
}

pub fn unauthorized(code: &str, message: &str) -> LocalReply {
    error(401, "invalid_request_error", code, message)
}

pub fn healthy() -> LocalReply {
    LocalReply {
        status: 200,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: br#"{"status":"ok"}"#.to_vec(),
    }
}

/// `/healthz` while the registry drains the fleet: load balancers stop sending here.
pub fn degraded() -> LocalReply {
    LocalReply {
        status: 503,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body: br#"{"status":"degraded"}"#.to_vec(),
    }
}

/// The `429` for a refused request, with `retry-after` and the rate-limit headers.
pub fn rate_limited(
    refusal: Refusal,
    retry_after_ns: u64,
    requests: &LimitView,
    tokens: &LimitView,
    needed_tokens: Option<u64>,
) -> LocalReply {
    let needs = needed_tokens.map_or(String::new(), |n| {
        format!(", this request needs an estimated {n}")
    });
    let (code, message) = match refusal {
        Refusal::Requests => (
            "rate_limit_exceeded",
            format!(
                "Rate limit reached: {} requests per minute. Retry after the time in the retry-after header.",
                requests.limit
            ),
        ),
        Refusal::Tokens => (
            "token_budget_exceeded",
            format!(
                "Token budget reached: {} tokens per minute{needs}. Retry after the time in the retry-after header.",
                tokens.limit
            ),
        ),
        Refusal::TooLarge => (
            "request_too_large",
            format!(
                "Request too large: it needs an estimated {} tokens, more than the budget of {} tokens per minute. Lower max_tokens or shorten the prompt.",
                needed_tokens.unwrap_or(0), tokens.limit
            ),
        ),
    };
    let mut reply = error(429, "rate_limit_error", code, &message);
    if refusal == Refusal::TooLarge {
        // Waiting will not help; the OpenAI and Anthropic SDKs honour this and do not retry.
        reply.headers.push(("x-should-retry", "false".to_string()));
    }
    reply
        .headers
        .push(("retry-after", retry_after_secs(retry_after_ns).to_string()));
    reply.headers.extend(limit_headers(requests, tokens));
    reply
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
pub fn limit_headers(requests: &LimitView, tokens: &LimitView) -> [(&'static str, String); 6] {
    [
        ("x-ratelimit-limit-requests", requests.limit.to_string()),
        (
            "x-ratelimit-remaining-requests",
            requests.remaining.to_string(),
        ),
        ("x-ratelimit-reset-requests", duration(requests.reset_ns)),
        ("x-ratelimit-limit-tokens", tokens.limit.to_string()),
        ("x-ratelimit-remaining-tokens", tokens.remaining.to_string()),
        ("x-ratelimit-reset-tokens", duration(tokens.reset_ns)),
    ]
}

/// Whole seconds, rounded up, at least one: a client that waits this long will pass.
pub fn retry_after_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `850ms`, `12s`, `1.5s`, `1m30s`.
pub fn duration(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, rest_ms) = (ms / 60_000, ms % 60_000);
    let seconds = seconds_text(rest_ms);
    if minutes == 0 {
        format!("{seconds}s")
    } else {
        format!("{minutes}m{seconds}s")
    }
}

fn seconds_text(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        s.to_string()
    } else {
        let digits = format!("{frac:03}");
        format!("{s}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(1), "1ms");
        assert_eq!(duration(850 * MS), "850ms");
        assert_eq!(duration(1000 * MS), "1s");
        assert_eq!(duration(1500 * MS), "1.5s");
        assert_eq!(duration(12_345 * MS), "12.345s");
        assert_eq!(duration(60_000 * MS), "1m0s");
        assert_eq!(duration(90_000 * MS), "1m30s");
        assert_eq!(duration(119_999 * MS + 1), "2m0s");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_000_000_000), 1);
        assert_eq!(retry_after_secs(1_000_000_001), 2);
    }

    #[test]
    fn error_shape() {
        let r = unauthorized("invalid_api_key", "Incorrect API key \"x\"");
        assert_eq!(r.status, 401);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "Incorrect API key \"x\"");
    }

    #[test]
    fn rate_limited_reply_has_headers() {
        let v = LimitView {
            limit: 5,
            remaining: 0,
            reset_ns: 61_000 * MS,
        };
        let t = LimitView {
            limit: 100,
            remaining: 40,
            reset_ns: 0,
        };
        let r = rate_limited(Refusal::Requests, 11_500 * MS, &v, &t, Some(3));
        assert_eq!(r.status, 429);
        let h: std::collections::HashMap<_, _> = r.headers.iter().cloned().collect();
        assert_eq!(h["retry-after"], "12");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "1m1s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "40");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");

        let r = rate_limited(Refusal::TooLarge, 0, &v, &t, Some(500));
        assert!(r.headers.contains(&("x-should-retry", "false".to_string())));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "request_too_large");
        assert!(body["error"]["message"].as_str().unwrap().contains("500"));
    }
}
