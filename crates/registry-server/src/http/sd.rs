//! Prometheus HTTP service discovery: `GET /v1/sd/prometheus`.
//!
//! Instances that register here are the ones Prometheus should scrape, so rather than keep
//! a second list (file SD, static configs) in step with the registry, Prometheus asks the
//! registry itself through `http_sd_configs`. Only `passing` instances are offered: a
//! critical one is down or unreachable and one in maintenance is draining, so scraping
//! them would only add `up == 0` noise. Served from the in-memory view, like every other
//! read, so a Prometheus refreshing every few seconds costs no database query.
//!
//! The labels follow Prometheus's own service discoveries (Consul's above all) so that
//! relabeling rules read the same: `__meta_registry_*` for what the registry knows, tags
//! joined as `,a,b,` so that `.*,a,.*` matches a tag, metadata keys sanitized into label
//! names, and `__scheme__` / `__metrics_path__` set from the instance so Prometheus scrapes
//! the right URL without per-service relabeling.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use registry_api::{Instance, Status};
use serde::Serialize;
use url::{Host, Url};
use utoipa::ToSchema;

use super::extract::{Query, ServiceQuery};
use super::{ApiError, AppState};

/// Metadata key whose value becomes `__metrics_path__` (Prometheus scrapes `/metrics`
/// otherwise).
const METRICS_PATH_KEY: &str = "metrics_path";
/// Prefix of the label of each metadata pair.
const METADATA_PREFIX: &str = "__meta_registry_metadata_";

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sd/prometheus", get(prometheus))
}

/// One Prometheus target group: the addresses to scrape and the labels they share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TargetGroup {
    /// `host:port` (IPv6 hosts in brackets).
    pub targets: Vec<String>,
    /// `__meta_registry_*` labels, `__scheme__` and, when set, `__metrics_path__`.
    pub labels: BTreeMap<String, String>,
}

/// `GET /v1/sd/prometheus[?service=S]`.
#[utoipa::path(
    get,
    path = "/v1/sd/prometheus",
    tag = "discovery",
    summary = "Prometheus HTTP service discovery of every passing instance",
    description = "One target group per passing instance, for Prometheus's `http_sd_configs`. \
        Labels: `__meta_registry_service`, `__meta_registry_instance`, `__meta_registry_url`, \
        `__meta_registry_status`, `__meta_registry_tags` (joined as `,a,b,`), \
        `__meta_registry_metadata_<key>` (key sanitized to `[a-zA-Z0-9_]`), `__scheme__`, and \
        `__metrics_path__` when the metadata has `metrics_path`.",
    params(
        ("service" = Option<String>, Query, description = "Only this service"),
    ),
    responses(
        (status = 200, description = "Target groups (an empty array when none passes)", body = Vec<TargetGroup>),
        (status = 400, description = "Invalid service name", body = registry_api::ErrorBody),
        (status = 401, description = "Missing or wrong read token", body = registry_api::ErrorBody),
    )
)]
async fn prometheus(
    State(state): State<AppState>,
    Query(ServiceQuery { service }): Query<ServiceQuery>,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let system = state
        .view
        .system_status(service.as_ref().map(|s| s.as_str()), state.now());
    let groups = system
        .services
        .iter()
        .flat_map(|service| &service.instances)
        .filter(|instance| instance.status == Status::Passing)
        .filter_map(target_group)
        .collect();
    Ok(Json(groups))
}

/// The target group of one instance; `None` (logged) if its URL has no host, which
/// registration already refuses.
pub fn target_group(instance: &Instance) -> Option<TargetGroup> {
    let Some((url, target)) = Url::parse(&instance.url)
        .ok()
        .and_then(|url| target(&url).map(|target| (url, target)))
    else {
        tracing::warn!(
            service = %instance.service,
            instance = %instance.id,
            url = %instance.url,
            "instance URL has no host:port; left out of Prometheus discovery"
        );
        return None;
    };
    let mut labels = BTreeMap::new();
    for (key, value) in &instance.metadata {
        labels.insert(
            format!("{METADATA_PREFIX}{}", sanitize_label_name(key)),
            value.clone(),
        );
    }
    for (name, value) in [
        ("__meta_registry_service", instance.service.clone()),
        ("__meta_registry_instance", instance.id.clone()),
        ("__meta_registry_url", instance.url.clone()),
        (
            "__meta_registry_status",
            instance.status.as_str().to_owned(),
        ),
        ("__meta_registry_tags", join_tags(&instance.tags)),
        ("__scheme__", url.scheme().to_owned()),
    ] {
        labels.insert(name.to_owned(), value);
    }
    if let Some(path) = instance
        .metadata
        .get(METRICS_PATH_KEY)
        .filter(|p| !p.is_empty())
    {
        labels.insert("__metrics_path__".to_owned(), path.clone());
    }
    Some(TargetGroup {
        targets: vec![target],
        labels,
    })
}

/// `host:port` of a URL, the scheme's default port when it names none, IPv6 in brackets.
fn target(url: &Url) -> Option<String> {
    let port = url.port_or_known_default()?;
    let host = match url.host()? {
        Host::Domain(domain) => domain.to_owned(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    };
    Some(format!("{host}:{port}"))
}

/// Tags joined with a comma before, between and after, as Consul SD does, so a relabel
/// regex `.*,tag,.*` matches one whole tag whatever its position.
fn join_tags(tags: &[String]) -> String {
    format!(",{},", tags.join(","))
}

/// A metadata key as a label name suffix: every character outside `[a-zA-Z0-9_]`
/// becomes `_` (as Prometheus's own discoveries sanitize names). Two keys that differ
/// only there share a label; the one that sorts last wins.
fn sanitize_label_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use chrono::Utc;

    fn instance(url: &str) -> Instance {
        let now = Utc::now();
        Instance {
            id: "web-1".to_owned(),
            service: "web".to_owned(),
            url: url.to_owned(),
            status: Status::Passing,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            ttl_seconds: 10,
            check: None,
            registered_at: now,
            last_heartbeat_at: now,
            lease_expires_at: None,
            status_changed_at: now,
            last_check: None,
            lease_held: false,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        }
    }

    fn group(url: &str) -> TargetGroup {
        target_group(&instance(url)).expect("a target group")
    }

    fn targets(url: &str) -> Vec<String> {
        group(url).targets
    }

    #[test]
    fn explicit_ports_are_kept() {
        assert_eq!(targets("http://10.0.0.7:8080"), ["10.0.0.7:8080"]);
        assert_eq!(
            targets("https://api.example.com:8443/v1"),
            ["api.example.com:8443"]
        );
    }

    #[test]
    fn the_scheme_gives_the_port_when_the_url_names_none() {
        assert_eq!(targets("http://web.internal"), ["web.internal:80"]);
        assert_eq!(
            targets("https://web.internal/path?q=1"),
            ["web.internal:443"]
        );
        // The URL parser drops a port equal to the default; it must come back.
        assert_eq!(targets("http://web.internal:80/"), ["web.internal:80"]);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(targets("http://[::1]:9100/"), ["[::1]:9100"]);
        assert_eq!(targets("https://[2001:db8::7]"), ["[2001:db8::7]:443"]);
        assert_eq!(targets("http://[2001:DB8:0:0::1]:81"), ["[2001:db8::1]:81"]);
    }

    #[test]
    fn a_url_without_a_host_gives_no_group() {
        assert_eq!(target_group(&instance("not a url")), None);
        assert_eq!(target_group(&instance("mailto:a@example.com")), None);
    }

    #[test]
    fn fixed_labels_describe_the_instance() {
        let labels = group("https://10.0.0.7:8443/app").labels;
        let label = |name: &str| labels.get(name).map(String::as_str);
        assert_eq!(label("__meta_registry_service"), Some("web"));
        assert_eq!(label("__meta_registry_instance"), Some("web-1"));
        assert_eq!(
            label("__meta_registry_url"),
            Some("https://10.0.0.7:8443/app")
        );
        assert_eq!(label("__meta_registry_status"), Some("passing"));
        assert_eq!(label("__meta_registry_tags"), Some(",,"));
        assert_eq!(label("__scheme__"), Some("https"));
        assert_eq!(label("__metrics_path__"), None);
        assert_eq!(labels.len(), 6);
    }

    #[test]
    fn tags_are_joined_with_surrounding_commas() {
        assert_eq!(join_tags(&[]), ",,");
        assert_eq!(join_tags(&["a".to_owned()]), ",a,");
        assert_eq!(
            join_tags(&["a".to_owned(), "b c".to_owned(), "v1.2".to_owned()]),
            ",a,b c,v1.2,"
        );
    }

    #[test]
    fn metadata_keys_are_sanitized_into_label_names() {
        assert_eq!(sanitize_label_name("zone"), "zone");
        assert_eq!(sanitize_label_name("Team_2"), "Team_2");
        assert_eq!(
            sanitize_label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(sanitize_label_name("a-b c"), "a_b_c");
        assert_eq!(sanitize_label_name("région"), "r_gion");

        let mut web = instance("http://10.0.0.7:8080");
        web.metadata
            .insert("app.kubernetes.io/name".into(), "web".into());
        web.metadata.insert("zone".into(), "eu-1".into());
        let labels = target_group(&web).expect("a group").labels;
        assert_eq!(
            labels
                .get("__meta_registry_metadata_app_kubernetes_io_name")
                .map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels
                .get("__meta_registry_metadata_zone")
                .map(String::as_str),
            Some("eu-1")
        );
    }

    #[test]
    fn metrics_path_metadata_sets_the_scrape_path() {
        let mut web = instance("http://10.0.0.7:8080");
        web.metadata
            .insert("metrics_path".into(), "/internal/metrics".into());
        let labels = target_group(&web).expect("a group").labels;
        assert_eq!(
            labels.get("__metrics_path__").map(String::as_str),
            Some("/internal/metrics")
        );
        assert_eq!(
            labels
                .get("__meta_registry_metadata_metrics_path")
                .map(String::as_str),
            Some("/internal/metrics")
        );
    }

    #[test]
    fn the_wire_shape_is_what_prometheus_reads() {
        let mut web = instance("http://127.0.0.1:9100");
        web.tags = vec!["a".into(), "b".into()];
        let json =
            serde_json::to_value(vec![target_group(&web).expect("a group")]).expect("serializes");
        assert_eq!(json[0]["targets"], serde_json::json!(["127.0.0.1:9100"]));
        assert_eq!(json[0]["labels"]["__meta_registry_tags"], ",a,b,");
        assert!(
            json[0]["labels"]
                .as_object()
                .is_some_and(|labels| { labels.values().all(serde_json::Value::is_string) })
        );
    }
}
