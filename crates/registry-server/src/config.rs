//! Command line and environment: every setting is a flag with a matching env var
//! (DESIGN section 7), parsed by clap so bad values fail at start with one clear line.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// central-registry: a service registry for microservices.
#[derive(Debug, Parser)]
#[command(name = "registry", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the command line; without a subcommand it is `serve` (so `registry` alone,
    /// or `registry --addr ...`, runs the registry).
    pub fn parse_with_default() -> Self {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
        let top_level_only = matches!(
            first.as_deref(),
            Some("-h" | "--help" | "-V" | "--version" | "help")
        );
        let names_subcommand = first.as_deref().is_some_and(|a| !a.starts_with('-'));
        if !top_level_only && !names_subcommand {
            args.insert(1.min(args.len()), "serve".into());
        }
        <Self as Parser>::parse_from(args)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Check the configuration and exit (used by deploy checks).
    CheckConfig(ServeArgs),
    /// Show the whole system as a table (now, or `--at` a past moment).
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
        /// A past moment (RFC 3339), e.g. 2026-11-29T06:00:00Z.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List services with their instance counts per status.
    Services {
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print events live as they happen.
    Watch {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Start after this index (replays kept history); default: only new events.
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `postgres://...` or `sqlite://file.db`; an embedded SQLite file when unset.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long = "addr", env = "REGISTRY_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// When set, every write needs `Authorization: Bearer <token>`.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// When set, reads need this token or the write token.
    #[arg(long, env = "REGISTRY_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// Lease length of registrations that do not give `ttl_seconds`.
    #[arg(long, env = "REGISTRY_DEFAULT_TTL", default_value = "10s", value_parser = duration)]
    pub default_ttl: Duration,
    /// Remove instances critical this long (0 = never).
    #[arg(long, env = "REGISTRY_DEREGISTER_CRITICAL_AFTER", default_value = "10m", value_parser = duration)]
    pub deregister_critical_after: Duration,
    /// How long events are kept for history and time travel.
    #[arg(long, env = "REGISTRY_HISTORY_RETENTION", default_value = "7d", value_parser = duration)]
    pub history_retention: Duration,
    /// Log format: `pretty` on a terminal, `json` otherwise.
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The registry to ask.
    #[arg(
        long = "url",
        env = "REGISTRY_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    pub url: String,
    /// Token for a registry that requires one (the read or the write token).
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Bounds that keep time arithmetic far from overflow.
const MAX_HISTORY_RETENTION: Duration = Duration::from_secs(3_650 * 86_400);
const MAX_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(365 * 86_400);

/// The database kinds the registry has a store for.
pub fn check_database_url(url: &str) -> Result<(), String> {
    let known = ["postgres://", "postgresql://", "sqlite:"];
    if known.iter().any(|prefix| url.starts_with(prefix)) {
        Ok(())
    } else {
        Err("DATABASE_URL must start with postgres://, postgresql:// or sqlite:".into())
    }
}

fn duration(raw: &str) -> Result<Duration, String> {
    registry_api::parse_duration(raw)
}

/// The settings the server runs with, independent of how they were given.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub database_url: Option<String>,
    pub token: Option<String>,
    pub read_token: Option<String>,
    pub default_ttl: Duration,
    pub deregister_critical_after: Duration,
    pub history_retention: Duration,
}

impl ServeArgs {
    /// Checks what clap cannot, and answers the server settings.
    pub fn settings(&self) -> Result<Settings, String> {
        let ttl = self.default_ttl.as_secs();
        if self.default_ttl.subsec_nanos() != 0
            || ttl > u64::from(registry_api::limits::MAX_TTL_SECONDS)
        {
            return Err(format!(
                "REGISTRY_DEFAULT_TTL must be whole seconds from 0 to {}s",
                registry_api::limits::MAX_TTL_SECONDS
            ));
        }
        if self.history_retention < Duration::from_secs(60)
            || self.history_retention > MAX_HISTORY_RETENTION
        {
            return Err("REGISTRY_HISTORY_RETENTION must be from 1m to 3650d".into());
        }
        if self.deregister_critical_after > MAX_DEREGISTER_CRITICAL_AFTER {
            return Err(
                "REGISTRY_DEREGISTER_CRITICAL_AFTER must be at most 365d (0 = never)".into(),
            );
        }
        if self.read_token.is_some() && self.token.is_none() {
            return Err(
                "REGISTRY_READ_TOKEN is set without REGISTRY_TOKEN: reads would need a token while writes need none; set REGISTRY_TOKEN too".into(),
            );
        }
        if let Some(url) = self
            .database
            .database_url
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            check_database_url(url)?;
        }
        for (name, token) in [
            ("REGISTRY_TOKEN", &self.token),
            ("REGISTRY_READ_TOKEN", &self.read_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(format!("{name} is set but empty"));
            }
        }
        Ok(Settings {
            addr: self.addr,
            database_url: self.database.database_url.clone().filter(|u| !u.is_empty()),
            token: self.token.clone(),
            read_token: self.read_token.clone(),
            default_ttl: self.default_ttl,
            deregister_critical_after: self.deregister_critical_after,
            history_retention: self.history_retention,
        })
    }
}

impl Settings {
    /// Defaults for a server on `addr` with the given database (tests build on this).
    pub fn new(addr: SocketAddr, database_url: Option<String>) -> Self {
        Self {
            addr,
            database_url,
            token: None,
            read_token: None,
            default_ttl: Duration::from_secs(10),
            deregister_critical_after: Duration::from_secs(600),
            history_retention: Duration::from_secs(7 * 86_400),
        }
    }

    /// Default TTL in whole seconds (validated at start to fit).
    pub fn default_ttl_seconds(&self) -> u32 {
        u32::try_from(self.default_ttl.as_secs()).unwrap_or(registry_api::limits::MAX_TTL_SECONDS)
    }
}
