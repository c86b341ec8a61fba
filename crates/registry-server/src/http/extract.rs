//! Request extractors that answer our error shape: a JSON body that names the field at
//! fault, query parameters, and path parameters parsed into domain names.

use std::borrow::Cow;

use axum::extract::path::ErrorKind as PathErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::request::Parts;
use bytes::Bytes;
use registry_api::{ErrorCode, ServiceName};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest request body accepted (docs/api.md, Limits).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body length a request declares (`Content-Length`), when it declares a valid one.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Whether a request says it carries a body: a length above zero (`declared`, its
/// [`declared_length`]), or any `Transfer-Encoding` (a chunked body declares no length).
pub fn declares_body(declared: Option<u64>, headers: &HeaderMap) -> bool {
    declared.is_some_and(|len| len > 0) || headers.contains_key(TRANSFER_ENCODING)
}

/// A JSON body: 415 without a JSON content type, 413 when too large, 400 naming the
/// dotted path of the offending field otherwise.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers().get(CONTENT_TYPE));
        // Size is judged before content, also for bodies of undeclared length.
        let bytes = read_body(req).await?;
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// Reads the whole body within [`MAX_BODY_BYTES`] (413 beyond it, also for a chunked body
/// that declared no length).
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::invalid(
            "body",
            format!("could not read the body: {error}"),
        )),
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body must be at most {} KiB", MAX_BODY_BYTES / 1024),
    )
}

/// Parses JSON and turns serde's complaint into a 400 naming the dotted field path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|error| {
        let mut path: Vec<String> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let inner = error.into_inner();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("the body is not valid JSON: {message}"));
        }
        // serde names a missing field only in its message (`missing field `x``), and the
        // path of an unknown one may or may not end with it.
        for prefix in ["unknown field `", "missing field `"] {
            if let Some(rest) = message.strip_prefix(prefix)
                && let Some(name) = rest.split('`').next()
                && path.last().map(String::as_str) != Some(name)
            {
                path.push(name.to_owned());
            }
        }
        let field = if path.is_empty() {
            "body".to_owned()
        } else {
            path.join(".")
        };
        ApiError::invalid(field, strip_position(&message))
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data after the JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends ` at line 1 column 17`; the field name already says where.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

/// A route's query string as a struct of its own, one field per parameter (each
/// `#[serde(default, deserialize_with = "param")]`, read by its type's [`FromQuery`]): a
/// repeated parameter's last value wins, unknown ones are ignored, and a bad value answers
/// 400 naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        let read = || {
            serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
                query_pairs(raw).into_iter(),
            )
        };
        // Read as it is; only a query that fails is read again, tracking the path, to name
        // the parameter (the same reading fails the same way).
        if let Ok(value) = T::deserialize(read()) {
            return Ok(Query(value));
        }
        serde_path_to_error::deserialize(read())
            .map(Query)
            .map_err(|error| {
                let field = error.path().to_string();
                ApiError::invalid(field, error.into_inner().to_string())
            })
    }
}

/// The parameters of a query string, decoded, each name once with its last value.
fn query_pairs(raw: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let mut pairs: Vec<_> = decoded_pairs(raw).collect();
    // Last first, then by name (a stable sort keeps that order within a name), then the
    // first of each name: its last value.
    pairs.reverse();
    pairs.sort_by(|(a, _), (b, _)| a.cmp(b));
    pairs.dedup_by(|(later, _), (kept, _)| later == kept);
    pairs
}

/// The `name=value` pairs of a query string in order, decoded as
/// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte). A pair with
/// neither is its own text: the URI is already valid UTF-8, so it is borrowed as it is,
/// without the decoder's passes over it.
fn decoded_pairs(raw: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            if pair.bytes().any(|byte| matches!(byte, b'%' | b'+')) {
                return url::form_urlencoded::parse(pair.as_bytes()).next();
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((Cow::Borrowed(name), Cow::Borrowed(value)))
        })
}

/// The query of the routes whose one parameter is an optional `service`.
#[derive(Debug, serde::Deserialize)]
pub struct ServiceQuery {
    #[serde(default, deserialize_with = "param")]
    pub service: Option<ServiceName>,
}

/// How a query parameter of this type is read from its text, or why it cannot be.
pub trait FromQuery: Sized {
    fn from_query(raw: &str) -> Result<Self, String>;
}

/// Reads an optional query parameter by its type's [`FromQuery`] (for
/// `#[serde(deserialize_with = "param")]` on a [`Query`] struct's fields).
pub fn param<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromQuery,
{
    deserializer.deserialize_str(ParamVisitor(std::marker::PhantomData))
}

/// Reads a parameter from the query's text as it is, without a copy of its own.
struct ParamVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromQuery> serde::de::Visitor<'_> for ParamVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a query parameter")
    }

    fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<Option<T>, E> {
        T::from_query(raw).map(Some).map_err(E::custom)
    }
}

/// Query parameters that are numbers are event indexes ([`parse_index`]).
impl FromQuery for u64 {
    fn from_query(raw: &str) -> Result<Self, String> {
        parse_index(raw)
    }
}

/// Query parameters that are times are RFC 3339.
impl FromQuery for chrono::DateTime<chrono::Utc> {
    fn from_query(raw: &str) -> Result<Self, String> {
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| {
                format!("'{raw}' is not an RFC 3339 time ({e}), e.g. 2026-11-29T06:00:00Z")
            })
    }
}

/// Durations read `500ms`, `30s`, `1m30s` or whole seconds.
impl FromQuery for std::time::Duration {
    fn from_query(raw: &str) -> Result<Self, String> {
        registry_api::parse_duration(raw)
    }
}

impl FromQuery for registry_api::Status {
    fn from_query(raw: &str) -> Result<Self, String> {
        registry_api::Status::parse(raw).ok_or_else(|| {
            format!("'{raw}' is not a status; use passing, warning, critical or maintenance")
        })
    }
}

impl FromQuery for ServiceName {
    fn from_query(raw: &str) -> Result<Self, String> {
        ServiceName::parse(raw).map_err(|m| format!("service name {m}"))
    }
}

impl FromQuery for registry_api::InstanceId {
    fn from_query(raw: &str) -> Result<Self, String> {
        registry_api::InstanceId::parse(raw).map_err(|m| format!("instance id {m}"))
    }
}

impl FromQuery for crate::paging::Limit {
    fn from_query(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

impl FromQuery for crate::paging::Cursor {
    fn from_query(raw: &str) -> Result<Self, String> {
        Self::decode(raw)
    }
}

impl FromQuery for crate::paging::NameFilter {
    fn from_query(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

/// Flags read `true` or `false`.
impl FromQuery for bool {
    fn from_query(raw: &str) -> Result<Self, String> {
        match raw {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("'{raw}' is not true or false")),
        }
    }
}

/// The paging parameters of the reads that list services: `name`, `limit` and `cursor`,
/// read by a [`Query`] of their own beside the route's other parameters.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    #[serde(default, deserialize_with = "param")]
    pub name: Option<crate::paging::NameFilter>,
    #[serde(default, deserialize_with = "param")]
    pub limit: Option<crate::paging::Limit>,
    #[serde(default, deserialize_with = "param")]
    pub cursor: Option<crate::paging::Cursor>,
}

impl PageQuery {
    /// The services these parameters select, besides `service` if given.
    pub fn selection(self, service: Option<&str>) -> crate::paging::Selection {
        crate::paging::Selection::new(service, self.name, self.limit, self.cursor)
    }

    /// Whether any paging parameter was given, and which first (to refuse them where they
    /// do not apply).
    pub fn first_given(&self) -> Option<&'static str> {
        [
            ("name", self.name.is_some()),
            ("limit", self.limit.is_some()),
            ("cursor", self.cursor.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }
}

/// An event index, from a query parameter or `Last-Event-ID`: 0 to `i64::MAX`, the range
/// the store keeps.
pub fn parse_index(raw: &str) -> Result<u64, String> {
    raw.parse::<u64>()
        .ok()
        .filter(|index| i64::try_from(*index).is_ok())
        .ok_or_else(|| format!("'{raw}' is not an index (0 to {})", i64::MAX))
}

/// A raw body within [`MAX_BODY_BYTES`], whatever its content type (for the seed routes,
/// whose original clients may not set one).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        read_body(req).await.map(RawBody)
    }
}

/// Turns axum's refusal of a path parameter into a 400 on that parameter.
pub fn path_error(rejection: PathRejection, default_field: &str) -> ApiError {
    let field = match &rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            PathErrorKind::InvalidUtf8InPathParam { key }
            | PathErrorKind::ParseErrorAtKey { key, .. }
            | PathErrorKind::DeserializeError { key, .. } => key.clone(),
            _ => default_field.to_owned(),
        },
        _ => default_field.to_owned(),
    };
    ApiError::invalid(field, rejection.body_text())
}

/// The `{service}` path parameter, parsed as a service name.
#[derive(Debug)]
pub struct ServicePath(pub ServiceName);

impl<S: Send + Sync> FromRequestParts<S> for ServicePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| path_error(e, "service"))?;
        ServiceName::from_query(&raw)
            .map(Self)
            .map_err(|message| ApiError::invalid("service", message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_api::InstanceSpec;

    fn field(body: &str) -> Option<String> {
        parse_json::<InstanceSpec>(body.as_bytes())
            .expect_err("should be refused")
            .field
    }

    #[derive(Debug, serde::Deserialize)]
    struct Example {
        #[serde(default, deserialize_with = "param")]
        index: Option<u64>,
        #[serde(default, deserialize_with = "param")]
        service: Option<ServiceName>,
    }

    async fn query(raw: &str) -> Result<Example, ApiError> {
        let request = axum::http::Request::get(format!("/x?{raw}"))
            .body(())
            .expect("request");
        let (mut parts, ()) = request.into_parts();
        Query::<Example>::from_request_parts(&mut parts, &())
            .await
            .map(|Query(example)| example)
    }

    #[tokio::test]
    async fn a_query_reads_each_parameter_by_its_type() {
        let example = query("index=7&service=sum&other=x").await.expect("read");
        assert_eq!(example.index, Some(7));
        assert_eq!(
            example.service.as_ref().map(ServiceName::as_str),
            Some("sum")
        );
        // Repeated: the last value wins. Absent: None.
        let example = query("index=1&index=2").await.expect("read");
        assert_eq!((example.index, example.service.is_none()), (Some(2), true));
        let example = query("index=1&service=a&index=2&x=1&service=s%75m&index=3&x=2")
            .await
            .expect("read");
        assert_eq!(example.index, Some(3));
        assert_eq!(
            example.service.as_ref().map(ServiceName::as_str),
            Some("sum")
        );
        // A bad value: 400 naming the parameter, with what it must be.
        for (raw, name, says) in [
            ("index=-1", "index", "is not an index"),
            ("index=", "index", "is not an index"),
            ("service=Bad%20Name", "service", "service name"),
        ] {
            let error = query(raw).await.expect_err(raw);
            assert_eq!(error.field.as_deref(), Some(name), "{raw}");
            assert!(error.message.contains(says), "{raw}: {}", error.message);
        }
    }

    #[test]
    fn query_pairs_are_decoded_as_form_urlencoded_decodes_them() {
        for raw in [
            "",
            "&&",
            "a",
            "a=",
            "=b",
            "a=b=c",
            "status=passing&index=12&wait=30s",
            "a=1&&b=2&",
            "name=x+y&tag=%41%42&bad=%zz&half=%4",
            "k=caf%C3%A9&raw=café&plus=%2B",
            "x=%FF",
        ] {
            let expected: Vec<_> = url::form_urlencoded::parse(raw.as_bytes()).collect();
            assert_eq!(decoded_pairs(raw).collect::<Vec<_>>(), expected, "{raw}");
        }
    }

    #[test]
    fn errors_name_the_dotted_field() {
        assert_eq!(
            field(r#"{"url":"http://h","bogus":1}"#).as_deref(),
            Some("bogus")
        );
        assert_eq!(field(r#"{"tags":[]}"#).as_deref(), Some("url"));
        assert_eq!(field(r#"{"url":5}"#).as_deref(), Some("url"));
        assert_eq!(
            field(r#"{"url":"http://h","check":{"http":"/s","interval_seconds":"x"}}"#).as_deref(),
            Some("check.interval_seconds")
        );
        assert_eq!(
            field(r#"{"url":"http://h","check":{"http":"/s","nope":1}}"#).as_deref(),
            Some("check.nope")
        );
        assert_eq!(
            field(r#"{"url":"http://h","tags":["a",3]}"#).as_deref(),
            Some("tags.1")
        );
        assert_eq!(field("{not json").as_deref(), Some("body"));
        assert_eq!(field("").as_deref(), Some("body"));
        assert_eq!(field("[]").as_deref(), Some("body"));
        assert_eq!(field(r#"{"url":"http://h"} x"#).as_deref(), Some("body"));
        assert_eq!(
            field(r#"{"url":"http://h","ttl_seconds":-1}"#).as_deref(),
            Some("ttl_seconds")
        );
    }

    #[test]
    fn json_content_types() {
        let ok = |v: &str| is_json(Some(&axum::http::HeaderValue::from_str(v).expect("header")));
        assert!(ok("application/json"));
        assert!(ok("application/json; charset=utf-8"));
        assert!(ok("application/merge+json"));
        assert!(!ok("text/plain"));
        assert!(!is_json(None));
    }
}
