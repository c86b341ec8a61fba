//! `RegistryApi` with several registry URLs against canned HTTP servers and closed ports:
//! which failures move a call on to the next registry, which do not, and how the registry
//! that answered becomes the preferred one for every clone.

use std::time::Duration;

use futures::StreamExt;
use registry_client::{ClientError, RegistryApi};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SERVICES: &str = r#"{"index":3,"services":[]}"#;

/// Serves one canned JSON answer per connection, `count` times.
async fn serve(status: &'static str, body: &'static str, count: usize) -> (String, Server) {
    serve_as(status, "application/json", body, count).await
}

/// Serves one canned answer per connection, `count` times; the handle answers the request
/// lines seen.
async fn serve_as(
    status: &'static str,
    content_type: &'static str,
    body: &'static str,
    count: usize,
) -> (String, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..count {
            let (mut socket, _) = listener.accept().await.expect("accept");
            seen.push(read_head(&mut socket).await);
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.expect("write");
            socket.write_all(body.as_bytes()).await.expect("write");
            let _ = socket.shutdown().await;
        }
        seen
    });
    (base, Server(task))
}

struct Server(JoinHandle<Vec<String>>);

impl Server {
    /// The request lines this server answered, once it has answered all it was given.
    async fn seen(self) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), self.0)
            .await
            .expect("the server got every request it expected")
            .expect("server task")
    }

    /// Whether the server is still waiting for a request (it got fewer than given).
    fn still_waiting(&self) -> bool {
        !self.0.is_finished()
    }
}

async fn read_head(socket: &mut tokio::net::TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A URL on which nothing listens: bound, then released.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn a_refused_connection_moves_on_and_the_answering_registry_is_preferred() {
    let closed = closed_port().await;
    let (live, server) = serve("200 OK", SERVICES, 2).await;
    let api = RegistryApi::new(&format!("{closed}, {live}")).expect("api");
    let clone = api.clone();
    assert_eq!(api.base_url().as_str(), format!("{closed}/"));

    let answer = api.services().await.expect("the second registry answers");
    assert_eq!(answer.index, 3);
    assert_eq!(api.base_url().as_str(), format!("{live}/"));
    assert_eq!(
        clone.base_url().as_str(),
        format!("{live}/"),
        "shared by clones"
    );
    assert_eq!(api.base_urls().len(), 2);
    clone
        .services()
        .await
        .expect("straight to the preferred one");
    assert_eq!(server.seen().await, ["GET /v1/services HTTP/1.1"; 2]);
}

#[tokio::test]
async fn a_503_moves_on_and_is_not_asked_first_again() {
    let (unavailable, first) = serve(
        "503 Service Unavailable",
        r#"{"error":{"code":"unavailable","message":"database unreachable"}}"#,
        2,
    )
    .await;
    let (live, second) = serve("200 OK", SERVICES, 2).await;
    let api = RegistryApi::new(&format!("{unavailable},{live}")).expect("api");
    api.services().await.expect("failed over");
    api.services().await.expect("preferred");
    assert_eq!(second.seen().await.len(), 2);
    assert!(
        first.still_waiting(),
        "the 503 registry was asked once only"
    );
}

#[tokio::test]
async fn an_answer_such_as_404_does_not_move_on() {
    let (answering, first) = serve(
        "404 Not Found",
        r#"{"error":{"code":"not_found","message":"no instance sum/x"}}"#,
        1,
    )
    .await;
    let (other, second) = serve("200 OK", "{}", 1).await;
    let api = RegistryApi::new(&format!("{answering},{other}")).expect("api");
    let error = api.heartbeat("sum", "x").await.expect_err("404");
    assert!(error.is_not_found(), "{error:?}");
    assert_eq!(
        first.seen().await,
        ["PUT /v1/services/sum/instances/x/heartbeat HTTP/1.1"]
    );
    assert!(second.still_waiting(), "the second registry was not asked");
    assert_eq!(api.base_url().as_str(), format!("{answering}/"));
}

#[tokio::test]
async fn when_no_registry_answers_the_last_failure_is_returned_and_preference_stays() {
    let (a, b) = (closed_port().await, closed_port().await);
    let api = RegistryApi::new(&format!("{a},{b}")).expect("api");
    let error = api.services().await.expect_err("nobody listens");
    assert!(matches!(error, ClientError::Transport(_)), "{error:?}");
    assert!(error.is_transient());
    assert_eq!(api.base_url().as_str(), format!("{a}/"));
}

#[tokio::test]
async fn event_streams_fail_over_when_they_start() {
    let closed = closed_port().await;
    let (live, server) = serve_as("200 OK", "text/event-stream", ": keepalive\n\n", 1).await;
    let api = RegistryApi::new(&format!("{closed},{live}")).expect("api");
    let mut stream = api.events(Some(3), None).await.expect("stream opened");
    // A keepalive, then the canned server closes: the stream ends without an item.
    assert!(stream.next().await.is_none());
    assert_eq!(server.seen().await, ["GET /v1/events?since=3 HTTP/1.1"]);
    assert_eq!(api.base_url().as_str(), format!("{live}/"));
}
