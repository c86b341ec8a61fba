//! Reads of a large registry a part at a time, on both stores: pages of `GET /v1/services`
//! and `GET /v1/status` that add up to the whole answer and stay exact while services
//! come and go, the server-side name filter, and the summary of `GET /v1/status`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::{Backend, TestRegistry};
use chrono::{DateTime, Utc};
use registry_api::{InstanceSpec, Status};
use registry_client::PageRequest;
use reqwest::StatusCode;
use serde_json::Value;

/// A GET of `path` answered 200, as JSON.
async fn get(registry: &TestRegistry, path: &str) -> Value {
    let response = registry
        .http
        .get(registry.url(path))
        .send()
        .await
        .expect("sent");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// `path` with one more query parameter.
fn with(path: &str, parameter: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{parameter}")
}

/// Every page of `path` (a route and its query) of `limit` services, in order.
async fn walk(registry: &TestRegistry, path: &str, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_path = with(path, &format!("limit={limit}"));
        if let Some(cursor) = &cursor {
            page_path = with(&page_path, &format!("cursor={cursor}"));
        }
        let page = get(registry, &page_path).await;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < 1_000, "the walk of {path} never ends");
    }
}

/// The services of every page, one after the other.
fn services_of(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|page| page["services"].as_array().expect("services").clone())
        .collect()
}

fn names(services: &[Value]) -> Vec<String> {
    services
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect()
}

fn spec(n: usize) -> InstanceSpec {
    let url = format!("http://10.0.{}.{}:8080", (n / 250) % 250, n % 250);
    let mut spec = InstanceSpec::new(&url);
    spec.ttl_seconds = Some(300);
    spec
}

fn spec_with_status(n: usize, status: Status) -> InstanceSpec {
    let mut spec = spec(n);
    spec.initial_status = Some(status);
    spec
}

async fn register(registry: &TestRegistry, service: &str, id: &str, spec: &InstanceSpec) {
    registry
        .api
        .register(service, id, spec)
        .await
        .expect("registered");
}

/// 23 services `svc-00`..`svc-22`, with one to three instances each.
async fn populate(registry: &TestRegistry) {
    for n in 0..23 {
        for id in 0..=(n % 3) {
            let status = if id == 1 {
                Status::Critical
            } else {
                Status::Passing
            };
            register(
                registry,
                &format!("svc-{n:02}"),
                &format!("i-{id}"),
                &spec_with_status(n * 3 + id, status),
            )
            .await;
        }
    }
}

fn rfc3339(moment: DateTime<Utc>) -> String {
    moment.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// Walking every page of /v1/services and /v1/status (now and at a past moment) gives
// the unpaged answer; only a page with more after it has `next_cursor`, and an unpaged
// answer never has one.
both_stores!(
    walking_every_page_gives_the_whole_answer,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        populate(&registry).await;
        let moment = Utc::now();
        let past = format!("/v1/status?at={}", rfc3339(moment));
        // Nothing may change after the moment, so that the past and the present agree.
        for path in ["/v1/services", "/v1/status", past.as_str()] {
            let whole = get(&registry, path).await;
            assert!(whole.get("next_cursor").is_none(), "{path}: {whole}");
            assert_eq!(
                whole["services"].as_array().map(Vec::len),
                Some(23),
                "{path}"
            );
            for limit in [1, 5, 23, 1000] {
                let pages = walk(&registry, path, limit).await;
                assert_eq!(pages.len(), 23_usize.div_ceil(limit), "{path} by {limit}");
                assert_eq!(
                    services_of(&pages),
                    whole["services"].as_array().expect("services").clone(),
                    "{path} by {limit}"
                );
                for page in &pages {
                    assert_eq!(page["index"], whole["index"], "{path} by {limit}");
                }
            }
        }
        // The client walks the same pages.
        let every_name = names(
            get(&registry, "/v1/services").await["services"]
                .as_array()
                .expect("services"),
        );
        let mut page = PageRequest {
            limit: Some(5),
            ..PageRequest::default()
        };
        let (mut services, mut systems) = (Vec::new(), Vec::new());
        loop {
            let listed = registry.api.services_page(&page).await.expect("a page");
            let system = registry.api.status_page(&page).await.expect("a page");
            assert_eq!(listed.next_cursor, system.next_cursor);
            services.extend(listed.services.into_iter().map(|s| s.name));
            systems.extend(system.services.into_iter().map(|s| s.name));
            match listed.next_cursor {
                Some(next) => page = page.after(&next),
                None => break,
            }
        }
        assert_eq!((&services, &systems), (&every_name, &every_name));
        // A cursor alone gives pages of 100.
        let first = get(&registry, "/v1/services?limit=3").await;
        let cursor = first["next_cursor"].as_str().expect("more follow");
        let rest = get(&registry, &format!("/v1/services?cursor={cursor}")).await;
        assert_eq!(rest["services"].as_array().map(Vec::len), Some(20));
        assert!(rest.get("next_cursor").is_none(), "{rest}");
        registry.stop().await;
    }
);

// A past page holds the services that had instances at that moment: those removed before
// it, or added after it, are skipped however many of them lie between the page's services
// (past pages read the history a page's worth of services at a time).
both_stores!(
    past_pages_skip_services_without_instances_then,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        for n in 0..12 {
            register(&registry, &format!("svc-{n:02}"), "i-0", &spec(n)).await;
        }
        for n in (0..12).filter(|n| n % 3 != 0) {
            let service = format!("svc-{n:02}");
            registry
                .api
                .deregister(&service, "i-0")
                .await
                .expect("removed");
        }
        let moment = Utc::now();
        // Changes after the moment are stamped in a later millisecond (a moment names one).
        while Utc::now().timestamp_millis() <= moment.timestamp_millis() {
            tokio::task::yield_now().await;
        }
        // After the moment: services between those that existed, and one more removal.
        for n in [1, 4, 5, 13] {
            register(&registry, &format!("svc-{n:02}-late"), "i-0", &spec(n)).await;
        }
        registry
            .api
            .deregister("svc-03", "i-0")
            .await
            .expect("removed");

        let past = format!("/v1/status?at={}", rfc3339(moment));
        let then = ["svc-00", "svc-03", "svc-06", "svc-09"];
        let whole = get(&registry, &past).await;
        assert_eq!(names(whole["services"].as_array().expect("services")), then);
        for limit in [1, 2, 3, 4, 5] {
            let pages = walk(&registry, &past, limit).await;
            assert_eq!(names(&services_of(&pages)), then, "by {limit}");
            assert_eq!(pages.len(), then.len().div_ceil(limit), "by {limit}");
        }
        let searched = walk(&registry, &with(&past, "name=0"), 1).await;
        assert_eq!(names(&services_of(&searched)), then, "searched by 1");
        let one = get(&registry, &with(&past, "name=03&limit=1")).await;
        assert_eq!(
            names(one["services"].as_array().expect("services")),
            ["svc-03"]
        );
        let removed = get(&registry, &with(&past, "service=svc-01")).await;
        assert_eq!(removed["services"], serde_json::json!([]));
        let kept = get(&registry, &with(&past, "service=svc-03")).await;
        assert_eq!(
            names(kept["services"].as_array().expect("services")),
            ["svc-03"]
        );
        registry.stop().await;
    }
);

// While services are added and removed during a walk, every service that exists for the
// whole walk is answered exactly once, and no service twice: between pages (one added
// before the cursor, one after it, the last one answered removed) and from a task that
// keeps changing services meanwhile.
both_stores!(
    a_walk_during_changes_answers_each_lasting_service_once,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        let lasting: Vec<String> = (0..30).map(|n| format!("s-{n:02}")).collect();
        for (n, service) in lasting.iter().enumerate() {
            register(&registry, service, "i-0", &spec(n)).await;
        }
        let churning = Arc::new(AtomicBool::new(true));
        let churn = tokio::spawn({
            let api = registry.api.clone();
            let churning = churning.clone();
            async move {
                let mut n = 0;
                while churning.load(Ordering::Relaxed) {
                    let service = format!("s-{:02}-x", n % 30);
                    api.register(&service, "i-0", &spec(n))
                        .await
                        .expect("added");
                    if n % 2 == 0 {
                        api.deregister(&service, "i-0").await.expect("removed");
                    }
                    n += 1;
                }
            }
        });
        for (round, route) in ["/v1/services", "/v1/status"].into_iter().enumerate() {
            let mut answered = Vec::new();
            let mut cursor: Option<String> = None;
            for page_number in 0.. {
                let mut path = format!("{route}?limit=4");
                if let Some(cursor) = &cursor {
                    path = with(&path, &format!("cursor={cursor}"));
                }
                let page = get(&registry, &path).await;
                let page_names = names(page["services"].as_array().expect("services"));
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                // Between pages: one service before the cursor, one after it, and the
                // last one answered removed (and put back at once, so it lasts).
                let before = format!("a-{round}-{page_number}");
                let after = format!("z-{round}-{page_number}");
                register(&registry, &before, "i-0", &spec(page_number)).await;
                register(&registry, &after, "i-0", &spec(page_number)).await;
                // Only a lasting service: the churning ones (`s-NN-x`) may be removed by
                // the churn task meanwhile.
                if let Some(last) = page_names.last().filter(|n| lasting.contains(n)) {
                    registry.api.deregister(last, "i-0").await.expect("removed");
                }
                answered.extend(page_names);
                if cursor.is_none() {
                    break;
                }
            }
            let mut seen = BTreeMap::new();
            for name in &answered {
                *seen.entry(name.as_str()).or_insert(0) += 1;
            }
            let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "{route}: answered twice: {twice:?}");
            // The removed ones were answered before they went; the others lasted.
            for service in &lasting {
                assert_eq!(seen.get(service.as_str()), Some(&1), "{route}: {service}");
            }
            for (n, service) in lasting.iter().enumerate() {
                register(&registry, service, "i-0", &spec(n)).await;
            }
        }
        churning.store(false, Ordering::Relaxed);
        churn.await.expect("the churn ran");
        registry.stop().await;
    }
);

// `name` keeps the services whose name contains the text, whatever its case, on both
// routes, and pages like the rest.
both_stores!(
    the_name_filter_keeps_matching_services,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        for (n, service) in ["billing", "billing-api", "ledger", "sum", "summary"]
            .iter()
            .enumerate()
        {
            register(&registry, service, "i-0", &spec(n)).await;
        }
        for route in ["/v1/services", "/v1/status"] {
            for (filter, expected) in [
                ("bill", vec!["billing", "billing-api"]),
                ("SUM", vec!["sum", "summary"]),
                ("g-a", vec!["billing-api"]),
                ("a", vec!["billing-api", "summary"]),
                ("nothing", vec![]),
            ] {
                let path = format!("{route}?name={filter}");
                let whole = get(&registry, &path).await;
                let whole = names(whole["services"].as_array().expect("services"));
                assert_eq!(whole, expected, "{path}");
                let paged = names(&services_of(&walk(&registry, &path, 1).await));
                assert_eq!(paged, expected, "{path} by pages of 1");
            }
        }
        // With `service`, `name` narrows further.
        let both = get(&registry, "/v1/status?service=sum&name=mm").await;
        assert_eq!(both["services"].as_array().map(Vec::len), Some(0));
        registry.stop().await;
    }
);

// The summary counts instances per status and services per rolled-up status, lists the
// critical instances first in service then id order (at most 100, with the total), and
// answers the same at a past moment.
both_stores!(
    the_summary_counts_and_lists_critical_instances_first,
    |backend: Backend| async move {
        let registry = TestRegistry::start(backend).await;
        for (service, id, status) in [
            ("alpha", "a-1", Status::Passing),
            ("alpha", "a-2", Status::Critical),
            ("beta", "b-1", Status::Critical),
            ("delta", "d-1", Status::Warning),
            ("gamma", "g-1", Status::Passing),
            ("omega", "o-1", Status::Passing),
        ] {
            register(&registry, service, id, &spec_with_status(0, status)).await;
        }
        registry
            .api
            .set_status("gamma", "g-1", Status::Maintenance)
            .await
            .expect("maintenance");

        let summary = get(&registry, "/v1/status?summary=true").await;
        let whole = get(&registry, "/v1/status").await;
        assert_eq!(summary["index"], whole["index"]);
        assert!(summary["epoch"].is_string(), "{summary}");
        assert!(summary["self_preservation"].is_object(), "{summary}");
        let counts = |value: &Value| {
            ["total", "passing", "warning", "critical", "maintenance"].map(|k| value[k].clone())
        };
        assert_eq!(
            counts(&summary["instances"]),
            [6, 2, 1, 2, 1].map(Value::from)
        );
        // alpha warning, beta critical, delta warning, gamma maintenance, omega passing.
        assert_eq!(
            counts(&summary["services"]),
            [5, 1, 2, 1, 1].map(Value::from)
        );
        let critical: Vec<(String, String)> = summary["critical"]
            .as_array()
            .expect("critical")
            .iter()
            .map(|i| (i["service"].to_string(), i["id"].to_string()))
            .collect();
        assert_eq!(
            critical,
            [("\"alpha\"", "\"a-2\""), ("\"beta\"", "\"b-1\"")]
                .map(|(s, i)| (s.to_owned(), i.to_owned()))
        );
        assert_eq!(summary["critical_total"], 2);
        let typed = registry.api.status_summary().await.expect("the summary");
        assert_eq!(
            serde_json::to_value(&typed).expect("serializes")["critical"],
            summary["critical"]
        );
        assert_eq!((typed.services.warning, typed.critical_total), (2, 2));
        assert_eq!(
            summary["critical"][0], whole["services"][0]["instances"][1],
            "the instance as /v1/status shows it"
        );
        let past = format!("/v1/status?summary=true&at={}", rfc3339(Utc::now()));
        let past = get(&registry, &past).await;
        for field in [
            "index",
            "instances",
            "services",
            "critical",
            "critical_total",
        ] {
            assert_eq!(past[field], summary[field], "{field} at a past moment");
        }

        // At most 100 listed; the total counts them all.
        for n in 0..101 {
            let id = format!("c-{n:03}");
            register(
                &registry,
                "crowd",
                &id,
                &spec_with_status(n, Status::Critical),
            )
            .await;
        }
        let summary = get(&registry, "/v1/status?summary=true").await;
        let listed = summary["critical"].as_array().expect("critical");
        assert_eq!(listed.len(), 100);
        assert_eq!(summary["critical_total"], 103);
        assert_eq!(
            listed[2]["id"], "c-000",
            "after alpha's and beta's, in order"
        );
        assert_eq!(summary["services"]["critical"], 2);
        registry.stop().await;
    }
);
