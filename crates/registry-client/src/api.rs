//! [`RegistryApi`]: one typed async method per route of the v1 HTTP API (docs/api.md).
//!
//! This is the layer everything else in the client (and the server's own tests and
//! operator commands) is built on: it knows URLs, query parameters, timeouts, the bearer
//! token and the error body, and nothing about caching or backoff, which belong to the
//! layers above.
//!
//! It does own one kind of retry: failover between several registry URLs
//! (`REGISTRY_URL=http://a:8000,http://b:8000`). Replicas share one
//! database, so any of them can answer any call, and every write of the v1 API is an
//! idempotent `PUT` or `DELETE`: sending the same call to the next replica when one does
//! not answer is always safe. Doing it here, below every other layer, means the
//! registration handle, the discovery watches and the operator commands all fail over
//! the same way without knowing that there is more than one registry.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use registry_api::{
    EPOCH_HEADER, HeartbeatResponse, History, Instance, InstanceSpec, ServiceInstances,
    ServiceList, Status, StatusChange, StatusSummary, SystemStatus, format_duration,
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

/// Where [`RegistryApi::from_env`] looks for the registry when `REGISTRY_URL` is unset: the
/// registry's own default address on the same host.
const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8000";

/// The answer to [`RegistryApi::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The instance as the registry now holds it.
    pub instance: Instance,
    /// `true` when the instance is new (201), `false` when an existing one was replaced (200).
    pub created: bool,
}

/// Which page of services to read ([`RegistryApi::services_page`],
/// [`RegistryApi::status_page`]): the default is the first page of 100 of every service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Only services whose name contains this text (case-insensitive).
    pub name: Option<String>,
    /// Page size, 1 to 1000 (100 when `None`).
    pub limit: Option<u32>,
    /// Where the page starts: the `next_cursor` of the page before.
    pub cursor: Option<String>,
}

impl PageRequest {
    /// The next page after an answer that gave `next_cursor`, with the same size and filter.
    pub fn after(&self, next_cursor: &str) -> Self {
        Self {
            cursor: Some(next_cursor.to_owned()),
            ..self.clone()
        }
    }

    fn add_to(&self, url: &mut Url) {
        let mut pairs = url.query_pairs_mut();
        if let Some(name) = &self.name {
            pairs.append_pair("name", name);
        }
        pairs.append_pair("limit", &self.limit.unwrap_or(100).to_string());
        if let Some(cursor) = &self.cursor {
            pairs.append_pair("cursor", cursor);
        }
    }
}

/// Typed client of the registry's v1 HTTP API.
///
/// Cheap to clone (the connection pool is shared). Every call has a timeout: 2 s to
/// connect, 10 s for an ordinary call, `wait` + 10 s for a blocking query; the event stream
/// has no overall timeout but fails when it falls silent (see [`EventStream`]).
///
/// Given several registry URLs, every call goes to the preferred one (the first at the
/// start); when it does not answer (connection refused, timeout, connection reset) or
/// answers 502, 503 or 504, the same call goes to the next URL, each URL at most once per
/// call, and the registry that answered becomes the preferred one for every clone of this
/// client. Blocking queries and event streams fail over the same way when they start;
/// an event stream that breaks later is the caller's to reopen (it then fails over).
///
/// ```no_run
/// # async fn demo() -> Result<(), registry_client::ClientError> {
/// use registry_client::RegistryApi;
///
/// let api = RegistryApi::new("http://registry-a:8000,http://registry-b:8000")?
///     .with_token("s3cret");
/// for service in api.services().await?.services {
///     println!("{}: {} passing", service.name, service.passing);
/// }
/// println!("answered by {}", api.base_url());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RegistryApi {
    http: reqwest::Client,
    /// Never empty (checked in [`RegistryApi::new`]).
    bases: Arc<[Url]>,
    /// Index into `bases` of the registry to try first; shared by clones so that one call
    /// discovering a dead registry spares every other caller the same timeout.
    preferred: Arc<AtomicUsize>,
    token: Option<String>,
    request_timeout: Duration,
}

impl fmt::Debug for RegistryApi {
    // By hand so that the token never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bases: Vec<&str> = self.bases.iter().map(Url::as_str).collect();
        f.debug_struct("RegistryApi")
            .field("bases", &bases)
            .field("preferred", &self.base_url().as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// One answer read in full: what ordinary calls and blocking queries get back.
struct Reply {
    status: StatusCode,
    /// The path that was called, for error messages.
    path: String,
    /// The registry database's epoch (`Registry-Epoch`), when the answer carries one.
    epoch: Option<String>,
    body: Bytes,
}

/// An answer with the epoch of the registry's database that gave it (`Registry-Epoch`;
/// `None` from a registry older than the header). Discovery compares epochs to tell a
/// registry that lost its state (docs/api.md, The epoch).
#[derive(Debug, Clone)]
pub(crate) struct Epoched<T> {
    pub(crate) value: T,
    pub(crate) epoch: Option<String>,
}

impl RegistryApi {
    /// A client of the registry at `base_urls`: one URL (`http://registry:8000`), or several
    /// separated by commas (`http://a:8000, http://b:8000`) to fail over between replicas.
    /// Spaces around each URL and empty items are ignored, duplicates are kept once; a path
    /// prefix such as `https://gw.example/registry` is kept in front of every route.
    ///
    /// Fails with [`ClientError::InvalidUrl`] unless there is at least one URL and every one
    /// is absolute http(s) with a host and without user info, query or fragment, and with
    /// [`ClientError::Transport`] if the HTTP client cannot be built (no TLS roots).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// use registry_client::RegistryApi;
    ///
    /// let single = RegistryApi::new("http://localhost:8000")?;
    /// let replicas = RegistryApi::new("http://registry-0:8000, http://registry-1:8000")?;
    /// assert_eq!(replicas.base_urls().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(base_urls: &str) -> Result<Self> {
        let bases = parse_base_urls(base_urls)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("registry-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            bases: bases.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// A client configured the way services are: the registry URL(s)
    /// from `REGISTRY_URL` (default `http://127.0.0.1:8000`; commas separate replicas) and
    /// the bearer token from `REGISTRY_TOKEN` when it is set. An empty variable counts as
    /// unset, as Kubernetes manifests often leave optional values empty.
    ///
    /// Fails like [`new`](Self::new), naming `REGISTRY_URL` in the message.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), registry_client::ClientError> {
    /// let api = registry_client::RegistryApi::from_env()?;
    /// api.healthz().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self> {
        let read =
            |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
        Self::from_env_values(read("REGISTRY_URL"), read("REGISTRY_TOKEN"))
    }

    /// [`from_env`](Self::from_env) with the variables' values given, so that tests need
    /// not change the process environment.
    fn from_env_values(url: Option<String>, token: Option<String>) -> Result<Self> {
        let url = url.filter(|u| !u.trim().is_empty());
        let api =
            Self::new(url.as_deref().unwrap_or(DEFAULT_REGISTRY_URL)).map_err(|e| match e {
                ClientError::InvalidUrl(why) => {
                    ClientError::InvalidUrl(format!("REGISTRY_URL: {why}"))
                }
                other => other,
            })?;
        Ok(match token.filter(|t| !t.is_empty()) {
            Some(token) => api.with_token(token),
            None => api,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (`REGISTRY_TOKEN` or
    /// `REGISTRY_READ_TOKEN` on the server). A token that cannot be a header value makes
    /// every call fail with a [`ClientError::Transport`] builder error.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// let api = registry_client::RegistryApi::new("http://localhost:8000")?.with_token("s3cret");
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Replaces the 10 s timeout of ordinary calls (blocking queries and the event stream
    /// are timed by their own rules; the stream's wait for its first answer uses this one).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// use std::time::Duration;
    ///
    /// let api = registry_client::RegistryApi::new("http://localhost:8000")?
    ///     .with_request_timeout(Duration::from_secs(3));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The base URL of the preferred registry: the one the next call goes to first, which
    /// is the one that answered last (with a single URL, always that URL).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), registry_client::ClientError> {
    /// let api = registry_client::RegistryApi::new("http://a:8000,http://b:8000")?;
    /// api.services().await?;
    /// println!("registry in use: {}", api.base_url());
    /// # Ok(())
    /// # }
    /// ```
    pub fn base_url(&self) -> &Url {
        &self.bases[self.preferred_index()]
    }

    /// Every registry URL, in the order given.
    ///
    /// ```
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// let api = registry_client::RegistryApi::new("http://a:8000, http://b:8000")?;
    /// let urls: Vec<&str> = api.base_urls().iter().map(|u| u.as_str()).collect();
    /// assert_eq!(urls, ["http://a:8000/", "http://b:8000/"]);
    /// # Ok(())
    /// # }
    /// # demo().unwrap();
    /// ```
    pub fn base_urls(&self) -> &[Url] {
        &self.bases
    }

    /// The underlying HTTP client, for calls this type has no method for.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let api = registry_client::RegistryApi::new("http://localhost:8000")?;
    /// let metrics = api.raw().get(api.base_url().join("metrics")?).send().await?;
    /// println!("{}", metrics.text().await?);
    /// # Ok(())
    /// # }
    /// ```
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
        let reply = self
            .call(|base| {
                let url = instance_url(base, service, id, None)?;
                Ok(self.request(Method::PUT, url).json(spec))
            })
            .await?;
        let created = reply.status == StatusCode::CREATED;
        let instance = decode(&reply)?;
        Ok(Registered { instance, created })
    }

    /// `PUT .../heartbeat`: renews the lease. A 404 ([`ClientError::is_not_found`]) means
    /// the registry forgot the instance, which should register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<HeartbeatResponse> {
        let reply = self
            .call(|base| {
                let url = instance_url(base, service, id, Some("heartbeat"))?;
                Ok(self.request(Method::PUT, url))
            })
            .await?;
        decode(&reply)
    }

    /// `PUT .../status`: `Status::Maintenance` drains the instance, `Status::Passing`
    /// clears maintenance (the registry refuses the other two).
    pub async fn set_status(&self, service: &str, id: &str, status: Status) -> Result<Instance> {
        let body = StatusChange {
            status,
            reason: None,
        };
        let reply = self
            .call(|base| {
                let url = instance_url(base, service, id, Some("status"))?;
                Ok(self.request(Method::PUT, url).json(&body))
            })
            .await?;
        decode(&reply)
    }

    /// `DELETE /v1/services/{service}/instances/{id}`: deregisters; 404 if unknown.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        self.call(|base| {
            let url = instance_url(base, service, id, None)?;
            Ok(self.request(Method::DELETE, url))
        })
        .await?;
        Ok(())
    }

    /// `GET /v1/services`: every service with its instance count per status.
    pub async fn services(&self) -> Result<ServiceList> {
        let reply = self
            .call(|base| Ok(self.request(Method::GET, endpoint(base, &["v1", "services"])?)))
            .await?;
        decode(&reply)
    }

    /// `GET /v1/services?limit=&cursor=&name=`: one page of services in name order;
    /// `next_cursor` says where the next one starts ([`PageRequest::after`]), absent on
    /// the last page.
    pub async fn services_page(&self, page: &PageRequest) -> Result<ServiceList> {
        let reply = self
            .call(|base| {
                let mut url = endpoint(base, &["v1", "services"])?;
                page.add_to(&mut url);
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode(&reply)
    }

    /// `GET /v1/services/{service}[?status=...]`: the instances of one service, now. An
    /// unknown service is an empty list, not an error.
    pub async fn service(
        &self,
        service: &str,
        status_filter: Option<Status>,
    ) -> Result<ServiceInstances> {
        Ok(self.service_epoched(service, status_filter).await?.value)
    }

    /// [`service`](Self::service) with the epoch of the database that answered.
    pub(crate) async fn service_epoched(
        &self,
        service: &str,
        status_filter: Option<Status>,
    ) -> Result<Epoched<ServiceInstances>> {
        let reply = self
            .call(|base| {
                let url = service_url(base, service, status_filter, None)?;
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode_epoched(reply)
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
        Ok(self
            .watch_service_epoched(service, status_filter, index, wait)
            .await?
            .value)
    }

    /// [`watch_service`](Self::watch_service) with the epoch of the database that answered.
    pub(crate) async fn watch_service_epoched(
        &self,
        service: &str,
        status_filter: Option<Status>,
        index: u64,
        wait: Duration,
    ) -> Result<Epoched<ServiceInstances>> {
        let timeout = wait
            .saturating_add(wait / 16)
            .saturating_add(BLOCKING_GRACE);
        let reply = self
            .call_with(timeout, |base| {
                let url = service_url(base, service, status_filter, Some((index, wait)))?;
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode_epoched(reply)
    }

    /// `GET /v1/status[?at=...]`: the whole system now, or as it was at `at` (time travel;
    /// a time older than the history kept is a 400 on field `at`).
    pub async fn status(&self, at: Option<DateTime<Utc>>) -> Result<SystemStatus> {
        let reply = self
            .call(|base| {
                let mut url = endpoint(base, &["v1", "status"])?;
                if let Some(at) = at {
                    url.query_pairs_mut()
                        .append_pair("at", &registry_api::time::format(at));
                }
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode(&reply)
    }

    /// `GET /v1/status?limit=&cursor=&name=`: one page of the system now, as
    /// [`Self::services_page`] pages.
    pub async fn status_page(&self, page: &PageRequest) -> Result<SystemStatus> {
        let reply = self
            .call(|base| {
                let mut url = endpoint(base, &["v1", "status"])?;
                page.add_to(&mut url);
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode(&reply)
    }

    /// `GET /v1/status?summary=true`: the system now, counted, with its first critical
    /// instances.
    pub async fn status_summary(&self) -> Result<StatusSummary> {
        let reply = self
            .call(|base| {
                let mut url = endpoint(base, &["v1", "status"])?;
                url.query_pairs_mut().append_pair("summary", "true");
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode(&reply)
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
        let reply = self
            .call(|base| {
                let mut url = endpoint(base, &["v1", "history"])?;
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("service", service);
                    if let Some(instance) = instance {
                        query.append_pair("instance", instance);
                    }
                    if let Some(since) = since {
                        query.append_pair("since", &registry_api::time::format(since));
                    }
                    if let Some(until) = until {
                        query.append_pair("until", &registry_api::time::format(until));
                    }
                }
                Ok(self.request(Method::GET, url))
            })
            .await?;
        decode(&reply)
    }

    /// `GET /v1/events`: the change feed, optionally of one service. With `since`, replays
    /// the events after that index first (or starts with a `reset` if they are no longer
    /// kept); without, only live events.
    ///
    /// Answers once a registry has accepted the stream (so a refusal is an error here,
    /// not inside the stream); waits at most the request timeout per registry for that.
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

    /// `GET /healthz`: `Ok` when a registry process is alive (with several URLs: the
    /// preferred one, or the first of the others that answers; see
    /// [`base_url`](Self::base_url) afterwards).
    pub async fn healthz(&self) -> Result<()> {
        self.call(|base| Ok(self.request(Method::GET, endpoint(base, &["healthz"])?)))
            .await?;
        Ok(())
    }

    /// `GET /readyz`: `Ok` when a registry can serve (database reachable and migrated);
    /// a 503 [`ClientError::Api`] otherwise. With several URLs, a registry that is not
    /// ready (503) hands over to the next one, so this answers whether any of them is.
    pub async fn readyz(&self) -> Result<()> {
        self.call(|base| Ok(self.request(Method::GET, endpoint(base, &["readyz"])?)))
            .await?;
        Ok(())
    }

    async fn open_events(
        &self,
        since: Option<u64>,
        last_event_id: Option<u64>,
        service: Option<&str>,
    ) -> Result<EventStream> {
        let build = |base: &Url| -> Result<RequestBuilder> {
            let mut url = endpoint(base, &["v1", "events"])?;
            if since.is_some() || service.is_some() {
                let mut query = url.query_pairs_mut();
                if let Some(since) = since {
                    query.append_pair("since", &since.to_string());
                }
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
            }
            let mut request = self
                .request(Method::GET, url)
                .header(ACCEPT, "text/event-stream")
                .header(CACHE_CONTROL, "no-cache");
            if let Some(id) = last_event_id {
                request = request.header(LAST_EVENT_ID, id.to_string());
            }
            Ok(request)
        };
        // No overall timeout: the stream is meant to stay open. Only the wait for the
        // response headers is bounded here (a registry that accepts the connection and
        // says nothing is as dead as one that refuses it, so it fails over too); silence
        // afterwards is the stream's business.
        let head_timeout = self.request_timeout;
        let response = self
            .failover(|base| {
                let request = build(base);
                async move {
                    tokio::time::timeout(head_timeout, send(request?))
                        .await
                        .map_err(|_| ClientError::Stalled(head_timeout))?
                }
            })
            .await?;
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
        let mut request = self.http.request(method, url);
        if let Some(traceparent) = crate::trace::outgoing_header() {
            request = request.header("traceparent", traceparent);
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends an ordinary call, with the ordinary timeout, failing over between registries.
    /// `build` makes the request for one registry's base URL.
    async fn call(&self, build: impl Fn(&Url) -> Result<RequestBuilder>) -> Result<Reply> {
        self.call_with(self.request_timeout, build).await
    }

    /// Like [`call`](Self::call) with a timeout chosen by the caller. The body is read
    /// inside each attempt, so a connection reset halfway through an answer also moves on
    /// to the next registry.
    async fn call_with(
        &self,
        timeout: Duration,
        build: impl Fn(&Url) -> Result<RequestBuilder>,
    ) -> Result<Reply> {
        self.failover(|base| {
            let request = build(base).map(|r| r.timeout(timeout));
            async move { read_reply(send(request?).await?).await }
        })
        .await
    }

    /// Runs `attempt` against the preferred registry, then against each of the others in
    /// turn for as long as the failure is one another registry could do better on (see
    /// [`fails_over`]). The registry that gave the final answer, success or refusal,
    /// becomes the preferred one; when none answered, the preference stays.
    async fn failover<T, Fut>(&self, mut attempt: impl FnMut(&Url) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let first = self.preferred_index();
        let mut index = first;
        loop {
            let result = attempt(&self.bases[index]).await;
            let next = (index + 1) % self.bases.len();
            match result {
                Err(error) if fails_over(&error) && next != first => {
                    tracing::debug!(
                        registry = %self.bases[index],
                        next = %self.bases[next],
                        %error,
                        "registry did not answer; trying the next one"
                    );
                    index = next;
                }
                Err(error) if fails_over(&error) => return Err(error),
                result => {
                    self.prefer(first, index);
                    return result;
                }
            }
        }
    }

    fn preferred_index(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.bases.len()
    }

    /// Makes `index` the preferred registry, unless a concurrent call already moved the
    /// preference away from `was` (its finding is as recent as ours).
    fn prefer(&self, was: usize, index: usize) {
        if index == was {
            return;
        }
        if self
            .preferred
            .compare_exchange(was, index, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                unreachable = %self.bases[was],
                now_using = %self.bases[index],
                "registry did not answer; failed over to another one"
            );
        }
    }
}

/// Whether another registry might answer where this one failed: it could not be reached,
/// stayed silent, or said it cannot serve now (503; 502 and 504 from a proxy or ingress in
/// front of it). Anything else is an answer, which another replica of the same database
/// would give too.
fn fails_over(error: &ClientError) -> bool {
    match error {
        // A builder error is a bad header or URL made by us; a redirect error is a
        // misconfigured address that the next URL does not excuse.
        ClientError::Transport(error) => !error.is_builder() && !error.is_redirect(),
        ClientError::Stalled(_) => true,
        ClientError::Api { status, .. } => matches!(status, 502..=504),
        ClientError::Decode(_) | ClientError::InvalidUrl(_) => false,
    }
}

/// Sends one request; turns a non-2xx answer into an error (its body explains the refusal;
/// if it cannot be read, the status alone still does).
async fn send(request: RequestBuilder) -> Result<Response> {
    let response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(api_error(status.as_u16(), &body))
}

async fn read_reply(response: Response) -> Result<Reply> {
    let status = response.status();
    let path = response.url().path().to_owned();
    let epoch = response
        .headers()
        .get(EPOCH_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await?;
    Ok(Reply {
        status,
        path,
        epoch,
        body,
    })
}

fn endpoint(base: &Url, segments: &[&str]) -> Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| ClientError::InvalidUrl(format!("{base} cannot take a path")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn instance_url(base: &Url, service: &str, id: &str, action: Option<&str>) -> Result<Url> {
    let service = segment("service", service)?;
    let id = segment("id", id)?;
    let mut segments = vec!["v1", "services", service, "instances", id];
    segments.extend(action);
    endpoint(base, &segments)
}

fn service_url(
    base: &Url,
    service: &str,
    status_filter: Option<Status>,
    blocking: Option<(u64, Duration)>,
) -> Result<Url> {
    let service = segment("service", service)?;
    let mut url = endpoint(base, &["v1", "services", service])?;
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

/// Splits a comma-separated list of registry URLs (a comma cannot be part of a registry's
/// address in practice, and it is what `REGISTRY_URL` lists use).
fn parse_base_urls(raw: &str) -> Result<Vec<Url>> {
    let mut urls: Vec<Url> = Vec::new();
    for item in raw
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let url = parse_base_url(item)?;
        // Trying the same registry twice in one call would only double the wait.
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(ClientError::InvalidUrl(format!(
            "'{raw}' holds no registry URL"
        )));
    }
    Ok(urls)
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

fn decode<T: DeserializeOwned>(reply: &Reply) -> Result<T> {
    serde_json::from_slice(&reply.body)
        .map_err(|e| ClientError::Decode(format!("{}: {e}", reply.path)))
}

fn decode_epoched<T: DeserializeOwned>(reply: Reply) -> Result<Epoched<T>> {
    let value = decode(&reply)?;
    Ok(Epoched {
        value,
        epoch: reply.epoch,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn api(base: &str) -> RegistryApi {
        RegistryApi::new(base).expect("valid base URL")
    }

    fn base(raw: &str) -> Url {
        parse_base_url(raw).expect("valid base URL")
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
            let url = endpoint(&self::base(base), &["v1", "services"]).expect("url");
            assert_eq!(url.as_str(), "http://gw/registry/v1/services");
        }
        let url = endpoint(&base("http://h:8000"), &["healthz"]).expect("url");
        assert_eq!(url.as_str(), "http://h:8000/healthz");
    }

    #[test]
    fn names_are_percent_encoded_as_single_segments() {
        let url =
            instance_url(&base("http://h:8000"), "a/b", "x y%?#", Some("heartbeat")).expect("url");
        assert_eq!(
            url.as_str(),
            "http://h:8000/v1/services/a%2Fb/instances/x%20y%25%3F%23/heartbeat"
        );
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        let base = base("http://h:8000");
        for (service, id) in [("sum", ".."), ("sum", "."), ("", "a"), ("..", "a")] {
            assert!(matches!(
                instance_url(&base, service, id, None),
                Err(ClientError::InvalidUrl(_))
            ));
        }
        assert!(matches!(
            service_url(&base, "..", None, None),
            Err(ClientError::InvalidUrl(_))
        ));
    }

    #[test]
    fn blocking_queries_carry_index_wait_and_status() {
        let url = service_url(
            &base("http://h:8000"),
            "sum",
            Some(Status::Passing),
            Some((42, Duration::from_secs(90))),
        )
        .expect("url");
        assert_eq!(
            url.as_str(),
            "http://h:8000/v1/services/sum?status=passing&index=42&wait=1m30s"
        );
        let plain = service_url(&base("http://h:8000"), "sum", None, None).expect("url");
        assert_eq!(plain.as_str(), "http://h:8000/v1/services/sum");
    }

    #[test]
    fn times_are_sent_as_utc_rfc3339() {
        let at = Utc
            .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
            .single()
            .expect("valid");
        assert_eq!(registry_api::time::format(at), "2026-05-01T10:00:00Z");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let shown = format!("{:?}", api("http://h:8000").with_token("s3cret"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    fn listed(api: &RegistryApi) -> Vec<&str> {
        api.base_urls().iter().map(Url::as_str).collect()
    }

    #[test]
    fn several_urls_are_split_on_commas_and_trimmed() {
        let api = api(" http://a:8000 ,http://b:8000/registry,  https://c ");
        assert_eq!(
            listed(&api),
            ["http://a:8000/", "http://b:8000/registry", "https://c/"]
        );
        assert_eq!(api.base_url().as_str(), "http://a:8000/");
        // One URL is the list of one, as before.
        assert_eq!(listed(&self::api("http://h:8000")), ["http://h:8000/"]);
    }

    #[test]
    fn empty_items_are_skipped_and_duplicates_kept_once() {
        let api = api("http://a:8000,,http://b:8000,http://a:8000/,");
        assert_eq!(listed(&api), ["http://a:8000/", "http://b:8000/"]);
        for empty in ["", " ", ",", " , ,"] {
            assert!(
                matches!(RegistryApi::new(empty), Err(ClientError::InvalidUrl(_))),
                "'{empty}' should be refused"
            );
        }
    }

    #[test]
    fn one_bad_url_in_the_list_refuses_the_whole_list() {
        match RegistryApi::new("http://a:8000, ftp://b:21") {
            Err(ClientError::InvalidUrl(why)) => assert!(why.contains("ftp://b:21"), "{why}"),
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn clones_share_the_preferred_registry() {
        let api = api("http://a:8000,http://b:8000,http://c:8000");
        let clone = api.clone();
        api.prefer(0, 2);
        assert_eq!(clone.base_url().as_str(), "http://c:8000/");
        // A finding about a preference that already moved on is dropped.
        clone.prefer(0, 1);
        assert_eq!(api.base_url().as_str(), "http://c:8000/");
        api.prefer(2, 0);
        assert_eq!(clone.base_url().as_str(), "http://a:8000/");
    }

    #[test]
    fn environment_gives_urls_and_token_with_defaults() {
        let default = RegistryApi::from_env_values(None, None).expect("default");
        assert_eq!(listed(&default), ["http://127.0.0.1:8000/"]);
        assert!(default.token.is_none());
        let empty = RegistryApi::from_env_values(Some(" ".into()), Some(String::new()))
            .expect("empty counts as unset");
        assert_eq!(listed(&empty), ["http://127.0.0.1:8000/"]);
        assert!(empty.token.is_none());
        let set = RegistryApi::from_env_values(
            Some("http://a:8000,http://b:8000".into()),
            Some("tok".into()),
        )
        .expect("set");
        assert_eq!(listed(&set), ["http://a:8000/", "http://b:8000/"]);
        assert_eq!(set.token.as_deref(), Some("tok"));
        match RegistryApi::from_env_values(Some("registry:8000".into()), None) {
            Err(ClientError::InvalidUrl(why)) => {
                assert!(why.starts_with("REGISTRY_URL: "), "{why}")
            }
            other => panic!("expected InvalidUrl, got {other:?}"),
        }
    }

    #[test]
    fn only_silence_and_unavailability_fail_over() {
        assert!(fails_over(&api_error(503, b"")));
        assert!(fails_over(&api_error(502, b"")));
        assert!(fails_over(&api_error(504, b"")));
        assert!(fails_over(&ClientError::Stalled(Duration::from_secs(1))));
        for answer in [400, 401, 404, 413, 429, 500] {
            assert!(!fails_over(&api_error(answer, b"")), "{answer}");
        }
        assert!(!fails_over(&ClientError::Decode("x".into())));
        assert!(!fails_over(&ClientError::InvalidUrl("x".into())));
    }

    #[test]
    fn debug_output_lists_every_registry() {
        let shown = format!("{:?}", api("http://a:8000,http://b:8000"));
        assert!(
            shown.contains("http://a:8000/") && shown.contains("http://b:8000/"),
            "{shown}"
        );
    }
}
