//! RFC 3339 timestamps: stored and returned exactly as the sender wrote them, compared as the
//! instant they name (so `18:00:00+02:00` sorts before `17:00:00Z`).

use std::fmt;

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};
use serde::{Serialize, Serializer};

/// Longest timestamp text accepted. RFC 3339 allows any number of fractional digits; a real
/// one with nanoseconds and an offset is 35 characters, so this only bounds what gets stored.
pub const MAX_LEN: usize = 64;

/// An RFC 3339 timestamp as written, with its instant in microseconds since the Unix epoch.
///
/// Digits finer than a microsecond are kept in the text but not in the instant, so two
/// timestamps less than a microsecond apart compare as equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timestamp {
    text: String,
    unix_micros: i64,
}

impl Timestamp {
    /// Parses RFC 3339 text with any offset; `None` if it is not one or is longer than
    /// [`MAX_LEN`].
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > MAX_LEN {
            return None;
        }
        let instant = DateTime::parse_from_rfc3339(text).ok()?;
        Some(Self {
            text: text.to_owned(),
            unix_micros: instant.timestamp_micros(),
        })
    }

    /// The current time, in UTC to the microsecond.
    pub fn now() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        Self {
            text: rfc3339(micros),
            unix_micros: micros,
        }
    }

    /// Rebuilds a timestamp from what a store wrote, without parsing it again.
    pub fn from_stored(text: String, unix_micros: i64) -> Self {
        Self { text, unix_micros }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn unix_micros(&self) -> i64 {
        self.unix_micros
    }
}

/// An instant in microseconds since the Unix epoch as RFC 3339 in UTC, e.g.
/// `2026-12-03T18:07:14.123456Z`.
pub fn rfc3339(unix_micros: i64) -> String {
    DateTime::from_timestamp_micros(unix_micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> i64 {
        Timestamp::parse(text)
            .map(|t| t.unix_micros())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn keeps_the_text_and_computes_the_instant() {
        let ts = Timestamp::parse("2026-12-03T18:07:14.123+02:00").unwrap();
        assert_eq!(ts.as_str(), "2026-12-03T18:07:14.123+02:00");
        assert_eq!(ts.unix_micros(), micros("2026-12-03T16:07:14.123Z"));
    }

    #[test]
    fn now_and_stored_instants_are_written_in_utc() {
        assert_eq!(
            rfc3339(1_764_785_234_123_456),
            "2025-12-03T18:07:14.123456Z"
        );
        let now = Timestamp::now();
        assert_eq!(Timestamp::parse(now.as_str()), Some(now.clone()));
        assert!(now.as_str().ends_with('Z'));
    }

    #[test]
    fn different_offsets_compare_as_instants() {
        assert!(micros("2026-01-01T01:00:00+02:00") < micros("2026-01-01T00:00:00Z"));
        assert_eq!(
            micros("2026-01-01T00:00:00-05:00"),
            micros("2026-01-01T05:00:00Z")
        );
    }

    #[test]
    fn sub_microsecond_digits_are_truncated_towards_the_past() {
        assert_eq!(micros("1970-01-01T00:00:00.0000019Z"), 1);
        assert_eq!(micros("1969-12-31T23:59:59.9999999Z"), -1);
    }

    #[test]
    fn rejects_what_is_not_rfc_3339() {
        for text in [
            "",
            "2026-12-03",
            "2026-12-03T18:07:14",
            "2026-12-03 18:07",
            "2026-13-03T18:07:14Z",
            "2026-12-03T18:07:14+24:00",
            "1733249234",
            "2026-12-03T18:07:14Z trailing",
        ] {
            assert!(Timestamp::parse(text).is_none(), "{text:?} was accepted");
        }
        let long = format!("2026-12-03T18:07:14.{}Z", "1".repeat(MAX_LEN));
        assert!(Timestamp::parse(&long).is_none());
    }
}
