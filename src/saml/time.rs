//! SAML times (`xs:dateTime`, which SAML requires in UTC) as milliseconds since the Unix
//! epoch.
//!
//! Accepted: `YYYY-MM-DDThh:mm:ss`, an optional fraction (read to the millisecond, further
//! digits ignored), then `Z` or an offset `+hh:mm` / `-hh:mm`. A time without a zone is
//! refused: it would mean whatever the reader's zone is.

/// Milliseconds since 1970-01-01T00:00:00Z of an `xs:dateTime`, or `None`.
pub fn parse_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let valid = (1970..=9999).contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    if !valid {
        return None;
    }

    let mut at = 19;
    let mut millis = 0;
    if sep(at, b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let fraction = b.get(start..at)?;
        if fraction.is_empty() {
            return None;
        }
        for (i, d) in fraction.iter().take(3).enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
        }
    }
    let offset_minutes = match b.get(at..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 && sep(at + 3, b':') => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 14 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// RFC 3339 in UTC, to the second, for an instant in milliseconds.
pub fn format_secs(unix_secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (years from 1970 on).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_ms("2016-01-05T16:55:39.348Z"),
            Some(1_452_012_939_348)
        );
        assert_eq!(parse_ms("2016-01-05T16:55:39Z"), Some(1_452_012_939_000));
        assert_eq!(
            parse_ms("2016-01-05T16:55:39.3489999Z"),
            Some(1_452_012_939_348)
        );
        assert_eq!(
            parse_ms("2016-01-05T17:55:39+01:00"),
            Some(1_452_012_939_000)
        );
        assert_eq!(
            parse_ms("2016-01-05T15:55:39-01:00"),
            Some(1_452_012_939_000)
        );
        assert_eq!(parse_ms("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
        assert_eq!(parse_ms("2100-03-01T00:00:00Z"), Some(4_107_542_400_000));
    }

    #[test]
    fn malformed_times_are_refused() {
        for s in [
            "",
            "2016-01-05",
            "2016-01-05T16:55:39",
            "2016-01-05T16:55:39.Z",
            "2016-01-05 16:55:39Z",
            "2016-13-05T16:55:39Z",
            "2023-02-29T16:55:39Z",
            "2016-01-05T24:00:00Z",
            "2016-01-05T16:55:60Z",
            "1969-12-31T23:59:59Z",
            "2016-01-05T16:55:39+1:00",
            "2016-01-05T16:55:39Zjunk",
            "+2016-01-05T16:55:39Z",
            "2016-01-05T16:55:39\u{0}Z",
        ] {
            assert_eq!(parse_ms(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats_whole_seconds() {
        assert_eq!(format_secs(1_452_012_939), "2016-01-05T16:55:39Z");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_ms(&s);
        }
    }
}
