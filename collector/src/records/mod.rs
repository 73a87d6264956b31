//! Billing and audit records as the filter sends them (`docs/records.md` is the contract),
//! and the validation that turns an ingest body into them.
//!
//! The types here are already valid: [`validate::parse_batch`] is the only way in from the
//! wire, and a store only has to persist what it is given.

pub mod validate;

use serde::{Serialize, Serializer};

use crate::timestamp::Timestamp;

/// Largest token count a record may carry: 2^53, the largest integer every JSON reader keeps
/// exactly.
pub const MAX_TOKENS: u64 = 1 << 53;

/// One record of an ingest batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Billing(BillingRecord),
    Audit(AuditEntry),
}

impl Record {
    pub fn id(&self) -> &str {
        match self {
            Record::Billing(record) => &record.id,
            Record::Audit(entry) => &entry.id,
        }
    }
}

/// What one metered request cost. Serialises to the ingest shape without `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BillingRecord {
    pub id: String,
    pub tenant_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub timestamp: Timestamp,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub api: String,
    pub usage_source: UsageSource,
    /// Input read from the prompt cache; part of `input_tokens`.
    pub cached_input_tokens: Option<u64>,
    /// Input written to the prompt cache (Anthropic's `cache_creation_input_tokens`); part of
    /// `input_tokens`, kept apart because it is priced apart.
    pub cache_write_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

/// What happened to one request at the gateway. Serialises to the ingest shape without `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub timestamp: Timestamp,
    /// `None` when no tenant was identified (a `401`).
    pub tenant_id: Option<String>,
    pub action: Action,
    pub result: AuditResult,
    pub resource: Option<String>,
    pub status_code: u16,
    pub method: String,
    pub path: String,
    pub remote_addr: Option<String>,
    pub request_id: Option<String>,
    /// Who acted, for the collector's own entries of registry calls: the name of the admin
    /// token presented. Left out of the JSON when absent (the filter's entries have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// A closed set of wire strings: the enum, its text both ways, and its JSON form.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in the order the contract lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Where a billing record's token counts came from.
    UsageSource { Reported => "reported", Estimated => "estimated" }
}

wire_enum! {
    /// What an audited request tried to do.
    Action {
        Inference => "inference",
        Create => "create",
        Update => "update",
        Delete => "delete",
        List => "list",
        Auth => "auth",
    }
}

wire_enum! {
    /// How an audited request ended.
    AuditResult {
        Success => "success",
        Denied => "denied",
        RateLimited => "rate_limited",
        Error => "error",
        Unauthorized => "unauthorized",
    }
}
