//! The endpoint handlers.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::plan::Plan;
use crate::request::{self, ChatRequest, CompletionRequest, DEFAULT_MODEL};
use crate::request_log::Metered;
use crate::response::{plain_body, stream_events, AnswerId, Api};
use crate::AppState;

/// The test hook: a request carrying this header gets the 5xx it names.
pub const FORCE_STATUS_HEADER: &str = "x-demo-status";

/// A fixed creation time, so `/v1/models` answers the same on every run.
const MODEL_CREATED: u64 = 1_700_000_000;

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::from_rejection(r.status(), r.body_text()))?;
    let plan = request::parse::<ChatRequest>(&body)?.into_plan()?;
    answer(Api::Chat, plan, &headers, state.chunk_delay)
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::from_rejection(r.status(), r.body_text()))?;
    let plan = request::parse::<CompletionRequest>(&body)?.into_plan()?;
    answer(Api::Completions, plan, &headers, state.chunk_delay)
}

pub async fn models() -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": DEFAULT_MODEL,
            "object": "model",
            "created": MODEL_CREATED,
            "owned_by": "inference-gate",
        }],
    }))
}

/// Also answers a known path asked with the wrong method, as OpenAI does.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(&method, uri.path())
}

/// The status the test hook asks for, if any; anything but a 5xx is refused so that a
/// mistyped test fails loudly instead of passing on a normal answer.
fn forced_status(headers: &HeaderMap) -> Result<Option<StatusCode>, ApiError> {
    let Some(value) = headers.get(FORCE_STATUS_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(StatusCode::is_server_error)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_demo_status",
                format!("{FORCE_STATUS_HEADER} must be a status from 500 to 599"),
            )
        })
}

fn answer(
    api: Api,
    plan: Plan,
    headers: &HeaderMap,
    chunk_delay: Duration,
) -> Result<Response, ApiError> {
    let metered = Metered::from(&plan);
    let answer_id = AnswerId::new(api);
    let internal = |err: serde_json::Error| ApiError::internal(format!("cannot encode: {err}"));

    let mut response = if let Some(status) = forced_status(headers)? {
        ApiError::forced(status, plan.usage()).into_response()
    } else if plan.stream {
        let events = stream_events(api, &plan, &answer_id).map_err(internal)?;
        let body = Body::from_stream(paced(events, chunk_delay));
        let headers = [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ];
        (headers, body).into_response()
    } else {
        let body = plain_body(api, &plan, &answer_id).map_err(internal)?;
        ([(CONTENT_TYPE, "application/json")], body).into_response()
    };

    response.extensions_mut().insert(metered);
    Ok(response)
}

/// Yields the events with `delay` between each two, so a demo visibly streams.
fn paced(
    events: Vec<String>,
    delay: Duration,
) -> impl futures_util::Stream<Item = Result<String, Infallible>> {
    futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(event)
    })
}
