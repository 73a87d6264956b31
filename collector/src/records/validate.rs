//! Validation of an ingest body. The whole batch is checked before anything is stored; the
//! first problem found is reported with the record index and the field, never the value.

use std::fmt::Display;

use serde_json::{Map, Value};
use thiserror::Error;

use super::{Action, AuditEntry, AuditResult, BillingRecord, Record, UsageSource, MAX_TOKENS};
use crate::timestamp::{self, Timestamp};

/// Most records one batch may carry.
pub const MAX_BATCH: usize = 10_000;

/// Why a batch was rejected. Either way nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The body is not JSON; serde's message, which gives the line and column.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The body is JSON but not a valid batch; the message names the index and field.
    #[error("{0}")]
    Invalid(String),
    /// One record breaks a rule. `param` names it (`records[3].input_tokens`) so that the
    /// filter can drop that record alone and resend the rest of the batch.
    #[error("{param}: {problem}")]
    Record { param: String, problem: String },
}

/// The fields a billing record may carry; any other is refused, so that a misspelt field
/// (`input_token`) cannot lose a figure silently. Upgrade collectors before filters.
const BILLING_FIELDS: [&str; 13] = [
    "kind",
    "id",
    "timestamp",
    "tenant_id",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "reasoning_tokens",
    "model",
    "request_id",
    "api",
    "usage_source",
];

/// The fields an audit entry may carry.
const AUDIT_FIELDS: [&str; 13] = [
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
    "actor",
];

/// How far ahead of the collector's clock a record's timestamp may be: more is a sender whose
/// clock is wrong, and its records would sort into a period not yet billed.
pub const MAX_AHEAD_US: i64 = 3_600 * 1_000_000;

/// The earliest timestamp accepted, 2020-01-01T00:00:00Z: no gateway record is older, so an
/// earlier one is a sender with a broken clock (an epoch of 0, a year of 1). A fixed floor,
/// not an age, so that a backlog held through a long collector outage is never refused for
/// its age.
pub const EARLIEST_US: i64 = 1_577_836_800 * 1_000_000;

/// Parses and validates a whole `POST /v1/records` body, against the collector's clock.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Record>, BatchError> {
    parse_batch_at(body, Timestamp::now().unix_micros())
}

/// [`parse_batch`] with the clock given: `now_us`, microseconds since the Unix epoch.
pub fn parse_batch_at(body: &[u8], now_us: i64) -> Result<Vec<Record>, BatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| BatchError::Json(err.to_string()))?;
    let Value::Object(top) = value else {
        return Err(invalid(
            "body: must be a JSON object with a \"records\" array",
        ));
    };
    if let Some(other) = top.keys().find(|k| k.as_str() != "records") {
        return Err(invalid(format!(
            "body: unknown field {:?}; only \"records\" is accepted",
            clip(other)
        )));
    }
    let records = match top.get("records") {
        Some(Value::Array(records)) => records,
        Some(_) => return Err(invalid("records: must be an array")),
        None => return Err(invalid("records: is required")),
    };
    if records.len() > MAX_BATCH {
        return Err(invalid(format!(
            "records: at most {MAX_BATCH} records per batch, got {}",
            records.len()
        )));
    }

    records
        .iter()
        .enumerate()
        .map(|(index, value)| parse_record(index, value, now_us))
        .collect()
}

/// A field name as an error message may quote it: at most 64 characters.
fn clip(name: &str) -> String {
    name.chars().take(64).collect()
}

fn parse_record(index: usize, value: &Value, now_us: i64) -> Result<Record, BatchError> {
    let Value::Object(map) = value else {
        return Err(BatchError::Record {
            param: format!("records[{index}]"),
            problem: "must be an object".to_owned(),
        });
    };
    let fields = Fields { index, map, now_us };

    let known: &[&str] = match map.get("kind") {
        Some(Value::String(kind)) if kind == "billing" => &BILLING_FIELDS,
        Some(Value::String(kind)) if kind == "audit" => &AUDIT_FIELDS,
        Some(_) => return Err(fields.error("kind", "must be \"billing\" or \"audit\"")),
        None => return Err(fields.error("kind", "is required")),
    };
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(BatchError::Record {
            param: format!("records[{index}]"),
            problem: format!(
                "unknown field {:?} for this kind of record (a misspelling, or a filter newer \
                 than this collector: upgrade collectors first)",
                clip(unknown)
            ),
        });
    }
    if known == BILLING_FIELDS.as_slice() {
        fields.billing().map(Record::Billing)
    } else {
        fields.audit().map(Record::Audit)
    }
}

fn invalid(message: impl Into<String>) -> BatchError {
    BatchError::Invalid(message.into())
}

/// The fields of record number `index`, read one rule at a time.
struct Fields<'a> {
    index: usize,
    map: &'a Map<String, Value>,
    /// The collector's clock, for the timestamp's bounds.
    now_us: i64,
}

impl<'a> Fields<'a> {
    fn billing(&self) -> Result<BillingRecord, BatchError> {
        Ok(BillingRecord {
            id: self.id()?,
            timestamp: self.timestamp()?,
            tenant_id: self.string("tenant_id", 1, 128)?.to_owned(),
            input_tokens: self.tokens("input_tokens")?,
            output_tokens: self.tokens("output_tokens")?,
            cached_input_tokens: self.optional_tokens("cached_input_tokens")?,
            cache_write_input_tokens: self.optional_tokens("cache_write_input_tokens")?,
            reasoning_tokens: self.optional_tokens("reasoning_tokens")?,
            model: self.optional_string("model", 256)?,
            request_id: self.optional_string("request_id", 256)?,
            api: self.string("api", 0, 64)?.to_owned(),
            usage_source: self.choice("usage_source", UsageSource::ALL, UsageSource::as_str)?,
        })
    }

    fn audit(&self) -> Result<AuditEntry, BatchError> {
        Ok(AuditEntry {
            id: self.id()?,
            timestamp: self.timestamp()?,
            tenant_id: self.audit_tenant()?,
            action: self.choice("action", Action::ALL, Action::as_str)?,
            result: self.choice("result", AuditResult::ALL, AuditResult::as_str)?,
            resource: self.optional_string("resource", 256)?,
            status_code: self.status_code()?,
            method: self.string("method", 1, 16)?.to_owned(),
            path: self.string("path", 0, 2048)?.to_owned(),
            remote_addr: self.optional_string("remote_addr", 128)?,
            request_id: self.optional_string("request_id", 256)?,
            actor: self.optional_string("actor", 128)?,
        })
    }

    fn error(&self, field: &str, problem: impl Display) -> BatchError {
        BatchError::Record {
            param: format!("records[{}].{field}", self.index),
            problem: problem.to_string(),
        }
    }

    fn id(&self) -> Result<String, BatchError> {
        let id = self.string("id", 0, usize::MAX)?;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if id.is_empty() || id.len() > 128 || !id.chars().all(allowed) {
            return Err(self.error("id", "must be 1 to 128 characters of [A-Za-z0-9._:-]"));
        }
        Ok(id.to_owned())
    }

    fn timestamp(&self) -> Result<Timestamp, BatchError> {
        let text = self.string("timestamp", 0, usize::MAX)?;
        let stamp = Timestamp::parse(text).ok_or_else(|| {
            self.error(
                "timestamp",
                format_args!(
                    "must be an RFC 3339 timestamp of at most {} characters, \
                     e.g. 2026-12-03T18:07:14.123Z",
                    timestamp::MAX_LEN
                ),
            )
        })?;
        let at = stamp.unix_micros();
        if at > self.now_us.saturating_add(MAX_AHEAD_US) {
            return Err(self.error(
                "timestamp",
                "is more than an hour ahead of the collector's clock; check the sender's clock",
            ));
        }
        if at < EARLIEST_US {
            return Err(self.error(
                "timestamp",
                "is before 2020-01-01T00:00:00Z; check the sender's clock",
            ));
        }
        Ok(stamp)
    }

    /// An audit entry's tenant: absent and null both mean no tenant was identified.
    fn audit_tenant(&self) -> Result<Option<String>, BatchError> {
        match self.map.get("tenant_id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => {
                self.check_len("tenant_id", text, 1, 128)?;
                Ok(Some(text.clone()))
            }
            Some(_) => Err(self.error("tenant_id", "must be a string or null")),
        }
    }

    /// A required string of `min..=max` characters.
    fn string(&self, field: &str, min: usize, max: usize) -> Result<&'a str, BatchError> {
        match self.map.get(field) {
            Some(Value::String(text)) => {
                self.check_len(field, text, min, max)?;
                Ok(text)
            }
            Some(_) => Err(self.error(field, "must be a string")),
            None => Err(self.error(field, "is required")),
        }
    }

    /// An optional string of at most `max` characters; absent and null both mean none.
    fn optional_string(&self, field: &str, max: usize) -> Result<Option<String>, BatchError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => {
                self.check_len(field, text, 0, max)?;
                Ok(Some(text.clone()))
            }
            Some(_) => Err(self.error(field, "must be a string or null")),
        }
    }

    /// Lengths count characters (Unicode scalar values), not bytes.
    fn check_len(&self, field: &str, text: &str, min: usize, max: usize) -> Result<(), BatchError> {
        let len = text.chars().count();
        if len < min || len > max {
            let rule = if min == 0 {
                format!("must be at most {max} characters")
            } else {
                format!("must be {min} to {max} characters")
            };
            return Err(self.error(field, rule));
        }
        // PostgreSQL cannot store a NUL in text: refused here, for both stores alike, rather
        // than failing the whole batch at commit (a 500 the sender would retry for ever).
        if text.contains('\0') {
            return Err(self.error(field, "must not contain NUL (\\u0000)"));
        }
        Ok(())
    }

    fn tokens(&self, field: &str) -> Result<u64, BatchError> {
        match self.map.get(field) {
            Some(value) => self.token_count(field, value),
            None => Err(self.error(field, "is required")),
        }
    }

    fn optional_tokens(&self, field: &str) -> Result<Option<u64>, BatchError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self.token_count(field, value).map(Some),
        }
    }

    fn token_count(&self, field: &str, value: &Value) -> Result<u64, BatchError> {
        let Value::Number(number) = value else {
            return Err(self.error(field, "must be a non-negative integer"));
        };
        match number.as_u64() {
            Some(count) if count <= MAX_TOKENS => Ok(count),
            Some(_) => Err(self.error(field, format_args!("must be at most {MAX_TOKENS}"))),
            // Integer literals past u64 arrive as floats: still "too big", not "not an integer".
            None if number
                .as_f64()
                .is_some_and(|f| f > MAX_TOKENS as f64 && f.fract() == 0.0) =>
            {
                Err(self.error(field, format_args!("must be at most {MAX_TOKENS}")))
            }
            None => Err(self.error(field, "must be a non-negative integer")),
        }
    }

    fn status_code(&self) -> Result<u16, BatchError> {
        let code = match self.map.get("status_code") {
            Some(Value::Number(number)) => number.as_u64(),
            Some(_) => None,
            None => return Err(self.error("status_code", "is required")),
        };
        match code.and_then(|code| u16::try_from(code).ok()) {
            Some(code @ 100..=599) => Ok(code),
            _ => Err(self.error("status_code", "must be an integer from 100 to 599")),
        }
    }

    /// One of a closed set of strings.
    fn choice<T: Copy>(
        &self,
        field: &str,
        all: &[T],
        as_str: fn(T) -> &'static str,
    ) -> Result<T, BatchError> {
        let text = self.string(field, 0, usize::MAX)?;
        all.iter()
            .copied()
            .find(|value| as_str(*value) == text)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|value| as_str(*value)).collect();
                self.error(field, format_args!("must be one of: {}", names.join(", ")))
            })
    }
}

#[cfg(test)]
mod tests;
