//! Shared state and the router. `app` is the whole HTTP surface, so tests call it in-process
//! exactly as the server does.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::api;
use crate::auth::Tokens;
use crate::error::ApiError;
use crate::store::Store;

/// Largest request body accepted (a full batch of large records fits well below it).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub tokens: Arc<Tokens>,
}

impl AppState {
    pub fn new(store: Store, tokens: Tokens) -> Self {
        Self {
            store,
            tokens: Arc::new(tokens),
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
        // Applies to the routes above, so it comes after them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
