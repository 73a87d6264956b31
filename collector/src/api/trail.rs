//! The audit trail of the registry: every call to its operator endpoints leaves an audit
//! entry (`create`, `update`, `delete`, `list`) naming the operator (the admin token's name,
//! in `actor`), the resource, the status and where the call came from. Refused calls too: a
//! wrong token, a bad body, an unknown tenant.
//!
//! A change stores its entry in its own transaction (the handler builds it from the
//! [`Trail`] and marks the response [`Audited`]); this middleware writes the entry of every
//! other answer once the handler is done.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::error::ApiError;
use crate::records::{Action, AuditEntry, AuditResult, Record};
use crate::registry::keys;
use crate::timestamp::Timestamp;

/// What every audit entry of one registry call shares, from the request.
#[derive(Debug, Clone)]
pub struct Trail {
    method: String,
    path: String,
    remote_addr: Option<String>,
    request_id: Option<String>,
    actor: Option<String>,
}

/// On a response: its audit entry was stored with the change it made.
#[derive(Debug, Clone, Copy)]
pub struct Audited;

/// On a response: the tenant (and key) it was about, when the path does not say (a create).
#[derive(Debug, Clone)]
pub struct Target {
    pub tenant: String,
    pub key_id: Option<String>,
}

impl Trail {
    /// The name of the admin token presented, if it is one.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The entry of this call, answered with `status`.
    pub fn entry(
        &self,
        status: StatusCode,
        target: Option<&Target>,
    ) -> Result<AuditEntry, ApiError> {
        let (tenant_id, resource) = match target {
            Some(t) => (
                Some(t.tenant.clone()),
                Some(resource_of(&t.tenant, t.key_id.as_deref())),
            ),
            None => from_path(&self.path),
        };
        let id = keys::random_hex(16).map_err(|e| ApiError::NoRandomness(e.to_string()))?;
        Ok(AuditEntry {
            id: format!("reg-{id}"),
            timestamp: Timestamp::now(),
            tenant_id,
            action: action_of(&self.method),
            result: result_of(status),
            resource: resource.map(|r| clip(&r, 256)),
            status_code: status.as_u16(),
            method: self.method.clone(),
            path: self.path.clone(),
            remote_addr: self.remote_addr.clone(),
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
        })
    }
}

/// Unauthorized registry calls audited one by one, per second on average (a burst of five
/// seconds' worth passes at once); the rest are counted.
pub const DENIED_AUDITS_PER_SECOND: f64 = 20.0;

/// The budget of [`DENIED_AUDITS_PER_SECOND`]: a token bucket, and when a warning about
/// exceeding it was last logged.
#[derive(Debug)]
pub struct DeniedAudits {
    state: std::sync::Mutex<(f64, std::time::Instant, Option<std::time::Instant>)>,
}

impl Default for DeniedAudits {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new((
                5.0 * DENIED_AUDITS_PER_SECOND,
                std::time::Instant::now(),
                None,
            )),
        }
    }
}

impl DeniedAudits {
    /// Whether one more unauthorized call may be audited now.
    pub fn take(&self) -> bool {
        self.take_at(std::time::Instant::now())
    }

    fn take_at(&self, now: std::time::Instant) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 =
            (state.0 + elapsed * DENIED_AUDITS_PER_SECOND).min(5.0 * DENIED_AUDITS_PER_SECOND);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// At most one warning every ten seconds.
    fn should_warn(&self) -> bool {
        let now = std::time::Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.2 {
            Some(last) if now.saturating_duration_since(last).as_secs() < 10 => false,
            _ => {
                state.2 = Some(now);
                true
            }
        }
    }
}

/// Runs around every registry endpoint (not the filter's snapshot).
pub async fn audit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let trail = Trail {
        method: clip(request.method().as_str(), 16),
        path: clip(&redact(request.uri().path()), 2048),
        remote_addr: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.to_string()),
        request_id: request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| clip(v, 256)),
        actor: state.tokens.admin(request.headers()).map(str::to_owned),
    };
    request.extensions_mut().insert(trail.clone());

    let response = next.run(request).await;
    if response.extensions().get::<Audited>().is_some() {
        return response;
    }
    if response.status() == StatusCode::UNAUTHORIZED && !state.denied_audits.take() {
        // A flood of calls without a valid token: past the budget they are counted, not
        // written one transaction each (which would let anyone who reaches the port slow the
        // database that billing is stored in).
        state.metrics.denied_unaudited();
        if state.denied_audits.should_warn() {
            tracing::warn!(
                per_second = DENIED_AUDITS_PER_SECOND,
                "unauthorized registry calls over the audit budget: counted in \
                 collector_registry_denied_unaudited_total, not audited one by one"
            );
        }
        return response;
    }
    let target = response.extensions().get::<Target>();
    let stored = match trail.entry(response.status(), target) {
        Ok(entry) => state
            .store
            .insert_batch(vec![Record::Audit(entry)])
            .await
            .map(|_| ())
            .map_err(|err| {
                state.metrics.store_error("audit", &err);
                err.to_string()
            }),
        Err(err) => Err(err.to_string()),
    };
    if let Err(reason) = stored {
        tracing::error!(
            %reason,
            method = %trail.method,
            path = %trail.path,
            status = response.status().as_u16(),
            "registry call not audited"
        );
    }
    response
}

fn action_of(method: &str) -> Action {
    match Method::from_bytes(method.as_bytes()) {
        Ok(Method::POST) => Action::Create,
        Ok(Method::PATCH | Method::PUT) => Action::Update,
        Ok(Method::DELETE) => Action::Delete,
        _ => Action::List,
    }
}

/// The same reading of a status as the filter's.
fn result_of(status: StatusCode) -> AuditResult {
    match status.as_u16() {
        200..=399 => AuditResult::Success,
        401 => AuditResult::Unauthorized,
        403 => AuditResult::Denied,
        429 => AuditResult::RateLimited,
        _ => AuditResult::Error,
    }
}

/// `tenant:<id>`, or `tenant:<id>/key:<key id>`.
pub fn resource_of(tenant: &str, key_id: Option<&str>) -> String {
    match key_id {
        Some(key_id) => format!("tenant:{tenant}/key:{key_id}"),
        None => format!("tenant:{tenant}"),
    }
}

/// The tenant and resource a registry path names: `/v1/tenants/acme/keys/key_1` is about
/// tenant `acme`, resource `tenant:acme/key:key_1`. A segment that cannot be a tenant id is
/// not taken for one.
fn from_path(path: &str) -> (Option<String>, Option<String>) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "health"] => (None, Some("health".to_owned())),
        ["v1", "tenants"] => (None, Some("tenants".to_owned())),
        ["v1", "tenants", id, rest @ ..] if plausible_id(id) => {
            let resource = match rest {
                [] => resource_of(id, None),
                ["keys"] => format!("tenant:{id}/keys"),
                ["keys", key_id] => resource_of(id, Some(key_id)),
                _ => format!("tenant:{id}"),
            };
            (Some((*id).to_owned()), Some(resource))
        }
        _ => (None, None),
    }
}

fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `path` with every segment that looks like an API key replaced: an operator who pastes a
/// key where its key id belongs (`DELETE /v1/tenants/acme/keys/ig-...`) must not leave it in
/// the trail or the log.
pub fn redact(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.split('/').any(keys::looks_like_key) {
        return path.into();
    }
    path.split('/')
        .map(|segment| {
            if keys::looks_like_key(segment) {
                keys::REDACTED_KEY
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_denied_audit_budget_refills_at_its_rate() {
        let budget = super::DeniedAudits::default();
        let start = std::time::Instant::now();
        let passed = (0..150).filter(|_| budget.take_at(start)).count();
        assert_eq!(passed, 100, "a burst of five seconds' worth");
        let later = start + std::time::Duration::from_millis(500);
        let passed = (0..50).filter(|_| budget.take_at(later)).count();
        assert_eq!(passed, 10, "twenty a second");
        let much_later = later + std::time::Duration::from_secs(3600);
        let passed = (0..500).filter(|_| budget.take_at(much_later)).count();
        assert_eq!(passed, 100, "never more than the burst");
    }

    use super::*;

    #[test]
    fn paths_name_their_tenant_and_resource() {
        let cases = [
            ("/v1/tenants", None, Some("tenants")),
            ("/v1/health", None, Some("health")),
            ("/v1/tenants/acme", Some("acme"), Some("tenant:acme")),
            (
                "/v1/tenants/acme/keys",
                Some("acme"),
                Some("tenant:acme/keys"),
            ),
            (
                "/v1/tenants/acme/keys/key_1",
                Some("acme"),
                Some("tenant:acme/key:key_1"),
            ),
            ("/v1/tenants/a%20b", None, None),
            ("/v1/other", None, None),
        ];
        for (path, tenant, resource) in cases {
            let (t, r) = from_path(path);
            assert_eq!((t.as_deref(), r.as_deref()), (tenant, resource), "{path}");
        }
    }

    #[test]
    fn methods_and_statuses_map_to_actions_and_results() {
        assert_eq!(action_of("POST"), Action::Create);
        assert_eq!(action_of("PATCH"), Action::Update);
        assert_eq!(action_of("PUT"), Action::Update);
        assert_eq!(action_of("DELETE"), Action::Delete);
        assert_eq!(action_of("GET"), Action::List);
        assert_eq!(result_of(StatusCode::CREATED), AuditResult::Success);
        assert_eq!(
            result_of(StatusCode::UNAUTHORIZED),
            AuditResult::Unauthorized
        );
        assert_eq!(result_of(StatusCode::NOT_FOUND), AuditResult::Error);
        assert_eq!(clip("héllo", 2), "h");
    }

    #[test]
    fn keys_in_paths_are_redacted() {
        let key = keys::issue().unwrap().api_key;
        let path = format!("/v1/tenants/acme/keys/{key}");
        assert_eq!(redact(&path), "/v1/tenants/acme/keys/ig-<redacted>");
        assert_eq!(redact("/v1/tenants/acme"), "/v1/tenants/acme");
        let (tenant, resource) = from_path(&redact(&format!("/v1/tenants/{key}")));
        assert_eq!((tenant, resource), (None, None));
    }
}
