//! Human durations (`500ms`, `30s`, `1m30s`, `7d`, or whole seconds) for `wait` and for
//! configuration, parsed one way everywhere.

use std::time::Duration;

/// Parses `500ms`, `30s`, `1m30s`, `2h`, `7d`, or a bare number of whole seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| "is too large".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = raw;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "'{raw}' is not a duration like 500ms, 30s, 1m30s or 7d"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "is too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(format!(
                "'{raw}' is not a duration like 500ms, 30s, 1m30s or 7d (whole numbers only)"
            ));
        }
        rest = &rest[unit_len..];
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "'{raw}' has unknown unit '{unit}' (use ms, s, m, h or d)"
                ));
            }
        };
        let part = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| "is too large".to_string())?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| "is too large".to_string())?;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it back (`1m30s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    if !millis.is_multiple_of(1_000) {
        return format!("{millis}ms");
    }
    let mut secs = millis / 1_000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("1m30s", 90_000),
            ("7d", 604_800_000),
            ("2h", 7_200_000),
            ("45", 45_000),
            ("0", 0),
        ];
        for (raw, millis) in cases {
            assert_eq!(
                parse_duration(raw),
                Ok(Duration::from_millis(millis)),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "s",
            "10x",
            "-5s",
            "1.5s",
            "abc",
            "99999999999999999999",
            "5 s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn formats_round_trip() {
        for millis in [0, 250, 1_000, 90_000, 600_000, 604_800_000, 3_723_000] {
            let d = Duration::from_millis(millis);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
