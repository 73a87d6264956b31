//! The built filter's SAML sign-on: every test vector (made with signxml by
//! `tests/saml/make_vectors.py`) posted to `POST /sso/saml/acs` gets its verdict, a session
//! token from a sign-on is accepted on the inference route as its tenant, and the `auth`
//! audit entries say what happened without a token or an assertion in them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::time::Duration;

use gate::{config, Gate, Request, Response, ACME, GLOBEX};
use serde_json::{json, Value};
use wasm_tests::{workspace_root, Host};

const ACS: &str = "/sso/saml/acs";
const SECRET: &str = "wasm-test-token-secret-0123456789abcdef";
const FORM: &str = "application/x-www-form-urlencoded";

struct Vectors {
    manifest: Value,
    dir: std::path::PathBuf,
}

impl Vectors {
    fn load() -> Vectors {
        let dir = workspace_root().join("tests/fixtures/saml/vectors");
        let manifest =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        Vectors { manifest, dir }
    }

    fn setting(&self, name: &str) -> String {
        self.manifest["settings"][name]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn list(&self) -> Vec<Value> {
        self.manifest["vectors"].as_array().unwrap().clone()
    }

    fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("{name}.xml"))).unwrap()
    }

    /// The vectors' clock, in nanoseconds.
    fn now_ns(&self) -> u64 {
        // 2030-01-01T00:01:00Z
        assert_eq!(self.setting("now"), "2030-01-01T00:01:00Z");
        1_893_456_060 * 1_000_000_000
    }

    /// ACME and GLOBEX, ACME signing in with the vectors' test IdP.
    fn config(&self) -> Value {
        let mut c = config(&[ACME, GLOBEX]);
        let metadata = std::fs::read_to_string(self.dir.join("idp-metadata.xml")).unwrap();
        c["tenants"][0]["saml"] = json!({
            "idp_metadata": metadata,
            "sp_entity_id": self.setting("sp_entity_id"),
            "acs_url": self.setting("acs_url"),
        });
        c["sso"] = json!({"token_secret": SECRET, "clock_skew_seconds": 60});
        c
    }

    fn gate(&self, workers: usize) -> Gate {
        let host = Host::new();
        host.set_time(self.now_ns());
        Gate::start_on(host, &self.config(), workers)
    }
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The form an IdP's page posts: `SAMLResponse` (base64, form-encoded) and `RelayState`.
fn form(xml: &[u8]) -> String {
    let encoded = base64(xml)
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!("SAMLResponse={encoded}&RelayState=%2Fafter-login")
}

fn post(gate: &Gate, worker: usize, xml: &[u8]) -> (u32, Value) {
    let request = Request::new("POST", ACS)
        .header("content-type", FORM)
        .body(form(xml));
    let exchange = gate::send(gate.vm(worker), &request, &Response::json(500, "{}")).unwrap();
    let reply = exchange.expect_reply();
    assert!(
        exchange.stream.forwarded_request_body().is_empty(),
        "the form went upstream"
    );
    (reply.status, serde_json::from_slice(&reply.body).unwrap())
}

/// Empties the replay store: the vectors share assertion IDs.
fn forget_assertions(gate: &Gate) {
    for i in 0..64 {
        gate.host
            .set_shared_data(&format!("inference-gate/saml-replay/{i:02}"), &[1]);
    }
}

#[test]
fn every_vector_gets_its_verdict_through_the_acs() {
    let v = Vectors::load();
    let gate = v.gate(1);
    let mut wrong = Vec::new();
    for vector in v.list() {
        forget_assertions(&gate);
        let name = vector["name"].as_str().unwrap();
        for earlier in vector
            .get("after")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (status, _) = post(&gate, 0, &v.bytes(earlier.as_str().unwrap()));
            assert_eq!(status, 200, "{name}: {earlier} first");
        }
        let expected = vector
            .get("acs_verdict")
            .unwrap_or(&vector["verdict"])
            .as_str()
            .unwrap();
        let (status, body) = post(&gate, 0, &v.bytes(name));
        let got = match status {
            200 => "ok".to_string(),
            401 => body["error"]["code"]
                .as_str()
                .unwrap()
                .trim_start_matches("saml_")
                .to_string(),
            other => format!("status {other}"),
        };
        if got != expected {
            wrong.push(format!("{name}: expected {expected}, got {got}: {body}"));
        } else if status == 200 {
            assert_eq!(body["tenant_id"], "acme", "{name}");
            assert_eq!(body["relay_state"], "/after-login", "{name}");
        } else {
            assert_eq!(body["error"]["type"], "invalid_request_error", "{name}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with("SAML sign-on refused: "), "{message}");
            assert!(!message.contains("example.com"), "{name}: {message}");
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        gate.host
            .logs()
            .iter()
            .all(|l| !l.message.contains("panic")),
        "{}",
        gate.log_text()
    );
}

#[test]
fn a_session_token_is_accepted_as_its_tenant_and_audited() {
    let v = Vectors::load();
    let gate = v.gate(2);

    let (status, body) = post(&gate, 0, &v.bytes("signed_both"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["tenant_id"], "acme");
    assert_eq!(body["subject"], "alice@example.com");
    assert_eq!(body["email"], "alice@example.com");
    // The token ends with the assertion (00:05:00), before the one-hour TTL.
    assert_eq!(body["expires_at"], "2030-01-01T00:05:00Z");
    assert_eq!(body["expires_in"], 240);
    let token = body["token"].as_str().unwrap().to_string();

    // Accepted by the other worker too, billed and limited as acme, never forwarded.
    let chat = Request::chat(&token, 16).header("x-request-id", "sso-chat-1");
    let exchange = gate::send(gate.vm(1), &chat, &Response::usage(7, 3)).unwrap();
    assert!(exchange.admitted(), "{:?}", exchange.reply());
    let upstream = exchange.stream.request_header_map();
    assert!(
        !upstream
            .iter()
            .any(|(k, v)| k == "authorization" || v.contains(&token)),
        "{upstream:?}"
    );
    assert_eq!(
        exchange.stream.request_header("x-tenant-id").as_deref(),
        Some("acme")
    );
    let billing = gate.billing();
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0]["tenant_id"], "acme");
    assert_eq!(billing[0]["request_id"], "sso-chat-1");
    assert!(
        gate.bucket("acme").requests_micro > 0,
        "acme's limit was used"
    );

    // The same assertion again, on the other worker: refused, and audited under acme (the
    // signature proved acme's IdP sent it).
    let (status, body) = post(&gate, 1, &v.bytes("signed_both"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("saml_replayed"))
    );
    // A forged response: refused before any tenant is proven.
    let (status, _) = post(&gate, 0, &v.bytes("xsw3"));
    assert_eq!(status, 401);

    let auth: Vec<Value> = gate
        .audits()
        .into_iter()
        .filter(|a| a["action"] == "auth")
        .collect();
    let summary: Vec<(Value, Value, Value, Value)> = auth
        .iter()
        .map(|a| {
            (
                a["tenant_id"].clone(),
                a["result"].clone(),
                a["status_code"].clone(),
                a["resource"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("acme"), json!("success"), json!(200), json!("saml")),
            (
                json!("acme"),
                json!("unauthorized"),
                json!(401),
                json!("saml:replayed")
            ),
            (
                json!(null),
                json!("unauthorized"),
                json!(401),
                json!("saml:duplicate_id")
            ),
        ]
    );
    for a in &auth {
        assert_eq!(
            (a["method"].as_str(), a["path"].as_str()),
            (Some("POST"), Some(ACS))
        );
    }
    let inference: Vec<Value> = gate
        .audits()
        .into_iter()
        .filter(|a| a["action"] == "inference")
        .collect();
    assert_eq!(inference.len(), 1);
    assert_eq!(inference[0]["tenant_id"], "acme");

    let records = serde_json::to_string(&gate.queued()).unwrap();
    assert!(!records.contains(&token), "a record holds the token");
    assert!(
        !records.contains("alice@example.com"),
        "a record holds the subject"
    );
    gate.assert_logs_free_of(&[&token, &token[token.len() - 20..], "PHNhbWxwOlJlc3BvbnNl"]);
}

#[test]
fn an_assertion_is_remembered_while_any_confirmation_holds_and_no_longer_than_its_age_allows() {
    let v = Vectors::load();
    let code = |body: &Value| body["error"]["code"].as_str().map(str::to_string);

    // Two bearer confirmations, ending at 00:02 and 00:05: at 00:04 the first (and its skew)
    // is over, the second still holds, and the assertion is still remembered.
    let gate = v.gate(2);
    let (status, body) = post(&gate, 0, &v.bytes("two_bearer_confirmations"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_at"], "2030-01-01T00:05:00Z");
    gate.host.advance(Duration::from_secs(3 * 60));
    let (status, body) = post(&gate, 1, &v.bytes("two_bearer_confirmations"));
    assert_eq!(
        (status, code(&body).as_deref()),
        (401, Some("saml_replayed"))
    );

    // NotOnOrAfter ten years ahead: accepted once, then refused as too old from five minutes
    // after issue plus the skew (00:06), however long the IdP said it was good for.
    let gate = v.gate(2);
    let (status, body) = post(&gate, 0, &v.bytes("far_future_not_on_or_after"));
    assert_eq!(status, 200, "{body}");
    gate.host.advance(Duration::from_secs(4 * 60 + 59));
    let (status, body) = post(&gate, 1, &v.bytes("far_future_not_on_or_after"));
    assert_eq!(
        (status, code(&body).as_deref()),
        (401, Some("saml_replayed"))
    );
    gate.host.advance(Duration::from_secs(1));
    let (status, body) = post(&gate, 1, &v.bytes("far_future_not_on_or_after"));
    assert_eq!(
        (status, code(&body).as_deref()),
        (401, Some("saml_expired"))
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("(IssueInstant)"), "{message}");
}

#[test]
fn session_tokens_expire_and_cannot_be_forged() {
    let v = Vectors::load();
    let gate = v.gate(1);
    let (_, body) = post(&gate, 0, &v.bytes("signed_assertion"));
    let token = body["token"].as_str().unwrap().to_string();

    let code = |key: &str| {
        let exchange = gate.send(&Request::chat(key, 16), &Response::usage(1, 1));
        exchange.reply().map(|_| exchange.error_code())
    };
    assert_eq!(code(&token), None);

    // Another tenant's name in the claims, the MAC unchanged.
    let parts: Vec<&str> = token.split('.').collect();
    let claims = String::from_utf8(base64_url_decode(parts[2]))
        .unwrap()
        .replace("\"acme\"", "\"globex\"");
    let forged = format!(
        "{}.{}.{}.{}",
        parts[0],
        parts[1],
        base64(claims.as_bytes())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_"),
        parts[3]
    );
    assert_eq!(code(&forged).as_deref(), Some("invalid_api_key"));
    assert_eq!(
        code(&format!("{token}x")).as_deref(),
        Some("invalid_api_key")
    );
    assert_eq!(code("igs1.k1.e30.AAAA").as_deref(), Some("invalid_api_key"));

    // Past the assertion's end (00:05:00), the token is refused with a reason.
    gate.host.advance(Duration::from_secs(4 * 60));
    assert_eq!(code(&token).as_deref(), Some("session_expired"));

    // A gateway with another secret does not accept it.
    let mut other = v.config();
    other["sso"]["token_secret"] = json!("another-secret-0123456789abcdef-0123");
    let host = Host::new();
    host.set_time(v.now_ns());
    let other = Gate::start_on(host, &other, 1);
    let exchange = other.send(&Request::chat(&token, 16), &Response::usage(1, 1));
    assert_eq!(exchange.error_code(), "invalid_api_key");
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        bits = (bits << 6) | ABC.iter().position(|&x| x == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn the_genuine_google_response_is_verified_in_the_filter() {
    // Google Workspace answered an AuthnRequest (InResponseTo) that this gateway, which only
    // takes IdP-initiated sign-ons, never sent: refused at that check, which comes after the
    // signature, so the refusal is audited under the tenant.
    let fixtures = workspace_root().join("tests/fixtures/saml");
    let metadata =
        std::fs::read_to_string(fixtures.join("google-workspace-idp-metadata.xml")).unwrap();
    let b64: String = std::fs::read_to_string(fixtures.join("google-workspace-response.b64"))
        .unwrap()
        .split_whitespace()
        .collect();
    let mut c = config(&[ACME]);
    c["tenants"][0]["saml"] = json!({
        "idp_metadata": metadata,
        "sp_entity_id": "https://29ee6d2e.ngrok.io/saml/metadata",
        "acs_url": "https://29ee6d2e.ngrok.io/sso/saml/acs",
    });
    c["sso"] = json!({"token_secret": SECRET});
    let host = Host::new();
    host.set_time(1_452_012_939 * 1_000_000_000); // 2016-01-05T16:55:39Z
    let gate = Gate::start_on(host, &c, 1);
    let body = format!(
        "SAMLResponse={}",
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let request = Request::new("POST", ACS)
        .header("content-type", FORM)
        .body(body);
    let exchange = gate.send(&request, &Response::json(500, "{}"));
    // The response names its own ACS path (/saml/acs), not ours: Destination is the first
    // check after the signature.
    assert_eq!(exchange.error_code(), "saml_destination");
    let audit = &gate.audits()[0];
    assert_eq!(audit["tenant_id"], "acme", "{audit}");
    assert_eq!(audit["resource"], "saml:destination");
}

#[test]
fn the_acs_refuses_what_is_not_a_form_post() {
    let v = Vectors::load();
    let gate = v.gate(1);
    let send = |request: Request| {
        gate.send(&request, &Response::json(500, "{}"))
            .expect_reply()
    };

    let r = send(Request::get(ACS));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(
        Request::new("POST", ACS)
            .header("content-type", "application/json")
            .body("{}"),
    );
    assert_eq!(r.status, 400);
    let r = send(Request::new("POST", ACS).header("content-type", FORM));
    assert_eq!(r.status, 400);
    let r = send(
        Request::new("POST", ACS)
            .header("content-type", FORM)
            .body("SAMLResponse=%%%"),
    );
    assert_eq!(r.status, 400);
    let big = format!("SAMLResponse={}", "A".repeat(600 * 1024));
    let r = send(
        Request::new("POST", ACS)
            .header("content-type", FORM)
            .body(big),
    );
    assert_eq!(r.status, 413);
    // Chunked: the verdict comes once the form is whole.
    let whole = form(&v.bytes("signed_response"));
    let (a, b) = whole.as_bytes().split_at(1000);
    let request = Request::new("POST", ACS)
        .header("content-type", FORM)
        .chunks(&[a, b]);
    let exchange = gate.send(&request, &Response::json(500, "{}"));
    assert_eq!(exchange.body_actions.len(), 2);
    assert_eq!(exchange.expect_reply().status, 200);

    // Without SSO configured the path is not served.
    let plain = Gate::default_one();
    let r = plain
        .send(
            &Request::new("POST", ACS)
                .header("content-type", FORM)
                .body(form(b"<x/>")),
            &Response::json(500, "{}"),
        )
        .expect_reply();
    assert_eq!(r.status, 404);
}
