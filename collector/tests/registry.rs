//! The tenant registry through the router, on each backend: every rule of the operator API,
//! bad input included, the snapshot the filter polls, and the audit trail of every call.

#[macro_use]
mod common;

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use collector::app::{app, AppState};
use collector::auth::Tokens;
use collector::registry::keys::sha256_hex;
use common::{ADMIN, INGEST};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The `ETag` of an answer, as text.
fn tag(answer: &Answer) -> String {
    answer.headers[header::ETAG].to_str().unwrap().to_owned()
}

/// An audit entry as the trail tests compare it: action, result, resource, status, actor, tenant.
type TrailRow = (String, String, String, u64, Option<String>, Option<String>);

const ALICE: &str = "alice-token-for-tests";

struct Harness {
    router: Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

fn harness(db: &common::TestDb) -> Harness {
    let tokens = Tokens::named(
        Some(ADMIN.into()),
        Some(format!("alice={ALICE}")),
        None,
        Some(INGEST.into()),
    )
    .unwrap();
    Harness {
        router: app(AppState::new(db.store.clone(), tokens)),
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        self.call_with(method, uri, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("{status}: not JSON ({err}): {bytes:?}"))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.call(method, uri, Some(ADMIN), body.as_deref()).await
    }

    /// Creates a tenant; its answer (with the key).
    async fn create(&self, id: &str, rate_limit: u64, token_budget: u64) -> Value {
        let body = json!({"id": id, "rate_limit": rate_limit, "token_budget": token_budget});
        let answer = self.admin(Method::POST, "/v1/tenants", Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }

    async fn snapshot(&self) -> Answer {
        self.call(Method::GET, "/v1/tenants/snapshot", Some(INGEST), None)
            .await
    }

    async fn version(&self) -> u64 {
        let answer = self.admin(Method::GET, "/v1/health", None).await;
        answer.body["version"].as_u64().unwrap()
    }

    /// The collector's own audit entries (the registry's), oldest first.
    async fn trail(&self) -> Vec<Value> {
        let answer = self.admin(Method::GET, "/v1/audit", None).await;
        answer.body["entries"].as_array().unwrap().clone()
    }
}

/// Asserts the OpenAI-shaped error and returns it.
fn error(answer: &Answer, status: StatusCode, code: &str) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    let error = answer.body["error"].clone();
    assert_eq!(error["code"], code, "{}", answer.body);
    assert_eq!(error["type"], "invalid_request_error", "{}", answer.body);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    error
}

fn snapshot_tenant<'a>(snapshot: &'a Value, id: &str) -> Option<&'a Value> {
    snapshot["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
}

backend_tests! {
    async fn a_new_tenant_gets_a_key_shown_once_and_stored_as_its_digest(db) {
        let h = harness(db);
        let answer = h
            .admin(Method::POST, "/v1/tenants", Some(json!({
                "id": "acme", "rate_limit": 600, "token_budget": 200000
            })))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(answer.headers[header::LOCATION], "/v1/tenants/acme");
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
        let key = answer.body["api_key"].as_str().unwrap().to_owned();
        let key_id = answer.body["key_id"].as_str().unwrap().to_owned();
        assert!(key.starts_with("ig-") && key.len() >= 3 + 22, "{key}");
        let tenant = &answer.body["tenant"];
        assert_eq!(tenant["id"], "acme");
        assert_eq!((tenant["rate_limit"].as_u64(), tenant["token_budget"].as_u64()), (Some(600), Some(200000)));
        assert_eq!(tenant["suspended"], false);
        assert_eq!(tenant["allowed_models"], Value::Null);
        assert_eq!(tenant["keys"][0]["key_id"], key_id.as_str());
        let digest = sha256_hex(&key);
        assert_eq!(tenant["keys"][0]["sha256_prefix"], &digest[..8]);

        // Never again: not in the tenant, not in the list, only its digest in the snapshot.
        let shown = h.admin(Method::GET, "/v1/tenants/acme", None).await;
        assert_eq!(shown.status, StatusCode::OK);
        assert!(!shown.body.to_string().contains(&key));
        assert!(!shown.body.to_string().contains(&digest));
        assert_eq!(shown.body["keys"][0]["revoked_at"], Value::Null);
        let listed = h.admin(Method::GET, "/v1/tenants", None).await;
        assert!(!listed.body.to_string().contains(&key));
        let snapshot = h.snapshot().await;
        let entry = snapshot_tenant(&snapshot.body, "acme").unwrap();
        assert_eq!(entry["api_key_sha256"], json!([digest]));
        assert!(!snapshot.body.to_string().contains(&key));

        // A second tenant gets a different key.
        let other = h.create("globex", 5, 2000).await;
        assert_ne!(other["api_key"], key.as_str());
    }

    async fn a_create_is_checked_field_by_field(db) {
        let h = harness(db);
        let ok = json!({"id": "acme", "rate_limit": 1, "token_budget": 1});
        let with = |field: &str, value: Value| {
            let mut body = ok.clone();
            body[field] = value;
            body
        };
        let without = |field: &str| {
            let mut body = ok.clone();
            body.as_object_mut().unwrap().remove(field);
            body
        };
        let cases = [
            (without("id"), "id"),
            (with("id", json!("")), "id"),
            (with("id", json!("has space")), "id"),
            (with("id", json!("x".repeat(129))), "id"),
            (with("id", json!("snapshot")), "id"),
            (with("id", json!(42)), "id"),
            (without("rate_limit"), "rate_limit"),
            (with("rate_limit", json!(0)), "rate_limit"),
            (with("rate_limit", json!(-5)), "rate_limit"),
            (with("rate_limit", json!(1u64 << 41)), "rate_limit"),
            (without("token_budget"), "token_budget"),
            (with("token_budget", json!("many")), "token_budget"),
            (with("suspended", json!("no")), "suspended"),
            (with("allowed_models", json!([])), "allowed_models"),
            (with("allowed_models", json!([""])), "allowed_models[0]"),
            (with("rate_limt", json!(5)), "rate_limt"),
        ];
        for (body, param) in cases {
            let answer = h.admin(Method::POST, "/v1/tenants", Some(body.clone())).await;
            let err = error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(err["param"], param, "{body}");
            assert!(err["message"].as_str().unwrap().starts_with(param), "{err}");
        }
        for body in ["not json", "{\"id\": "] {
            let answer = h.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(body)).await;
            error(&answer, StatusCode::BAD_REQUEST, "invalid_json");
        }
        let answer = h.admin(Method::POST, "/v1/tenants", Some(json!(["acme"]))).await;
        error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        // Nothing was created by any of them.
        assert_eq!(h.version().await, 0);

        let body = json!({
            "id": "acme.eu-1_x", "rate_limit": 1u64 << 40, "token_budget": 1,
            "suspended": true, "allowed_models": ["m1", "m2"]
        });
        let created = h.admin(Method::POST, "/v1/tenants", Some(body)).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["tenant"]["suspended"], true);
        assert_eq!(created.body["tenant"]["allowed_models"], json!(["m1", "m2"]));
    }

    async fn a_taken_id_is_a_409(db) {
        let h = harness(db);
        h.create("acme", 1, 1).await;
        let body = json!({"id": "acme", "rate_limit": 9, "token_budget": 9});
        let answer = h.admin(Method::POST, "/v1/tenants", Some(body)).await;
        error(&answer, StatusCode::CONFLICT, "tenant_exists");
        let shown = h.admin(Method::GET, "/v1/tenants/acme", None).await;
        assert_eq!(shown.body["rate_limit"], 1);
        assert_eq!(h.version().await, 1);
    }

    async fn every_registry_call_needs_an_admin_token(db) {
        let h = harness(db);
        h.create("acme", 1, 1).await;
        let calls = [
            (Method::POST, "/v1/tenants", Some("{}")),
            (Method::GET, "/v1/tenants", None),
            (Method::GET, "/v1/tenants/acme", None),
            (Method::PATCH, "/v1/tenants/acme", Some("{\"suspended\": true}")),
            (Method::DELETE, "/v1/tenants/acme", None),
            (Method::POST, "/v1/tenants/acme/keys", None),
            (Method::DELETE, "/v1/tenants/acme/keys/key_0", None),
            (Method::GET, "/v1/health", None),
            (Method::PUT, "/v1/health", Some("{\"healthy\": false}")),
        ];
        for (method, uri, body) in calls {
            for token in [None, Some(INGEST), Some("wrong-token-value")] {
                let answer = h.call(method.clone(), uri, token, body).await;
                assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{method} {uri} {token:?}");
                assert_eq!(answer.body["error"]["code"], "invalid_token");
            }
        }
        // The filter's snapshot takes the ingest token only.
        for token in [None, Some(ADMIN), Some(ALICE)] {
            let answer = h.call(Method::GET, "/v1/tenants/snapshot", token, None).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token:?}");
        }
        assert_eq!(h.version().await, 1, "nothing changed");
        let shown = h.call(Method::GET, "/v1/tenants/acme", Some(ALICE), None).await;
        assert_eq!(shown.status, StatusCode::OK);
    }

    async fn tenants_are_listed_in_id_order_a_page_at_a_time(db) {
        let h = harness(db);
        for id in ["c", "a", "b", "d"] {
            h.create(id, 1, 1).await;
        }
        h.admin(Method::POST, "/v1/tenants/b/keys", None).await;
        let all = h.admin(Method::GET, "/v1/tenants", None).await;
        let ids: Vec<&str> = all.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(all.body["next_after"], Value::Null);
        assert_eq!(all.body["tenants"][1]["keys"].as_array().unwrap().len(), 2);
        assert_eq!(all.body["tenants"][2]["keys"].as_array().unwrap().len(), 1);

        let page = h.admin(Method::GET, "/v1/tenants?limit=2", None).await;
        assert_eq!(page.body["tenants"].as_array().unwrap().len(), 2);
        assert_eq!(page.body["next_after"], "b");
        let page = h.admin(Method::GET, "/v1/tenants?after=b&limit=2", None).await;
        let ids: Vec<&str> = page.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["c", "d"]);
        assert_eq!(page.body["tenants"][0]["keys"].as_array().unwrap().len(), 1);
        for bad in ["limit=0", "limit=10001", "limit=x"] {
            let answer = h.admin(Method::GET, &format!("/v1/tenants?{bad}"), None).await;
            error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
        }
    }

    async fn an_unknown_tenant_is_a_404_everywhere(db) {
        let h = harness(db);
        let calls = [
            (Method::GET, "/v1/tenants/nobody", None),
            (Method::PATCH, "/v1/tenants/nobody", Some(json!({"suspended": true}))),
            (Method::DELETE, "/v1/tenants/nobody", None),
            (Method::POST, "/v1/tenants/nobody/keys", None),
            (Method::DELETE, "/v1/tenants/nobody/keys/key_0", None),
        ];
        for (method, uri, body) in calls {
            let answer = h.admin(method.clone(), uri, body).await;
            error(&answer, StatusCode::NOT_FOUND, "tenant_not_found");
        }
        assert_eq!(h.version().await, 0);
    }

    async fn a_patch_changes_what_it_names_and_bumps_the_version(db) {
        let h = harness(db);
        h.create("acme", 60, 1000).await;
        let v1 = h.version().await;
        let patch = |body: Value| h.admin(Method::PATCH, "/v1/tenants/acme", Some(body));

        let answer = patch(json!({"rate_limit": 120})).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!((answer.body["rate_limit"].as_u64(), answer.body["token_budget"].as_u64()), (Some(120), Some(1000)));
        let answer = patch(json!({"token_budget": 5000, "suspended": true, "allowed_models": ["m1"]})).await;
        assert_eq!(answer.body["token_budget"], 5000);
        assert_eq!(answer.body["suspended"], true);
        assert_eq!(answer.body["allowed_models"], json!(["m1"]));
        assert_eq!(h.version().await, v1 + 2);

        let snapshot = h.snapshot().await.body;
        let entry = snapshot_tenant(&snapshot, "acme").unwrap();
        assert_eq!(entry["rate_limit"], 120);
        assert_eq!(entry["suspended"], true);
        assert_eq!(entry["allowed_models"], json!(["m1"]));

        // null allows every model again; false lifts the suspension.
        let answer = patch(json!({"allowed_models": null, "suspended": false})).await;
        assert_eq!(answer.body["allowed_models"], Value::Null);
        let snapshot = h.snapshot().await.body;
        let entry = snapshot_tenant(&snapshot, "acme").unwrap();
        assert!(entry.get("allowed_models").is_none() && entry.get("suspended").is_none(), "{entry}");

        for (body, param) in [
            (json!({}), Value::Null),
            (json!({"rate_limit": 0}), json!("rate_limit")),
            (json!({"id": "other"}), json!("id")),
            (json!({"allowed_models": "m1"}), json!("allowed_models")),
        ] {
            let err = error(&patch(body.clone()).await, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(err["param"], param, "{body}");
        }
        assert_eq!(h.version().await, v1 + 3);
        let shown = h.admin(Method::GET, "/v1/tenants/acme", None).await;
        assert!(shown.body["updated_at"].as_str().unwrap() >= shown.body["created_at"].as_str().unwrap());
    }

    async fn a_deleted_tenant_leaves_the_snapshot_and_keeps_its_history(db) {
        let h = harness(db);
        h.create("acme", 1, 1).await;
        h.create("globex", 1, 1).await;
        let batch = json!({"records": [{
            "kind": "billing", "id": "b1", "tenant_id": "acme", "input_tokens": 3,
            "output_tokens": 4, "timestamp": "2026-12-03T18:00:00Z", "api": "openai_chat",
            "usage_source": "reported"
        }]});
        let stored = h.call(Method::POST, "/v1/records", Some(INGEST), Some(&batch.to_string())).await;
        assert_eq!(stored.status, StatusCode::OK);

        let answer = h.admin(Method::DELETE, "/v1/tenants/acme", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, json!({"id": "acme", "deleted": true}));
        error(&h.admin(Method::GET, "/v1/tenants/acme", None).await, StatusCode::NOT_FOUND, "tenant_not_found");
        error(&h.admin(Method::DELETE, "/v1/tenants/acme", None).await, StatusCode::NOT_FOUND, "tenant_not_found");
        let snapshot = h.snapshot().await.body;
        assert!(snapshot_tenant(&snapshot, "acme").is_none());
        assert!(snapshot_tenant(&snapshot, "globex").is_some());

        let billing = h.admin(Method::GET, "/v1/billing?tenant_id=acme", None).await;
        assert_eq!(billing.body["records"].as_array().unwrap().len(), 1);
        let audit = h.admin(Method::GET, "/v1/audit?tenant_id=acme", None).await;
        assert!(audit.body["entries"].as_array().unwrap().iter().any(|e| e["action"] == "create"));

        // The id is free again, and a recreated tenant has only its new key.
        let again = h.create("acme", 2, 2).await;
        let snapshot = h.snapshot().await.body;
        let entry = snapshot_tenant(&snapshot, "acme").unwrap();
        assert_eq!(entry["api_key_sha256"], json!([sha256_hex(again["api_key"].as_str().unwrap())]));
    }

    async fn keys_rotate_without_a_gap(db) {
        let h = harness(db);
        let created = h.create("acme", 1, 1).await;
        let first = sha256_hex(created["api_key"].as_str().unwrap());
        let old_key_id = created["key_id"].as_str().unwrap().to_owned();

        let added = h.admin(Method::POST, "/v1/tenants/acme/keys", None).await;
        assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
        assert_eq!(added.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(added.body["tenant_id"], "acme");
        let second_key = added.body["api_key"].as_str().unwrap();
        assert!(second_key.starts_with("ig-"));
        let second = sha256_hex(second_key);
        assert_eq!(added.body["sha256_prefix"], &second[..8]);
        let snapshot = h.snapshot().await.body;
        assert_eq!(snapshot_tenant(&snapshot, "acme").unwrap()["api_key_sha256"], json!([first, second]));

        let uri = format!("/v1/tenants/acme/keys/{old_key_id}");
        let revoked = h.admin(Method::DELETE, &uri, None).await;
        assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
        assert_eq!(revoked.body["key_id"], old_key_id.as_str());
        assert!(revoked.body["revoked_at"].is_string());
        let snapshot = h.snapshot().await.body;
        assert_eq!(snapshot_tenant(&snapshot, "acme").unwrap()["api_key_sha256"], json!([second]));
        // The revoked key stays listed, revoked.
        let shown = h.admin(Method::GET, "/v1/tenants/acme", None).await;
        let keys = shown.body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0]["revoked_at"].is_string() && keys[1]["revoked_at"].is_null());

        error(&h.admin(Method::DELETE, &uri, None).await, StatusCode::NOT_FOUND, "key_not_found");
        error(&h.admin(Method::DELETE, "/v1/tenants/acme/keys/key_nope", None).await, StatusCode::NOT_FOUND, "key_not_found");
        // Another tenant's key is not this tenant's to revoke.
        let globex = h.create("globex", 1, 1).await;
        let uri = format!("/v1/tenants/acme/keys/{}", globex["key_id"].as_str().unwrap());
        error(&h.admin(Method::DELETE, &uri, None).await, StatusCode::NOT_FOUND, "key_not_found");
    }

    async fn a_tenant_holds_at_most_sixteen_active_keys(db) {
        let h = harness(db);
        h.create("acme", 1, 1).await;
        for _ in 1..16 {
            let added = h.admin(Method::POST, "/v1/tenants/acme/keys", None).await;
            assert_eq!(added.status, StatusCode::CREATED);
        }
        let answer = h.admin(Method::POST, "/v1/tenants/acme/keys", None).await;
        error(&answer, StatusCode::CONFLICT, "too_many_keys");
        let snapshot = h.snapshot().await.body;
        assert_eq!(snapshot_tenant(&snapshot, "acme").unwrap()["api_key_sha256"].as_array().unwrap().len(), 16);
    }

    async fn the_drain_flag_is_in_the_snapshot(db) {
        let h = harness(db);
        let health = h.admin(Method::GET, "/v1/health", None).await;
        assert_eq!(health.body, json!({"healthy": true, "version": 0}));
        let put = |body: &'static str| h.call(Method::PUT, "/v1/health", Some(ADMIN), Some(body));

        let answer = put("{\"healthy\": false}").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, json!({"healthy": false, "version": 1}));
        let snapshot = h.snapshot().await;
        assert_eq!(snapshot.body["healthy"], false);
        assert!(tag(&snapshot).starts_with("\"1-"), "{}", tag(&snapshot));

        // The same flag again changes nothing, the version included.
        assert_eq!(put("{\"healthy\": false}").await.body["version"], 1);
        assert_eq!(put("{\"healthy\": true}").await.body, json!({"healthy": true, "version": 2}));
        for body in ["{}", "{\"healthy\": \"no\"}", "{\"healthy\": true, \"x\": 1}", "[]"] {
            error(&put(body).await, StatusCode::BAD_REQUEST, "invalid_request");
        }
        error(&put("nope").await, StatusCode::BAD_REQUEST, "invalid_json");
    }

    async fn the_snapshot_is_versioned_and_an_unchanged_one_is_a_304(db) {
        let h = harness(db);
        let empty = h.snapshot().await;
        assert_eq!(empty.status, StatusCode::OK);
        assert_eq!(empty.body, json!({"version": 0, "healthy": true, "tenants": []}));
        assert!(tag(&empty).starts_with("\"0-"), "{}", tag(&empty));
        assert!(empty.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));

        h.create("b", 5, 50).await;
        h.create("a", 1, 10).await;
        let first = h.snapshot().await;
        let first_tag = tag(&first);
        assert!(first_tag.starts_with("\"2-"), "{first_tag}");
        assert_eq!(first.body["version"], 2);
        let ids: Vec<&str> = first.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = &first.body["tenants"][0];
        let fields: Vec<&String> = a.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["api_key_sha256", "id", "rate_limit", "token_budget"]);

        let h = &h;
        let poll = |tag: String| async move {
            let headers = [("if-none-match", tag.as_str())];
            h.call_with(Method::GET, "/v1/tenants/snapshot", Some(INGEST), None, &headers)
                .await
        };
        let same = poll(first_tag.clone()).await;
        assert_eq!(same.status, StatusCode::NOT_MODIFIED);
        assert_eq!(same.body, Value::Null);
        assert_eq!(tag(&same), first_tag);
        assert_eq!(poll(tag(&empty)).await.status, StatusCode::OK);
        // The version alone is not the tag: a restored database can reach it again.
        assert_eq!(poll("\"2\"".to_string()).await.status, StatusCode::OK);

        h.admin(Method::PATCH, "/v1/tenants/a", Some(json!({"rate_limit": 2}))).await;
        let changed = poll(first_tag.clone()).await;
        assert_eq!(changed.status, StatusCode::OK);
        assert!(tag(&changed).starts_with("\"3-"), "{}", tag(&changed));
        assert_eq!(changed.body["tenants"][0]["rate_limit"], 2);
        // Served again from the cache, the same.
        assert_eq!(h.snapshot().await.body, changed.body);
    }

    async fn a_flood_of_bad_tokens_is_audited_up_to_its_budget(db) {
        let h = harness(db);
        let calls = 130;
        for _ in 0..calls {
            let answer = h.call(Method::GET, "/v1/tenants", Some("wrong-token-value"), None).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
        let denied = h
            .trail()
            .await
            .iter()
            .filter(|e| e["result"] == "unauthorized")
            .count();
        // A burst of 100 is audited one by one; the rest, past 20 a second, only counted.
        assert!((100..calls).contains(&denied), "{denied} of {calls} audited");
        // An operator's call is audited whatever the flood.
        let before = h.trail().await.len();
        h.admin(Method::GET, "/v1/tenants", None).await;
        assert!(h.trail().await.len() > before);
    }

    async fn every_registry_call_is_audited_with_its_operator(db) {
        let h = harness(db);
        let body = json!({"id": "acme", "rate_limit": 1, "token_budget": 1}).to_string();
        let created = h.call_with(Method::POST, "/v1/tenants", Some(ALICE), Some(&body), &[("x-request-id", "req-42")]).await;
        assert_eq!(created.status, StatusCode::CREATED);
        let key_id = created.body["key_id"].as_str().unwrap().to_owned();
        h.call(Method::POST, "/v1/tenants", Some("wrong-token-value"), Some(&body)).await;
        h.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(&body)).await;
        h.call(Method::PATCH, "/v1/tenants/acme", Some(ADMIN), Some("{\"rate_limit\": 0}")).await;
        h.call(Method::PATCH, "/v1/tenants/acme", Some(ADMIN), Some("{\"suspended\": true}")).await;
        h.call(Method::GET, "/v1/tenants", Some(ALICE), None).await;
        h.call(Method::POST, "/v1/tenants/acme/keys", Some(ADMIN), None).await;
        h.call(Method::DELETE, &format!("/v1/tenants/acme/keys/{key_id}"), Some(ADMIN), None).await;
        h.call(Method::PUT, "/v1/health", Some(ALICE), Some("{\"healthy\": false}")).await;
        h.call(Method::DELETE, "/v1/tenants/acme", Some(ADMIN), None).await;
        h.call(Method::GET, "/v1/tenants/nobody", Some(ADMIN), None).await;
        // The filter's poll is not an operator's call.
        h.snapshot().await;

        let trail = h.trail().await;
        let rows: Vec<TrailRow> = trail
            .iter()
            .map(|e| (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
                e["resource"].as_str().unwrap_or("-").to_owned(),
                e["status_code"].as_u64().unwrap(),
                e["actor"].as_str().map(str::to_owned),
                e["tenant_id"].as_str().map(str::to_owned),
            ))
            .collect();
        let row = |action: &str, result: &str, resource: &str, status: u64, actor: Option<&str>, tenant: Option<&str>| {
            (action.to_owned(), result.to_owned(), resource.to_owned(), status, actor.map(str::to_owned), tenant.map(str::to_owned))
        };
        let key = format!("tenant:acme/key:{key_id}");
        let expected = vec![
            row("create", "success", "tenant:acme", 201, Some("alice"), Some("acme")),
            row("create", "unauthorized", "tenants", 401, None, None),
            row("create", "error", "tenants", 409, Some("admin"), None),
            row("update", "error", "tenant:acme", 400, Some("admin"), Some("acme")),
            row("update", "success", "tenant:acme", 200, Some("admin"), Some("acme")),
            row("list", "success", "tenants", 200, Some("alice"), None),
            row("create", "success", "", 201, Some("admin"), Some("acme")),
            row("delete", "success", &key, 200, Some("admin"), Some("acme")),
            row("update", "success", "health", 200, Some("alice"), None),
            row("delete", "success", "tenant:acme", 200, Some("admin"), Some("acme")),
            row("list", "error", "tenant:nobody", 404, Some("admin"), Some("nobody")),
        ];
        assert_eq!(rows.len(), expected.len(), "{rows:#?}");
        for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
            if want.2.is_empty() {
                // The added key's resource names its new id.
                assert!(got.2.starts_with("tenant:acme/key:key_"), "{i}: {got:?}");
                let mut got = got.clone();
                got.2 = String::new();
                assert_eq!(&got, want, "entry {i}");
            } else {
                assert_eq!(got, want, "entry {i}");
            }
        }
        let first = &trail[0];
        assert_eq!(first["method"], "POST");
        assert_eq!(first["path"], "/v1/tenants");
        assert_eq!(first["request_id"], "req-42");
        assert!(first["id"].as_str().unwrap().starts_with("reg-"));
        // No key, no token anywhere in the trail.
        let text = serde_json::to_string(&trail).unwrap();
        for secret in [created.body["api_key"].as_str().unwrap(), ADMIN, ALICE, INGEST, "wrong-token-value"] {
            assert!(!text.contains(secret), "the trail holds {secret:?}");
        }
    }

    async fn dot_segments_keys_and_doubled_tokens_are_refused(db) {
        let h = harness(db);
        let created = h.create("acme", 5, 100).await;
        let key = created["api_key"].as_str().unwrap().to_owned();

        // `.` and `..` are resolved by clients and proxies; a key-shaped id would be
        // redacted from the trail. None can be a tenant id.
        for id in [".", "..", key.as_str()] {
            let body = json!({"id": id, "rate_limit": 1, "token_budget": 1});
            let answer = h.admin(Method::POST, "/v1/tenants", Some(body)).await;
            let err = error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(err["param"], "id", "{id}");
        }

        // A key given for its key id: refused, and neither kept in the trail nor echoed
        // there as the resource.
        let uri = format!("/v1/tenants/acme/keys/{key}");
        let answer = h.admin(Method::DELETE, &uri, None).await;
        error(&answer, StatusCode::NOT_FOUND, "key_not_found");
        let answer = h.admin(Method::GET, &format!("/v1/tenants/{key}"), None).await;
        error(&answer, StatusCode::NOT_FOUND, "tenant_not_found");
        let trail = h.trail().await;
        let text = serde_json::to_string(&trail).unwrap();
        assert!(!text.contains(&key), "the trail holds the key: {text}");
        let revoke = &trail[trail.len() - 2];
        assert_eq!(revoke["path"], "/v1/tenants/acme/keys/ig-<redacted>");
        assert_eq!(revoke["resource"], "tenant:acme/key:ig-<redacted>");
        assert_eq!(trail[trail.len() - 1]["tenant_id"], Value::Null);

        // Ids no tenant can have are a 404 on either backend (PostgreSQL refuses a NUL).
        for uri in ["/v1/tenants/a%00b", "/v1/tenants/a%00b/keys", "/v1/tenants/acme/keys/k%00"] {
            for method in [Method::GET, Method::PATCH, Method::DELETE, Method::POST] {
                let body = (method == Method::PATCH).then(|| json!({"suspended": true}));
                let answer = h.admin(method.clone(), uri, body).await;
                if answer.status != StatusCode::METHOD_NOT_ALLOWED {
                    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {uri}: {}", answer.body);
                }
            }
        }
        let answer = h.admin(Method::GET, "/v1/tenants?after=%00", None).await;
        error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        // Two Authorization headers: refused whichever holds the token.
        let admin = format!("Bearer {ADMIN}");
        for pair in [[admin.as_str(), "Bearer wrong-token-1"], ["Bearer wrong-token-1", admin.as_str()]] {
            let headers = [("authorization", pair[0]), ("authorization", pair[1])];
            let answer = h.call_with(Method::GET, "/v1/tenants", None, None, &headers).await;
            error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
        }
        let ingest = format!("Bearer {INGEST}");
        let headers = [("authorization", ingest.as_str()), ("authorization", ingest.as_str())];
        let answer = h.call_with(Method::GET, "/v1/tenants/snapshot", None, None, &headers).await;
        error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
    }

    async fn an_ingested_audit_entry_may_name_its_actor(db) {
        let h = harness(db);
        let batch = json!({"records": [{
            "kind": "audit", "id": "a1", "timestamp": "2026-12-03T18:00:00Z", "tenant_id": null,
            "action": "update", "result": "success", "resource": "tenant:x", "status_code": 200,
            "method": "PATCH", "path": "/v1/tenants/x", "actor": "carol"
        }]});
        let answer = h.call(Method::POST, "/v1/records", Some(INGEST), Some(&batch.to_string())).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let entries = h.trail().await;
        assert_eq!(entries[0]["actor"], "carol");
    }
}
