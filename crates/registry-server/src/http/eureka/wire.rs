//! A Eureka registration (`{"instance": {...}}`, in JSON or in XML read into the same
//! shape) read as Eureka's server reads it, and mapped onto our [`InstanceSpec`] with the
//! table in docs/eureka.md. What the model has no field for (host name, ports, VIP
//! addresses, the client's `lastDirtyTimestamp`, ...) is kept in the instance's metadata
//! under `eureka.` keys, so the instance reads back on the Eureka API as it was sent.
//!
//! Pure functions: each decision is unit-tested without a server.

use std::collections::BTreeMap;

use registry_api::{InstanceSpec, limits};
use serde_json::{Map, Value};

use crate::http::error::BadBody;

/// Metadata keys the adapter keeps its own fields under.
pub mod keys {
    pub const PREFIX: &str = "eureka.";
    pub const HOST_NAME: &str = "eureka.hostName";
    pub const IP_ADDR: &str = "eureka.ipAddr";
    pub const PORT: &str = "eureka.port";
    pub const SECURE_PORT: &str = "eureka.securePort";
    pub const VIP: &str = "eureka.vipAddress";
    pub const SECURE_VIP: &str = "eureka.secureVipAddress";
    pub const HOME_PAGE: &str = "eureka.homePageUrl";
    pub const STATUS_PAGE: &str = "eureka.statusPageUrl";
    pub const HEALTH_CHECK: &str = "eureka.healthCheckUrl";
    pub const SECURE_HEALTH_CHECK: &str = "eureka.secureHealthCheckUrl";
    pub const DATA_CENTER_CLASS: &str = "eureka.dataCenterInfo.class";
    pub const DATA_CENTER_NAME: &str = "eureka.dataCenterInfo.name";
    pub const RENEWAL_INTERVAL: &str = "eureka.renewalIntervalInSecs";
    pub const LAST_DIRTY: &str = "eureka.lastDirtyTimestamp";
}

/// Tags that make VIP addresses searchable through every API (`vip:<address>`).
pub const VIP_TAG: &str = "vip:";
pub const SECURE_VIP_TAG: &str = "svip:";

/// Eureka's lease when the body gives none (its `durationInSecs` default).
pub const DEFAULT_DURATION_SECS: u32 = 90;
/// Eureka's renewal interval default, shown when the instance gave none.
pub const DEFAULT_RENEWAL_SECS: u32 = 30;

type Parsed<T> = Result<T, BadBody>;

/// The data-center classes and names Eureka's Java client reads back (`@class` as a Java
/// class, `name` as an enum): one instance with another would fail every Java client's
/// fetch of the registry, so they are refused, as Eureka's server refuses them.
const DATA_CENTER_CLASSES: [&str; 3] = [
    "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
    "com.netflix.appinfo.MyDataCenterInfo",
    "com.netflix.appinfo.AmazonInfo",
];
const DATA_CENTER_NAMES: [&str; 3] = ["Netflix", "Amazon", "MyOwn"];

/// `value` when absent or one of `allowed`.
fn one_of(value: Option<String>, what: &str, allowed: &[&str]) -> Parsed<Option<String>> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(BadBody::new(format!(
            "{what} must be one of {}, not '{v}'",
            allowed.join(", ")
        ))),
        other => Ok(other),
    }
}

/// An instance status as Eureka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EurekaStatus {
    Up,
    Down,
    Starting,
    OutOfService,
    Unknown,
}

impl EurekaStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "UP" => Some(Self::Up),
            "DOWN" => Some(Self::Down),
            "STARTING" => Some(Self::Starting),
            "OUT_OF_SERVICE" => Some(Self::OutOfService),
            "UNKNOWN" => Some(Self::Unknown),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
            Self::Starting => "STARTING",
            Self::OutOfService => "OUT_OF_SERVICE",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// A port as Eureka gives it: a number and whether it is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub enabled: bool,
}

impl Port {
    /// As kept in metadata: `8080` or `8080 disabled`.
    pub fn stored(self) -> String {
        if self.enabled {
            self.number.to_string()
        } else {
            format!("{} disabled", self.number)
        }
    }

    pub fn from_stored(raw: &str) -> Option<Self> {
        let (number, enabled) = match raw.strip_suffix(" disabled") {
            Some(number) => (number, false),
            None => (raw, true),
        };
        Some(Self {
            number: number.parse().ok()?,
            enabled,
        })
    }
}

/// A registration body, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub app: String,
    /// `instanceId`, or the host name when the body has none (older clients).
    pub instance_id: String,
    pub host_name: String,
    pub ip_addr: String,
    pub port: Option<Port>,
    pub secure_port: Option<Port>,
    pub status: EurekaStatus,
    pub home_page_url: Option<String>,
    pub status_page_url: Option<String>,
    pub health_check_url: Option<String>,
    pub secure_health_check_url: Option<String>,
    pub vip_address: Option<String>,
    pub secure_vip_address: Option<String>,
    pub duration_secs: u32,
    pub renewal_secs: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    pub data_center_class: Option<String>,
    pub data_center_name: Option<String>,
    pub last_dirty_timestamp: Option<String>,
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

/// A string field; numbers and booleans are read as their text (XML has only text).
fn text(fields: &Map<String, Value>, name: &str) -> Parsed<Option<String>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(BadBody::new(format!(
            "{name} must be a string, not {}",
            kind(other)
        ))),
    }
}

fn whole_number(raw: &str, name: &str, max: u64) -> Parsed<u64> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            BadBody::new(format!(
                "{name} must be a whole number from 0 to {max}, not '{raw}'"
            ))
        })
}

/// `port`/`securePort`: `{"$": 8080, "@enabled": "true"}`, or a bare number.
fn port(fields: &Map<String, Value>, name: &str) -> Parsed<Option<Port>> {
    let (number, enabled) = match fields.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(port)) => {
            let enabled = match port.get("@enabled") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
                Some(other) => {
                    return Err(BadBody::new(format!(
                        "{name}.@enabled must be \"true\" or \"false\", not {}",
                        kind(other)
                    )));
                }
            };
            (text(port, "$")?, enabled)
        }
        Some(_) => (text(fields, name)?, true),
    };
    let Some(number) = number else {
        return Err(BadBody::new(format!("{name} has no number")));
    };
    let number = whole_number(&number, name, u64::from(u16::MAX))?;
    Ok(Some(Port {
        number: u16::try_from(number).unwrap_or(u16::MAX),
        enabled,
    }))
}

/// Reads `{"instance": {...}}` (the form both JSON and XML bodies take).
pub fn parse_registration(document: &Value) -> Parsed<Registration> {
    let Some(instance) = document.get("instance") else {
        return Err(BadBody::new(
            "the body must be {\"instance\": {...}} (or <instance>...</instance>)",
        ));
    };
    let Value::Object(f) = instance else {
        return Err(BadBody::new(format!(
            "instance must be an object, not {}",
            kind(instance)
        )));
    };
    let app = text(f, "app")?.ok_or_else(|| BadBody::new("instance.app is missing"))?;
    let host_name = text(f, "hostName")?.unwrap_or_default();
    let ip_addr = text(f, "ipAddr")?.unwrap_or_default();
    let instance_id = text(f, "instanceId")?
        .or_else(|| Some(host_name.clone()).filter(|h| !h.is_empty()))
        .ok_or_else(|| BadBody::new("instance.instanceId is missing (and so is hostName)"))?;
    let status = match text(f, "status")? {
        None => EurekaStatus::Up,
        Some(raw) => EurekaStatus::parse(&raw).ok_or_else(|| {
            BadBody::new(format!(
                "instance.status '{raw}' is not a Eureka status (UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN)"
            ))
        })?,
    };
    let (duration_secs, renewal_secs) = match f.get("leaseInfo") {
        None | Some(Value::Null) => (DEFAULT_DURATION_SECS, None),
        Some(Value::Object(lease)) => {
            let max = u64::from(limits::MAX_TTL_SECONDS);
            let duration = text(lease, "durationInSecs")?
                .map(|raw| whole_number(&raw, "leaseInfo.durationInSecs", max))
                .transpose()?
                .filter(|d| *d > 0)
                .map_or(DEFAULT_DURATION_SECS, |d| {
                    u32::try_from(d).unwrap_or(u32::MAX)
                });
            let renewal = text(lease, "renewalIntervalInSecs")?
                .map(|raw| whole_number(&raw, "leaseInfo.renewalIntervalInSecs", max))
                .transpose()?
                .map(|r| u32::try_from(r).unwrap_or(u32::MAX));
            (duration, renewal)
        }
        Some(other) => {
            return Err(BadBody::new(format!(
                "leaseInfo must be an object, not {}",
                kind(other)
            )));
        }
    };
    let mut metadata = BTreeMap::new();
    match f.get("metadata") {
        None | Some(Value::Null) => {}
        // An empty XML element.
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::Object(pairs)) => {
            for (key, value) in pairs {
                // Eureka's marker of an empty map, not a key.
                if key == "@class" {
                    continue;
                }
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return Err(BadBody::new(format!(
                            "metadata.{key} must be a string, not {}",
                            kind(other)
                        )));
                    }
                };
                if key.starts_with(keys::PREFIX) {
                    return Err(BadBody::new(format!(
                        "metadata key '{key}': keys starting with '{}' are the registry's own",
                        keys::PREFIX
                    )));
                }
                metadata.insert(key.clone(), value);
            }
        }
        Some(other) => {
            return Err(BadBody::new(format!(
                "metadata must be an object, not {}",
                kind(other)
            )));
        }
    }
    let (data_center_class, data_center_name) = match f.get("dataCenterInfo") {
        Some(Value::Object(dc)) => (
            one_of(
                text(dc, "@class")?,
                "dataCenterInfo @class",
                &DATA_CENTER_CLASSES,
            )?,
            one_of(text(dc, "name")?, "dataCenterInfo name", &DATA_CENTER_NAMES)?,
        ),
        _ => (None, None),
    };
    let last_dirty_timestamp = text(f, "lastDirtyTimestamp")?
        .map(|raw| whole_number(&raw, "lastDirtyTimestamp", u64::MAX).map(|n| n.to_string()))
        .transpose()?;
    Ok(Registration {
        app,
        instance_id,
        host_name,
        ip_addr,
        port: port(f, "port")?,
        secure_port: port(f, "securePort")?,
        status,
        home_page_url: text(f, "homePageUrl")?,
        status_page_url: text(f, "statusPageUrl")?,
        health_check_url: text(f, "healthCheckUrl")?,
        secure_health_check_url: text(f, "secureHealthCheckUrl")?,
        vip_address: text(f, "vipAddress")?,
        secure_vip_address: text(f, "secureVipAddress")?,
        duration_secs,
        renewal_secs,
        metadata,
        data_center_class,
        data_center_name,
        last_dirty_timestamp,
    })
}

/// The addresses of a comma-separated VIP list.
pub fn vip_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// The instance's URL: `homePageUrl` when it is a usable absolute URL, else the IP
/// address (or the host name) with the enabled port, else with the enabled secure port.
fn url_of(registration: &Registration) -> Parsed<String> {
    if let Some(home) = &registration.home_page_url
        && registry_api::validate_url(home).is_ok()
    {
        return Ok(home.clone());
    }
    let host = [&registration.ip_addr, &registration.host_name]
        .into_iter()
        .find(|h| !h.is_empty())
        .ok_or_else(|| BadBody::new("the instance needs ipAddr or hostName (or homePageUrl)"))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let url = match (registration.port, registration.secure_port) {
        (Some(p), _) if p.enabled => format!("http://{host}:{}", p.number),
        (_, Some(p)) if p.enabled => format!("https://{host}:{}", p.number),
        _ => {
            return Err(BadBody::new(
                "the instance has no enabled port or securePort",
            ));
        }
    };
    registry_api::validate_url(&url)
        .map(|_| url.clone())
        .map_err(|m| {
            BadBody::new(format!(
                "the instance's address makes the URL '{url}', which {m}"
            ))
        })
}

/// The registration as our spec (validated by the caller with the model's limits).
pub fn to_spec(registration: &Registration) -> Parsed<InstanceSpec> {
    let mut spec = InstanceSpec::new(url_of(registration)?);
    spec.ttl_seconds = Some(registration.duration_secs);
    spec.metadata = registration.metadata.clone();
    let mut keep = |key: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            spec.metadata.insert(key.to_owned(), value);
        }
    };
    keep(keys::HOST_NAME, Some(registration.host_name.clone()));
    keep(keys::IP_ADDR, Some(registration.ip_addr.clone()));
    keep(keys::PORT, registration.port.map(Port::stored));
    keep(
        keys::SECURE_PORT,
        registration.secure_port.map(Port::stored),
    );
    keep(keys::VIP, registration.vip_address.clone());
    keep(keys::SECURE_VIP, registration.secure_vip_address.clone());
    keep(keys::HOME_PAGE, registration.home_page_url.clone());
    keep(keys::STATUS_PAGE, registration.status_page_url.clone());
    keep(keys::HEALTH_CHECK, registration.health_check_url.clone());
    keep(
        keys::SECURE_HEALTH_CHECK,
        registration.secure_health_check_url.clone(),
    );
    keep(
        keys::DATA_CENTER_CLASS,
        registration.data_center_class.clone(),
    );
    keep(
        keys::DATA_CENTER_NAME,
        registration.data_center_name.clone(),
    );
    keep(
        keys::RENEWAL_INTERVAL,
        registration.renewal_secs.map(|r| r.to_string()),
    );
    keep(keys::LAST_DIRTY, registration.last_dirty_timestamp.clone());
    let mut tags = Vec::new();
    for (prefix, list) in [
        (VIP_TAG, &registration.vip_address),
        (SECURE_VIP_TAG, &registration.secure_vip_address),
    ] {
        for vip in list.as_deref().map(vip_list).into_iter().flatten() {
            let tag = format!("{prefix}{vip}");
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
    }
    spec.tags = tags;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn py_body() -> Value {
        json!({"instance": {
            "instanceId": "127.0.0.1:py-svc:9001",
            "hostName": "127.0.0.1",
            "app": "PY-SVC",
            "ipAddr": "127.0.0.1",
            "status": "UP",
            "overriddenstatus": "UNKNOWN",
            "port": {"$": 9001, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 1, "durationInSecs": 3},
            "metadata": {"management.port": "9001"},
            "homePageUrl": "http://127.0.0.1:9001/",
            "vipAddress": "py-svc,py-all",
            "secureVipAddress": "py-svc",
            "lastDirtyTimestamp": "1700000000000",
        }})
    }

    #[test]
    fn a_py_eureka_client_registration_maps_onto_the_model() {
        let registration = parse_registration(&py_body()).expect("reads");
        assert_eq!(registration.instance_id, "127.0.0.1:py-svc:9001");
        assert_eq!(registration.status, EurekaStatus::Up);
        let spec = to_spec(&registration).expect("maps");
        assert_eq!(spec.url, "http://127.0.0.1:9001/");
        assert_eq!(spec.ttl_seconds, Some(3));
        assert_eq!(spec.tags, ["vip:py-svc", "vip:py-all", "svip:py-svc"]);
        assert_eq!(spec.metadata["management.port"], "9001");
        assert_eq!(spec.metadata[keys::PORT], "9001");
        assert_eq!(spec.metadata[keys::SECURE_PORT], "443 disabled");
        assert_eq!(spec.metadata[keys::LAST_DIRTY], "1700000000000");
        assert_eq!(spec.metadata[keys::RENEWAL_INTERVAL], "1");
    }

    #[test]
    fn the_url_falls_back_to_the_address_and_the_enabled_port() {
        let mut body = py_body();
        body["instance"]["homePageUrl"] = json!(null);
        body["instance"]["port"] = json!({"$": "8080", "@enabled": false});
        body["instance"]["securePort"] = json!({"$": 8443, "@enabled": "true"});
        let spec = to_spec(&parse_registration(&body).expect("reads")).expect("maps");
        assert_eq!(spec.url, "https://127.0.0.1:8443");
        body["instance"]["port"] = json!(8080);
        let spec = to_spec(&parse_registration(&body).expect("reads")).expect("maps");
        assert_eq!(spec.url, "http://127.0.0.1:8080");
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let refused = |edit: &dyn Fn(&mut Value)| {
            let mut body = py_body();
            edit(&mut body);
            parse_registration(&body)
                .and_then(|r| to_spec(&r))
                .expect_err("refused")
                .0
        };
        assert!(refused(&|b| b["instance"]["app"] = json!(null)).contains("app"));
        assert!(refused(&|b| b["instance"]["port"] = json!({"$": 70000})).contains("port"));
        assert!(refused(&|b| b["instance"]["port"] = json!("http")).contains("port"));
        assert!(refused(&|b| b["instance"]["status"] = json!("SLEEPY")).contains("status"));
        assert!(
            refused(&|b| b["instance"]["metadata"] = json!({"a": {"b": 1}})).contains("metadata")
        );
        assert!(
            refused(&|b| {
                b["instance"]["homePageUrl"] = json!(null);
                b["instance"]["port"] = json!({"$": 1, "@enabled": "false"});
            })
            .contains("enabled port")
        );
        assert!(
            refused(&|b| b["instance"]["dataCenterInfo"]["@class"] = json!("java.lang.Runtime"))
                .contains("dataCenterInfo @class")
        );
        assert!(
            refused(&|b| b["instance"]["dataCenterInfo"]["name"] = json!("Moon"))
                .contains("dataCenterInfo name")
        );
        assert!(parse_registration(&json!({"app": "X"})).is_err());
        assert!(parse_registration(&json!({"instance": []})).is_err());
    }

    #[test]
    fn ports_are_kept_with_their_flag() {
        for port in [
            Port {
                number: 80,
                enabled: true,
            },
            Port {
                number: 443,
                enabled: false,
            },
        ] {
            assert_eq!(Port::from_stored(&port.stored()), Some(port));
        }
    }
}
