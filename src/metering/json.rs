//! Reading request and response JSON the way the servers behind the gateway read it.
//!
//! A request body is parsed once, into a `Value` (a key given twice counts once, with its last
//! value, as in the Python servers; serde's derive would refuse it), and its fields are read
//! leniently: a field of an unexpected type is treated as absent, so a request the model
//! server will reject anyway still gets an estimate rather than an error here. Counts and
//! flags follow pydantic's lax mode, which the Python servers (vLLM, SGLang, the
//! OpenAI-compatible layers) use. Reported usage is read strictly: a count that is not a
//! non-negative integer makes the whole report absent, and the caller estimates instead.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// The largest token count a record carries (2^53, exact in every JSON reader). A server
/// that reports more is broken; its figure is capped rather than let a record be refused.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 53;

pub fn clamp(n: u64) -> u64 {
    n.min(MAX_REPORTED_TOKENS)
}

/// Deserializes a value, or `None` if it is null or of another shape.
pub fn lenient<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = Value::deserialize(de)?;
    Ok(T::deserialize(value).ok())
}

/// A count as Python servers read it (pydantic in lax mode): an integer, a float with no
/// fraction, or a string holding an integer. Anything else, negatives included, is absent.
pub fn count<'de, D>(de: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(count_of(&Value::deserialize(de)?))
}

pub fn count_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            // Saturating cast: a float past u64 reads as the largest count.
            (f >= 0.0 && f.fract() == 0.0).then_some(f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An output cap (`max_tokens` and its kin): a count, where `0` means no cap, as in the
/// servers (`max_completion_tokens or max_tokens` in Python, `num_predict <= 0` in Ollama and
/// llama.cpp). Absent, zero, negative or malformed: `None`, so the next field or the default
/// applies.
pub fn cap<'de, D>(de: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(count_of(&Value::deserialize(de)?).filter(|&n| n > 0))
}

/// A boolean as pydantic's lax mode reads it: `true`, `1`, `"true"`, `"yes"`, `"on"`, ...
pub fn flag<'de, D>(de: D) -> Result<Option<bool>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(flag_of(&Value::deserialize(de)?))
}

pub fn flag_of(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Like `lenient`, for a struct that must come from a JSON object: serde would also fill a
/// struct from an array by position, and `"usage": [1, 0]` is not a usage report.
pub fn object<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = Value::deserialize(de)?;
    if !value.is_object() {
        return Ok(None);
    }
    Ok(T::deserialize(value).ok())
}

/// serde would also read a struct from a JSON array; only an object is a request or a
/// response.
pub fn starts_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Parses a response body or stream event into `T`, directly: responses are not written by
/// clients, and this runs on every event of a stream.
pub fn parse_reply<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    if !starts_object(json) {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Parses a response body that is an object, or a list of objects (one answer per prompt),
/// into one `T` each. `None` if it is neither.
pub fn parse_replies<T: DeserializeOwned>(json: &[u8]) -> Option<Vec<T>> {
    if starts_object(json) {
        return Some(vec![serde_json::from_slice(json).ok()?]);
    }
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return None;
    }
    let items: Vec<Value> = serde_json::from_slice(json).ok()?;
    items
        .into_iter()
        .map(|v| v.is_object().then(|| T::deserialize(v).ok()).flatten())
        .collect()
}

/// Finds the value of the last `"key":` in the end of a JSON body too large to keep whole.
///
/// Servers put usage last, at the top level. The last `"key"` whose quote is not escaped
/// (inside generated text it would be written `\"key\"`) and that is followed by a colon and
/// a complete JSON value is taken.
pub fn value_in_tail(tail: &[u8], key: &str) -> Option<Value> {
    let quoted = format!("\"{key}\"");
    let needle = quoted.as_bytes();
    let mut end = tail.len();
    while let Some(at) = tail
        .get(..end)?
        .windows(needle.len())
        .rposition(|w| w == needle)
    {
        end = at;
        if at > 0 && tail.get(at - 1) == Some(&b'\\') {
            continue;
        }
        let rest = tail.get(at + needle.len()..)?;
        let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
        let Some(value) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_slice(value).into_iter::<Value>();
        if let Some(Ok(v)) = values.next() {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn flags_as_pydantic_reads_them() {
        for (v, want) in [
            (serde_json::json!(true), Some(true)),
            (serde_json::json!("yes"), Some(true)),
            (serde_json::json!(" True "), Some(true)),
            (serde_json::json!(1), Some(true)),
            (serde_json::json!(0.0), Some(false)),
            (serde_json::json!("off"), Some(false)),
            (serde_json::json!(2), None),
            (serde_json::json!("maybe"), None),
            (serde_json::json!(null), None),
            (serde_json::json!([true]), None),
        ] {
            assert_eq!(flag_of(&v), want, "{v}");
        }
    }

    #[test]
    fn counts_as_pydantic_reads_them() {
        assert_eq!(count_of(&serde_json::json!(3)), Some(3));
        assert_eq!(count_of(&serde_json::json!(3.0)), Some(3));
        assert_eq!(count_of(&serde_json::json!("12")), Some(12));
        assert_eq!(count_of(&serde_json::json!(-1)), None);
        assert_eq!(count_of(&serde_json::json!(1.5)), None);
        assert_eq!(count_of(&serde_json::json!(1e300)), Some(u64::MAX));
    }

    #[test]
    fn a_zero_or_negative_cap_is_no_cap() {
        #[derive(serde::Deserialize)]
        struct Capped {
            #[serde(default, deserialize_with = "cap")]
            max: Option<u64>,
        }
        for (json, want) in [
            (r#"{"max":7}"#, Some(7)),
            (r#"{"max":"7"}"#, Some(7)),
            (r#"{"max":0}"#, None),
            (r#"{"max":0.0}"#, None),
            (r#"{"max":"0"}"#, None),
            (r#"{"max":-1}"#, None),
            (r#"{"max":-2}"#, None),
            (r#"{"max":null}"#, None),
            ("{}", None),
        ] {
            let c: Capped = serde_json::from_str(json).unwrap();
            assert_eq!(c.max, want, "{json}");
        }
    }

    #[test]
    fn the_last_unescaped_key_in_a_tail() {
        let tail = br#"{"t":"\"usage\":{\"a\":1}"}],"usage":{"a":2}}"#;
        assert_eq!(
            value_in_tail(tail, "usage"),
            Some(serde_json::json!({"a": 2}))
        );
        assert_eq!(
            value_in_tail(br#""n": 7}"#, "n"),
            Some(serde_json::json!(7))
        );
        assert_eq!(value_in_tail(br#""n": {"#, "n"), None);
        assert_eq!(value_in_tail(br#""n" 7"#, "n"), None);
        assert_eq!(value_in_tail(b"", "n"), None);
    }
}
