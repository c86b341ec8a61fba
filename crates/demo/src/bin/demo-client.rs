//! `demo-client`: runs the seed's flow against `REGISTRY_URL`, or, with
//! `--scenario resilience`, starts a local cluster and tells the resilience story.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use registry_client::RegistryApi;
use tracing::Instrument as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// sum(10,15) and mult(10,15) through the registry at REGISTRY_URL.
    Seed,
    /// A local registry and services, broken and healed on purpose, every outcome checked.
    Resilience,
}

/// The demo client of central-registry.
#[derive(Debug, Parser)]
#[command(name = "demo-client", version, about)]
struct Args {
    #[arg(long, value_enum, default_value = "seed")]
    scenario: Scenario,
    /// Folder for the resilience cluster's database and logs (default: a new temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // The story is the output: library logs only on errors (RUST_LOG shows more).
    let mut telemetry = demo::init_logging_with("demo-client", "error");
    let outcome = match args.scenario {
        Scenario::Seed => {
            seed()
                .instrument(tracing::info_span!("demo-client seed"))
                .await
        }
        Scenario::Resilience => resilience(args.work_dir).await,
    };
    telemetry.shutdown();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("demo-client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn seed() -> anyhow::Result<bool> {
    let api = RegistryApi::from_env()?;
    println!("registry: {}", api.base_url());
    Ok(demo::scenario::run_seed_flow(api).await)
}

async fn resilience(work_dir: Option<PathBuf>) -> anyhow::Result<bool> {
    let work_dir = match work_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => std::env::temp_dir().join(format!(
            "central-registry-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&work_dir)?;
    println!("Logs and database: {}", work_dir.display());
    let outcome = demo::scenario::run_resilience(&work_dir).await;
    println!("Logs and database: {}", work_dir.display());
    outcome
}
