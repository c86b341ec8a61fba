//! Which Postgres server the registry writes to.
//!
//! In production Postgres runs as a replicated cluster: a primary, standbys, and a failover
//! manager that promotes a standby when the primary is lost. `DATABASE_URL` may list every
//! host of such a cluster in libpq's form,
//! `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`; sqlx takes one host
//! per URL, so the list is handled here. The registry writes, so only a server that accepts
//! writes will do (libpq's `read-write`): at start the hosts are asked in the order listed and
//! the first writable one is used. A watch then checks once a second that the server in use
//! still accepts writes; when it does not (down, or read-only: a standby, a demoted primary),
//! it asks every host again and moves the pool to the first writable one, closing the
//! connections opened before the move. Until then callers see the database as unavailable
//! (503, and the outage grace for leases), never an error. One host is handled the same way,
//! which also follows a service name whose address moves to the new primary.
//!
//! A standby promoted after a failover may not have received every write (asynchronous
//! replication): each new connection reads Postgres's timeline ([`History`]), which the
//! promotion changed, so that views load the new primary's state instead of keeping writes
//! it never had.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{StoreError, StoreResult};

/// How often the watch checks that the server in use accepts writes.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The longest a check, or a question to one host, may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The one parameter of libpq's host-list form that sqlx does not know.
const SESSION_ATTRS: &str = "target_session_attrs";

/// One host of `DATABASE_URL`: its connect options and how logs name it.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    options: PgConnectOptions,
}

/// The hosts `DATABASE_URL` lists, in its order.
#[derive(Debug, Clone)]
pub(super) struct Hosts(Vec<Host>);

/// A URL cut around its host list: `scheme://[userinfo@]hosts[rest]`.
pub(crate) struct UrlParts<'a> {
    pub scheme: &'a str,
    pub userinfo: Option<&'a str>,
    pub hosts: &'a str,
    pub rest: &'a str,
}

impl<'a> UrlParts<'a> {
    /// `None` when `url` has no `scheme://`.
    pub fn of(url: &'a str) -> Option<Self> {
        let (scheme, after) = url.split_once("://")?;
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(authority_end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        Some(Self {
            scheme,
            userinfo,
            hosts,
            rest,
        })
    }
}

impl Hosts {
    /// Reads the host list of a `postgres://` URL (one host, or several separated by
    /// commas, each with its own optional port).
    pub fn parse(url: &str) -> StoreResult<Self> {
        let parts = UrlParts::of(url).ok_or_else(|| bad_url("it has no scheme://"))?;
        let credentials = parts.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let rest = without_session_attrs(parts.rest)?;
        let hosts = parts
            .hosts
            .split(',')
            .map(|host| {
                if host.is_empty() {
                    return Err(bad_url("a host in its list is empty"));
                }
                let one = format!("{}://{credentials}{host}{rest}", parts.scheme);
                let parsed = url::Url::parse(&one).map_err(|e| bad_url(&format!("{host}: {e}")))?;
                let options = PgConnectOptions::from_url(&parsed)
                    .map_err(|e| bad_url(&format!("{host}: {e}")))?;
                Ok(Host {
                    name: host.to_owned(),
                    options: super::quiet_statements(options),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Self(hosts))
    }

    /// Connect options for the first host that accepts writes, asked in order.
    pub async fn find_writable(&self) -> StoreResult<PgConnectOptions> {
        let mut answers = Vec::new();
        for host in &self.0 {
            match accepts_writes(&host.options).await {
                Ok(()) => return Ok(host.options.clone()),
                Err(why) => answers.push(format!("{}: {why}", host.name)),
            }
        }
        Err(StoreError::Unavailable(sqlx::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("no Postgres host accepts writes ({})", answers.join("; ")),
            ),
        )))
    }
}

/// The rest of the URL with `target_session_attrs` checked and taken out.
fn without_session_attrs(rest: &str) -> StoreResult<String> {
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => return Ok(rest.to_owned()),
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((SESSION_ATTRS, "read-write" | "primary")) => {}
            Some((SESSION_ATTRS, other)) => {
                return Err(bad_url(&format!(
                    "{SESSION_ATTRS}={other}: the registry writes, so it needs read-write (or primary)"
                )));
            }
            _ => kept.push(pair),
        }
    }
    Ok(match kept.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{}", kept.join("&")),
    })
}

fn bad_url(why: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(
        format!("DATABASE_URL: {why}").into(),
    ))
}

/// Connects to one host and answers whether it accepts writes (the error says why not).
async fn accepts_writes(options: &PgConnectOptions) -> Result<(), String> {
    let asked = tokio::time::timeout(ASK_TIMEOUT, async {
        let mut conn = PgConnection::connect_with(options).await?;
        let writable = read_write(&mut conn).await;
        let _ = conn.close().await;
        writable
    })
    .await;
    match asked {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("read-only (a standby, or a demoted primary)".into()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
    }
}

/// Whether a session on `conn` may write (what libpq's `read-write` checks).
pub(super) async fn read_write<'c, E>(conn: E) -> sqlx::Result<bool>
where
    E: sqlx::PgExecutor<'c>,
{
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(conn)
        .await?;
    Ok(read_only == "off")
}

/// The error a store call answers when the server in use no longer accepts writes.
pub(super) fn read_only_error() -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "the Postgres server is read-only (a standby, or a demoted primary)",
    )))
}

/// The history of the database the pool writes to, told by Postgres's timeline: a
/// promotion starts a new one, and so does a point-in-time restore. Each new connection
/// reads it before it is used, so a change is known before anything is read or written
/// on the new history.
#[derive(Debug, Default)]
pub(super) struct History {
    timeline: std::sync::Mutex<Option<String>>,
    changes: AtomicU64,
}

impl History {
    /// Reads the timeline of the server `conn` reached; refuses a server in recovery (a
    /// standby), which cannot be written.
    pub async fn check(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        let timeline: Option<String> = sqlx::query_scalar(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                    ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
        )
        .fetch_one(conn)
        .await?;
        let Some(timeline) = timeline else {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the Postgres server is a standby",
            )));
        };
        let mut known = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        if known.as_ref().is_some_and(|known| *known != timeline) {
            tracing::warn!(
                from = known.as_deref(),
                to = %timeline,
                "the database is on another history (a failover or a restore): views load it again"
            );
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        *known = Some(timeline);
        Ok(())
    }

    /// See [`super::Store::history_changes`].
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// When the pool last moved to another server, so that connections opened before are
/// closed rather than handed out (they may reach a read-only server that still answers).
#[derive(Debug)]
pub(super) struct Moves {
    started: Instant,
    /// Nanoseconds from `started` to the last move; 0 before any.
    last_move: AtomicU64,
}

impl Moves {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_move: AtomicU64::new(0),
        })
    }

    fn record(&self) {
        let since_start = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_move.store(since_start.max(1), Ordering::Relaxed);
    }

    /// Whether a connection `age` old was opened before the last move.
    pub fn opened_before_last_move(&self, age: Duration) -> bool {
        let last_move = self.last_move.load(Ordering::Relaxed);
        last_move != 0
            && age
                > self
                    .started
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(last_move))
    }
}

/// Keeps `pool` on a writable server for as long as the returned task runs.
pub(super) fn watch(pool: PgPool, hosts: Hosts, moves: Arc<Moves>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lost = false;
        loop {
            ticks.tick().await;
            let check = tokio::time::timeout(ASK_TIMEOUT, read_write(&pool)).await;
            if matches!(check, Ok(Ok(true))) {
                lost = false;
                continue;
            }
            let read_only = matches!(check, Ok(Ok(false)));
            match hosts.find_writable().await {
                // The same server, writable: the check met a busy pool or a short blip.
                Ok(options) if !read_only && same_server(&options, &pool.connect_options()) => {
                    lost = false;
                }
                Ok(options) => {
                    let (host, port) = (options.get_host().to_owned(), options.get_port());
                    pool.set_connect_options(options);
                    moves.record();
                    tracing::warn!(
                        %host,
                        port,
                        "the Postgres server in use stopped accepting writes: moved to one that does"
                    );
                    lost = false;
                }
                Err(error) if !lost => {
                    tracing::warn!(
                        %error,
                        "the Postgres server in use stopped accepting writes; asking every host each second"
                    );
                    lost = true;
                }
                Err(_) => {}
            }
        }
    })
}

fn same_server(a: &PgConnectOptions, b: &PgConnectOptions) -> bool {
    a.get_host() == b.get_host() && a.get_port() == b.get_port()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(url: &str) -> Vec<(String, u16, String)> {
        Hosts::parse(url)
            .expect("parses")
            .0
            .iter()
            .map(|h| {
                (
                    h.options.get_host().to_owned(),
                    h.options.get_port(),
                    h.options.get_database().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn one_host_or_several_each_with_its_port() {
        assert_eq!(
            names("postgres://u@db:6543/reg"),
            vec![("db".into(), 6543, "reg".into())]
        );
        assert_eq!(
            names(
                "postgresql://u:p@h1:5432,h2,[::1]:5433/reg?target_session_attrs=read-write&sslmode=disable"
            ),
            vec![
                ("h1".into(), 5432, "reg".into()),
                ("h2".into(), 5432, "reg".into()),
                ("[::1]".into(), 5433, "reg".into()),
            ]
        );
    }

    #[test]
    fn the_other_parameters_apply_to_every_host() {
        let hosts =
            Hosts::parse("postgres://me:secret@h1:1,h2:2/reg?application_name=x").expect("parses");
        for host in &hosts.0 {
            assert_eq!(host.options.get_username(), "me");
            assert_eq!(host.options.get_application_name(), Some("x"));
        }
    }

    #[test]
    fn session_attributes_other_than_writable_are_refused() {
        for attrs in ["read-write", "primary"] {
            Hosts::parse(&format!("postgres://h1,h2/db?target_session_attrs={attrs}"))
                .expect(attrs);
        }
        for attrs in ["any", "standby", "read-only", "prefer-standby"] {
            let error = Hosts::parse(&format!("postgres://h1,h2/db?target_session_attrs={attrs}"))
                .expect_err(attrs)
                .to_string();
            assert!(error.contains("needs read-write"), "{error}");
        }
    }

    #[test]
    fn malformed_host_lists_are_refused() {
        for url in [
            "postgres://h1,,h2/db",
            "postgres://h1:port/db",
            "postgres://h1:5432,/db",
        ] {
            assert!(Hosts::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn only_connections_older_than_the_last_move_are_stale() {
        let moves = Moves::new();
        assert!(!moves.opened_before_last_move(Duration::from_secs(3600)));
        moves.record();
        assert!(moves.opened_before_last_move(Duration::from_secs(3600)));
        assert!(!moves.opened_before_last_move(Duration::ZERO));
    }
}
