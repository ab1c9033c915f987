//! Human durations as the config writes them: `200ms`, `1s`, `1.5s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

/// The longest duration a config may give: a year. Anything longer is a typo, and a deadline
/// that far out overflows a clock's arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration as a person reads it: "850 ms", "1.4 s", "24 s", "3 min", "2 h", "5 d". The
/// one form for every page and command (dashboard, status page, `outlast status`).
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=9_999 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..=59_999 => format!("{} s", ms / 1000),
        60_000..=3_599_999 => format!("{} min", ms / 60_000),
        3_600_000..=86_399_999 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// Parses a duration such as `250ms` or `1m30s`. Returns a sentence saying what is wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("\"{text}\" does not start with a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("\"{}\" is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs_per_unit = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("\"{text}\" has no unit")),
            other => return Err(format!("\"{other}\" in \"{text}\" is not a unit")),
        };
        let part = Duration::try_from_secs_f64(number * secs_per_unit)
            .ok()
            .filter(|d| *d <= MAX_DURATION);
        total = part
            .and_then(|p| total.checked_add(p))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("\"{text}\" is longer than a year"))?;
    }
    Ok(total)
}

/// Formats a duration the way the config writes it (`1.5s`, `200ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_the_config_uses() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10")
            .expect_err("no unit")
            .contains("no unit"));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("5d")
            .expect_err("days")
            .contains("not a unit"));
    }

    /// Regression: a number too large for a `Duration` panicked (exit 101 from `check`).
    #[test]
    fn refuses_durations_too_long_to_use() {
        for text in [
            "99999999999999999h",
            "1e400s",
            "9000h",
            "8000h8000h",
            "367d",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert!(parse_duration("99999999999999999h")
            .expect_err("too long")
            .contains("longer than a year"));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }
}
