//! `demo-service`: the seed's sample services. `sum` and `mult` compute, then ask
//! `concat` (found through the registry) to phrase the result; when no `concat` instance
//! can answer they still answer, with `"string": null` (a partial result, as in the seed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use registry_api::InstanceSpec;
use registry_client::RegistryApi;
use registry_client::caller::{CallerOptions, ServiceClient};
use registry_client::discovery::Discovery;
use registry_client::registration::{Registration, RegistrationOptions};
use registry_client::trace::{self, TraceParent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::fault::{Fault, FaultSwitch};

/// Which of the seed's services this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Sum,
    Mult,
    Concat,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Mult => "mult",
            Self::Concat => "concat",
        }
    }

    /// The seed's ports.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Sum => 4040,
            Self::Mult => 4050,
            Self::Concat => 4060,
        }
    }
}

/// Configuration of `demo-service`: flags with matching env vars (docs/operations.md).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "demo-service",
    version,
    about = "The seed's sum, mult and concat services"
)]
pub struct ServiceArgs {
    /// Which service to be.
    #[arg(long, env = "DEMO_ROLE", value_enum)]
    pub role: Role,
    /// Address to listen on (default 0.0.0.0 and the seed's port of the role).
    #[arg(long = "listen", env = "LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// URL to register (in Kubernetes `http://$(POD_IP):PORT`); default: the bound address.
    #[arg(long = "advertise-url", env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Name to register under (default: the role).
    #[arg(long, env = "SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Instance id (default: the host name, which is the pod name in Kubernetes).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Lease length in seconds.
    #[arg(long = "ttl", env = "SERVICE_TTL_SECONDS", default_value_t = 10)]
    pub ttl_seconds: u32,
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    role: Role,
    client: ServiceClient,
    fault: FaultSwitch,
    /// Taken out at shutdown to leave the registry, whatever connections (and with them
    /// clones of this state) are still open then.
    registration: Arc<Mutex<Option<Registration>>>,
}

/// Runs the service until `shutdown` completes, then leaves the registry gracefully
/// (maintenance, drain, deregister).
pub async fn run(
    args: ServiceArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let fault = Fault::from_env().map_err(anyhow::Error::msg)?;
    let listen = args
        .listen_addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], args.role.default_port())));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let advertise = match &args.advertise_url {
        Some(url) => url.clone(),
        None if bound.ip().is_unspecified() => format!("http://127.0.0.1:{}", bound.port()),
        None => format!("http://{bound}"),
    };
    let name = args
        .service_name
        .clone()
        .unwrap_or_else(|| args.role.name().to_owned());
    let id = args.instance_id.clone().unwrap_or_else(host_name);
    let api = RegistryApi::from_env().context("REGISTRY_URL")?;
    let mut spec = InstanceSpec::new(advertise.clone());
    spec.ttl_seconds = Some(args.ttl_seconds);
    spec.tags = vec!["demo".into()];
    spec.metadata.insert("role".into(), args.role.name().into());
    let registration = Registration::start(
        api.clone(),
        name.clone(),
        id.clone(),
        spec,
        RegistrationOptions::default(),
    );
    registration.pause_heartbeats(fault.down);
    let registration = Arc::new(Mutex::new(Some(registration)));
    let switch = FaultSwitch::new(fault.clone());
    let state = AppState {
        role: args.role,
        client: ServiceClient::new(Discovery::new(api), CallerOptions::default()),
        fault: switch,
        registration: registration.clone(),
    };
    tracing::info!(service = %name, instance = %id, %advertise, listen = %bound, "demo service listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error")?;
    tracing::info!("leaving the registry");
    let leaving = registration
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(registration) = leaving {
        registration.shutdown().await;
    }
    Ok(())
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn router(state: AppState) -> Router {
    let business = Router::new()
        .route("/sum", get(sum))
        .route("/mult", get(mult))
        .route("/concat", get(concat))
        .route("/status", get(status))
        .layer(middleware::from_fn_with_state(state.clone(), inject_fault));
    Router::new()
        .merge(business)
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/admin/fault", get(get_fault).put(put_fault))
        .route("/admin/breakers", get(breakers))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(continue_trace))
        .with_state(state)
}

/// The client library's metrics (breakers, calls, discovery) in the Prometheus text format.
async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            registry_client::metrics::CONTENT_TYPE,
        )],
        registry_client::metrics::render(),
    )
}

/// Runs each request in a server span, a child of the trace its caller sent (or of a
/// new one), named by method and route.
async fn continue_trace(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
    );
    let parent =
        telemetry::continue_from(&span, request.headers()).unwrap_or_else(TraceParent::new_root);
    // The span inside the remote context: spans created while handling are its children.
    trace::in_trace(parent, next.run(request).instrument(span)).await
}

async fn inject_fault(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let fault = state.fault.get();
    if fault.down {
        return error(StatusCode::SERVICE_UNAVAILABLE, "down (fault injected)");
    }
    if fault.latency_ms > 0 {
        tokio::time::sleep(fault.latency()).await;
    }
    if request.uri().path() != "/status" && fault.should_fail() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "failed (fault injected)");
    }
    next.run(request).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The seed's `/status`: `{"status":"ok"}` means online.
async fn status() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Debug, Deserialize)]
struct Numbers {
    x: Option<String>,
    y: Option<String>,
}

impl Numbers {
    /// Both numbers, or the message of a 400 naming the one at fault.
    fn parse(&self) -> Result<(i64, i64), String> {
        let one = |name: &str, raw: &Option<String>| {
            raw.as_deref()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| format!("query parameter {name} must be a whole number"))
        };
        Ok((one("x", &self.x)?, one("y", &self.y)?))
    }
}

/// The answer of `sum` and `mult`, exactly as the seed's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computed {
    pub result: i64,
    /// `concat`'s phrasing, or `null` when no concat instance could answer.
    pub string: Option<String>,
}

/// The answer of `concat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concatenated {
    pub result: String,
}

async fn sum(State(state): State<AppState>, Query(n): Query<Numbers>) -> Response {
    compute(&state, Role::Sum, n, i64::checked_add).await
}

async fn mult(State(state): State<AppState>, Query(n): Query<Numbers>) -> Response {
    compute(&state, Role::Mult, n, i64::checked_mul).await
}

async fn compute(
    state: &AppState,
    role: Role,
    numbers: Numbers,
    op: fn(i64, i64) -> Option<i64>,
) -> Response {
    if state.role != role {
        return error(StatusCode::NOT_FOUND, "this instance is another service");
    }
    let (x, y) = match numbers.parse() {
        Ok(pair) => pair,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let Some(result) = op(x, y) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the result does not fit in 64 bits",
        );
    };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("x", "The result is: ")
        .append_pair("y", &result.to_string())
        .finish();
    let string = match state
        .client
        .get_json::<Concatenated>("concat", &format!("/concat?{query}"))
        .await
    {
        Ok(answer) => Some(answer.result),
        Err(err) => {
            tracing::warn!(error = %err, "concat unavailable: answering a partial result");
            None
        }
    };
    Json(Computed { result, string }).into_response()
}

#[derive(Debug, Deserialize)]
struct Words {
    x: Option<String>,
    y: Option<String>,
}

async fn concat(State(state): State<AppState>, Query(words): Query<Words>) -> Response {
    if state.role != Role::Concat {
        return error(StatusCode::NOT_FOUND, "this instance is another service");
    }
    let result = format!(
        "{}{}",
        words.x.unwrap_or_default(),
        words.y.unwrap_or_default()
    );
    Json(Concatenated { result }).into_response()
}

async fn get_fault(State(state): State<AppState>) -> Json<Fault> {
    Json(state.fault.get())
}

async fn put_fault(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(fault) => fault,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad fault: {e}")),
    };
    if let Err(message) = fault.validate() {
        return error(StatusCode::BAD_REQUEST, &message);
    }
    if let Some(registration) = state
        .registration
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        registration.pause_heartbeats(fault.down);
    }
    tracing::warn!(?fault, "fault injected");
    state.fault.set(fault.clone());
    Json(fault).into_response()
}

/// A breaker as `/admin/breakers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerView {
    pub target: String,
    pub state: String,
    pub failure_rate: Option<f64>,
    pub transitions: u64,
}

async fn breakers(State(state): State<AppState>) -> Json<Vec<BreakerView>> {
    Json(
        state
            .client
            .breakers()
            .snapshot()
            .into_iter()
            .map(|(target, snapshot)| BreakerView {
                target,
                state: snapshot.state.as_str().to_owned(),
                failure_rate: snapshot.failure_rate,
                transitions: snapshot.transitions_total,
            })
            .collect(),
    )
}
