//! The rate-limit service's side of `ShouldRateLimit` for the global-mode scenarios: the
//! messages (written out by hand with the field numbers of Envoy's `rls.proto`), reading the
//! filter's requests and writing the answers the test gives.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct RateLimitRequest {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(message, repeated, tag = "2")]
    descriptors: Vec<Descriptor>,
    #[prost(uint32, tag = "3")]
    hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
struct Descriptor {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Entry>,
    #[prost(message, optional, tag = "2")]
    limit: Option<LimitOverride>,
    #[prost(message, optional, tag = "3")]
    hits_addend: Option<UInt64Value>,
}

/// `RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, Copy, PartialEq, Message)]
struct LimitOverride {
    #[prost(uint32, tag = "1")]
    requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    unit: i32,
}

#[derive(Clone, PartialEq, Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, Copy, PartialEq, Message)]
struct UInt64Value {
    #[prost(uint64, tag = "1")]
    value: u64,
}

#[derive(Clone, PartialEq, Message)]
struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, Message)]
struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(message, optional, tag = "2")]
    current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, Message)]
struct RateLimit {
    #[prost(uint32, tag = "1")]
    requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    unit: i32,
}

#[derive(Clone, Copy, PartialEq, Message)]
struct Duration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// Which limit a call asks about (the `limit` entry of its descriptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

/// What the filter asked.
#[derive(Clone, Debug)]
pub struct Asked {
    pub domain: String,
    pub tenant: String,
    pub kind: Kind,
    pub descriptor_hits: Option<u64>,
    pub request_hits: u64,
    /// The descriptor's limit override: `(requests_per_unit, unit)`.
    pub limit: Option<(u32, i32)>,
}

/// Reads a request of one descriptor `[("tenant", id), ("limit", kind)]`, and nothing else.
pub fn decode_request(bytes: &[u8]) -> Asked {
    let request = RateLimitRequest::decode(bytes).expect("a RateLimitRequest");
    assert_eq!(request.descriptors.len(), 1, "one descriptor per call");
    let d = &request.descriptors[0];
    let keys: Vec<&str> = d.entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["tenant", "limit"]);
    let kind = match d.entries[1].value.as_str() {
        "requests" => Kind::Requests,
        "tokens" => Kind::Tokens,
        other => panic!("unknown limit kind {other:?}"),
    };
    Asked {
        domain: request.domain,
        tenant: d.entries[0].value.clone(),
        kind,
        descriptor_hits: d.hits_addend.map(|h| h.value),
        request_hits: u64::from(request.hits_addend),
        limit: d.limit.map(|l| (l.requests_per_unit, l.unit)),
    }
}

/// `(limit per minute, remaining, seconds until reset)`, or no status at all (as Limitador).
pub type Figures = Option<(u32, u32, i64)>;

fn response(code: i32, figures: Figures) -> Vec<u8> {
    let statuses = figures
        .map(|(limit, remaining, reset)| DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                requests_per_unit: limit,
                unit: 2,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: reset,
                nanos: 0,
            }),
        })
        .into_iter()
        .collect();
    RateLimitResponse {
        overall_code: code,
        statuses,
    }
    .encode_to_vec()
}

/// `OK`.
pub fn ok(figures: Figures) -> Vec<u8> {
    response(1, figures)
}

/// `OVER_LIMIT`.
pub fn over(figures: Figures) -> Vec<u8> {
    response(2, figures)
}
