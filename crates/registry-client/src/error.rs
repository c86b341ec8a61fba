//! The one error type of the client, so that callers (and the retry, failover and breaker
//! logic built on this crate) can tell a refusal by the registry from a network failure
//! with a single `match`.

use std::time::Duration;

use registry_api::ErrorCode;

/// The result type of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Longest part of a non-JSON error body kept in [`ClientError::Api`]'s message: a proxy's
/// HTML error page is of no use in a log line beyond its first words.
const MAX_RAW_MESSAGE_CHARS: usize = 200;

/// Everything that can go wrong when talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry (or a proxy in front of it) answered with a non-2xx status.
    ///
    /// Built from the JSON error body (`{"error":{"code","message","field"}}`) when there is
    /// one; otherwise `code` is derived from `status` and `message` is the start of the body.
    #[error(
        "registry answered HTTP {status} ({code}): {message}{field}",
        code = code_name(*.code),
        field = field_suffix(.field.as_deref())
    )]
    Api {
        /// The HTTP status code as received.
        status: u16,
        /// The machine-readable error code.
        code: ErrorCode,
        /// The human-readable explanation.
        message: String,
        /// The path parameter, query parameter or dotted body path at fault, if any.
        field: Option<String>,
    },
    /// The request could not be sent or the answer not received: connection refused, DNS,
    /// TLS, timeout, connection reset while reading the body.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    /// The registry answered 2xx but the body is not what this client understands.
    #[error("unexpected answer from the registry: {0}")]
    Decode(String),
    /// The base URL, or a name that must become a path segment, cannot be used.
    #[error("invalid registry URL: {0}")]
    InvalidUrl(String),
    /// The registry sent nothing for this long while it should have: no response headers to
    /// a request of the event stream, or no byte (not even a keepalive) on an open stream.
    /// The connection is presumed dead.
    #[error("the registry sent nothing for {0:?}; the connection is presumed dead")]
    Stalled(Duration),
}

impl ClientError {
    /// The HTTP status of an [`Api`](Self::Api) error, `None` for the other variants.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a 404: an unknown instance (a client re-registers on it).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Api {
                code: ErrorCode::NotFound,
                ..
            }
        )
    }

    /// Whether trying the same call again later may succeed: the registry was unreachable,
    /// slow, restarting or overloaded. Refusals (4xx other than 408/429), undecodable
    /// answers and bad URLs are not transient: repeating the call changes nothing.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            // A builder error is a bad header or URL made by us, not a network condition.
            Self::Transport(error) => !error.is_builder(),
            Self::Stalled(_) => true,
            Self::Decode(_) | Self::InvalidUrl(_) => false,
        }
    }
}

/// Builds the error for a non-2xx answer out of its status and body.
///
/// Parsing is deliberately lenient: an error body from a newer registry with a code this
/// client does not know, or a plain-text body from a proxy, still yields a usable error.
pub(crate) fn api_error(status: u16, body: &[u8]) -> ClientError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let detail = json
        .as_ref()
        .and_then(|v| v.get("error"))
        .filter(|d| d.is_object());
    let code = detail
        .and_then(|d| d.get("code"))
        .and_then(|c| serde_json::from_value::<ErrorCode>(c.clone()).ok())
        .unwrap_or_else(|| code_for_status(status));
    let message = detail
        .and_then(|d| d.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| raw_message(status, body));
    let field = detail
        .and_then(|d| d.get("field"))
        .and_then(|f| f.as_str())
        .map(str::to_owned);
    ClientError::Api {
        status,
        code,
        message,
        field,
    }
}

/// The error code the registry would have sent with this status; statuses it never sends
/// itself (a proxy's 502, 504, 429...) map to the closest code.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        401 | 403 => ErrorCode::Unauthorized,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        408 | 502..=504 => ErrorCode::Unavailable,
        400..=499 => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    }
}

/// The wire name of a code (`invalid_argument`), as the registry writes it.
pub(crate) fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::NotFound => "not_found",
        ErrorCode::MethodNotAllowed => "method_not_allowed",
        ErrorCode::PayloadTooLarge => "payload_too_large",
        ErrorCode::UnsupportedMediaType => "unsupported_media_type",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
    }
}

fn field_suffix(field: Option<&str>) -> String {
    field.map(|f| format!(" (field {f})")).unwrap_or_default()
}

/// The start of a non-JSON body on one line, or the status's reason phrase when the body is
/// empty.
fn raw_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_RAW_MESSAGE_CHARS)
        .collect();
    if one_line.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no explanation given")
            .to_owned()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(error: ClientError) -> (u16, ErrorCode, String, Option<String>) {
        match error {
            ClientError::Api {
                status,
                code,
                message,
                field,
            } => (status, code, message, field),
            other => panic!("expected an Api error, got {other:?}"),
        }
    }

    #[test]
    fn json_error_bodies_keep_every_field() {
        let body = br#"{"error":{"code":"invalid_argument","message":"must use http or https","field":"url"}}"#;
        let (status, code, message, field) = parts(api_error(400, body));
        assert_eq!(status, 400);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert_eq!(message, "must use http or https");
        assert_eq!(field.as_deref(), Some("url"));
    }

    #[test]
    fn display_names_code_and_field() {
        let body = br#"{"error":{"code":"invalid_argument","message":"bad","field":"check.http"}}"#;
        assert_eq!(
            api_error(400, body).to_string(),
            "registry answered HTTP 400 (invalid_argument): bad (field check.http)"
        );
        let body = br#"{"error":{"code":"not_found","message":"no such instance"}}"#;
        assert_eq!(
            api_error(404, body).to_string(),
            "registry answered HTTP 404 (not_found): no such instance"
        );
    }

    #[test]
    fn non_json_bodies_get_a_code_from_the_status() {
        let (status, code, message, field) =
            parts(api_error(502, b"<html>\n  <h1>Bad   Gateway</h1>\n</html>"));
        assert_eq!((status, code), (502, ErrorCode::Unavailable));
        assert_eq!(message, "<html> <h1>Bad Gateway</h1> </html>");
        assert_eq!(field, None);

        let (_, code, message, _) = parts(api_error(404, b""));
        assert_eq!(code, ErrorCode::NotFound);
        assert_eq!(message, "Not Found");

        let long = "x".repeat(1000);
        let (_, _, message, _) = parts(api_error(500, long.as_bytes()));
        assert_eq!(message.len(), MAX_RAW_MESSAGE_CHARS);
    }

    #[test]
    fn unknown_codes_from_a_newer_registry_fall_back_to_the_status() {
        let body = br#"{"error":{"code":"conflict","message":"already there"}}"#;
        let (_, code, message, _) = parts(api_error(409, body));
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert_eq!(message, "already there");
        let (_, code, _, _) = parts(api_error(503, br#"{"error":"oops"}"#));
        assert_eq!(code, ErrorCode::Unavailable);
    }

    #[test]
    fn every_code_maps_back_from_its_own_status() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            assert_eq!(code_for_status(code.http_status()), code);
            let wire = serde_json::to_value(code).expect("serializes");
            assert_eq!(wire.as_str(), Some(code_name(code)));
        }
    }

    #[test]
    fn transience_follows_the_status() {
        assert!(api_error(503, b"").is_transient());
        assert!(api_error(429, b"").is_transient());
        assert!(!api_error(400, b"").is_transient());
        assert!(!api_error(401, b"").is_transient());
        assert!(api_error(404, b"").is_not_found());
        assert!(ClientError::Stalled(Duration::from_secs(1)).is_transient());
        assert!(!ClientError::Decode("x".into()).is_transient());
        assert_eq!(api_error(413, b"").status(), Some(413));
    }
}
