//! Every rule of `docs/records.md`, and the malformed shapes a body can take.

use serde_json::{json, Value};

use super::*;

fn billing() -> Value {
    json!({
        "kind": "billing", "id": "6f1c0e2a9b7d4c3e8a5f0b1d2c3e4f5a", "tenant_id": "acme",
        "input_tokens": 12, "output_tokens": 34, "timestamp": "2026-12-03T18:07:14.123Z",
        "model": "demo-model", "request_id": "3f0f1d1e-0001", "api": "openai_chat",
        "usage_source": "reported", "cached_input_tokens": 0, "reasoning_tokens": 0
    })
}

fn audit() -> Value {
    json!({
        "kind": "audit", "id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "timestamp": "2026-12-03T18:07:14.120Z", "tenant_id": "acme", "action": "inference",
        "result": "success", "resource": "demo-model", "status_code": 200, "method": "POST",
        "path": "/v1/chat/completions", "remote_addr": "127.0.0.1:51234",
        "request_id": "3f0f1d1e-0001"
    })
}

fn with(mut record: Value, field: &str, value: Value) -> Value {
    record[field] = value;
    record
}

fn without(mut record: Value, field: &str) -> Value {
    record.as_object_mut().map(|map| map.remove(field));
    record
}

/// The collector's clock in these tests: shortly after the example records were written.
const NOW_US: i64 = 1_796_321_400 * 1_000_000; // 2026-12-03T18:10:00Z

fn parse(records: Vec<Value>) -> Result<Vec<Record>, BatchError> {
    parse_batch_at(json!({ "records": records }).to_string().as_bytes(), NOW_US)
}

/// The message a batch of exactly `record` is rejected with.
fn rejection(record: Value) -> String {
    match parse(vec![record]) {
        Err(err @ (BatchError::Invalid(_) | BatchError::Record { .. })) => err.to_string(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn accepts(record: Value) -> Record {
    match parse(vec![record]) {
        Ok(mut records) if records.len() == 1 => records.remove(0),
        other => panic!("expected one record, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses_field_by_field() {
    let records = parse(vec![billing(), audit()]).unwrap();
    let [Record::Billing(bill), Record::Audit(entry)] = records.as_slice() else {
        panic!("unexpected records {records:?}");
    };

    assert_eq!(bill.id, "6f1c0e2a9b7d4c3e8a5f0b1d2c3e4f5a");
    assert_eq!(bill.tenant_id, "acme");
    assert_eq!((bill.input_tokens, bill.output_tokens), (12, 34));
    assert_eq!(bill.timestamp.as_str(), "2026-12-03T18:07:14.123Z");
    assert_eq!(bill.model.as_deref(), Some("demo-model"));
    assert_eq!(bill.request_id.as_deref(), Some("3f0f1d1e-0001"));
    assert_eq!(bill.api, "openai_chat");
    assert_eq!(bill.usage_source, UsageSource::Reported);
    assert_eq!(
        (bill.cached_input_tokens, bill.reasoning_tokens),
        (Some(0), Some(0))
    );

    assert_eq!(entry.id, "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
    assert_eq!(entry.timestamp.as_str(), "2026-12-03T18:07:14.120Z");
    assert_eq!(entry.tenant_id.as_deref(), Some("acme"));
    assert_eq!(
        (entry.action, entry.result),
        (Action::Inference, AuditResult::Success)
    );
    assert_eq!(entry.resource.as_deref(), Some("demo-model"));
    assert_eq!(entry.status_code, 200);
    assert_eq!(
        (entry.method.as_str(), entry.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(entry.remote_addr.as_deref(), Some("127.0.0.1:51234"));
    assert_eq!(entry.request_id.as_deref(), Some("3f0f1d1e-0001"));
}

#[test]
fn optional_fields_may_be_absent_or_null() {
    let mut bare = billing();
    for field in [
        "model",
        "request_id",
        "cached_input_tokens",
        "cache_write_input_tokens",
        "reasoning_tokens",
    ] {
        bare = without(bare, field);
    }
    let Record::Billing(bill) = accepts(bare) else {
        panic!("not billing")
    };
    assert_eq!((bill.model, bill.request_id), (None, None));
    assert_eq!(
        (
            bill.cached_input_tokens,
            bill.cache_write_input_tokens,
            bill.reasoning_tokens
        ),
        (None, None, None)
    );

    let mut nulls = billing();
    for field in [
        "model",
        "request_id",
        "cached_input_tokens",
        "cache_write_input_tokens",
        "reasoning_tokens",
    ] {
        nulls = with(nulls, field, Value::Null);
    }
    let Record::Billing(bill) = accepts(nulls) else {
        panic!("not billing")
    };
    assert_eq!((bill.model, bill.cached_input_tokens), (None, None));
    assert_eq!(bill.cache_write_input_tokens, None);

    for field in [
        "tenant_id",
        "resource",
        "remote_addr",
        "request_id",
        "actor",
    ] {
        let Record::Audit(entry) = accepts(with(audit(), field, Value::Null)) else {
            panic!("not audit")
        };
        let Record::Audit(absent) = accepts(without(audit(), field)) else {
            panic!("not audit")
        };
        assert_eq!(entry, absent, "{field}: null and absent differ");
    }
    let Record::Audit(entry) = accepts(with(audit(), "tenant_id", Value::Null)) else {
        panic!("not audit")
    };
    assert_eq!(entry.tenant_id, None);
}

#[test]
fn cache_reads_and_writes_are_kept_apart() {
    // Anthropic's usage as the filter sends it: 3 fresh, 2000 read, 100 written.
    let record = with(billing(), "input_tokens", json!(2103));
    let record = with(record, "cached_input_tokens", json!(2000));
    let record = with(record, "cache_write_input_tokens", json!(100));
    let Record::Billing(bill) = accepts(record) else {
        panic!("not billing")
    };
    assert_eq!(bill.input_tokens, 2103);
    assert_eq!(
        (bill.cached_input_tokens, bill.cache_write_input_tokens),
        (Some(2000), Some(100))
    );

    // Like cached_input_tokens, it is not checked against input_tokens: the filter caps each
    // figure at 2^53 on its own, so a detail may exceed a capped total.
    let record = with(billing(), "cache_write_input_tokens", json!(13));
    let Record::Billing(bill) = accepts(record) else {
        panic!("not billing")
    };
    assert_eq!(
        (bill.input_tokens, bill.cache_write_input_tokens),
        (12, Some(13))
    );
}

#[test]
fn unknown_fields_are_refused_naming_the_record() {
    // A misspelt figure must not be stored as if it were absent.
    let message = rejection(with(billing(), "input_token", json!(12)));
    assert!(
        message.starts_with("records[0]: unknown field \"input_token\""),
        "{message}"
    );
    let message = rejection(with(audit(), "future_field", json!({"x": 1})));
    assert!(
        message.contains("unknown field \"future_field\""),
        "{message}"
    );
    // A billing field on an audit entry is unknown there, and the other way round.
    assert!(rejection(with(audit(), "input_tokens", json!(1))).contains("unknown field"));
    assert!(rejection(with(billing(), "status_code", json!(200))).contains("unknown field"));
    // Only the second record is named.
    let Err(BatchError::Record { param, .. }) =
        parse(vec![billing(), with(billing(), "x", json!(1))])
    else {
        panic!("expected the second record refused");
    };
    assert_eq!(param, "records[1]");
    // At the top level too, without quoting a long name whole.
    let body = json!({ "records": [], "v": 2 });
    assert_eq!(
        parse_batch_at(body.to_string().as_bytes(), NOW_US),
        Err(invalid(
            "body: unknown field \"v\"; only \"records\" is accepted"
        ))
    );
    let long = "x".repeat(1000);
    let body = json!({ "records": [with(billing(), &long, json!(1))] });
    let message = parse_batch_at(body.to_string().as_bytes(), NOW_US)
        .unwrap_err()
        .to_string();
    assert!(message.len() < 300, "{message}");
}

#[test]
fn timestamps_far_ahead_or_before_2020_are_refused() {
    let at = |t: &str| with(billing(), "timestamp", json!(t));
    // Up to an hour ahead of the collector's clock passes; more does not.
    accepts(at("2026-12-03T19:09:59Z"));
    let message = rejection(at("2026-12-03T19:10:01Z"));
    assert!(
        message.starts_with("records[0].timestamp: is more than an hour ahead"),
        "{message}"
    );
    assert!(rejection(at("9999-12-31T23:59:59Z")).contains("ahead"));
    // Old records pass however old, back to 2020 (a backlog from a long outage).
    accepts(at("2020-01-01T00:00:00Z"));
    accepts(at("2021-06-01T00:00:00+02:00"));
    let message = rejection(at("2019-12-31T23:59:59Z"));
    assert!(message.contains("before 2020-01-01"), "{message}");
    assert!(rejection(at("1970-01-01T00:00:00Z")).contains("before 2020"));
    assert!(
        rejection(with(audit(), "timestamp", json!("0001-01-01T00:00:00Z")))
            .contains("before 2020")
    );
}

#[test]
fn an_empty_batch_is_fine() {
    assert_eq!(parse(vec![]), Ok(vec![]));
}

#[test]
fn invalid_json_reports_line_and_column() {
    let Err(BatchError::Json(message)) = parse_batch(b"{\"records\": [\n  {]}") else {
        panic!("expected a JSON error");
    };
    assert!(message.contains("line 2 column"), "{message}");
    assert!(matches!(parse_batch(b""), Err(BatchError::Json(_))));
    assert!(matches!(parse_batch(b"\xff\xfe"), Err(BatchError::Json(_))));
}

#[test]
fn the_body_must_be_an_object_with_a_records_array() {
    let body_rule = "body: must be a JSON object with a \"records\" array";
    for body in ["[]", "null", "\"records\"", "42"] {
        assert_eq!(
            parse_batch(body.as_bytes()),
            Err(invalid(body_rule)),
            "{body}"
        );
    }
    assert_eq!(parse_batch(b"{}"), Err(invalid("records: is required")));
    assert_eq!(
        parse_batch(b"{\"record\": []}"),
        Err(invalid(
            "body: unknown field \"record\"; only \"records\" is accepted"
        ))
    );
    for records in ["null", "{}", "\"x\"", "1"] {
        let body = format!("{{\"records\": {records}}}");
        assert_eq!(
            parse_batch(body.as_bytes()),
            Err(invalid("records: must be an array"))
        );
    }
}

#[test]
fn a_batch_holds_at_most_ten_thousand_records() {
    assert_eq!(
        parse(vec![billing(); MAX_BATCH]).map(|records| records.len()),
        Ok(MAX_BATCH)
    );
    assert_eq!(
        parse(vec![billing(); MAX_BATCH + 1]),
        Err(invalid(
            "records: at most 10000 records per batch, got 10001"
        ))
    );
}

#[test]
fn every_record_must_be_an_object() {
    for record in [
        json!(null),
        json!(1),
        json!("billing"),
        json!([billing()]),
        json!(true),
    ] {
        assert_eq!(
            parse(vec![billing(), record]),
            Err(BatchError::Record {
                param: "records[1]".to_owned(),
                problem: "must be an object".to_owned()
            })
        );
    }
}

#[test]
fn the_error_names_the_first_bad_record() {
    let bad = with(billing(), "input_tokens", json!(-1));
    let message = match parse(vec![billing(), audit(), billing(), bad.clone(), bad]) {
        Err(err @ BatchError::Record { .. }) => err.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        message,
        "records[3].input_tokens: must be a non-negative integer"
    );
}

#[test]
fn kind_is_billing_or_audit() {
    let rule = "records[0].kind: must be \"billing\" or \"audit\"";
    assert_eq!(
        rejection(without(billing(), "kind")),
        "records[0].kind: is required"
    );
    for kind in [
        json!("Billing"),
        json!("usage"),
        json!(""),
        json!(null),
        json!(1),
    ] {
        assert_eq!(rejection(with(billing(), "kind", kind)), rule);
    }
}

#[test]
fn id_is_one_to_128_safe_characters() {
    let rule = "records[0].id: must be 1 to 128 characters of [A-Za-z0-9._:-]";
    for record in [billing(), audit()] {
        assert_eq!(
            rejection(without(record.clone(), "id")),
            "records[0].id: is required"
        );
        assert_eq!(
            rejection(with(record.clone(), "id", json!(7))),
            "records[0].id: must be a string"
        );
        assert_eq!(
            rejection(with(record.clone(), "id", json!(null))),
            "records[0].id: must be a string"
        );
        for id in ["", "a b", "a/b", "é", "id\n", &"a".repeat(129)] {
            assert_eq!(
                rejection(with(record.clone(), "id", json!(id))),
                rule,
                "{id:?}"
            );
        }
        for id in ["a.b_c:d-E9", &"Z".repeat(128), "0"] {
            assert_eq!(accepts(with(record.clone(), "id", json!(id))).id(), id);
        }
    }
}

#[test]
fn timestamp_is_rfc_3339() {
    let rule = "records[0].timestamp: must be an RFC 3339 timestamp of at most 64 characters, \
                e.g. 2026-12-03T18:07:14.123Z";
    for record in [billing(), audit()] {
        assert_eq!(
            rejection(without(record.clone(), "timestamp")),
            "records[0].timestamp: is required"
        );
        assert_eq!(
            rejection(with(record.clone(), "timestamp", json!(1733249234))),
            "records[0].timestamp: must be a string"
        );
        for text in [
            "",
            "2026-12-03",
            "2026-12-03T18:07:14",
            "yesterday",
            "2026-02-30T00:00:00Z",
        ] {
            assert_eq!(
                rejection(with(record.clone(), "timestamp", json!(text))),
                rule,
                "{text}"
            );
        }
        accepts(with(
            record,
            "timestamp",
            json!("2026-12-03T20:07:14.123456+02:00"),
        ));
    }
}

#[test]
fn billing_tenant_is_one_to_128_characters() {
    let rule = "records[0].tenant_id: must be 1 to 128 characters";
    assert_eq!(
        rejection(without(billing(), "tenant_id")),
        "records[0].tenant_id: is required"
    );
    assert_eq!(
        rejection(with(billing(), "tenant_id", json!(null))),
        "records[0].tenant_id: must be a string"
    );
    assert_eq!(
        rejection(with(billing(), "tenant_id", json!(["acme"]))),
        "records[0].tenant_id: must be a string"
    );
    assert_eq!(rejection(with(billing(), "tenant_id", json!(""))), rule);
    assert_eq!(
        rejection(with(billing(), "tenant_id", json!("t".repeat(129)))),
        rule
    );
    // Characters, not bytes: 128 two-byte characters fit.
    accepts(with(billing(), "tenant_id", json!("é".repeat(128))));
}

#[test]
fn audit_tenant_is_a_string_or_null() {
    assert_eq!(
        rejection(with(audit(), "tenant_id", json!(5))),
        "records[0].tenant_id: must be a string or null"
    );
    for tenant in [String::new(), "t".repeat(129)] {
        assert_eq!(
            rejection(with(audit(), "tenant_id", json!(tenant))),
            "records[0].tenant_id: must be 1 to 128 characters"
        );
    }
    accepts(with(audit(), "tenant_id", json!("t".repeat(128))));
}

#[test]
fn token_counts_are_integers_from_zero_to_two_to_the_53() {
    for field in [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
        "reasoning_tokens",
    ] {
        let not_integer = format!("records[0].{field}: must be a non-negative integer");
        let too_big = format!("records[0].{field}: must be at most 9007199254740992");
        for value in [
            json!(-1),
            json!(-9007199254740993_i64),
            json!(1.5),
            json!(12.0),
            json!("12"),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(
                rejection(with(billing(), field, value.clone())),
                not_integer,
                "{value}"
            );
        }
        // 1e30 also stands for an integer literal past u64, which serde reads as a float.
        for value in [json!(9007199254740993_u64), json!(u64::MAX), json!(1e30)] {
            assert_eq!(
                rejection(with(billing(), field, value.clone())),
                too_big,
                "{value}"
            );
        }
        for value in [0, 1, MAX_TOKENS] {
            accepts(with(billing(), field, json!(value)));
        }
    }
    for field in ["input_tokens", "output_tokens"] {
        let required = format!("records[0].{field}: is required");
        assert_eq!(rejection(without(billing(), field)), required);
        let null = format!("records[0].{field}: must be a non-negative integer");
        assert_eq!(rejection(with(billing(), field, Value::Null)), null);
    }
}

#[test]
fn optional_strings_have_length_limits() {
    let cases = [
        (billing(), "model", 256),
        (billing(), "request_id", 256),
        (audit(), "request_id", 256),
        (audit(), "resource", 256),
        (audit(), "remote_addr", 128),
        (audit(), "actor", 128),
    ];
    for (record, field, max) in cases {
        let too_long = format!("records[0].{field}: must be at most {max} characters");
        assert_eq!(
            rejection(with(record.clone(), field, json!("x".repeat(max + 1)))),
            too_long
        );
        let wrong_type = format!("records[0].{field}: must be a string or null");
        assert_eq!(rejection(with(record.clone(), field, json!(1))), wrong_type);
        accepts(with(record.clone(), field, json!("x".repeat(max))));
        accepts(with(record, field, json!("")));
    }
}

#[test]
fn required_strings_have_length_limits() {
    let cases = [
        (billing(), "api", 0, 64),
        (audit(), "method", 1, 16),
        (audit(), "path", 0, 2048),
    ];
    for (record, field, min, max) in cases {
        assert_eq!(
            rejection(without(record.clone(), field)),
            format!("records[0].{field}: is required")
        );
        for value in [json!(null), json!(3), json!({})] {
            let wrong = format!("records[0].{field}: must be a string");
            assert_eq!(rejection(with(record.clone(), field, value)), wrong);
        }
        let rule = if min == 0 {
            format!("records[0].{field}: must be at most {max} characters")
        } else {
            format!("records[0].{field}: must be {min} to {max} characters")
        };
        assert_eq!(
            rejection(with(record.clone(), field, json!("x".repeat(max + 1)))),
            rule
        );
        if min == 1 {
            assert_eq!(rejection(with(record.clone(), field, json!(""))), rule);
        }
        accepts(with(record.clone(), field, json!("x".repeat(max))));
    }
}

#[test]
fn usage_source_is_reported_or_estimated() {
    let rule = "records[0].usage_source: must be one of: reported, estimated";
    assert_eq!(
        rejection(without(billing(), "usage_source")),
        "records[0].usage_source: is required"
    );
    for value in [json!("Reported"), json!("guessed"), json!(1)] {
        let expected = if value.is_string() {
            rule
        } else {
            "records[0].usage_source: must be a string"
        };
        assert_eq!(rejection(with(billing(), "usage_source", value)), expected);
    }
    let Record::Billing(bill) = accepts(with(billing(), "usage_source", json!("estimated"))) else {
        panic!("not billing")
    };
    assert_eq!(bill.usage_source, UsageSource::Estimated);
}

#[test]
fn action_and_result_are_closed_sets() {
    for action in Action::ALL {
        let Record::Audit(entry) = accepts(with(audit(), "action", json!(action.as_str()))) else {
            panic!("not audit")
        };
        assert_eq!(entry.action, *action);
    }
    for result in AuditResult::ALL {
        let Record::Audit(entry) = accepts(with(audit(), "result", json!(result.as_str()))) else {
            panic!("not audit")
        };
        assert_eq!(entry.result, *result);
    }
    assert_eq!(
        rejection(with(audit(), "action", json!("read"))),
        "records[0].action: must be one of: inference, create, update, delete, list, auth"
    );
    assert_eq!(
        rejection(with(audit(), "result", json!("ok"))),
        "records[0].result: must be one of: success, denied, rate_limited, error, unauthorized"
    );
    assert_eq!(
        rejection(without(audit(), "action")),
        "records[0].action: is required"
    );
    assert_eq!(
        rejection(without(audit(), "result")),
        "records[0].result: is required"
    );
}

#[test]
fn status_code_is_100_to_599() {
    let rule = "records[0].status_code: must be an integer from 100 to 599";
    assert_eq!(
        rejection(without(audit(), "status_code")),
        "records[0].status_code: is required"
    );
    for value in [
        json!(99),
        json!(600),
        json!(0),
        json!(-200),
        json!(200.0),
        json!("200"),
        json!(null),
        json!(70000),
    ] {
        assert_eq!(
            rejection(with(audit(), "status_code", value.clone())),
            rule,
            "{value}"
        );
    }
    for code in [100, 401, 599] {
        let Record::Audit(entry) = accepts(with(audit(), "status_code", json!(code))) else {
            panic!("not audit")
        };
        assert_eq!(entry.status_code, code);
    }
}

#[test]
fn billing_fields_are_not_required_of_audit_entries_and_back() {
    // Each kind needs only its own fields.
    accepts(without(audit(), "resource"));
    accepts(without(billing(), "model"));
}

#[test]
fn text_with_a_nul_is_refused_naming_the_field() {
    // PostgreSQL cannot hold it; refused alike on both stores, never a failed commit.
    let message = rejection(with(billing(), "model", json!("a\u{0}b")));
    assert_eq!(message, "records[0].model: must not contain NUL (\\u0000)");
    let message = rejection(with(audit(), "path", json!("/v1/\u{0}")));
    assert!(
        message.starts_with("records[0].path: must not contain NUL"),
        "{message}"
    );
    accepts(with(billing(), "model", json!("a\u{1}b")));
}
