//! Service names and instance ids: parsed once at the edge so the rest of the code can
//! trust them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A service name: a DNS label (`[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`), so it can double as a
/// Kubernetes Service name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// The longest name.
    pub const MAX_LEN: usize = 63;

    /// Whether a name may hold `byte` (where it may stand is [`Self::parse`]'s to say).
    pub fn allows(byte: u8) -> bool {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-'
    }

    /// Checks `raw` against the DNS label rules.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bytes = raw.as_bytes();
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err("must be 1 to 63 characters".into());
        }
        if !bytes.iter().all(|&b| Self::allows(b)) {
            return Err("may contain only lowercase letters, digits and '-'".into());
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err("must start and end with a letter or digit".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance id: 1-128 of `[A-Za-z0-9._-]`, so pod names fit; `.` and `..` are refused
/// because they would be path segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// Checks `raw` against the instance id rules.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > 128 {
            return Err("must be 1 to 128 characters".into());
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
        if !raw.bytes().all(allowed) {
            return Err("may contain only letters, digits, '.', '_' and '-'".into());
        }
        if raw == "." || raw == ".." {
            return Err("must not be '.' or '..'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// Makes an id out of any text by replacing what is not allowed with `-` (used for the
    /// `<host>-<port>` ids of seed registrations).
    pub fn sanitized(raw: &str) -> Result<Self, String> {
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(128)
            .collect();
        Self::parse(&cleaned)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Text that is not a valid name does not deserialize into one.
macro_rules! text_conversions {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(raw: String) -> Result<Self, String> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }
    };
}
text_conversions!(ServiceName);
text_conversions!(InstanceId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_dns_label_rules() {
        for ok in ["a", "sum", "my-service", "a1", "0", &"a".repeat(63)] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "é",
            &"a".repeat(64),
            "a b",
        ] {
            assert!(ServiceName::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn instance_ids_fit_pod_names_and_refuse_dot_segments() {
        for ok in ["a", "sum-7d9f8-xk2p", "Host_1.local", "-", &"x".repeat(128)] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", &"x".repeat(129)] {
            assert!(InstanceId::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn names_serialize_as_text_and_refuse_invalid_text() {
        let name: ServiceName = serde_json::from_str("\"sum\"").expect("valid");
        assert_eq!(serde_json::to_string(&name).expect("text"), "\"sum\"");
        assert!(serde_json::from_str::<ServiceName>("\"Sum\"").is_err());
        assert!(serde_json::from_str::<InstanceId>("\"a/b\"").is_err());
    }

    #[test]
    fn sanitized_replaces_forbidden_characters() {
        assert_eq!(
            InstanceId::sanitized("[::1]-80").map(|i| i.0),
            Ok("---1--80".into())
        );
        assert_eq!(
            InstanceId::sanitized("localhost-4040").map(|i| i.0),
            Ok("localhost-4040".into())
        );
    }
}
