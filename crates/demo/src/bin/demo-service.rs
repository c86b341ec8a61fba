//! `demo-service --role sum|mult|concat`: one of the seed's sample services.

use std::process::ExitCode;

use clap::Parser;
use demo::service::{self, ServiceArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServiceArgs::parse();
    let mut telemetry = demo::init_logging("demo-service");
    let outcome = service::run(args, shutdown_signal()).await;
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes, the demo cluster) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
