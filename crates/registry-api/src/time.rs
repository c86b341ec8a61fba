//! Times on the wire, written in one piece: RFC 3339 in UTC exactly as chrono's own
//! `Serialize` writes them (`2026-12-04T22:10:36.120Z`: the fraction only when not zero, in
//! 3, 6 or 9 digits). chrono hands serde_json a `Display` that it then escapes character
//! by character; an instance holds four times and a registration writes about fifteen, so
//! that way cost a tenth of a registration's instructions. Use with
//! `#[serde(serialize_with = "...")]`, or [`append`] in an answer written by hand; reading
//! times stays chrono's.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// A time as the wire writes it (also where it is written outside serde: a query
/// parameter, a record patched in SQL).
pub fn format(at: DateTime<Utc>) -> String {
    let mut written = Vec::with_capacity(30);
    append(&mut written, at);
    String::from_utf8(written).unwrap_or_else(|_| at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Appends a time as the wire writes it to `out`, without going through `fmt`: digit by
/// digit for the years 0-9999, by chrono for others (and for leap seconds). Several
/// times cheaper than chrono's formatting into a `String`, for the answers written by
/// hand (a heartbeat's).
pub fn append(out: &mut Vec<u8>, at: DateTime<Utc>) {
    let nanos = at.nanosecond();
    let Some(year) = u32::try_from(at.year())
        .ok()
        .filter(|year| *year <= 9999 && nanos < 1_000_000_000)
    else {
        out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        return;
    };
    let mut written = *b"0000-00-00T00:00:00.000000000";
    digits(&mut written[0..4], year);
    digits(&mut written[5..7], at.month());
    digits(&mut written[8..10], at.day());
    digits(&mut written[11..13], at.hour());
    digits(&mut written[14..16], at.minute());
    digits(&mut written[17..19], at.second());
    // As chrono's `AutoSi`: no fraction when zero, else milli-, micro- or nanoseconds.
    let end = match nanos {
        0 => 19,
        _ if nanos.is_multiple_of(1_000_000) => {
            digits(&mut written[20..23], nanos / 1_000_000);
            23
        }
        _ if nanos.is_multiple_of(1_000) => {
            digits(&mut written[20..26], nanos / 1_000);
            26
        }
        _ => {
            digits(&mut written[20..29], nanos);
            29
        }
    };
    out.extend_from_slice(&written[..end]);
    out.push(b'Z');
}

/// Writes `value` into `slot`, in as many decimal digits as it has room for.
fn digits(slot: &mut [u8], mut value: u32) {
    for digit in slot.iter_mut().rev() {
        // Below 10.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
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
    fn every_kind_of_time_is_written_as_chrono_writes_it() {
        // 20,000 times spread over the years 0-10,000, with every length of fraction.
        let (first, span): (i64, i64) = (-62_167_219_200, 253_402_300_800 + 86_400 * 366);
        let mut state: i64 = 12_345;
        for _ in 0..20_000 {
            state = (state * 1_103_515_245 + 12_345) % 2_147_483_648;
            let seconds = first + (state * 1_000_003) % span;
            for nanos in [0, 5_000_000, 120_000_000, 999_000, 1_000, 123_456_789, 7] {
                let at = DateTime::from_timestamp(seconds, nanos).expect("valid time");
                assert_eq!(
                    format(at),
                    at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    "{seconds} s {nanos} ns"
                );
            }
        }
        let before_year_zero = DateTime::from_timestamp(-62_167_219_201, 0).expect("valid time");
        assert_eq!(
            format(before_year_zero),
            before_year_zero.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
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
