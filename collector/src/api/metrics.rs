//! `GET /metrics`: the collector's metrics in the Prometheus text format. No token, like
//! `/healthz`: the figures are counts and latencies, never a record or a tenant.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;
use crate::metrics::CONTENT_TYPE;

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
}
