//! The service-discovery part of Consul's HTTP API, so that unmodified Consul clients
//! register, report, watch and discover here (docs/consul.md).
//!
//! A thin adapter and nothing more: it parses Consul's wire format (`wire`), maps it onto
//! the model with the table in docs/consul.md, changes instances only through
//! [`crate::writer::Writer::change`] with the transitions of [`crate::lifecycle`], and
//! answers from the view (`render`). It keeps no state of its own, so whatever a Consul
//! client does is at once visible through v1, the dashboard and every other protocol, and
//! the other way round.
//!
//! Consul's conventions are kept where clients depend on them: plain-text errors with
//! Consul's status codes, `X-Consul-Index` on every answer, blocking queries on every read,
//! and the rest of Consul's API answering 501 rather than a silent 200.

mod agent;
mod reads;
mod render;
pub mod wire;

use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::BadBody;
use super::{ApiError, AppState};

/// `wait` when a blocking query gives none (Consul's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest `wait` honoured (Consul's bound).
const MAX_WAIT: Duration = Duration::from_secs(600);

/// The first path segments under `/v1/` that are Consul's. `status` is Consul's only below
/// it (`/v1/status/leader`): `GET /v1/status` is ours.
const CONSUL_PREFIXES: [&str; 27] = [
    "acl",
    "agent",
    "auth-method",
    "catalog",
    "config",
    "connect",
    "coordinate",
    "discovery-chain",
    "event",
    "exported-services",
    "federation-state",
    "health",
    "imported-services",
    "internal",
    "kv",
    "namespace",
    "namespaces",
    "operator",
    "partition",
    "partitions",
    "peering",
    "peerings",
    "query",
    "session",
    "snapshot",
    "txn",
    "lock",
];

/// Whether a path belongs to Consul's API rather than ours.
pub fn is_consul_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    if rest.starts_with("status/") {
        return true;
    }
    let first = rest.split('/').next().unwrap_or("");
    CONSUL_PREFIXES.contains(&first)
}

/// Writes: outside blocking, inside the request timeout.
pub fn router() -> Router<AppState> {
    agent::router()
}

/// Reads: every one may be a blocking query, so they set their own time limit.
pub fn long_poll_router() -> Router<AppState> {
    reads::router()
}

/// An error as Consul answers it: plain text with Consul's status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulError {
    pub status: StatusCode,
    pub message: String,
}

impl ConsulError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A missing or wrong token.
    pub fn permission_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "Permission denied")
    }

    /// The rest of Consul's API.
    pub fn not_implemented(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{method} {path} is not implemented by this registry: it speaks the service-discovery part of Consul's API (agent services and checks, catalog, health, status); see docs/consul.md"
            ),
        )
    }
}

impl From<BadBody> for ConsulError {
    fn from(error: BadBody) -> Self {
        Self::bad_request(error.0)
    }
}

impl From<ApiError> for ConsulError {
    fn from(error: ApiError) -> Self {
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match error.field {
            Some(field) => format!("Invalid {field}: {}", error.message),
            None => error.message,
        };
        Self::new(status, message)
    }
}

impl From<crate::store::StoreError> for ConsulError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        crate::http::error::plain_text(self.status, self.message)
    }
}

/// The fallback for paths under Consul's prefixes that no route takes.
pub fn unrouted(method: &axum::http::Method, uri: &Uri) -> Response {
    ConsulError::not_implemented(method.as_str(), uri.path()).into_response()
}

/// A known route asked with the wrong method.
pub fn method_not_allowed(method: &axum::http::Method) -> Response {
    ConsulError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    )
    .into_response()
}

/// The query of a Consul request: every pair in order (`tag` repeats), the blocking
/// parameters parsed, and `dc` checked against the configured datacenter.
#[derive(Debug, Default)]
pub struct ConsulQuery {
    pairs: Vec<(String, String)>,
    /// The Consul index the client knows (`index`), when it gave one above 0.
    pub index: Option<u64>,
    pub wait: Duration,
}

impl ConsulQuery {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean as Consul reads it: absent is false, present without a value is true,
    /// otherwise Go's `strconv.ParseBool`.
    pub fn flag(&self, name: &str) -> Result<bool, ConsulError> {
        match self.get(name) {
            None => Ok(false),
            Some("") => Ok(true),
            Some(raw) => wire::parse_go_bool(raw).ok_or_else(|| {
                ConsulError::bad_request(format!(
                    "Failed to parse {name} parameter: \"{raw}\" is not a boolean"
                ))
            }),
        }
    }
}

impl FromRequestParts<AppState> for ConsulQuery {
    type Rejection = ConsulError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect();
        let mut query = Self {
            pairs,
            index: None,
            wait: DEFAULT_WAIT,
        };
        if let Some(dc) = query.get("dc").filter(|dc| !dc.is_empty())
            && dc != state.settings.datacenter
        {
            // Consul's own answer for a datacenter it cannot reach: the one 500 this
            // registry gives on purpose (docs/consul.md).
            return Err(ConsulError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
            ));
        }
        if let Some(raw) = query.get("index").filter(|r| !r.is_empty()) {
            let index = raw.parse::<u64>().map_err(|_| {
                ConsulError::bad_request(format!("Invalid index \"{raw}\": not a number"))
            })?;
            query.index = Some(index).filter(|i| *i > 0);
        }
        if let Some(raw) = query.get("wait").filter(|r| !r.is_empty()) {
            query.wait = wire::parse_go_duration(raw)
                .map_err(|m| ConsulError::bad_request(format!("Invalid wait time: {m}")))?
                .min(MAX_WAIT);
        }
        Ok(query)
    }
}

/// The Consul index for a registry index: one more, so it is never 0 (a fresh registry is
/// at 0, and Consul clients treat 0 as "no index").
pub fn consul_index(index: u64) -> u64 {
    index.saturating_add(1)
}

/// Holds a blocking query until `current` (a registry index) passes the one the client
/// knows, the wait (plus up to a sixteenth of jitter) runs out, or the registry stops.
/// Without an index (or with 0) it answers at once; an index ahead of the registry also
/// does (it lost its state: the client must not wait for an index that will not come).
pub async fn block(state: &AppState, query: &ConsulQuery, current: impl Fn() -> u64) {
    let Some(known) = query.index.map(|i| i - 1) else {
        return;
    };
    let mut changes = state.view.subscribe();
    if known > state.view.index() && super::services::ahead_of_the_store(state, known).await {
        return;
    }
    let jitter_cap = u64::try_from(query.wait.as_millis() / 16).unwrap_or(u64::MAX);
    let jitter = if jitter_cap == 0 {
        0
    } else {
        rand::random_range(0..=jitter_cap)
    };
    let deadline = tokio::time::Instant::now() + query.wait + Duration::from_millis(jitter);
    loop {
        if current() > known {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(deadline) => return,
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// A JSON answer with Consul's headers.
pub fn answer(index: u64, body: &Value) -> Response {
    answer_bytes(index, to_json(body))
}

/// JSON of a value made of JSON values (which always serializes).
pub fn to_json(body: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec()))
}

/// An answer already serialized, with Consul's headers.
pub fn answer_bytes(index: u64, body: bytes::Bytes) -> Response {
    with_index(index, super::json_answer(body))
}

/// Adds `X-Consul-Index` (a registry index, shown as its Consul index) and the leader
/// headers Consul clients read.
pub fn with_index(index: u64, mut response: Response) -> Response {
    // Names made at compile time: a `&str` name is parsed and lowercased on every answer.
    const INDEX: HeaderName = HeaderName::from_static("x-consul-index");
    const KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
    const LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");
    let headers = response.headers_mut();
    headers.insert(INDEX, HeaderValue::from(consul_index(index)));
    headers.insert(KNOWN_LEADER, HeaderValue::from_static("true"));
    headers.insert(LAST_CONTACT, HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_paths_are_told_from_ours() {
        for consul in [
            "/v1/agent/services",
            "/v1/kv/a",
            "/v1/status/leader",
            "/v1/catalog/services",
            "/v1/health/service/web",
            "/v1/event/list",
            "/v1/txn",
        ] {
            assert!(is_consul_path(consul), "{consul}");
        }
        for ours in [
            "/v1/status",
            "/v1/services",
            "/v1/services/web",
            "/v1/events",
            "/v1/history",
            "/v1/sd/prometheus",
            "/healthz",
            "/service",
        ] {
            assert!(!is_consul_path(ours), "{ours}");
        }
    }
}
