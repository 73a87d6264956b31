//! Billing records and audit entries, and their wire form (`docs/records.md`).
//!
//! A record never holds a key, a token, a header value or a body: only the fields below.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    Reported,
    Estimated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Billing {
    pub id: String,
    pub tenant_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    /// Input tokens written to the prompt cache (Anthropic prices them apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    pub timestamp: String,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub api: &'static str,
    pub usage_source: UsageSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    Success,
    Denied,
    RateLimited,
    Error,
    Unauthorized,
}

impl AuditResult {
    /// The result of a request from the status it was answered with.
    pub fn from_status(status: u32) -> AuditResult {
        match status {
            200..=399 => AuditResult::Success,
            401 => AuditResult::Unauthorized,
            403 => AuditResult::Denied,
            429 => AuditResult::RateLimited,
            _ => AuditResult::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Success => "success",
            AuditResult::Denied => "denied",
            AuditResult::RateLimited => "rate_limited",
            AuditResult::Error => "error",
            AuditResult::Unauthorized => "unauthorized",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub id: String,
    pub timestamp: String,
    pub tenant_id: Option<String>,
    pub action: &'static str,
    pub result: AuditResult,
    pub resource: Option<String>,
    pub status_code: u32,
    pub method: String,
    pub path: String,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
}

/// One record as it travels in the queue and in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Billing(Billing),
    Audit(Audit),
}

impl Record {
    /// The JSON of one record. Serialising these plain structs cannot fail; if it ever did,
    /// the caller counts the record as dropped.
    pub fn to_json(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }
}

/// RFC 3339 in UTC with millisecond precision.
pub fn timestamp(unix_ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(unix_ns);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Unique record ids: a random 64-bit prefix per VM and a counter. Two workers, or two runs,
/// share a prefix with negligible probability; within one VM the counter never repeats.
#[derive(Debug)]
pub struct IdGen {
    prefix: u64,
    next: std::cell::Cell<u64>,
}

impl IdGen {
    pub fn new(prefix: u64) -> Self {
        IdGen {
            prefix,
            next: std::cell::Cell::new(0),
        }
    }

    pub fn next_id(&self) -> String {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        format!("{:016x}{:016x}", self.prefix, n)
    }
}

/// Nanoseconds since the Unix epoch, saturating.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn billing_wire_form() {
        let b = Billing {
            id: "id1".into(),
            tenant_id: "acme".into(),
            input_tokens: 12,
            output_tokens: 34,
            cached_input_tokens: Some(2),
            cache_write_input_tokens: None,
            reasoning_tokens: None,
            timestamp: timestamp(1_764_785_234_123_000_000),
            model: Some("m".into()),
            request_id: Some("r".into()),
            api: "openai_chat",
            usage_source: UsageSource::Reported,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&Record::Billing(b).to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "billing", "id": "id1", "tenant_id": "acme",
                "input_tokens": 12, "output_tokens": 34, "cached_input_tokens": 2,
                "timestamp": "2025-12-03T18:07:14.123Z", "model": "m", "request_id": "r",
                "api": "openai_chat", "usage_source": "reported"
            })
        );
    }

    #[test]
    fn audit_wire_form() {
        let a = Audit {
            id: "id2".into(),
            timestamp: timestamp(0),
            tenant_id: None,
            action: "inference",
            result: AuditResult::from_status(401),
            resource: None,
            status_code: 401,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            remote_addr: Some("127.0.0.1:5000".into()),
            request_id: None,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&Record::Audit(a).to_json().unwrap()).unwrap();
        assert_eq!(v["kind"], "audit");
        assert_eq!(v["result"], "unauthorized");
        assert_eq!(v["tenant_id"], serde_json::Value::Null);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn results_from_status() {
        assert_eq!(AuditResult::from_status(200), AuditResult::Success);
        assert_eq!(AuditResult::from_status(403), AuditResult::Denied);
        assert_eq!(AuditResult::from_status(429), AuditResult::RateLimited);
        assert_eq!(AuditResult::from_status(500), AuditResult::Error);
        assert_eq!(AuditResult::from_status(400), AuditResult::Error);
        assert_eq!(AuditResult::RateLimited.as_str(), "rate_limited");
    }

    #[test]
    fn ids_are_unique_and_charset_safe() {
        let g = IdGen::new(0xabc);
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
