//! The bodies operators send to the registry, checked field by field. Each problem names its
//! field (`rate_limit: must be ...`); unknown fields are refused, so that a misspelt one is
//! not silently ignored.

use serde_json::{Map, Value};

use super::{NewTenant, TenantPatch};

/// Largest `rate_limit` or `token_budget`: the filter's own bound (2^40 per minute).
pub const MAX_LIMIT: u64 = 1 << 40;
/// Tenant ids: as in the filter's configuration.
pub const MAX_TENANT_ID_LEN: usize = 128;
/// Most entries in `allowed_models`, and the longest model name.
pub const MAX_MODELS: usize = 1000;
pub const MAX_MODEL_LEN: usize = 256;

/// Path segments that cannot be tenant ids: a path of the API, and the dot segments, which
/// clients and proxies resolve (`/v1/tenants/acme/keys/..` is `/v1/tenants/acme` to them).
pub const RESERVED_IDS: [&str; 3] = ["snapshot", ".", ".."];

/// A field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub param: String,
    pub message: String,
}

impl InputError {
    fn new(param: &str, message: impl Into<String>) -> Self {
        InputError {
            param: param.to_owned(),
            message: format!("{param}: {}", message.into()),
        }
    }
}

/// `POST /v1/tenants`.
pub fn new_tenant(body: &Value) -> Result<NewTenant, InputError> {
    let fields = object(
        body,
        &[
            "id",
            "rate_limit",
            "token_budget",
            "suspended",
            "allowed_models",
        ],
    )?;
    let id = match fields.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(_) => return Err(InputError::new("id", "must be a string")),
        None => return Err(InputError::new("id", "is required")),
    };
    check_tenant_id(&id).map_err(|m| InputError::new("id", m))?;
    Ok(NewTenant {
        id,
        rate_limit: limit(fields, "rate_limit")?.ok_or_else(|| required("rate_limit"))?,
        token_budget: limit(fields, "token_budget")?.ok_or_else(|| required("token_budget"))?,
        suspended: boolean(fields, "suspended")?.unwrap_or(false),
        allowed_models: models(fields)?.unwrap_or(None),
    })
}

/// `PATCH /v1/tenants/{id}`: at least one field.
pub fn patch(body: &Value) -> Result<TenantPatch, InputError> {
    let names = ["rate_limit", "token_budget", "suspended", "allowed_models"];
    let fields = object(body, &names)?;
    let patch = TenantPatch {
        rate_limit: limit(fields, "rate_limit")?,
        token_budget: limit(fields, "token_budget")?,
        suspended: boolean(fields, "suspended")?,
        allowed_models: models(fields)?,
    };
    if patch.is_empty() {
        return Err(InputError {
            param: String::new(),
            message: format!("give at least one of {}", names.join(", ")),
        });
    }
    Ok(patch)
}

/// `PUT /v1/health`: `{"healthy": bool}`.
pub fn health(body: &Value) -> Result<bool, InputError> {
    let fields = object(body, &["healthy"])?;
    boolean(fields, "healthy")?.ok_or_else(|| required("healthy"))
}

/// 1 to 128 of `A-Z a-z 0-9 - _ .`, the filter's rule, not a reserved path segment, and not
/// the shape of an API key (which the audit trail would not keep).
pub fn check_tenant_id(id: &str) -> Result<(), String> {
    let charset = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if id.is_empty() || id.len() > MAX_TENANT_ID_LEN || !charset {
        return Err(format!(
            "must be 1 to {MAX_TENANT_ID_LEN} characters of A-Z a-z 0-9 - _ ."
        ));
    }
    if RESERVED_IDS.contains(&id) {
        return Err(format!("{id:?} is reserved (a path segment)"));
    }
    if super::keys::looks_like_key(id) {
        return Err("has the shape of an API key; a tenant id must not".to_owned());
    }
    Ok(())
}

fn required(param: &str) -> InputError {
    InputError::new(param, "is required")
}

/// The body as an object holding only `known` fields.
fn object<'a>(body: &'a Value, known: &[&str]) -> Result<&'a Map<String, Value>, InputError> {
    let Value::Object(fields) = body else {
        return Err(InputError {
            param: String::new(),
            message: "the body must be a JSON object".to_owned(),
        });
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(InputError::new(
            unknown,
            format!("unknown field; expected one of {}", known.join(", ")),
        ));
    }
    Ok(fields)
}

/// A per-minute limit: an integer from 1 to [`MAX_LIMIT`]; absent is `None`.
fn limit(fields: &Map<String, Value>, name: &str) -> Result<Option<u64>, InputError> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v @ 1..=MAX_LIMIT) => Ok(Some(v)),
            _ => Err(bad_limit(name)),
        },
        Some(_) => Err(bad_limit(name)),
    }
}

fn bad_limit(name: &str) -> InputError {
    InputError::new(name, format!("must be an integer from 1 to {MAX_LIMIT}"))
}

fn boolean(fields: &Map<String, Value>, name: &str) -> Result<Option<bool>, InputError> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(InputError::new(name, "must be true or false")),
    }
}

/// `allowed_models`: absent is `None`, null is `Some(None)` (every model), a list is kept
/// in its order without repeats.
fn models(fields: &Map<String, Value>) -> Result<Option<Option<Vec<String>>>, InputError> {
    const NAME: &str = "allowed_models";
    let list = match fields.get(NAME) {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(None)),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(InputError::new(
                NAME,
                "must be a list of model names, or null",
            ))
        }
    };
    if list.is_empty() {
        return Err(InputError::new(
            NAME,
            "must name at least one model (null allows every model; suspend a tenant to stop it)",
        ));
    }
    if list.len() > MAX_MODELS {
        return Err(InputError::new(
            NAME,
            format!("at most {MAX_MODELS} models"),
        ));
    }
    let mut models: Vec<String> = Vec::with_capacity(list.len());
    for (i, model) in list.iter().enumerate() {
        let param = format!("{NAME}[{i}]");
        let Value::String(model) = model else {
            return Err(InputError::new(&param, "must be a string"));
        };
        let len = model.chars().count();
        if len == 0 || len > MAX_MODEL_LEN || model.chars().any(char::is_control) {
            return Err(InputError::new(
                &param,
                format!("must be 1 to {MAX_MODEL_LEN} characters, without control characters"),
            ));
        }
        if !models.contains(model) {
            models.push(model.clone());
        }
    }
    Ok(Some(Some(models)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_tenant_needs_an_id_and_both_limits() {
        let t = new_tenant(&json!({"id": "acme", "rate_limit": 60, "token_budget": 1000})).unwrap();
        assert_eq!(
            t,
            NewTenant {
                id: "acme".into(),
                rate_limit: 60,
                token_budget: 1000,
                suspended: false,
                allowed_models: None
            }
        );
        let cases = [
            (
                json!({"rate_limit": 1, "token_budget": 1}),
                "id: is required",
            ),
            (
                json!({"id": 7, "rate_limit": 1, "token_budget": 1}),
                "id: must be a string",
            ),
            (
                json!({"id": "a", "token_budget": 1}),
                "rate_limit: is required",
            ),
            (
                json!({"id": "a", "rate_limit": 1}),
                "token_budget: is required",
            ),
            (json!([]), "the body must be a JSON object"),
        ];
        for (body, message) in cases {
            assert_eq!(new_tenant(&body).unwrap_err().message, message, "{body}");
        }
    }

    #[test]
    fn ids_follow_the_filters_rule() {
        for good in ["a", "acme-eu_1.prod", &"x".repeat(128)] {
            assert!(check_tenant_id(good).is_ok(), "{good}");
        }
        let key = super::super::keys::issue().unwrap().api_key;
        for bad in [
            "",
            "has space",
            "ünï",
            "a/b",
            &"x".repeat(129),
            "snapshot",
            ".",
            "..",
            &key,
        ] {
            assert!(check_tenant_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_positive_integers_up_to_two_to_the_40() {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("60"),
            json!(MAX_LIMIT + 1),
        ] {
            let body = json!({"id": "a", "rate_limit": bad, "token_budget": 1});
            let err = new_tenant(&body).unwrap_err();
            assert_eq!(err.param, "rate_limit", "{body}");
        }
        let body = json!({"id": "a", "rate_limit": MAX_LIMIT, "token_budget": 1});
        assert!(new_tenant(&body).is_ok());
    }

    #[test]
    fn allowed_models_is_a_list_or_null() {
        let p = patch(&json!({"allowed_models": ["m1", "m2", "m1"]})).unwrap();
        assert_eq!(p.allowed_models, Some(Some(vec!["m1".into(), "m2".into()])));
        let p = patch(&json!({"allowed_models": null})).unwrap();
        assert_eq!(p.allowed_models, Some(None));
        for (bad, param) in [
            (json!([]), "allowed_models"),
            (json!("m1"), "allowed_models"),
            (json!(["m1", 2]), "allowed_models[1]"),
            (json!([""]), "allowed_models[0]"),
            (json!(["a\nb"]), "allowed_models[0]"),
            (json!(["x".repeat(257)]), "allowed_models[0]"),
        ] {
            let err = patch(&json!({ "allowed_models": bad })).unwrap_err();
            assert_eq!(err.param, param, "{bad}");
        }
    }

    #[test]
    fn a_patch_changes_something_and_knows_its_fields() {
        assert_eq!(patch(&json!({})).unwrap_err().param, "");
        let err = patch(&json!({"rate_limt": 5})).unwrap_err();
        assert_eq!(err.param, "rate_limt");
        assert!(err.message.contains("unknown field"), "{}", err.message);
        assert_eq!(
            patch(&json!({"suspended": "yes"})).unwrap_err().param,
            "suspended"
        );
        let p = patch(&json!({"suspended": true, "token_budget": 5})).unwrap();
        assert_eq!(
            (p.suspended, p.token_budget, p.rate_limit),
            (Some(true), Some(5), None)
        );
    }

    #[test]
    fn health_takes_one_boolean() {
        assert_eq!(health(&json!({"healthy": false})), Ok(false));
        assert_eq!(health(&json!({})).unwrap_err().param, "healthy");
        assert_eq!(health(&json!({"healthy": 0})).unwrap_err().param, "healthy");
        assert_eq!(
            health(&json!({"healthy": true, "x": 1})).unwrap_err().param,
            "x"
        );
    }
}
