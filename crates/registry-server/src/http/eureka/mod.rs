//! The registration and discovery part of Eureka's REST API, so that unmodified Eureka
//! clients (Spring Cloud Netflix, eureka-js-client, py-eureka-client) register, renew and
//! discover here (docs/eureka.md).
//!
//! A thin adapter like the Consul one: it reads Eureka's JSON or XML (`wire`, `xml`),
//! maps names and ids onto the model reversibly (`ids`) and Eureka's statuses onto ours
//! (`status`), changes instances only through [`crate::writer::Writer::change`] with the
//! transitions of [`crate::lifecycle`], and answers from the view (`render`). It keeps no
//! state of its own: an instance a Eureka client registers is at once visible through v1,
//! Consul, DNS and the dashboard, and theirs to Eureka clients.
//!
//! Eureka's conventions are kept where clients depend on them: register answers exactly
//! 204 and cancel exactly 200, an unknown instance's renewal 404 (the client registers
//! again), errors are bare status codes with a short plain-text reason, and answers are
//! JSON only when `Accept` asks for JSON, XML otherwise.

mod ids;
mod reads;
mod render;
mod status;
mod wire;
mod writes;
mod xml;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use registry_api::{InstanceId, ServiceName};
use serde_json::Value;

use super::error::BadBody;
use super::{ApiError, AppState};
use crate::store::{Applied, Transition};

/// The path prefixes Eureka clients use: `/eureka` (Spring's default) and `/eureka/v2`
/// (eureka-js-client's default).
const PREFIXES: [&str; 2] = ["/eureka", "/eureka/v2"];

/// Whether a path belongs to Eureka's API.
pub fn is_eureka_path(path: &str) -> bool {
    path == "/eureka" || path.starts_with("/eureka/")
}

/// Every route, under both prefixes. None blocks, so all sit under the request timeout.
pub fn router() -> Router<AppState> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        router = router
            .merge(writes::router(prefix))
            .merge(reads::router(prefix));
    }
    router
}

/// An error as Eureka's server answers it: its status code, with a short plain-text
/// reason (clients read the code only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EurekaError {
    pub status: StatusCode,
    pub message: String,
}

impl EurekaError {
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
}

impl From<BadBody> for EurekaError {
    fn from(error: BadBody) -> Self {
        Self::bad_request(error.0)
    }
}

impl From<xml::BadXml> for EurekaError {
    fn from(error: xml::BadXml) -> Self {
        Self::bad_request(error.0)
    }
}

impl From<ApiError> for EurekaError {
    fn from(error: ApiError) -> Self {
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match error.field {
            Some(field) => format!("{field}: {}", error.message),
            None => error.message,
        };
        Self::new(status, message)
    }
}

impl From<crate::store::StoreError> for EurekaError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for EurekaError {
    fn into_response(self) -> Response {
        crate::http::error::plain_text(self.status, self.message)
    }
}

/// One change of one instance through the registry's write path.
async fn change(
    state: &AppState,
    service: &ServiceName,
    id: &InstanceId,
    now: DateTime<Utc>,
    transition: Transition,
) -> Result<Applied, EurekaError> {
    Ok(state.writer.change(service, id, now, transition).await?)
}

/// A refusal on a Eureka path from the layers in front of the routes (auth, size, time).
pub fn refusal(error: ApiError) -> Response {
    EurekaError::from(error).into_response()
}

/// Paths under `/eureka` that no route takes.
pub fn unrouted() -> Response {
    EurekaError::not_found("no such Eureka resource; see docs/eureka.md").into_response()
}

/// A known route asked with the wrong method.
pub fn method_not_allowed() -> Response {
    EurekaError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response()
}

/// JSON only when `Accept` names JSON, XML otherwise (also for `*/*` and no `Accept`),
/// as Eureka's server does: some clients send none and parse XML.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("json"))
}

/// A document (`{"<root>": ...}`) in the format the request asks for.
fn answer(headers: &HeaderMap, document: &Value) -> Response {
    let json = wants_json(headers);
    answer_bytes(json, bytes::Bytes::from(encode(json, document)))
}

/// A document as JSON or as XML.
fn encode(json: bool, document: &Value) -> Vec<u8> {
    if json {
        serde_json::to_vec(document).unwrap_or_else(|_| b"{}".to_vec())
    } else {
        xml::write(document)
    }
}

/// An answer already encoded, with its content type.
fn answer_bytes(json: bool, body: bytes::Bytes) -> Response {
    let content_type = if json {
        "application/json"
    } else {
        "application/xml"
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// A body read by its `Content-Type` (JSON or XML); without one, by its first character.
fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Value, EurekaError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let json = if content_type.contains("json") {
        true
    } else if content_type.contains("xml") {
        false
    } else if content_type.is_empty() || content_type.starts_with("text/plain") {
        match first {
            Some(b'{') => true,
            Some(b'<') => false,
            _ => {
                return Err(EurekaError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the body must be JSON or XML",
                ));
            }
        }
    } else {
        return Err(EurekaError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type '{content_type}' is neither JSON nor XML"),
        ));
    };
    if json {
        serde_json::from_slice(body)
            .map_err(|e| EurekaError::bad_request(format!("malformed JSON: {e}")))
    } else {
        Ok(xml::read(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_json_only_when_asked_for() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/xml"));
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("Application/JSON"));
        assert!(wants_json(&headers));
    }

    #[test]
    fn bodies_are_read_by_their_content_type_or_their_first_character() {
        let with = |content_type: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(content_type) = content_type {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            headers
        };
        let json = br#"{"instance": {"app": "A"}}"#;
        let xml = b"<instance><app>A</app></instance>";
        for (headers, body) in [
            (with(Some("application/json; charset=utf-8")), &json[..]),
            (with(Some("application/xml")), &xml[..]),
            (with(Some("text/xml")), &xml[..]),
            (with(None), &json[..]),
            (with(None), &xml[..]),
        ] {
            let document = decode(&headers, body).expect("read");
            assert_eq!(document["instance"]["app"], "A");
        }
        let refused =
            |headers: HeaderMap, body: &[u8]| decode(&headers, body).expect_err("refused").status;
        assert_eq!(
            refused(with(Some("text/csv")), b"a,b"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            refused(with(None), b"a,b"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            refused(with(Some("application/json")), xml),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            refused(with(Some("application/xml")), json),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn eureka_paths_are_told_from_ours() {
        assert!(is_eureka_path("/eureka/apps"));
        assert!(is_eureka_path("/eureka/v2/apps/SUM"));
        assert!(!is_eureka_path("/eurekaish"));
        assert!(!is_eureka_path("/v1/services"));
    }
}
