//! Plugin configuration: the JSON an operator writes, its validation, and the compiled form.
//!
//! Parsing and validation happen once, in `on_configure`. Every error names the field it is
//! about (`tenants[2].rate_limit: ...`), and a configuration with any error is refused as a
//! whole: the filter never runs half-configured.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::auth::{Digest, KeyTable};

/// Upper bound for per-minute limits: large enough for any real plan, small enough that
/// window arithmetic cannot overflow.
const MAX_LIMIT: u64 = 1 << 40;
const MAX_TENANT_ID_LEN: usize = 128;

/// A configuration error, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tenants: Vec<RawTenant>,
    collector: RawCollector,
    #[serde(default)]
    metering: RawMetering,
    /// Reserved for SAML sign-on; refused with a clear message until it is supported.
    sso: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    api_key_sha256: OneOrMany,
    rate_limit: u64,
    token_budget: u64,
    saml: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    cluster: String,
    ingest_token: String,
    authority: Option<String>,
    path: Option<String>,
    flush_interval_ms: Option<u64>,
    batch_size: Option<usize>,
    max_batch_bytes: Option<usize>,
    timeout_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    max_buffered_records: Option<u64>,
    on_buffer_full: Option<BufferFullPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetering {
    default_max_tokens: Option<u64>,
    max_request_body_bytes: Option<usize>,
    max_response_body_bytes: Option<usize>,
}

/// What to do with a new metered request when the record buffer is full.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BufferFullPolicy {
    /// Refuse the request with `503`: usage we cannot record is usage given away.
    Reject,
    /// Serve the request and count the records that could not be kept.
    Drop,
}

/// A tenant as the filter enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    /// Requests per minute.
    pub rate_limit: u64,
    /// Tokens per minute.
    pub token_budget: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub ingest_token: String,
    pub flush_interval_ms: u64,
    pub batch_size: usize,
    pub max_batch_bytes: usize,
    pub timeout_ms: u64,
    pub max_backoff_ms: u64,
    pub max_buffered_records: u64,
    pub on_buffer_full: BufferFullPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringConfig {
    /// Output tokens reserved for a request that names no `max_tokens`.
    pub default_max_tokens: u64,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
}

/// The compiled configuration shared by every context of one worker.
#[derive(Debug)]
pub struct Config {
    pub tenants: Vec<Tenant>,
    pub keys: KeyTable,
    pub collector: CollectorConfig,
    pub metering: MeteringConfig,
}

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|err| {
            let path = err.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ConfigError::new(field, redact(&err.into_inner().to_string()))
        })?;
        de.end()
            .map_err(|err| ConfigError::new("", err.to_string()))?;
        compile(raw)
    }

    pub fn tenant(&self, index: usize) -> Option<&Tenant> {
        self.tenants.get(index)
    }
}

/// Takes the offending value out of a serde message: a wrongly typed secret (an ingest
/// token written as a number, say) must not end up in Envoy's log.
/// `invalid type: integer `123`, expected a string at line 1 column 9` becomes
/// `invalid type: integer, expected a string at line 1 column 9`.
fn redact(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let (Some(quote), Some(expected)) = (rest.find(['`', '"']), rest.rfind(", expected"))
        else {
            continue;
        };
        if quote < expected {
            let kind = rest.get(..quote).unwrap_or("").trim_end();
            let tail = rest.get(expected..).unwrap_or("");
            return format!("{prefix}{kind}{tail}");
        }
    }
    message.to_string()
}

fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.sso.is_some() {
        return Err(ConfigError::new(
            "sso",
            "SAML sign-on is not supported by this version of the filter",
        ));
    }
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut keys = KeyTable::default();
    let mut seen_ids = HashSet::new();

    for (i, t) in raw.tenants.into_iter().enumerate() {
        let field = |name: &str| format!("tenants[{i}].{name}");

        if t.saml.is_some() {
            return Err(ConfigError::new(
                field("saml"),
                "SAML sign-on is not supported by this version of the filter",
            ));
        }

        check_tenant_id(&t.id).map_err(|m| ConfigError::new(field("id"), m))?;
        if !seen_ids.insert(t.id.clone()) {
            return Err(ConfigError::new(
                field("id"),
                format!("duplicate tenant id {:?}", t.id),
            ));
        }
        check_limit(t.rate_limit).map_err(|m| ConfigError::new(field("rate_limit"), m))?;
        check_limit(t.token_budget).map_err(|m| ConfigError::new(field("token_budget"), m))?;

        let digests = match t.api_key_sha256 {
            OneOrMany::One(d) => vec![d],
            OneOrMany::Many(ds) => ds,
        };
        if digests.is_empty() {
            return Err(ConfigError::new(
                field("api_key_sha256"),
                "at least one key digest is required",
            ));
        }
        for (k, hex_digest) in digests.iter().enumerate() {
            let name = format!("tenants[{i}].api_key_sha256[{k}]");
            let digest = parse_digest(hex_digest).map_err(|m| ConfigError::new(&name, m))?;
            if let Some(owner) = keys.insert(digest, i) {
                let owner_id = tenants
                    .get(owner)
                    .map_or(t.id.as_str(), |o: &Tenant| o.id.as_str());
                return Err(ConfigError::new(
                    name,
                    format!("this key digest is already given to tenant {owner_id:?}"),
                ));
            }
        }

        tenants.push(Tenant {
            id: t.id,
            rate_limit: t.rate_limit,
            token_budget: t.token_budget,
        });
    }

    Ok(Config {
        tenants,
        keys,
        collector: compile_collector(raw.collector)?,
        metering: compile_metering(raw.metering)?,
    })
}

fn compile_collector(c: RawCollector) -> Result<CollectorConfig, ConfigError> {
    if c.cluster.trim().is_empty() {
        return Err(ConfigError::new("collector.cluster", "must not be empty"));
    }
    if c.ingest_token.len() < 8 {
        return Err(ConfigError::new(
            "collector.ingest_token",
            "must be at least 8 characters",
        ));
    }
    if !c.ingest_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "collector.ingest_token",
            "must be printable ASCII without spaces",
        ));
    }
    let path = c.path.unwrap_or_else(|| "/v1/records".to_string());
    if !path.starts_with('/') {
        return Err(ConfigError::new("collector.path", "must start with '/'"));
    }
    Ok(CollectorConfig {
        authority: c.authority.unwrap_or_else(|| c.cluster.clone()),
        cluster: c.cluster,
        path,
        ingest_token: c.ingest_token,
        flush_interval_ms: in_range(
            "collector.flush_interval_ms",
            c.flush_interval_ms,
            1000,
            10,
            60_000,
        )?,
        batch_size: in_range("collector.batch_size", c.batch_size, 500, 1, 10_000)?,
        max_batch_bytes: in_range(
            "collector.max_batch_bytes",
            c.max_batch_bytes,
            1 << 20,
            4096,
            8 << 20,
        )?,
        timeout_ms: in_range("collector.timeout_ms", c.timeout_ms, 5000, 10, 60_000)?,
        max_backoff_ms: in_range(
            "collector.max_backoff_ms",
            c.max_backoff_ms,
            30_000,
            100,
            600_000,
        )?,
        max_buffered_records: in_range(
            "collector.max_buffered_records",
            c.max_buffered_records,
            100_000,
            1,
            100_000_000,
        )?,
        on_buffer_full: c.on_buffer_full.unwrap_or(BufferFullPolicy::Reject),
    })
}

fn compile_metering(m: RawMetering) -> Result<MeteringConfig, ConfigError> {
    Ok(MeteringConfig {
        default_max_tokens: in_range(
            "metering.default_max_tokens",
            m.default_max_tokens,
            1024,
            1,
            MAX_LIMIT,
        )?,
        max_request_body_bytes: in_range(
            "metering.max_request_body_bytes",
            m.max_request_body_bytes,
            8 << 20,
            1024,
            256 << 20,
        )?,
        max_response_body_bytes: in_range(
            "metering.max_response_body_bytes",
            m.max_response_body_bytes,
            1 << 20,
            1024,
            64 << 20,
        )?,
    })
}

fn in_range<T>(field: &str, value: Option<T>, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + fmt::Display + Copy,
{
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(v)
}

fn check_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TENANT_ID_LEN {
        return Err(format!("must be 1 to {MAX_TENANT_ID_LEN} characters"));
    }
    let ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err("may hold only letters, digits, '-', '_' and '.'".to_string());
    }
    Ok(())
}

fn check_limit(v: u64) -> Result<(), String> {
    if v == 0 || v > MAX_LIMIT {
        return Err(format!("must be between 1 and {MAX_LIMIT}, got {v}"));
    }
    Ok(())
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(format!(
            "must be 64 hex characters (a SHA-256 digest of the key), got {} characters",
            s.len()
        ));
    }
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| "must be 64 hex characters (a SHA-256 digest of the key)".to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::auth::digest_key;

    fn hex_of(key: &str) -> String {
        hex::encode(digest_key(key))
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "tenants": [
                {"id": "acme", "api_key_sha256": hex_of("k1"), "rate_limit": 60, "token_budget": 1000},
                {"id": "globex", "api_key_sha256": [hex_of("k2"), hex_of("k3")], "rate_limit": 5, "token_budget": 200}
            ],
            "collector": {"cluster": "collector", "ingest_token": "ingest-token-1"}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes())
    }

    fn err_of(v: serde_json::Value) -> ConfigError {
        parse(&v).expect_err("configuration should be refused")
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.collector.authority, "collector");
        assert_eq!(c.collector.path, "/v1/records");
        assert_eq!(c.collector.flush_interval_ms, 1000);
        assert_eq!(c.collector.on_buffer_full, BufferFullPolicy::Reject);
        assert_eq!(c.metering.default_max_tokens, 1024);
        assert_eq!(
            c.keys.lookup("k3").map(|i| &c.tenants[i].id),
            Some(&"globex".to_string())
        );
        assert_eq!(
            c.keys.lookup("k1").map(|i| &c.tenants[i].id),
            Some(&"acme".to_string())
        );
        assert_eq!(c.keys.lookup("nope"), None);
    }

    #[test]
    fn uppercase_hex_digest_is_accepted() {
        let mut v = minimal();
        v["tenants"][0]["api_key_sha256"] = hex_of("k1").to_uppercase().into();
        let c = parse(&v).unwrap();
        assert_eq!(c.keys.lookup("k1"), Some(0));
    }

    #[test]
    fn unknown_field_is_named() {
        let mut v = minimal();
        v["tenants"][1]["rate_limt"] = 5.into();
        let e = err_of(v);
        assert_eq!(e.field, "tenants[1].rate_limt");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let mut v = minimal();
        v["colector"] = serde_json::json!({});
        assert!(err_of(v).message.contains("colector"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut v = minimal();
        v["tenants"][0]["rate_limit"] = "sixty".into();
        let e = err_of(v);
        assert_eq!(e.field, "tenants[0].rate_limit");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn a_wrongly_typed_value_is_not_echoed() {
        let mut v = minimal();
        v["collector"]["ingest_token"] = 80417293365512u64.into();
        let e = err_of(v);
        assert_eq!(e.field, "collector.ingest_token");
        assert!(!e.to_string().contains("80417293365512"), "{e}");
        assert!(
            e.message
                .starts_with("invalid type: integer, expected a string"),
            "{e}"
        );

        let mut v = minimal();
        v["collector"]["ingest_token"] = serde_json::json!(["s3cr3t-value"]);
        assert!(!err_of(v).to_string().contains("s3cr3t"));

        assert_eq!(
            redact("invalid value: string \"a, expected b\", expected one of x at line 1 column 2"),
            "invalid value: string, expected one of x at line 1 column 2"
        );
        assert_eq!(redact("missing field `x`"), "missing field `x`");
    }

    #[test]
    fn saml_is_refused_until_supported() {
        let mut v = minimal();
        v["tenants"][0]["saml"] = serde_json::json!({"idp_metadata": "<x/>"});
        let e = err_of(v);
        assert_eq!(e.field, "tenants[0].saml");
        assert!(e.message.contains("not supported"));
        let mut v = minimal();
        v["sso"] = serde_json::json!({"token_secret": "x"});
        assert_eq!(err_of(v).field, "sso");
    }

    #[test]
    fn negative_limit_is_refused() {
        let mut v = minimal();
        v["tenants"][0]["token_budget"] = (-1).into();
        assert_eq!(err_of(v).field, "tenants[0].token_budget");
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut v = minimal();
        v["tenants"][0]["rate_limit"] = 0.into();
        assert_eq!(err_of(v).field, "tenants[0].rate_limit");
        let mut v = minimal();
        v["tenants"][1]["token_budget"] = 0.into();
        assert_eq!(err_of(v).field, "tenants[1].token_budget");
    }

    #[test]
    fn bad_digests_are_refused() {
        for bad in ["", "abc", &"z".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            let mut v = minimal();
            v["tenants"][1]["api_key_sha256"][1] = bad.into();
            assert_eq!(err_of(v).field, "tenants[1].api_key_sha256[1]", "{bad:?}");
        }
        let mut v = minimal();
        v["tenants"][0]["api_key_sha256"] = serde_json::json!([]);
        assert_eq!(err_of(v).field, "tenants[0].api_key_sha256");
    }

    #[test]
    fn a_key_given_to_two_tenants_is_refused() {
        let mut v = minimal();
        v["tenants"][1]["api_key_sha256"][0] = hex_of("k1").into();
        let e = err_of(v);
        assert_eq!(e.field, "tenants[1].api_key_sha256[0]");
        assert!(e.message.contains("acme"), "{e}");
    }

    #[test]
    fn tenant_ids_are_checked() {
        for bad in ["", "has space", "ünï", &"x".repeat(129)] {
            let mut v = minimal();
            v["tenants"][0]["id"] = bad.into();
            assert_eq!(err_of(v).field, "tenants[0].id", "{bad:?}");
        }
        let mut v = minimal();
        v["tenants"][1]["id"] = "acme".into();
        let e = err_of(v);
        assert_eq!(e.field, "tenants[1].id");
        assert!(e.message.contains("duplicate"));
    }

    #[test]
    fn collector_fields_are_checked() {
        let mut v = minimal();
        v["collector"]["ingest_token"] = "short".into();
        assert_eq!(err_of(v).field, "collector.ingest_token");

        let mut v = minimal();
        v["collector"]["cluster"] = " ".into();
        assert_eq!(err_of(v).field, "collector.cluster");

        let mut v = minimal();
        v["collector"]["flush_interval_ms"] = 0.into();
        assert_eq!(err_of(v).field, "collector.flush_interval_ms");

        let mut v = minimal();
        v["collector"]["on_buffer_full"] = "explode".into();
        assert_eq!(err_of(v).field, "collector.on_buffer_full");

        let mut v = minimal();
        v["collector"]["path"] = "v1/records".into();
        assert_eq!(err_of(v).field, "collector.path");

        let mut v = minimal();
        v["collector"]
            .as_object_mut()
            .unwrap()
            .remove("ingest_token");
        let e = err_of(v);
        assert_eq!(e.field, "collector");
        assert!(e.message.contains("ingest_token"), "{e}");
    }

    #[test]
    fn metering_fields_are_checked() {
        let mut v = minimal();
        v["metering"] = serde_json::json!({"default_max_tokens": 0});
        assert_eq!(err_of(v).field, "metering.default_max_tokens");
        let mut v = minimal();
        v["metering"] = serde_json::json!({"max_response_body_bytes": 1});
        assert_eq!(err_of(v).field, "metering.max_response_body_bytes");
    }

    #[test]
    fn malformed_json_is_refused_with_position() {
        let e = Config::parse(b"{\"tenants\": [").unwrap_err();
        assert!(e.message.contains("line 1"), "{e}");
        let e = Config::parse(b"").unwrap_err();
        assert!(e.message.contains("EOF"), "{e}");
        let e = Config::parse(&[0xff, 0xfe]).unwrap_err();
        assert!(!e.message.is_empty());
        let mut text = minimal().to_string();
        text.push_str(" trailing");
        assert!(Config::parse(text.as_bytes()).is_err());
    }

    #[test]
    fn missing_sections_are_named() {
        let e = err_of(serde_json::json!({"tenants": []}));
        assert!(e.message.contains("collector"), "{e}");
        let e =
            err_of(serde_json::json!({"collector": {"cluster": "c", "ingest_token": "12345678"}}));
        assert!(e.message.contains("tenants"), "{e}");
    }
}
