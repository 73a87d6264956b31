//! Shared state and the router. `app` is the whole HTTP surface, so tests call it in-process
//! exactly as the server does.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::api;
use crate::api::snapshot::SnapshotCache;
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
    /// The last tenant snapshot served, rendered.
    pub snapshots: Arc<SnapshotCache>,
    /// How many unauthorized registry calls may still be audited one by one.
    pub denied_audits: Arc<api::trail::DeniedAudits>,
}

impl AppState {
    pub fn new(store: Store, tokens: Tokens) -> Self {
        Self {
            store,
            tokens: Arc::new(tokens),
            metrics: Arc::new(Metrics::new()),
            snapshots: Arc::new(SnapshotCache::default()),
            denied_audits: Arc::new(api::trail::DeniedAudits::default()),
        }
    }
}

pub fn app(state: AppState) -> Router {
    use api::tenants;
    // The registry's operator endpoints, each call audited (`api::trail`).
    let registry = Router::new()
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route(
            "/v1/tenants/{id}",
            get(tenants::get)
                .patch(tenants::update)
                .delete(tenants::delete),
        )
        .route("/v1/tenants/{id}/keys", post(tenants::add_key))
        .route(
            "/v1/tenants/{id}/keys/{key_id}",
            delete(tenants::revoke_key),
        )
        .route("/v1/health", get(tenants::health).put(tenants::set_health))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::trail::audit,
        ));

    Router::new()
        .merge(registry)
        // The filter's poll; a path of its own beside `/v1/tenants/{id}`, not audited.
        .route("/v1/tenants/snapshot", get(api::snapshot::snapshot))
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
