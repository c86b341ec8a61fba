//! Consul's wire format read the way Consul reads it: body keys matched ignoring case and
//! underscores, Go durations (`10s`, `120000ms`, `1h30m`), Go booleans (`strconv.ParseBool`),
//! and a service registration mapped onto our [`InstanceSpec`] (docs/consul.md, Mapping).
//!
//! Everything here is pure, so each decision is unit-tested without a server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use registry_api::{CheckSpec, InstanceId, InstanceSpec, ServiceName, Status, limits};
use serde_json::{Map, Value};

use crate::http::error::BadBody;

type Parsed<T> = Result<T, BadBody>;

/// `strconv.ParseBool`: what Go clients and servers accept as a boolean.
pub fn parse_go_bool(raw: &str) -> Option<bool> {
    match raw {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `time.ParseDuration` for non-negative durations: a sequence of decimal numbers, each
/// with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `300ms`, `1.5h`, `2h45m`;
/// `0` alone needs no unit.
pub fn parse_go_duration(raw: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration \"{raw}\" (use a Go duration like 10s, 1500ms or 1m30s)");
    let mut rest = raw.strip_prefix('+').unwrap_or(raw);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += value * nanos_per_unit;
    }
    // Go's own bound: about 292 years.
    if !total.is_finite() || total > 9.2e18 {
        return Err(bad());
    }
    // Whole nanoseconds by construction, and bounded above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Duration::from_nanos(total as u64))
}

/// A key as Consul matches it: lower case, without underscores.
fn normalized(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// An object's keys normalized (the first spelling of a key wins, as Go's decoder keeps
/// one). Only the keys of Consul's own structures: `Meta` keys are the user's, kept as sent.
fn fields(value: Value, what: &str) -> Parsed<BTreeMap<String, Value>> {
    let Value::Object(object) = value else {
        return Err(BadBody::new(format!(
            "Request decode failed: {what} must be a JSON object"
        )));
    };
    let mut out = BTreeMap::new();
    for (key, value) in object {
        out.entry(normalized(&key)).or_insert(value);
    }
    Ok(out)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

fn string(value: Option<Value>, field: &str) -> Parsed<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(BadBody::new(format!(
            "Request decode failed: {field} must be a string, not {}",
            kind(&other)
        ))),
    }
}

fn duration(value: Option<Value>, field: &str) -> Parsed<Option<Duration>> {
    match string(value, field)? {
        None => Ok(None),
        Some(raw) if raw.is_empty() => Ok(None),
        Some(raw) => parse_go_duration(&raw)
            .map(Some)
            .map_err(|m| BadBody::new(format!("Request decode failed: {field}: {m}"))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A check of a registration, as Consul describes it (`CheckType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckDef {
    /// `TTL`: the instance reports itself within the TTL.
    Ttl {
        ttl: Duration,
        status: Option<String>,
        check_id: Option<String>,
        deregister_after: Option<Duration>,
    },
    /// `HTTP`: the registry calls the URL every `Interval`.
    Http {
        url: String,
        interval: Duration,
        timeout: Option<Duration>,
        status: Option<String>,
        check_id: Option<String>,
        deregister_after: Option<Duration>,
    },
    /// `TCP`: the registry opens a connection to `host:port` every `Interval`.
    Tcp {
        target: String,
        interval: Duration,
        timeout: Option<Duration>,
        status: Option<String>,
        check_id: Option<String>,
        deregister_after: Option<Duration>,
    },
}

impl CheckDef {
    fn common(&self) -> (&Option<String>, &Option<String>, &Option<Duration>) {
        match self {
            Self::Ttl {
                status,
                check_id,
                deregister_after,
                ..
            }
            | Self::Http {
                status,
                check_id,
                deregister_after,
                ..
            }
            | Self::Tcp {
                status,
                check_id,
                deregister_after,
                ..
            } => (status, check_id, deregister_after),
        }
    }
}

/// Check kinds Consul has and this registry does not run, by their normalized key.
const UNSUPPORTED_CHECK_KINDS: [(&str, &str); 9] = [
    ("script", "Script"),
    ("args", "Args (script)"),
    ("grpc", "GRPC"),
    ("h2ping", "H2PING"),
    ("udp", "UDP"),
    ("dockercontainerid", "Docker"),
    ("aliasnode", "Alias"),
    ("aliasservice", "Alias"),
    ("osservice", "OSService"),
];

fn check_def(value: Value, at: &str) -> Parsed<CheckDef> {
    let mut f = fields(value, at)?;
    for (key, name) in UNSUPPORTED_CHECK_KINDS {
        if f.get(key).is_some_and(|v| !is_empty(v)) {
            return Err(BadBody::new(format!(
                "{at}: {name} checks are not supported by this registry (use a TTL, HTTP or TCP check)"
            )));
        }
    }
    for (key, name) in [("header", "Header"), ("body", "Body")] {
        if f.get(key).is_some_and(|v| !is_empty(v)) {
            return Err(BadBody::new(format!(
                "{at}: HTTP check {name} is not supported by this registry"
            )));
        }
    }
    if let Some(method) = string(f.remove("method"), &format!("{at}.Method"))?
        && !method.is_empty()
        && !method.eq_ignore_ascii_case("GET")
    {
        return Err(BadBody::new(format!(
            "{at}: HTTP checks use GET; Method {method} is not supported by this registry"
        )));
    }
    let status = string(f.remove("status"), &format!("{at}.Status"))?.filter(|s| !s.is_empty());
    if let Some(status) = &status
        && !matches!(status.as_str(), "passing" | "warning" | "critical")
    {
        return Err(BadBody::new(format!(
            "{at}.Status: \"{status}\" is not a check status (passing, warning or critical)"
        )));
    }
    let check_id = string(f.remove("checkid"), &format!("{at}.CheckID"))?
        .or(string(f.remove("id"), &format!("{at}.ID"))?)
        .filter(|s| !s.is_empty());
    let deregister_after = duration(
        f.remove("deregistercriticalserviceafter"),
        &format!("{at}.DeregisterCriticalServiceAfter"),
    )?;
    let ttl = duration(f.remove("ttl"), &format!("{at}.TTL"))?;
    let http = string(f.remove("http"), &format!("{at}.HTTP"))?.filter(|s| !s.is_empty());
    let tcp = string(f.remove("tcp"), &format!("{at}.TCP"))?.filter(|s| !s.is_empty());
    let interval = duration(f.remove("interval"), &format!("{at}.Interval"))?;
    let timeout = duration(f.remove("timeout"), &format!("{at}.Timeout"))?;
    let kinds =
        usize::from(ttl.is_some()) + usize::from(http.is_some()) + usize::from(tcp.is_some());
    if kinds > 1 {
        return Err(BadBody::new(format!(
            "{at}: a check has exactly one of TTL, HTTP or TCP"
        )));
    }
    let needs_interval = |kind: &str| -> Parsed<Duration> {
        match interval {
            Some(interval) if !interval.is_zero() => Ok(interval),
            _ => Err(BadBody::new(format!(
                "{at}: Interval is required for an {kind} check"
            ))),
        }
    };
    if let Some(ttl) = ttl {
        if ttl.is_zero() {
            return Err(BadBody::new(format!("{at}.TTL must be more than 0s")));
        }
        Ok(CheckDef::Ttl {
            ttl,
            status,
            check_id,
            deregister_after,
        })
    } else if let Some(url) = http {
        Ok(CheckDef::Http {
            interval: needs_interval("HTTP")?,
            url,
            timeout,
            status,
            check_id,
            deregister_after,
        })
    } else if let Some(target) = tcp {
        Ok(CheckDef::Tcp {
            interval: needs_interval("TCP")?,
            target,
            timeout,
            status,
            check_id,
            deregister_after,
        })
    } else {
        Err(BadBody::new(format!(
            "{at}: a check needs one of TTL, HTTP or TCP (other kinds are not supported by this registry)"
        )))
    }
}

/// The body of `PUT /v1/agent/service/register`, as Consul reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub id: Option<String>,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub checks: Vec<CheckDef>,
}

/// Parses a registration body (keys in any case, with or without underscores).
pub fn parse_service(bytes: &[u8]) -> Parsed<ServiceDef> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| BadBody::new(format!("Request decode failed: {e}")))?;
    let mut f = fields(value, "the body")?;
    for (key, name) in [
        ("kind", "Kind (proxies and gateways)"),
        ("proxy", "Proxy"),
        ("connect", "Connect"),
        ("socketpath", "SocketPath"),
    ] {
        if f.get(key).is_some_and(|v| !is_empty(v)) {
            return Err(BadBody::new(format!(
                "{name} is not supported by this registry (service discovery only)"
            )));
        }
    }
    let name = string(f.remove("name"), "Name")?.unwrap_or_default();
    if name.is_empty() {
        return Err(BadBody::new("Missing service name"));
    }
    let id = string(f.remove("id"), "ID")?.filter(|s| !s.is_empty());
    let address = string(f.remove("address"), "Address")?.unwrap_or_default();
    let port = match f.remove("port") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| BadBody::new(format!("Port must be 0 to 65535, not {n}")))?,
        Some(other) => {
            return Err(BadBody::new(format!(
                "Request decode failed: Port must be a number, not {}",
                kind(&other)
            )));
        }
    };
    let tags = match f.remove("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, tag)| match tag {
                Value::String(s) => Ok(s),
                other => Err(BadBody::new(format!(
                    "Request decode failed: Tags[{i}] must be a string, not {}",
                    kind(&other)
                ))),
            })
            .collect::<Parsed<_>>()?,
        Some(other) => {
            return Err(BadBody::new(format!(
                "Request decode failed: Tags must be a list of strings, not {}",
                kind(&other)
            )));
        }
    };
    let meta = match f.remove("meta") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(pairs)) => meta(pairs)?,
        Some(other) => {
            return Err(BadBody::new(format!(
                "Request decode failed: Meta must be an object of strings, not {}",
                kind(&other)
            )));
        }
    };
    let mut checks = Vec::new();
    match f.remove("check") {
        None | Some(Value::Null) => {}
        Some(check) if is_empty(&check) => {}
        Some(check) => checks.push(check_def(check, "Check")?),
    }
    match f.remove("checks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, check) in list.into_iter().enumerate() {
                checks.push(check_def(check, &format!("Checks[{i}]"))?);
            }
        }
        Some(other) => {
            return Err(BadBody::new(format!(
                "Request decode failed: Checks must be a list, not {}",
                kind(&other)
            )));
        }
    }
    Ok(ServiceDef {
        name,
        id,
        address,
        port,
        tags,
        meta,
        checks,
    })
}

fn meta(pairs: Map<String, Value>) -> Parsed<BTreeMap<String, String>> {
    pairs
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => Ok((key, s)),
            other => Err(BadBody::new(format!(
                "Request decode failed: Meta[{key}] must be a string, not {}",
                kind(&other)
            ))),
        })
        .collect()
}

/// The body of `PUT /v1/agent/check/update/{check_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckUpdate {
    pub status: String,
    pub output: String,
}

pub fn parse_check_update(bytes: &[u8]) -> Parsed<CheckUpdate> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| BadBody::new(format!("Request decode failed: {e}")))?;
    let mut f = fields(value, "the body")?;
    let status = string(f.remove("status"), "Status")?.unwrap_or_default();
    if !matches!(status.as_str(), "passing" | "warning" | "critical") {
        return Err(BadBody::new(format!(
            "Invalid check status: \"{status}\" (passing, warning or critical)"
        )));
    }
    let output = string(f.remove("output"), "Output")?.unwrap_or_default();
    Ok(CheckUpdate { status, output })
}

/// Whole seconds, rounded up (our model counts in seconds; 500ms is 1s).
fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn seconds_u32(duration: Duration, field: &str, max: u32) -> Parsed<u32> {
    u32::try_from(ceil_seconds(duration))
        .ok()
        .filter(|s| *s <= max)
        .ok_or_else(|| BadBody::new(format!("{field} must be at most {max}s")))
}

/// A registration mapped onto the model (docs/consul.md, Mapping).
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub service: ServiceName,
    pub id: InstanceId,
    pub spec: InstanceSpec,
}

/// The host of an address as it goes into a URL (IPv6 in brackets).
fn url_host(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => address.to_owned(),
    }
}

/// The check ids of an instance, in Consul's scheme: `service:<ID>` for one check,
/// `service:<ID>:<n>` (from 1) for several.
pub fn check_ids(id: &str, count: usize) -> Vec<String> {
    if count == 1 {
        vec![format!("service:{id}")]
    } else {
        (1..=count).map(|n| format!("service:{id}:{n}")).collect()
    }
}

/// Maps a parsed registration onto our model. `peer` is the registering client's address,
/// the instance's address when the body gives none.
pub fn map_service(def: ServiceDef, peer: Option<IpAddr>) -> Parsed<Mapped> {
    let service = ServiceName::parse(&def.name).map_err(|m| {
        BadBody::new(format!(
            "Invalid service name \"{}\": a service name {m} (a DNS label: lowercase letters, digits and '-')",
            def.name
        ))
    })?;
    let raw_id = def.id.clone().unwrap_or_else(|| def.name.clone());
    let id = InstanceId::parse(&raw_id).map_err(|m| {
        BadBody::new(format!(
            "Invalid service ID \"{raw_id}\": an instance id {m}"
        ))
    })?;
    let address = if def.address.is_empty() {
        peer.map(|p| p.to_string()).ok_or_else(|| {
            BadBody::new("Address is empty and the client's address is unknown: give an Address")
        })?
    } else {
        def.address.clone()
    };
    let url = if def.port == 0 {
        format!("http://{}", url_host(&address))
    } else {
        format!("http://{}:{}", url_host(&address), def.port)
    };
    let instance_url = registry_api::validate_url(&url)
        .map_err(|m| BadBody::new(format!("Invalid Address \"{address}\": the URL {url} {m}")))?;

    let mut ttl = None;
    let mut active = None;
    for check in &def.checks {
        let slot = match check {
            CheckDef::Ttl { .. } => &mut ttl,
            CheckDef::Http { .. } | CheckDef::Tcp { .. } => &mut active,
        };
        if slot.replace(check).is_some() {
            return Err(BadBody::new(
                "at most one TTL check and one HTTP or TCP check per service are supported by this registry",
            ));
        }
    }
    let ids = check_ids(raw_id.as_str(), def.checks.len());
    // Ours come out TTL first: a client naming its check must find it under that id.
    let ordered: Vec<&CheckDef> = ttl.into_iter().chain(active).collect();
    for (check, expected) in ordered.iter().zip(&ids) {
        if let (_, Some(given), _) = check.common()
            && given != expected
        {
            return Err(BadBody::new(format!(
                "CheckID \"{given}\" is not supported: this registry names the checks of service \"{raw_id}\" {} (the TTL check first); omit CheckID or use that name",
                ids.join(", ")
            )));
        }
    }
    // A new check starts in its `Status`, else `critical`, as in Consul; the instance in
    // the worst of its checks' (the model has one status per instance).
    let initial_status = def
        .checks
        .iter()
        .map(|check| match check.common().0.as_deref() {
            Some("passing") => Status::Passing,
            Some("warning") => Status::Warning,
            _ => Status::Critical,
        })
        .max();
    // Consul reaps a service when any of its checks has been critical that long.
    let deregister_after = def
        .checks
        .iter()
        .filter_map(|check| *check.common().2)
        .min();

    let mut spec = InstanceSpec::new(url.clone());
    spec.tags = def.tags;
    spec.metadata = def.meta;
    spec.ttl_seconds = Some(match ttl {
        Some(CheckDef::Ttl { ttl, .. }) => seconds_u32(*ttl, "TTL", limits::MAX_TTL_SECONDS)?,
        _ => 0,
    });
    spec.initial_status = initial_status;
    spec.deregister_critical_after =
        deregister_after.map(|after| format!("{}s", ceil_seconds(after)));
    match active {
        Some(CheckDef::Http {
            url: check_url,
            interval,
            timeout,
            ..
        }) => {
            let (interval, timeout) = interval_and_timeout(*interval, *timeout)?;
            let target = url::Url::parse(check_url).map_err(|e| {
                BadBody::new(format!("Invalid HTTP check URL \"{check_url}\": {e}"))
            })?;
            let same_origin = target.scheme() == instance_url.scheme()
                && target.host() == instance_url.host()
                && target.port_or_known_default() == instance_url.port_or_known_default();
            if !same_origin {
                return Err(BadBody::new(format!(
                    "HTTP check \"{check_url}\" must target the service's own address ({url}): this registry checks an instance only at its own address"
                )));
            }
            let mut path = target.path().to_owned();
            if let Some(query) = target.query() {
                path.push('?');
                path.push_str(query);
            }
            spec.check = Some(CheckSpec {
                http: Some(path),
                tcp: None,
                interval_seconds: Some(interval),
                timeout_seconds: timeout,
                expect_json: None,
            });
        }
        Some(CheckDef::Tcp {
            target,
            interval,
            timeout,
            ..
        }) => {
            let (interval_seconds, timeout_seconds) = interval_and_timeout(*interval, *timeout)?;
            spec.check = Some(CheckSpec {
                http: None,
                tcp: Some(target.clone()),
                interval_seconds: Some(interval_seconds),
                timeout_seconds,
                expect_json: None,
            });
        }
        _ => {}
    }
    Ok(Mapped { service, id, spec })
}

/// An active check's interval and timeout in whole seconds; a timeout longer than the
/// interval is cut to it (our checks never overlap).
fn interval_and_timeout(
    interval: Duration,
    timeout: Option<Duration>,
) -> Parsed<(u32, Option<u32>)> {
    let interval = seconds_u32(interval, "Interval", limits::MAX_INTERVAL_SECONDS)?;
    let timeout = timeout.filter(|t| !t.is_zero()).map(|t| {
        u32::try_from(ceil_seconds(t))
            .unwrap_or(u32::MAX)
            .min(interval)
    });
    Ok((interval, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Parsed<Mapped> {
        map_service(parse_service(body.as_bytes())?, "10.0.0.9".parse().ok())
    }

    #[test]
    fn go_durations() {
        let ok = |raw: &str, millis: u64| {
            assert_eq!(
                parse_go_duration(raw),
                Ok(Duration::from_millis(millis)),
                "{raw}"
            );
        };
        ok("120000ms", 120_000);
        ok("10s", 10_000);
        ok("5m", 300_000);
        ok("1h30m", 5_400_000);
        ok("1.5s", 1_500);
        ok("0", 0);
        ok("1000us", 1);
        for bad in ["", "10", "-1s", "1x", "s", "1..5s", "abc", "1 s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_booleans() {
        for yes in ["1", "t", "T", "true", "True", "TRUE"] {
            assert_eq!(parse_go_bool(yes), Some(true));
        }
        for no in ["0", "f", "F", "false", "False", "FALSE"] {
            assert_eq!(parse_go_bool(no), Some(false));
        }
        for bad in ["", "yes", "tRuE", "2"] {
            assert_eq!(parse_go_bool(bad), None);
        }
    }

    #[test]
    fn keys_match_ignoring_case_and_underscores() {
        let a = parse(r#"{"Name":"web","Port":80,"Check":{"TTL":"10s","DeregisterCriticalServiceAfter":"1m"}}"#)
            .expect("valid");
        let b = parse(r#"{"name":"web","port":80,"check":{"ttl":"10s","deregister_critical_service_after":"1m"}}"#)
            .expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.id.as_str(), "web", "ID defaults to Name");
        assert_eq!(a.spec.url, "http://10.0.0.9:80", "the peer's address");
        assert_eq!(a.spec.ttl_seconds, Some(10));
        assert_eq!(a.spec.deregister_critical_after.as_deref(), Some("60s"));
        assert_eq!(
            a.spec.initial_status,
            Some(Status::Critical),
            "a new check starts critical"
        );
    }

    #[test]
    fn meta_keys_are_kept_as_sent() {
        let m = parse(r#"{"Name":"web","Meta":{"Build_ID":"7"}}"#).expect("valid");
        assert_eq!(
            m.spec.metadata.get("Build_ID").map(String::as_str),
            Some("7")
        );
    }

    #[test]
    fn http_checks_map_to_a_path_on_the_instance() {
        let m = parse(
            r#"{"Name":"web","Address":"10.0.0.5","Port":8080,"Checks":[{"HTTP":"http://10.0.0.5:8080/health?x=1","Interval":"500ms","Timeout":"5s"},{"TTL":"30s"}]}"#,
        )
        .expect("valid");
        let check = m.spec.check.expect("check");
        assert_eq!(check.http.as_deref(), Some("/health?x=1"));
        assert_eq!(check.interval_seconds, Some(1));
        assert_eq!(check.timeout_seconds, Some(1), "cut to the interval");
        assert_eq!(m.spec.ttl_seconds, Some(30));
        assert!(
            parse(r#"{"Name":"web","Address":"10.0.0.5","Port":8080,"Check":{"HTTP":"http://10.0.0.6:8080/","Interval":"5s"}}"#)
                .is_err(),
            "another host"
        );
    }

    #[test]
    fn tcp_checks_statuses_and_reaping_map_onto_the_model() {
        let m = parse(
            r#"{"Name":"db","Address":"10.0.0.5","Port":5432,"Checks":[{"TCP":"10.0.0.5:5432","Interval":"2s","Status":"passing","DeregisterCriticalServiceAfter":"90s"},{"TTL":"5s","Status":"warning","DeregisterCriticalServiceAfter":"1m"}]}"#,
        )
        .expect("valid");
        let check = m.spec.check.expect("check");
        assert_eq!(check.tcp.as_deref(), Some("10.0.0.5:5432"));
        assert_eq!(check.http, None);
        assert_eq!(check.interval_seconds, Some(2));
        assert_eq!(
            m.spec.initial_status,
            Some(Status::Warning),
            "the worst given"
        );
        assert_eq!(
            m.spec.deregister_critical_after.as_deref(),
            Some("60s"),
            "the shortest"
        );
        let none = parse(r#"{"Name":"db"}"#).expect("valid");
        assert_eq!(none.spec.initial_status, None, "no check: passing");
    }

    #[test]
    fn check_ids_follow_consuls_scheme() {
        assert_eq!(check_ids("web", 1), vec!["service:web"]);
        assert_eq!(check_ids("web", 2), vec!["service:web:1", "service:web:2"]);
        assert!(parse(r#"{"Name":"web","Check":{"TTL":"5s","CheckID":"service:web"}}"#).is_ok());
        assert!(parse(r#"{"Name":"web","Check":{"TTL":"5s","CheckID":"mine"}}"#).is_err());
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for body in [
            "",
            "[]",
            "{",
            r#"{"Name":5}"#,
            r#"{"Port":80}"#,
            r#"{"Name":"web","Port":"80"}"#,
            r#"{"Name":"web","Port":70000}"#,
            r#"{"Name":"web","Tags":"a"}"#,
            r#"{"Name":"web","Tags":[1]}"#,
            r#"{"Name":"web","Meta":{"a":1}}"#,
            r#"{"Name":"web","Check":{"TTL":"ten"}}"#,
            r#"{"Name":"web","Check":{"TTL":10}}"#,
            r#"{"Name":"web","Check":{"Script":"x","Interval":"1s"}}"#,
            r#"{"Name":"web","Check":{"GRPC":"x:1","Interval":"1s"}}"#,
            r#"{"Name":"web","Check":{"Interval":"1s"}}"#,
            r#"{"Name":"web","Check":{"HTTP":"http://10.0.0.9/"}}"#,
            r#"{"Name":"web","Checks":[{"TTL":"1s"},{"TTL":"2s"}]}"#,
            r#"{"Name":"Web_Service"}"#,
            r#"{"Name":"web","ID":"a/b"}"#,
            r#"{"Name":"web","Address":"not an address"}"#,
            r#"{"Name":"web","Kind":"connect-proxy"}"#,
            r#"{"Name":"web","Check":{"TTL":"5s","Status":"bogus"}}"#,
        ] {
            assert!(parse(body).is_err(), "{body} should be refused");
        }
    }
}
