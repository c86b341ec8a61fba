//! The accept loop. axum's own `serve` sets no deadline on a connection, so a client
//! sending its request head a byte at a time (slowloris) holds one for as long as it
//! likes. This loop gives every connection its deadlines (`deadlines.rs`), hands each
//! request the peer's address (for per-client rate limits), and shuts down gracefully:
//! no new connections, requests in flight finish.

mod deadlines;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::http::Api;
use deadlines::{Deadlines, Requests};

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How many client connections are open now (the caller's bound on a graceful stop
/// reports those it could not wait for).
#[derive(Clone, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one connection as open while it lives.
struct Open(OpenConnections);

impl Open {
    fn new(open: &OpenConnections) -> Self {
        open.0.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then waits for the
/// connections still open to finish their requests (the caller bounds that wait). A
/// client that has not sent its whole request head within `header_read_timeout` of its
/// first byte is disconnected, and so is a connection idle for
/// [`deadlines::IDLE_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    api: impl Api,
    header_read_timeout: Duration,
    open: OpenConnections,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // The header read timeout is kept by `Deadlines`, from a head's first byte; hyper's
    // would count from the moment a connection falls idle.
    builder.http1().header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // The connection's own copy of the service, called for each of its requests: a
        // copy per request would write the counts of what every copy shares, which the
        // other worker threads' requests write too. Borrowed only for the call (hyper
        // calls the service by shared reference, a tower service takes it mutably).
        let api = RefCell::new(api.clone());
        let requests = Arc::new(Requests::default());
        let stream = Deadlines::new(stream, requests.clone(), header_read_timeout);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = requests.start();
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = api.borrow_mut().call(request);
            async move {
                let _in_flight = in_flight;
                answer.await
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = Open::new(&open);
        tokio::spawn(async move {
            let _open = open;
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The address of the client that sent `request`, when it came through [`serve`].
pub fn peer(request: &axum::extract::Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}
