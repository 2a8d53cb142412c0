//! Durations and points in time written the way people write them.
//!
//! Durations appear in configuration, environment variables and admin JSON as `"500ms"`,
//! `"1s"`, `"5m"`, `"1h30m"` or `"1.5s"`; this module parses them and writes them back in the
//! same short form, so a value read from the admin API can be pasted into the config file.
//!
//! Times in the admin API are RFC 3339 strings; requests may also give unix seconds. The core
//! has no date library, so a small RFC 3339 parser and formatter live here, built on Howard
//! Hinnant's `days_from_civil` / `civil_from_days` algorithms
//! (<http://howardhinnant.github.io/date_algorithms.html>), which are exact for the proleptic
//! Gregorian calendar. `retry-after` may carry an HTTP date (RFC 9110 IMF-fixdate), parsed here too.

use std::time::Duration;

use crate::UnixMillis;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {input:?}: expected a number followed by a unit, like \"500ms\", \"1s\", \"5m\", \"1h30m\"")]
    Invalid { input: String },
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { input: String, unit: String },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

/// Why a time string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time {input:?}: expected an RFC 3339 time like \"2025-01-31T08:00:00Z\" or unix seconds")]
pub struct TimeError {
    pub input: String,
}

const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MINUTE: u128 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u128 = 60 * NANOS_PER_MINUTE;

/// Parses a human duration: one or more `<number><unit>` parts, such as `"500ms"`, `"1s"`,
/// `"5m"`, `"2h"`, `"1h30m"`, `"1.5s"` or `"1h 30m"`. Units: `ns`, `us`/`µs`, `ms`, `s`/`sec`/
/// `secs`/`second(s)`, `m`/`min`/`mins`/`minute(s)`, `h`/`hr`/`hour(s)`, `d`/`day(s)`.
/// A bare `"0"` is zero; any other number needs a unit, because "is 30 seconds or
/// minutes?" must not be guessed here (the environment reader decides that bare integers are
/// seconds, and says so).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input.bytes().all(|b| b == b'0') {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid {
        input: s.to_string(),
    };
    let overflow = || DurationError::Overflow {
        input: s.to_string(),
    };
    let bytes = input.as_bytes();
    let mut position = 0;
    let mut total_nanos: u128 = 0;
    while position < bytes.len() {
        while position < bytes.len() && bytes[position] == b' ' {
            position += 1;
        }
        if position == bytes.len() {
            break;
        }
        let number_start = position;
        while position < bytes.len()
            && (bytes[position].is_ascii_digit() || bytes[position] == b'.')
        {
            position += 1;
        }
        let number = &input[number_start..position];
        if number.is_empty() {
            return Err(invalid());
        }
        while position < bytes.len() && bytes[position] == b' ' {
            position += 1;
        }
        let unit_start = position;
        while position < bytes.len() && !bytes[position].is_ascii_digit() && bytes[position] != b' '
        {
            position += 1;
        }
        let unit = &input[unit_start..position];
        if unit.is_empty() {
            return Err(invalid());
        }
        let unit_nanos = unit_in_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
            input: s.to_string(),
            unit: unit.to_string(),
        })?;
        let part = scaled_decimal(number, unit_nanos).ok_or_else(invalid)?;
        total_nanos = total_nanos.checked_add(part).ok_or_else(overflow)?;
    }
    let seconds = u64::try_from(total_nanos / NANOS_PER_SECOND).map_err(|_| overflow())?;
    // The remainder of a division by 10^9 always fits in u32.
    let subsec_nanos = (total_nanos % NANOS_PER_SECOND) as u32;
    Ok(Duration::new(seconds, subsec_nanos))
}

fn unit_in_nanos(unit: &str) -> Option<u128> {
    let nanos = match unit.to_ascii_lowercase().as_str() {
        "ns" | "nsec" | "nanos" => 1,
        "us" | "µs" | "usec" | "micros" => 1_000,
        "ms" | "msec" | "millis" => NANOS_PER_MILLI,
        "s" | "sec" | "secs" | "second" | "seconds" => NANOS_PER_SECOND,
        "m" | "min" | "mins" | "minute" | "minutes" => NANOS_PER_MINUTE,
        "h" | "hr" | "hrs" | "hour" | "hours" => NANOS_PER_HOUR,
        "d" | "day" | "days" => 24 * NANOS_PER_HOUR,
        _ => return None,
    };
    Some(nanos)
}

/// `number × unit_nanos` for a decimal number such as `"1.5"`, exactly, rounding fractions
/// below a nanosecond down.
fn scaled_decimal(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut result = whole_value.checked_mul(unit_nanos)?;
    let mut place = unit_nanos;
    for digit in fraction.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        result = result.checked_add(u128::from(digit - b'0') * place)?;
    }
    Some(result)
}

/// Writes a duration in the short form people write: `"1s"`, `"5m"`, `"10m"`, `"2h"`,
/// `"1m30s"`, `"1h30m"`, `"250ms"`, `"0s"`. Every unit is exact, so the string parses back to
/// the same duration. Hours are not folded into days: `"24h"` reads better in configuration.
pub fn format_duration(d: Duration) -> String {
    let mut remaining = d.as_nanos();
    if remaining == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, nanos) in [
        ("h", NANOS_PER_HOUR),
        ("m", NANOS_PER_MINUTE),
        ("s", NANOS_PER_SECOND),
        ("ms", NANOS_PER_MILLI),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let count = remaining / nanos;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(unit);
            remaining %= nanos;
        }
    }
    out
}

/// Seconds with one decimal, rounded to the nearest tenth: `"2.1s"`, `"0.0s"`. This is the
/// seed's `fallback_info.duration` and log format ("耗时: 2.1s").
pub fn format_seconds_one_decimal(d: Duration) -> String {
    let tenths = (d.as_millis() + 50) / 100;
    format!("{}.{}s", tenths / 10, tenths % 10)
}

/// Parses a point in time given as RFC 3339 (`"2025-01-31T08:00:00Z"`,
/// `"2025-01-31T16:00:00.250+08:00"`) or as integer unix seconds (`"1738310400"`).
/// Fractions of a second beyond milliseconds are truncated.
pub fn parse_time(s: &str) -> Result<UnixMillis, TimeError> {
    let input = s.trim();
    let error = || TimeError {
        input: s.to_string(),
    };
    if !input.is_empty() && input.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: i64 = input.parse().map_err(|_| error())?;
        return seconds.checked_mul(1000).ok_or_else(error);
    }
    parse_rfc3339(input).ok_or_else(error)
}

/// Parses RFC 3339 (`date-time`): `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`. A lowercase `t`/`z`
/// or a space between date and time are accepted, as RFC 3339 §5.6 allows.
pub fn parse_rfc3339(input: &str) -> Option<UnixMillis> {
    let bytes = input.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let year = digits(bytes, 0, 4)?;
    let month = digits(bytes, 5, 2)?;
    let day = digits(bytes, 8, 2)?;
    let hour = digits(bytes, 11, 2)?;
    let minute = digits(bytes, 14, 2)?;
    let second = digits(bytes, 17, 2)?;
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    // Second 60 is a leap second: RFC 3339 allows it and it lands on the next minute.
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut position = 19;
    let mut millis = 0i64;
    if bytes.get(position) == Some(&b'.') {
        position += 1;
        let fraction_start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            position += 1;
        }
        if position == fraction_start {
            return None;
        }
        let mut scale = 100;
        for digit in &bytes[fraction_start..position.min(fraction_start + 3)] {
            millis += i64::from(digit - b'0') * scale;
            scale /= 10;
        }
    }
    let offset_seconds = match bytes.get(position)? {
        b'Z' | b'z' if position + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if position + 6 == bytes.len() => {
            let offset_hours = digits(bytes, position + 1, 2)?;
            let offset_minutes = digits(bytes, position + 4, 2)?;
            if bytes[position + 3] != b':' || offset_hours > 23 || offset_minutes > 59 {
                return None;
            }
            let magnitude = offset_hours * 3600 + offset_minutes * 60;
            if *sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1000 + millis)
}

/// Writes a time as RFC 3339 in UTC with a `Z`, with milliseconds only when they are not
/// zero: `"2025-01-31T08:00:00Z"`, `"2025-01-31T08:00:00.250Z"`.
pub fn format_rfc3339(ms: UnixMillis) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let hour = second_of_day / 3600;
    let minute = second_of_day % 3600 / 60;
    let second = second_of_day % 60;
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
    }
}

/// Parses an HTTP date in the IMF-fixdate form every server sends today
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, RFC 9110 §5.6.7). The obsolete RFC 850 and asctime forms
/// are not accepted; a `retry-after` in those forms falls back to other signals.
pub fn parse_http_date(input: &str) -> Option<UnixMillis> {
    let rest = input.trim();
    let (_weekday, rest) = rest.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let clock = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|name| *name == month_name)? as i64 + 1;
    let clock_bytes = clock.as_bytes();
    if clock_bytes.len() != 8 || clock_bytes[2] != b':' || clock_bytes[5] != b':' {
        return None;
    }
    let hour = digits(clock_bytes, 0, 2)?;
    let minute = digits(clock_bytes, 3, 2)?;
    let second = digits(clock_bytes, 6, 2)?;
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1000)
}

fn digits(bytes: &[u8], start: usize, count: usize) -> Option<i64> {
    let slice = bytes.get(start..start + count)?;
    let mut value = 0i64;
    for byte in slice {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(byte - b'0');
    }
    Some(value)
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Serde glue for a `Duration` field written as a human string (`"1s"`, `"5m"`).
///
/// Numbers are refused on purpose: the seed wrote durations as nanosecond integers, and
/// silently reading `1000000000` as seconds (or nanoseconds) would be a trap either way.
pub mod serde_human {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(HumanDurationVisitor)
    }

    pub(crate) struct HumanDurationVisitor;

    impl de::Visitor<'_> for HumanDurationVisitor {
        type Value = Duration;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a duration string like \"1s\" or \"5m\"")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            super::parse_duration(value).map_err(E::custom)
        }
    }
}

/// Serde glue for an `Option<Duration>` written as a human string; `null` is `None`.
pub mod serde_human_option {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&super::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> de::Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a duration string like \"1s\" or \"5m\", or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            super::serde_human::deserialize(deserializer).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn parses_the_forms_people_write() {
        let rows = [
            ("500ms", ms(500)),
            ("1s", ms(1000)),
            ("5m", ms(300_000)),
            ("2h", ms(7_200_000)),
            ("1h30m", ms(5_400_000)),
            ("1h 30m", ms(5_400_000)),
            ("1.5s", ms(1500)),
            ("0.25s", ms(250)),
            (".5s", ms(500)),
            ("1m30s", ms(90_000)),
            ("1d", ms(86_400_000)),
            ("10 minutes", ms(600_000)),
            ("2 hours", ms(7_200_000)),
            ("30sec", ms(30_000)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("  1s  ", ms(1000)),
            ("1500us", Duration::from_micros(1500)),
            ("7ns", Duration::from_nanos(7)),
            ("1.5h", ms(5_400_000)),
        ];
        for (text, expected) in rows {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
        for text in ["5", "s", "-1s", "1..5s", "1s5", "abc", "1.s.", "1,5s", "."] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert!(matches!(
            parse_duration("5y"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == "y"
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Invalid { .. } | DurationError::Overflow { .. })
        ));
        let message = parse_duration("5").unwrap_err().to_string();
        assert!(message.contains("\"5\""), "{message}");
    }

    #[test]
    fn formats_the_short_exact_form() {
        let rows = [
            (ms(1000), "1s"),
            (ms(300_000), "5m"),
            (ms(600_000), "10m"),
            (ms(7_200_000), "2h"),
            (ms(90_000), "1m30s"),
            (ms(5_400_000), "1h30m"),
            (ms(250), "250ms"),
            (ms(1500), "1s500ms"),
            (ms(86_400_000), "24h"),
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1_000_001), "1ms1ns"),
        ];
        for (duration, text) in rows {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn seconds_with_one_decimal() {
        assert_eq!(format_seconds_one_decimal(ms(2100)), "2.1s");
        assert_eq!(format_seconds_one_decimal(ms(2149)), "2.1s");
        assert_eq!(format_seconds_one_decimal(ms(2150)), "2.2s");
        assert_eq!(format_seconds_one_decimal(ms(0)), "0.0s");
        assert_eq!(format_seconds_one_decimal(ms(59_960)), "60.0s");
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in 0u64..400_000_000_000_000u64) {
            let duration = Duration::from_nanos(nanos);
            proptest::prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn rfc3339_round_trips(ms in -62_135_596_800_000i64..253_402_300_799_999i64) {
            let text = format_rfc3339(ms);
            proptest::prop_assert_eq!(parse_time(&text), Ok(ms), "{}", text);
        }
    }

    #[test]
    fn parses_rfc3339_times() {
        let rows = [
            ("1970-01-01T00:00:00Z", 0),
            ("2025-01-31T08:00:00Z", 1_738_310_400_000),
            ("2025-01-31T16:00:00+08:00", 1_738_310_400_000),
            ("2025-01-31T03:30:00-04:30", 1_738_310_400_000),
            ("2025-01-31t08:00:00z", 1_738_310_400_000),
            ("2025-01-31 08:00:00Z", 1_738_310_400_000),
            ("2025-01-31T08:00:00.250Z", 1_738_310_400_250),
            ("2025-01-31T08:00:00.2Z", 1_738_310_400_200),
            ("2025-01-31T08:00:00.123456789Z", 1_738_310_400_123),
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2000-02-29T00:00:00Z", 951_782_400_000),
            ("1969-12-31T23:59:59Z", -1000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
        ];
        for (text, expected) in rows {
            assert_eq!(parse_time(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn refuses_impossible_times() {
        for text in [
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-04-31T00:00:00Z",
            "2025-01-31T24:00:00Z",
            "2025-01-31T08:00:00",
            "2025-01-31T08:00:00+0800",
            "2025-01-31T08:00:00.Z",
            "2025-01-31",
            "",
            "-5",
            "12.5",
            "2025-01-31T08:00:00Zjunk",
        ] {
            assert!(parse_time(text).is_err(), "{text}");
        }
    }

    #[test]
    fn parses_unix_seconds() {
        assert_eq!(parse_time("1738310400"), Ok(1_738_310_400_000));
        assert_eq!(parse_time("0"), Ok(0));
    }

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_738_310_400_000), "2025-01-31T08:00:00Z");
        assert_eq!(
            format_rfc3339(1_738_310_400_250),
            "2025-01-31T08:00:00.250Z"
        );
        assert_eq!(format_rfc3339(1_709_164_800_000), "2024-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_http_dates() {
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            parse_time("2015-10-21T07:28:00Z").ok()
        );
        assert_eq!(parse_http_date("Wed, 21 Oct 2015 07:28:00 UTC"), None);
        assert_eq!(parse_http_date("Wed, 32 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct WithDurations {
        #[serde(with = "serde_human")]
        delay: Duration,
        #[serde(with = "serde_human_option", default)]
        maybe: Option<Duration>,
    }

    #[test]
    fn serde_helpers_write_and_read_strings() {
        let value = WithDurations {
            delay: ms(90_000),
            maybe: Some(ms(500)),
        };
        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, r#"{"delay":"1m30s","maybe":"500ms"}"#);
        assert_eq!(serde_json::from_str::<WithDurations>(&json).unwrap(), value);

        let none: WithDurations = serde_json::from_str(r#"{"delay":"1s","maybe":null}"#).unwrap();
        assert_eq!(none.maybe, None);
        let missing: WithDurations = serde_json::from_str(r#"{"delay":"1s"}"#).unwrap();
        assert_eq!(missing.maybe, None);

        let number = serde_json::from_str::<WithDurations>(r#"{"delay":1000000000}"#).unwrap_err();
        assert!(number.to_string().contains("duration string"), "{number}");
        let garbage = serde_json::from_str::<WithDurations>(r#"{"delay":"soon"}"#).unwrap_err();
        assert!(garbage.to_string().contains("soon"), "{garbage}");
    }
}
