//! Fleet-wide limits through a rate-limit service that speaks Envoy's protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), such as
//! envoyproxy/ratelimit or Limitador: what is asked, how answers read, and how the two answers
//! of one request make a decision. Pure functions; `host::ratelimit` and `host::http` make
//! the calls.
//!
//! One request makes two calls, one per limit, each with a single descriptor and its hits:
//!
//! - `[("tenant", id), ("limit", "requests")]` with 1 hit;
//! - `[("tenant", id), ("limit", "tokens")]` with the token reservation as its hits (no call
//!   when the reservation is 0).
//!
//! The hits go in both places the protocol has for them: the descriptor's own
//! `hits_addend` (read by envoyproxy/ratelimit) and the request's (read by Limitador, which
//! knows no other, and by older services). With one descriptor per call the two agree, which
//! one request with both descriptors could not do for a service that reads only the
//! request's.
//!
//! Settlement can only add: a request that used more tokens than it reserved makes one more
//! `tokens` call with the excess as its hits. The protocol has no way to give hits back, so a
//! reservation larger than the usage stays counted by the service until its window ends.

pub mod proto;

use prost::Message;

use crate::limits::{LimitView, Refusal};

/// The gRPC service and method the filter calls.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// Descriptor keys and values: the contract with the service's limit configuration.
pub const TENANT_KEY: &str = "tenant";
pub const LIMIT_KEY: &str = "limit";

/// What a `429` says when the service gives no reset: its windows are per minute.
const FALLBACK_RETRY_NS: u64 = 60_000_000_000;

/// Which of a tenant's two limits a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
        }
    }
}

/// The target of the gRPC call: a serialized `GrpcService` naming the cluster. Envoy tries
/// this form before reading the argument as a bare cluster name, so no cluster name can be
/// mistaken for a message (which Envoy would refuse with a status the SDK panics on).
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    proto::GrpcService {
        envoy_grpc: Some(proto::EnvoyGrpc {
            cluster_name: cluster.to_string(),
        }),
    }
    .encode_to_vec()
}

/// A `ShouldRateLimit` request for `hits` of one limit of one tenant. With `limit`, the
/// descriptor carries the tenant's limit per minute as an override, so a service that honours
/// overrides (envoyproxy/ratelimit) needs no per-tenant configuration and follows the
/// registry's changes; a limit above `u32::MAX` is sent as `u32::MAX`.
pub fn request(domain: &str, tenant: &str, kind: Kind, hits: u64, limit: Option<u64>) -> Vec<u8> {
    let entry = |key: &str, value: &str| proto::Entry {
        key: key.to_string(),
        value: value.to_string(),
    };
    proto::RateLimitRequest {
        domain: domain.to_string(),
        descriptors: vec![proto::RateLimitDescriptor {
            entries: vec![entry(TENANT_KEY, tenant), entry(LIMIT_KEY, kind.as_str())],
            limit: limit.map(|l| proto::RateLimitOverride {
                requests_per_unit: u32::try_from(l).unwrap_or(u32::MAX),
                unit: proto::UNIT_MINUTE,
            }),
            hits_addend: Some(proto::UInt64Value { value: hits }),
        }],
        hits_addend: u32::try_from(hits).unwrap_or(u32::MAX),
    }
    .encode_to_vec()
}

/// What came of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Under the limit; the limit as the service reports it, when it does.
    Ok(Option<LimitView>),
    /// Over the limit.
    OverLimit(Option<LimitView>),
    /// No usable answer: not dispatched, a gRPC error (a timeout among them), an answer that
    /// does not decode or says `UNKNOWN`. The reason is for the log.
    Failed(String),
}

/// Reads the answer to a call that succeeded at the gRPC level.
pub fn read_answer(bytes: &[u8]) -> Answer {
    let response = match proto::RateLimitResponse::decode(bytes) {
        Ok(r) => r,
        Err(e) => return Answer::Failed(format!("unreadable answer: {e}")),
    };
    let view = response.statuses.first().and_then(view_of);
    match response.overall_code {
        proto::CODE_OK => Answer::Ok(view),
        proto::CODE_OVER_LIMIT => Answer::OverLimit(view),
        other => Answer::Failed(format!("the service answered code {other}")),
    }
}

/// The figures of a descriptor's status: the limit, what remains and when it resets.
fn view_of(status: &proto::DescriptorStatus) -> Option<LimitView> {
    let limit = status.current_limit.as_ref()?;
    let reset_ns = status.duration_until_reset.map_or(0, |d| {
        let secs = u64::try_from(d.seconds).unwrap_or(0);
        let nanos = u64::try_from(d.nanos).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    });
    Some(LimitView {
        limit: u64::from(limit.requests_per_unit),
        remaining: u64::from(status.limit_remaining),
        reset_ns,
    })
}

/// The calls one request waits for, and their answers as they arrive.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    calls: Vec<(u32, Kind)>,
    requests: Option<Answer>,
    tokens: Option<Answer>,
    /// Whether a `tokens` call belongs to this request (none for a reservation of 0).
    with_tokens: bool,
}

impl Pending {
    pub fn new(with_tokens: bool) -> Pending {
        Pending {
            with_tokens,
            ..Pending::default()
        }
    }

    /// A call went out.
    pub fn dispatched(&mut self, token: u32, kind: Kind) {
        self.calls.push((token, kind));
    }

    /// A call was settled without an answer (it could not be dispatched).
    pub fn set(&mut self, kind: Kind, answer: Answer) {
        match kind {
            Kind::Requests => self.requests = Some(answer),
            Kind::Tokens => self.tokens = Some(answer),
        }
    }

    /// The answer to a call of this request; false for a token that is not one of its calls.
    pub fn answered(&mut self, token: u32, answer: Answer) -> bool {
        let Some(at) = self.calls.iter().position(|(t, _)| *t == token) else {
            return false;
        };
        let (_, kind) = self.calls.remove(at);
        self.set(kind, answer);
        true
    }

    /// Whether calls are still out.
    pub fn waiting(&self) -> bool {
        !self.calls.is_empty()
    }

    /// The decision, once every answer is in.
    pub fn outcome(&self, allow_on_failure: bool) -> Option<Outcome> {
        let requests = self.requests.as_ref()?;
        let tokens = match (&self.tokens, self.with_tokens) {
            (Some(t), _) => Some(t),
            (None, false) => None,
            (None, true) => return None,
        };
        Some(decide(requests, tokens, allow_on_failure))
    }
}

/// What the service's answers mean for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through. The views are the service's figures, where it gave them; `failures`
    /// names the calls that failed and were let through by `failure_mode: allow`.
    Admit {
        requests: Option<LimitView>,
        tokens: Option<LimitView>,
        failures: Vec<String>,
    },
    /// The tenant is over a limit across the fleet.
    Refuse {
        refusal: Refusal,
        retry_after_ns: u64,
        requests: Option<LimitView>,
        tokens: Option<LimitView>,
    },
    /// A call failed and `failure_mode` is `deny`.
    Unavailable { failures: Vec<String> },
}

/// Both answers to an outcome: over a limit refuses (whatever the other call did); otherwise
/// a failed call lets the request through or not by the failure mode.
pub fn decide(requests: &Answer, tokens: Option<&Answer>, allow_on_failure: bool) -> Outcome {
    let view = |a: Option<&Answer>| match a {
        Some(Answer::Ok(v) | Answer::OverLimit(v)) => *v,
        _ => None,
    };
    let over = |a: Option<&Answer>| matches!(a, Some(Answer::OverLimit(_)));
    let (requests_view, tokens_view) = (view(Some(requests)), view(tokens));

    let refusal = if over(Some(requests)) {
        Some((Refusal::Requests, requests_view))
    } else if over(tokens) {
        Some((Refusal::Tokens, tokens_view))
    } else {
        None
    };
    if let Some((refusal, refused_view)) = refusal {
        let retry_after_ns = refused_view
            .map(|v| v.reset_ns)
            .filter(|&ns| ns > 0)
            .unwrap_or(FALLBACK_RETRY_NS);
        return Outcome::Refuse {
            refusal,
            retry_after_ns,
            requests: requests_view,
            tokens: tokens_view,
        };
    }

    let failures: Vec<String> = [(Kind::Requests, Some(requests)), (Kind::Tokens, tokens)]
        .into_iter()
        .filter_map(|(kind, a)| match a {
            Some(Answer::Failed(why)) => Some(format!("{}: {why}", kind.as_str())),
            _ => None,
        })
        .collect();
    if !failures.is_empty() && !allow_on_failure {
        return Outcome::Unavailable { failures };
    }
    Outcome::Admit {
        requests: requests_view,
        tokens: tokens_view,
        failures,
    }
}

/// What a client is told about one limit in global mode: the service's limit and reset, and
/// the lower of the two remainders (this Envoy's own bucket applies too).
pub fn merged(local: LimitView, service: Option<LimitView>) -> LimitView {
    match service {
        Some(s) => LimitView {
            limit: s.limit,
            remaining: s.remaining.min(local.remaining),
            reset_ns: s.reset_ns,
        },
        None => local,
    }
}

/// A gRPC failure, for the log.
pub fn grpc_failure(status: u32) -> Answer {
    let name = match status {
        1 => "cancelled",
        2 => "unknown error",
        4 => "timed out",
        12 => "unimplemented (is this a rate-limit service?)",
        13 => "internal error",
        14 => "unavailable",
        16 => "unauthenticated",
        _ => "failed",
    };
    Answer::Failed(format!("grpc status {status}, {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn status(code: i32, limit: u32, remaining: u32, reset_s: i64) -> proto::DescriptorStatus {
        proto::DescriptorStatus {
            code,
            current_limit: Some(proto::RateLimit {
                requests_per_unit: limit,
                unit: 2,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(proto::Duration {
                seconds: reset_s,
                nanos: 0,
            }),
        }
    }

    fn answer(code: i32, statuses: Vec<proto::DescriptorStatus>) -> Vec<u8> {
        proto::RateLimitResponse {
            overall_code: code,
            statuses,
        }
        .encode_to_vec()
    }

    fn view(limit: u64, remaining: u64, reset_s: u64) -> LimitView {
        LimitView {
            limit,
            remaining,
            reset_ns: reset_s * S,
        }
    }

    /// The request's bytes, written out by hand from the protobuf encoding rules, so that a
    /// wrong field number or wire type cannot hide behind prost agreeing with itself.
    #[test]
    fn the_request_has_the_protocols_field_numbers() {
        let bytes = request("gw", "acme", Kind::Tokens, 300, None);
        let mut want = vec![0x0a, 2, b'g', b'w']; // domain = 1
        let mut descriptor = vec![0x0a, 14, 0x0a, 6]; // entries = 1: Entry{key = 1, value = 2}
        descriptor.extend(b"tenant");
        descriptor.extend([0x12, 4]);
        descriptor.extend(b"acme");
        descriptor.extend([0x0a, 15, 0x0a, 5]);
        descriptor.extend(b"limit");
        descriptor.extend([0x12, 6]);
        descriptor.extend(b"tokens");
        descriptor.extend([0x1a, 3, 0x08, 0xac, 0x02]); // hits_addend = 3: UInt64Value{1: 300}
        want.push(0x12); // descriptors = 2
        want.push(descriptor.len() as u8);
        want.extend(descriptor);
        want.extend([0x18, 0xac, 0x02]); // hits_addend = 3 (uint32): 300
        assert_eq!(bytes, want);
    }

    /// The override between the entries and the hits: field 2, `{1: limit, 2: MINUTE}`.
    #[test]
    fn a_limit_override_is_field_two_of_the_descriptor_per_minute() {
        let with = request("gw", "acme", Kind::Requests, 1, Some(60));
        let without = request("gw", "acme", Kind::Requests, 1, None);
        let decoded = proto::RateLimitRequest::decode(with.as_slice()).unwrap();
        assert_eq!(
            decoded.descriptors[0].limit,
            Some(proto::RateLimitOverride {
                requests_per_unit: 60,
                unit: 2
            })
        );
        let override_bytes = [0x12, 4, 0x08, 60, 0x10, 2];
        let at = with
            .windows(override_bytes.len())
            .position(|w| w == override_bytes)
            .expect("the override's bytes");
        // Written after the entries (which end with `requests`) and before the hits.
        assert!(with[..at].ends_with(b"requests"));
        assert_eq!(with[at + override_bytes.len()], 0x1a);
        // The descriptor grew by exactly the override; the rest is unchanged.
        assert_eq!(with.len(), without.len() + override_bytes.len());
        let huge = request("gw", "acme", Kind::Tokens, 1, Some(u64::MAX));
        let decoded = proto::RateLimitRequest::decode(huge.as_slice()).unwrap();
        assert_eq!(
            decoded.descriptors[0].limit.map(|l| l.requests_per_unit),
            Some(u32::MAX)
        );
    }

    #[test]
    fn request_level_hits_saturate_at_u32() {
        let bytes = request("gw", "acme", Kind::Tokens, u64::MAX, None);
        let decoded = proto::RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.hits_addend, u32::MAX);
        assert_eq!(decoded.descriptors[0].hits_addend.unwrap().value, u64::MAX);
    }

    #[test]
    fn the_grpc_service_names_the_cluster() {
        let mut want = vec![0x0a, 11, 0x0a, 9];
        want.extend(b"ratelimit");
        assert_eq!(grpc_service("ratelimit"), want);
    }

    #[test]
    fn answers_are_read_with_their_figures() {
        assert_eq!(
            read_answer(&answer(1, vec![status(1, 60, 59, 42)])),
            Answer::Ok(Some(view(60, 59, 42)))
        );
        assert_eq!(
            read_answer(&answer(2, vec![status(2, 5, 0, 7)])),
            Answer::OverLimit(Some(view(5, 0, 7)))
        );
        // Limitador answers without statuses.
        assert_eq!(read_answer(&answer(1, vec![])), Answer::Ok(None));
        assert!(matches!(read_answer(&answer(0, vec![])), Answer::Failed(_)));
        assert!(matches!(read_answer(&[0xff, 0xff]), Answer::Failed(_)));
        // An empty message is a valid encoding of overall_code UNKNOWN.
        assert!(matches!(read_answer(&[]), Answer::Failed(_)));
        // A status without a limit (no limit configured for it) has no figures.
        let bare = proto::DescriptorStatus {
            code: 1,
            ..Default::default()
        };
        assert_eq!(read_answer(&answer(1, vec![bare])), Answer::Ok(None));
    }

    #[test]
    fn over_a_limit_refuses_whatever_the_other_call_did() {
        let over = Answer::OverLimit(Some(view(1000, 0, 12)));
        let ok = Answer::Ok(Some(view(60, 10, 30)));
        let failed = Answer::Failed("x".into());
        for requests in [&ok, &failed] {
            match decide(requests, Some(&over), false) {
                Outcome::Refuse {
                    refusal,
                    retry_after_ns,
                    ..
                } => assert_eq!((refusal, retry_after_ns), (Refusal::Tokens, 12 * S)),
                other => panic!("{other:?}"),
            }
        }
        match decide(&Answer::OverLimit(None), Some(&ok), true) {
            Outcome::Refuse {
                refusal,
                retry_after_ns,
                tokens,
                ..
            } => {
                assert_eq!(refusal, Refusal::Requests);
                assert_eq!(retry_after_ns, 60 * S, "no reset given: a whole window");
                assert_eq!(tokens, Some(view(60, 10, 30)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_follow_the_failure_mode() {
        let ok = Answer::Ok(None);
        let failed = grpc_failure(4);
        assert!(matches!(
            decide(&ok, Some(&failed), false),
            Outcome::Unavailable { .. }
        ));
        match decide(&failed, Some(&ok), true) {
            Outcome::Admit { failures, .. } => {
                assert_eq!(
                    failures,
                    vec!["requests: grpc status 4, timed out".to_string()]
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&ok, None, false),
            Outcome::Admit {
                requests: None,
                tokens: None,
                failures: vec![]
            }
        );
    }

    #[test]
    fn pending_waits_for_every_call() {
        let mut p = Pending::new(true);
        p.dispatched(3, Kind::Requests);
        p.dispatched(5, Kind::Tokens);
        assert!(p.outcome(true).is_none());
        assert!(!p.answered(4, Answer::Ok(None)), "not one of its calls");
        assert!(p.answered(5, Answer::Ok(None)));
        assert!(p.waiting() && p.outcome(true).is_none());
        assert!(p.answered(3, Answer::OverLimit(None)));
        assert!(!p.waiting());
        assert!(matches!(p.outcome(true), Some(Outcome::Refuse { .. })));

        // Without a tokens call, the requests answer decides alone.
        let mut p = Pending::new(false);
        p.set(Kind::Requests, Answer::Ok(None));
        assert!(matches!(p.outcome(false), Some(Outcome::Admit { .. })));
    }

    #[test]
    fn the_client_sees_the_services_limit_and_the_lower_remainder() {
        let local = view(60, 50, 1);
        assert_eq!(merged(local, Some(view(60, 12, 40))), view(60, 12, 40));
        assert_eq!(merged(local, Some(view(60, 55, 40))), view(60, 50, 40));
        assert_eq!(merged(local, None), local);
    }
}
