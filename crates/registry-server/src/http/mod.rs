//! The HTTP API: one router per resource, assembled here with auth, size limits and
//! timeouts, checked in this order: auth, then size, then content (docs/api.md, Errors).

mod address;
mod consul;
mod dashboard;
mod error;
mod eureka;
mod events;
mod extract;
mod instances;
mod legacy;
mod openapi;
mod ops;
mod sd;
mod services;
mod status;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::TraceContextExt as _;
use registry_api::{EPOCH_HEADER, ErrorCode, INDEX_HEADER};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use error::ApiError;

use crate::config::Settings;
use crate::store::Store;
use crate::view::View;
use crate::writer::Writer;

/// What every handler shares. In one `Arc`: axum clones the state several times for
/// every request (the route, the handler, the extractor), and a clone of each field
/// would be an atomic increment (and a decrement on drop) per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What every handler shares, behind [`AppState`].
pub struct Shared {
    /// Reads that the view cannot answer (history, time travel).
    pub store: Arc<dyn Store>,
    /// Reads.
    pub view: Arc<View>,
    /// Every write.
    pub writer: Arc<Writer>,
    pub settings: Arc<Settings>,
    /// Cancelled at shutdown so long polls and streams end and let the server stop.
    pub shutdown: CancellationToken,
    /// `REGISTRY_WRITE_RATE_LIMIT`, when set.
    pub write_limit: Option<Arc<crate::rate_limit::WriteRateLimit>>,
    /// The database's epoch, read once at start-up, as every v1 answer carries it.
    pub epoch: HeaderValue,
}

impl Shared {
    /// Now, by the registry's clock (see [`crate::clock`]).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.settings.clock.now()
    }
}

/// What a listener serves: a router behind [`Front`], which is always ready, so
/// [`crate::serve`] calls it without asking `poll_ready` first.
pub trait Api:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Api for T where
    T: tower::Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The whole API.
pub fn router(state: AppState) -> impl Api {
    let timeout = state.settings.request_timeout;
    let ours = Router::new()
        .merge(instances::router())
        .merge(services::router())
        .merge(status::router())
        .merge(sd::router())
        .merge(legacy::router())
        .merge(ops::router())
        .merge(openapi::router())
        .merge(dashboard::router());
    let bounded = Router::new()
        .merge(ours.layer(TimeLimit(timeout, ApiOfPath::Ours)))
        .merge(consul::router().layer(TimeLimit(timeout, ApiOfPath::Consul)))
        .merge(eureka::router().layer(TimeLimit(timeout, ApiOfPath::Eureka)));
    // Blocking queries and event streams set their own limits.
    let long_lived = Router::new()
        .merge(services::long_poll_router())
        .merge(events::router())
        .merge(consul::long_poll_router());
    finish(Router::new().merge(bounded).merge(long_lived), state)
}

/// Consul's routes alone, for `REGISTRY_CONSUL_ADDR` (the port Consul clients assume),
/// with the same admission as the registry's port.
pub fn consul_router(state: AppState) -> impl Api {
    let timeout = state.settings.request_timeout;
    let bounded = consul::router().layer(TimeLimit(timeout, ApiOfPath::Consul));
    finish(bounded.merge(consul::long_poll_router()), state)
}

/// The fallbacks every listener has, and [`Front`] around the whole router: once per
/// request, before routing. Layered on the router instead (`Router::layer`), it would
/// wrap every route, and every request would clone it with its route.
fn finish(routes: Router<AppState>, state: AppState) -> impl Api {
    let routed = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(NoteRoute)
        .with_state(state.clone());
    let epoch = state.epoch.clone();
    Front {
        state,
        routed,
        epoch,
    }
}

/// Observation around admission, around the router: [`observe`], then [`admit`]. A
/// service of its own rather than `middleware::from_fn`, which boxes a clone of the
/// router for every request on top of boxing the request's future; and its answer a
/// future of a named type ([`Observed`] of [`Admitted`]) rather than an `async` block,
/// which would be boxed too, and moved whole (a few kilobytes) on the way.
struct Front {
    state: AppState,
    routed: Router,
    /// The database's epoch as every v1 answer carries it (`Registry-Epoch`).
    epoch: HeaderValue,
}

impl Clone for Front {
    /// The copy a connection answers with ([`crate::serve`] makes one per connection),
    /// with an epoch header of its own: clones of one header value share a count of
    /// clones, which every v1 answer would write, on whichever worker thread it is made.
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            routed: self.routed.clone(),
            epoch: HeaderValue::from_bytes(self.epoch.as_bytes())
                .expect("a header value's own bytes make a header value"),
        }
    }
}

impl tower::Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<Admitted>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Self {
            state,
            routed,
            epoch,
        } = self;
        observe(request, |request| admit(state, epoch, request, routed))
    }
}

/// Times every request into `registry_http_request_duration_seconds`, labelled with the
/// route template (never the raw path, whose ids would make one series per instance) or
/// `unmatched` for requests no route took (unknown paths, refused before routing).
///
/// Each request runs in a server span, a child of the `traceparent` received, named by
/// method and route template once routing has happened.
fn observe<F>(request: Request, next: impl FnOnce(Request) -> F) -> Observed<F>
where
    F: Future<Output = Response> + Unpin,
{
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    // Spans are off unless traces are exported: then the caller's trace is not looked for.
    if !span.is_disabled() {
        telemetry::continue_from(&span, request.headers());
    }
    let answer = {
        let _in_span = span.enter();
        next(request)
    };
    Observed {
        answer,
        span,
        method,
        started,
    }
}

/// A request's answer under [`observe`]: polled in the request's span, then timed and
/// named.
struct Observed<F> {
    answer: F,
    span: tracing::Span,
    method: Method,
    started: std::time::Instant,
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Response> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = {
            let _in_span = this.span.enter();
            std::task::ready!(Pin::new(&mut this.answer).poll(cx))
        };
        let route = response
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let status = response.status();
        let (span, method) = (&this.span, &this.method);
        // Spans are off unless traces are exported: then naming one costs nothing either.
        if !span.is_disabled() {
            // The span has started: its OpenTelemetry name is set on the span itself.
            span.context()
                .span()
                .update_name(format!("{method} {route}"));
            span.record("http.route", route);
            span.record("http.response.status_code", status.as_u16());
        }
        crate::metrics::http_request(method, route, status, this.started.elapsed());
        Poll::Ready(Ok(response))
    }
}

/// Tells `observe` which route template matched: `observe` runs outside the router (so
/// that refused and unknown requests are timed too), where axum's `MatchedPath` is not
/// known, so the route's answer carries it out. A layer of its own rather than
/// `middleware::from_fn`: it is on every route, and `from_fn` clones the route's service
/// and boxes it and its future for every request.
#[derive(Clone, Copy)]
struct NoteRoute;

impl<S> tower::Layer<S> for NoteRoute {
    type Service = RouteNoted<S>;

    fn layer(&self, inner: S) -> RouteNoted<S> {
        RouteNoted(inner)
    }
}

/// A route's service under [`NoteRoute`].
#[derive(Clone)]
struct RouteNoted<S>(S);

impl<S> tower::Service<Request> for RouteNoted<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = NotingRoute<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let matched = request.extensions().get::<MatchedPath>().cloned();
        NotingRoute {
            answer: self.0.call(request),
            matched,
        }
    }
}

/// A route's answer, to which the route template is added when it is ready.
struct NotingRoute<F> {
    answer: F,
    matched: Option<MatchedPath>,
}

impl<F, E> Future for NotingRoute<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = std::task::ready!(Pin::new(&mut self.answer).poll(cx))?;
        if let Some(matched) = self.matched.take() {
            response.extensions_mut().insert(matched);
        }
        Poll::Ready(Ok(response))
    }
}

/// 503 in our error shape (with `Retry-After`) for a request that takes longer than
/// `REGISTRY_REQUEST_TIMEOUT`, reading its body included (a client sending it slowly).
/// A tower layer rather than `middleware::from_fn`, for the reason given at
/// [`NoteRoute`]: it is on every ordinary route. Each API's routes get a layer of their
/// own, which knows the shape of its refusal, rather than reading it from every
/// request's path for the rare one that runs out of time.
#[derive(Clone, Copy)]
struct TimeLimit(Duration, ApiOfPath);

impl<S> tower::Layer<S> for TimeLimit {
    type Service = TimeLimited<S>;

    fn layer(&self, inner: S) -> TimeLimited<S> {
        let TimeLimit(limit, api) = *self;
        TimeLimited { inner, limit, api }
    }
}

/// A route's service under [`TimeLimit`].
#[derive(Clone)]
struct TimeLimited<S> {
    inner: S,
    limit: Duration,
    api: ApiOfPath,
}

impl<S> tower::Service<Request> for TimeLimited<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimeLimitedAnswer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        TimeLimitedAnswer {
            answer: self.inner.call(request),
            limit: self.limit,
            deadline: None,
            api: self.api,
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's answer under [`TimeLimit`]: a future of a named type rather than a boxed
    /// `async` block, for the reason given at [`Front`].
    struct TimeLimitedAnswer<F> {
        #[pin]
        answer: F,
        limit: Duration,
        // Set when the answer first has to wait, and the limit counted from then: most
        // answers are ready at once, and a timer would cost each of them a reading of
        // the clock and a count shared by every worker thread.
        #[pin]
        deadline: Option<tokio::time::Sleep>,
        api: ApiOfPath,
    }
}

impl<F, E> Future for TimeLimitedAnswer<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.answer.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(*this.limit)));
        }
        if let Some(deadline) = this.deadline.as_pin_mut() {
            std::task::ready!(deadline.poll(cx));
        }
        Poll::Ready(Ok(refusal(
            *this.api,
            ApiError::unavailable("the request took too long; retry shortly"),
        )))
    }
}

/// Which API a request's path belongs to, so that a refusal made before its handler
/// answers in that API's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiOfPath {
    Ours,
    Consul,
    Eureka,
}

impl ApiOfPath {
    fn of(path: &str) -> Self {
        if consul::is_consul_path(path) {
            Self::Consul
        } else if eureka::is_eureka_path(path) {
            Self::Eureka
        } else {
            Self::Ours
        }
    }
}

/// A refusal in the shape of the API asked: Consul's plain text on Consul's paths,
/// Eureka's status codes on Eureka's, our JSON error elsewhere.
fn refusal(api: ApiOfPath, error: ApiError) -> Response {
    match api {
        ApiOfPath::Consul => consul::ConsulError::from(error).into_response(),
        ApiOfPath::Eureka => eureka::refusal(error),
        ApiOfPath::Ours => error.into_response(),
    }
}

/// Unknown paths: under Consul's prefixes, Consul's API that this registry does not
/// implement (501, plain text, never a silent 200); elsewhere our 404.
async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    if consul::is_consul_path(uri.path()) {
        return consul::unrouted(&method, &uri);
    }
    if eureka::is_eureka_path(uri.path()) {
        return eureka::unrouted();
    }
    ApiError::new(ErrorCode::NotFound, "no such route; see /openapi.json").into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    if consul::is_consul_path(uri.path()) {
        return consul::method_not_allowed(&method);
    }
    if eureka::is_eureka_path(uri.path()) {
        return eureka::method_not_allowed();
    }
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route; see /openapi.json",
    )
    .into_response()
}

/// Admission, in one middleware and in this order: the write rate limit (when set, so
/// that guessing tokens is limited too), the token, then the declared size (auth, then
/// size, then content: docs/api.md, Errors). One layer rather than one per check:
/// every layer costs every request, lookups included, a clone of what is beneath it.
///
/// Every v1 answer, refusals included, leaves with the database's epoch
/// (`Registry-Epoch`): here rather than in a layer of its own, for the same reason.
fn admit(state: &AppState, epoch: &HeaderValue, request: Request, routed: &mut Router) -> Admitted {
    let v1 = request.uri().path().starts_with("/v1/");
    let epoch = v1.then(|| epoch.clone());
    let (answer, close_on_client_error) = admission(state, request, routed);
    Admitted {
        answer,
        epoch,
        close_on_client_error,
    }
}

/// The checks of [`admit`]: the answer they lead to, and whether a client error in it
/// must close the connection.
fn admission(state: &AppState, request: Request, routed: &mut Router) -> (Answer, bool) {
    if let Some(limit) = &state.write_limit
        && let Some(refused) = rate_limited(limit, &request)
    {
        return (Answer::Refused(std::future::ready(refused)), false);
    }
    if !authorized(&state.settings, &request) {
        let api = ApiOfPath::of(request.uri().path());
        let refused = match api {
            // Consul answers a missing or wrong token with 403.
            ApiOfPath::Consul => consul::ConsulError::permission_denied().into_response(),
            _ => refusal(api, ApiError::unauthorized()),
        };
        let drained = async move {
            drain(request.into_body()).await;
            refused
        };
        return (Answer::Draining(Box::pin(drained)), false);
    }
    let declared = extract::declared_length(request.headers());
    // A refused request's body may be left unread: close the connection so the client
    // does not send its next request on it (it would be read as the rest of this body).
    let has_body = extract::declares_body(declared, request.headers());
    if declared.is_some_and(|len| len > extract::MAX_BODY_BYTES as u64) {
        // 413 before reading a body whose declared length is too large.
        let refused = refusal(ApiOfPath::of(request.uri().path()), extract::too_large());
        return (Answer::Refused(std::future::ready(refused)), has_body);
    }
    // A router is always ready: no `poll_ready` first.
    (
        Answer::Routed(tower::Service::call(routed, request)),
        has_body,
    )
}

/// A request's answer under [`admit`], with what admission adds to it.
struct Admitted {
    answer: Answer,
    epoch: Option<HeaderValue>,
    close_on_client_error: bool,
}

/// Where a request's answer comes from.
enum Answer {
    /// The router's.
    Routed(axum::routing::future::RouteFuture<Infallible>),
    /// A refusal, at once.
    Refused(std::future::Ready<Response>),
    /// A refusal, once the request's body is read and dropped ([`drain`]).
    Draining(futures::future::BoxFuture<'static, Response>),
}

impl Future for Admitted {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = &mut *self;
        let mut response = match &mut this.answer {
            Answer::Routed(routed) => match std::task::ready!(Pin::new(routed).poll(cx)) {
                Ok(response) => response,
            },
            Answer::Refused(refused) => std::task::ready!(Pin::new(refused).poll(cx)),
            Answer::Draining(drained) => std::task::ready!(drained.as_mut().poll(cx)),
        };
        if this.close_on_client_error && response.status().is_client_error() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(epoch) = this.epoch.take() {
            response.headers_mut().insert(EPOCH, epoch);
        }
        Poll::Ready(response)
    }
}

/// 429 (with `Retry-After`) for a write beyond the client's `REGISTRY_WRITE_RATE_LIMIT`.
fn rate_limited(limit: &crate::rate_limit::WriteRateLimit, request: &Request) -> Option<Response> {
    let is_write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let peer = crate::serve::peer(request).filter(|_| is_write)?;
    let wait = limit.admit(peer.ip(), std::time::Instant::now()).err()?;
    let mut response = refusal(
        ApiOfPath::of(request.uri().path()),
        ApiError::new(
            ErrorCode::RateLimited,
            "too many writes from this client; retry after the time in Retry-After",
        ),
    );
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    Some(response)
}

/// Routes anyone may reach, also when tokens are set.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || dashboard::is_open(path)
}

/// Writes need the write token; reads need the read or the write token when a read
/// token is set (docs/api.md, Authentication). Compared in constant time.
fn authorized(settings: &Settings, request: &Request) -> bool {
    let is_read = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let required: Vec<&str> = if is_open(request.uri().path()) {
        Vec::new()
    } else if is_read {
        match (&settings.read_token, &settings.token) {
            (Some(read), Some(write)) => vec![read.as_str(), write.as_str()],
            (Some(read), None) => vec![read.as_str()],
            (None, _) => Vec::new(),
        }
    } else {
        settings.token.iter().map(String::as_str).collect()
    };
    if required.is_empty() {
        return true;
    }
    let path = request.uri().path();
    // Consul clients send `X-Consul-Token` or `?token=`; v1 takes `?token=` only on the
    // event stream (browsers' EventSource cannot set headers).
    let consul = consul::is_consul_path(path);
    // Eureka clients send Basic auth from the user info of their server URL: the token is
    // its password (the user name is not checked).
    let eureka = eureka::is_eureka_path(path);
    let presented = bearer_token(request)
        .or_else(|| eureka.then(|| basic_password(request)).flatten())
        .or_else(|| consul.then(|| consul_token(request)).flatten())
        .or_else(|| {
            (consul || path == "/v1/events")
                .then(|| query_token(request))
                .flatten()
        });
    presented.is_some_and(|given| {
        required.iter().fold(false, |ok, want| {
            ok | bool::from(given.as_bytes().ct_eq(want.as_bytes()))
        })
    })
}

/// The registry's own answer headers, their names made at compile time: inserting a
/// header by its `&str` name parses and lowercases the name on every answer, about 600
/// instructions each (a twentieth of a lookup).
pub(crate) const EPOCH: HeaderName = HeaderName::from_static(EPOCH_HEADER);
pub(crate) const INDEX: HeaderName = HeaderName::from_static(INDEX_HEADER);

/// An answer whose JSON is already written: a view's serialized answer, a heartbeat's
/// written by hand, a fixed one.
pub(crate) fn json_answer(body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Most of a refused request's body that is read (and dropped) before the answer.
const DRAIN_LIMIT: usize = 256 * 1024;
/// Longest a refused request's body is read before the answer.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Reads and drops a refused request's body, bounded by [`DRAIN_LIMIT`] and
/// [`DRAIN_TIME`]: a connection closed with unread data in it is reset by the kernel, and
/// the reset can reach the client before the answer does.
async fn drain(body: axum::body::Body) {
    use futures::StreamExt as _;
    let mut chunks = body.into_data_stream();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0;
        while let Some(Ok(chunk)) = chunks.next().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn bearer_token(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn basic_password(request: &Request) -> Option<String> {
    use base64::Engine as _;
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

fn consul_token(request: &Request) -> Option<String> {
    request
        .headers()
        .get("X-Consul-Token")?
        .to_str()
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

fn query_token(request: &Request) -> Option<String> {
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
}
