//! `RegistryApi` against a canned HTTP server: checks what goes on the wire (method, path,
//! query, headers, body) and how answers are read, without needing the real registry
//! (whose own tests drive it through this client end to end).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use registry_api::{ErrorCode, Event, EventKind, Instance, InstanceSpec, Reason, Status};
use registry_client::{ClientError, RegistryApi, StreamItem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One canned answer, served on its own connection.
enum Reply {
    /// Status line tail (`201 Created`), content type, body.
    Full(&'static str, &'static str, String),
    /// A `text/event-stream` body written in these pieces, then the connection closes.
    Sse(Vec<String>),
}

/// Serves `replies` in order, one connection each; the handle answers the requests seen
/// (head and body as text).
async fn serve(replies: Vec<Reply>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = tokio::spawn(async move {
        let mut seen = Vec::new();
        for reply in replies {
            let (mut socket, _) = listener.accept().await.expect("accept");
            seen.push(read_request(&mut socket).await);
            match reply {
                Reply::Full(status, content_type, body) => {
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    socket.write_all(head.as_bytes()).await.expect("write");
                    socket.write_all(body.as_bytes()).await.expect("write");
                }
                Reply::Sse(pieces) => {
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
                    socket.write_all(head.as_bytes()).await.expect("write");
                    for piece in pieces {
                        socket.write_all(piece.as_bytes()).await.expect("write");
                        socket.flush().await.expect("flush");
                        // Separate TCP segments, so the client sees separate chunks.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            let _ = socket.shutdown().await;
        }
        seen
    });
    (base, handle)
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.expect("read");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("length"))
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + length || n == 0 {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

fn instance(status: Status) -> Instance {
    let at = Utc
        .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
        .single()
        .expect("valid");
    Instance {
        id: "sum-1".into(),
        service: "sum".into(),
        url: "http://10.0.0.1:4040".into(),
        status,
        tags: vec![],
        metadata: BTreeMap::new(),
        ttl_seconds: 10,
        check: None,
        registered_at: at,
        last_heartbeat_at: at,
        lease_expires_at: Some(at),
        status_changed_at: at,
        last_check: None,
        lease_held: false,
        deregister_critical_after: None,
        lease_status: None,
        lease_output: None,
        maintenance_reason: None,
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializes")
}

fn event(index: u64) -> Event {
    Event {
        index,
        at: Utc
            .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
            .single()
            .expect("valid"),
        service: "sum".into(),
        instance: "sum-1".into(),
        kind: EventKind::Registered,
        from: None,
        to: Some(Status::Passing),
        reason: Reason::Registered,
        snapshot: instance(Status::Passing),
    }
}

#[tokio::test]
async fn register_sends_the_spec_with_the_token_and_reads_created() {
    let body = json(&instance(Status::Passing));
    let (base, server) = serve(vec![
        Reply::Full("201 Created", "application/json", body.clone()),
        Reply::Full("200 OK", "application/json", body),
    ])
    .await;
    let api = RegistryApi::new(&base).expect("api").with_token("tok");
    let spec = InstanceSpec::new("http://10.0.0.1:4040");
    let first = api.register("sum", "sum-1", &spec).await.expect("register");
    assert!(first.created);
    assert_eq!(first.instance, instance(Status::Passing));
    let again = api.register("sum", "sum-1", &spec).await.expect("replace");
    assert!(!again.created);

    let seen = server.await.expect("server");
    let request = &seen[0];
    assert!(
        request.starts_with("PUT /v1/services/sum/instances/sum-1 HTTP/1.1\r\n"),
        "{request}"
    );
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("authorization: bearer tok\r\n"), "{request}");
    assert!(
        lower.contains("content-type: application/json\r\n"),
        "{request}"
    );
    assert!(request.ends_with(r#"{"url":"http://10.0.0.1:4040","tags":[],"metadata":{}}"#));
}

#[tokio::test]
async fn error_bodies_become_api_errors() {
    let (base, server) = serve(vec![
        Reply::Full(
            "400 Bad Request",
            "application/json",
            r#"{"error":{"code":"invalid_argument","message":"must use http or https","field":"url"}}"#.into(),
        ),
        Reply::Full("502 Bad Gateway", "text/html", "<h1>Bad Gateway</h1>".into()),
        Reply::Full(
            "404 Not Found",
            "application/json",
            r#"{"error":{"code":"not_found","message":"no instance sum/x"}}"#.into(),
        ),
    ])
    .await;
    let api = RegistryApi::new(&base).expect("api");
    match api
        .register("sum", "x", &InstanceSpec::new("ftp://h"))
        .await
    {
        Err(ClientError::Api {
            status: 400,
            code: ErrorCode::InvalidArgument,
            message,
            field: Some(field),
        }) => {
            assert_eq!(message, "must use http or https");
            assert_eq!(field, "url");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    let proxy = api.services().await.expect_err("502");
    assert!(proxy.is_transient());
    assert!(matches!(
        proxy,
        ClientError::Api { status: 502, code: ErrorCode::Unavailable, ref message, .. } if message == "<h1>Bad Gateway</h1>"
    ));
    let gone = api.heartbeat("sum", "x").await.expect_err("404");
    assert!(gone.is_not_found());
    let seen = server.await.expect("server");
    assert!(seen[2].starts_with("PUT /v1/services/sum/instances/x/heartbeat HTTP/1.1\r\n"));
}

#[tokio::test]
async fn small_calls_use_their_routes() {
    let (base, server) = serve(vec![
        Reply::Full("204 No Content", "text/plain", String::new()),
        Reply::Full(
            "200 OK",
            "application/json",
            json(&instance(Status::Maintenance)),
        ),
        Reply::Full(
            "200 OK",
            "application/json",
            r#"{"index":7,"name":"a b","instances":[]}"#.into(),
        ),
        Reply::Full("200 OK", "application/json", r#"{"events":[]}"#.into()),
        Reply::Full("200 OK", "text/plain", "ok".into()),
        Reply::Full(
            "503 Service Unavailable",
            "application/json",
            r#"{"error":{"code":"unavailable","message":"database unreachable"}}"#.into(),
        ),
    ])
    .await;
    let api = RegistryApi::new(&format!("{base}/")).expect("api");
    api.deregister("sum", "sum-1").await.expect("deregister");
    let drained = api
        .set_status("sum", "sum-1", Status::Maintenance)
        .await
        .expect("status");
    assert_eq!(drained.status, Status::Maintenance);
    let watched = api
        .watch_service("a b", Some(Status::Passing), 6, Duration::from_secs(30))
        .await
        .expect("watch");
    assert_eq!(watched.index, 7);
    let since = Utc
        .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
        .single()
        .expect("valid");
    api.history("sum", Some("sum-1"), Some(since), None)
        .await
        .expect("history");
    api.healthz().await.expect("healthz");
    let not_ready = api.readyz().await.expect_err("503");
    assert_eq!(not_ready.status(), Some(503));

    let seen = server.await.expect("server");
    let lines: Vec<&str> = seen
        .iter()
        .map(|r| r.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(
        lines,
        [
            "DELETE /v1/services/sum/instances/sum-1 HTTP/1.1",
            "PUT /v1/services/sum/instances/sum-1/status HTTP/1.1",
            "GET /v1/services/a%20b?status=passing&index=6&wait=30s HTTP/1.1",
            "GET /v1/history?service=sum&instance=sum-1&since=2026-05-01T10%3A00%3A00Z HTTP/1.1",
            "GET /healthz HTTP/1.1",
            "GET /readyz HTTP/1.1",
        ]
    );
    assert!(seen[1].ends_with(r#"{"status":"maintenance"}"#));
}

#[tokio::test]
async fn events_are_parsed_across_network_chunks_and_resumed_with_last_event_id() {
    let text = format!(
        ": keepalive\n\nid: 3\ndata: {}\n\nid: 4\ndata: {}\n\n",
        json(&event(3)),
        json(&event(4))
    );
    let (first, second) = text.split_at(text.len() / 2 + 3);
    let (base, server) = serve(vec![
        Reply::Sse(vec![first.to_owned(), second.to_owned()]),
        Reply::Sse(vec![format!("id: 5\ndata: {}\n\n", json(&event(5)))]),
        Reply::Full("200 OK", "text/html", "<html></html>".into()),
    ])
    .await;
    let api = RegistryApi::new(&base).expect("api").with_token("tok");
    let mut stream = api.events(Some(2), Some("sum")).await.expect("stream");
    let mut indexes = Vec::new();
    while let Some(item) = stream.next().await {
        match item.expect("item") {
            StreamItem::Event(event) => indexes.push(event.index),
            StreamItem::Reset { .. } => panic!("no reset was sent"),
        }
    }
    assert_eq!(indexes, [3, 4]);
    let resume_from = stream.last_event_id().expect("saw events");
    let mut resumed = api
        .events_resume(resume_from, Some("sum"))
        .await
        .expect("stream");
    let item = resumed.next().await.expect("one").expect("ok");
    assert_eq!(item.index(), 5);
    assert!(resumed.next().await.is_none());
    assert!(matches!(
        api.events(None, None).await,
        Err(ClientError::Decode(_))
    ));

    let seen = server.await.expect("server");
    assert!(seen[0].starts_with("GET /v1/events?since=2&service=sum HTTP/1.1\r\n"));
    let first_lower = seen[0].to_ascii_lowercase();
    assert!(first_lower.contains("accept: text/event-stream\r\n"));
    assert!(first_lower.contains("authorization: bearer tok\r\n"));
    assert!(seen[1].starts_with("GET /v1/events?service=sum HTTP/1.1\r\n"));
    assert!(
        seen[1]
            .to_ascii_lowercase()
            .contains("last-event-id: 4\r\n")
    );
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transient_transport_error() {
    // Bind then drop, so the port is (almost certainly) closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let api = RegistryApi::new(&format!("http://{addr}")).expect("api");
    let error = api.services().await.expect_err("refused");
    assert!(matches!(error, ClientError::Transport(_)), "{error:?}");
    assert!(error.is_transient());
}
