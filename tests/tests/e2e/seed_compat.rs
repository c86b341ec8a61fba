//! The original registry's routes, driven with the exact requests its Node services and
//! client send (docs/api.md, The original API), against tiny HTTP servers
//! in this process that stand in for `sum` and `concat` and answer `GET /status`.
//!
//! The seed check runs every 5 s and needs two failures to turn an instance critical, so
//! the tests that wait for a check outcome poll with deadlines of 20 s or more.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Backend, TestRegistry, eventually};
use registry_api::Status;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Two failed checks at the seed's 5 s interval, plus room for a loaded machine.
const CHECK_DEADLINE: Duration = Duration::from_secs(20);
/// What "promptly" means for a registry that is busy with a hanging check.
const PROMPT: Duration = Duration::from_secs(1);
const TOKEN: &str = "seed-write-token";

/// Runs `async fn $name(Backend)` as two tests, `$name::sqlite` and `$name::postgres`.
macro_rules! on_both_stores {
    ($(#[$attr:meta])* $name:ident) => {
        mod $name {
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            $(#[$attr])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    };
}

/// How a fake service answers `GET /status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Behaviour {
    /// 200 `{"status":"ok"}` as application/json, like the Node services.
    Ok = 0,
    /// 200 `{"status":"ok"}` as text/plain.
    OkAsText = 1,
    /// 200 with an HTML page (a proxy's error page, a wrong app on the port).
    Html = 2,
    /// 503.
    Unavailable = 3,
    /// Accepts the connection, reads the request, never answers.
    Hang = 4,
}

impl Behaviour {
    fn from_u8(raw: u8) -> Self {
        match raw {
            0 => Self::Ok,
            1 => Self::OkAsText,
            2 => Self::Html,
            3 => Self::Unavailable,
            _ => Self::Hang,
        }
    }
}

/// A stand-in for one of the seed's Node services, on 127.0.0.1 and a port of its own.
struct FakeService {
    uri: String,
    port: u16,
    behaviour: Arc<AtomicU8>,
    status_hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeService {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(AtomicU8::new(behaviour as u8));
        let status_hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(listener, shared.clone(), status_hits.clone()));
        Self {
            uri: format!("http://127.0.0.1:{port}"),
            port,
            behaviour: shared,
            status_hits,
            task,
        }
    }

    fn set(&self, behaviour: Behaviour) {
        self.behaviour.store(behaviour as u8, Ordering::SeqCst);
    }

    /// How many `GET /status` requests arrived (answered or not).
    fn status_hits(&self) -> usize {
        self.status_hits.load(Ordering::SeqCst)
    }

    /// The instance id the seed route gives this service's uri.
    fn seed_id(&self) -> String {
        format!("127.0.0.1-{}", self.port)
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which ends every connection.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, behaviour: Arc<AtomicU8>, hits: Arc<AtomicUsize>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(answer(stream, behaviour.clone(), hits.clone()));
    }
}

/// Answers one request and closes the connection.
async fn answer(mut stream: TcpStream, behaviour: Arc<AtomicU8>, hits: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let request_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let (status, content_type, body) = if request_line.starts_with("GET /status ") {
        hits.fetch_add(1, Ordering::SeqCst);
        match Behaviour::from_u8(behaviour.load(Ordering::SeqCst)) {
            Behaviour::Ok => ("200 OK", "application/json", r#"{"status":"ok"}"#),
            Behaviour::OkAsText => ("200 OK", "text/plain", r#"{"status":"ok"}"#),
            Behaviour::Html => (
                "200 OK",
                "text/html",
                "<html><body><h1>It works!</h1></body></html>",
            ),
            Behaviour::Unavailable => (
                "503 Service Unavailable",
                "application/json",
                r#"{"status":"down"}"#,
            ),
            Behaviour::Hang => {
                // Hold the connection open without a word until the test ends.
                std::future::pending::<()>().await;
                return;
            }
        }
    } else {
        ("404 Not Found", "text/plain", "not found")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `POST /service` exactly as the seed's services send it.
async fn seed_register(
    registry: &TestRegistry,
    name: &str,
    uri: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = registry
        .http
        .post(registry.url("/service"))
        .header("content-type", "application/json")
        .body(json!({"service": {"name": name, "uri": uri, "online": true}}).to_string());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("POST /service")
}

/// `GET /service?service=NAME`: status and JSON body.
async fn seed_lookup(registry: &TestRegistry, name: &str) -> (u16, Value) {
    let response = registry
        .http
        .get(registry.url(&format!("/service?service={name}")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /service?service=");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON answer");
    (status, body)
}

/// `GET /service`: the whole map.
async fn seed_map(registry: &TestRegistry) -> Value {
    let response = registry
        .http
        .get(registry.url("/service"))
        .send()
        .await
        .expect("GET /service");
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON map")
}

fn seed_view(name: &str, uri: &str, online: bool) -> Value {
    json!({"name": name, "uri": uri, "online": online})
}

/// Polls until the seed lookup of `name` says `online: false`, and answers that body.
async fn wait_offline(registry: &TestRegistry, name: &str, what: &str) -> Value {
    eventually(CHECK_DEADLINE, what, || async {
        let (status, body) = seed_lookup(registry, name).await;
        assert_eq!(status, 200, "lookup of {name}: {body}");
        (body["online"] == json!(false)).then_some(body)
    })
    .await
}

/// Waits until `fake` has been checked at least `n` times, so that `n - 1` outcomes are
/// surely recorded (checks of one instance run one after the other).
async fn wait_checked(fake: &FakeService, n: usize) {
    eventually(
        CHECK_DEADLINE,
        &format!("{n} checks of {}", fake.uri),
        || async { (fake.status_hits() >= n).then_some(()) },
    )
    .await;
}

/// A repeated `POST /service` answers 201 each time and keeps one instance, `<host>-<port>`,
/// with a 5 s `/status` check and no lease; the lookup answers `{name, uri, online:true}`
/// with the uri exactly as registered, the map holds it, and it stays online while its
/// `/status` answers `{"status":"ok"}`.
async fn seed_registration_round_trips(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let concat = FakeService::start(Behaviour::Ok).await;

    let first = seed_register(&registry, "concat", &concat.uri, None).await;
    assert_eq!(first.status(), 201);
    let index = registry.api.services().await.expect("services").index;
    let again = seed_register(&registry, "concat", &concat.uri, None).await;
    assert_eq!(again.status(), 201, "a repeated POST /service is 201 too");
    // Some Node clients send the JSON as text/plain, or with no content type at all.
    for content_type in [Some("text/plain;charset=UTF-8"), None] {
        let mut request = registry.http.post(registry.url("/service")).body(
            json!({"service": {"name": "concat", "uri": concat.uri, "online": true}}).to_string(),
        );
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        let response = request.send().await.expect("POST /service");
        assert_eq!(response.status(), 201, "content type {content_type:?}");
    }
    assert_eq!(
        registry.api.services().await.expect("services").index,
        index,
        "repeating an identical registration changes nothing"
    );

    let listed = registry.api.service("concat", None).await.expect("concat");
    assert_eq!(listed.instances.len(), 1, "still one instance");
    let instance = &listed.instances[0];
    assert_eq!(instance.id, concat.seed_id());
    assert_eq!(instance.url, concat.uri, "the uri is kept exactly");
    assert_eq!(instance.ttl_seconds, 0, "seed instances have no lease");
    let check = instance.check.as_ref().expect("an active check");
    assert_eq!(check.http.as_deref(), Some("/status"));
    assert_eq!(check.interval_seconds, 5);

    let (status, body) = seed_lookup(&registry, "concat").await;
    assert_eq!(status, 200);
    assert_eq!(body, seed_view("concat", &concat.uri, true));
    assert_eq!(
        seed_map(&registry).await,
        json!({"concat": seed_view("concat", &concat.uri, true)})
    );

    // Several checks later it is still online.
    wait_checked(&concat, 3).await;
    let instance = registry
        .api
        .service("concat", None)
        .await
        .expect("concat")
        .instances[0]
        .clone();
    assert_eq!(instance.status, Status::Passing);
    let (_, body) = seed_lookup(&registry, "concat").await;
    assert_eq!(body, seed_view("concat", &concat.uri, true));
    registry.stop().await;
}
on_both_stores!(
    /// Seed registration: 201 when repeated, one `<host>-<port>` instance, exact uri, online.
    seed_registration_round_trips
);

/// A uri without a port gives the id `<host>-<default port of the scheme>`.
async fn seed_ids_use_the_default_port(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    for (uri, id) in [
        ("http://localhost", "localhost-80"),
        ("https://localhost", "localhost-443"),
        ("http://localhost:4060", "localhost-4060"),
    ] {
        let response = seed_register(&registry, "mult", uri, None).await;
        assert_eq!(response.status(), 201, "{uri}");
        let listed = registry.api.service("mult", None).await.expect("mult");
        let found = listed.instances.iter().find(|i| i.id == id);
        assert_eq!(
            found.map(|i| i.url.as_str()),
            Some(uri),
            "id {id} for {uri}"
        );
    }
    registry.stop().await;
}
on_both_stores!(
    /// Seed ids fall back to the scheme's default port.
    seed_ids_use_the_default_port
);

/// Two passing instances of one name are answered in turn.
async fn seed_lookup_round_robins(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let a = FakeService::start(Behaviour::Ok).await;
    let b = FakeService::start(Behaviour::Ok).await;
    for fake in [&a, &b] {
        assert_eq!(
            seed_register(&registry, "sum", &fake.uri, None)
                .await
                .status(),
            201
        );
    }
    let mut uris = Vec::new();
    for _ in 0..6 {
        let (status, body) = seed_lookup(&registry, "sum").await;
        assert_eq!(status, 200);
        assert_eq!(body["online"], json!(true));
        assert_eq!(body["name"], json!("sum"));
        uris.push(body["uri"].as_str().expect("uri").to_owned());
    }
    for pair in uris.windows(2) {
        assert_ne!(pair[0], pair[1], "lookups alternate: {uris:?}");
    }
    assert!(uris.contains(&a.uri) && uris.contains(&b.uri), "{uris:?}");
    registry.stop().await;
}
on_both_stores!(
    /// Round robin over two passing seed instances.
    seed_lookup_round_robins
);

/// When an instance's `/status` stops passing, lookups skip it; when none passes, the
/// lookup and the map answer `online:false` with the uri of the last one seen passing.
async fn seed_offline_keeps_the_last_known_uri(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let first = FakeService::start(Behaviour::Ok).await;
    let second = FakeService::start(Behaviour::Ok).await;
    for fake in [&first, &second] {
        assert_eq!(
            seed_register(&registry, "concat", &fake.uri, None)
                .await
                .status(),
            201
        );
    }

    first.set(Behaviour::Unavailable);
    eventually(
        CHECK_DEADLINE,
        "the first instance to turn critical",
        || async {
            let listed = registry
                .api
                .service("concat", Some(Status::Critical))
                .await
                .ok()?;
            (listed.instances.len() == 1).then_some(())
        },
    )
    .await;
    for _ in 0..4 {
        let (_, body) = seed_lookup(&registry, "concat").await;
        assert_eq!(
            body,
            seed_view("concat", &second.uri, true),
            "only the passing one"
        );
    }

    second.set(Behaviour::Unavailable);
    let body = wait_offline(&registry, "concat", "concat to go offline").await;
    assert_eq!(
        body,
        seed_view("concat", &second.uri, false),
        "offline, with the uri of the instance seen passing last"
    );
    assert_eq!(
        seed_map(&registry).await,
        json!({"concat": seed_view("concat", &second.uri, false)})
    );

    // And back: one good answer makes it online again.
    first.set(Behaviour::Ok);
    eventually(CHECK_DEADLINE, "concat back online", || async {
        let (_, body) = seed_lookup(&registry, "concat").await;
        (body == seed_view("concat", &first.uri, true)).then_some(())
    })
    .await;
    registry.stop().await;
}
on_both_stores!(
    /// Offline seed instances are skipped; none passing answers online:false, last uri.
    seed_offline_keeps_the_last_known_uri
);

/// A `/status` that answers 200 with an HTML page is not `{"status":"ok"}`: the instance
/// turns offline (the original registry crashed on such a body).
async fn seed_html_status_goes_offline(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let concat = FakeService::start(Behaviour::Html).await;
    assert_eq!(
        seed_register(&registry, "concat", &concat.uri, None)
            .await
            .status(),
        201
    );
    let body = wait_offline(&registry, "concat", "an HTML /status to go offline").await;
    assert_eq!(body, seed_view("concat", &concat.uri, false));
    let instance = registry
        .api
        .service("concat", None)
        .await
        .expect("concat")
        .instances[0]
        .clone();
    assert_eq!(instance.status, Status::Critical);
    assert!(
        concat.status_hits() >= 2,
        "two failed checks before critical"
    );
    let health = registry
        .http
        .get(registry.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    registry.stop().await;
}
on_both_stores!(
    /// An HTML /status turns a seed instance offline.
    seed_html_status_goes_offline
);

/// `{"status":"ok"}` served as text/plain still counts: the content type does not matter.
async fn seed_ok_as_text_plain_stays_online(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let sum = FakeService::start(Behaviour::OkAsText).await;
    assert_eq!(
        seed_register(&registry, "sum", &sum.uri, None)
            .await
            .status(),
        201
    );
    wait_checked(&sum, 3).await;
    let instance = registry
        .api
        .service("sum", None)
        .await
        .expect("sum")
        .instances[0]
        .clone();
    assert_eq!(instance.status, Status::Passing);
    let (status, body) = seed_lookup(&registry, "sum").await;
    assert_eq!(status, 200);
    assert_eq!(body, seed_view("sum", &sum.uri, true));
    registry.stop().await;
}
on_both_stores!(
    /// `{"status":"ok"}` as text/plain keeps a seed instance online.
    seed_ok_as_text_plain_stays_online
);

/// A `/status` that accepts the connection and never answers turns the instance offline
/// (the check times out), and meanwhile every other request is answered promptly.
async fn seed_hanging_status_goes_offline_harmlessly(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let hung = FakeService::start(Behaviour::Hang).await;
    let healthy = FakeService::start(Behaviour::Ok).await;
    for (name, fake) in [("concat", &hung), ("sum", &healthy)] {
        assert_eq!(
            seed_register(&registry, name, &fake.uri, None)
                .await
                .status(),
            201
        );
    }

    let slowest = Cell::new(Duration::ZERO);
    let probes = Cell::new(0_u32);
    let body = eventually(CHECK_DEADLINE, "a hanging /status to go offline", || {
        let (registry, slowest, probes) = (&registry, &slowest, &probes);
        async move {
            for path in [
                "/healthz",
                "/v1/services",
                "/service?service=sum",
                "/service",
            ] {
                let started = tokio::time::Instant::now();
                let response =
                    tokio::time::timeout(PROMPT, registry.http.get(registry.url(path)).send())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("{path} took over {PROMPT:?} while a check hung")
                        })
                        .expect("send");
                assert_eq!(response.status(), 200, "{path}");
                slowest.set(slowest.get().max(started.elapsed()));
                probes.set(probes.get() + 1);
            }
            let (status, body) = seed_lookup(registry, "concat").await;
            assert_eq!(status, 200);
            (body["online"] == json!(false)).then_some(body)
        }
    })
    .await;
    assert_eq!(body, seed_view("concat", &hung.uri, false));
    let (slowest, probes) = (slowest.get(), probes.get());
    assert!(probes > 8, "the registry was probed while the check hung");
    assert!(hung.status_hits() >= 2, "two checks timed out");

    let instance = registry
        .api
        .service("concat", None)
        .await
        .expect("concat")
        .instances[0]
        .clone();
    assert_eq!(instance.status, Status::Critical);
    // Writes keep working too, and the healthy service was never affected.
    let started = tokio::time::Instant::now();
    let other = FakeService::start(Behaviour::Ok).await;
    assert_eq!(
        seed_register(&registry, "mult", &other.uri, None)
            .await
            .status(),
        201
    );
    assert!(
        started.elapsed() < PROMPT,
        "a registration took {:?}",
        started.elapsed()
    );
    let (_, body) = seed_lookup(&registry, "sum").await;
    assert_eq!(body, seed_view("sum", &healthy.uri, true));
    eprintln!("slowest of {probes} probes while a check hung: {slowest:?}");
    registry.stop().await;
}
on_both_stores!(
    /// A hanging /status goes offline by timeout; the registry keeps answering promptly.
    seed_hanging_status_goes_offline_harmlessly
);

/// An unknown name is a 404 JSON error, also once its only instance is gone; an empty
/// registry's map is `{}`.
async fn seed_unknown_name_is_404(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    assert_eq!(seed_map(&registry).await, json!({}));
    let (status, body) = seed_lookup(&registry, "nope").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], json!("not_found"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    let concat = FakeService::start(Behaviour::Ok).await;
    assert_eq!(
        seed_register(&registry, "concat", &concat.uri, None)
            .await
            .status(),
        201
    );
    let (status, _) = seed_lookup(&registry, "concat").await;
    assert_eq!(status, 200);
    registry
        .api
        .deregister("concat", &concat.seed_id())
        .await
        .expect("deregister");
    let (status, body) = seed_lookup(&registry, "concat").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], json!("not_found"));
    assert_eq!(seed_map(&registry).await, json!({}));
    registry.stop().await;
}
on_both_stores!(
    /// Unknown seed names are 404 JSON errors; the empty map is `{}`.
    seed_unknown_name_is_404
);

/// The whole map has one entry per name, each `{name, uri, online}`.
async fn seed_map_lists_every_name(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let sum = FakeService::start(Behaviour::Ok).await;
    let mult = FakeService::start(Behaviour::Ok).await;
    let concat = FakeService::start(Behaviour::Ok).await;
    for (name, fake) in [("sum", &sum), ("mult", &mult), ("concat", &concat)] {
        assert_eq!(
            seed_register(&registry, name, &fake.uri, None)
                .await
                .status(),
            201
        );
    }
    assert_eq!(
        seed_map(&registry).await,
        json!({
            "sum": seed_view("sum", &sum.uri, true),
            "mult": seed_view("mult", &mult.uri, true),
            "concat": seed_view("concat", &concat.uri, true),
        })
    );
    registry.stop().await;
}
on_both_stores!(
    /// `GET /service` answers the map of every name.
    seed_map_lists_every_name
);

/// With `REGISTRY_TOKEN` set, the seed POST needs the token (401 without it or with a
/// wrong one, so the unchanged Node services cannot register); reads stay open.
async fn seed_post_needs_the_token(backend: Backend) {
    let registry = TestRegistry::start_with(backend, |settings| {
        settings.token = Some(TOKEN.to_owned());
    })
    .await;
    let concat = FakeService::start(Behaviour::Ok).await;
    for authorization in [None, Some("Bearer wrong-token")] {
        let response = seed_register(&registry, "concat", &concat.uri, authorization).await;
        assert_eq!(response.status(), 401, "{authorization:?}");
        let body: Value = response.json().await.expect("JSON error");
        assert_eq!(body["error"]["code"], json!("unauthorized"));
    }
    assert!(
        registry
            .api
            .services()
            .await
            .expect("services")
            .services
            .is_empty(),
        "nothing was registered without the token"
    );
    let bearer = format!("Bearer {TOKEN}");
    let response = seed_register(&registry, "concat", &concat.uri, Some(&bearer)).await;
    assert_eq!(response.status(), 201);
    let (status, body) = seed_lookup(&registry, "concat").await;
    assert_eq!(
        status, 200,
        "reads need no token when only the write token is set"
    );
    assert_eq!(body, seed_view("concat", &concat.uri, true));
    registry.stop().await;
}
on_both_stores!(
    /// The seed POST needs the write token when one is set.
    seed_post_needs_the_token
);

/// Instance objects carry `last_check`, the outcome of the latest check,
/// also when a check changes no status (a passing check on a passing instance), and it
/// moves on with every check.
async fn checked_instance_answers_its_last_check(backend: Backend) {
    let registry = TestRegistry::start(backend).await;
    let sum = FakeService::start(Behaviour::Ok).await;
    assert_eq!(
        seed_register(&registry, "sum", &sum.uri, None)
            .await
            .status(),
        201
    );
    let last_check = || async {
        let listed = registry.api.service("sum", None).await.expect("sum");
        listed.instances[0].last_check.clone()
    };
    wait_checked(&sum, 2).await;
    let first = last_check().await.unwrap_or_else(|| {
        panic!(
            "sum/{} answers last_check: null although its check ran and passed",
            sum.seed_id()
        )
    });
    assert_eq!(first.status, Status::Passing, "{}", first.detail);
    let seen = sum.status_hits();
    wait_checked(&sum, seen + 2).await;
    let later = last_check().await.expect("a check ran");
    assert!(
        later.at > first.at,
        "last_check stays at {} although checks ran since",
        first.at
    );
    registry.stop().await;
}
on_both_stores!(
    /// The latest check outcome is answered, also when it changes no status.
    checked_instance_answers_its_last_check
);
