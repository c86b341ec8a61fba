//! Hostile or careless clients and secrets (SECURITY.md): slow request heads and bodies
//! are cut off, a client over its write rate gets 429, active checks reach only the
//! networks allowed, and no secret (a token, the database password) reaches the logs.

use std::process::Stdio;
use std::time::Duration;

use crate::support::{Backend, TempDir, TestRegistry, binary, checked_spec, eventually};
use axum::Router;
use axum::routing::get;
use registry_api::{ErrorBody, ErrorCode, InstanceSpec, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const DEADLINE: Duration = Duration::from_secs(20);

/// Reads until the server closes the connection; what it sent before that.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut slow = TcpStream::connect(registry.addr).await.expect("connect");
    slow.write_all(b"GET /v1/services HTTP/1.1\r\nHost: registry\r\nX-Slow: ")
        .await
        .expect("send part of the head");
    let answer = tokio::time::timeout(DEADLINE, read_until_closed(&mut slow))
        .await
        .expect("the registry closes the connection of a client stuck in its head");
    assert!(
        !answer.contains("200 OK"),
        "the half-sent request must not be served: {answer}"
    );
    // Everyone else is served as usual.
    registry.api.services().await.expect("a normal request");
    registry.stop().await;
}

/// Reads one answer (its head and a `Content-Length` body) off a keep-alive connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if received.len() >= head_end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "the connection closed mid-answer: {text}");
        received.extend_from_slice(&buffer[..n]);
    }
}

/// The header read timeout counts from a request head's first byte, not from when the
/// connection fell idle: a client that reuses its keep-alive connection after a pause
/// longer than the timeout is answered (a connection closed just as a request goes out
/// would lose that request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_past_the_header_read_timeout_serves_its_next_request() {
    let header_read_timeout = Duration::from_millis(300);
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.header_read_timeout = header_read_timeout;
    })
    .await;
    let mut client = TcpStream::connect(registry.addr).await.expect("connect");
    let request = b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n";
    for pause in [header_read_timeout * 3, header_read_timeout * 5] {
        client.write_all(request).await.expect("send a request");
        let answer = tokio::time::timeout(DEADLINE, read_answer(&mut client))
            .await
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The pause is the behaviour under test: the connection sits idle this long.
        tokio::time::sleep(pause).await;
    }
    client.write_all(request).await.expect("send a request");
    let answer = tokio::time::timeout(DEADLINE, read_answer(&mut client))
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_answered_503_after_the_request_timeout() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.request_timeout = Duration::from_millis(500);
    })
    .await;
    // Each API's writes answer in that API's shape: our JSON error, Consul's and
    // Eureka's plain text.
    for (head, json) in [
        ("PUT /v1/services/s/instances/i", true),
        ("PUT /v1/agent/service/register", false),
        ("POST /eureka/apps/APP", false),
    ] {
        let mut slow = TcpStream::connect(registry.addr).await.expect("connect");
        let request = format!(
            "{head} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"url\":"
        );
        slow.write_all(request.as_bytes())
            .await
            .expect("send the head and a little of the body");
        let answer = tokio::time::timeout(DEADLINE, read_until_closed(&mut slow))
            .await
            .expect("the registry answers a stalled body and closes");
        assert!(answer.starts_with("HTTP/1.1 503"), "{head}: {answer}");
        assert_eq!(answer.contains("\"unavailable\""), json, "{head}: {answer}");
        assert_eq!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
            !json,
            "{head}: {answer}"
        );
        assert!(answer.contains("took too long"), "{head}: {answer}");
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_rate_limit_get_429_and_reads_are_not_limited() {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.write_rate_limit = 5;
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for n in 0..15 {
        let response = registry
            .http
            .put(registry.url(&format!("/v1/services/s/instances/i-{n}")))
            .json(&InstanceSpec::new("http://10.0.0.1:8080"))
            .send()
            .await
            .expect("PUT");
        statuses.push(response.status().as_u16());
        if response.status() == 429 && limited.is_none() {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: ErrorBody = response.json().await.expect("error body");
            limited = Some((retry_after, body.error.code));
        }
    }
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        (5..15).contains(&accepted),
        "a burst of 5 then about 5 a second: {statuses:?}"
    );
    let (retry_after, code) = limited.expect("some writes were refused");
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    for _ in 0..20 {
        let read = registry
            .http
            .get(registry.url("/v1/services/s"))
            .send()
            .await
            .expect("GET");
        assert_eq!(read.status(), 200, "reads are never limited");
    }
    registry.stop().await;
}

/// A tiny instance whose health endpoint answers 200, on 127.0.0.1.
async fn healthy_instance() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route("/health", get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn register_checked(registry: &TestRegistry, id: &str, url: &str) {
    registry
        .api
        .register("checked", id, &checked_spec(url, "/health"))
        .await
        .expect("register");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_reach_only_the_allowed_networks() {
    let url = healthy_instance().await;
    let name_url = url.replace("127.0.0.1", "localhost");
    let outside = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.check_allowed_networks = vec!["10.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    register_checked(&outside, "by-address", &url).await;
    register_checked(&outside, "by-name", &name_url).await;
    for id in ["by-address", "by-name"] {
        let instance = eventually(DEADLINE, "the check to fail", || async {
            let instances = outside.api.service("checked", None).await.ok()?.instances;
            instances
                .into_iter()
                .find(|i| i.id == id && i.status == Status::Critical)
        })
        .await;
        let detail = instance.last_check.map(|c| c.detail).unwrap_or_default();
        assert!(
            detail.contains("REGISTRY_CHECK_ALLOWED_NETWORKS"),
            "{id}: the failure says why: {detail:?}"
        );
    }
    outside.stop().await;

    // The same instance, with its network allowed, passes.
    let inside = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.check_allowed_networks = vec![
            "127.0.0.0/8".parse().expect("cidr"),
            "::1/128".parse().expect("cidr"),
        ];
    })
    .await;
    register_checked(&inside, "by-name", &name_url).await;
    eventually(DEADLINE, "the check to pass", || async {
        let instances = inside.api.service("checked", None).await.ok()?.instances;
        instances.into_iter().find(|i| {
            i.last_check
                .as_ref()
                .is_some_and(|c| c.status == Status::Passing)
        })
    })
    .await;
    inside.stop().await;
}

/// Runs the registry binary with secrets in its environment, for `work`, and answers
/// everything it wrote.
async fn run_with_secrets(args: &[&str], envs: &[(&str, &str)], stop_after: Duration) -> String {
    let work = TempDir::new("secrets");
    let log_path = work.0.join("registry.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(binary("registry"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REGISTRY_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start the registry");
    if tokio::time::timeout(stop_after, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    std::fs::read_to_string(&log_path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    const DB_PASSWORD: &str = "db-pass-7f3a91";
    const TOKEN: &str = "write-token-5c2e77";
    const READ_TOKEN: &str = "read-token-9b1d04";
    // Nothing listens on port 9: the start fails on the database, with an error logged.
    let unreachable = format!("postgres://registry:{DB_PASSWORD}@127.0.0.1:9/registry");
    let envs = [
        ("DATABASE_URL", unreachable.as_str()),
        ("REGISTRY_TOKEN", TOKEN),
        ("REGISTRY_READ_TOKEN", READ_TOKEN),
    ];
    let mut output = run_with_secrets(&["serve"], &envs, Duration::from_secs(30)).await;
    output += &run_with_secrets(&["check-config"], &envs, DEADLINE).await;
    output += &run_with_secrets(&["serve", "--help"], &envs, DEADLINE).await;
    // A bad setting next to the secrets: the one-line error names the setting only.
    let bad = [
        ("DATABASE_URL", unreachable.as_str()),
        ("REGISTRY_TOKEN", TOKEN),
        ("REGISTRY_DEFAULT_TTL", "forever"),
    ];
    output += &run_with_secrets(&["serve"], &bad, DEADLINE).await;
    assert!(
        output.contains("configuration ok") && output.contains("REGISTRY_DEFAULT_TTL"),
        "the runs happened:\n{output}"
    );
    for secret in [DB_PASSWORD, TOKEN, READ_TOKEN] {
        assert!(
            !output.contains(secret),
            "a secret ({secret}) reached the output:\n{output}"
        );
    }
}

/// DNS has no tokens: where reads need one, serving DNS must be asked for explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_beside_a_read_token_needs_an_explicit_allowance() {
    let guarded = [
        ("REGISTRY_TOKEN", "write-token"),
        ("REGISTRY_READ_TOKEN", "read-token"),
        ("REGISTRY_DNS_ADDR", "127.0.0.1:0"),
    ];
    let refused = run_with_secrets(&["check-config"], &guarded, DEADLINE).await;
    assert!(
        refused.contains("REGISTRY_DNS_ALLOW_UNAUTHENTICATED")
            && !refused.contains("configuration ok"),
        "{refused}"
    );
    let mut allowed = guarded.to_vec();
    allowed.push(("REGISTRY_DNS_ALLOW_UNAUTHENTICATED", "true"));
    let accepted = run_with_secrets(&["check-config"], &allowed, DEADLINE).await;
    assert!(accepted.contains("configuration ok"), "{accepted}");
    let bad_domain = [("REGISTRY_DNS_DOMAIN", "not a domain")];
    let refused = run_with_secrets(&["check-config"], &bad_domain, DEADLINE).await;
    assert!(refused.contains("REGISTRY_DNS_DOMAIN"), "{refused}");
}
