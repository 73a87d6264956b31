//! `GET /healthz`: whether the collector's database answers. No token, for probes.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|err| {
        state.metrics.store_error("ping", &err);
        ApiError::Unhealthy(err)
    })?;
    Ok(Json(json!({ "status": "ok" })))
}
