//! Times on the wire, written in one piece: RFC 3339 in UTC exactly as chrono's own
//! `Serialize` writes them (`2026-12-04T22:10:36.120Z`: the fraction only when not zero, in
//! 3, 6 or 9 digits). chrono hands serde_json a `Display` that it then escapes character
//! by character; an instance holds four times and a registration writes about fifteen, so
//! that way cost a tenth of a registration's instructions. Use with
//! `#[serde(serialize_with = "...")]`; reading times stays chrono's.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// A time as the wire writes it (also where it is written outside serde: a query
/// parameter, a record patched in SQL).
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Serializes a time (`serialize_with`).
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*at))
}

/// Serializes an optional time (`serialize_with`): `null` when absent.
pub fn serialize_option<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "serialize_option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn format_is_what_serde_writes() {
        for ms in [
            1_800_000_000_000,
            1_800_000_000_001,
            1_800_000_000_010,
            1_800_000_000_100,
            1_800_000_000_999,
            0,
        ] {
            let at = DateTime::from_timestamp_millis(ms).expect("valid time");
            let serde = serde_json::to_value(at).expect("serialize");
            assert_eq!(serde, serde_json::Value::String(format(at)), "{ms}");
        }
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        for nanos in [0, 120_000_000, 123_000_000, 123_400_000, 123_456_789, 1_000] {
            let at = DateTime::from_timestamp(1_800_000_000, nanos).expect("valid time");
            for maybe in [Some(at), None] {
                let ours = serde_json::to_string(&Ours { at, maybe }).expect("ours");
                let chronos = serde_json::to_string(&Chronos { at, maybe }).expect("chrono's");
                assert_eq!(ours, chronos);
            }
        }
    }
}
