//! Eureka's REST API on the registry (docs/eureka.md), driven with raw HTTP: the exact
//! status codes clients check, the shapes of JSON and XML answers chosen by `Accept`,
//! instance ids that round-trip, the status override, hash code and delta, tokens as Basic
//! auth, bad bodies refused with a 4xx each, and one registry behind Eureka and v1.

use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use registry_api::{InstanceSpec, Status};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(20);

struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn call(
    registry: &TestRegistry,
    method: Method,
    path: &str,
    body: Option<(&str, String)>,
    accept: Option<&str>,
) -> Answer {
    let mut request = registry.http.request(method, registry.url(path));
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("the registry answers");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Answer {
        status: response.status(),
        content_type,
        text: response.text().await.expect("a body"),
    }
}

async fn get_json(registry: &TestRegistry, path: &str) -> Answer {
    call(registry, Method::GET, path, None, Some("application/json")).await
}

/// A registration body as py-eureka-client sends it.
fn body(app: &str, id: &str, port: u16, status: &str) -> Value {
    json!({"instance": {
        "instanceId": id,
        "hostName": "127.0.0.1",
        "app": app,
        "ipAddr": "127.0.0.1",
        "status": status,
        "overriddenstatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"management.port": port.to_string()},
        "homePageUrl": format!("http://127.0.0.1:{port}/"),
        "vipAddress": app.to_ascii_lowercase(),
        "secureVipAddress": app.to_ascii_lowercase(),
        "lastDirtyTimestamp": "1700000000000",
    }})
}

async fn register(registry: &TestRegistry, app: &str, id: &str, port: u16, status: &str) {
    let answer = call(
        registry,
        Method::POST,
        &format!("/eureka/apps/{app}"),
        Some(("application/json", body(app, id, port, status).to_string())),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
}

fn encoded(id: &str) -> String {
    id.replace(':', "%3A")
}

both_stores!(
    register_renew_fetch_and_cancel_answer_as_eurekas_server,
    |backend| async move {
        let registry = TestRegistry::start(backend).await;
        let id = "10.0.0.1:SUM:8080";
        register(&registry, "SUM", id, 8080, "UP").await;

        // One model: v1 sees the service in lower case, the id escaped.
        let v1 = registry.api.service("sum", None).await.expect("v1 lookup");
        assert_eq!(v1.instances.len(), 1);
        assert_eq!(v1.instances[0].id, "10.0.0.1_3aSUM_3a8080");
        assert_eq!(v1.instances[0].url, "http://127.0.0.1:8080/");
        assert_eq!(v1.instances[0].ttl_seconds, 90);
        assert!(v1.instances[0].tags.contains(&"vip:sum".to_owned()));
        // The VIP address is searchable through the other APIs, e.g. Consul's tag filter.
        let consul = get_json(&registry, "/v1/health/service/sum?tag=vip:sum")
            .await
            .json();
        assert_eq!(
            consul[0]["Service"]["ID"], "10.0.0.1_3aSUM_3a8080",
            "{consul}"
        );
        let none = get_json(&registry, "/v1/health/service/sum?tag=vip:other")
            .await
            .json();
        assert_eq!(none, json!([]));

        // JSON when asked for, the id exactly as sent, on both prefixes.
        for prefix in ["/eureka", "/eureka/v2"] {
            let one = get_json(&registry, &format!("{prefix}/apps/sum/{}", encoded(id))).await;
            assert_eq!(one.status, StatusCode::OK, "{}", one.text);
            let instance = &one.json()["instance"];
            assert_eq!(instance["instanceId"], id);
            assert_eq!(instance["app"], "SUM");
            assert_eq!(instance["status"], "UP");
            assert_eq!(instance["port"], json!({"$": 8080, "@enabled": "true"}));
            assert_eq!(instance["leaseInfo"]["durationInSecs"], 90);
            assert_eq!(instance["lastDirtyTimestamp"], "1700000000000");
            assert_eq!(instance["metadata"]["management.port"], "8080");
        }
        let everything = get_json(&registry, "/eureka/apps/").await;
        let apps = everything.json();
        assert_eq!(apps["applications"]["apps__hashcode"], "UP_1_");
        assert!(apps["applications"]["application"].is_array());
        assert!(apps["applications"]["application"][0]["instance"].is_array());
        let by_id = get_json(&registry, &format!("/eureka/instances/{}", encoded(id))).await;
        assert_eq!(by_id.json()["instance"]["instanceId"], id);

        // eureka-js-client's default prefix takes every write too.
        let v2 = call(
            &registry,
            Method::POST,
            "/eureka/v2/apps/OTHER",
            Some((
                "application/json",
                body("OTHER", "h:other:1", 9000, "UP").to_string(),
            )),
            None,
        )
        .await;
        assert_eq!(v2.status, StatusCode::NO_CONTENT, "{}", v2.text);
        let renewed = call(
            &registry,
            Method::PUT,
            "/eureka/v2/apps/OTHER/h:other:1",
            None,
            None,
        )
        .await;
        assert_eq!(renewed.status, StatusCode::OK);
        let cancelled = call(
            &registry,
            Method::DELETE,
            "/eureka/v2/apps/OTHER/h:other:1",
            None,
            None,
        )
        .await;
        assert_eq!(cancelled.status, StatusCode::OK);

        // Renew: 200; an unknown instance: 404, so the client registers again.
        let renew = |path: String| {
            let registry = &registry;
            async move { call(registry, Method::PUT, &path, None, None).await.status }
        };
        let path = format!("/eureka/apps/SUM/{}", encoded(id));
        assert_eq!(renew(path.clone()).await, StatusCode::OK);
        assert_eq!(
            renew(format!("{path}?status=UP&lastDirtyTimestamp=1700000000000")).await,
            StatusCode::OK
        );
        // A client whose own record is newer than the registry's registers again.
        assert_eq!(
            renew(format!("{path}?lastDirtyTimestamp=1800000000000")).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            renew("/eureka/apps/SUM/nobody".to_owned()).await,
            StatusCode::NOT_FOUND
        );

        // Cancel: exactly 200, then the instance is gone everywhere.
        let cancel = call(&registry, Method::DELETE, &path, None, None).await;
        assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text);
        assert_eq!(renew(path.clone()).await, StatusCode::NOT_FOUND);
        assert!(
            registry
                .api
                .service("sum", None)
                .await
                .expect("v1")
                .instances
                .is_empty()
        );
        let gone = call(&registry, Method::DELETE, &path, None, None).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        registry.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_xml_unless_json_is_asked_for_and_xml_bodies_register() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
        <instance>
          <instanceId>host.example:XMLAPP:9000</instanceId>
          <hostName>host.example</hostName>
          <app>XMLAPP</app>
          <ipAddr>10.1.2.3</ipAddr>
          <status>UP</status>
          <port enabled="false">9000</port>
          <securePort enabled="true">9443</securePort>
          <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
          <leaseInfo><durationInSecs>30</durationInSecs></leaseInfo>
          <metadata><zone>a &amp; b</zone></metadata>
          <vipAddress>xml-vip</vipAddress>
        </instance>"#;
    let answer = call(
        &registry,
        Method::POST,
        "/eureka/apps/xmlapp",
        Some(("application/xml", xml.to_owned())),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
    let v1 = registry.api.service("xmlapp", None).await.expect("v1");
    assert_eq!(v1.instances[0].url, "https://10.1.2.3:9443");

    for accept in [None, Some("*/*"), Some("application/xml")] {
        let answer = call(&registry, Method::GET, "/eureka/apps", None, accept).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            answer.content_type.contains("xml"),
            "{accept:?}: {}",
            answer.content_type
        );
        let text = &answer.text;
        for expected in [
            "<applications>",
            "<apps__hashcode>UP_1_</apps__hashcode>",
            "<name>XMLAPP</name>",
            "<instanceId>host.example:XMLAPP:9000</instanceId>",
            r#"<port enabled="false">9000</port>"#,
            r#"<securePort enabled="true">9443</securePort>"#,
            r#"<dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo">"#,
            "<zone>a &amp; b</zone>",
            "<vipAddress>xml-vip</vipAddress>",
        ] {
            assert!(text.contains(expected), "{expected} missing from {text}");
        }
    }
    let json = get_json(&registry, "/eureka/apps").await;
    assert!(json.content_type.contains("json"));
    assert_eq!(
        json.json()["applications"]["application"][0]["name"],
        "XMLAPP"
    );

    // One application, in both formats, the instance list a list even for one.
    let app_xml = call(&registry, Method::GET, "/eureka/v2/apps/XMLAPP", None, None).await;
    assert!(app_xml.content_type.contains("xml"));
    assert!(
        app_xml
            .text
            .contains("<application><name>XMLAPP</name><instance>"),
        "{}",
        app_xml.text
    );
    let app_json = get_json(&registry, "/eureka/apps/xmlapp").await.json();
    assert!(app_json["application"]["instance"].is_array(), "{app_json}");
    assert_eq!(
        get_json(&registry, "/eureka/apps/NOAPP").await.status,
        StatusCode::NOT_FOUND
    );

    // VIP addresses are searchable.
    let vip = get_json(&registry, "/eureka/vips/xml-vip").await.json();
    assert_eq!(
        vip["applications"]["application"][0]["instance"][0]["app"],
        "XMLAPP"
    );
    let svip = get_json(&registry, "/eureka/svips/xmlapp").await.json();
    assert_eq!(
        svip["applications"]["application"][0]["name"], "XMLAPP",
        "{svip}"
    );
    let none = get_json(&registry, "/eureka/vips/other").await.json();
    assert_eq!(none["applications"]["application"], json!([]));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_override_drains_and_removing_it_asks_for_a_registration() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let id = "127.0.0.1:ovr:9001";
    register(&registry, "OVR", id, 9001, "UP").await;
    let path = format!("/eureka/apps/OVR/{}", encoded(id));
    let model_id = "127.0.0.1_3aovr_3a9001";

    let out = call(
        &registry,
        Method::PUT,
        &format!("{path}/status?value=OUT_OF_SERVICE"),
        None,
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
    let v1 = registry.api.service("ovr", None).await.expect("v1");
    assert_eq!(v1.instances[0].status, Status::Maintenance);
    let shown = get_json(&registry, &path).await.json();
    assert_eq!(shown["instance"]["status"], "OUT_OF_SERVICE");
    assert_eq!(shown["instance"]["overriddenstatus"], "OUT_OF_SERVICE");
    // The override outlives the client's own registrations.
    register(&registry, "OVR", id, 9001, "UP").await;
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "OUT_OF_SERVICE"
    );
    assert_eq!(
        call(&registry, Method::PUT, &path, None, None).await.status,
        StatusCode::OK
    );

    // Removed with a value: that status.
    let back = call(
        &registry,
        Method::DELETE,
        &format!("{path}/status?value=UP"),
        None,
        None,
    )
    .await;
    assert_eq!(back.status, StatusCode::OK);
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "UP"
    );

    // Removed without one: UNKNOWN, and the next renewal answers 404.
    call(
        &registry,
        Method::PUT,
        &format!("{path}/status?value=OUT_OF_SERVICE"),
        None,
        None,
    )
    .await;
    let removed = call(
        &registry,
        Method::DELETE,
        &format!("{path}/status"),
        None,
        None,
    )
    .await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "UNKNOWN"
    );
    assert_eq!(
        call(&registry, Method::PUT, &path, None, None).await.status,
        StatusCode::NOT_FOUND
    );
    register(&registry, "OVR", id, 9001, "UP").await;
    assert_eq!(
        call(&registry, Method::PUT, &path, None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        registry
            .api
            .service("ovr", None)
            .await
            .expect("v1")
            .instances[0]
            .status,
        Status::Passing
    );

    // Maintenance set through v1 reads as OUT_OF_SERVICE.
    registry
        .api
        .set_status("ovr", model_id, Status::Maintenance)
        .await
        .expect("v1 status");
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "OUT_OF_SERVICE"
    );
    registry
        .api
        .set_status("ovr", model_id, Status::Passing)
        .await
        .expect("v1 status");

    // STARTING takes no traffic; DOWN is critical and holds across renewals.
    register(&registry, "OVR", id, 9001, "STARTING").await;
    assert_eq!(
        registry
            .api
            .service("ovr", None)
            .await
            .expect("v1")
            .instances[0]
            .status,
        Status::Maintenance
    );
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "STARTING"
    );
    register(&registry, "OVR", id, 9001, "DOWN").await;
    assert_eq!(
        call(&registry, Method::PUT, &path, None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        registry
            .api
            .service("ovr", None)
            .await
            .expect("v1")
            .instances[0]
            .status,
        Status::Critical
    );
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["status"],
        "DOWN"
    );

    // Metadata updates.
    let meta = call(
        &registry,
        Method::PUT,
        &format!("{path}/metadata?color=blue"),
        None,
        None,
    )
    .await;
    assert_eq!(meta.status, StatusCode::OK, "{}", meta.text);
    assert_eq!(
        get_json(&registry, &path).await.json()["instance"]["metadata"]["color"],
        "blue"
    );
    let bad = call(
        &registry,
        Method::PUT,
        &format!("{path}/status?value=SLEEPY"),
        None,
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Metadata updates keep the model's limits.
    let long = call(
        &registry,
        Method::PUT,
        &format!("{path}/metadata?color={}", "x".repeat(600)),
        None,
        None,
    )
    .await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST, "{}", long.text);
    assert!(long.text.contains("metadata.color"), "{}", long.text);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hashcode_and_the_delta_follow_the_whole_registry() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    register(&registry, "ONE", "h:one:1", 9001, "UP").await;
    register(&registry, "ONE", "h:one:2", 9002, "DOWN").await;
    // An instance of another API counts too.
    registry
        .api
        .register("web", "web-1", &InstanceSpec::new("http://10.0.0.9:80"))
        .await
        .expect("v1 register");
    let full = get_json(&registry, "/eureka/apps").await.json();
    assert_eq!(full["applications"]["apps__hashcode"], "DOWN_1_UP_2_");
    let index = registry.api.services().await.expect("v1").index;
    assert_eq!(full["applications"]["versions__delta"], index.to_string());
    let web = get_json(&registry, "/eureka/apps/WEB").await.json();
    assert_eq!(web["application"]["instance"][0]["instanceId"], "web-1");
    assert_eq!(web["application"]["instance"][0]["vipAddress"], "web");

    call(
        &registry,
        Method::DELETE,
        "/eureka/apps/ONE/h:one:2",
        None,
        None,
    )
    .await;
    // A change after the registration is the latest action: MODIFIED, as on Eureka's
    // server (a client holding the instance ignores an ADDED).
    let modified = call(
        &registry,
        Method::PUT,
        "/eureka/apps/WEB/web-1/metadata?zone=b",
        None,
        None,
    )
    .await;
    assert_eq!(modified.status, 200, "{}", modified.text);
    let delta = get_json(&registry, "/eureka/apps/delta").await.json();
    assert_eq!(delta["applications"]["apps__hashcode"], "UP_2_");
    let mut actions: Vec<(String, String)> = delta["applications"]["application"]
        .as_array()
        .expect("a list")
        .iter()
        .flat_map(|app| app["instance"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            (
                i["instanceId"].as_str().unwrap_or_default().to_owned(),
                i["actionType"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("h:one:1".to_owned(), "ADDED".to_owned()),
            ("h:one:2".to_owned(), "DELETED".to_owned()),
            ("web-1".to_owned(), "MODIFIED".to_owned()),
        ]
    );
    registry.stop().await;
}

both_stores!(
    the_delta_holds_the_changes_made_before_and_after_a_restart,
    |backend| async move {
        let registry = TestRegistry::start(backend).await;
        register(&registry, "ONE", "h:one:1", 9001, "UP").await;
        let database_url = registry.database_url.clone();
        registry.stop().await;

        // A registry started on a database with history: its view holds no event yet.
        let restarted = TestRegistry::start_on(database_url, |_| {}).await;
        register(&restarted, "ONE", "h:one:2", 9002, "UP").await;
        let delta = get_json(&restarted, "/eureka/apps/delta").await.json();
        let mut ids: Vec<String> = delta["applications"]["application"]
            .as_array()
            .expect("a list")
            .iter()
            .flat_map(|app| app["instance"].as_array().cloned().unwrap_or_default())
            .map(|i| i["instanceId"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, ["h:one:1", "h:one:2"], "{delta}");
        assert_eq!(delta["applications"]["apps__hashcode"], "UP_2_");
        restarted.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_another_api_holds_under_the_same_eureka_id_is_a_conflict() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    registry
        .api
        .register("sum", "my_id", &InstanceSpec::new("http://10.0.0.1:80"))
        .await
        .expect("v1 register");
    // Eureka's `my_id` would be stored as `my_5fid` and read back as `my_id` too.
    let taken = call(
        &registry,
        Method::POST,
        "/eureka/apps/SUM",
        Some((
            "application/json",
            body("SUM", "my_id", 9000, "UP").to_string(),
        )),
        None,
    )
    .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);
    // The instance of the other API is still the one Eureka reads as `my_id`.
    let shown = get_json(&registry, "/eureka/apps/SUM/my_id").await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    assert_eq!(shown.json()["instance"]["hostName"], "10.0.0.1");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_a_clear_4xx_never_a_500() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let post = |app: &str, content_type: &str, body: String| {
        let registry = &registry;
        let path = format!("/eureka/apps/{app}");
        let content_type = content_type.to_owned();
        async move {
            call(
                registry,
                Method::POST,
                &path,
                Some((&content_type, body)),
                None,
            )
            .await
        }
    };
    let good = body("BAD", "h:bad:1", 9000, "UP");
    let edited = |edit: &dyn Fn(&mut Value)| {
        let mut body = good.clone();
        edit(&mut body);
        body.to_string()
    };
    // Each protection on its own: a valid body over the size limit, closed elements nested
    // past the depth limit, a DTD that declares nothing to expand.
    let specific: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "application/json",
            edited(&|b| b["instance"]["metadata"]["pad"] = json!("x".repeat(70 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            "application/xml",
            format!(
                "<instance><app>BAD</app>{}{}</instance>",
                "<a>".repeat(40),
                "</a>".repeat(40)
            ),
            StatusCode::BAD_REQUEST,
            "nested too deeply",
        ),
        (
            "application/xml",
            r#"<?xml version="1.0"?><!DOCTYPE instance><instance><app>BAD</app></instance>"#
                .to_owned(),
            StatusCode::BAD_REQUEST,
            "DTD",
        ),
    ];
    for (content_type, body, status, reason) in specific {
        let shown = body.chars().take(120).collect::<String>();
        let answer = post("BAD", content_type, body).await;
        assert_eq!(answer.status, status, "{shown}: {}", answer.text);
        assert!(answer.text.contains(reason), "{shown}: {}", answer.text);
    }
    let cases: Vec<(&str, &str, String)> = vec![
        ("BAD", "application/json", edited(&|b| b["instance"]["app"] = json!(null))),
        ("BAD", "application/json", edited(&|b| b["instance"]["port"] = json!({"$": "eighty"}))),
        ("BAD", "application/json", edited(&|b| b["instance"]["status"] = json!("SLEEPY"))),
        ("BAD", "application/json", edited(&|b| b["instance"]["app"] = json!("OTHER"))),
        ("BAD", "application/json", "{not json".to_owned()),
        ("BAD_APP", "application/json", edited(&|b| b["instance"]["app"] = json!("BAD_APP"))),
        ("BAD", "application/xml", "<instance><app>BAD</app>".to_owned()),
        (
            "BAD",
            "application/xml",
            "<instance><hostName>h</hostName><port>80</port></instance>".to_owned(),
        ),
        (
            "BAD",
            "application/xml",
            r#"<instance><app>BAD</app><hostName>h</hostName><port enabled="true">99999</port></instance>"#.to_owned(),
        ),
        (
            "BAD",
            "application/xml",
            "<instance><app>BAD</app><hostName>h</hostName><port>80</port><status>SLEEPY</status></instance>".to_owned(),
        ),
        ("BAD", "application/xml", format!("<instance>{}</instance>", "<a>".repeat(40))),
        (
            "BAD",
            "application/xml",
            r#"<?xml version="1.0"?><!DOCTYPE instance [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><instance><app>&b;</app></instance>"#.to_owned(),
        ),
        ("BAD", "application/xml", "<instance><app>&ext;</app></instance>".to_owned()),
        ("BAD", "text/csv", "a,b".to_owned()),
        ("BAD", "application/json", "x".repeat(70 * 1024)),
    ];
    for (app, content_type, body) in cases {
        let shown = body.chars().take(120).collect::<String>();
        let answer = post(app, content_type, body).await;
        assert!(
            answer.status.is_client_error(),
            "{app} {content_type} {shown}: {} {}",
            answer.status,
            answer.text
        );
    }
    assert!(
        registry
            .api
            .services()
            .await
            .expect("v1")
            .services
            .is_empty()
    );
    // Nothing was registered, and the registry still works.
    register(&registry, "BAD", "h:bad:1", 9000, "UP").await;
    let unknown = call(&registry, Method::GET, "/eureka/nothing-here", None, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_accepted_as_the_basic_auth_password() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.token = Some("write-secret".to_owned());
        settings.read_token = Some("read-secret".to_owned());
    })
    .await;
    let send = |method: Method, path: &str, password: Option<&str>, body: Option<String>| {
        let mut request = registry.http.request(method, registry.url(path));
        if let Some(password) = password {
            request = request.basic_auth("eureka", Some(password));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        async move { request.send().await.expect("answers").status() }
    };
    let registration = body("SEC", "h:sec:1", 9000, "UP").to_string();
    assert_eq!(
        send(
            Method::POST,
            "/eureka/apps/SEC",
            None,
            Some(registration.clone())
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            Method::POST,
            "/eureka/apps/SEC",
            Some("read-secret"),
            Some(registration.clone())
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            Method::POST,
            "/eureka/apps/SEC",
            Some("write-secret"),
            Some(registration)
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(Method::GET, "/eureka/apps", None, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(Method::GET, "/eureka/apps", Some("read-secret"), None).await,
        StatusCode::OK
    );
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_lapses_without_renewals_and_a_renewal_revives_it() {
    let registry = TestRegistry::start(Backend::Sqlite).await;
    let mut registration = body("LEASE", "h:lease:1", 9000, "UP");
    registration["instance"]["leaseInfo"]["durationInSecs"] = json!(1);
    let answer = call(
        &registry,
        Method::POST,
        "/eureka/apps/LEASE",
        Some(("application/json", registration.to_string())),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let path = "/eureka/apps/LEASE/h%3Alease%3A1";
    eventually(DEADLINE, "the lease to lapse", || async {
        let status = get_json(&registry, path).await.json()["instance"]["status"].clone();
        (status == "DOWN").then_some(())
    })
    .await;
    assert_eq!(
        call(&registry, Method::PUT, path, None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_json(&registry, path).await.json()["instance"]["status"],
        "UP"
    );
    registry.stop().await;
}
