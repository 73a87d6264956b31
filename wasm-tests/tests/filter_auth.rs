//! The built filter in the harness: credentials, the rewritten request, `/healthz`, and
//! plugin configurations it must refuse.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use gate::{
    assert_openai_error, config, filter, reply_json, Gate, Request, Response, ACME, CHAT, GLOBEX,
    INGEST_TOKEN,
};
use serde_json::json;
use wasm_tests::{Action, Error, Host};

fn ok() -> Response {
    Response::usage(10, 5)
}

/// Sends a chat request with these extra headers and returns the 401's `error.code`.
fn refused_code(gate: &Gate, headers: &[(&str, &str)]) -> String {
    let mut request = Request::new("POST", CHAT).body(gate::chat_body(Some("m"), 10));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let exchange = gate.send(&request, &ok());
    assert_eq!(exchange.headers_action, Action::Pause, "{headers:?}");
    assert!(
        exchange.body_actions.is_empty(),
        "a refused request's body is not read"
    );
    let reply = exchange.expect_reply();
    let code = assert_openai_error(&reply, 401, "invalid_request_error");
    // The credential part of each header (a bare scheme word carries none).
    let secrets = headers
        .iter()
        .filter_map(|(name, value)| match value.split_once(' ') {
            Some((_, credential)) => Some(credential),
            None if name.eq_ignore_ascii_case("x-api-key") => Some(*value),
            None => None,
        });
    for secret in secrets {
        assert!(
            !reply.body_text().contains(secret),
            "the 401 body repeats what the client sent ({secret:?}): {}",
            reply.body_text()
        );
    }
    assert!(exchange.stream.forwarded_request_body().is_empty());
    code
}

#[test]
fn a_request_without_a_key_is_refused_with_missing_api_key() {
    let gate = Gate::default_one();
    assert_eq!(refused_code(&gate, &[]), "missing_api_key");
    assert_eq!(gate.metric("inference_gate.requests.unauthorized"), 1);
    assert_eq!(gate.metric("inference_gate.requests.success"), 0);
}

#[test]
fn unusable_credentials_are_refused_with_invalid_api_key() {
    let gate = Gate::default_one();
    let cases: [&[(&str, &str)]; 6] = [
        &[("authorization", "Bearer sk-wrong-key-123")],
        &[("authorization", "Basic YWNtZTpzay1hY21lLTAwMDE=")],
        &[("authorization", "Bearer")],
        &[("x-api-key", "sk-wrong-key-456")],
        // The right key under the wrong scheme is still refused.
        &[("authorization", "Token sk-acme-0001")],
        // A present Authorization header wins over x-api-key; no silent fallback.
        &[
            ("authorization", "Basic c2stYWNtZS0wMDAx"),
            ("x-api-key", "sk-acme-0001"),
        ],
    ];
    for headers in cases {
        assert_eq!(
            refused_code(&gate, headers),
            "invalid_api_key",
            "{headers:?}"
        );
    }
    assert_eq!(gate.metric("inference_gate.requests.unauthorized"), 6);
    for audit in gate.audits() {
        assert_eq!(audit["result"], "unauthorized");
        assert_eq!(audit["tenant_id"], serde_json::Value::Null);
    }
    assert!(gate.billing().is_empty());
    gate.assert_logs_free_of(&[
        "sk-wrong-key-123",
        "sk-wrong-key-456",
        "YWNtZTpzay1hY21lLTAwMDE",
    ]);
}

#[test]
fn an_admitted_request_reaches_upstream_as_the_tenant_without_credentials() {
    let gate = Gate::default_one();
    let body = gate::chat_body(Some("m"), 10);
    let request = Request::new("POST", CHAT)
        .header("authorization", "Bearer sk-acme-0001")
        .header("x-api-key", "sk-globex-0001")
        .header("x-tenant-id", "evil")
        .header("X-Tenant-Id", "globex")
        .header("accept-encoding", "gzip, br")
        .header("x-request-id", "req-42")
        .header("content-type", "application/json")
        .chunks(&[&body.as_bytes()[..7], &body.as_bytes()[7..]]);

    let exchange = gate::begin(gate.vm(0), &request).unwrap();
    // Headers go on at once; the body is held until it is whole, then released.
    assert_eq!(exchange.headers_action, Action::Continue);
    assert_eq!(exchange.body_actions, [Action::Pause, Action::Continue]);
    assert_eq!(exchange.stream.forwarded_request_body(), body.as_bytes());
    assert!(exchange.reply().is_none());

    let upstream = exchange.stream.request_header_map();
    let names: Vec<&str> = upstream.iter().map(|(k, _)| k.as_str()).collect();
    assert!(!names.contains(&"authorization"), "{upstream:?}");
    assert!(!names.contains(&"x-api-key"), "{upstream:?}");
    assert!(!names.contains(&"accept-encoding"), "{upstream:?}");
    let tenant: Vec<&str> = upstream
        .iter()
        .filter(|(k, _)| k == "x-tenant-id")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tenant, ["acme"], "the client's x-tenant-id must be dropped");
    assert_eq!(
        exchange.stream.request_header("x-request-id").as_deref(),
        Some("req-42")
    );
    assert_eq!(
        exchange.stream.request_header("content-type").as_deref(),
        Some("application/json")
    );

    exchange.respond(&ok()).unwrap();
    assert_eq!(gate.metric("inference_gate.requests.success"), 1);
    assert_eq!(gate.billing().len(), 1);
    assert_eq!(gate.billing()[0]["tenant_id"], "acme");
}

#[test]
fn the_bearer_scheme_in_any_case_and_x_api_key_are_accepted() {
    let gate = Gate::default_one();
    let cases: [(&str, &str, &str); 4] = [
        ("authorization", "bearer sk-acme-0001", "acme"),
        ("authorization", "BEARER sk-acme-0002", "acme"),
        ("x-api-key", "sk-globex-0001", "globex"),
        ("X-API-Key", "sk-acme-0002", "acme"),
    ];
    for (name, value, tenant) in cases {
        let request = Request::new("POST", CHAT)
            .header(name, value)
            .body(gate::chat_body(Some("m"), 10));
        let exchange = gate.send(&request, &ok());
        assert!(exchange.reply().is_none(), "{name}: {value}");
        assert!(exchange.admitted());
        let upstream = exchange.stream.request_header_map();
        assert!(
            !upstream
                .iter()
                .any(|(k, _)| k == "authorization" || k == "x-api-key"),
            "{upstream:?}"
        );
        assert_eq!(
            exchange.stream.request_header("x-tenant-id").as_deref(),
            Some(tenant)
        );
    }
    let tenants: Vec<_> = gate
        .billing()
        .iter()
        .map(|b| b["tenant_id"].clone())
        .collect();
    assert_eq!(
        tenants,
        [json!("acme"), json!("acme"), json!("globex"), json!("acme")]
    );
    gate.assert_logs_free_of(&["sk-acme-0001", "sk-acme-0002", "sk-globex-0001"]);
}

#[test]
fn healthz_is_answered_without_a_key_and_leaves_no_record() {
    let gate = Gate::default_one();
    for (method, path) in [
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/healthz?probe=1"),
    ] {
        let exchange = gate.send(&Request::new(method, path), &ok());
        let reply = exchange.expect_reply();
        assert_eq!(reply.status, 200, "{method} {path}");
        assert_eq!(reply_json(&reply), json!({"status": "ok"}));
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    assert!(gate.queued().is_empty(), "{:?}", gate.queued());
    assert_eq!(gate.metric("inference_gate.records.queued"), 0);
    assert_eq!(gate.metric("inference_gate.requests.unauthorized"), 0);

    // Only the probe path is open: anything else still needs a key.
    let exchange = gate.send(&Request::get("/healthz/../v1/models"), &ok());
    assert_eq!(exchange.expect_reply().status, 401);
    let exchange = gate.send(&Request::new("POST", "/healthz"), &ok());
    assert_eq!(exchange.expect_reply().status, 401);
}

/// Starts one worker with `config` and expects it refused; returns every log line.
fn rejected(config: &serde_json::Value) -> String {
    let host = Host::new();
    match host.start_vm(filter(), &config.to_string()) {
        Err(Error::Rejected { callback, logs }) => {
            assert_eq!(callback, "proxy_on_configure");
            let all: Vec<String> = host.logs().iter().map(|l| l.message.clone()).collect();
            assert!(
                logs.iter()
                    .any(|l| l.message.contains("invalid plugin configuration")),
                "{all:?}"
            );
            for line in &all {
                assert!(
                    !line.contains(INGEST_TOKEN),
                    "the ingest token was logged: {line}"
                );
            }
            all.join("\n")
        }
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("the filter started with an invalid configuration: {config}"),
    }
}

#[test]
fn invalid_configurations_fail_start_and_name_the_field() {
    let base = config(&[ACME, GLOBEX]);

    let mut unknown = base.clone();
    unknown["tenants"][1]["rate_limt"] = 5.into();
    let log = rejected(&unknown);
    assert!(log.contains("tenants[1].rate_limt"), "{log}");
    assert!(log.contains("unknown field"), "{log}");

    let mut bad_digest = base.clone();
    bad_digest["tenants"][0]["api_key_sha256"][1] = "not-a-digest".into();
    let log = rejected(&bad_digest);
    assert!(log.contains("tenants[0].api_key_sha256[1]"), "{log}");

    let mut short_digest = base.clone();
    short_digest["tenants"][1]["api_key_sha256"] = "abc123".into();
    let log = rejected(&short_digest);
    assert!(log.contains("tenants[1].api_key_sha256[0]"), "{log}");

    for field in ["rate_limit", "token_budget"] {
        let mut zero = base.clone();
        zero["tenants"][1][field] = 0.into();
        let log = rejected(&zero);
        assert!(log.contains(&format!("tenants[1].{field}")), "{log}");
    }

    let mut no_collector = base.clone();
    no_collector.as_object_mut().unwrap().remove("collector");
    let log = rejected(&no_collector);
    assert!(log.contains("collector"), "{log}");

    let mut unknown_collector_field = base.clone();
    unknown_collector_field["collector"]["flush_every"] = 5.into();
    let log = rejected(&unknown_collector_field);
    assert!(log.contains("collector.flush_every"), "{log}");

    let mut zero_flush = base.clone();
    zero_flush["collector"]["flush_interval_ms"] = 0.into();
    let log = rejected(&zero_flush);
    assert!(log.contains("collector.flush_interval_ms"), "{log}");

    let mut duplicate_key = base.clone();
    duplicate_key["tenants"][1]["api_key_sha256"] = gate::digest(ACME.keys[1]).into();
    let log = rejected(&duplicate_key);
    assert!(log.contains("tenants[1].api_key_sha256[0]"), "{log}");

    let log = rejected(&json!("not an object"));
    assert!(!log.is_empty());
}

#[test]
fn a_rejected_configuration_never_logs_the_ingest_token() {
    // Errors in and around the collector section, where the token sits.
    let mut cases = Vec::new();
    let mut spaced = config(&[ACME]);
    spaced["collector"]["ingest_token"] = format!("{INGEST_TOKEN} x").into();
    cases.push(spaced);
    let mut misnamed = config(&[ACME]);
    misnamed["collector"]["ingest-token"] = INGEST_TOKEN.into();
    cases.push(misnamed);
    let mut bad_type = config(&[ACME]);
    bad_type["collector"]["cluster"] = json!([INGEST_TOKEN]);
    cases.push(bad_type);
    let mut later_error = config(&[ACME]);
    later_error["collector"]["batch_size"] = 0.into();
    cases.push(later_error);
    let mut bad_tenant = config(&[ACME]);
    bad_tenant["tenants"][0]["id"] = "no spaces allowed".into();
    cases.push(bad_tenant);
    for case in &cases {
        rejected(case);
    }
}

/// A numeric token, as a templating tool renders an unquoted all-digit secret, is refused
/// for its type; the message must still not carry the value.
#[test]
fn a_numeric_ingest_token_is_refused_without_echoing_it() {
    let secret = "80417293365512";
    let mut numeric = config(&[ACME]);
    numeric["collector"]["ingest_token"] = json!(80_417_293_365_512_u64);
    let host = Host::new();
    let err = host
        .start_vm(filter(), &numeric.to_string())
        .expect_err("a numeric token is not a string");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    let log = host
        .logs()
        .iter()
        .map(|l| l.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(log.contains("collector.ingest_token"), "{log}");
    assert!(!log.contains(secret), "the ingest token was logged: {log}");
}

#[test]
fn a_valid_configuration_starts_and_logs_no_secret() {
    let gate = Gate::start(&config(&[ACME, GLOBEX]), 2);
    let log = gate.log_text();
    assert!(
        log.contains("configured tenants=2 keys=3 collector_cluster=collector"),
        "{log}"
    );
    assert_eq!(
        gate.vm(0).tick_period(),
        Some(std::time::Duration::from_secs(1))
    );
    gate.assert_logs_free_of(&[INGEST_TOKEN, ACME.keys[0], ACME.keys[1], GLOBEX.keys[0]]);
    // Each tenant's limit state exists before any traffic.
    assert_eq!(gate.bucket("acme").requests_micro, 0);
    assert_eq!(gate.bucket("globex").tokens_micro, 0);
    // Nothing queued, nothing sent.
    assert!(gate.queued().is_empty());
}
