//! `GET /v1/tenants/snapshot` (ingest token): what the filter polls. The answer is the whole
//! registry at one version, tagged `ETag: "<version>"`; a poll with `If-None-Match` naming the
//! current version gets `304` and no body, so an unchanged registry costs one small query.
//!
//! The rendered snapshot of the latest version is kept in memory: many Envoys fetching the
//! same new version cost one read of the tables and one serialisation.

use std::sync::{Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::IngestToken;
use crate::error::ApiError;

/// The last snapshot rendered: its version and JSON.
#[derive(Default)]
pub struct SnapshotCache {
    last: Mutex<Option<(u64, Bytes)>>,
}

impl SnapshotCache {
    fn get(&self, version: u64) -> Option<Bytes> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, version: u64, body: Bytes) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().is_none_or(|(v, _)| *v <= version) {
            *last = Some((version, body));
        }
    }
}

pub async fn snapshot(
    _: IngestToken,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let current = state.store.registry_state().await.map_err(|err| {
        state.metrics.store_error("registry", &err);
        ApiError::Store(err)
    })?;
    if matches(&headers, current.version) {
        return Ok(answer(
            StatusCode::NOT_MODIFIED,
            current.version,
            Body::empty(),
        ));
    }
    if let Some(body) = state.snapshots.get(current.version) {
        return Ok(answer(StatusCode::OK, current.version, Body::from(body)));
    }

    let snapshot = state.store.snapshot().await.map_err(|err| {
        state.metrics.store_error("registry", &err);
        ApiError::Store(err)
    })?;
    // Read in one transaction, possibly at a later version than the check above.
    let version = snapshot.version;
    let body = Bytes::from(serde_json::to_vec(&snapshot).map_err(|err| {
        ApiError::InvalidRequest(format!("the snapshot cannot be serialised: {err}"))
    })?);
    tracing::debug!(
        version,
        tenants = snapshot.tenants.len(),
        bytes = body.len(),
        "snapshot rendered"
    );
    state.snapshots.put(version, body.clone());
    Ok(answer(StatusCode::OK, version, Body::from(body)))
}

fn answer(status: StatusCode, version: u64, body: Body) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag(version)) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if status == StatusCode::OK {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// Whether `If-None-Match` names this version (a list, weak tags and `*` included).
fn matches(headers: &HeaderMap, version: u64) -> bool {
    let current = etag(version);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn if_none_match_names_the_version() {
        assert!(matches(&with("\"7\""), 7));
        assert!(matches(&with("W/\"7\""), 7));
        assert!(matches(&with("\"3\", \"7\""), 7));
        assert!(matches(&with("*"), 7));
        assert!(!matches(&with("\"6\""), 7));
        assert!(!matches(&with("7"), 7));
        assert!(!matches(&HeaderMap::new(), 7));
    }

    #[test]
    fn the_cache_keeps_the_newest_version() {
        let cache = SnapshotCache::default();
        cache.put(2, Bytes::from_static(b"two"));
        cache.put(1, Bytes::from_static(b"one"));
        assert_eq!(cache.get(2).as_deref(), Some(&b"two"[..]));
        assert_eq!(cache.get(1), None);
    }
}
