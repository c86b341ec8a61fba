//! Command line and environment: every setting is a flag with a matching env var
//! (listed in docs/operations.md), parsed by clap so bad values fail at start with one
//! clear line.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use telemetry::LogFormat;

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
    /// A client that has not sent its whole request head this long after its first byte
    /// is disconnected (slow clients holding connections open).
    #[arg(long, env = "REGISTRY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Longest an ordinary request may take, reading its body included (blocking
    /// queries and event streams have their own limits); then 503.
    #[arg(long, env = "REGISTRY_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Longest the whole stop after SIGTERM may take (draining requests, writing queued
    /// heartbeats, stopping background work); then the registry logs what it could not
    /// finish and exits with status 1. Keep it under Kubernetes' grace period (30s).
    #[arg(long, env = "REGISTRY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Writes per second allowed to each client address (bursts of as many); then 429.
    /// 0 = no limit.
    #[arg(long, env = "REGISTRY_WRITE_RATE_LIMIT", default_value_t = 0)]
    pub write_rate_limit: u32,
    /// Networks (CIDR, comma-separated, e.g. `10.0.0.0/8,fd00::/8`) that active checks
    /// may connect to; a check whose target resolves elsewhere fails. Empty = anywhere.
    #[arg(long, env = "REGISTRY_CHECK_ALLOWED_NETWORKS", value_delimiter = ',', value_parser = network)]
    pub check_allowed_networks: Vec<IpNet>,
    /// Share of live leases that, gone silent at once (no sign of life for half their
    /// TTL), makes the registry suspect its own network and hold lease lapses. 0 = off.
    #[arg(
        long,
        env = "REGISTRY_SELF_PRESERVATION_THRESHOLD",
        default_value_t = 0.5
    )]
    pub self_preservation_threshold: f64,
    /// Fewest silent leases that can start self-preservation.
    #[arg(long, env = "REGISTRY_SELF_PRESERVATION_MIN", default_value_t = 5)]
    pub self_preservation_min: u64,
    /// Longest self-preservation lasts; then the held lapses apply.
    #[arg(long, env = "REGISTRY_SELF_PRESERVATION_MAX", default_value = "15m", value_parser = duration)]
    pub self_preservation_max: Duration,
    /// A second address serving Consul's HTTP API alone (e.g. `0.0.0.0:8500`, the port
    /// Consul clients assume); the registry's own address serves it too.
    #[arg(long = "consul-addr", env = "REGISTRY_CONSUL_ADDR")]
    pub consul_addr: Option<SocketAddr>,
    /// The datacenter the Consul API answers as; a request for another one is refused.
    #[arg(long, env = "REGISTRY_DATACENTER", default_value = "dc1")]
    pub datacenter: String,
    /// Where the DNS interface listens, UDP and TCP (e.g. `0.0.0.0:8600`); unset: no DNS.
    #[arg(long = "dns-addr", env = "REGISTRY_DNS_ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// The zone the DNS interface answers for (`<service>.service.<domain>`).
    #[arg(
        long = "dns-domain",
        env = "REGISTRY_DNS_DOMAIN",
        default_value = "consul"
    )]
    pub dns_domain: String,
    /// The TTL of DNS answers, in whole seconds (0: resolvers ask again every time).
    #[arg(long = "dns-ttl", env = "REGISTRY_DNS_TTL", default_value = "0s", value_parser = duration)]
    pub dns_ttl: Duration,
    /// DNS answers only passing instances (by default warning ones too).
    #[arg(long = "dns-only-passing", env = "REGISTRY_DNS_ONLY_PASSING", default_value_t = false, action = clap::ArgAction::Set)]
    pub dns_only_passing: bool,
    /// Serve DNS, which has no tokens, although reads need a token (REGISTRY_READ_TOKEN).
    #[arg(long = "dns-allow-unauthenticated", env = "REGISTRY_DNS_ALLOW_UNAUTHENTICATED", default_value_t = false, action = clap::ArgAction::Set)]
    pub dns_allow_unauthenticated: bool,
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

/// Bounds that keep time arithmetic far from overflow.
const MAX_HISTORY_RETENTION: Duration = Duration::from_secs(3_650 * 86_400);
const MAX_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(365 * 86_400);

/// The database kinds the registry has a store for.
pub fn check_database_url(url: &str) -> Result<(), String> {
    DatabaseKind::of(url).map(|_| ())
}

/// Which store a `DATABASE_URL` names, read from its scheme (the one place that does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Sqlite,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err("DATABASE_URL must start with postgres://, postgresql:// or sqlite:".into())
        }
    }
}

fn duration(raw: &str) -> Result<Duration, String> {
    registry_api::parse_duration(raw)
}

fn network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{raw}' is not a network like 10.0.0.0/8 or an address"))
}

/// Bounds of the request timeouts.
const TIMEOUT_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(600));

/// The settings the server runs with, independent of how they were given.
#[derive(Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub database_url: Option<String>,
    pub token: Option<String>,
    pub read_token: Option<String>,
    pub default_ttl: Duration,
    pub deregister_critical_after: Duration,
    pub history_retention: Duration,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    /// Bound on the whole stop after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Writes per second per client address; 0 = no limit.
    pub write_rate_limit: u32,
    /// Where active checks may connect; empty = anywhere.
    pub check_allowed_networks: Vec<IpNet>,
    pub self_preservation: crate::self_preservation::Limits,
    /// `REGISTRY_CONSUL_ADDR`: where Consul's API is served alone, when set.
    pub consul_addr: Option<SocketAddr>,
    /// `REGISTRY_DATACENTER`, Consul's `dc`.
    pub datacenter: String,
    /// `REGISTRY_DNS_ADDR`: where the DNS interface listens, when set.
    pub dns_addr: Option<SocketAddr>,
    /// `REGISTRY_DNS_DOMAIN`, the zone DNS answers for.
    pub dns_domain: String,
    /// `REGISTRY_DNS_TTL`, in seconds.
    pub dns_ttl: u32,
    /// `REGISTRY_DNS_ONLY_PASSING`.
    pub dns_only_passing: bool,
    /// Where every time the registry dates comes from: the system's, which tests move.
    pub clock: crate::clock::Clock,
}

/// Secrets stay out of logs and panics: tokens are shown as set or not, the database
/// URL without its password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |token: &Option<String>| token.as_ref().map(|_| "<set>");
        f.debug_struct("Settings")
            .field("addr", &self.addr)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("token", &secret(&self.token))
            .field("read_token", &secret(&self.read_token))
            .field("default_ttl", &self.default_ttl)
            .field("deregister_critical_after", &self.deregister_critical_after)
            .field("history_retention", &self.history_retention)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("write_rate_limit", &self.write_rate_limit)
            .field("check_allowed_networks", &self.check_allowed_networks)
            .field("self_preservation", &self.self_preservation)
            .field("consul_addr", &self.consul_addr)
            .field("datacenter", &self.datacenter)
            .field("dns_addr", &self.dns_addr)
            .field("dns_domain", &self.dns_domain)
            .field("dns_ttl", &self.dns_ttl)
            .field("dns_only_passing", &self.dns_only_passing)
            .field("clock", &self.clock)
            .finish()
    }
}

/// `url` with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    // Not `url::Url`: a Postgres URL may list several hosts, which it does not parse.
    let Some(parts) = crate::store::pg_hosts::UrlParts::of(url) else {
        return url.to_owned();
    };
    match parts.userinfo.and_then(|userinfo| userinfo.split_once(':')) {
        Some((user, _password)) => format!(
            "{}://{user}:***@{}{}",
            parts.scheme, parts.hosts, parts.rest
        ),
        None => url.to_owned(),
    }
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
        for (name, timeout) in [
            ("REGISTRY_HEADER_READ_TIMEOUT", self.header_read_timeout),
            ("REGISTRY_REQUEST_TIMEOUT", self.request_timeout),
            ("REGISTRY_SHUTDOWN_TIMEOUT", self.shutdown_timeout),
        ] {
            if timeout < TIMEOUT_BOUNDS.0 || timeout > TIMEOUT_BOUNDS.1 {
                return Err(format!("{name} must be from 100ms to 10m"));
            }
        }
        if !(0.0..1.0).contains(&self.self_preservation_threshold) {
            return Err(
                "REGISTRY_SELF_PRESERVATION_THRESHOLD must be a share from 0 (off) to below 1, e.g. 0.5".into(),
            );
        }
        if self.self_preservation_max.is_zero()
            || self.self_preservation_max > MAX_DEREGISTER_CRITICAL_AFTER
        {
            return Err("REGISTRY_SELF_PRESERVATION_MAX must be from 1s to 365d".into());
        }
        for (name, token) in [
            ("REGISTRY_TOKEN", &self.token),
            ("REGISTRY_READ_TOKEN", &self.read_token),
        ] {
            if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(format!("{name} is set but empty"));
            }
        }
        let datacenter_ok = !self.datacenter.is_empty()
            && self.datacenter.len() <= 63
            && self
                .datacenter
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !datacenter_ok {
            return Err(
                "REGISTRY_DATACENTER must be 1 to 63 letters, digits, '-' or '_' (e.g. dc1)".into(),
            );
        }
        let dns_ttl = self.dns_ttl.as_secs();
        if self.dns_ttl.subsec_nanos() != 0 || dns_ttl > u64::from(u32::MAX >> 1) {
            return Err("REGISTRY_DNS_TTL must be whole seconds, e.g. 0s or 30s".into());
        }
        crate::dns::Zone::check_domain(&self.dns_domain)?;
        if self.dns_addr.is_some() && self.read_token.is_some() && !self.dns_allow_unauthenticated {
            return Err("REGISTRY_DNS_ADDR is set while reads need a token (REGISTRY_READ_TOKEN), and DNS has no tokens: anyone who reaches the DNS port could list every instance; set REGISTRY_DNS_ALLOW_UNAUTHENTICATED=true to serve it anyway".into());
        }
        if self.consul_addr == Some(self.addr) {
            return Err("REGISTRY_CONSUL_ADDR must differ from REGISTRY_ADDR (which serves Consul's API too)".into());
        }
        Ok(Settings {
            addr: self.addr,
            database_url: self.database.database_url.clone().filter(|u| !u.is_empty()),
            token: self.token.clone(),
            read_token: self.read_token.clone(),
            default_ttl: self.default_ttl,
            deregister_critical_after: self.deregister_critical_after,
            history_retention: self.history_retention,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            shutdown_timeout: self.shutdown_timeout,
            write_rate_limit: self.write_rate_limit,
            check_allowed_networks: self.check_allowed_networks.clone(),
            self_preservation: crate::self_preservation::Limits {
                threshold: self.self_preservation_threshold,
                min: self.self_preservation_min,
                max: self.self_preservation_max,
            },
            consul_addr: self.consul_addr,
            datacenter: self.datacenter.clone(),
            dns_addr: self.dns_addr,
            dns_domain: self.dns_domain.clone(),
            dns_ttl: u32::try_from(dns_ttl).unwrap_or(0),
            dns_only_passing: self.dns_only_passing,
            clock: crate::clock::Clock::default(),
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
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            write_rate_limit: 0,
            check_allowed_networks: Vec::new(),
            self_preservation: crate::self_preservation::Limits::DEFAULT,
            consul_addr: None,
            datacenter: "dc1".to_owned(),
            dns_addr: None,
            dns_domain: "consul".to_owned(),
            dns_ttl: 0,
            dns_only_passing: false,
            clock: crate::clock::Clock::default(),
        }
    }

    /// Default TTL in whole seconds (validated at start to fit).
    pub fn default_ttl_seconds(&self) -> u32 {
        u32::try_from(self.default_ttl.as_secs()).unwrap_or(registry_api::limits::MAX_TTL_SECONDS)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_with_one_host_or_several() {
        assert_eq!(
            redact_url("postgres://reg:secret@db:5432/reg"),
            "postgres://reg:***@db:5432/reg"
        );
        assert_eq!(
            redact_url("postgres://reg:s3cr@t@h1:5432,h2:5432/reg?target_session_attrs=read-write"),
            "postgres://reg:***@h1:5432,h2:5432/reg?target_session_attrs=read-write"
        );
        assert_eq!(redact_url("postgres://reg@db/reg"), "postgres://reg@db/reg");
        assert_eq!(redact_url("sqlite:registry.db"), "sqlite:registry.db");
    }
}
