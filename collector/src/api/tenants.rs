//! The registry's operator endpoints (admin token): tenants, their keys and the drain flag.
//!
//! | call | answer |
//! |---|---|
//! | `POST /v1/tenants` | `201 {tenant, key_id, api_key}`: the key, once |
//! | `GET /v1/tenants?after=&limit=` | `{tenants, next_after}`, in id order |
//! | `GET /v1/tenants/{id}` | the tenant, its keys as id and digest prefix |
//! | `PATCH /v1/tenants/{id}` | the tenant as changed |
//! | `DELETE /v1/tenants/{id}` | `{id, deleted}` |
//! | `POST /v1/tenants/{id}/keys` | `201 {tenant_id, key_id, api_key, ...}`: the key, once |
//! | `DELETE /v1/tenants/{id}/keys/{key_id}` | the key, revoked |
//! | `GET`, `PUT /v1/health` | `{healthy, version}`; `PUT {"healthy": false}` drains |
//!
//! A key is never shown again after the answer that made it; listings show its id and the
//! first 8 hex digits of its SHA-256.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::trail::{Audited, Target, Trail};
use crate::app::AppState;
use crate::auth::AdminToken;
use crate::error::ApiError;
use crate::registry::{input, keys, KeyRecord, TenantRecord};
use crate::store::registry::NewKey;
use crate::store::MAX_LIMIT;
use crate::timestamp::rfc3339;

/// Tenants a listing returns when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 1000;

#[derive(Debug, Serialize)]
pub struct TenantView {
    pub id: String,
    pub rate_limit: u64,
    pub token_budget: u64,
    pub suspended: bool,
    pub allowed_models: Option<Vec<String>>,
    pub created_at: String,
    pub updated_at: String,
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub sha256_prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<TenantRecord> for TenantView {
    fn from(t: TenantRecord) -> Self {
        TenantView {
            id: t.id,
            rate_limit: t.rate_limit,
            token_budget: t.token_budget,
            suspended: t.suspended,
            allowed_models: t.allowed_models,
            created_at: rfc3339(t.created_us),
            updated_at: rfc3339(t.updated_us),
            keys: t.keys.into_iter().map(KeyView::from).collect(),
        }
    }
}

impl From<KeyRecord> for KeyView {
    fn from(k: KeyRecord) -> Self {
        KeyView {
            sha256_prefix: keys::digest_prefix(&k.sha256).to_owned(),
            key_id: k.key_id,
            created_at: rfc3339(k.created_us),
            revoked_at: k.revoked_us.map(rfc3339),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<String>,
}

type Body = Result<Bytes, BytesRejection>;

pub async fn create(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = input::new_tenant(&json_body(body)?)?;
    let issued = keys::issue().map_err(|e| ApiError::NoRandomness(e.to_string()))?;
    let target = Target {
        tenant: tenant.id.clone(),
        key_id: None,
    };
    let audit = trail.entry(StatusCode::CREATED, Some(&target))?;
    let key = NewKey {
        key_id: issued.key_id.clone(),
        sha256: issued.sha256.clone(),
    };
    let created = state
        .store
        .create_tenant(tenant, key, audit)
        .await
        .map_err(|err| registry_error(&state, err))?;
    tracing::info!(tenant = %created.id, key_id = %issued.key_id, actor = ?trail_actor(&trail), "tenant created");

    let location = format!("/v1/tenants/{}", created.id);
    let body = json!({
        "tenant": TenantView::from(created),
        "key_id": issued.key_id,
        "api_key": issued.api_key,
    });
    let mut response = (StatusCode::CREATED, secret(Json(body))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.extensions_mut().insert(Audited);
    Ok(response)
}

pub async fn list(
    _: AdminToken,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|r| ApiError::InvalidRequest(r.body_text()))?;
    if params.after.as_deref().is_some_and(|a| a.contains('\0')) {
        return Err(ApiError::InvalidRequest(
            "query parameter after: must not hold a NUL character".to_owned(),
        ));
    }
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<u32>() {
            Ok(n @ 1..=MAX_LIMIT) => n,
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "query parameter limit: must be an integer from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let tenants = state
        .store
        .tenants(params.after, limit)
        .await
        .map_err(|err| store_error(&state, "registry", err))?;
    // A full page may have more after it.
    let next_after = (tenants.len() == limit as usize)
        .then(|| tenants.last().map(|t| t.id.clone()))
        .flatten();
    let tenants: Vec<TenantView> = tenants.into_iter().map(TenantView::from).collect();
    Ok(Json(
        json!({ "tenants": tenants, "next_after": next_after }),
    ))
}

pub async fn get(
    _: AdminToken,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    known_shape(&id)?;
    match state.store.tenant(id.clone()).await {
        Ok(Some(tenant)) => Ok(Json(tenant.into())),
        Ok(None) => Err(ApiError::TenantNotFound(id)),
        Err(err) => Err(store_error(&state, "registry", err)),
    }
}

pub async fn update(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    known_shape(&id)?;
    let patch = input::patch(&json_body(body)?)?;
    let audit = trail.entry(StatusCode::OK, None)?;
    let updated = state
        .store
        .update_tenant(id, patch, audit)
        .await
        .map_err(|err| registry_error(&state, err))?;
    tracing::info!(tenant = %updated.id, actor = ?trail_actor(&trail), "tenant updated");
    Ok(audited(Json(TenantView::from(updated))))
}

pub async fn delete(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    known_shape(&id)?;
    let audit = trail.entry(StatusCode::OK, None)?;
    state
        .store
        .delete_tenant(id.clone(), audit)
        .await
        .map_err(|err| registry_error(&state, err))?;
    tracing::info!(tenant = %id, actor = ?trail_actor(&trail), "tenant deleted");
    Ok(audited(Json(json!({ "id": id, "deleted": true }))))
}

pub async fn add_key(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    known_shape(&id)?;
    let issued = keys::issue().map_err(|e| ApiError::NoRandomness(e.to_string()))?;
    let target = Target {
        tenant: id.clone(),
        key_id: Some(issued.key_id.clone()),
    };
    let audit = trail.entry(StatusCode::CREATED, Some(&target))?;
    let key = NewKey {
        key_id: issued.key_id.clone(),
        sha256: issued.sha256.clone(),
    };
    let added = state
        .store
        .add_key(id.clone(), key, audit)
        .await
        .map_err(|err| registry_error(&state, err))?;
    tracing::info!(tenant = %id, key_id = %added.key_id, actor = ?trail_actor(&trail), "key added");

    let view = KeyView::from(added);
    let body = json!({
        "tenant_id": id,
        "key_id": view.key_id,
        "api_key": issued.api_key,
        "sha256_prefix": view.sha256_prefix,
        "created_at": view.created_at,
    });
    let mut response = (StatusCode::CREATED, secret(Json(body))).into_response();
    response.extensions_mut().insert(Audited);
    Ok(response)
}

pub async fn revoke_key(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    known_shape(&id)?;
    if !plausible(&key_id) {
        return Err(ApiError::KeyNotFound { tenant: id, key_id });
    }
    let audit = trail.entry(StatusCode::OK, None)?;
    let revoked = state
        .store
        .revoke_key(id.clone(), key_id, audit)
        .await
        .map_err(|err| registry_error(&state, err))?;
    tracing::info!(tenant = %id, key_id = %revoked.key_id, actor = ?trail_actor(&trail), "key revoked");
    let view = KeyView::from(revoked);
    Ok(audited(Json(json!({
        "tenant_id": id,
        "key_id": view.key_id,
        "sha256_prefix": view.sha256_prefix,
        "created_at": view.created_at,
        "revoked_at": view.revoked_at,
    }))))
}

pub async fn health(_: AdminToken, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let current = state
        .store
        .registry_state()
        .await
        .map_err(|err| store_error(&state, "registry", err))?;
    Ok(Json(json!(current)))
}

pub async fn set_health(
    _: AdminToken,
    State(state): State<AppState>,
    Extension(trail): Extension<Trail>,
    body: Body,
) -> Result<Response, ApiError> {
    let healthy = input::health(&json_body(body)?)?;
    let audit = trail.entry(StatusCode::OK, None)?;
    let now = state
        .store
        .set_healthy(healthy, audit)
        .await
        .map_err(|err| store_error(&state, "registry", err))?;
    if healthy {
        tracing::info!(actor = ?trail_actor(&trail), version = now.version, "gateway healthy: serving");
    } else {
        tracing::warn!(actor = ?trail_actor(&trail), version = now.version, "gateway draining: every filter answers 503");
    }
    Ok(audited(Json(json!(now))))
}

/// A tenant id in a path that no tenant can have (a NUL, which PostgreSQL refuses outright,
/// odd characters, too long) is a `404` without asking the store, on either backend.
/// Only the charset and length: a tenant made before an id was reserved stays reachable.
fn known_shape(id: &str) -> Result<(), ApiError> {
    if plausible(id) {
        Ok(())
    } else {
        Err(ApiError::TenantNotFound(id.to_owned()))
    }
}

fn plausible(id: &str) -> bool {
    (1..=input::MAX_TENANT_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The body as JSON; an unreadable or malformed one is a `400` (or `413`).
fn json_body(body: Body) -> Result<Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: crate::app::MAX_BODY_BYTES,
            }
        } else {
            ApiError::InvalidRequest(rejection.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::InvalidJson(format!("invalid JSON: {err}")))
}

fn audited(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response.extensions_mut().insert(Audited);
    response
}

/// An answer holding a key: no cache may keep it.
fn secret(body: impl IntoResponse) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], body)
}

fn registry_error(state: &AppState, err: crate::store::registry::RegistryError) -> ApiError {
    if let crate::store::registry::RegistryError::Store(store) = &err {
        state.metrics.store_error("registry", store);
    }
    err.into()
}

fn store_error(
    state: &AppState,
    operation: &'static str,
    err: crate::store::StoreError,
) -> ApiError {
    state.metrics.store_error(operation, &err);
    ApiError::Store(err)
}

fn trail_actor(trail: &Trail) -> Option<&str> {
    trail.actor()
}
