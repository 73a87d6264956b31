//! Plugin configuration: the JSON an operator writes, its validation, and the compiled form.
//!
//! Parsing and validation happen once, in `on_configure`. Every error names the field it is
//! about (`tenants[2].rate_limit: ...`), and a configuration with any error is refused as a
//! whole: the filter never runs half-configured.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

use crate::auth::{Digest, KeyTable};
use crate::metering::routes::{self, Route, Routes};
use crate::metering::Api;
use crate::saml::metadata::{self, IdpMetadata};
use crate::saml::token::{TokenKey, TokenKeys};

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
    sso: Option<RawSso>,
    #[serde(default)]
    limits: RawLimits,
    registry: Option<crate::registry::RawRegistry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: String,
    api_key_sha256: OneOrMany,
    rate_limit: u64,
    token_budget: u64,
    saml: Option<RawSaml>,
}

/// `tenants[].saml`: how this tenant's users sign in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSaml {
    idp_metadata: String,
    sp_entity_id: String,
    acs_url: String,
}

/// `sso`: the session tokens given after a SAML sign-on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSso {
    token_secret: String,
    token_key_id: Option<String>,
    previous_token_secrets: Option<Vec<RawTokenKey>>,
    clock_skew_seconds: Option<u64>,
    token_ttl_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenKey {
    key_id: String,
    secret: String,
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
    max_buffered_bytes: Option<u64>,
    on_buffer_full: Option<BufferFullPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetering {
    default_max_tokens: Option<u64>,
    max_request_body_bytes: Option<usize>,
    max_response_body_bytes: Option<usize>,
    routes: Option<Vec<RawRoute>>,
    inject_include_usage: Option<bool>,
}

/// `metering.routes[]`: the API shape of the requests on an exact path or below a prefix.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Option<String>,
    prefix: Option<String>,
    api: String,
}

/// `limits`: where the tenants' limits are kept.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    mode: Option<LimitsMode>,
    service: Option<RawLimitService>,
}

/// `limits.service`: the rate-limit service of global mode.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimitService {
    cluster: String,
    domain: Option<String>,
    timeout_ms: Option<u64>,
    failure_mode: Option<FailureMode>,
    send_limits: Option<bool>,
}

/// Where limits are kept.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LimitsMode {
    /// In this Envoy's shared data: limits hold across its workers.
    Local,
    /// Also in a rate-limit service shared by every Envoy: limits hold across the fleet.
    Global,
}

/// What a request gets when the rate-limit service cannot answer in time.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Let it through (this Envoy's own limits still apply).
    Allow,
    /// Refuse it with `503 limiter_unavailable`.
    Deny,
}

/// The longest cluster name: its serialized `GrpcService` must stay valid UTF-8 (a length
/// under 128 is one byte), as the SDK passes it as a string.
const MAX_SERVICE_CLUSTER_LEN: usize = 120;

/// More routes than anyone writes by hand; each request is matched against all of them.
const MAX_ROUTES: usize = 256;

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
    /// Bytes of record JSON kept while the collector is unreachable.
    pub max_buffered_bytes: u64,
    pub on_buffer_full: BufferFullPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringConfig {
    /// Output tokens reserved for a request that names no `max_tokens`.
    pub default_max_tokens: u64,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
    /// Which API shape a request speaks, by path.
    pub routes: Routes,
    /// Add `stream_options.include_usage` to OpenAI streams that lack it (and hide the usage
    /// chunk from the client), so that they are billed exactly.
    pub inject_include_usage: bool,
}

/// Global mode: the rate-limit service every Envoy of the fleet asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLimits {
    /// The Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    /// The target of `proxy_grpc_call`: a serialized `GrpcService` naming the cluster.
    pub grpc_service: String,
    /// The domain of every `ShouldRateLimit` request.
    pub domain: String,
    pub timeout_ms: u64,
    pub failure_mode: FailureMode,
    /// Each descriptor carries the tenant's limit as an override (envoyproxy/ratelimit).
    pub send_limits: bool,
}

/// A tenant's SAML sign-on: its IdP (from the metadata) and our service-provider settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamlTenant {
    /// Index into `Config::tenants`.
    pub tenant: usize,
    pub idp: IdpMetadata,
    pub sp_entity_id: String,
    pub acs_url: String,
}

/// SAML sign-on and its session tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoConfig {
    pub keys: TokenKeys,
    pub clock_skew_secs: u64,
    pub token_ttl_secs: u64,
    /// One per tenant with `saml`; IdP entity IDs are unique among them.
    pub idps: Vec<SamlTenant>,
}

impl SsoConfig {
    /// The tenant a session token may name: one that signs in over SAML.
    pub fn token_tenant(&self, config: &Config, tenant_id: &str) -> Option<usize> {
        self.idps
            .iter()
            .map(|s| s.tenant)
            .find(|t| config.tenant(*t).is_some_and(|t| t.id == tenant_id))
    }
}

/// The compiled configuration shared by every context of one worker.
#[derive(Debug)]
pub struct Config {
    pub tenants: Vec<Tenant>,
    pub keys: KeyTable,
    pub collector: CollectorConfig,
    pub metering: MeteringConfig,
    /// SAML sign-on, if configured.
    pub sso: Option<SsoConfig>,
    /// Global mode's rate-limit service; `None` in local mode.
    pub global: Option<GlobalLimits>,
    /// A `limits.service` given in local mode, where it is not used (said in the log).
    pub unused_service: bool,
    /// The collector's tenant registry, polled; `None`: static tenants only.
    pub registry: Option<crate::registry::RegistryConfig>,
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
    let mut tenants = Vec::with_capacity(raw.tenants.len());
    let mut saml = Vec::new();
    let mut keys = KeyTable::default();
    let mut seen_ids = HashSet::new();

    for (i, t) in raw.tenants.into_iter().enumerate() {
        let field = |name: &str| format!("tenants[{i}].{name}");

        if let Some(s) = t.saml {
            saml.push((i, s));
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

    let sso = compile_sso(raw.sso, saml, &tenants)?;
    let unused_service =
        raw.limits.mode != Some(LimitsMode::Global) && raw.limits.service.is_some();
    let collector = compile_collector(raw.collector)?;
    let registry = crate::registry::compile(raw.registry, &collector)?;
    Ok(Config {
        tenants,
        keys,
        collector,
        metering: compile_metering(raw.metering)?,
        sso,
        global: compile_limits(raw.limits)?,
        unused_service,
        registry,
    })
}

/// `sso` and every `tenants[].saml`: required together, all checked here.
fn compile_sso(
    raw: Option<RawSso>,
    saml: Vec<(usize, RawSaml)>,
    tenants: &[Tenant],
) -> Result<Option<SsoConfig>, ConfigError> {
    let Some(raw) = raw else {
        return match saml.first() {
            Some((i, _)) => Err(ConfigError::new(
                format!("tenants[{i}].saml"),
                "SAML sign-on needs the top-level sso section (token_secret)",
            )),
            None => Ok(None),
        };
    };

    let current_id = raw.token_key_id.unwrap_or_else(|| "k1".to_string());
    check_key_id(&current_id).map_err(|m| ConfigError::new("sso.token_key_id", m))?;
    check_secret(&raw.token_secret).map_err(|m| ConfigError::new("sso.token_secret", m))?;
    let mut previous: Vec<TokenKey> = Vec::new();
    for (k, key) in raw
        .previous_token_secrets
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let field = |name: &str| format!("sso.previous_token_secrets[{k}].{name}");
        check_key_id(&key.key_id).map_err(|m| ConfigError::new(field("key_id"), m))?;
        if key.key_id == current_id || previous.iter().any(|p| p.id == key.key_id) {
            return Err(ConfigError::new(field("key_id"), "key ids must be unique"));
        }
        check_secret(&key.secret).map_err(|m| ConfigError::new(field("secret"), m))?;
        previous.push(TokenKey::new(key.key_id, key.secret.into_bytes()));
    }

    let mut idps: Vec<SamlTenant> = Vec::with_capacity(saml.len());
    for (i, s) in saml {
        let field = |name: &str| format!("tenants[{i}].saml.{name}");
        let idp = metadata::parse(&s.idp_metadata)
            .map_err(|m| ConfigError::new(field("idp_metadata"), m))?;
        if let Some(other) = idps.iter().find(|o| o.idp.entity_id == idp.entity_id) {
            let owner = tenants.get(other.tenant).map_or("?", |t| t.id.as_str());
            return Err(ConfigError::new(
                field("idp_metadata"),
                format!(
                    "the IdP entity ID {:?} is already used by tenant {owner:?}; each IdP signs in one tenant",
                    idp.entity_id
                ),
            ));
        }
        check_sp_entity_id(&s.sp_entity_id)
            .map_err(|m| ConfigError::new(field("sp_entity_id"), m))?;
        check_acs_url(&s.acs_url).map_err(|m| ConfigError::new(field("acs_url"), m))?;
        idps.push(SamlTenant {
            tenant: i,
            idp,
            sp_entity_id: s.sp_entity_id,
            acs_url: s.acs_url,
        });
    }

    Ok(Some(SsoConfig {
        keys: TokenKeys {
            current: TokenKey::new(current_id, raw.token_secret.into_bytes()),
            previous,
        },
        clock_skew_secs: in_range("sso.clock_skew_seconds", raw.clock_skew_seconds, 60, 0, 600)?,
        token_ttl_secs: in_range(
            "sso.token_ttl_seconds",
            raw.token_ttl_seconds,
            3600,
            60,
            86_400,
        )?,
        idps,
    }))
}

fn check_key_id(id: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 32 of letters, digits, '-' and '_'".to_string())
    }
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < 32 {
        return Err(format!(
            "must be at least 32 bytes (a random secret), got {}",
            secret.len()
        ));
    }
    Ok(())
}

fn check_sp_entity_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 1024 || id.trim() != id {
        return Err("must be 1 to 1024 characters without surrounding spaces".to_string());
    }
    Ok(())
}

/// An absolute `http(s)` URL whose path is the one the filter answers.
fn check_acs_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an absolute http:// or https:// URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bad_authority = authority.is_empty() || authority.contains(['@', ' ']) || !url.is_ascii();
    if bad_authority {
        return Err("must be an absolute URL with a host".to_string());
    }
    if path != crate::saml::acs::PATH {
        return Err(format!(
            "the path must be {}, which the filter answers",
            crate::saml::acs::PATH
        ));
    }
    Ok(())
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
        // A batch can pass this soft bound by one record (a few KiB); 4 MiB keeps every batch
        // well under the collector's 8 MiB body limit, which would refuse it with a `413`.
        max_batch_bytes: in_range(
            "collector.max_batch_bytes",
            c.max_batch_bytes,
            1 << 20,
            4096,
            4 << 20,
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
        max_buffered_bytes: in_range(
            "collector.max_buffered_bytes",
            c.max_buffered_bytes,
            64 << 20,
            4096,
            16 << 30,
        )?,
        on_buffer_full: c.on_buffer_full.unwrap_or(BufferFullPolicy::Reject),
    })
}

/// `limits`: `None` in local mode (the default). A `service` given in local mode is checked
/// all the same but not used, so that switching modes is one field.
fn compile_limits(raw: RawLimits) -> Result<Option<GlobalLimits>, ConfigError> {
    let global = raw.mode == Some(LimitsMode::Global);
    let Some(service) = raw.service else {
        if global {
            return Err(ConfigError::new(
                "limits.service",
                "global mode needs the rate-limit service: {\"cluster\": ...}",
            ));
        }
        return Ok(None);
    };

    let cluster = service.cluster;
    let cluster_ok = !cluster.trim().is_empty()
        && cluster.len() <= MAX_SERVICE_CLUSTER_LEN
        && cluster.bytes().all(|b| b.is_ascii_graphic());
    if !cluster_ok {
        return Err(ConfigError::new(
            "limits.service.cluster",
            format!(
                "must be 1 to {MAX_SERVICE_CLUSTER_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    let domain = service
        .domain
        .unwrap_or_else(|| "inference-gate".to_string());
    let domain_ok =
        (1..=128).contains(&domain.len()) && domain.bytes().all(|b| b.is_ascii_graphic());
    if !domain_ok {
        return Err(ConfigError::new(
            "limits.service.domain",
            "must be 1 to 128 printable ASCII characters without spaces",
        ));
    }
    let grpc_service = String::from_utf8(crate::ratelimit::grpc_service(&cluster))
        .map_err(|_| ConfigError::new("limits.service.cluster", "cannot be encoded"))?;
    let compiled = GlobalLimits {
        cluster,
        grpc_service,
        domain,
        timeout_ms: in_range(
            "limits.service.timeout_ms",
            service.timeout_ms,
            50,
            1,
            10_000,
        )?,
        failure_mode: service.failure_mode.unwrap_or(FailureMode::Allow),
        send_limits: service.send_limits.unwrap_or(true),
    };
    Ok(global.then_some(compiled))
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
        routes: compile_routes(m.routes.unwrap_or_default())?,
        inject_include_usage: m.inject_include_usage.unwrap_or(true),
    })
}

fn compile_routes(raw: Vec<RawRoute>) -> Result<Routes, ConfigError> {
    if raw.len() > MAX_ROUTES {
        return Err(ConfigError::new(
            "metering.routes",
            format!("at most {MAX_ROUTES} routes, got {}", raw.len()),
        ));
    }
    let mut routes = Routes::default();
    for (i, r) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("metering.routes[{i}].{name}");
        let api = Api::from_name(&r.api).ok_or_else(|| {
            let names: Vec<&str> = Api::ALL.iter().map(|a| a.as_str()).collect();
            ConfigError::new(
                field("api"),
                format!(
                    "unknown API {:?}; expected one of {}",
                    r.api,
                    names.join(", ")
                ),
            )
        })?;
        let route = match (r.path, r.prefix) {
            (Some(path), None) => {
                routes::check_path(&path).map_err(|m| ConfigError::new(field("path"), m))?;
                Route::path(&path, api)
            }
            (None, Some(prefix)) => {
                routes::check_path(&prefix).map_err(|m| ConfigError::new(field("prefix"), m))?;
                Route::prefix(&prefix, api)
            }
            _ => {
                return Err(ConfigError::new(
                    format!("metering.routes[{i}]"),
                    "give exactly one of path and prefix",
                ))
            }
        };
        // A second route for the same path or prefix would never be used: a mistake.
        if !routes.push(route) {
            return Err(ConfigError::new(
                format!("metering.routes[{i}]"),
                "an earlier route has the same path or prefix",
            ));
        }
    }
    Ok(routes)
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

pub(crate) fn check_tenant_id(id: &str) -> Result<(), String> {
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

pub(crate) fn check_limit(v: u64) -> Result<(), String> {
    if v == 0 || v > MAX_LIMIT {
        return Err(format!("must be between 1 and {MAX_LIMIT}, got {v}"));
    }
    Ok(())
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest, String> {
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
        assert_eq!(c.collector.max_buffered_records, 100_000);
        assert_eq!(c.collector.max_buffered_bytes, 64 << 20);
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

    const GOOGLE_METADATA: &str =
        include_str!("../tests/fixtures/saml/google-workspace-idp-metadata.xml");
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn with_saml() -> serde_json::Value {
        let mut v = minimal();
        v["tenants"][0]["saml"] = serde_json::json!({
            "idp_metadata": GOOGLE_METADATA,
            "sp_entity_id": "https://gw.example/saml/metadata",
            "acs_url": "https://gw.example/sso/saml/acs",
        });
        v["sso"] = serde_json::json!({"token_secret": SECRET});
        v
    }

    #[test]
    fn saml_and_sso_are_compiled() {
        let c = parse(&with_saml()).unwrap();
        let sso = c.sso.as_ref().unwrap();
        assert_eq!(sso.clock_skew_secs, 60);
        assert_eq!(sso.token_ttl_secs, 3600);
        assert_eq!(sso.keys.current.id, "k1");
        assert_eq!(sso.idps.len(), 1);
        assert_eq!(sso.idps[0].tenant, 0);
        assert_eq!(
            sso.idps[0].idp.entity_id,
            "https://accounts.google.com/o/saml2?idpid=C02dfl1r1"
        );
        assert_eq!(sso.token_tenant(&c, "acme"), Some(0));
        assert_eq!(sso.token_tenant(&c, "globex"), None, "globex has no saml");
        assert!(
            !format!("{c:?}").contains(SECRET),
            "secrets stay out of Debug"
        );

        let mut v = with_saml();
        v["sso"] = serde_json::json!({
            "token_secret": SECRET, "token_key_id": "2025-12", "clock_skew_seconds": 0,
            "token_ttl_seconds": 600,
            "previous_token_secrets": [{"key_id": "2025-11", "secret": SECRET.repeat(2)}],
        });
        let c = parse(&v).unwrap();
        let sso = c.sso.unwrap();
        assert_eq!(sso.keys.current.id, "2025-12");
        assert_eq!(sso.keys.previous[0].id, "2025-11");
        assert_eq!((sso.clock_skew_secs, sso.token_ttl_secs), (0, 600));

        // sso alone is allowed (no tenant signs in yet).
        let mut v = minimal();
        v["sso"] = serde_json::json!({"token_secret": SECRET});
        assert!(parse(&v).unwrap().sso.unwrap().idps.is_empty());
    }

    #[test]
    fn saml_and_sso_errors_name_the_field() {
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("sso");
                }),
                "tenants[0].saml",
            ),
            (
                Box::new(|v| v["sso"]["token_secret"] = "short".into()),
                "sso.token_secret",
            ),
            (
                Box::new(|v| v["sso"]["token_key_id"] = "a b".into()),
                "sso.token_key_id",
            ),
            (
                Box::new(|v| v["sso"]["clock_skew_seconds"] = 601.into()),
                "sso.clock_skew_seconds",
            ),
            (
                Box::new(|v| v["sso"]["token_ttl_seconds"] = 10.into()),
                "sso.token_ttl_seconds",
            ),
            (
                Box::new(|v| v["sso"]["tokn_secret"] = "x".into()),
                "sso.tokn_secret",
            ),
            (
                Box::new(|v| {
                    v["sso"]["previous_token_secrets"] =
                        serde_json::json!([{"key_id": "k1", "secret": SECRET}])
                }),
                "sso.previous_token_secrets[0].key_id",
            ),
            (
                Box::new(|v| {
                    v["sso"]["previous_token_secrets"] =
                        serde_json::json!([{"key_id": "k0", "secret": "s"}])
                }),
                "sso.previous_token_secrets[0].secret",
            ),
            (
                Box::new(|v| v["tenants"][0]["saml"]["idp_metadata"] = "<x/>".into()),
                "tenants[0].saml.idp_metadata",
            ),
            (
                Box::new(|v| {
                    v["tenants"][0]["saml"]["idp_metadata"] = GOOGLE_METADATA
                        .replace("X509Certificate>MIID", "X509Certificate>MIIE")
                        .into()
                }),
                "tenants[0].saml.idp_metadata",
            ),
            (
                Box::new(|v| v["tenants"][0]["saml"]["sp_entity_id"] = "".into()),
                "tenants[0].saml.sp_entity_id",
            ),
            (
                Box::new(|v| v["tenants"][0]["saml"]["acs_url"] = "https://gw.example/acs".into()),
                "tenants[0].saml.acs_url",
            ),
            (
                Box::new(|v| v["tenants"][0]["saml"]["acs_url"] = "/sso/saml/acs".into()),
                "tenants[0].saml.acs_url",
            ),
            (
                Box::new(|v| v["tenants"][0]["saml"]["extra"] = 1.into()),
                "tenants[0].saml.extra",
            ),
            (
                Box::new(|v| v["tenants"][1]["saml"] = v["tenants"][0]["saml"].clone()),
                "tenants[1].saml.idp_metadata",
            ),
        ];
        for (change, field) in cases {
            let mut v = with_saml();
            change(&mut v);
            let e = err_of(v);
            assert_eq!(e.field, field, "{e}");
            assert!(!e.to_string().contains(SECRET), "{e}");
        }
        let mut v = with_saml();
        v["sso"]["token_secret"] = 12345678901234567890u64.into();
        let e = err_of(v);
        assert_eq!(e.field, "sso.token_secret");
        assert!(!e.to_string().contains("1234567890"), "{e}");
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
        v["collector"]["max_buffered_bytes"] = 100.into();
        assert_eq!(err_of(v).field, "collector.max_buffered_bytes");

        let mut v = minimal();
        v["collector"]["max_batch_bytes"] = (8u64 << 20).into();
        assert_eq!(err_of(v).field, "collector.max_batch_bytes");

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
    fn limits_are_local_unless_global_is_asked_for() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.global, None);
        assert!(!c.unused_service);

        let mut v = minimal();
        v["limits"] = serde_json::json!({"mode": "local"});
        assert_eq!(parse(&v).unwrap().global, None);

        // A service in local mode is checked, not used, and said so.
        v["limits"]["service"] = serde_json::json!({"cluster": "ratelimit"});
        let c = parse(&v).unwrap();
        assert_eq!(c.global, None);
        assert!(c.unused_service);

        v["limits"]["mode"] = "global".into();
        let c = parse(&v).unwrap();
        let g = c.global.unwrap();
        assert_eq!(g.cluster, "ratelimit");
        assert_eq!(g.domain, "inference-gate");
        assert_eq!(g.timeout_ms, 50);
        assert_eq!(g.failure_mode, FailureMode::Allow);
        assert_eq!(
            g.grpc_service.as_bytes(),
            crate::ratelimit::grpc_service("ratelimit")
        );
        assert!(!c.unused_service);

        v["limits"]["service"] = serde_json::json!({
            "cluster": "outbound|8081||ratelimit.rl.svc.cluster.local",
            "domain": "gw-eu", "timeout_ms": 20, "failure_mode": "deny",
        });
        let g = parse(&v).unwrap().global.unwrap();
        assert_eq!((g.domain.as_str(), g.timeout_ms), ("gw-eu", 20));
        assert_eq!(g.failure_mode, FailureMode::Deny);
    }

    #[test]
    fn limits_fields_are_checked() {
        let cases = [
            (serde_json::json!({"mode": "global"}), "limits.service"),
            (serde_json::json!({"mode": "fleet"}), "limits.mode"),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": " "}}),
                "limits.service.cluster",
            ),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": "x".repeat(121)}}),
                "limits.service.cluster",
            ),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": "rl", "domain": ""}}),
                "limits.service.domain",
            ),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": "rl", "timeout_ms": 0}}),
                "limits.service.timeout_ms",
            ),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": "rl", "failure_mode": "open"}}),
                "limits.service.failure_mode",
            ),
            (
                serde_json::json!({"mode": "global", "service": {"cluster": "rl", "port": 1}}),
                "limits.service.port",
            ),
            (
                serde_json::json!({"mode": "global", "service": {}}),
                "limits.service",
            ),
            (serde_json::json!({"modes": "global"}), "limits.modes"),
        ];
        for (limits, field) in cases {
            let mut v = minimal();
            v["limits"] = limits.clone();
            let e = err_of(v);
            assert_eq!(e.field, field, "{limits}: {e}");
        }
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
    fn metering_routes_are_compiled_and_checked() {
        let c = parse(&minimal()).unwrap();
        assert!(c.metering.inject_include_usage);
        assert_eq!(
            c.metering.routes.api_for("POST", "/v1/messages"),
            Api::AnthropicMessages
        );

        let mut v = minimal();
        v["metering"] = serde_json::json!({
            "inject_include_usage": false,
            "routes": [
                {"prefix": "/ollama", "api": "ollama_chat"},
                {"path": "/v1/messages", "api": "unknown"},
            ]
        });
        let c = parse(&v).unwrap();
        assert!(!c.metering.inject_include_usage);
        let r = &c.metering.routes;
        assert_eq!(r.api_for("POST", "/ollama/api/chat"), Api::OllamaChat);
        assert_eq!(r.api_for("POST", "/v1/messages"), Api::Other);
        assert_eq!(r.api_for("POST", "/v1/responses"), Api::OpenAiResponses);

        for (route, field, needle) in [
            (
                serde_json::json!({"path": "/x", "api": "claude"}),
                "metering.routes[1].api",
                "anthropic_messages",
            ),
            (
                serde_json::json!({"prefix": "x", "api": "ollama_chat"}),
                "metering.routes[1].prefix",
                "'/'",
            ),
            (
                serde_json::json!({"path": "/x?y=1", "api": "ollama_chat"}),
                "metering.routes[1].path",
                "query",
            ),
            (
                serde_json::json!({"path": "/x", "prefix": "/x", "api": "ollama_chat"}),
                "metering.routes[1]",
                "exactly one",
            ),
            (
                serde_json::json!({"api": "ollama_chat"}),
                "metering.routes[1]",
                "exactly one",
            ),
            (
                serde_json::json!({"path": "/a/", "api": "ollama_chat"}),
                "metering.routes[1]",
                "earlier route",
            ),
            (
                serde_json::json!({"path": "/x", "api": "ollama_chat", "method": "POST"}),
                "metering.routes[1].method",
                "unknown field",
            ),
        ] {
            let mut v = minimal();
            v["metering"] =
                serde_json::json!({"routes": [{"path": "/a", "api": "openai_chat"}, route]});
            let e = err_of(v);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
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
