//! Shared state and the router. `app` is the whole HTTP surface, so tests call it in-process
//! exactly as the server does.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::api;
use crate::auth::Tokens;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Store;

/// Largest request body accepted (a full batch of large records fits well below it).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(store: Store, tokens: Tokens) -> Self {
        Self {
            store,
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/records", post(api::ingest::post_records))
        .route("/v1/billing", get(api::query::billing))
        .route("/v1/usage", get(api::query::usage))
        .route("/v1/audit", get(api::query::audit))
        .route("/healthz", get(api::health::healthz))
        .route("/metrics", get(api::metrics::metrics))
        // Applies to the routes above, so it comes after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), track_latency))
        .with_state(state)
}

/// Times every request into `collector_http_request_duration_seconds`, labelled by the
/// route pattern (never the raw path, whose values are unbounded).
async fn track_latency(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let response = next.run(request).await;
    state.metrics.request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
