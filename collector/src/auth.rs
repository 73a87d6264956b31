//! The collector's two bearer tokens: the admin token for operators' endpoints and the ingest
//! token for the filter's. Neither is accepted in the other's place, so a leaked filter
//! configuration cannot read billing data.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::app::AppState;
use crate::error::ApiError;

/// Shortest token accepted at startup.
pub const MIN_TOKEN_LEN: usize = 8;

pub const ADMIN_TOKEN_ENV: &str = "COLLECTOR_ADMIN_TOKEN";
pub const INGEST_TOKEN_ENV: &str = "COLLECTOR_INGEST_TOKEN";

/// The configured tokens, checked once at startup.
pub struct Tokens {
    admin: Vec<u8>,
    ingest: Vec<u8>,
}

/// Why the configured tokens cannot be used; each message names the variable to fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{0} is not set or empty")]
    Missing(&'static str),
    #[error("{0} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort(&'static str),
    #[error("{0} may only hold visible ASCII characters (no spaces)")]
    BadCharacters(&'static str),
    #[error("{ADMIN_TOKEN_ENV} and {INGEST_TOKEN_ENV} must differ")]
    Same,
}

impl Tokens {
    pub fn new(admin: Option<String>, ingest: Option<String>) -> Result<Self, TokenError> {
        let admin = checked(admin, ADMIN_TOKEN_ENV)?;
        let ingest = checked(ingest, INGEST_TOKEN_ENV)?;
        if admin == ingest {
            return Err(TokenError::Same);
        }
        Ok(Self {
            admin: admin.into_bytes(),
            ingest: ingest.into_bytes(),
        })
    }

    /// Whether `headers` carry `Authorization: Bearer <the token of role>`. The scheme is
    /// matched case-insensitively and the token in constant time (only its length can leak).
    pub fn allows(&self, role: Role, headers: &HeaderMap) -> bool {
        let expected = match role {
            Role::Admin => &self.admin,
            Role::Ingest => &self.ingest,
        };
        headers
            .get(AUTHORIZATION)
            .and_then(|value| bearer_token(value.as_bytes()))
            .is_some_and(|token| bool::from(token.ct_eq(expected)))
    }
}

/// Never prints the tokens.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

// Visible ASCII only: HTTP trims spaces around a header value and rejects control bytes,
// so a token holding them could never match.
fn checked(token: Option<String>, name: &'static str) -> Result<String, TokenError> {
    let token = token
        .filter(|token| !token.is_empty())
        .ok_or(TokenError::Missing(name))?;
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(TokenError::BadCharacters(name));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(name));
    }
    Ok(token)
}

/// The token of an `Authorization` value whose scheme is `Bearer` in any case.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|byte| *byte == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Ingest,
}

/// Extractor that admits only requests with the admin token.
pub struct AdminToken;

/// Extractor that admits only requests with the ingest token.
pub struct IngestToken;

impl FromRequestParts<AppState> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(Role::Admin, parts, state).map(|()| AdminToken)
    }
}

impl FromRequestParts<AppState> for IngestToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(Role::Ingest, parts, state).map(|()| IngestToken)
    }
}

fn require(role: Role, parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    if state.tokens.allows(role, &parts.headers) {
        return Ok(());
    }
    // A wrong token on the filter's endpoint usually means the filter's configuration is out
    // of step with the collector's, which stops billing; an operator should see it.
    tracing::warn!(path = %parts.uri.path(), ?role, "rejected request without a valid token");
    Err(ApiError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(Some("admin-secret".into()), Some("ingest-secret".into())).unwrap()
    }

    fn headers(authorization: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn startup_rejects_missing_short_odd_and_equal_tokens() {
        let ok = || Some("long-enough".to_owned());
        assert_eq!(
            Tokens::new(None, ok()).unwrap_err(),
            TokenError::Missing(ADMIN_TOKEN_ENV)
        );
        assert_eq!(
            Tokens::new(ok(), Some(String::new())).unwrap_err(),
            TokenError::Missing(INGEST_TOKEN_ENV)
        );
        assert_eq!(
            Tokens::new(Some("1234567".into()), ok()).unwrap_err(),
            TokenError::TooShort(ADMIN_TOKEN_ENV)
        );
        assert_eq!(
            Tokens::new(ok(), Some("has a space".into())).unwrap_err(),
            TokenError::BadCharacters(INGEST_TOKEN_ENV)
        );
        assert_eq!(Tokens::new(ok(), ok()).unwrap_err(), TokenError::Same);
        assert!(Tokens::new(Some("12345678".into()), ok()).is_ok());
    }

    #[test]
    fn error_messages_name_the_variable_and_not_the_value() {
        let message = TokenError::TooShort(ADMIN_TOKEN_ENV).to_string();
        assert_eq!(
            message,
            "COLLECTOR_ADMIN_TOKEN is shorter than 8 characters"
        );
        assert!(!format!("{:?}", tokens()).contains("secret"));
    }

    #[test]
    fn each_role_accepts_only_its_own_token() {
        let tokens = tokens();
        assert!(tokens.allows(Role::Admin, &headers(b"Bearer admin-secret")));
        assert!(tokens.allows(Role::Ingest, &headers(b"Bearer ingest-secret")));
        assert!(!tokens.allows(Role::Admin, &headers(b"Bearer ingest-secret")));
        assert!(!tokens.allows(Role::Ingest, &headers(b"Bearer admin-secret")));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_token_exact() {
        let tokens = tokens();
        for value in [
            &b"bearer admin-secret"[..],
            b"BEARER admin-secret",
            b"Bearer   admin-secret ",
        ] {
            assert!(tokens.allows(Role::Admin, &headers(value)), "{value:?}");
        }
        for value in [
            &b"Bearer admin-secreT"[..],
            b"Bearer admin-secret2",
            b"Bearer admin",
            b"Bearer",
            b"Bearer ",
            b"Basic admin-secret",
            b"admin-secret",
            b"Bearer\tadmin-secret",
        ] {
            assert!(!tokens.allows(Role::Admin, &headers(value)), "{value:?}");
        }
        assert!(!tokens.allows(Role::Admin, &HeaderMap::new()));
    }
}
