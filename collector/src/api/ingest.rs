//! `POST /v1/records`: the filter's batches of billing and audit records.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::app::{AppState, MAX_BODY_BYTES};
use crate::auth::IngestToken;
use crate::error::ApiError;
use crate::metrics::BatchResult;
use crate::records::validate::{parse_batch, BatchError};

/// The answer to a stored batch.
#[derive(Debug, Serialize)]
pub struct Stored {
    /// Records stored by this batch.
    pub accepted: u64,
    /// Records skipped because their id was already stored.
    pub duplicates: u64,
}

/// Validates the whole batch, stores it in one transaction, and answers only after the
/// commit, so a `200` means every record of the batch is durable.
pub async fn post_records(
    _: IngestToken,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Stored>, ApiError> {
    let body = body.map_err(|rejection| {
        state.metrics.batch(BatchResult::Invalid);
        unreadable_body(rejection)
    })?;

    let records = parse_batch(&body).map_err(|err| {
        state.metrics.batch(BatchResult::Invalid);
        tracing::warn!(reason = %err, bytes = body.len(), "rejected record batch");
        match err {
            BatchError::Json(_) => ApiError::InvalidJson(err.to_string()),
            BatchError::Invalid(message) => ApiError::InvalidRequest(message),
            BatchError::Record { ref param, .. } => ApiError::InvalidRecord {
                message: err.to_string(),
                param: param.clone(),
            },
        }
    })?;

    let received = records.len();
    let inserted = match state.store.insert_batch(records).await {
        Ok(inserted) => inserted,
        Err(err) => {
            state.metrics.batch(BatchResult::Failed);
            state.metrics.store_error("insert", &err);
            return Err(err.into());
        }
    };
    state.metrics.stored(&inserted);
    tracing::debug!(
        records = received,
        accepted = inserted.accepted(),
        duplicates = inserted.duplicates(),
        "stored record batch"
    );

    Ok(Json(Stored {
        accepted: inserted.accepted(),
        duplicates: inserted.duplicates(),
    }))
}

fn unreadable_body(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(
            limit = MAX_BODY_BYTES,
            "rejected record batch: body too large"
        );
        return ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        };
    }
    let reason = rejection.body_text();
    tracing::warn!(%reason, "rejected record batch: body unreadable");
    ApiError::InvalidRequest(reason)
}
