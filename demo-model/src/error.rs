//! The one error type: every failure renders as OpenAI's `{"error": {...}}` body.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::plan::Usage;

/// An error answer. Only the forced-failure hook attaches `usage`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: String,
    usage: Option<Usage>,
}

impl ApiError {
    /// A 400 for a request the server cannot use; `code` names what was wrong.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// A 404 worded as OpenAI words it, for any path or method this server does not serve.
    pub fn not_found(method: &Method, path: &str) -> Self {
        let message = format!("Invalid URL ({method} {path})");
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message,
        )
    }

    /// The `x-demo-status` hook: a server error that still reports usage, as some servers do.
    pub fn forced(status: StatusCode, usage: Usage) -> Self {
        let message = format!(
            "demo failure {} forced by the x-demo-status header",
            status.as_u16()
        );
        Self {
            usage: Some(usage),
            ..Self::new(status, "server_error", "demo_forced_error", message)
        }
    }

    /// A failure of this server itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message,
        )
    }

    /// Same as `new` but the status comes from an axum rejection (413, 400, ...).
    pub fn from_rejection(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "invalid_request_error", "invalid_body", message)
    }

    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            usage: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: None,
                code: self.code,
            },
            usage: self.usage,
        };
        (self.status, Json(body)).into_response()
    }
}
