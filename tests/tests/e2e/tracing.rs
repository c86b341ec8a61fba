//! Traces end to end: the real registry, two demo services (`concat`, `sum`) and the demo
//! client export spans over OTLP/HTTP to a receiver in this test, and the seed's flow
//! reads as one trace with the right parent links; the registry exports over OTLP/gRPC
//! too; without `OTEL_*` no exporter is set up and the registry serves as usual.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Backend, RegistryProcess};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_stream::wrappers::TcpListenerStream;

const SPAN_KIND_SERVER: i32 = 2;
const SPAN_KIND_CLIENT: i32 = 3;

/// One span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP trace receiver on 127.0.0.1:0 that keeps every span.
async fn start_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    spans.lock().expect("spans").extend(spans_of(request));
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

/// The same receiver over OTLP/gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
async fn start_grpc_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = TraceServiceServer::new(GrpcReceiver(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), spans)
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .expect("spans")
            .extend(spans_of(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .and_then(|v| match v {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
    }
    received
}

fn otel_env(endpoint: &str, service: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
        ("OTEL_SERVICE_NAME".into(), service.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
    ]
}

fn demo_command(binary: &str, registry: &str, envs: Vec<(String, String)>) -> Command {
    let mut command = Command::new(crate::support::binary(binary));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REGISTRY_URL", registry)
        .env("RUST_LOG", "info")
        .envs(envs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

fn start_service(role: &str, registry: &str, endpoint: &str) -> Child {
    demo_command("demo-service", registry, otel_env(endpoint, role))
        .args(["--role", role, "--listen", "127.0.0.1:0"])
        .env("INSTANCE_ID", format!("{role}-1"))
        .spawn()
        .expect("start demo-service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_is_one_trace_across_every_hop() {
    let (endpoint, spans) = start_receiver().await;
    let database = Backend::Sqlite.fresh_url().await;
    let env = otel_env(&endpoint, "registry");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let registry = RegistryProcess::start(&database, &env).await;
    let _concat = start_service("concat", &registry.base_url, &endpoint);
    let _sum = start_service("sum", &registry.base_url, &endpoint);

    let output = tokio::time::timeout(
        Duration::from_secs(120),
        demo_command(
            "demo-client",
            &registry.base_url,
            otel_env(&endpoint, "demo-client"),
        )
        .args(["--scenario", "seed"])
        .output(),
    )
    .await
    .expect("demo-client ends within 2 minutes")
    .expect("demo-client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("[ok] sum answers 25 and concat's phrase"),
        "the seed flow reached sum and concat:\n{stdout}"
    );

    let last_error = Mutex::new(String::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let verdict = one_trace(&spans.lock().expect("spans"));
        match verdict {
            Ok(()) => break,
            Err(error) => *last_error.lock().expect("error") = error,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete trace within 30 s: {}",
            last_error.lock().expect("error")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry.kill().await;
}

/// `Ok` when spans of demo-client, sum, registry and concat share one trace, sum's server
/// span is a child of a demo-client span and concat's of a sum client span.
fn one_trace(spans: &[Received]) -> Result<(), String> {
    let of = |service: &'static str| spans.iter().filter(move |s| s.service == service);
    let client_ids: HashSet<&[u8]> = of("demo-client").map(|s| s.span_id.as_slice()).collect();
    let sum_server = of("sum")
        .find(|s| {
            s.kind == SPAN_KIND_SERVER
                && s.name == "GET /sum"
                && client_ids.contains(s.parent_span_id.as_slice())
        })
        .ok_or("no sum server span whose parent is a demo-client span")?;
    let trace = sum_server.trace_id.as_slice();
    let sum_clients: HashSet<&[u8]> = of("sum")
        .filter(|s| s.kind == SPAN_KIND_CLIENT && s.trace_id == trace)
        .map(|s| s.span_id.as_slice())
        .collect();
    of("concat")
        .find(|s| {
            s.kind == SPAN_KIND_SERVER
                && s.trace_id == trace
                && sum_clients.contains(s.parent_span_id.as_slice())
        })
        .ok_or("no concat server span in the trace whose parent is a sum client span")?;
    // Discovery: a lookup of the registry, named by route template, in the same trace.
    of("registry")
        .find(|s| {
            s.kind == SPAN_KIND_SERVER && s.trace_id == trace && s.name.starts_with("GET /v1/")
        })
        .ok_or("no registry server span (GET /v1/...) in the trace")?;
    of("demo-client")
        .find(|s| s.trace_id == trace && s.parent_span_id.is_empty())
        .ok_or("no demo-client root span of the trace")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_exports_over_grpc_and_continues_the_incoming_trace() {
    let (endpoint, spans) = start_grpc_receiver().await;
    let database = Backend::Sqlite.fresh_url().await;
    let registry = RegistryProcess::start(
        &database,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "registry"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    assert!(
        registry
            .startup_log
            .iter()
            .any(|line| line.contains("traces are exported over OTLP") && line.contains("grpc")),
        "the registry says it exports over gRPC: {:#?}",
        registry.startup_log
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/services", registry.base_url))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .expect("GET /v1/services");
    assert_eq!(answer.status(), 200);

    let (trace_id, parent_id) = (bytes_of_hex(trace_id), bytes_of_hex(parent_id));
    crate::support::eventually(
        Duration::from_secs(30),
        "the registry's server span over gRPC",
        || {
            let found = spans.lock().expect("spans").iter().any(|span| {
                span.service == "registry"
                    && span.kind == SPAN_KIND_SERVER
                    && span.name == "GET /v1/services"
                    && span.trace_id == trace_id
                    && span.parent_span_id == parent_id
            });
            async move { found.then_some(()) }
        },
    )
    .await;
    registry.kill().await;
}

fn bytes_of_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_settings_the_registry_serves_as_usual() {
    let database = Backend::Sqlite.fresh_url().await;
    let registry = RegistryProcess::start(&database, &[]).await;
    assert!(
        registry
            .startup_log
            .iter()
            .any(|line| line.contains("traces are not exported")),
        "the registry says it exports nothing: {:#?}",
        registry.startup_log
    );
    let health = reqwest::get(format!("{}/healthz", registry.base_url))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    // A traced request works as any other.
    let traced = reqwest::Client::new()
        .get(format!("{}/v1/services", registry.base_url))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("GET /v1/services");
    assert_eq!(traced.status(), 200);
    registry.api.status(None).await.expect("status");
    registry.kill().await;
}
