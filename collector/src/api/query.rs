//! The operators' queries: `GET /v1/billing`, `/v1/usage` and `/v1/audit`, all over a range
//! of record timestamps (`from` inclusive, `to` exclusive, RFC 3339, either optional).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::AdminToken;
use crate::error::ApiError;
use crate::records::{AuditEntry, BillingRecord};
use crate::store::{AuditQuery, BillingQuery, StoreError, TimeRange, MAX_LIMIT};
use crate::timestamp::Timestamp;

/// Rows a listing returns when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 1000;

/// The query string as sent; every field is checked by the functions below, so that each
/// error names its parameter.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    tenant_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BillingAnswer {
    pub records: Vec<BillingRecord>,
}

#[derive(Debug, Serialize)]
pub struct AuditAnswer {
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, Serialize)]
pub struct UsageAnswer {
    pub tenant_id: String,
    /// The bounds as given, `null` when absent.
    pub from: Option<String>,
    pub to: Option<String>,
    pub requests: u64,
    pub input_tokens: u128,
    pub output_tokens: u128,
}

type QueryParams = Result<Query<Params>, QueryRejection>;

pub async fn billing(
    _: AdminToken,
    State(state): State<AppState>,
    params: QueryParams,
) -> Result<Json<BillingAnswer>, ApiError> {
    let params = read(params)?;
    let query = BillingQuery {
        tenant_id: required_tenant(&params)?,
        range: range(&params)?,
        limit: limit(&params)?,
    };
    let records = state.store.billing(query).await;
    let records = observe(&state, "billing", records)?;
    Ok(Json(BillingAnswer { records }))
}

pub async fn usage(
    _: AdminToken,
    State(state): State<AppState>,
    params: QueryParams,
) -> Result<Json<UsageAnswer>, ApiError> {
    let params = read(params)?;
    let tenant_id = required_tenant(&params)?;
    let range = range(&params)?;

    let usage = state.store.usage(tenant_id.clone(), range).await;
    let usage = observe(&state, "usage", usage)?;
    Ok(Json(UsageAnswer {
        tenant_id,
        from: params.from,
        to: params.to,
        requests: usage.requests,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
    }))
}

pub async fn audit(
    _: AdminToken,
    State(state): State<AppState>,
    params: QueryParams,
) -> Result<Json<AuditAnswer>, ApiError> {
    let params = read(params)?;
    let tenant_id = match params.tenant_id.as_deref() {
        Some("") => {
            return Err(bad(
                "tenant_id",
                "must not be empty (leave it out for every tenant)",
            ))
        }
        Some(t) if t.contains('\0') => return Err(bad("tenant_id", "must not contain NUL")),
        other => other.map(str::to_owned),
    };
    let query = AuditQuery {
        tenant_id,
        range: range(&params)?,
        limit: limit(&params)?,
    };
    let entries = state.store.audit(query).await;
    let entries = observe(&state, "audit", entries)?;
    Ok(Json(AuditAnswer { entries }))
}

/// Counts a failed store call in the metrics; the error itself is logged when it renders.
fn observe<T>(
    state: &AppState,
    operation: &'static str,
    result: Result<T, StoreError>,
) -> Result<T, ApiError> {
    result.map_err(|err| {
        state.metrics.store_error(operation, &err);
        ApiError::Store(err)
    })
}

fn read(params: QueryParams) -> Result<Params, ApiError> {
    params
        .map(|Query(params)| params)
        .map_err(|rejection| ApiError::InvalidRequest(rejection.body_text()))
}

fn bad(param: &str, problem: &str) -> ApiError {
    ApiError::InvalidRequest(format!("query parameter {param}: {problem}"))
}

fn required_tenant(params: &Params) -> Result<String, ApiError> {
    match params.tenant_id.as_deref() {
        None | Some("") => Err(bad("tenant_id", "is required")),
        Some(tenant_id) if tenant_id.contains('\0') => {
            Err(bad("tenant_id", "must not contain NUL"))
        }
        Some(tenant_id) => Ok(tenant_id.to_owned()),
    }
}

fn range(params: &Params) -> Result<TimeRange, ApiError> {
    let range = TimeRange {
        from: instant("from", params.from.as_deref())?,
        to: instant("to", params.to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (range.from, range.to) {
        if from > to {
            return Err(bad("from", "must not be later than to"));
        }
    }
    Ok(range)
}

fn instant(param: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    match Timestamp::parse(text) {
        Some(timestamp) => Ok(Some(timestamp.unix_micros())),
        // A `+` left unencoded in a query string arrives as a space.
        None if text.contains(' ') => Err(bad(
            param,
            "must be an RFC 3339 timestamp; encode the + of an offset as %2B",
        )),
        None => Err(bad(
            param,
            "must be an RFC 3339 timestamp, e.g. 2026-12-03T18:07:14Z",
        )),
    }
}

fn limit(params: &Params) -> Result<u32, ApiError> {
    let Some(text) = params.limit.as_deref() else {
        return Ok(DEFAULT_LIMIT);
    };
    match text.parse::<u32>() {
        Ok(limit @ 1..=MAX_LIMIT) => Ok(limit),
        _ => Err(bad("limit", "must be an integer from 1 to 10000")),
    }
}
