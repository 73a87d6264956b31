//! A rate-limit service for the integration tests: Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over gRPC, deciding with the
//! `limitador` crate and counting in Redis with its Redis storage, as a Limitador deployment
//! does. The limits come from a file in Limitador's own format (a YAML list of limits), so the
//! one shipped in `envoy/ratelimit/` is the kind this server reads.
//!
//! ```text
//! ratelimit-test-server --listen 127.0.0.1:8081 --redis redis://127.0.0.1:6379 --limits limits.yaml
//! ```
//!
//! Each descriptor of a request is decided on its own (`descriptors[0]` in the limits'
//! conditions is that descriptor), with its own `hits_addend` when it carries one and the
//! request's otherwise (0 meaning 1), as envoyproxy/ratelimit does; the answer carries one
//! status per descriptor with the limit, what remains of it and when its window resets.
//!
//! A descriptor that carries a limit override (`RateLimitDescriptor.limit`) is decided on
//! that limit alone, the configured ones set aside, as envoyproxy/ratelimit does: this server
//! adds, on first sight, a Limitador limit of that size and window whose counters are kept
//! per value of each of the descriptor's entries (Limitador's `variables`). A different size
//! is a different limit with counters of its own, so a changed override starts from zero
//! here (envoyproxy/ratelimit keeps counting under the same key).
//!
//! Decisions are taken one at a time. Limitador's Redis storage reads the counters and then
//! increments them (two round trips), so two concurrent calls could both see room for the
//! last unit; one at a time, the tests can expect the limit to hold exactly. (A Limitador
//! deployment has that race; its documentation says the Redis storage trades some accuracy
//! for speed.)

mod proto;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use clap::Parser;
use limitador::limit::{Context, Expression, Limit, Namespace};
use limitador::storage::redis::AsyncRedisStorage;
use limitador::AsyncRateLimiter;
use tokio::sync::Mutex;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_service::Service;

use proto::{code, unit, DescriptorStatus, RateLimitRequest, RateLimitResponse};

const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

#[derive(Parser)]
#[command(about = "Envoy's rate-limit service over Limitador's Redis storage (for tests)")]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Redis holding the counters.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Limitador's limits file (YAML).
    #[arg(long)]
    limits: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("ratelimit-test-server: {err}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let limits = read_limits(&args.limits)?;
    let storage = AsyncRedisStorage::new(&args.redis)
        .await
        .map_err(|e| format!("redis {}: {e}", args.redis))?;
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    let count = limits.len();
    for limit in limits {
        limiter.add_limit(limit);
    }
    let server = RateLimitServer {
        limiter: Arc::new(Mutex::new(limiter)),
    };
    println!(
        "ratelimit-test-server listening on {} ({count} limits, redis {})",
        args.listen, args.redis
    );
    tonic::transport::Server::builder()
        .serve_with_shutdown(args.listen, server, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("serving on {}: {e}", args.listen))
}

/// Limitador's limits file: a YAML list of limits.
fn read_limits(path: &PathBuf) -> Result<Vec<Limit>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_limits(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_limits(text: &str) -> Result<Vec<Limit>, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

/// The gRPC service: `ShouldRateLimit` only.
#[derive(Clone)]
struct RateLimitServer {
    /// Held for the whole of each decision: see the crate doc.
    limiter: Arc<Mutex<AsyncRateLimiter>>,
}

impl NamedService for RateLimitServer {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl Service<http::Request<Body>> for RateLimitServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(Status::unimplemented("only ShouldRateLimit is served").into_http());
            }
            let mut grpc = Grpc::new(ProstCodec::<RateLimitResponse, RateLimitRequest>::default());
            Ok(grpc.unary(server, request).await)
        })
    }
}

impl UnaryService<RateLimitRequest> for RateLimitServer {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<RateLimitRequest>) -> Self::Future {
        let limiter = Arc::clone(&self.limiter);
        Box::pin(async move {
            let limiter = limiter.lock().await;
            should_rate_limit(&limiter, request.into_inner())
                .await
                .map(Response::new)
        })
    }
}

async fn should_rate_limit(
    limiter: &AsyncRateLimiter,
    request: RateLimitRequest,
) -> Result<RateLimitResponse, Status> {
    if request.domain.is_empty() {
        return Err(Status::invalid_argument("domain is required"));
    }
    let namespace = Namespace::from(request.domain.as_str());
    let default_hits = u64::from(request.hits_addend.max(1));
    let mut response = RateLimitResponse {
        overall_code: code::OK,
        statuses: Vec::with_capacity(request.descriptors.len()),
    };
    for descriptor in &request.descriptors {
        let hits = descriptor.hits_addend.map_or(default_hits, |h| h.value);
        let entries: HashMap<String, String> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let keys: Vec<String> = descriptor.entries.iter().map(|e| e.key.clone()).collect();
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), vec![entries]);

        let namespace = match descriptor.limit {
            Some(limit) => override_namespace(limiter, &request.domain, limit, &keys)?,
            None => namespace.clone(),
        };
        let result = limiter
            .check_rate_limited_and_update(&namespace, &ctx, hits)
            .await
            .map_err(|e| Status::unavailable(format!("limit storage: {e}")))?;
        let status = descriptor_status(&result);
        if status.code == code::OVER_LIMIT {
            response.overall_code = code::OVER_LIMIT;
        }
        response.statuses.push(status);
    }
    Ok(response)
}

/// The namespace of an override's limit, added to the limiter the first time it is seen: one
/// namespace per size and window, its counters kept per value of each entry.
fn override_namespace(
    limiter: &AsyncRateLimiter,
    domain: &str,
    limit: proto::RateLimitOverride,
    keys: &[String],
) -> Result<Namespace, Status> {
    let seconds = match limit.unit {
        unit::SECOND => 1,
        unit::MINUTE => 60,
        unit::HOUR => 3600,
        unit::DAY => 86_400,
        other => {
            return Err(Status::invalid_argument(format!(
                "limit override: unit {other} is not served"
            )))
        }
    };
    if keys.is_empty()
        || keys
            .iter()
            .any(|k| k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    {
        return Err(Status::invalid_argument(
            "limit override: entry keys must be non-empty [A-Za-z0-9_]",
        ));
    }
    let namespace = Namespace::from(
        format!("{domain}/override/{}/{seconds}", limit.requests_per_unit).as_str(),
    );
    let variables = keys
        .iter()
        .map(|k| Expression::parse(format!("descriptors[0].{k}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("limit override: {e}")))?;
    limiter.add_limit(Limit::new(
        namespace.clone(),
        u64::from(limit.requests_per_unit),
        seconds,
        [],
        variables,
    ));
    Ok(namespace)
}

/// The status of one descriptor: its most restrictive counter, or OK with no limit when no
/// limit applies to it.
fn descriptor_status(result: &limitador::CheckResult) -> DescriptorStatus {
    let code = if result.limited {
        code::OVER_LIMIT
    } else {
        code::OK
    };
    let tightest = result
        .counters
        .iter()
        .min_by_key(|c| c.remaining().unwrap_or(c.max_value()));
    let Some(counter) = tightest else {
        return DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: None,
        };
    };
    let window = counter.window().as_secs();
    let reset = counter.expires_in().unwrap_or(counter.window());
    DescriptorStatus {
        code,
        current_limit: Some(proto::RateLimit {
            requests_per_unit: clamp_u32(counter.max_value()),
            unit: match window {
                1 => unit::SECOND,
                60 => unit::MINUTE,
                3600 => unit::HOUR,
                86_400 => unit::DAY,
                _ => unit::UNKNOWN,
            },
            name: counter.limit().name().unwrap_or_default().to_string(),
        }),
        limit_remaining: clamp_u32(counter.remaining().unwrap_or(0)),
        duration_until_reset: Some(proto::Duration {
            seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
        }),
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits file shipped for operators is one this server (and so Limitador) reads, and
    /// it holds the demo tenants' limits.
    #[test]
    fn the_shipped_limitador_file_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../envoy/ratelimit/limitador-limits.yaml"
        );
        let limits = read_limits(&PathBuf::from(path)).unwrap();
        let mut found: Vec<(u64, u64, Vec<String>)> = limits
            .iter()
            .map(|l| {
                assert_eq!(l.namespace().as_ref(), "inference-gate");
                let mut conditions: Vec<String> = l.conditions().into_iter().collect();
                conditions.sort();
                (l.max_value(), l.seconds(), conditions)
            })
            .collect();
        found.sort();
        let expected = |tenant: &str, kind: &str, max: u64| {
            (
                max,
                60,
                vec![
                    format!("descriptors[0].limit == '{kind}'"),
                    format!("descriptors[0].tenant == '{tenant}'"),
                ],
            )
        };
        let mut want = vec![
            expected("acme", "requests", 60),
            expected("acme", "tokens", 20_000),
            expected("globex", "requests", 5),
            expected("globex", "tokens", 2000),
        ];
        want.sort();
        assert_eq!(found, want);
    }

    #[test]
    fn a_bad_limits_file_is_refused() {
        assert!(parse_limits("- namespace: x\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[0].tenant ==\"]\n  variables: []\n").is_err());
        assert!(parse_limits("not: a list").is_err());
    }
}
