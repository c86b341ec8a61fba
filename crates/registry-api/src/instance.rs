//! Instances: the registration body (`InstanceSpec`), its validation, and the instance as
//! the API answers it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;
use utoipa::ToSchema;

use crate::{FieldError, InstanceId, ServiceName};

/// Limits of the API (docs/api.md, Limits), in one place so the docs, the validation and
/// the tests agree.
pub mod limits {
    pub const MAX_URL_BYTES: usize = 2048;
    pub const MAX_TAGS: usize = 64;
    pub const MAX_TAG_CHARS: usize = 128;
    pub const MAX_METADATA_PAIRS: usize = 64;
    pub const MAX_METADATA_KEY_CHARS: usize = 128;
    pub const MAX_METADATA_VALUE_CHARS: usize = 512;
    pub const MAX_TTL_SECONDS: u32 = 86_400;
    pub const MAX_CHECK_PATH_BYTES: usize = 1024;
    pub const MAX_INTERVAL_SECONDS: u32 = 3_600;
    pub const DEFAULT_INTERVAL_SECONDS: u32 = 5;
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 2;
    pub const MAX_EXPECT_JSON_PAIRS: usize = 16;
    /// Longest `deregister_critical_after`: 365 days.
    pub const MAX_REAP_SECONDS: u64 = 365 * 86_400;
}

/// Health of an instance, from best to worst; `maintenance` is set by the operator.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Maintenance => "maintenance",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            "maintenance" => Some(Self::Maintenance),
            _ => None,
        }
    }
}

/// The body of `PUT /v1/services/{service}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Where the instance is reachable: absolute http(s) URL without user info.
    pub url: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lease length; the registry's default when omitted; 0 means no lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// Remove this instance once it has been critical this long (a duration like `90m`);
    /// the registry's `REGISTRY_DEREGISTER_CRITICAL_AFTER` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<String>,
    /// The status a NEW instance starts in (`passing`, `warning` or `critical`): with a
    /// check, the check's verdict until it first runs; otherwise the status reported with
    /// the lease. Ignored when the instance exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<Status>,
}

/// Checks a whole metadata map against the limits (docs/api.md, Limits): every writer of
/// metadata (a registration, Eureka's metadata update) goes through it.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if metadata.len() > limits::MAX_METADATA_PAIRS {
        return Err(FieldError::new(
            "metadata",
            format!("at most {} pairs", limits::MAX_METADATA_PAIRS),
        ));
    }
    for (key, value) in metadata {
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars > limits::MAX_METADATA_KEY_CHARS {
            return Err(FieldError::new(
                "metadata",
                format!(
                    "keys must be 1 to {} characters",
                    limits::MAX_METADATA_KEY_CHARS
                ),
            ));
        }
        if has_control(key) {
            return Err(FieldError::new("metadata", format!("keys: {NO_CONTROL}")));
        }
        if has_control(value) {
            return Err(FieldError::new(format!("metadata.{key}"), NO_CONTROL));
        }
        if value.chars().count() > limits::MAX_METADATA_VALUE_CHARS {
            return Err(FieldError::new(
                format!("metadata.{key}"),
                format!(
                    "must be at most {} characters",
                    limits::MAX_METADATA_VALUE_CHARS
                ),
            ));
        }
    }
    Ok(())
}

impl InstanceSpec {
    /// A spec with only a URL, everything else at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            ttl_seconds: None,
            check: None,
            deregister_critical_after: None,
            initial_status: None,
        }
    }
}

/// An active check, as sent by the client: exactly one of `http` and `tcp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Path (optionally with a query) that replaces the path of the instance's own URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// `host:port` to open a TCP connection to (passes when it opens); the host must be
    /// the instance URL's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// When set, a 2xx answer passes only if its body is a JSON object whose listed
    /// top-level fields have these string values (the seed's `{"status":"ok"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_json: Option<BTreeMap<String, String>>,
}

/// A check with its defaults filled in, as the registry runs it and answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_json: Option<BTreeMap<String, String>>,
}

impl Check {
    /// The URL an HTTP check calls: the instance's URL with its path (and query)
    /// replaced. `None` for a TCP check, or if that would leave the instance's own host,
    /// which validation prevents.
    pub fn target(&self, instance_url: &str) -> Option<Url> {
        let base = Url::parse(instance_url).ok()?;
        let joined = base.join(self.http.as_deref()?).ok()?;
        let same_origin = joined.scheme() == base.scheme()
            && joined.host() == base.host()
            && joined.port_or_known_default() == base.port_or_known_default();
        same_origin.then_some(joined)
    }
}

/// The outcome of the latest active check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    #[serde(serialize_with = "crate::time::serialize")]
    pub at: DateTime<Utc>,
    pub status: Status,
    /// What happened, e.g. `HTTP 200`, `timed out after 2s`.
    pub detail: String,
}

/// An instance as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub url: String,
    pub status: Status,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: u32,
    pub check: Option<Check>,
    #[serde(serialize_with = "crate::time::serialize")]
    pub registered_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::time::serialize")]
    pub last_heartbeat_at: DateTime<Utc>,
    /// `null` when the instance has no lease (`ttl_seconds: 0`).
    #[serde(serialize_with = "crate::time::serialize_option")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::time::serialize")]
    pub status_changed_at: DateTime<Utc>,
    pub last_check: Option<CheckResult>,
    /// The instance's own reaping time, when it set one (`deregister_critical_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<String>,
    /// The status the instance reported with its lease (`initial_status`, or a Consul TTL
    /// check's `warn`/`fail`), until its next heartbeat; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_status: Option<Status>,
    /// The note the instance reported with its lease (a Consul TTL check's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_output: Option<String>,
    /// Why the instance is in maintenance, when it was said; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_reason: Option<String>,
    /// The lease ran out while the registry was in self-preservation: the lapse is held,
    /// the status kept (docs/operations.md, Self-preservation). Shown only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease_held: bool,
}

/// The body of `PUT .../status`: `maintenance` to drain, `passing` to clear it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: Status,
    /// With `maintenance`: why, shown as `maintenance_reason` while it lasts (at most 512
    /// characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A registration that passed validation, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub service: ServiceName,
    pub id: InstanceId,
    pub url: String,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: u32,
    pub check: Option<Check>,
    /// Seconds; `None`: the registry's setting.
    pub deregister_critical_after: Option<u64>,
    pub initial_status: Option<Status>,
}

impl InstanceSpec {
    /// Checks every limit (docs/api.md, Limits); the error names the dotted body path.
    pub fn validate(
        self,
        service: ServiceName,
        id: InstanceId,
        default_ttl_seconds: u32,
    ) -> Result<Validated, FieldError> {
        validate_url(&self.url).map_err(|m| FieldError::new("url", m))?;
        if self.tags.len() > limits::MAX_TAGS {
            return Err(FieldError::new(
                "tags",
                format!("at most {} tags", limits::MAX_TAGS),
            ));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            let chars = tag.chars().count();
            if chars == 0 || chars > limits::MAX_TAG_CHARS {
                return Err(FieldError::new(
                    format!("tags.{i}"),
                    format!("must be 1 to {} characters", limits::MAX_TAG_CHARS),
                ));
            }
            if has_control(tag) {
                return Err(FieldError::new(format!("tags.{i}"), NO_CONTROL));
            }
        }
        validate_metadata(&self.metadata)?;
        let ttl_seconds = self.ttl_seconds.unwrap_or(default_ttl_seconds);
        if ttl_seconds > limits::MAX_TTL_SECONDS {
            return Err(FieldError::new(
                "ttl_seconds",
                format!("must be 0 to {}", limits::MAX_TTL_SECONDS),
            ));
        }
        let host = validate_url(&self.url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        let check = self
            .check
            .map(|check| validate_check(check, &host))
            .transpose()?;
        let deregister_critical_after = self
            .deregister_critical_after
            .as_deref()
            .map(|raw| {
                crate::parse_duration(raw)
                    .ok()
                    .filter(|d| d.subsec_nanos() == 0 && d.as_secs() <= limits::MAX_REAP_SECONDS)
                    .map(|d| d.as_secs())
                    .ok_or_else(|| {
                        FieldError::new(
                            "deregister_critical_after",
                            "must be whole seconds like 90s or 10m, at most 365d (0 = never)",
                        )
                    })
            })
            .transpose()?;
        if self.initial_status == Some(Status::Maintenance) {
            return Err(FieldError::new(
                "initial_status",
                "must be passing, warning or critical (maintenance is set with PUT .../status)",
            ));
        }
        // The URL is kept as given: clients append paths to it as they sent it.
        Ok(Validated {
            service,
            id,
            url: self.url,
            tags: self.tags,
            metadata: self.metadata,
            ttl_seconds,
            check,
            deregister_critical_after,
            initial_status: self.initial_status,
        })
    }
}

/// Control characters (NUL, newlines, escapes) are refused in every stored string: they
/// break logs and terminals, and Postgres cannot store NUL in JSON.
const NO_CONTROL: &str = "must not contain control characters";

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// [`validate_url`] as a regular expression (the OpenAPI document states it): `http://` or
/// `https://`; a host that is a name (labels of letters, digits and `-`, the last one
/// starting with a letter: a name ending in a number would be read as an IPv4 address),
/// an IPv4 address, or an IPv6 address in brackets (hex groups, no embedded IPv4); an
/// optional port up to 65535; then a path, query or fragment without spaces or control
/// characters (those of Rust's `char::is_control` and `char::is_whitespace`, as a class
/// that JSON Schema, Python and the `regex` crate read alike).
pub const URL_PATTERN: &str = concat!(
    r"^https?://(",
    r"([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*",
    r"|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    r"|\[(",
    r"([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,7}:",
    r"|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}",
    r"|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}",
    r"|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}",
    r"|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}",
    r"|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}",
    r"|:((:[0-9A-Fa-f]{1,4}){1,7}|:)",
    r")\]",
    r")(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?",
    r"([/?#][^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*)?$",
);

/// An absolute http(s) URL with a host and no user info, at most 2048 bytes, as
/// [`URL_PATTERN`] states it (checked here by hand, then parsed).
pub fn validate_url(raw: &str) -> Result<Url, String> {
    if raw.len() > limits::MAX_URL_BYTES {
        return Err(format!("must be at most {} bytes", limits::MAX_URL_BYTES));
    }
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // The URL is stored as given, and the parser would silently drop such characters.
        return Err("must not contain spaces or control characters".into());
    }
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or("must be an absolute URL starting with http:// or https://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err("must not contain user info".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.starts_with('[') || host.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    if !is_url_host(host) {
        return Err(
            "must have a host: a name whose last label starts with a letter, an IPv4 address or a bracketed IPv6 address".into(),
        );
    }
    if let Some(port) = port {
        let digits_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        let in_range = port.len() <= 4
            || (port.len() == 5
                && !port.starts_with('0')
                && port.parse::<u32>().is_ok_and(|p| p <= 65_535));
        if !(digits_ok && in_range) {
            return Err("must have a port from 0 to 65535".into());
        }
    }
    let url = Url::parse(raw).map_err(|e| format!("is not an absolute URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    Ok(url)
}

/// The host rule of [`URL_PATTERN`].
fn is_url_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.contains('.') && inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let is_octet = |part: &str| {
        !part.is_empty()
            && part.len() <= 3
            && part.bytes().all(|b| b.is_ascii_digit())
            && (part == "0" || !part.starts_with('0'))
            && part.parse::<u16>().is_ok_and(|n| n <= 255)
    };
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() == 4 && parts.iter().all(|p| is_octet(p)) {
        return true;
    }
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    parts.iter().all(label_ok)
        && parts
            .last()
            .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// A check is HTTP (`http`, a path on the instance's own URL) or TCP (`tcp`, a port of
/// the instance's own host, `instance_host`): either way it cannot reach another host.
fn validate_check(spec: CheckSpec, instance_host: &str) -> Result<Check, FieldError> {
    match (&spec.http, &spec.tcp) {
        (Some(path), None) => {
            let path_ok = path.starts_with('/')
                && !path.starts_with("//")
                && path.len() <= limits::MAX_CHECK_PATH_BYTES
                && !path
                    .chars()
                    .any(|c| c == '\\' || c == '#' || c.is_whitespace() || c.is_control());
            if !path_ok {
                return Err(FieldError::new(
                    "check.http",
                    "must be a path starting with '/' (not '//'), without spaces, '\\' or '#'",
                ));
            }
        }
        (None, Some(address)) => {
            let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let same_host = host
                .eq_ignore_ascii_case(instance_host.trim_start_matches('[').trim_end_matches(']'));
            if !same_host || port.parse::<u16>().is_err() {
                return Err(FieldError::new(
                    "check.tcp",
                    "must be host:port with the instance URL's own host and a port from 0 to 65535",
                ));
            }
        }
        _ => {
            return Err(FieldError::new(
                "check",
                "must have exactly one of http (a path) and tcp (host:port)",
            ));
        }
    }
    let interval = spec
        .interval_seconds
        .unwrap_or(limits::DEFAULT_INTERVAL_SECONDS);
    if !(1..=limits::MAX_INTERVAL_SECONDS).contains(&interval) {
        return Err(FieldError::new(
            "check.interval_seconds",
            format!("must be 1 to {}", limits::MAX_INTERVAL_SECONDS),
        ));
    }
    let timeout = spec
        .timeout_seconds
        .unwrap_or(limits::DEFAULT_TIMEOUT_SECONDS.min(interval));
    if !(1..=interval).contains(&timeout) {
        return Err(FieldError::new(
            "check.timeout_seconds",
            "must be 1 to the check interval",
        ));
    }
    if let Some(expect) = &spec.expect_json {
        if expect.is_empty() || expect.len() > limits::MAX_EXPECT_JSON_PAIRS {
            return Err(FieldError::new(
                "check.expect_json",
                format!("must have 1 to {} pairs", limits::MAX_EXPECT_JSON_PAIRS),
            ));
        }
        let too_long = expect.iter().any(|(k, v)| {
            has_control(k)
                || has_control(v)
                || k.is_empty()
                || k.chars().count() > limits::MAX_METADATA_KEY_CHARS
                || v.chars().count() > limits::MAX_METADATA_VALUE_CHARS
        });
        if too_long {
            return Err(FieldError::new(
                "check.expect_json",
                "keys must be 1 to 128 characters and values at most 512, without control characters",
            ));
        }
    }
    Ok(Check {
        http: spec.http,
        tcp: spec.tcp,
        interval_seconds: interval,
        timeout_seconds: timeout,
        expect_json: spec.expect_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(spec: InstanceSpec) -> Result<Validated, FieldError> {
        let service = ServiceName::parse("sum").expect("valid");
        let id = InstanceId::parse("a").expect("valid");
        spec.validate(service, id, 10)
    }

    fn field_of(spec: InstanceSpec) -> String {
        validate(spec).expect_err("should be refused").field
    }

    #[test]
    fn defaults_are_filled_in() {
        let mut spec = InstanceSpec::new("http://10.0.0.1:4040");
        spec.check = Some(CheckSpec {
            http: Some("/status".into()),
            tcp: None,
            interval_seconds: None,
            timeout_seconds: None,
            expect_json: None,
        });
        let v = validate(spec).expect("valid");
        assert_eq!(v.ttl_seconds, 10);
        let check = v.check.expect("check");
        assert_eq!((check.interval_seconds, check.timeout_seconds), (5, 2));
    }

    #[test]
    fn urls_must_be_absolute_http_without_userinfo() {
        for bad in [
            "",
            "not a url",
            "/relative",
            "ftp://host/",
            "http://user:pw@host/",
            "http://user@host/",
            "file:///etc/passwd",
        ] {
            assert_eq!(field_of(InstanceSpec::new(bad)), "url", "{bad}");
        }
        let long = format!("http://host/{}", "a".repeat(2048));
        assert_eq!(field_of(InstanceSpec::new(long)), "url");
        assert!(validate(InstanceSpec::new("https://[::1]:8443/api")).is_ok());
    }

    #[test]
    fn limits_name_their_field() {
        let mut spec = InstanceSpec::new("http://h");
        spec.tags = vec!["x".into(); 65];
        assert_eq!(field_of(spec), "tags");

        let mut spec = InstanceSpec::new("http://h");
        spec.tags = vec!["ok".into(), String::new()];
        assert_eq!(field_of(spec), "tags.1");

        let mut spec = InstanceSpec::new("http://h");
        spec.metadata.insert("k".into(), "v".repeat(513));
        assert_eq!(field_of(spec), "metadata.k");

        let mut spec = InstanceSpec::new("http://h");
        spec.ttl_seconds = Some(86_401);
        assert_eq!(field_of(spec), "ttl_seconds");
    }

    #[test]
    fn control_characters_are_refused_everywhere() {
        assert_eq!(field_of(InstanceSpec::new("http://h/\u{0}")), "url");
        assert_eq!(field_of(InstanceSpec::new("http://h/a\tb")), "url");
        assert_eq!(field_of(InstanceSpec::new("http://h/a b")), "url");
        let mut spec = InstanceSpec::new("http://h");
        spec.tags = vec!["a\u{0}b".into()];
        assert_eq!(field_of(spec), "tags.0");
        let mut spec = InstanceSpec::new("http://h");
        spec.metadata.insert("k".into(), "line\nbreak".into());
        assert_eq!(field_of(spec), "metadata.k");
        let mut spec = InstanceSpec::new("http://h");
        spec.metadata.insert("k\u{1b}".into(), "v".into());
        assert_eq!(field_of(spec), "metadata");
    }

    #[test]
    fn check_limits_name_their_field() {
        let check = |http: &str, interval, timeout| {
            let mut spec = InstanceSpec::new("http://h");
            spec.check = Some(CheckSpec {
                http: Some(http.into()),
                tcp: None,
                interval_seconds: interval,
                timeout_seconds: timeout,
                expect_json: None,
            });
            validate(spec)
        };
        for bad in ["status", "//evil.example/x", "/\\evil", "/a b", ""] {
            assert_eq!(
                check(bad, None, None).expect_err(bad).field,
                "check.http",
                "{bad}"
            );
        }
        let err = check("/s", Some(0), None).expect_err("interval 0");
        assert_eq!(err.field, "check.interval_seconds");
        let err = check("/s", Some(3), Some(4)).expect_err("timeout > interval");
        assert_eq!(err.field, "check.timeout_seconds");
        assert_eq!(
            check("/s", Some(1), None)
                .expect("valid")
                .check
                .map(|c| c.timeout_seconds),
            Some(1)
        );
    }

    #[test]
    fn a_tcp_check_stays_on_the_instance_host_and_excludes_http() {
        let check = |url: &str, http: Option<&str>, tcp: Option<&str>| {
            let mut spec = InstanceSpec::new(url);
            spec.check = Some(CheckSpec {
                http: http.map(str::to_owned),
                tcp: tcp.map(str::to_owned),
                interval_seconds: None,
                timeout_seconds: None,
                expect_json: None,
            });
            validate(spec)
        };
        let ok = check("http://10.0.0.1:4040", None, Some("10.0.0.1:5432")).expect("valid");
        assert_eq!(
            ok.check.and_then(|c| c.tcp).as_deref(),
            Some("10.0.0.1:5432")
        );
        assert!(check("http://[::1]:4040", None, Some("[::1]:22")).is_ok());
        for (url, tcp) in [
            ("http://10.0.0.1:4040", "10.0.0.2:5432"),
            ("http://10.0.0.1:4040", "10.0.0.1"),
            ("http://10.0.0.1:4040", "10.0.0.1:99999"),
        ] {
            assert_eq!(
                check(url, None, Some(tcp)).expect_err(tcp).field,
                "check.tcp"
            );
        }
        assert_eq!(
            check("http://h", None, None).expect_err("none").field,
            "check"
        );
        assert_eq!(
            check("http://h", Some("/s"), Some("h:1"))
                .expect_err("both")
                .field,
            "check"
        );
    }

    #[test]
    fn reap_time_and_initial_status_are_checked() {
        let mut spec = InstanceSpec::new("http://h");
        spec.deregister_critical_after = Some("90m".into());
        spec.initial_status = Some(Status::Critical);
        let v = validate(spec).expect("valid");
        assert_eq!(v.deregister_critical_after, Some(5_400));
        assert_eq!(v.initial_status, Some(Status::Critical));
        let mut spec = InstanceSpec::new("http://h");
        spec.deregister_critical_after = Some("soon".into());
        assert_eq!(field_of(spec), "deregister_critical_after");
        let mut spec = InstanceSpec::new("http://h");
        spec.initial_status = Some(Status::Maintenance);
        assert_eq!(field_of(spec), "initial_status");
    }

    #[test]
    fn check_target_keeps_the_instance_origin() {
        let check = Check {
            http: Some("/status?deep=1".into()),
            tcp: None,
            interval_seconds: 5,
            timeout_seconds: 2,
            expect_json: None,
        };
        let target = check
            .target("http://10.1.2.3:4040/api/v1")
            .expect("same origin");
        assert_eq!(target.as_str(), "http://10.1.2.3:4040/status?deep=1");
    }

    #[test]
    fn status_parses_its_own_names() {
        for s in [
            Status::Passing,
            Status::Warning,
            Status::Critical,
            Status::Maintenance,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("ok"), None);
    }
}
