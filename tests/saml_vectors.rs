//! Every SAML test vector (made by `tests/saml/make_vectors.py` with signxml, not by our
//! code) through the validator and through the ACS, each with the exact check that must
//! refuse it; the genuine Google Workspace response; and arbitrary bytes into the XML reader
//! and the canonicaliser.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use inference_gate::config::Config;
use inference_gate::saml::assertion::{self, Expectations, Login};
use inference_gate::saml::metadata::{self, IdpMetadata};
use inference_gate::saml::xml::{self, Limits};
use inference_gate::saml::{acs, c14n, time, token, Failure};
use inference_gate::shared::{HostError, SharedData, Write};
use proptest::prelude::*;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saml")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Vectors {
    manifest: Value,
    idp: IdpMetadata,
    metadata_xml: String,
}

impl Vectors {
    fn load() -> Vectors {
        let dir = fixtures().join("vectors");
        let manifest: Value = serde_json::from_slice(&read(&dir.join("manifest.json"))).unwrap();
        let metadata_xml = String::from_utf8(read(
            &dir.join(manifest["settings"]["idp_metadata"].as_str().unwrap()),
        ))
        .unwrap();
        let idp = metadata::parse(&metadata_xml).unwrap();
        Vectors {
            manifest,
            idp,
            metadata_xml,
        }
    }

    fn setting(&self, name: &str) -> &str {
        self.manifest["settings"][name].as_str().unwrap()
    }

    fn now_ms(&self) -> i64 {
        time::parse_ms(self.setting("now")).unwrap()
    }

    fn expectations(&self) -> Expectations<'_> {
        Expectations {
            idp: &self.idp,
            sp_entity_id: self.setting("sp_entity_id"),
            acs_url: self.setting("acs_url"),
            clock_skew_ms: self.manifest["settings"]["clock_skew_seconds"]
                .as_i64()
                .unwrap()
                * 1000,
            in_response_to: None,
        }
    }

    fn list(&self) -> &Vec<Value> {
        self.manifest["vectors"].as_array().unwrap()
    }

    fn bytes(&self, vector: &Value) -> Vec<u8> {
        read(
            &fixtures()
                .join("vectors")
                .join(vector["file"].as_str().unwrap()),
        )
    }
}

/// The vectors, read once per test binary.
fn loaded() -> &'static Vectors {
    static VECTORS: std::sync::OnceLock<Vectors> = std::sync::OnceLock::new();
    VECTORS.get_or_init(Vectors::load)
}

fn validate(bytes: &[u8], expect: &Expectations<'_>, now_ms: i64) -> Result<Login, Failure> {
    let doc = xml::parse(bytes, Limits::RESPONSE)?;
    assertion::validate(&doc, expect, now_ms)
}

fn verdict(result: &Result<Login, Failure>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(f) => f.check.code().to_string(),
    }
}

#[test]
fn every_vector_gets_its_verdict_from_the_validator() {
    let v = Vectors::load();
    let expect = v.expectations();
    assert!(v.list().len() >= 60, "too few vectors: {}", v.list().len());
    let mut wrong = Vec::new();
    for vector in v.list() {
        if vector.get("after").is_some() {
            continue; // replay: needs the store, below
        }
        let name = vector["name"].as_str().unwrap();
        let result = validate(&v.bytes(vector), &expect, v.now_ms());
        let got = verdict(&result);
        if got != vector["verdict"].as_str().unwrap() {
            wrong.push(format!(
                "{name}: expected {}, got {got} ({result:?})",
                vector["verdict"]
            ));
            continue;
        }
        if let Ok(login) = &result {
            if let Some(subject) = vector.get("subject") {
                assert_eq!(login.subject, subject.as_str().unwrap(), "{name}");
            }
            if let Some(email) = vector.get("email") {
                assert_eq!(login.email.as_deref(), email.as_str(), "{name}");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The host's shared data, as Envoy keeps it.
#[derive(Default)]
struct Store(RefCell<HashMap<String, (Vec<u8>, u32)>>, RefCell<u32>);

impl SharedData for Store {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        Ok(match self.0.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<Write, HostError> {
        let mut map = self.0.borrow_mut();
        if let (Some((_, current)), Some(cas)) = (map.get(key), cas) {
            if *current != cas {
                return Ok(Write::Conflict);
            }
        }
        *self.1.borrow_mut() += 1;
        map.insert(key.to_string(), (value.to_vec(), *self.1.borrow()));
        Ok(Write::Stored)
    }
}

const SECRET: &str = "vector-test-token-secret-0123456789";

fn acs_config(v: &Vectors) -> Config {
    let config = serde_json::json!({
        "tenants": [
            {"id": "other", "api_key_sha256": "a".repeat(64), "rate_limit": 1, "token_budget": 1},
            {"id": "acme", "api_key_sha256": "b".repeat(64), "rate_limit": 1, "token_budget": 1,
             "saml": {"idp_metadata": v.metadata_xml, "sp_entity_id": v.setting("sp_entity_id"),
                      "acs_url": v.setting("acs_url")}}
        ],
        "collector": {"cluster": "collector", "ingest_token": "ingest-token"},
        "sso": {"token_secret": SECRET, "clock_skew_seconds": 60, "token_ttl_seconds": 3600}
    });
    Config::parse(config.to_string().as_bytes()).unwrap()
}

fn form(bytes: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let encoded: String = b64
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            '/' => "%2F".to_string(),
            '=' => "%3D".to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("RelayState=%2Fchat&SAMLResponse={encoded}").into_bytes()
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[test]
fn every_vector_gets_its_verdict_from_the_acs() {
    let v = Vectors::load();
    let config = acs_config(&v);
    let now_ns = u64::try_from(v.now_ms()).unwrap() * 1_000_000;
    let mut wrong = Vec::new();
    for vector in v.list() {
        let store = Store::default();
        let name = vector["name"].as_str().unwrap();
        for earlier in vector
            .get("after")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let first = v
                .list()
                .iter()
                .find(|x| x["name"] == *earlier)
                .unwrap_or_else(|| panic!("{name}: no vector {earlier}"));
            let o = acs::handle(&config, &store, now_ns, FORM, &form(&v.bytes(first)));
            assert_eq!(o.reply.status, 200, "{name}: {earlier} first");
        }
        let expected = vector
            .get("acs_verdict")
            .unwrap_or(&vector["verdict"])
            .as_str()
            .unwrap();
        let o = acs::handle(&config, &store, now_ns, FORM, &form(&v.bytes(vector)));
        let body: Value = serde_json::from_slice(&o.reply.body).unwrap();
        let got = match o.check {
            None if o.reply.status == 200 => "ok".to_string(),
            None => format!("status {}", o.reply.status),
            Some(c) => {
                assert_eq!(o.reply.status, 401, "{name}");
                assert_eq!(
                    body["error"]["code"],
                    format!("saml_{}", c.code()),
                    "{name}"
                );
                c.code().to_string()
            }
        };
        if got != expected {
            wrong.push(format!("{name}: expected {expected}, got {got}: {body}"));
            continue;
        }
        if got == "ok" {
            assert_eq!(body["tenant_id"], "acme", "{name}");
            assert_eq!(body["token_type"], "Bearer", "{name}");
            assert_eq!(body["relay_state"], "/chat", "{name}");
            assert_eq!(o.tenant, Some(1), "{name}");
            if let Some(subject) = vector.get("subject") {
                assert_eq!(body["subject"], *subject, "{name}");
            }
            // The token is good for tenant acme, and ends with the assertion (00:05:00Z).
            let sso = config.sso.as_ref().unwrap();
            let claims = token::verify(
                &sso.keys,
                body["token"].as_str().unwrap(),
                now_ns / 1_000_000_000,
            )
            .unwrap();
            assert_eq!(claims.tenant, "acme");
            assert_eq!(body["expires_at"], "2030-01-01T00:05:00Z", "{name}");
            assert_eq!(claims.exp, 1_893_456_300, "{name}");
        } else {
            // Never an echo of the response.
            let text = String::from_utf8_lossy(&o.reply.body);
            assert!(!text.contains("example.com"), "{name}: {text}");
            // The tenant is named once the signature proved the IdP sent it.
            let proven = o.check.unwrap().after_signature();
            assert_eq!(o.tenant.is_some(), proven, "{name}");
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_acs_refuses_unusable_posts_and_replays() {
    let v = Vectors::load();
    let config = acs_config(&v);
    let store = Store::default();
    let now_ns = u64::try_from(v.now_ms()).unwrap() * 1_000_000;
    let ok = v
        .list()
        .iter()
        .find(|x| x["name"] == "signed_both")
        .unwrap();
    let post = form(&v.bytes(ok));

    let o = acs::handle(&config, &store, now_ns, Some("application/json"), &post);
    assert_eq!(o.reply.status, 400);
    let o = acs::handle(&config, &store, now_ns, FORM, b"RelayState=x");
    assert_eq!(o.reply.status, 400);
    let o = acs::handle(&config, &store, now_ns, FORM, b"SAMLResponse=***");
    assert_eq!(o.check.map(|c| c.code()), Some("encoding"));

    assert_eq!(
        acs::handle(&config, &store, now_ns, FORM, &post)
            .reply
            .status,
        200
    );
    let again = acs::handle(&config, &store, now_ns, FORM, &post);
    assert_eq!(again.check.map(|c| c.code()), Some("replayed"));
    // Still refused shortly before the assertion expires, on a clock a few minutes on.
    let later = now_ns + 3 * 60 * 1_000_000_000;
    let o = acs::handle(&config, &store, later, FORM, &post);
    assert_eq!(o.check.map(|c| c.code()), Some("replayed"));
}

// --- The genuine Google Workspace response -------------------------------------------------

const GOOGLE_ACS: &str = "https://29ee6d2e.ngrok.io/saml/acs";
const GOOGLE_SP: &str = "https://29ee6d2e.ngrok.io/saml/metadata";
const GOOGLE_REQUEST: &str = "id-fd419a5ab0472645427f8e07d87a3a5dd0b2e9a6";

fn google() -> (Vec<u8>, IdpMetadata, i64) {
    let b64: String = String::from_utf8(read(&fixtures().join("google-workspace-response.b64")))
        .unwrap()
        .split_whitespace()
        .collect();
    let response = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let metadata =
        String::from_utf8(read(&fixtures().join("google-workspace-idp-metadata.xml"))).unwrap();
    let idp = metadata::parse(&metadata).unwrap();
    (
        response,
        idp,
        time::parse_ms("2016-01-05T16:55:39Z").unwrap(),
    )
}

fn google_expect(idp: &IdpMetadata) -> Expectations<'_> {
    Expectations {
        idp,
        sp_entity_id: GOOGLE_SP,
        acs_url: GOOGLE_ACS,
        clock_skew_ms: 60_000,
        in_response_to: Some(GOOGLE_REQUEST),
    }
}

#[test]
fn the_genuine_google_response_validates_at_its_issue_time() {
    let (response, idp, now) = google();
    let login = validate(&response, &google_expect(&idp), now).unwrap();
    assert_eq!(login.subject, "ross@octolabs.io");
    assert_eq!(login.email.as_deref(), Some("ross@octolabs.io"));
    assert_eq!(login.assertion_id, "_9e764952e6a261e19409a3825581033d");
    assert_eq!(
        login.not_on_or_after_ms,
        time::parse_ms("2016-01-05T17:00:39.348Z").unwrap()
    );
}

#[test]
fn the_google_response_fails_when_any_setting_changes() {
    let (response, idp, now) = google();
    let base = google_expect(&idp);
    let cases = [
        ("clock an hour later", base, now + 3_600_000, "expired"),
        (
            "clock an hour earlier",
            base,
            now - 3_600_000,
            "not_yet_valid",
        ),
        (
            "another ACS URL",
            Expectations {
                acs_url: "https://29ee6d2e.ngrok.io/saml/acs2",
                ..base
            },
            now,
            "destination",
        ),
        (
            "another SP entity ID",
            Expectations {
                sp_entity_id: "https://29ee6d2e.ngrok.io/saml/other",
                ..base
            },
            now,
            "audience",
        ),
        (
            "another request",
            Expectations {
                in_response_to: Some("id-other"),
                ..base
            },
            now,
            "in_response_to",
        ),
        (
            "no request sent (IdP-initiated only)",
            Expectations {
                in_response_to: None,
                ..base
            },
            now,
            "in_response_to",
        ),
    ];
    for (what, expect, at, check) in cases {
        let got = verdict(&validate(&response, &expect, at));
        assert_eq!(got, check, "{what}");
    }
    // Another IdP's keys.
    let v = Vectors::load();
    let other = IdpMetadata {
        keys: v.idp.keys.clone(),
        ..idp.clone()
    };
    let got = verdict(&validate(&response, &google_expect(&other), now));
    assert_eq!(got, "signature_invalid");
}

/// The response as signed: the canonical form of the root, less its signature.
fn signed_content(bytes: &[u8]) -> Option<Vec<u8>> {
    let doc = xml::parse(bytes, Limits::RESPONSE).ok()?;
    let signature = doc
        .child_elements(doc.root())
        .find(|c| doc.element(*c).is_some_and(|e| e.local == "Signature"))?;
    Some(c14n::canonicalize(&doc, doc.root(), Some(signature), &[]))
}

#[test]
fn the_google_response_fails_when_any_signed_byte_changes() {
    let (response, idp, now) = google();
    let expect = google_expect(&idp);
    let text = String::from_utf8(response.clone()).unwrap();
    let start = text.find("<saml2p:Response").unwrap();
    let key_info = text.find("<ds:KeyInfo>").unwrap()..text.find("</ds:KeyInfo>").unwrap();
    let original = signed_content(&response).unwrap();
    let mut tried = 0;
    let mut unsigned_bytes = 0;
    for i in (start..response.len()).step_by(5) {
        if key_info.contains(&i) {
            continue; // KeyInfo is neither signed nor read
        }
        let mut changed = response.clone();
        let b = changed[i];
        changed[i] = match b ^ 1 {
            c if c.is_ascii_graphic() => c,
            _ => b'x',
        };
        if changed[i] == b {
            continue;
        }
        tried += 1;
        if validate(&changed, &expect, now).is_ok() {
            // Only bytes outside the signed content may change without notice: a namespace
            // declaration that exclusive C14N leaves out (the unused xmlns:xs and xmlns:xsi
            // on the AttributeValues), which nothing reads.
            assert_eq!(
                signed_content(&changed).as_ref(),
                Some(&original),
                "byte {i} ({:?} -> {:?}) of the signed content changed, still valid",
                b as char,
                changed[i] as char
            );
            unsigned_bytes += 1;
        }
    }
    assert!(
        unsigned_bytes < 40,
        "{unsigned_bytes} bytes changed without notice"
    );
    assert!(tried > 500, "{tried}");
}

// --- Arbitrary input never panics ----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn the_xml_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = xml::parse(&bytes, Limits::RESPONSE);
    }

    #[test]
    fn xml_like_input_never_panics_the_reader_or_the_canonicaliser(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("<a>"), Just("</a>"), Just("<p:b xmlns:p='urn:p'>"), Just("</p:b>"),
                Just("<c x='1' y=\"&amp;&#x9;\"/>"), Just("text"), Just("&lt;"), Just("&#0;"),
                Just("<!-- c -->"), Just("<![CDATA[<x>]]>"), Just("<?pi x?>"), Just("\r\n"),
                Just("<d xmlns='urn:d' xmlns:q='urn:q' q:z='2'>"), Just("</d>"), Just("&e;"),
                Just("<!DOCTYPE"), Just("<ds:Signature xmlns:ds='http://www.w3.org/2000/09/xmldsig#'>"),
                Just("</ds:Signature>"), Just("\u{feff}"), Just("\u{1}"), Just("<"), Just(">"),
            ],
            0..40,
        ),
        prefixes in proptest::collection::vec(prop_oneof![Just("#default"), Just("p"), Just("q"), Just("xml")], 0..3),
    ) {
        let text = parts.concat();
        if let Ok(doc) = xml::parse(text.as_bytes(), Limits::RESPONSE) {
            let prefixes: Vec<String> = prefixes.iter().map(|s| s.to_string()).collect();
            for (id, _) in doc.elements().take(8) {
                let once = c14n::canonicalize(&doc, id, None, &prefixes);
                // Canonical output is well-formed XML, and canonicalising it changes nothing.
                let again = xml::parse(&once, Limits::RESPONSE).unwrap();
                let twice = c14n::canonicalize(&again, again.root(), None, &prefixes);
                prop_assert_eq!(&once, &twice);
            }
            let _ = assertion::shape(&doc);
        }
    }

    #[test]
    fn mutated_vectors_never_panic(index in 0usize..1000, at in 0usize..20_000, byte in any::<u8>()) {
        let v = loaded();
        let vector = &v.list()[index % v.list().len()];
        let mut bytes = v.bytes(vector);
        let i = at % bytes.len();
        bytes[i] = byte;
        let _ = validate(&bytes, &v.expectations(), v.now_ms());
    }
}
