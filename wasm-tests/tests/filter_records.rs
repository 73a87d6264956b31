//! The built filter in the harness: the audit entries and billing records it queues, what
//! they hold and what they must never hold.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod gate;

use std::collections::{BTreeSet, HashSet};

use gate::{config, send, Gate, Request, Response, ACME, CHAT, GLOBEX, INGEST_TOKEN};
use serde_json::Value;
use wasm_tests::Host;

const AUDIT_FIELDS: [&str; 12] = [
    "kind",
    "id",
    "timestamp",
    "tenant_id",
    "action",
    "result",
    "resource",
    "status_code",
    "method",
    "path",
    "remote_addr",
    "request_id",
];

fn fields(record: &Value) -> BTreeSet<String> {
    record.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn a_401_is_audited_without_a_tenant() {
    let gate = Gate::default_one();
    let request = Request::new("POST", "/v1/chat/completions?api_key=sk-in-the-query")
        .header("authorization", "Bearer sk-not-a-key")
        .header("x-request-id", "req-401")
        .body(gate::chat_body(Some("m"), 5));
    let exchange = send(gate.vm(0), &request, &Response::usage(1, 1)).unwrap();
    assert_eq!(exchange.expect_reply().status, 401);

    let records = gate.queued();
    assert_eq!(records.len(), 1, "{records:?}");
    let audit = &records[0];
    let expected: BTreeSet<String> = AUDIT_FIELDS.iter().map(|f| f.to_string()).collect();
    assert_eq!(fields(audit), expected);
    assert_eq!(audit["kind"], "audit");
    assert_eq!(audit["tenant_id"], Value::Null);
    assert_eq!(audit["action"], "inference");
    assert_eq!(audit["result"], "unauthorized");
    assert_eq!(audit["status_code"], 401);
    assert_eq!(audit["method"], "POST");
    // The query string is left out: keys sometimes travel there.
    assert_eq!(audit["path"], "/v1/chat/completions");
    assert_eq!(audit["remote_addr"], "203.0.113.7:51000");
    assert_eq!(audit["request_id"], "req-401");
    assert_eq!(audit["resource"], Value::Null);
    assert_eq!(audit["timestamp"], "2024-01-01T00:00:00.000Z");
    let text = audit.to_string();
    assert!(
        !text.contains("sk-not-a-key") && !text.contains("sk-in-the-query"),
        "{text}"
    );
}

#[test]
fn a_429_is_audited_as_rate_limited() {
    let gate = Gate::start(&config(&[ACME.limits(1, 1000)]), 1);
    let ok = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 10),
        &Response::usage(8, 10),
    )
    .unwrap();
    assert!(ok.admitted());
    // Refused on its headers (request rate), then one refused on its body (tokens).
    let by_rate = send(
        gate.vm(0),
        &Request::chat(ACME.key(), 10),
        &Response::usage(8, 10),
    )
    .unwrap();
    assert_eq!(by_rate.expect_reply().status, 429);

    let gate2 = Gate::start(&config(&[ACME.limits(100, 100)]), 1);
    let by_tokens = send(
        gate2.vm(0),
        &Request::chat(ACME.key(), 95),
        &Response::usage(8, 10),
    )
    .unwrap();
    assert_eq!(by_tokens.error_code(), "request_too_large");

    for (g, n) in [(&gate, 1), (&gate2, 0)] {
        let audits = g.audits();
        let audit = &audits[n];
        assert_eq!(audit["result"], "rate_limited", "{audit}");
        assert_eq!(audit["status_code"], 429);
        assert_eq!(audit["tenant_id"], "acme");
        assert_eq!(g.billing().len(), n, "a refused request is not billed");
    }
    // The request refused on its body had named its model.
    assert_eq!(gate2.audits()[0]["resource"], "gpt-test");
}

#[test]
fn no_record_holds_a_key_a_token_or_a_header_value() {
    let gate = Gate::start(&config(&[ACME.limits(2, 100_000), GLOBEX]), 2);
    let secrets = [
        "sk-acme-0001",
        "sk-acme-0002",
        "sk-globex-0001",
        "sk-unknown-77",
        INGEST_TOKEN,
        "Mozilla/5.0 (secret agent)",
        "session=cookie-value-123",
        "custom-header-value-456",
        "10.9.8.7",
        "query-secret-789",
        "Basic",
    ];
    let with_noise = |r: Request| {
        r.header("user-agent", "Mozilla/5.0 (secret agent)")
            .header("cookie", "session=cookie-value-123")
            .header("x-custom", "custom-header-value-456")
            .header("x-forwarded-for", "10.9.8.7")
            .header("x-request-id", "req-visible")
    };
    let query_path = format!("{CHAT}?token=query-secret-789");
    let requests = [
        with_noise(Request::chat(ACME.key(), 5)),
        with_noise(Request::post(
            &query_path,
            ACME.keys[1],
            &gate::chat_body(Some("m"), 5),
        )),
        with_noise(Request::chat(ACME.key(), 5)),      // 429
        with_noise(Request::chat("sk-unknown-77", 5)), // 401
        with_noise(Request::chat(GLOBEX.key(), 5).header("x-tenant-id", "acme")),
        with_noise(Request::new("POST", CHAT).header("authorization", "Basic c2stYWNtZS0wMDAx")),
        with_noise(Request::get("/v1/models").header("x-api-key", "sk-globex-0001")),
    ];
    for (i, request) in requests.iter().enumerate() {
        send(gate.vm(i % 2), request, &Response::usage(3, 4)).unwrap();
    }

    let records = gate.queued();
    // Three chat completions, and the model list (its response reported usage).
    assert_eq!(gate.billing().len(), 4, "{records:?}");
    assert_eq!(gate.audits().len(), requests.len());
    for record in &records {
        let text = record.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "a record holds {secret:?}: {text}");
        }
        // Only the request id passes from the headers into a record.
        assert_eq!(record["request_id"], "req-visible", "{text}");
        if record["kind"] == "audit" {
            let allowed: BTreeSet<String> = AUDIT_FIELDS.iter().map(|f| f.to_string()).collect();
            assert_eq!(fields(record), allowed, "{text}");
        }
    }
    // A client cannot bill its requests to another tenant.
    let globex: Vec<&Value> = records
        .iter()
        .filter(|r| r["tenant_id"] == "globex")
        .collect();
    assert_eq!(globex.len(), 4, "{records:?}");
    gate.assert_logs_free_of(&secrets);
}

#[test]
fn every_record_id_is_unique_across_workers() {
    let gate = Gate::start(&config(&[ACME, GLOBEX]), 2);
    for i in 0..24 {
        let request = match i % 4 {
            0 => Request::chat(ACME.key(), 5),
            1 => Request::chat(GLOBEX.key(), 5),
            2 => Request::chat("sk-wrong", 5),
            _ => Request::get("/healthz"),
        };
        send(gate.vm(i % 2), &request, &Response::usage(2, 2)).unwrap();
    }
    let records = gate.queued();
    // Per four requests: two billed and audited, one audited, one health check.
    assert_eq!(records.len(), 6 * 5);
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    // A second process (a restart, with other random bytes) does not reuse them either.
    let host = Host::new();
    host.set_random_seed(0x5eed);
    let again = Gate::start_on(host, &config(&[ACME]), 1);
    send(
        again.vm(0),
        &Request::chat(ACME.key(), 5),
        &Response::usage(2, 2),
    )
    .unwrap();
    for record in again.queued() {
        assert!(!unique.contains(record["id"].as_str().unwrap()));
    }
}
