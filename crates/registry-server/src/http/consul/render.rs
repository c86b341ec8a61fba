//! Our instances in Consul's shapes, with Consul's exact casing: the agent's service, the
//! catalog's flat entry, the health entry (`{Node, Service, Checks}`) and the check.
//!
//! The registry has no nodes: each instance host is one synthesized node with a stable id
//! derived from the host, so clients that key on `Node.ID + Service.ID` work.

use registry_api::{Instance, Status};
use serde_json::{Value, json};

use super::wire::check_ids;
use crate::http::address::UrlAddress;

/// What every shape needs besides the instance.
pub struct Context<'a> {
    pub datacenter: &'a str,
    /// The Consul index of the answer, used as `CreateIndex`/`ModifyIndex`.
    pub index: u64,
}

/// A UUID that is a pure function of the host (two FNV-1a hashes), so a node keeps its id
/// across restarts and replicas.
pub fn node_id(host: &str) -> String {
    let fnv = |seed: u64| {
        host.bytes().fold(seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    let high = fnv(0xcbf2_9ce4_8422_2325);
    let low = fnv(0x6c62_272e_07bb_0142);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    // Version 8 (custom), RFC 4122 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The node name of a host: the host itself.
pub fn node_name(host: &str) -> String {
    if host.is_empty() {
        "unknown".to_owned()
    } else {
        host.to_owned()
    }
}

/// The synthesized node of a host.
pub fn node(host: &str, ctx: &Context<'_>) -> Value {
    json!({
        "ID": node_id(host),
        "Node": node_name(host),
        "Address": host,
        "Datacenter": ctx.datacenter,
        "TaggedAddresses": {"lan": host, "lan_ipv4": host, "wan": host, "wan_ipv4": host},
        "Meta": {},
        "CreateIndex": ctx.index,
        "ModifyIndex": ctx.index,
    })
}

/// The service as the agent and the health endpoint show it.
pub fn agent_service(instance: &Instance, ctx: &Context<'_>) -> Value {
    let UrlAddress {
        host: address,
        port,
        ..
    } = UrlAddress::of(instance);
    json!({
        "ID": instance.id,
        "Service": instance.service,
        "Tags": instance.tags,
        "Meta": instance.metadata,
        "Port": port,
        "Address": address,
        "TaggedAddresses": {},
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false,
        "Datacenter": ctx.datacenter,
        "CreateIndex": ctx.index,
        "ModifyIndex": ctx.index,
    })
}

/// `GET /v1/catalog/service/{service}`: node and service in one flat object.
pub fn catalog_entry(instance: &Instance, ctx: &Context<'_>) -> Value {
    let UrlAddress {
        host: address,
        port,
        ..
    } = UrlAddress::of(instance);
    json!({
        "ID": node_id(&address),
        "Node": node_name(&address),
        "Address": address,
        "Datacenter": ctx.datacenter,
        "TaggedAddresses": {"lan": address, "wan": address},
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": instance.id,
        "ServiceName": instance.service,
        "ServiceTags": instance.tags,
        "ServiceAddress": address,
        "ServiceTaggedAddresses": {},
        "ServiceWeights": {"Passing": 1, "Warning": 1},
        "ServiceMeta": instance.metadata,
        "ServicePort": port,
        "ServiceEnableTagOverride": false,
        "ServiceProxy": {},
        "ServiceConnect": {},
        "CreateIndex": ctx.index,
        "ModifyIndex": ctx.index,
    })
}

/// `GET /v1/health/service/{service}`: one entry.
pub fn health_entry(instance: &Instance, ctx: &Context<'_>) -> Value {
    let address = UrlAddress::of(instance).host;
    json!({
        "Node": node(&address, ctx),
        "Service": agent_service(instance, ctx),
        "Checks": checks(instance, ctx),
    })
}

fn consul_status(status: Status) -> &'static str {
    match status {
        Status::Passing | Status::Maintenance => "passing",
        Status::Warning => "warning",
        Status::Critical => "critical",
    }
}

/// One instance's checks: the TTL check (its lease), the HTTP or TCP check (its active
/// check), and Consul's maintenance check while it is in maintenance. Each check's status
/// comes from the instance's combined status and what it shows of each source
/// (docs/consul.md, Checks).
pub fn checks(instance: &Instance, ctx: &Context<'_>) -> Vec<Value> {
    let address = UrlAddress::of(instance).host;
    let node = node_name(&address);
    let has_ttl = instance.ttl_seconds > 0;
    let active = instance.check.as_ref();
    let count = usize::from(has_ttl) + usize::from(active.is_some());
    let mut ids = check_ids(&instance.id, count.max(1)).into_iter();
    let mut out = Vec::new();

    let critical = instance.status == Status::Critical;
    // The lease lapsed: it turned critical when its deadline passed (a report or a check
    // failure changes the status while the lease runs).
    let lapsed = critical
        && has_ttl
        && instance
            .lease_expires_at
            .is_some_and(|deadline| deadline <= instance.status_changed_at);
    let reported = instance.lease_status;
    let active_status = match instance.last_check.as_ref().map(|c| c.status) {
        Some(Status::Critical) if critical => Status::Critical,
        Some(Status::Warning) => Status::Warning,
        Some(_) => Status::Passing,
        // Not run yet: the status it started in (`initial_status`), unless the lease
        // explains it.
        None if critical && !lapsed && reported != Some(Status::Critical) => Status::Critical,
        None if instance.status == Status::Warning && reported != Some(Status::Warning) => {
            Status::Warning
        }
        None => Status::Passing,
    };
    let ttl_status = if lapsed {
        Status::Critical
    } else if let Some(reported) = reported {
        reported
    } else if critical && active_status != Status::Critical {
        Status::Critical
    } else {
        Status::Passing
    };

    let base = |id: String, name: String, status: Status, kind: &str| {
        json!({
            "Node": node,
            "CheckID": id,
            "Name": name,
            "Status": consul_status(status),
            "Notes": "",
            "Output": "",
            "ServiceID": instance.id,
            "ServiceName": instance.service,
            "ServiceTags": instance.tags,
            "Type": kind,
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": ctx.index,
            "ModifyIndex": ctx.index,
        })
    };
    if has_ttl && let Some(id) = ids.next() {
        let mut check = base(
            id,
            format!("Service '{}' check", instance.service),
            ttl_status,
            "ttl",
        );
        check["Output"] = json!(if lapsed {
            "TTL expired"
        } else {
            instance.lease_output.as_deref().unwrap_or_default()
        });
        out.push(check);
    }
    if let Some(active) = active
        && let Some(id) = ids.next()
    {
        let mut check = base(
            id,
            format!("Service '{}' check", instance.service),
            active_status,
            if active.tcp.is_some() { "tcp" } else { "http" },
        );
        check["Output"] = json!(
            instance
                .last_check
                .as_ref()
                .map_or("", |c| c.detail.as_str())
        );
        check["Interval"] = json!(format!("{}s", active.interval_seconds));
        check["Timeout"] = json!(format!("{}s", active.timeout_seconds));
        out.push(check);
    }
    if instance.status == Status::Maintenance {
        let mut check = base(
            format!("_service_maintenance:{}", instance.id),
            "Service Maintenance Mode".to_owned(),
            Status::Critical,
            "maintenance",
        );
        check["Notes"] = json!(instance.maintenance_reason.as_deref().unwrap_or(
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
        ));
        out.push(check);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_uuids_per_host() {
        let a = node_id("10.0.0.1");
        assert_eq!(a, node_id("10.0.0.1"));
        assert_ne!(a, node_id("10.0.0.2"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
