//! `GET /v1/tenants/snapshot` (ingest token): what the filter polls. The answer is the whole
//! registry at one version, tagged `ETag: "<version>-<digest>"` (the first 16 hex digits of
//! the SHA-256 of the body); a poll with `If-None-Match` naming the current tag gets `304`
//! and no body, so an unchanged registry costs one small query.
//!
//! The digest is in the tag because the version alone does not name one content: a database
//! restored from an older backup counts its versions again from an earlier one, and a filter
//! that holds the tag of the lost version N would otherwise get `304` for a different
//! registry at the new version N.
//!
//! The rendered snapshot of the latest version is kept in memory with its tag: many Envoys
//! fetching the same new version cost one read of the tables and one serialisation, and a
//! poll of an unchanged registry costs a lookup. After a restart the first poll renders it.

use std::sync::{Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::IngestToken;
use crate::error::ApiError;

/// The last snapshot rendered: its version, tag and JSON.
#[derive(Default)]
pub struct SnapshotCache {
    last: Mutex<Option<Rendered>>,
}

/// One version of the snapshot, rendered.
#[derive(Clone)]
struct Rendered {
    version: u64,
    etag: String,
    body: Bytes,
}

impl SnapshotCache {
    fn get(&self, version: u64) -> Option<Rendered> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref().filter(|r| r.version == version).cloned()
    }

    fn put(&self, rendered: Rendered) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().is_none_or(|r| r.version <= rendered.version) {
            *last = Some(rendered);
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
    let rendered = match state.snapshots.get(current.version) {
        Some(rendered) => rendered,
        None => {
            let snapshot = state.store.snapshot().await.map_err(|err| {
                state.metrics.store_error("registry", &err);
                ApiError::Store(err)
            })?;
            let body = Bytes::from(serde_json::to_vec(&snapshot).map_err(|err| {
                ApiError::InvalidRequest(format!("the snapshot cannot be serialised: {err}"))
            })?);
            tracing::debug!(
                version = snapshot.version,
                tenants = snapshot.tenants.len(),
                bytes = body.len(),
                "snapshot rendered"
            );
            let rendered = Rendered {
                version: snapshot.version,
                etag: etag(snapshot.version, &body),
                body,
            };
            state.snapshots.put(rendered.clone());
            rendered
        }
    };
    if matches(&headers, &rendered.etag) {
        return Ok(answer(
            StatusCode::NOT_MODIFIED,
            &rendered.etag,
            Body::empty(),
        ));
    }
    Ok(answer(
        StatusCode::OK,
        &rendered.etag,
        Body::from(rendered.body),
    ))
}

fn answer(status: StatusCode, etag: &str, body: Body) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(etag) {
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

/// The tag of a rendered snapshot: its version and a digest of its body.
pub fn etag(version: u64, body: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(body));
    format!("\"{version}-{}\"", &digest[..16])
}

/// Whether `If-None-Match` names this tag (a list, weak tags and `*` included).
fn matches(headers: &HeaderMap, current: &str) -> bool {
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
    fn if_none_match_names_the_tag() {
        let tag = etag(7, b"{}");
        assert!(tag.starts_with("\"7-") && tag.len() == 2 + 2 + 16, "{tag}");
        assert!(matches(&with(&tag), &tag));
        assert!(matches(&with(&format!("W/{tag}")), &tag));
        assert!(matches(&with(&format!("\"3-0\", {tag}")), &tag));
        assert!(matches(&with("*"), &tag));
        assert!(!matches(&with("\"7\""), &tag));
        assert!(!matches(&with(tag.trim_matches('"')), &tag));
        assert!(!matches(&HeaderMap::new(), &tag));
    }

    #[test]
    fn the_same_version_with_other_content_has_another_tag() {
        // A database restored from a backup reaches version 7 again with other tenants.
        assert_ne!(
            etag(7, b"{\"tenants\": [1]}"),
            etag(7, b"{\"tenants\": [2]}")
        );
        assert_eq!(etag(7, b"x"), etag(7, b"x"));
    }

    #[test]
    fn the_cache_keeps_the_newest_version() {
        let cache = SnapshotCache::default();
        let rendered = |version, body: &'static [u8]| Rendered {
            version,
            etag: etag(version, body),
            body: Bytes::from_static(body),
        };
        cache.put(rendered(2, b"two"));
        cache.put(rendered(1, b"one"));
        assert_eq!(cache.get(2).map(|r| r.body).as_deref(), Some(&b"two"[..]));
        assert!(cache.get(1).is_none());
    }
}
