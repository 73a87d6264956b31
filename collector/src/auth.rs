//! The collector's bearer tokens: admin tokens for operators' endpoints and the ingest
//! token for the filter's. Neither kind is accepted in the other's place, so a leaked filter
//! configuration cannot read billing data or change the tenant registry.
//!
//! There may be several admin tokens, each with a name, so that the audit trail says which
//! operator acted: `COLLECTOR_ADMIN_TOKEN` is the one named `admin`; `COLLECTOR_ADMIN_TOKENS`
//! (`alice=<token>,bob=<token>`) and `COLLECTOR_ADMIN_TOKENS_FILE` (one `name=token` a line,
//! `#` comments) add named ones.

use std::path::Path;

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
/// Longest admin token name.
pub const MAX_NAME_LEN: usize = 64;

pub const ADMIN_TOKEN_ENV: &str = "COLLECTOR_ADMIN_TOKEN";
pub const ADMIN_TOKENS_ENV: &str = "COLLECTOR_ADMIN_TOKENS";
pub const ADMIN_TOKENS_FILE_ENV: &str = "COLLECTOR_ADMIN_TOKENS_FILE";
pub const INGEST_TOKEN_ENV: &str = "COLLECTOR_INGEST_TOKEN";

/// The name of the token in `COLLECTOR_ADMIN_TOKEN`.
pub const DEFAULT_ADMIN_NAME: &str = "admin";

/// The configured tokens, checked once at startup.
pub struct Tokens {
    admins: Vec<(String, Vec<u8>)>,
    ingest: Vec<u8>,
}

/// Why the configured tokens cannot be used; each message names the variable (or the token
/// by its name) to fix, never a token.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{0} is not set or empty")]
    Missing(&'static str),
    #[error(
        "no admin token: set {ADMIN_TOKEN_ENV}, or {ADMIN_TOKENS_ENV} (name=token,...), \
         or {ADMIN_TOKENS_FILE_ENV}"
    )]
    NoAdmin,
    #[error("{0} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort(String),
    #[error("{0} may only hold visible ASCII characters (no spaces)")]
    BadCharacters(String),
    #[error("{ADMIN_TOKEN_ENV} and {INGEST_TOKEN_ENV} must differ")]
    Same,
    #[error("the admin token {0:?} is the ingest token; they must differ")]
    SameAsIngest(String),
    #[error("the admin tokens {0:?} and {1:?} are the same token")]
    Duplicate(String, String),
    #[error("the admin token name {0:?} is given twice")]
    DuplicateName(String),
    #[error(
        "{source_name}: {entry} must be name=token, the name 1 to {MAX_NAME_LEN} of \
         A-Z a-z 0-9 . _ @ -"
    )]
    BadEntry { source_name: String, entry: String },
    #[error("cannot read {ADMIN_TOKENS_FILE_ENV} {path}: {reason}")]
    File { path: String, reason: String },
}

impl Tokens {
    /// One admin token, named `admin`, and the ingest token.
    pub fn new(admin: Option<String>, ingest: Option<String>) -> Result<Self, TokenError> {
        Self::named(admin, None, None, ingest)
    }

    /// The admin tokens from all three sources (`named`: `alice=token,bob=token`; `file`:
    /// one `name=token` a line) and the ingest token. At least one admin token is needed.
    pub fn named(
        admin: Option<String>,
        named: Option<String>,
        file: Option<&Path>,
        ingest: Option<String>,
    ) -> Result<Self, TokenError> {
        let ingest = checked(ingest, INGEST_TOKEN_ENV)?;
        let mut admins: Vec<(String, String)> = Vec::new();
        if let Some(token) = admin.filter(|t| !t.is_empty()) {
            let token = checked(Some(token), ADMIN_TOKEN_ENV)?;
            if token == ingest {
                return Err(TokenError::Same);
            }
            admins.push((DEFAULT_ADMIN_NAME.to_owned(), token));
        }
        if let Some(list) = named.filter(|l| !l.trim().is_empty()) {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                admins.push(parse_entry(entry, ADMIN_TOKENS_ENV)?);
            }
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| TokenError::File {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    admins.push(parse_entry(line, ADMIN_TOKENS_FILE_ENV)?);
                }
            }
        }
        if admins.is_empty() {
            return Err(TokenError::NoAdmin);
        }
        for (i, (name, token)) in admins.iter().enumerate() {
            if *token == ingest {
                return Err(TokenError::SameAsIngest(name.clone()));
            }
            for (other, other_token) in admins.iter().skip(i + 1) {
                if other == name {
                    return Err(TokenError::DuplicateName(name.clone()));
                }
                if other_token == token {
                    return Err(TokenError::Duplicate(name.clone(), other.clone()));
                }
            }
        }
        Ok(Self {
            admins: admins
                .into_iter()
                .map(|(name, token)| (name, token.into_bytes()))
                .collect(),
            ingest: ingest.into_bytes(),
        })
    }

    /// Whether `headers` carry `Authorization: Bearer <a token of role>`. The scheme is
    /// matched case-insensitively and the token in constant time (only its length can leak).
    pub fn allows(&self, role: Role, headers: &HeaderMap) -> bool {
        match role {
            Role::Admin => self.admin(headers).is_some(),
            Role::Ingest => presented(headers).is_some_and(|t| bool::from(t.ct_eq(&self.ingest))),
        }
    }

    /// The name of the admin token `headers` carry, if they carry one. Every token is
    /// compared, in constant time each, so the time taken does not tell which one matched.
    pub fn admin(&self, headers: &HeaderMap) -> Option<&str> {
        let token = presented(headers)?;
        let mut found = None;
        for (name, expected) in &self.admins {
            if bool::from(token.ct_eq(expected)) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// The names of the admin tokens, for the startup log.
    pub fn admin_names(&self) -> Vec<&str> {
        self.admins.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Never prints the tokens.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("admins", &self.admin_names())
            .finish_non_exhaustive()
    }
}

/// The bearer token of the one `Authorization` header. Several are refused, whatever they
/// hold: a proxy in front may read another one than this service does.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    bearer_token(value.as_bytes())
}

/// `name=token`, the name checked, the token as any other.
fn parse_entry(entry: &str, source_name: &str) -> Result<(String, String), TokenError> {
    let bad = || TokenError::BadEntry {
        source_name: source_name.to_owned(),
        // Only the name: the rest may be a token.
        entry: format!("entry {:?}", entry.split('=').next().unwrap_or("")),
    };
    let (name, token) = entry.split_once('=').ok_or_else(bad)?;
    let name = name.trim();
    let name_ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if !name_ok {
        return Err(bad());
    }
    let token = checked(
        Some(token.trim().to_owned()),
        &format!("admin token {name:?}"),
    )?;
    Ok((name.to_owned(), token))
}

// Visible ASCII only: HTTP trims spaces around a header value and rejects control bytes,
// so a token holding them could never match.
fn checked(token: Option<String>, name: &str) -> Result<String, TokenError> {
    let token = token.filter(|token| !token.is_empty()).ok_or_else(|| {
        TokenError::Missing(if name == ADMIN_TOKEN_ENV {
            ADMIN_TOKEN_ENV
        } else {
            INGEST_TOKEN_ENV
        })
    })?;
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(TokenError::BadCharacters(name.to_owned()));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort(name.to_owned()));
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

/// Extractor that admits only requests with an admin token; holds the token's name.
pub struct AdminToken(pub String);

/// Extractor that admits only requests with the ingest token.
pub struct IngestToken;

impl FromRequestParts<AppState> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require(Role::Admin, parts, state)?;
        let name = state.tokens.admin(&parts.headers).unwrap_or_default();
        Ok(AdminToken(name.to_owned()))
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
    let path = crate::api::trail::redact(parts.uri.path());
    tracing::warn!(%path, ?role, "rejected request without a valid token");
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
        assert_eq!(Tokens::new(None, ok()).unwrap_err(), TokenError::NoAdmin);
        assert_eq!(
            Tokens::new(ok(), Some(String::new())).unwrap_err(),
            TokenError::Missing(INGEST_TOKEN_ENV)
        );
        assert_eq!(
            Tokens::new(Some("1234567".into()), ok()).unwrap_err(),
            TokenError::TooShort(ADMIN_TOKEN_ENV.into())
        );
        assert_eq!(
            Tokens::new(ok(), Some("has a space".into())).unwrap_err(),
            TokenError::BadCharacters(INGEST_TOKEN_ENV.into())
        );
        assert_eq!(Tokens::new(ok(), ok()).unwrap_err(), TokenError::Same);
        assert!(Tokens::new(Some("12345678".into()), ok()).is_ok());
    }

    #[test]
    fn error_messages_name_the_variable_and_not_the_value() {
        let message = TokenError::TooShort(ADMIN_TOKEN_ENV.into()).to_string();
        assert_eq!(
            message,
            "COLLECTOR_ADMIN_TOKEN is shorter than 8 characters"
        );
        assert!(!format!("{:?}", tokens()).contains("secret"));
    }

    #[test]
    fn named_admin_tokens_come_from_a_list_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admins");
        std::fs::write(&file, "# operators\ncarol = carol-token-3\n\n").unwrap();
        let tokens = Tokens::named(
            Some("admin-secret".into()),
            Some("alice=alice-token-1, bob=bob-token-22".into()),
            Some(&file),
            Some("ingest-secret".into()),
        )
        .unwrap();
        assert_eq!(tokens.admin_names(), ["admin", "alice", "bob", "carol"]);
        for (token, name) in [
            ("admin-secret", "admin"),
            ("alice-token-1", "alice"),
            ("bob-token-22", "bob"),
            ("carol-token-3", "carol"),
        ] {
            let h = headers(format!("Bearer {token}").as_bytes());
            assert_eq!(tokens.admin(&h), Some(name));
            assert!(tokens.allows(Role::Admin, &h));
            assert!(!tokens.allows(Role::Ingest, &h));
        }
        assert_eq!(tokens.admin(&headers(b"Bearer ingest-secret")), None);
        assert!(!format!("{tokens:?}").contains("token-1"));

        // Named tokens alone are enough.
        let only = Tokens::named(
            None,
            Some("ops=ops-token-1".into()),
            None,
            Some("ingest-secret".into()),
        );
        assert_eq!(only.unwrap().admin_names(), ["ops"]);
    }

    #[test]
    fn named_tokens_are_checked_without_echoing_them() {
        let ingest = || Some("ingest-secret".to_owned());
        let named = |list: &str| Tokens::named(None, Some(list.into()), None, ingest());
        assert_eq!(
            named("alice=same-token-1,bob=same-token-1").unwrap_err(),
            TokenError::Duplicate("alice".into(), "bob".into())
        );
        assert_eq!(
            named("alice=token-one-1,alice=token-two-2").unwrap_err(),
            TokenError::DuplicateName("alice".into())
        );
        assert_eq!(
            named("alice=ingest-secret").unwrap_err(),
            TokenError::SameAsIngest("alice".into())
        );
        assert_eq!(
            Tokens::named(
                Some("admin-token-0".into()),
                Some("admin=admin-token-9".into()),
                None,
                ingest()
            )
            .unwrap_err(),
            TokenError::DuplicateName("admin".into())
        );
        for bad in [
            "no-equals-sign-token",
            "bad name=token-value-1",
            "=token-value-1",
        ] {
            let err = named(bad).unwrap_err();
            assert!(matches!(err, TokenError::BadEntry { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("token-value"), "{err}");
        }
        let err = named("alice=short").unwrap_err();
        assert_eq!(err, TokenError::TooShort("admin token \"alice\"".into()));
        let missing = Tokens::named(None, None, Some(Path::new("/nonexistent/admins")), ingest());
        assert!(matches!(missing.unwrap_err(), TokenError::File { .. }));
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

    #[test]
    fn two_authorization_headers_are_refused() {
        let tokens = tokens();
        for (first, second) in [
            ("Bearer admin-secret", "Bearer wrong-token"),
            ("Bearer wrong-token", "Bearer admin-secret"),
            ("Bearer admin-secret", "Bearer admin-secret"),
        ] {
            let mut h = headers(first.as_bytes());
            h.append(AUTHORIZATION, HeaderValue::from_str(second).unwrap());
            assert!(!tokens.allows(Role::Admin, &h), "{first} + {second}");
            assert_eq!(tokens.admin(&h), None);
        }
    }
}
