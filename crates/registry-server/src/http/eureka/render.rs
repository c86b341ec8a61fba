//! Our instances in the shapes Eureka's server answers (docs/eureka.md, Answers): the
//! instance, the application (`{"name", "instance": [...]}`, the list even for one), the
//! registry (`{"versions__delta", "apps__hashcode", "application": [...]}`), and the
//! hash code clients check their copy against.
//!
//! An instance registered through Eureka reads back with the fields it was sent (kept in
//! `eureka.` metadata); one registered through another API gets them from its URL, with
//! its service name as VIP address.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use registry_api::Instance;
use serde_json::{Map, Value, json};

use super::ids::{app_of_service, eureka_id};
use super::status;
use super::wire::{self, Port, keys};
use crate::http::address::UrlAddress;

/// Eureka's data center class for an instance that is not on AWS.
const DEFAULT_DATA_CENTER_CLASS: &str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn port_value(port: Port) -> Value {
    json!({"$": port.number, "@enabled": if port.enabled { "true" } else { "false" }})
}

/// One instance, with `actionType` when it is part of a delta.
pub fn instance(instance: &Instance, action: &str) -> Value {
    let meta = &instance.metadata;
    let kept = |key: &str| meta.get(key).cloned();
    let UrlAddress {
        scheme,
        host,
        port: url_port,
    } = UrlAddress::of(instance);
    let port = kept(keys::PORT)
        .and_then(|p| Port::from_stored(&p))
        .unwrap_or(Port {
            number: if scheme == "http" { url_port } else { 80 },
            enabled: scheme == "http",
        });
    let secure_port = kept(keys::SECURE_PORT)
        .and_then(|p| Port::from_stored(&p))
        .unwrap_or(Port {
            number: if scheme == "https" { url_port } else { 443 },
            enabled: scheme == "https",
        });
    let user: BTreeMap<&String, &String> = meta
        .iter()
        .filter(|(k, _)| !k.starts_with(keys::PREFIX))
        .collect();
    let metadata = if user.is_empty() {
        json!({"@class": "java.util.Collections$EmptyMap"})
    } else {
        json!(user)
    };
    let health_check = kept(keys::HEALTH_CHECK).or_else(|| {
        instance
            .check
            .as_ref()
            .and_then(|c| c.target(&instance.url))
            .map(|u| u.to_string())
    });
    let registered = millis(instance.registered_at);
    let renewal = kept(keys::RENEWAL_INTERVAL)
        .and_then(|r| r.parse::<u32>().ok())
        .unwrap_or(wire::DEFAULT_RENEWAL_SECS);
    let mut out = json!({
        "instanceId": eureka_id(&instance.id),
        "hostName": kept(keys::HOST_NAME).unwrap_or_else(|| host.clone()),
        "app": app_of_service(&instance.service),
        "ipAddr": kept(keys::IP_ADDR).unwrap_or_else(|| host.clone()),
        "status": status::of(instance).as_str(),
        "overriddenstatus": status::override_of(instance).as_str(),
        "port": port_value(port),
        "securePort": port_value(secure_port),
        "countryId": 1,
        "dataCenterInfo": {
            "@class": kept(keys::DATA_CENTER_CLASS).unwrap_or_else(|| DEFAULT_DATA_CENTER_CLASS.to_owned()),
            "name": kept(keys::DATA_CENTER_NAME).unwrap_or_else(|| "MyOwn".to_owned()),
        },
        "leaseInfo": {
            "renewalIntervalInSecs": renewal,
            "durationInSecs": instance.ttl_seconds,
            "registrationTimestamp": registered,
            "lastRenewalTimestamp": millis(instance.last_heartbeat_at),
            "evictionTimestamp": 0,
            "serviceUpTimestamp": registered,
        },
        "metadata": metadata,
        "homePageUrl": kept(keys::HOME_PAGE).unwrap_or_else(|| instance.url.clone()),
        "statusPageUrl": kept(keys::STATUS_PAGE).unwrap_or_default(),
        "healthCheckUrl": health_check.unwrap_or_default(),
        "vipAddress": kept(keys::VIP).unwrap_or_else(|| instance.service.clone()),
        "secureVipAddress": kept(keys::SECURE_VIP).unwrap_or_else(|| instance.service.clone()),
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": millis(instance.status_changed_at).to_string(),
        "lastDirtyTimestamp": kept(keys::LAST_DIRTY).unwrap_or_else(|| registered.to_string()),
        "actionType": action,
    });
    if let Some(secure) = kept(keys::SECURE_HEALTH_CHECK)
        && let Value::Object(fields) = &mut out
    {
        fields.insert("secureHealthCheckUrl".to_owned(), Value::String(secure));
    }
    out
}

/// Whether an instance answers to a VIP address (`vipAddress` is a comma-separated list).
pub fn has_vip(instance: &Instance, vip: &str, secure: bool) -> bool {
    let key = if secure { keys::SECURE_VIP } else { keys::VIP };
    match instance.metadata.get(key) {
        Some(list) => wire::vip_list(list).any(|v| v == vip),
        None => instance.service == vip,
    }
}

/// One application: its name and the list of its instances.
pub fn application(service: &str, instances: &[&Instance]) -> Value {
    json!({
        "name": app_of_service(service),
        "instance": instances.iter().map(|i| instance(i, "ADDED")).collect::<Vec<_>>(),
    })
}

/// Eureka's hash code of a set of instances: `<STATUS>_<count>_` for each status, in the
/// order of the status names (`DOWN_1_UP_3_`), as clients compute it from their copy.
pub fn hashcode<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for instance in instances {
        *counts.entry(status::of(instance).as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(status, count)| format!("{status}_{count}_"))
        .collect()
}

/// The registry's document: `applications` of the given entries (instances grouped by
/// service, in order), its index as `versions__delta` and the hash code of `all`.
pub fn applications(index: u64, hash: String, apps: Vec<Value>) -> Value {
    let mut fields = Map::new();
    fields.insert(
        "versions__delta".to_owned(),
        Value::String(index.to_string()),
    );
    fields.insert("apps__hashcode".to_owned(), Value::String(hash));
    fields.insert("application".to_owned(), Value::Array(apps));
    json!({"applications": fields})
}

/// Instances grouped by service, each group an application.
pub fn grouped(instances: &[Instance]) -> Vec<Value> {
    let mut by_service: BTreeMap<&str, Vec<&Instance>> = BTreeMap::new();
    for instance in instances {
        by_service
            .entry(&instance.service)
            .or_default()
            .push(instance);
    }
    by_service
        .into_iter()
        .map(|(service, instances)| application(service, &instances))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::Status;

    fn sample(id: &str, status: Status, reason: Option<&str>) -> Instance {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        Instance {
            id: id.to_owned(),
            service: "sum".to_owned(),
            url: "http://10.0.0.1:8080".to_owned(),
            status,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            ttl_seconds: 30,
            check: None,
            registered_at: at,
            last_heartbeat_at: at,
            lease_expires_at: None,
            status_changed_at: at,
            last_check: None,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: reason.map(str::to_owned),
            lease_held: false,
        }
    }

    #[test]
    fn the_hashcode_counts_statuses_in_name_order() {
        let instances = [
            sample("a", Status::Passing, None),
            sample("b", Status::Critical, None),
            sample("c", Status::Warning, None),
            sample("d", Status::Passing, None),
            sample("e", Status::Maintenance, Some("drain")),
            sample("f", Status::Maintenance, Some(status::STARTING)),
        ];
        assert_eq!(
            hashcode(&instances),
            "DOWN_1_OUT_OF_SERVICE_1_STARTING_1_UP_3_"
        );
        assert_eq!(hashcode(&[]), "");
    }

    #[test]
    fn an_instance_of_another_api_reads_as_eureka_shows_one() {
        let shown = instance(&sample("web_3a1", Status::Passing, None), "ADDED");
        assert_eq!(shown["instanceId"], "web:1");
        assert_eq!(shown["app"], "SUM");
        assert_eq!(shown["port"], json!({"$": 8080, "@enabled": "true"}));
        assert_eq!(shown["securePort"]["@enabled"], "false");
        assert_eq!(shown["vipAddress"], "sum");
        assert_eq!(shown["status"], "UP");
        assert_eq!(shown["dataCenterInfo"]["@class"], DEFAULT_DATA_CENTER_CLASS);
        assert_eq!(shown["leaseInfo"]["durationInSecs"], 30);
        assert_eq!(
            shown["metadata"]["@class"],
            "java.util.Collections$EmptyMap"
        );
    }

    #[test]
    fn every_application_holds_a_list() {
        let one = sample("a", Status::Passing, None);
        let document = applications(7, hashcode([&one]), grouped(std::slice::from_ref(&one)));
        let apps = &document["applications"]["application"];
        assert!(apps.is_array());
        assert!(apps[0]["instance"].is_array());
        assert_eq!(document["applications"]["versions__delta"], "7");
        assert_eq!(document["applications"]["apps__hashcode"], "UP_1_");
    }
}
