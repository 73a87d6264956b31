//! The router called in-process, on each backend: every status code of the API, both tokens
//! on both kinds of endpoint, and the metrics.

#[macro_use]
mod common;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use collector::app::{app, AppState, MAX_BODY_BYTES};
use collector::auth::Tokens;
use collector::store::Store;
use common::{ADMIN, INGEST};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    router: Router,
    store: Store,
}

fn harness(db: &common::TestDb) -> Harness {
    let store = db.store.clone();
    let tokens = Tokens::new(Some(ADMIN.into()), Some(INGEST.into())).unwrap();
    let router = app(AppState::new(store.clone(), tokens));
    Harness { router, store }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|err| panic!("{status}: body is not JSON ({err}): {bytes:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post_records(&self, token: Option<&str>, body: impl Into<Body>) -> Answer {
        self.send(request(Method::POST, "/v1/records", token, body.into()))
            .await
    }

    /// A GET whose answer is text, not JSON (`/metrics`).
    async fn get_text(&self, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = request(Method::GET, uri, None, Body::empty());
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Answer {
        self.send(request(Method::GET, uri, token, Body::empty()))
            .await
    }
}

fn request(method: Method, uri: &str, token: Option<&str>, body: Body) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

fn batch(records: Vec<Value>) -> String {
    json!({ "records": records }).to_string()
}

fn billing(id: &str, tenant: &str, timestamp: &str, input: u64, output: u64) -> Value {
    json!({
        "kind": "billing", "id": id, "tenant_id": tenant, "input_tokens": input,
        "output_tokens": output, "timestamp": timestamp, "model": "demo-model",
        "request_id": null, "api": "openai_chat", "usage_source": "reported",
        "cached_input_tokens": 0, "cache_write_input_tokens": null, "reasoning_tokens": null
    })
}

fn audit(id: &str, tenant: Option<&str>, timestamp: &str) -> Value {
    json!({
        "kind": "audit", "id": id, "timestamp": timestamp, "tenant_id": tenant,
        "action": "inference", "result": "success", "resource": "demo-model",
        "status_code": 200, "method": "POST", "path": "/v1/chat/completions",
        "remote_addr": "127.0.0.1:51234", "request_id": "req-1"
    })
}

/// Asserts the OpenAI-shaped error body and returns its message.
fn error_message(answer: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status, status, "{}", answer.body);
    let error = &answer.body["error"];
    assert_eq!(error["code"], code, "{}", answer.body);
    assert!(error["type"].is_string(), "{}", answer.body);
    error["message"].as_str().unwrap().to_owned()
}

backend_tests! {
    async fn ingest_stores_a_batch_and_counts_duplicates(db) {
        let h = harness(db);
        let body = batch(vec![
            billing("b1", "acme", "2026-12-03T18:07:14.123Z", 12, 34),
            audit("a1", Some("acme"), "2026-12-03T18:07:14.120Z"),
        ]);

        let first = h.post_records(Some(INGEST), body.clone()).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.body, json!({ "accepted": 2, "duplicates": 0 }));

        let again = h.post_records(Some(INGEST), body).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, json!({ "accepted": 0, "duplicates": 2 }));
    }

    async fn ingest_accepts_an_empty_batch(db) {
        let h = harness(db);
        let answer = h.post_records(Some(INGEST), r#"{"records": []}"#).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, json!({ "accepted": 0, "duplicates": 0 }));
    }

    async fn invalid_json_is_a_400_with_line_and_column(db) {
        let h = harness(db);
        let answer = h
            .post_records(Some(INGEST), "{\"records\": [\n  {,]}")
            .await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_json");
        assert!(message.contains("line 2 column 4"), "{message}");
    }

    async fn an_invalid_record_rejects_the_whole_batch(db) {
        let h = harness(db);
        let mut bad = billing("b4", "acme", "2026-12-03T18:00:00Z", 1, 1);
        bad["input_tokens"] = json!(-5);
        let records = vec![
            billing("b1", "acme", "2026-12-03T18:00:00Z", 1, 1),
            audit("a1", None, "2026-12-03T18:00:00Z"),
            billing("b2", "acme", "2026-12-03T18:00:00Z", 1, 1),
            bad,
        ];

        let answer = h.post_records(Some(INGEST), batch(records)).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            message,
            "records[3].input_tokens: must be a non-negative integer"
        );
        // The record at fault is named apart, for the filter to drop it alone.
        assert_eq!(answer.body["error"]["param"], "records[3].input_tokens");

        let stored = h.get("/v1/billing?tenant_id=acme", Some(ADMIN)).await;
        assert_eq!(stored.body, json!({ "records": [] }));
        let stored = h.get("/v1/audit", Some(ADMIN)).await;
        assert_eq!(stored.body, json!({ "entries": [] }));
    }

    async fn a_missing_records_field_is_a_400(db) {
        let h = harness(db);
        let answer = h.post_records(Some(INGEST), r#"{}"#).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(message, "records: is required");
        assert_eq!(answer.body["error"]["param"], serde_json::Value::Null);
    }

    async fn unknown_fields_and_clockless_timestamps_are_a_400_and_nothing_is_stored(db) {
        let h = harness(db);
        let good = billing("b1", "acme", "2026-12-03T18:00:00Z", 1, 1);
        let mut misspelt = billing("b2", "acme", "2026-12-03T18:00:00Z", 1, 1);
        misspelt["output_token"] = json!(5);
        let answer = h.post_records(Some(INGEST), batch(vec![good.clone(), misspelt])).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains("unknown field \"output_token\""), "{message}");
        assert_eq!(answer.body["error"]["param"], "records[1]");

        let epoch = billing("b3", "acme", "1970-01-01T00:00:00Z", 1, 1);
        let answer = h.post_records(Some(INGEST), batch(vec![good.clone(), epoch])).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains("before 2020"), "{message}");
        assert_eq!(answer.body["error"]["param"], "records[1].timestamp");

        let ahead = billing("b4", "acme", "2999-01-01T00:00:00Z", 1, 1);
        let answer = h.post_records(Some(INGEST), batch(vec![ahead])).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(message.contains("ahead of the collector's clock"), "{message}");

        let stored = h.get("/v1/billing?tenant_id=acme", Some(ADMIN)).await;
        assert_eq!(stored.body, json!({ "records": [] }), "nothing partly stored");
    }

    async fn more_than_ten_thousand_records_is_a_400(db) {
        let h = harness(db);
        let one = billing("b1", "acme", "2026-12-03T18:00:00Z", 1, 1);
        let answer = h.post_records(Some(INGEST), batch(vec![one; 10_001])).await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            message.starts_with("records: at most 10000 records"),
            "{message}"
        );
    }

    async fn a_body_over_8_mib_is_a_413(db) {
        let h = harness(db);
        let padding = " ".repeat(MAX_BODY_BYTES);
        let answer = h
            .post_records(Some(INGEST), format!("{{\"records\": []{padding}}}"))
            .await;
        error_message(&answer, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");

        // Exactly at the limit is still read.
        let body = format!("{{\"records\": []}}{}", " ".repeat(MAX_BODY_BYTES - 15));
        assert_eq!(body.len(), MAX_BODY_BYTES);
        assert_eq!(
            h.post_records(Some(INGEST), body).await.status,
            StatusCode::OK
        );
    }

    async fn each_endpoint_takes_only_its_own_token(db) {
        let h = harness(db);
        let body = || batch(vec![billing("b1", "acme", "2026-12-03T18:00:00Z", 1, 1)]);

        for token in [None, Some(ADMIN), Some("wrong-token-value")] {
            let answer = h.post_records(token, body()).await;
            error_message(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
            assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
        }
        assert_eq!(
            h.post_records(Some(INGEST), body()).await.status,
            StatusCode::OK
        );

        for uri in [
            "/v1/billing?tenant_id=acme",
            "/v1/usage?tenant_id=acme",
            "/v1/audit",
        ] {
            for token in [None, Some(INGEST), Some("wrong-token-value")] {
                let answer = h.get(uri, token).await;
                error_message(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
            }
            assert_eq!(
                h.get(uri, Some(ADMIN)).await.status,
                StatusCode::OK,
                "{uri}"
            );
        }
    }

    async fn the_token_check_comes_before_the_body(db) {
        let h = harness(db);
        let answer = h.post_records(Some(ADMIN), "not json").await;
        error_message(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    async fn the_bearer_scheme_is_case_insensitive(db) {
        let h = harness(db);
        for scheme in ["bearer", "BEARER", "Bearer"] {
            let request = Request::get("/v1/audit")
                .header(header::AUTHORIZATION, format!("{scheme} {ADMIN}"))
                .body(Body::empty())
                .unwrap();
            assert_eq!(h.send(request).await.status, StatusCode::OK, "{scheme}");
        }
        let request = Request::get("/v1/audit")
            .header(header::AUTHORIZATION, format!("Basic {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(h.send(request).await.status, StatusCode::UNAUTHORIZED);
    }

    async fn billing_lists_a_tenants_records_oldest_first_without_kind(db) {
        let h = harness(db);
        let records = vec![
            billing("late", "acme", "2026-12-03T18:00:00Z", 3, 4),
            billing("early", "acme", "2026-12-03T19:30:00+02:00", 1, 2),
            billing("other", "globex", "2026-12-03T17:00:00Z", 9, 9),
        ];
        h.post_records(Some(INGEST), batch(records)).await;

        let answer = h.get("/v1/billing?tenant_id=acme", Some(ADMIN)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let mut expected = billing("early", "acme", "2026-12-03T19:30:00+02:00", 1, 2);
        expected.as_object_mut().unwrap().remove("kind");
        assert_eq!(answer.body["records"][0], expected);
        assert_eq!(answer.body["records"][1]["id"], "late");
        assert_eq!(answer.body["records"].as_array().unwrap().len(), 2);

        let answer = h
            .get("/v1/billing?tenant_id=acme&limit=1", Some(ADMIN))
            .await;
        assert_eq!(answer.body["records"].as_array().unwrap().len(), 1);
    }

    async fn billing_returns_cache_writes_as_ingested(db) {
        let h = harness(db);
        let mut written = billing("b1", "acme", "2026-12-03T18:00:00Z", 2103, 40);
        written["api"] = json!("anthropic_messages");
        written["cached_input_tokens"] = json!(2000);
        written["cache_write_input_tokens"] = json!(100);
        let mut absent = billing("b2", "acme", "2026-12-03T18:00:01Z", 1, 1);
        absent.as_object_mut().unwrap().remove("cache_write_input_tokens");

        let body = batch(vec![written.clone(), absent]);
        let first = h.post_records(Some(INGEST), body.clone()).await;
        assert_eq!(first.body, json!({ "accepted": 2, "duplicates": 0 }));
        let again = h.post_records(Some(INGEST), body).await;
        assert_eq!(again.body, json!({ "accepted": 0, "duplicates": 2 }));

        let answer = h.get("/v1/billing?tenant_id=acme", Some(ADMIN)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        written.as_object_mut().unwrap().remove("kind");
        assert_eq!(answer.body["records"][0], written);
        // Left out at ingest, it is there as null, like the other details.
        let second = &answer.body["records"][1];
        assert_eq!(second["cache_write_input_tokens"], Value::Null, "{second}");
        assert!(second.as_object().unwrap().contains_key("cache_write_input_tokens"));
        assert_eq!(answer.body["records"].as_array().unwrap().len(), 2);

        let answer = h
            .post_records(
                Some(INGEST),
                batch(vec![{
                    let mut bad = billing("b3", "acme", "2026-12-03T18:00:02Z", 1, 1);
                    bad["cache_write_input_tokens"] = json!(-1);
                    bad
                }]),
            )
            .await;
        let message = error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(
            message,
            "records[0].cache_write_input_tokens: must be a non-negative integer"
        );
    }

    async fn billing_honours_from_and_to(db) {
        let h = harness(db);
        let records = vec![
            billing("b1", "acme", "2026-12-03T18:00:00Z", 1, 1),
            billing("b2", "acme", "2026-12-03T19:00:00Z", 1, 1),
        ];
        h.post_records(Some(INGEST), batch(records)).await;

        // `+` must be percent-encoded in a query string.
        let uri = "/v1/billing?tenant_id=acme&from=2026-12-03T20:00:00%2B02:00&to=2026-12-03T19:00:00Z";
        let answer = h.get(uri, Some(ADMIN)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let ids: Vec<&str> = answer.body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["b1"]);
    }

    async fn query_parameters_are_checked_and_named(db) {
        let h = harness(db);
        let cases = [
            ("/v1/billing", "query parameter tenant_id: is required"),
            (
                "/v1/billing?tenant_id=",
                "query parameter tenant_id: is required",
            ),
            (
                "/v1/usage?from=2026-12-03T18:00:00Z",
                "query parameter tenant_id: is required",
            ),
            (
                "/v1/usage?tenant_id=",
                "query parameter tenant_id: is required",
            ),
            (
                "/v1/audit?tenant_id=",
                "query parameter tenant_id: must not be empty (leave it out for every tenant)",
            ),
            (
                "/v1/billing?tenant_id=acme&from=yesterday",
                "query parameter from: must be an RFC 3339 timestamp, e.g. 2026-12-03T18:07:14Z",
            ),
            (
                "/v1/usage?tenant_id=acme&to=2026-12-03",
                "query parameter to: must be an RFC 3339 timestamp, e.g. 2026-12-03T18:07:14Z",
            ),
            (
                "/v1/audit?from=2026-12-03T18:00:00+02:00",
                "query parameter from: must be an RFC 3339 timestamp; encode the + of an offset as %2B",
            ),
            (
                "/v1/audit?from=2026-12-03T19:00:00Z&to=2026-12-03T18:00:00Z",
                "query parameter from: must not be later than to",
            ),
            (
                "/v1/billing?tenant_id=acme&limit=0",
                "query parameter limit: must be an integer from 1 to 10000",
            ),
            (
                "/v1/audit?limit=10001",
                "query parameter limit: must be an integer from 1 to 10000",
            ),
            (
                "/v1/audit?limit=ten",
                "query parameter limit: must be an integer from 1 to 10000",
            ),
        ];
        for (uri, expected) in cases {
            let answer = h.get(uri, Some(ADMIN)).await;
            assert_eq!(
                error_message(&answer, StatusCode::BAD_REQUEST, "invalid_request"),
                expected,
                "{uri}"
            );
        }
        assert_eq!(
            h.get("/v1/audit?limit=10000", Some(ADMIN)).await.status,
            StatusCode::OK
        );
        assert_eq!(
            h.get("/v1/audit?tenant_id=a&tenant_id=b", Some(ADMIN))
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    async fn usage_sums_and_echoes_the_range(db) {
        let h = harness(db);
        let records = vec![
            billing("b1", "acme", "2026-12-03T18:00:00Z", 9007199254740992, 1),
            billing("b2", "acme", "2026-12-03T18:30:00Z", 1, 2),
            billing("b3", "acme", "2026-12-03T19:00:00Z", 100, 100),
            billing("b4", "globex", "2026-12-03T18:00:00Z", 100, 100),
        ];
        h.post_records(Some(INGEST), batch(records)).await;

        let answer = h
            .get(
                "/v1/usage?tenant_id=acme&to=2026-12-03T19:00:00Z",
                Some(ADMIN),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        // Compared as text: the exact sum 2^53 + 1 does not survive a round trip through f64.
        let text = answer.body.to_string();
        assert!(text.contains("\"input_tokens\":9007199254740993"), "{text}");
        assert_eq!(answer.body["tenant_id"], "acme");
        assert_eq!(answer.body["from"], Value::Null);
        assert_eq!(answer.body["to"], "2026-12-03T19:00:00Z");
        assert_eq!(answer.body["requests"], 2);
        assert_eq!(answer.body["output_tokens"], 3);

        let answer = h.get("/v1/usage?tenant_id=nobody", Some(ADMIN)).await;
        let expected = json!({
            "tenant_id": "nobody", "from": null, "to": null,
            "requests": 0, "input_tokens": 0, "output_tokens": 0
        });
        assert_eq!(answer.body, expected);
    }

    async fn audit_lists_every_tenant_or_one(db) {
        let h = harness(db);
        let records = vec![
            audit("a-acme", Some("acme"), "2026-12-03T18:00:00Z"),
            audit("a-none", None, "2026-12-03T18:00:01Z"),
            audit("a-globex", Some("globex"), "2026-12-03T18:00:02Z"),
        ];
        h.post_records(Some(INGEST), batch(records)).await;

        let answer = h.get("/v1/audit", Some(ADMIN)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let ids: Vec<&str> = answer.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a-acme", "a-none", "a-globex"]);
        let mut expected = audit("a-none", None, "2026-12-03T18:00:01Z");
        expected.as_object_mut().unwrap().remove("kind");
        assert_eq!(answer.body["entries"][1], expected);

        let answer = h
            .get(
                "/v1/audit?tenant_id=globex&from=2026-12-03T18:00:02Z",
                Some(ADMIN),
            )
            .await;
        assert_eq!(answer.body["entries"].as_array().unwrap().len(), 1);
        assert_eq!(answer.body["entries"][0]["id"], "a-globex");
    }

    async fn health_answers_without_a_token(db) {
        let h = harness(db);
        let answer = h.get("/healthz", None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, json!({ "status": "ok" }));
    }

    async fn a_closed_store_makes_health_and_ingest_503(db) {
        let h = harness(db);
        h.store.close().await.unwrap();

        let answer = h.get("/healthz", None).await;
        error_message(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        );
        let answer = h.post_records(Some(INGEST), r#"{"records": []}"#).await;
        let message = error_message(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        );
        assert!(
            !message.contains("sqlite"),
            "detail leaked to the client: {message}"
        );
    }

    async fn unknown_routes_are_404_and_wrong_methods_405(db) {
        let h = harness(db);
        for uri in ["/", "/v1/record", "/v1/billing/acme", "/metric"] {
            let answer = h.get(uri, Some(ADMIN)).await;
            error_message(&answer, StatusCode::NOT_FOUND, "not_found");
        }

        let wrong = [
            (Method::GET, "/v1/records"),
            (Method::PUT, "/v1/records"),
            (Method::POST, "/v1/billing"),
            (Method::DELETE, "/v1/usage"),
            (Method::POST, "/v1/audit"),
            (Method::POST, "/healthz"),
        ];
        for (method, uri) in wrong {
            let answer = h
                .send(request(method.clone(), uri, Some(ADMIN), Body::empty()))
                .await;
            error_message(
                &answer,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            );
            assert!(answer.headers.contains_key(header::ALLOW), "{method} {uri}");
        }
    }

    async fn metrics_count_records_duplicates_latency_and_store_errors(db) {
        let h = harness(db);
        let body = batch(vec![
            billing("b1", "acme", "2026-12-03T18:07:14.123Z", 12, 34),
            audit("a1", Some("acme"), "2026-12-03T18:07:14.120Z"),
            audit("a2", None, "2026-12-03T18:07:14.121Z"),
        ]);
        assert_eq!(h.post_records(Some(INGEST), body.clone()).await.status, StatusCode::OK);
        assert_eq!(h.post_records(Some(INGEST), body).await.status, StatusCode::OK);
        let invalid = h.post_records(Some(INGEST), "{").await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);

        // No token: Prometheus scrapes it like /healthz.
        let (status, headers, text) = h.get_text("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
        for line in [
            "collector_records_ingested_total{kind=\"billing\"} 1",
            "collector_records_ingested_total{kind=\"audit\"} 2",
            "collector_records_duplicates_total{kind=\"billing\"} 1",
            "collector_records_duplicates_total{kind=\"audit\"} 2",
            "collector_ingest_batches_total{result=\"stored\"} 2",
            "collector_ingest_batches_total{result=\"invalid\"} 1",
            "collector_ingest_batches_total{result=\"failed\"} 0",
            "collector_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/records\",status=\"200\"} 2",
            "collector_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/records\",status=\"400\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }

        h.store.close().await.unwrap();
        let failed = h.post_records(Some(INGEST), batch(vec![])).await;
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.get("/healthz", None).await.status, StatusCode::SERVICE_UNAVAILABLE);
        let (_, _, text) = h.get_text("/metrics").await;
        for line in [
            "collector_store_errors_total{operation=\"insert\"} 1",
            "collector_store_errors_total{operation=\"ping\"} 1",
            "collector_ingest_batches_total{result=\"failed\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }
}
