//! `Application`: builds the server (store, migrations, view, listener) and runs it
//! until a shutdown signal, so `main` and the tests start it the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::check_targets::AllowedNetworks;
use crate::config::{DatabaseKind, Settings};
use crate::dns::{DnsListeners, Zone};
use crate::heartbeats::Flush;
use crate::http::{self, AppState, Shared};
use crate::store::{PostgresStore, SqliteStore, Store, Timed};
use crate::view::View;
use crate::workers::{CheckClient, Workers};
use crate::writer::Writer;

/// The embedded database used when `DATABASE_URL` is unset.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://registry.db";

/// Opens the store `database_url` names (SQLite file by default) and migrates it.
pub async fn open_store(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or(DEFAULT_SQLITE_URL);
    let store: Arc<dyn Store> = match DatabaseKind::of(url).map_err(anyhow::Error::msg)? {
        DatabaseKind::Postgres => Arc::new(Timed(
            PostgresStore::connect(url)
                .await
                .context("cannot connect to Postgres (DATABASE_URL)")?,
        )),
        DatabaseKind::Sqlite => {
            Arc::new(Timed(SqliteStore::connect(url).await.with_context(
                || format!("cannot open the SQLite database {url}"),
            )?))
        }
    };
    store.migrate().await.context("database migration failed")?;
    Ok(store)
}

/// A registry ready to serve: the listener is bound, so `local_addr` is known (port 0
/// in tests).
pub struct Application {
    listener: TcpListener,
    /// `REGISTRY_CONSUL_ADDR`: Consul's API alone, when set.
    consul_listener: Option<TcpListener>,
    /// `REGISTRY_DNS_ADDR`: the DNS interface, when set.
    dns: Option<DnsListeners>,
    state: AppState,
    check_client: CheckClient,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let check_client = CheckClient::new(AllowedNetworks::new(
            settings.check_allowed_networks.clone(),
        ))
        .context("cannot build the HTTP client of active checks")?;
        let store = open_store(settings.database_url.as_deref()).await?;
        let epoch = store
            .epoch()
            .await
            .context("cannot read the database's epoch")?;
        let epoch = axum::http::HeaderValue::from_str(&epoch)
            .with_context(|| format!("the database's epoch '{epoch}' cannot be a header"))?;
        let view = View::load(store.as_ref())
            .await
            .context("cannot load the current state from the database")?;
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.addr))?;
        let consul_listener = match settings.consul_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (REGISTRY_CONSUL_ADDR)"))?,
            ),
            None => None,
        };
        let dns = match settings.dns_addr {
            Some(addr) => Some(DnsListeners::bind(addr).await?),
            None => None,
        };
        let view = Arc::new(view);
        let state = AppState::new(Shared {
            writer: Arc::new(Writer::new(
                store.clone(),
                view.clone(),
                settings.clock.clone(),
            )),
            store,
            view,
            write_limit: crate::rate_limit::WriteRateLimit::new(settings.write_rate_limit)
                .map(Arc::new),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            epoch,
        });
        Ok(Self {
            listener,
            consul_listener,
            dns,
            state,
            check_client,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Where Consul's API is served alone (`REGISTRY_CONSUL_ADDR`), when set.
    pub fn consul_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.consul_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(Into::into)
    }

    /// Where the DNS interface answers (`REGISTRY_DNS_ADDR`, UDP and TCP), when set.
    pub fn dns_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.dns.as_ref().map(DnsListeners::local_addr).transpose()
    }

    /// Serves until `signal` completes, then stops within `REGISTRY_SHUTDOWN_TIMEOUT`:
    /// ends long polls and streams, lets requests in flight finish, writes the queued
    /// heartbeats and stops the background work, each step with what is left of the
    /// time. Work still unfinished at the deadline is logged (as counts) and the stop
    /// answers an error, so the process exits non-zero rather than hang: a database that
    /// holds every commit (a synchronous standby gone) must not keep it alive.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let shutdown = CancellationToken::clone(&self.state.shutdown);
        let workers = Workers {
            writer: self.state.writer.clone(),
            settings: self.state.settings.clone(),
            shutdown: shutdown.clone(),
            check_client: self.check_client,
            database_failed: Default::default(),
        }
        .spawn();
        let replication = crate::replication::Replication::new(
            self.state.store.clone(),
            self.state.view.clone(),
            shutdown.clone(),
        )
        .spawn();
        let writer = self.state.writer.clone();
        let header_read_timeout = self.state.settings.header_read_timeout;
        let shutdown_timeout = self.state.settings.shutdown_timeout;
        let dns = match self.dns {
            Some(listeners) => {
                let settings = &self.state.settings;
                let zone = Zone::new(
                    &settings.dns_domain,
                    &settings.datacenter,
                    settings.dns_ttl,
                    settings.dns_only_passing,
                )
                .map_err(anyhow::Error::msg)?;
                tracing::info!(addr = %listeners.local_addr()?, "DNS listening (UDP and TCP)");
                Some(tokio::spawn(listeners.serve(
                    zone,
                    self.state.view.clone(),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let consul_router = http::consul_router(self.state.clone());
        let router = http::router(self.state);
        tracing::info!(addr = %self.listener.local_addr()?, "registry listening");
        let open = crate::serve::OpenConnections::default();
        let stop = shutdown.clone();
        let main = crate::serve::serve(
            self.listener,
            router,
            header_read_timeout,
            open.clone(),
            async move {
                tokio::select! {
                    () = signal => {}
                    () = stop.cancelled() => {}
                }
                tracing::info!("shutting down");
                stop.cancel();
            },
        );
        let consul = match self.consul_listener {
            Some(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "Consul API listening");
                let stop = shutdown.clone();
                Some(crate::serve::serve(
                    listener,
                    consul_router,
                    header_read_timeout,
                    open.clone(),
                    async move { stop.cancelled().await },
                ))
            }
            None => None,
        };
        let serving = async move {
            let consul = async move {
                if let Some(consul) = consul {
                    consul.await;
                }
            };
            tokio::join!(main, consul);
        };
        tokio::pin!(serving);
        // Serving ends by itself only after the stop began (it may finish draining at once).
        let drained_at_once = tokio::select! {
            () = &mut serving => true,
            () = shutdown.cancelled() => false,
        };
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        let drained = drained_at_once
            || tokio::time::timeout_at(deadline, &mut serving)
                .await
                .is_ok();
        // No request runs any more: write the heartbeats acknowledged but still queued.
        match tokio::time::timeout_at(deadline, writer.flush_heartbeats(Flush::All)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not write the last queued heartbeats");
            }
            Err(_) => {}
        }
        shutdown.cancel();
        let mut background = workers;
        background.push(replication);
        background.extend(dns);
        let mut running = background.len();
        let stopped = tokio::time::timeout_at(deadline, async {
            for task in &mut background {
                let _ = task.await;
                running -= 1;
            }
        })
        .await
        .is_ok();
        let unwritten_heartbeats = writer.queued_heartbeats();
        if drained && stopped && unwritten_heartbeats == 0 {
            return Ok(());
        }
        for task in &background {
            task.abort();
        }
        let open_connections = if drained { 0 } else { open.count() };
        tracing::error!(
            open_connections,
            unwritten_heartbeats,
            background_tasks_running = running,
            timeout = ?shutdown_timeout,
            "stopped at the shutdown timeout with work unfinished"
        );
        anyhow::bail!(
            "stopped at the shutdown timeout ({shutdown_timeout:?}): {open_connections} connection(s) still open, {unwritten_heartbeats} heartbeat(s) not written, {running} background task(s) still running"
        )
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
