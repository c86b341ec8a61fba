//! [`RegistryApi`]: one typed async method per route of the v1 HTTP API (DESIGN section 4).
//!
//! This is the layer everything else in the client (and the server's own tests and
//! operator commands) is built on: it knows URLs, query parameters, timeouts, the bearer
//! token and the error body, and nothing about retries or caching, which belong to the
//! layers above.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use registry_api::{
    HeartbeatResponse, History, Instance, InstanceSpec, ServiceInstances, ServiceList, Status,
    StatusChange, SystemStatus, format_duration,
};
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{ClientError, Result, api_error};
use crate::events::EventStream;

/// Time allowed to open a TCP (and TLS) connection: a registry that does not accept within
/// this is down or unreachable, and the caller should fail over rather than wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for a whole ordinary call, body included.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a blocking query beyond its `wait` and the wait/16 of jitter the
/// registry may add: room for the answer itself to travel.
const BLOCKING_GRACE: Duration = Duration::from_secs(10);

/// The header SSE clients send to resume a stream.
const LAST_EVENT_ID: &str = "Last-Event-ID";

/// The answer to [`RegistryApi::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The instance as the registry now holds it.
    pub instance: Instance,
    /// `true` when the instance is new (201), `false` when an existing one was replaced (200).
    pub created: bool,
}

/// Typed client of the registry's v1 HTTP API.
///
/// Cheap to clone (the connection pool is shared). Every call has a timeout: 2 s to
/// connect, 10 s for an ordinary call, `wait` + 10 s for a blocking query; the event stream
/// has no overall timeout but fails when it falls silent (see [`EventStream`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), registry_client::ClientError> {
/// use registry_client::RegistryApi;
///
/// let api = RegistryApi::new("http://registry:8000")?.with_token("s3cret");
/// for service in api.services().await?.services {
///     println!("{}: {} passing", service.name, service.passing);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RegistryApi {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    request_timeout: Duration,
}

impl fmt::Debug for RegistryApi {
    // By hand so that the token never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryApi")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryApi {
    /// A client of the registry at `base_url` (`http://registry:8000`; a path prefix such as
    /// `https://gw.example/registry` is kept in front of every route).
    ///
    /// Fails with [`ClientError::InvalidUrl`] unless the URL is absolute http(s) with a host
    /// and without user info, query or fragment, and with [`ClientError::Transport`] if the
    /// HTTP client cannot be built (no TLS roots).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// let api = registry_client::RegistryApi::new("http://localhost:8000")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(base_url: &str) -> Result<Self> {
        let base = parse_base_url(base_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("registry-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (`REGISTRY_TOKEN` or
    /// `REGISTRY_READ_TOKEN` on the server). A token that cannot be a header value makes
    /// every call fail with a [`ClientError::Transport`] builder error.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Replaces the 10 s timeout of ordinary calls (blocking queries and the event stream
    /// are timed by their own rules).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The base URL every route is appended to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The underlying HTTP client, for calls this type has no method for.
    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// `PUT /v1/services/{service}/instances/{id}`: registers the instance, or replaces the
    /// whole spec of an existing one (idempotent). The registry validates names and spec;
    /// a refusal is a [`ClientError::Api`] whose `field` names the culprit.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        spec: &InstanceSpec,
    ) -> Result<Registered> {
        let url = self.instance_url(service, id, None)?;
        let response = self.call(self.request(Method::PUT, url).json(spec)).await?;
        let created = response.status() == StatusCode::CREATED;
        let instance = decode(response).await?;
        Ok(Registered { instance, created })
    }

    /// `PUT .../heartbeat`: renews the lease. A 404 ([`ClientError::is_not_found`]) means
    /// the registry forgot the instance, which should register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<HeartbeatResponse> {
        let url = self.instance_url(service, id, Some("heartbeat"))?;
        decode(self.call(self.request(Method::PUT, url)).await?).await
    }

    /// `PUT .../status`: `Status::Maintenance` drains the instance, `Status::Passing`
    /// clears maintenance (the registry refuses the other two).
    pub async fn set_status(&self, service: &str, id: &str, status: Status) -> Result<Instance> {
        let url = self.instance_url(service, id, Some("status"))?;
        let body = StatusChange { status };
        decode(
            self.call(self.request(Method::PUT, url).json(&body))
                .await?,
        )
        .await
    }

    /// `DELETE /v1/services/{service}/instances/{id}`: deregisters; 404 if unknown.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let url = self.instance_url(service, id, None)?;
        self.call(self.request(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `GET /v1/services`: every service with its instance count per status.
    pub async fn services(&self) -> Result<ServiceList> {
        let url = self.endpoint(&["v1", "services"])?;
        decode(self.call(self.request(Method::GET, url)).await?).await
    }

    /// `GET /v1/services/{service}[?status=...]`: the instances of one service, now. An
    /// unknown service is an empty list, not an error.
    pub async fn service(
        &self,
        service: &str,
        status_filter: Option<Status>,
    ) -> Result<ServiceInstances> {
        let url = self.service_url(service, status_filter, None)?;
        decode(self.call(self.request(Method::GET, url)).await?).await
    }

    /// Blocking query on one service: answers as soon as the service's index passes
    /// `index`, or after `wait` (clamped to 5 min by the registry) with the same content.
    /// Pass the `index` of the previous answer to watch for changes; 0 answers at once.
    ///
    /// ```no_run
    /// # async fn demo(api: registry_client::RegistryApi) -> Result<(), registry_client::ClientError> {
    /// use std::time::Duration;
    ///
    /// let mut index = 0;
    /// loop {
    ///     let sum = api.watch_service("sum", None, index, Duration::from_secs(30)).await?;
    ///     if sum.index != index {
    ///         println!("sum now has {} instance(s)", sum.instances.len());
    ///     }
    ///     index = sum.index;
    /// }
    /// # }
    /// ```
    pub async fn watch_service(
        &self,
        service: &str,
        status_filter: Option<Status>,
        index: u64,
        wait: Duration,
    ) -> Result<ServiceInstances> {
        let url = self.service_url(service, status_filter, Some((index, wait)))?;
        let timeout = wait
            .saturating_add(wait / 16)
            .saturating_add(BLOCKING_GRACE);
        let request = self.request(Method::GET, url).timeout(timeout);
        decode(self.call_with(request).await?).await
    }

    /// `GET /v1/status[?at=...]`: the whole system now, or as it was at `at` (time travel;
    /// a time older than the history kept is a 400 on field `at`).
    pub async fn status(&self, at: Option<DateTime<Utc>>) -> Result<SystemStatus> {
        let mut url = self.endpoint(&["v1", "status"])?;
        if let Some(at) = at {
            url.query_pairs_mut().append_pair("at", &rfc3339(at));
        }
        decode(self.call(self.request(Method::GET, url)).await?).await
    }

    /// `GET /v1/history`: the status transitions of a service (or of one of its instances)
    /// in `[since, until)`, oldest first.
    pub async fn history(
        &self,
        service: &str,
        instance: Option<&str>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<History> {
        let mut url = self.endpoint(&["v1", "history"])?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("service", service);
            if let Some(instance) = instance {
                query.append_pair("instance", instance);
            }
            if let Some(since) = since {
                query.append_pair("since", &rfc3339(since));
            }
            if let Some(until) = until {
                query.append_pair("until", &rfc3339(until));
            }
        }
        decode(self.call(self.request(Method::GET, url)).await?).await
    }

    /// `GET /v1/events`: the change feed, optionally of one service. With `since`, replays
    /// the events after that index first (or starts with a `reset` if they are no longer
    /// kept); without, only live events.
    ///
    /// Answers once the registry has accepted the stream (so a refusal is an error here,
    /// not inside the stream); waits at most the request timeout for that.
    pub async fn events(&self, since: Option<u64>, service: Option<&str>) -> Result<EventStream> {
        self.open_events(since, None, service).await
    }

    /// Like [`events`](Self::events) but resumes after `last_event_id` by sending the
    /// `Last-Event-ID` header, as a browser's `EventSource` does when it reconnects; use
    /// [`EventStream::last_event_id`] of the stream that ended.
    pub async fn events_resume(
        &self,
        last_event_id: u64,
        service: Option<&str>,
    ) -> Result<EventStream> {
        self.open_events(None, Some(last_event_id), service).await
    }

    /// `GET /healthz`: `Ok` when the registry process is alive.
    pub async fn healthz(&self) -> Result<()> {
        let url = self.endpoint(&["healthz"])?;
        self.call(self.request(Method::GET, url)).await?;
        Ok(())
    }

    /// `GET /readyz`: `Ok` when the registry can serve (database reachable and migrated);
    /// a 503 [`ClientError::Api`] otherwise.
    pub async fn readyz(&self) -> Result<()> {
        let url = self.endpoint(&["readyz"])?;
        self.call(self.request(Method::GET, url)).await?;
        Ok(())
    }

    async fn open_events(
        &self,
        since: Option<u64>,
        last_event_id: Option<u64>,
        service: Option<&str>,
    ) -> Result<EventStream> {
        let mut url = self.endpoint(&["v1", "events"])?;
        if since.is_some() || service.is_some() {
            let mut query = url.query_pairs_mut();
            if let Some(since) = since {
                query.append_pair("since", &since.to_string());
            }
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        // No overall timeout: the stream is meant to stay open. Only the wait for the
        // response headers is bounded here; silence afterwards is the stream's business.
        let mut request = self
            .request(Method::GET, url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_ID, id.to_string());
        }
        let response = tokio::time::timeout(self.request_timeout, self.call_with(request))
            .await
            .map_err(|_| ClientError::Stalled(self.request_timeout))??;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // A wrong base URL can land on an HTML page answering 200; say so plainly.
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::Decode(format!(
                "{} answered content type '{content_type}', not text/event-stream",
                response.url().path()
            )));
        }
        let body = response.bytes_stream().map_err(ClientError::Transport);
        Ok(EventStream::new(body, last_event_id.or(since)))
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends an ordinary call, with the ordinary timeout.
    async fn call(&self, request: RequestBuilder) -> Result<Response> {
        self.call_with(request.timeout(self.request_timeout)).await
    }

    /// Sends a request whose timeout was chosen by the caller; turns non-2xx into errors.
    async fn call_with(&self, request: RequestBuilder) -> Result<Response> {
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // The body explains the refusal; if it cannot be read, the status alone still does.
        let body = response.bytes().await.unwrap_or_default();
        Err(api_error(status.as_u16(), &body))
    }

    fn endpoint(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl(format!("{} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn instance_url(&self, service: &str, id: &str, action: Option<&str>) -> Result<Url> {
        let service = segment("service", service)?;
        let id = segment("id", id)?;
        let mut segments = vec!["v1", "services", service, "instances", id];
        segments.extend(action);
        self.endpoint(&segments)
    }

    fn service_url(
        &self,
        service: &str,
        status_filter: Option<Status>,
        blocking: Option<(u64, Duration)>,
    ) -> Result<Url> {
        let service = segment("service", service)?;
        let mut url = self.endpoint(&["v1", "services", service])?;
        if status_filter.is_some() || blocking.is_some() {
            let mut query = url.query_pairs_mut();
            if let Some(status) = status_filter {
                query.append_pair("status", status.as_str());
            }
            if let Some((index, wait)) = blocking {
                query.append_pair("index", &index.to_string());
                query.append_pair("wait", &format_duration(wait));
            }
        }
        Ok(url)
    }
}

/// Checks that a name can travel as one path segment. Percent-encoding covers every
/// character, but an empty, `.` or `..` segment would be dropped or resolved by URL rules
/// and the request would reach another route.
fn segment<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(ClientError::InvalidUrl(format!(
            "{field} '{value}' cannot be a path segment"
        )));
    }
    Ok(value)
}

fn parse_base_url(raw: &str) -> Result<Url> {
    let invalid = |why: &str| ClientError::InvalidUrl(format!("'{raw}' {why}"));
    let url = Url::parse(raw.trim()).map_err(|e| invalid(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(invalid("must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain user info (use a token)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(url)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T> {
    let path = response.url().path().to_owned();
    let body = response.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn api(base: &str) -> RegistryApi {
        RegistryApi::new(base).expect("valid base URL")
    }

    #[test]
    fn base_urls_must_be_plain_http_or_https() {
        for bad in [
            "",
            "localhost:8000",
            "ftp://host/",
            "http://user:pw@host:8000",
            "http://host:8000/?x=1",
            "http://host:8000/#top",
            "mailto:ops@example.com",
            "/v1",
        ] {
            assert!(
                matches!(RegistryApi::new(bad), Err(ClientError::InvalidUrl(_))),
                "{bad} should be refused"
            );
        }
        assert!(RegistryApi::new(" https://[::1]:8443 ").is_ok());
    }

    #[test]
    fn routes_keep_a_path_prefix_with_or_without_trailing_slash() {
        for base in ["http://gw:80/registry", "http://gw:80/registry/"] {
            let url = api(base).endpoint(&["v1", "services"]).expect("url");
            assert_eq!(url.as_str(), "http://gw/registry/v1/services");
        }
        let url = api("http://h:8000").endpoint(&["healthz"]).expect("url");
        assert_eq!(url.as_str(), "http://h:8000/healthz");
    }

    #[test]
    fn names_are_percent_encoded_as_single_segments() {
        let url = api("http://h:8000")
            .instance_url("a/b", "x y%?#", Some("heartbeat"))
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://h:8000/v1/services/a%2Fb/instances/x%20y%25%3F%23/heartbeat"
        );
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        let api = api("http://h:8000");
        for (service, id) in [("sum", ".."), ("sum", "."), ("", "a"), ("..", "a")] {
            assert!(matches!(
                api.instance_url(service, id, None),
                Err(ClientError::InvalidUrl(_))
            ));
        }
        assert!(matches!(
            api.service_url("..", None, None),
            Err(ClientError::InvalidUrl(_))
        ));
    }

    #[test]
    fn blocking_queries_carry_index_wait_and_status() {
        let url = api("http://h:8000")
            .service_url(
                "sum",
                Some(Status::Passing),
                Some((42, Duration::from_secs(90))),
            )
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://h:8000/v1/services/sum?status=passing&index=42&wait=1m30s"
        );
        let plain = api("http://h:8000")
            .service_url("sum", None, None)
            .expect("url");
        assert_eq!(plain.as_str(), "http://h:8000/v1/services/sum");
    }

    #[test]
    fn times_are_sent_as_utc_rfc3339() {
        let at = Utc
            .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(rfc3339(at), "2026-05-01T10:00:00Z");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let shown = format!("{:?}", api("http://h:8000").with_token("s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
