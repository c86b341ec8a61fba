//! The `registry` binary: parse the configuration, set up logging, run a subcommand.

use std::process::ExitCode;

use registry_cli::RegistryApi;
use registry_server::config::{Cli, Command, RemoteArgs, ServeArgs};
use registry_server::{Application, app};
use telemetry::{LogFormat, TelemetryGuard, TelemetryOptions};

/// jemalloc instead of the system's allocator: a request allocates and frees some fifty
/// small objects, and glibc's allocator took a quarter of a heartbeat's instructions
/// (docs/performance.md, "Changes made for speed").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_with_default();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("registry: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::CheckConfig(args) => {
            args.settings().map_err(anyhow::Error::msg)?;
            println!("configuration ok");
            Ok(())
        }
        Command::Migrate(args) => {
            let _telemetry = init_telemetry(None);
            app::open_store(args.database_url.as_deref()).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Status { remote, at, json } => {
            registry_cli::print_status(&connect(remote)?, at, json, &mut std::io::stdout()).await
        }
        Command::Services { remote, json } => {
            registry_cli::print_services(&connect(remote)?, json, &mut std::io::stdout()).await
        }
        Command::Watch {
            remote,
            service,
            since,
            json,
        } => {
            registry_cli::watch(
                &connect(remote)?,
                service,
                since,
                json,
                &mut std::io::stdout(),
            )
            .await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.settings().map_err(anyhow::Error::msg)?;
    let mut telemetry = init_telemetry(args.log_format);
    let application = Application::build(settings).await?;
    let outcome = application.run_until_stopped(app::shutdown_signal()).await;
    telemetry.shutdown();
    outcome
}

/// Logging and tracing ([`telemetry::init`]) under the service name `registry`; without a
/// format, `LOG_FORMAT`, else pretty on a terminal and JSON otherwise. Logs go to stderr so
/// that command output on stdout stays clean. Keep the guard until exit: dropping it
/// flushes the spans not exported yet.
fn init_telemetry(format: Option<LogFormat>) -> TelemetryGuard {
    telemetry::init(TelemetryOptions {
        format,
        // hickory-server logs every DNS query at `info`: one line per lookup is noise.
        default_filter: "info,hickory_server=warn".into(),
        ..TelemetryOptions::new("registry")
    })
}

/// The client of the registry an operator subcommand asks.
fn connect(remote: RemoteArgs) -> anyhow::Result<RegistryApi> {
    registry_cli::connect(&remote.url, remote.token)
}
