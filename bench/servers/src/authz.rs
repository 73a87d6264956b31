//! The trivial `ext_authz` HTTP service: a bearer key looked up in a table.
//!
//! Envoy sends the original request's headers (those the filter's `allowed_headers` name) to
//! this service; a `200` lets the request on with the headers Envoy is told to copy upstream
//! (`x-tenant-id`), and removes those named in `x-envoy-auth-headers-to-remove` (the key);
//! anything else is sent back to the client.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

/// Key to tenant id.
pub struct Keys(HashMap<String, String>);

impl Keys {
    /// One `<key> <tenant>` per line.
    pub fn load(path: &str) -> std::io::Result<Keys> {
        let text = std::fs::read_to_string(path)?;
        Ok(Keys(
            text.lines()
                .filter_map(|line| line.split_once(' '))
                .map(|(key, tenant)| (key.to_string(), tenant.trim().to_string()))
                .collect(),
        ))
    }

    fn tenant(&self, authorization: Option<&str>) -> Option<&str> {
        let (scheme, key) = authorization?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.0.get(key.trim()).map(String::as_str)
    }
}

const REFUSED: &[u8] = br#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

pub async fn handle(
    keys: &Keys,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let Some(tenant) = keys.tenant(authorization) else {
        let mut refused = Response::new(Full::new(Bytes::from_static(REFUSED)));
        *refused.status_mut() = StatusCode::UNAUTHORIZED;
        refused
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(refused);
    };
    let mut allowed = Response::new(Full::new(Bytes::new()));
    let headers = allowed.headers_mut();
    if let Ok(value) = HeaderValue::from_str(tenant) {
        headers.insert("x-tenant-id", value);
    }
    headers.insert(
        "x-envoy-auth-headers-to-remove",
        HeaderValue::from_static("authorization"),
    );
    Ok(allowed)
}
