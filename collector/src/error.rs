//! The one error type handlers return. It renders as the OpenAI-shaped body every
//! inference-gate error uses, `{"error": {"message", "type", "param", "code"}}`, so clients and
//! operators' tools see a single shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use thiserror::Error;

use crate::registry::input::InputError;
use crate::store::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ApiError {
    /// The request is well-formed HTTP but breaks a rule; the message says which.
    #[error("{0}")]
    InvalidRequest(String),

    /// One record of a batch breaks a rule; `param` names it, e.g. `records[3].input_tokens`.
    #[error("{message}")]
    InvalidRecord { message: String, param: String },

    /// A field of a registry request breaks a rule; `param` names it (empty for the body).
    #[error("{message}")]
    InvalidParam { message: String, param: String },

    /// The body is not JSON; the message carries serde's line and column.
    #[error("{0}")]
    InvalidJson(String),

    #[error("a tenant with the id {0:?} already exists")]
    TenantExists(String),

    #[error("no tenant with the id {0:?}")]
    TenantNotFound(String),

    #[error("tenant {tenant:?} has no active key {key_id:?}")]
    KeyNotFound { tenant: String, key_id: String },

    #[error("tenant {tenant:?} already has {max} active keys; revoke one first")]
    TooManyKeys { tenant: String, max: u32 },

    /// No new key could be made (the operating system's random source failed).
    #[error("no randomness for a new key: {0}")]
    NoRandomness(String),

    #[error("missing or invalid bearer token")]
    Unauthorized,

    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },

    #[error("no such endpoint")]
    NotFound,

    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,

    #[error(transparent)]
    Store(#[from] StoreError),

    /// The health check's store call failed. Always `503`, whatever the cause: a probe only
    /// asks whether this instance can serve.
    #[error("health check failed: {0}")]
    Unhealthy(StoreError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::InvalidRecord { .. }
            | ApiError::InvalidParam { .. }
            | ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::TenantExists(_) | ApiError::TooManyKeys { .. } => StatusCode::CONFLICT,
            ApiError::TenantNotFound(_) | ApiError::KeyNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::NoRandomness(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(err) if err.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `type` and `code` fields of the body.
    fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::InvalidRecord { .. }
            | ApiError::InvalidParam { .. } => ("invalid_request_error", "invalid_request"),
            ApiError::TenantExists(_) => ("invalid_request_error", "tenant_exists"),
            ApiError::TenantNotFound(_) => ("invalid_request_error", "tenant_not_found"),
            ApiError::KeyNotFound { .. } => ("invalid_request_error", "key_not_found"),
            ApiError::TooManyKeys { .. } => ("invalid_request_error", "too_many_keys"),
            ApiError::NoRandomness(_) => ("server_error", "internal_error"),
            ApiError::InvalidJson(_) => ("invalid_request_error", "invalid_json"),
            ApiError::Unauthorized => ("invalid_request_error", "invalid_token"),
            ApiError::PayloadTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ApiError::NotFound => ("invalid_request_error", "not_found"),
            ApiError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ApiError::Store(err) if err.is_transient() => ("server_error", "store_unavailable"),
            ApiError::Store(_) => ("server_error", "internal_error"),
            ApiError::Unhealthy(_) => ("server_error", "store_unavailable"),
        }
    }

    /// What the client reads. Store failures get a generic sentence: the detail is in the
    /// log, and it may name paths or SQL that are none of the caller's business.
    fn public_message(&self) -> String {
        match self {
            ApiError::Store(err) if err.is_transient() => {
                "the record store is unavailable; retry later".to_owned()
            }
            ApiError::Unhealthy(_) => "the record store does not answer".to_owned(),
            ApiError::Store(_) => "internal error while accessing the record store".to_owned(),
            ApiError::NoRandomness(_) => "internal error: no key could be made".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The one place a store failure is logged, with its detail.
        if let ApiError::Store(err) | ApiError::Unhealthy(err) = &self {
            tracing::error!(error = %err, status = status.as_u16(), "store operation failed");
        }
        if let ApiError::NoRandomness(reason) = &self {
            tracing::error!(%reason, "no key made: the random source failed");
        }

        let (kind, code) = self.kind_and_code();
        let param = match &self {
            ApiError::InvalidRecord { param, .. } => Some(param.as_str()),
            ApiError::InvalidParam { param, .. } if !param.is_empty() => Some(param.as_str()),
            _ => None,
        };
        let body = json!({ "error": {
            "message": self.public_message(), "type": kind, "param": param, "code": code
        } });
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::TenantExists(id) => ApiError::TenantExists(id),
            RegistryError::TenantNotFound(id) => ApiError::TenantNotFound(id),
            RegistryError::KeyNotFound { tenant, key_id } => {
                ApiError::KeyNotFound { tenant, key_id }
            }
            RegistryError::TooManyKeys { tenant, max } => ApiError::TooManyKeys { tenant, max },
            RegistryError::Store(err) => ApiError::Store(err),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(err: InputError) -> Self {
        ApiError::InvalidParam {
            message: err.message,
            param: err.param,
        }
    }
}
