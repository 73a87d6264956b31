//! The session token the gateway gives a user after a SAML sign-on, and takes back as
//! `Authorization: Bearer` on the inference route.
//!
//! `igs1.<key id>.<claims>.<mac>`: the claims are JSON (tenant, subject, email, issue and
//! expiry times in Unix seconds), base64url without padding; the MAC is HMAC-SHA256 under the
//! secret named by the key id, over everything before the last dot, base64url. There is no
//! algorithm field to steer. Any Envoy that has the secret accepts the token, so it holds
//! across workers and replicas. New tokens are signed with the current key; tokens signed
//! with a previous key stay valid until they expire, which is how secrets are rotated.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const VERSION: &str = "igs1";
/// Longest token accepted (longer ones are not even parsed).
const MAX_TOKEN_BYTES: usize = 4096;

/// A signing secret and the id that names it in tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey {
    pub id: String,
    secret: Vec<u8>,
}

impl TokenKey {
    pub fn new(id: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        TokenKey {
            id: id.into(),
            secret: secret.into(),
        }
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        mac.update(signed.as_bytes());
        mac
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey {{ id: {:?}, secret: <redacted> }}", self.id)
    }
}

/// The key that signs, and the ones that still verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeys {
    pub current: TokenKey,
    pub previous: Vec<TokenKey>,
}

impl TokenKeys {
    fn find(&self, id: &str) -> Option<&TokenKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    #[serde(rename = "tid")]
    pub tenant: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not shaped like a token, an unknown key id, or a MAC that does not match.
    Invalid,
    Expired,
}

/// Whether `credential` is meant as a session token (rather than an API key).
pub fn looks_like_token(credential: &str) -> bool {
    credential.starts_with("igs1.")
}

pub fn issue(keys: &TokenKeys, claims: &Claims) -> String {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!(
        "{VERSION}.{}.{}",
        keys.current.id,
        URL_SAFE_NO_PAD.encode(json)
    );
    let tag = keys.current.mac(&signed).finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// The claims of a token signed with one of `keys` that has not expired at `now_secs`.
pub fn verify(keys: &TokenKeys, token: &str, now_secs: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Invalid);
    }
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let mut parts = signed.splitn(3, '.');
    let (Some(VERSION), Some(key_id), Some(payload)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid);
    };
    let key = keys.find(key_id).ok_or(TokenError::Invalid)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Invalid)?;
    // Constant time: `verify_slice` compares with `subtle`.
    key.mac(signed)
        .verify_slice(&tag)
        .map_err(|_| TokenError::Invalid)?;

    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
    if claims.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys {
            current: TokenKey::new("k2", b"0123456789abcdef0123456789abcdef".to_vec()),
            previous: vec![TokenKey::new(
                "k1",
                b"fedcba9876543210fedcba9876543210".to_vec(),
            )],
        }
    }

    fn claims() -> Claims {
        Claims {
            tenant: "acme".into(),
            sub: "ross@example.com".into(),
            email: Some("ross@example.com".into()),
            iat: 100,
            exp: 200,
        }
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let t = issue(&keys(), &claims());
        assert!(t.starts_with("igs1.k2."));
        assert!(looks_like_token(&t));
        assert!(t.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(verify(&keys(), &t, 199), Ok(claims()));
        assert_eq!(verify(&keys(), &t, 200), Err(TokenError::Expired));
    }

    #[test]
    fn previous_keys_verify_and_unknown_ones_do_not() {
        let old = TokenKeys {
            current: keys().previous[0].clone(),
            previous: vec![],
        };
        let t = issue(&old, &claims());
        assert_eq!(verify(&keys(), &t, 150), Ok(claims()));
        let rotated_out = TokenKeys {
            current: keys().current,
            previous: vec![],
        };
        assert_eq!(verify(&rotated_out, &t, 150), Err(TokenError::Invalid));
    }

    #[test]
    fn any_change_is_refused() {
        let t = issue(&keys(), &claims());
        let mut other = claims();
        other.tenant = "globex".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}.{}", parts[0], parts[1], forged_payload, parts[3]);
        assert_eq!(verify(&keys(), &forged, 150), Err(TokenError::Invalid));
        // The same claims under another key id's name.
        let renamed = t.replacen("igs1.k2.", "igs1.k1.", 1);
        assert_eq!(verify(&keys(), &renamed, 150), Err(TokenError::Invalid));
        for bad in [
            "",
            "igs1",
            "igs1.k2",
            "igs1.k2.x",
            "igs1.k2.x.y",
            "igs2.k2.a.b",
            "....",
        ] {
            assert_eq!(
                verify(&keys(), bad, 150),
                Err(TokenError::Invalid),
                "{bad:?}"
            );
        }
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify(&keys(), &flipped, 150), Err(TokenError::Invalid));
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", keys());
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_verify_or_panic(s in "\\PC{0,300}") {
            proptest::prop_assert!(verify(&keys(), &s, 0).is_err());
        }
    }
}
