//! Malformed requests: each one gets the right 4xx and the JSON error
//! `{"error":{"code","message","field"?}}` naming the field at fault (docs/api.md,
//! Errors), none gets a 5xx, none changes any state, and the registry keeps serving.
//!
//! The requests go out as exact bytes through plain reqwest, or through a raw TCP socket
//! for the paths reqwest would normalise (`.` and `..` segments).

use std::time::Duration;

use crate::support::{Backend, TestRegistry};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-write-token";
const JSON: &str = "application/json";
/// The instance registered before the table, so heartbeats and status changes have a target.
const KNOWN: &str = "/v1/services/sum/instances/known";
const MAX_BODY: usize = 64 * 1024;

/// How a case authenticates.
#[derive(Debug, Clone, Copy)]
enum Auth {
    /// `Authorization: Bearer <the right token>`.
    Good,
    /// No `Authorization` header.
    Missing,
    /// This exact `Authorization` header value.
    Header(&'static str),
}

/// How a case's body travels.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// With a `Content-Length`.
    Sized(Vec<u8>),
    /// With `Transfer-Encoding: chunked`, in 4 KiB chunks.
    Chunked(Vec<u8>),
}

/// One malformed request and the error it must get.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Body,
    auth: Auth,
    /// Sent over a raw socket, byte for byte (reqwest would normalise the path).
    raw: bool,
    extra_headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
    field: Option<String>,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.into(),
            content_type: None,
            body: Body::None,
            auth: Auth::Good,
            raw: false,
            extra_headers: Vec::new(),
            status: 0,
            code: "",
            field: None,
        }
    }

    fn get(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self::new(name, Method::GET, path)
    }

    fn put(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self::new(name, Method::PUT, path)
    }

    /// A registration of `sum/new-1` with this JSON body.
    fn register(name: impl Into<String>, body: &Value) -> Self {
        Self::put(name, "/v1/services/sum/instances/new-1").json(body)
    }

    fn json(self, body: &Value) -> Self {
        self.bytes(JSON, body.to_string())
    }

    fn bytes(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(content_type);
        self.body = Body::Sized(body.into());
        self
    }

    fn no_content_type(mut self) -> Self {
        self.content_type = None;
        self
    }

    fn chunked(mut self) -> Self {
        if let Body::Sized(bytes) = self.body {
            self.body = Body::Chunked(bytes);
        }
        self
    }

    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    fn raw(mut self) -> Self {
        self.raw = true;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.extra_headers.push((name, value));
        self
    }

    fn expect(mut self, status: u16, code: &'static str, field: Option<&str>) -> Self {
        self.status = status;
        self.code = code;
        self.field = field.map(str::to_owned);
        self
    }

    /// 400 `invalid_argument` naming `field`.
    fn invalid(self, field: &str) -> Self {
        self.expect(400, "invalid_argument", Some(field))
    }
}

fn valid_spec() -> Value {
    json!({"url": "http://10.0.0.1:4040"})
}

fn spec_with(field: &str, value: Value) -> Value {
    let mut spec = valid_spec();
    spec[field] = value;
    spec
}

fn spec_with_check(check: Value) -> Value {
    spec_with("check", check)
}

/// A registration body padded with trailing spaces to exactly `len` bytes.
fn padded_spec(len: usize) -> Vec<u8> {
    let mut body = valid_spec().to_string().into_bytes();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

fn table() -> Vec<Case> {
    let long_url = format!("http://10.0.0.1:4040/{}", "a".repeat(2048));
    let many_tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let valid = valid_spec();
    vec![
        // Service names in the path.
        Case::put(
            "service name with uppercase",
            "/v1/services/Sum/instances/a",
        )
        .json(&valid)
        .invalid("service"),
        Case::put(
            "service name of 64 chars",
            format!("/v1/services/{}/instances/a", "a".repeat(64)),
        )
        .json(&valid)
        .invalid("service"),
        Case::put(
            "service name with leading '-'",
            "/v1/services/-sum/instances/a",
        )
        .json(&valid)
        .invalid("service"),
        Case::put(
            "service name with trailing '-'",
            "/v1/services/sum-/instances/a",
        )
        .json(&valid)
        .invalid("service"),
        Case::put("service name with '_'", "/v1/services/my_svc/instances/a")
            .json(&valid)
            .invalid("service"),
        Case::get("lookup of an uppercase service", "/v1/services/Sum").invalid("service"),
        Case::get("lookup of a service that is not UTF-8", "/v1/services/%FF").invalid("service"),
        // Instance ids in the path.
        Case::put("instance id '..'", "/v1/services/sum/instances/..")
            .json(&valid)
            .raw()
            .invalid("id"),
        Case::put("instance id '.'", "/v1/services/sum/instances/.")
            .json(&valid)
            .raw()
            .invalid("id"),
        Case::put(
            "instance id of 129 chars",
            format!("/v1/services/sum/instances/{}", "x".repeat(129)),
        )
        .json(&valid)
        .invalid("id"),
        Case::put(
            "instance id 'a:b' percent-encoded",
            "/v1/services/sum/instances/a%3Ab",
        )
        .json(&valid)
        .invalid("id"),
        Case::put(
            "instance id 'a/b' percent-encoded",
            "/v1/services/sum/instances/a%2Fb",
        )
        .json(&valid)
        .invalid("id"),
        Case::put(
            "instance id that is not UTF-8",
            "/v1/services/sum/instances/%FF",
        )
        .json(&valid)
        .invalid("id"),
        // URLs.
        Case::register("relative url", &json!({"url": "/relative"})).invalid("url"),
        Case::register("ftp url", &json!({"url": "ftp://10.0.0.1/"})).invalid("url"),
        Case::register(
            "url with userinfo",
            &json!({"url": "http://user:pw@10.0.0.1/"}),
        )
        .invalid("url"),
        Case::register("url missing", &json!({"tags": ["a"]})).invalid("url"),
        Case::register("url not a string", &json!({"url": 5})).invalid("url"),
        Case::register("url over 2048 bytes", &json!({ "url": long_url })).invalid("url"),
        // Unknown fields and wrong types.
        Case::register("unknown top-level field", &spec_with("bogus", json!(1))).invalid("bogus"),
        Case::register(
            "unknown field inside check",
            &spec_with_check(json!({"http": "/status", "xxx": 1})),
        )
        .invalid("check.xxx"),
        Case::register(
            "ttl_seconds a string",
            &spec_with("ttl_seconds", json!("ten")),
        )
        .invalid("ttl_seconds"),
        Case::register(
            "ttl_seconds a fraction",
            &spec_with("ttl_seconds", json!(1.5)),
        )
        .invalid("ttl_seconds"),
        Case::register("tags not an array", &spec_with("tags", json!("a"))).invalid("tags"),
        Case::register("tags element a number", &spec_with("tags", json!(["a", 3])))
            .invalid("tags.1"),
        Case::register(
            "check interval a string",
            &spec_with_check(json!({"http": "/status", "interval_seconds": "5s"})),
        )
        .invalid("check.interval_seconds"),
        // Limits.
        Case::register("ttl over 86400", &spec_with("ttl_seconds", json!(86_401)))
            .invalid("ttl_seconds"),
        Case::register("negative ttl", &spec_with("ttl_seconds", json!(-1))).invalid("ttl_seconds"),
        Case::register("65 tags", &spec_with("tags", json!(many_tags))).invalid("tags"),
        Case::register("empty tag", &spec_with("tags", json!(["ok", ""]))).invalid("tags.1"),
        Case::register(
            "metadata value over 512 chars",
            &spec_with("metadata", json!({"k": "v".repeat(513)})),
        )
        .invalid("metadata.k"),
        Case::register(
            "metadata value not a string",
            &spec_with("metadata", json!({"k": 1})),
        )
        .invalid("metadata.k"),
        Case::register(
            "check.http not starting with '/'",
            &spec_with_check(json!({"http": "status"})),
        )
        .invalid("check.http"),
        Case::register(
            "check.http starting with '//'",
            &spec_with_check(json!({"http": "//evil.example/x"})),
        )
        .invalid("check.http"),
        Case::register(
            "check interval 0",
            &spec_with_check(json!({"http": "/status", "interval_seconds": 0})),
        )
        .invalid("check.interval_seconds"),
        Case::register(
            "check interval over 3600",
            &spec_with_check(json!({"http": "/status", "interval_seconds": 3601})),
        )
        .invalid("check.interval_seconds"),
        Case::register(
            "check timeout over its interval",
            &spec_with_check(
                json!({"http": "/status", "interval_seconds": 3, "timeout_seconds": 4}),
            ),
        )
        .invalid("check.timeout_seconds"),
        // Bodies that are not a JSON object.
        Case::put("body not JSON", "/v1/services/sum/instances/new-1")
            .bytes(JSON, "{not json")
            .invalid("body"),
        Case::put("empty body", "/v1/services/sum/instances/new-1")
            .bytes(JSON, "")
            .invalid("body"),
        Case::put("JSON array body", "/v1/services/sum/instances/new-1")
            .bytes(JSON, "[]")
            .invalid("body"),
        Case::put(
            "trailing data after the JSON",
            "/v1/services/sum/instances/new-1",
        )
        .bytes(JSON, format!("{valid} x"))
        .invalid("body"),
        Case::put(
            "text/plain content type",
            "/v1/services/sum/instances/new-1",
        )
        .bytes("text/plain", valid.to_string())
        .expect(415, "unsupported_media_type", None),
        Case::put("no content type", "/v1/services/sum/instances/new-1")
            .bytes(JSON, valid.to_string())
            .no_content_type()
            .expect(415, "unsupported_media_type", None),
        Case::put("status change as text/plain", format!("{KNOWN}/status"))
            .bytes("text/plain", r#"{"status":"maintenance"}"#)
            .expect(415, "unsupported_media_type", None),
        // Size.
        Case::put(
            "body over 64 KiB with Content-Length",
            "/v1/services/sum/instances/new-1",
        )
        .bytes(JSON, padded_spec(MAX_BODY + 1))
        .expect(413, "payload_too_large", None),
        Case::put(
            "body over 64 KiB chunked",
            "/v1/services/sum/instances/new-1",
        )
        .bytes(JSON, padded_spec(MAX_BODY + 1024))
        .chunked()
        .expect(413, "payload_too_large", None),
        Case::put(
            "size is checked before content type",
            "/v1/services/sum/instances/new-1",
        )
        .bytes("text/plain", padded_spec(MAX_BODY + 1))
        .expect(413, "payload_too_large", None),
        Case::put(
            "size is checked before content type, chunked",
            "/v1/services/sum/instances/new-1",
        )
        .bytes("text/plain", padded_spec(MAX_BODY + 1024))
        .chunked()
        .expect(413, "payload_too_large", None),
        Case::new("seed body over 64 KiB", Method::POST, "/service")
            .bytes(JSON, padded_spec(MAX_BODY + 1))
            .expect(413, "payload_too_large", None),
        // Query parameters.
        Case::get(
            "wait with an unknown unit",
            "/v1/services/sum?index=1&wait=10x",
        )
        .invalid("wait"),
        Case::get("negative wait", "/v1/services/sum?index=1&wait=-1").invalid("wait"),
        Case::get("index not a number", "/v1/services/sum?index=abc").invalid("index"),
        Case::get("negative index", "/v1/services/sum?index=-1").invalid("index"),
        Case::get(
            "index beyond u64",
            "/v1/services/sum?index=99999999999999999999",
        )
        .invalid("index"),
        Case::get("unknown status filter", "/v1/services/sum?status=ok").invalid("status"),
        Case::get("at not RFC 3339", "/v1/status?at=yesterday").invalid("at"),
        Case::get(
            "at without a time zone",
            "/v1/status?at=2026-01-01T00:00:00",
        )
        .invalid("at"),
        Case::get(
            "at older than the history kept",
            "/v1/status?at=2000-01-01T00:00:00Z",
        )
        .invalid("at"),
        Case::get("status of a bad service name", "/v1/status?service=Bad").invalid("service"),
        Case::get("page size 0", "/v1/services?limit=0").invalid("limit"),
        Case::get("page size over 1000", "/v1/status?limit=1001").invalid("limit"),
        Case::get("page size not a number", "/v1/services?limit=ten").invalid("limit"),
        Case::get("cursor not base64url", "/v1/services?cursor=!!").invalid("cursor"),
        // base64url of version byte 9 and "sum": a cursor of a format never written.
        Case::get("cursor of an unknown version", "/v1/status?cursor=CXN1bQ").invalid("cursor"),
        Case::get("name filter no name holds", "/v1/services?name=a_b").invalid("name"),
        Case::get("empty name filter", "/v1/status?name=").invalid("name"),
        Case::get("summary not a flag", "/v1/status?summary=yes").invalid("summary"),
        Case::get("summary of a page", "/v1/status?summary=true&limit=5").invalid("limit"),
        Case::get(
            "summary of one service",
            "/v1/status?summary=true&service=sum",
        )
        .invalid("service"),
        Case::get("history without service", "/v1/history").invalid("service"),
        Case::get("history of a bad service name", "/v1/history?service=Sum").invalid("service"),
        Case::get(
            "history of a bad instance id",
            "/v1/history?service=sum&instance=a:b",
        )
        .invalid("instance"),
        Case::get(
            "history since not RFC 3339",
            "/v1/history?service=sum&since=monday",
        )
        .invalid("since"),
        Case::get(
            "history until before since",
            "/v1/history?service=sum&since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        )
        .invalid("until"),
        Case::get("events since not a number", "/v1/events?since=abc").invalid("since"),
        Case::get("events with a bad Last-Event-ID", "/v1/events")
            .header("Last-Event-ID", "abc")
            .invalid("Last-Event-ID"),
        Case::get("events of a bad service name", "/v1/events?service=Sum").invalid("service"),
        // Requests that take no body, or only some values.
        Case::put("heartbeat with a body", format!("{KNOWN}/heartbeat"))
            .json(&json!({}))
            .invalid("body"),
        Case::put(
            "heartbeat with a chunked body",
            format!("{KNOWN}/heartbeat"),
        )
        .json(&json!({}))
        .chunked()
        .invalid("body"),
        Case::new("DELETE with a body", Method::DELETE, KNOWN)
            .json(&json!({}))
            .invalid("body"),
        Case::put("PUT status critical", format!("{KNOWN}/status"))
            .json(&json!({"status": "critical"}))
            .invalid("status"),
        Case::put("PUT status warning", format!("{KNOWN}/status"))
            .json(&json!({"status": "warning"}))
            .invalid("status"),
        Case::put("PUT status not a status", format!("{KNOWN}/status"))
            .json(&json!({"status": "offline"}))
            .invalid("status"),
        Case::put("PUT status with an extra field", format!("{KNOWN}/status"))
            .json(&json!({"status": "maintenance", "note": "x"}))
            .invalid("note"),
        Case::put(
            "PUT status with a reason too long",
            format!("{KNOWN}/status"),
        )
        .json(&json!({"status": "maintenance", "reason": "x".repeat(513)}))
        .invalid("reason"),
        Case::put(
            "PUT status with a control character in the reason",
            format!("{KNOWN}/status"),
        )
        .json(&json!({"status": "maintenance", "reason": "a\u{0}b"}))
        .invalid("reason"),
        // Seed routes.
        Case::new("seed name with uppercase", Method::POST, "/service")
            .json(&json!({"service": {"name": "Concat", "uri": "http://127.0.0.1:4060"}}))
            .invalid("service.name"),
        Case::new("seed relative uri", Method::POST, "/service")
            .json(&json!({"service": {"name": "concat", "uri": "localhost:4060"}}))
            .invalid("service.uri"),
        Case::new("seed without uri", Method::POST, "/service")
            .json(&json!({"service": {"name": "concat"}}))
            .invalid("service.uri"),
        Case::new("seed body not JSON", Method::POST, "/service")
            .bytes(JSON, "name=concat")
            .invalid("body"),
        Case::get("seed lookup of a bad name", "/service?service=Concat").invalid("service"),
        // Routing.
        Case::get("unknown route", "/v1/nothing-here").expect(404, "not_found", None),
        Case::new("wrong method", Method::POST, "/v1/services")
            .json(&valid)
            .expect(405, "method_not_allowed", None),
        // Auth comes first.
        Case::register("missing token", &valid)
            .auth(Auth::Missing)
            .expect(401, "unauthorized", None),
        Case::register("wrong token", &valid)
            .auth(Auth::Header("Bearer not-the-token"))
            .expect(401, "unauthorized", None),
        Case::register("token with a wrong scheme", &valid)
            .auth(Auth::Header("Basic czNjcmV0LXdyaXRlLXRva2Vu"))
            .expect(401, "unauthorized", None),
        Case::register("token prefix only", &valid)
            .auth(Auth::Header("Bearer s3cret"))
            .expect(401, "unauthorized", None),
        Case::register("missing token beats a bad body", &json!({"url": 5}))
            .auth(Auth::Missing)
            .expect(401, "unauthorized", None),
        Case::put(
            "missing token beats a large body",
            "/v1/services/sum/instances/new-1",
        )
        .bytes(JSON, padded_spec(MAX_BODY + 1))
        .auth(Auth::Missing)
        .expect(401, "unauthorized", None),
        Case::put("heartbeat without token", format!("{KNOWN}/heartbeat"))
            .auth(Auth::Missing)
            .expect(401, "unauthorized", None),
        Case::new("DELETE without token", Method::DELETE, KNOWN)
            .auth(Auth::Missing)
            .expect(401, "unauthorized", None),
        Case::new("seed POST without token", Method::POST, "/service")
            .json(&json!({"service": {"name": "concat", "uri": "http://127.0.0.1:4060"}}))
            .auth(Auth::Missing)
            .expect(401, "unauthorized", None),
    ]
}

/// What came back, whichever way it was sent.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn authorization(auth: Auth) -> Option<String> {
    match auth {
        Auth::Good => Some(format!("Bearer {TOKEN}")),
        Auth::Missing => None,
        Auth::Header(value) => Some(value.to_owned()),
    }
}

/// A client that opens a new connection per request: the registry closes a connection
/// after refusing a body it did not read, and a pooled client could send the next case on
/// that closed connection.
fn unpooled() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client")
    })
}

fn build(registry: &TestRegistry, case: &Case) -> reqwest::RequestBuilder {
    let mut request = unpooled()
        .request(case.method.clone(), registry.url(&case.path))
        .timeout(Duration::from_secs(10));
    if let Some(value) = authorization(case.auth) {
        request = request.header("authorization", value);
    }
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    for (name, value) in &case.extra_headers {
        request = request.header(*name, *value);
    }
    request = match &case.body {
        Body::None => request,
        Body::Sized(bytes) => request.body(bytes.clone()),
        Body::Chunked(bytes) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
            request.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        }
    };
    request
}

async fn send(registry: &TestRegistry, case: &Case) -> Answer {
    if case.raw {
        return send_raw(registry, case).await;
    }
    // A body the server refuses before reading it all: the server answers and closes,
    // and the rest of the body still in flight can reset the connection before the
    // client reads the answer (a race of TCP, not of the registry). Every case of the
    // table is refused and changes nothing, so a reset request is sent again, a few times
    // at most; the answer must still be the expected one.
    let attempts = 5;
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        match build(registry, case).send().await {
            Ok(response) => break response,
            Err(e) if attempt < attempts => {
                eprintln!(
                    "{}: attempt {attempt} failed ({e}); sending again",
                    case.name
                );
            }
            Err(e) => panic!("{}: request failed: {e}", case.name),
        }
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{}: reading the answer failed: {e}", case.name))
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Sends the case over a fresh TCP connection exactly as written (HTTP/1.1, closed after).
async fn send_raw(registry: &TestRegistry, case: &Case) -> Answer {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        case.method, case.path, registry.addr
    );
    if let Some(value) = authorization(case.auth) {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    if let Some(content_type) = case.content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    for (name, value) in &case.extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = match &case.body {
        Body::None => Vec::new(),
        Body::Sized(bytes) | Body::Chunked(bytes) => bytes.clone(),
    };
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut stream = tokio::net::TcpStream::connect(registry.addr)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&body).await.expect("write body");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within 10 s", case.name))
        .expect("read the answer");
    parse_raw_answer(&received).unwrap_or_else(|| {
        panic!(
            "{}: not an HTTP answer: {}",
            case.name,
            String::from_utf8_lossy(&received)
        )
    })
}

fn parse_raw_answer(received: &[u8]) -> Option<Answer> {
    let split = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&received[..split]).ok()?;
    let mut rest = received[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        rest = dechunk(&rest)?;
    }
    Some(Answer {
        status,
        content_type,
        body: rest,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Every way `answer` falls short of `case`, as one line each.
fn mismatches(case: &Case, answer: &Answer) -> Vec<String> {
    let mut wrong = Vec::new();
    let text = String::from_utf8_lossy(&answer.body);
    if answer.status >= 500 {
        wrong.push(format!("answered a 5xx ({})", answer.status));
    }
    if answer.status != case.status {
        wrong.push(format!(
            "status {} instead of {}",
            answer.status, case.status
        ));
    }
    let is_json = answer
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json"));
    if !is_json {
        wrong.push(format!(
            "content type {:?} instead of application/json",
            answer.content_type
        ));
    }
    let Ok(value) = serde_json::from_slice::<Value>(&answer.body) else {
        wrong.push(format!("body is not JSON: {text:?}"));
        return wrong;
    };
    let Some(error) = value.get("error").and_then(Value::as_object) else {
        wrong.push(format!("no error object: {text}"));
        return wrong;
    };
    if error.get("code").and_then(Value::as_str) != Some(case.code) {
        wrong.push(format!(
            "code {:?} instead of {:?}",
            error.get("code"),
            case.code
        ));
    }
    if error
        .get("message")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        wrong.push("no message".to_owned());
    }
    let field = error.get("field");
    match &case.field {
        Some(want) if field.and_then(Value::as_str) != Some(want.as_str()) => {
            wrong.push(format!("field {field:?} instead of {want:?}"));
        }
        None if field.is_some() => {
            wrong.push(format!(
                "field {field:?} present where no field is at fault"
            ));
        }
        _ => {}
    }
    let unexpected: Vec<&String> = error
        .keys()
        .filter(|k| !matches!(k.as_str(), "code" | "message" | "field"))
        .collect();
    if !unexpected.is_empty() {
        wrong.push(format!("unexpected keys in the error: {unexpected:?}"));
    }
    wrong
}

async fn starts_with_token(backend: Backend) -> TestRegistry {
    TestRegistry::start_with(backend, |settings| {
        settings.token = Some(TOKEN.to_owned());
    })
    .await
}

async fn global_index(registry: &TestRegistry) -> u64 {
    registry.api.services().await.expect("services").index
}

/// Sends a registration body of exactly `bytes` bytes and answers the status.
async fn register_sized(registry: &TestRegistry, id: &str, bytes: usize) -> u16 {
    registry
        .http
        .put(registry.url(&format!("/v1/services/sum/instances/{id}")))
        .bearer_auth(TOKEN)
        .header("content-type", JSON)
        .body(padded_spec(bytes))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

/// SQLite: every malformed request of the table gets its 4xx with the JSON error naming
/// the field, none gets a 5xx or changes state, and the registry keeps serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_named_4xx_errors_sqlite() {
    malformed_requests_get_named_4xx_errors(Backend::Sqlite).await;
}

/// Postgres: every malformed request of the table gets its 4xx with the JSON error naming
/// the field, none gets a 5xx or changes state, and the registry keeps serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_named_4xx_errors_postgres() {
    malformed_requests_get_named_4xx_errors(Backend::Postgres).await;
}

async fn malformed_requests_get_named_4xx_errors(backend: Backend) {
    let registry = starts_with_token(backend).await;
    let known = registry
        .api
        .register(
            "sum",
            "known",
            &registry_api::InstanceSpec::new("http://10.0.0.9:4040"),
        )
        .await
        .expect("register the known instance");
    assert!(known.created);
    let index_before = global_index(&registry).await;

    let cases = table();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let answer = send(&registry, case).await;
        let wrong = mismatches(case, &answer);
        if !wrong.is_empty() {
            failures.push(format!(
                "{} ({} {}): {} -- body: {}",
                case.name,
                case.method,
                case.path.chars().take(80).collect::<String>(),
                wrong.join("; "),
                String::from_utf8_lossy(&answer.body)
            ));
        }
    }
    // Reported now, asserted last, so the checks below run either way.
    for failure in &failures {
        eprintln!("wrong answer: {failure}");
    }

    // Nothing the table sent changed any state.
    assert_eq!(
        global_index(&registry).await,
        index_before,
        "a refused request appended an event"
    );
    let services = registry.api.services().await.expect("services");
    let names: Vec<&str> = services.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sum"], "only the known instance's service exists");
    assert_eq!(services.services[0].instances, 1);
    let known_now = registry.api.service("sum", None).await.expect("sum");
    assert_eq!(known_now.instances[0].status, registry_api::Status::Passing);

    // It still serves: the 64 KiB limit is inclusive, and a valid registration works.
    assert_eq!(
        register_sized(&registry, "exactly-64k", MAX_BODY).await,
        201
    );
    assert_eq!(
        register_sized(&registry, "over-64k", MAX_BODY + 1).await,
        413
    );
    let created = registry
        .http
        .put(registry.url("/v1/services/sum/instances/new-1"))
        .bearer_auth(TOKEN)
        .json(&valid_spec())
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), 201);
    let sum = registry.api.service("sum", None).await.expect("sum");
    let mut ids: Vec<&str> = sum.instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["exactly-64k", "known", "new-1"]);
    let health = registry
        .http
        .get(registry.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    registry.stop().await;

    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
