//! The assertion consumer service, `POST /sso/saml/acs`, as a pure function: the form the
//! browser posts in; the reply, the tenant and the failed check out.
//!
//! 1. the body is an HTML form post (`application/x-www-form-urlencoded`) with exactly one
//!    `SAMLResponse` (base64) and at most one `RelayState` (passed back in the answer);
//! 2. the XML is read (`xml`) and its shape checked (`assertion::shape`);
//! 3. the tenant is the one whose IdP metadata has the entity ID the assertion's `Issuer`
//!    claims (entity IDs are unique across tenants, checked at load); that claim only picks
//!    the keys to verify with, and is checked again once the signature holds;
//! 4. every SAML check (`assertion::validate`) against that tenant's IdP and SP settings;
//! 5. the token's expiry: the token TTL from now, but never past the assertion's own end;
//! 6. last, the replay store: so that a response refused for any other reason does not use
//!    up its assertion ID.
//!
//! The answer is `200` with the session token, `401` naming the failed check
//! (`saml_<check>`), `400` for a request that is not a usable form post, `503` if the replay
//! store cannot be updated, or the IdP already holds its share of it (fail closed). Nothing
//! from the response is echoed back on refusal.

use serde::Serialize;

use super::assertion::{self, Expectations};
use super::replay::{self, Remember};
use super::time::format_secs;
use super::token::{self, Claims};
use super::xml::{self, Limits};
use super::{Check, Failure};
use crate::config::{Config, SamlTenant, SsoConfig};
use crate::reply::{self, LocalReply};
use crate::shared::SharedData;

/// The path the filter answers itself.
pub const PATH: &str = "/sso/saml/acs";
/// Largest form post read (a 256 KiB response, base64 and form-encoded, fits).
pub const MAX_BODY_BYTES: usize = 512 * 1024;
const MAX_RELAY_STATE_BYTES: usize = 1024;

/// What came of one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reply: LocalReply,
    /// The tenant signed in, or the one whose IdP provably sent a refused response.
    pub tenant: Option<usize>,
    /// The check that refused the response, if any.
    pub check: Option<Check>,
}

#[derive(Serialize)]
struct Answer<'a> {
    token: &'a str,
    token_type: &'static str,
    expires_at: String,
    expires_in: u64,
    tenant_id: &'a str,
    subject: &'a str,
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_state: Option<&'a str>,
}

/// Answers one post of `body` (with this `content-type`) at `now_ns`.
pub fn handle(
    config: &Config,
    store: &dyn SharedData,
    now_ns: u64,
    content_type: Option<&str>,
    body: &[u8],
) -> Outcome {
    let Some(sso) = &config.sso else {
        return plain(reply::error(
            404,
            "invalid_request_error",
            "sso_not_configured",
            "SAML sign-on is not configured on this gateway.",
        ));
    };
    let form = match read_form(content_type, body) {
        Ok(f) => f,
        Err(message) => {
            return plain(reply::error(
                400,
                "invalid_request_error",
                "invalid_saml_post",
                message,
            ))
        }
    };
    let now_ms = i64::try_from(now_ns / 1_000_000).unwrap_or(i64::MAX);

    let (tenant, login) = match verify(sso, &form.saml_response, now_ms) {
        Ok(v) => v,
        Err((tenant, failure)) => return refused(tenant, failure),
    };
    let Some(tenant_id) = config.tenant(tenant.tenant).map(|t| t.id.as_str()) else {
        return refused(None, Failure::new(Check::UnknownIssuer, "no such tenant"));
    };

    let now_secs = now_ns / 1_000_000_000;
    let assertion_end = u64::try_from(login.not_on_or_after_ms / 1000).unwrap_or(0);
    let expires = now_secs
        .saturating_add(sso.token_ttl_secs)
        .min(assertion_end);
    if expires <= now_secs {
        return refused(
            Some(tenant.tenant),
            Failure::new(
                Check::Expired,
                "the assertion's lifetime has ended; sign in again",
            ),
        );
    }

    match replay::remember(
        store,
        &tenant.idp.entity_id,
        &login.assertion_id,
        login.acceptable_until_ms,
        now_ms,
        sso.idps.len(),
    ) {
        Ok(Remember::Fresh) => {}
        Ok(Remember::Replayed) => {
            return refused(
                Some(tenant.tenant),
                Failure::new(Check::Replayed, "this assertion has already been used"),
            )
        }
        Ok(Remember::IssuerFull) => {
            return unavailable(
                tenant.tenant,
                "Too many recent sign-ons through this identity provider. Retry in a few minutes.",
            )
        }
        Ok(Remember::Full) | Err(_) => {
            return unavailable(
                tenant.tenant,
                "The gateway cannot record sign-ons right now. Retry shortly.",
            )
        }
    }

    let claims = Claims {
        tenant: tenant_id.to_string(),
        sub: login.subject.clone(),
        email: login.email.clone(),
        iat: now_secs,
        exp: expires,
    };
    let token = token::issue(&sso.keys, &claims);
    let answer = Answer {
        token: &token,
        token_type: "Bearer",
        expires_at: format_secs(expires),
        expires_in: expires - now_secs,
        tenant_id,
        subject: &login.subject,
        email: login.email.as_deref(),
        relay_state: form.relay_state.as_deref(),
    };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    Outcome {
        reply: LocalReply {
            status: 200,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
                ("pragma", "no-cache".to_string()),
            ],
            body,
        },
        tenant: Some(tenant.tenant),
        check: None,
    }
}

/// Steps 2 to 4: the tenant and the login, or the failure (with the tenant once the
/// signature has been verified).
fn verify<'a>(
    sso: &'a SsoConfig,
    saml_response: &str,
    now_ms: i64,
) -> Result<(&'a SamlTenant, assertion::Login), (Option<usize>, Failure)> {
    let compact: String = saml_response
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, compact)
        .map_err(|_| {
            let f = Failure::new(Check::Encoding, "SAMLResponse is not base64");
            (None, f)
        })?;
    let doc = xml::parse(&bytes, Limits::RESPONSE).map_err(|e| (None, e.into()))?;
    let shape = assertion::shape(&doc).map_err(|f| (None, f))?;
    let issuer = assertion::claimed_issuer(&doc, shape).unwrap_or_default();
    let tenant = sso
        .idps
        .iter()
        .find(|t| t.idp.entity_id == issuer)
        .ok_or_else(|| {
            let f = Failure::new(
                Check::UnknownIssuer,
                "no tenant signs in with the IdP that issued this assertion",
            );
            (None, f)
        })?;
    let expect = Expectations {
        idp: &tenant.idp,
        sp_entity_id: &tenant.sp_entity_id,
        acs_url: &tenant.acs_url,
        clock_skew_ms: i64::try_from(sso.clock_skew_secs.saturating_mul(1000)).unwrap_or(0),
        in_response_to: None,
    };
    let login = assertion::validate(&doc, &expect, now_ms).map_err(|f| {
        let proven = f.check.after_signature().then_some(tenant.tenant);
        (proven, f)
    })?;
    Ok((tenant, login))
}

/// The replay store cannot take the assertion: refused, never let through unremembered.
fn unavailable(tenant: usize, message: &str) -> Outcome {
    Outcome {
        reply: reply::error(503, "server_error", "sso_unavailable", message),
        tenant: Some(tenant),
        check: None,
    }
}

fn plain(reply: LocalReply) -> Outcome {
    Outcome {
        reply,
        tenant: None,
        check: None,
    }
}

fn refused(tenant: Option<usize>, failure: Failure) -> Outcome {
    let code = format!("saml_{}", failure.check.code());
    let message = format!("SAML sign-on refused: {}.", failure.detail);
    Outcome {
        reply: reply::unauthorized(&code, &message),
        tenant,
        check: Some(failure.check),
    }
}

struct Form {
    saml_response: String,
    relay_state: Option<String>,
}

fn read_form(content_type: Option<&str>, body: &[u8]) -> Result<Form, &'static str> {
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err("Post the SAML response as an HTML form (application/x-www-form-urlencoded).");
    }
    if body.len() > MAX_BODY_BYTES {
        return Err("The form post is too large.");
    }
    let mut saml_response = None;
    let mut relay_state = None;
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut kv = pair.splitn(2, |b| *b == b'=');
        let name = percent_decode(kv.next().unwrap_or(&[])).ok_or("The form is malformed.")?;
        let value = percent_decode(kv.next().unwrap_or(&[])).ok_or("The form is malformed.")?;
        let slot = match name.as_slice() {
            b"SAMLResponse" => &mut saml_response,
            b"RelayState" => &mut relay_state,
            _ => continue,
        };
        if slot.is_some() {
            return Err("The form repeats SAMLResponse or RelayState.");
        }
        *slot = Some(String::from_utf8(value).map_err(|_| "The form is not UTF-8.")?);
    }
    let saml_response = saml_response.ok_or("The form has no SAMLResponse field.")?;
    if relay_state
        .as_ref()
        .is_some_and(|r| r.len() > MAX_RELAY_STATE_BYTES)
    {
        return Err("RelayState is longer than 1024 bytes.");
    }
    Ok(Form {
        saml_response,
        relay_state,
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {

    use base64::Engine as _;

    use super::*;
    use crate::saml::testing::{self, at, ACS, IDP, SP};
    use crate::shared::fake::FakeShared;

    #[test]
    fn forms_are_read_strictly() {
        let ct = Some("application/x-www-form-urlencoded; charset=utf-8");
        let f = read_form(ct, b"RelayState=a%2Fb+c&SAMLResponse=PD94%2B&other=1").unwrap();
        assert_eq!(f.saml_response, "PD94+");
        assert_eq!(f.relay_state.as_deref(), Some("a/b c"));
        assert!(read_form(Some("application/json"), b"SAMLResponse=x").is_err());
        assert!(read_form(None, b"SAMLResponse=x").is_err());
        assert!(read_form(ct, b"RelayState=x").is_err());
        assert!(read_form(ct, b"SAMLResponse=x&SAMLResponse=y").is_err());
        assert!(read_form(ct, b"SAMLResponse=%zz").is_err());
        assert!(read_form(ct, b"SAMLResponse=%4").is_err());
        assert!(read_form(ct, b"SAMLResponse=%ff").is_err());
        let long = format!("SAMLResponse=x&RelayState={}", "r".repeat(1025));
        assert!(read_form(ct, long.as_bytes()).is_err());
    }

    const EVIL_IDP: &str = "https://evil-idp.example/saml2";

    /// Two tenants: acme signs in with the vectors' IdP, globex with another one.
    fn config() -> Config {
        let metadata = testing::metadata_xml();
        let saml = |idp: &str, sp: &str| {
            serde_json::json!({"idp_metadata": metadata.replace(IDP, idp), "sp_entity_id": sp,
                               "acs_url": ACS})
        };
        let config = serde_json::json!({
            "tenants": [
                {"id": "acme", "api_key_sha256": "a".repeat(64), "rate_limit": 1,
                 "token_budget": 1, "saml": saml(IDP, SP)},
                {"id": "globex", "api_key_sha256": "b".repeat(64), "rate_limit": 1,
                 "token_budget": 1, "saml": saml(EVIL_IDP, "https://gateway.test.example/g")}
            ],
            "collector": {"cluster": "collector", "ingest_token": "ingest-token"},
            "sso": {"token_secret": "acs-unit-test-token-secret-0123456789",
                    "clock_skew_seconds": 60, "token_ttl_seconds": 3600}
        });
        Config::parse(config.to_string().as_bytes()).unwrap()
    }

    fn post(config: &Config, store: &FakeShared, now_ms: i64, name: &str) -> Outcome {
        let xml = testing::bytes(&format!("{name}.xml"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(xml);
        let encoded = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let body = format!("SAMLResponse={encoded}");
        let now_ns = u64::try_from(now_ms).unwrap() * 1_000_000;
        let ct = Some("application/x-www-form-urlencoded");
        handle(config, store, now_ns, ct, body.as_bytes())
    }

    fn verdict(o: &Outcome) -> String {
        match o.check {
            Some(c) => c.code().to_string(),
            None => o.reply.status.to_string(),
        }
    }

    #[test]
    fn an_assertion_with_two_bearer_confirmations_cannot_be_replayed_under_the_later() {
        let config = config();
        let store = FakeShared::default();
        let first = post(&config, &store, at(0, 1, 0), "two_bearer_confirmations");
        assert_eq!(verdict(&first), "200");
        let body: serde_json::Value = serde_json::from_slice(&first.reply.body).unwrap();
        assert_eq!(body["expires_at"], "2030-01-01T00:05:00Z");

        // The first confirmation (00:02) and its skew are over; the second holds until 00:05
        // (after which no token would be left to give).
        for (m, s) in [(3, 0), (3, 30), (4, 0), (4, 59)] {
            let again = post(&config, &store, at(0, m, s), "two_bearer_confirmations");
            assert_eq!(verdict(&again), "replayed", "at 00:0{m}:{s:02}");
        }
        let late = post(&config, &store, at(0, 6, 0), "two_bearer_confirmations");
        assert_eq!(verdict(&late), "expired");
    }

    #[test]
    fn a_far_future_assertion_is_refused_once_too_old_and_leaves_the_store() {
        let config = config();
        let store = FakeShared::default();
        let name = "far_future_not_on_or_after";
        assert_eq!(verdict(&post(&config, &store, at(0, 1, 0), name)), "200");
        assert_eq!(
            verdict(&post(&config, &store, at(0, 5, 59), name)),
            "replayed"
        );

        let too_old = post(&config, &store, at(0, 6, 0), name);
        assert_eq!(verdict(&too_old), "expired");
        let body: serde_json::Value = serde_json::from_slice(&too_old.reply.body).unwrap();
        assert_eq!(body["error"]["code"], "saml_expired");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("issued more than 5 minutes ago (IssueInstant)"),
            "{message}"
        );

        // By then its entry is gone from the store: the ID is free again.
        assert_eq!(
            replay::remember(&store, IDP, "_assertion-0001", at(0, 7, 0), at(0, 6, 0), 2),
            Ok(Remember::Fresh)
        );
    }

    #[test]
    fn an_idp_flooding_the_replay_store_refuses_only_its_own_sign_ons() {
        let config = config();
        let store = FakeShared::default();
        let share = replay::issuer_quota(2);

        // globex's IdP signs as many long-lived assertions as it likes.
        let mut stored = 0;
        for i in 0..20_000 {
            let id = format!("_flood-{i}");
            match replay::remember(&store, EVIL_IDP, &id, i64::MAX, at(0, 1, 0), 2) {
                Ok(Remember::Fresh) => stored += 1,
                Ok(Remember::IssuerFull | Remember::Full) => {}
                other => panic!("{other:?}"),
            }
        }

        // acme's users still sign in: globex's IdP holds its share of every bucket, no more.
        let o = post(&config, &store, at(0, 1, 0), "signed_assertion");
        assert_eq!(verdict(&o), "200");
        assert_eq!(o.tenant, Some(0));
        assert_eq!(stored, replay::BUCKETS * share);
    }

    #[test]
    fn an_idp_over_its_share_gets_a_503_and_nothing_is_let_through() {
        let config = config();
        let store = FakeShared::default();
        // acme's own IdP already holds its share of the bucket its next assertion falls in.
        let bucket = replay::key_of(IDP, "_assertion-0001");
        let share = replay::issuer_quota(2);
        let ours: Vec<String> = (0..)
            .map(|i| format!("_earlier-{i}"))
            .filter(|id| replay::key_of(IDP, id) == bucket)
            .take(share)
            .collect();
        for id in &ours {
            assert_eq!(
                replay::remember(&store, IDP, id, i64::MAX, 0, 2),
                Ok(Remember::Fresh)
            );
        }
        let before = store.map.borrow().clone();
        let o = post(&config, &store, at(0, 1, 0), "signed_assertion");
        assert_eq!((o.reply.status, o.check, o.tenant), (503, None, Some(0)));
        let body: serde_json::Value = serde_json::from_slice(&o.reply.body).unwrap();
        assert_eq!(body["error"]["code"], "sso_unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("identity provider"), "{message}");
        assert_eq!(*store.map.borrow(), before, "nothing was remembered");
    }

    proptest::proptest! {
        #[test]
        fn forms_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = read_form(Some("application/x-www-form-urlencoded"), &body);
        }
    }
}
