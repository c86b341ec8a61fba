//! The DNS interface: every passing instance resolvable by name, as Consul's DNS interface
//! answers (`<service>.service.consul`, SRV under `_<service>._tcp.service.consul`), so
//! that any language, load balancer or resolver finds services without a library
//! (docs/dns.md).
//!
//! An adapter like the HTTP ones: [`zone`] says what a name means and which records answer
//! it; this module serves UDP and TCP with hickory-server (which parses and encodes the
//! packets) and answers each question from the view, never from the database, so a change
//! is visible to the next query. It keeps no state of its own.

mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::view::View;
pub use zone::{Lookup, Reply, Zone};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The largest UDP answer, whatever a client advertises (EDNS): beyond it, TCP.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// How often binding UDP and TCP to one free port is tried before giving up (with port 0,
/// the port UDP got may be taken for TCP).
const BIND_ATTEMPTS: usize = 20;

/// Receive buffer asked for each UDP socket: a burst of queries beyond the default
/// (about 200 KiB) is dropped by the kernel before it is read.
const UDP_RECEIVE_BUFFER: usize = 2 << 20;

/// The DNS sockets, bound: UDP and TCP on the same address.
pub struct DnsListeners {
    /// One UDP socket per core on the same port (`SO_REUSEPORT`), each answered on a
    /// thread of its own ([`serve`](Self::serve)); the kernel spreads clients over them.
    udp: Vec<std::net::UdpSocket>,
    tcp: TcpListener,
}

impl DnsListeners {
    /// Binds UDP and TCP on `addr`; with port 0, both on the same free port.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let sockets = std::thread::available_parallelism().map_or(1, usize::from);
        let mut last_error = None;
        for _ in 0..attempts {
            let first = udp_socket(addr)
                .with_context(|| format!("cannot listen on UDP {addr} (REGISTRY_DNS_ADDR)"))?;
            let bound = first.local_addr()?;
            let mut udp = vec![first];
            for _ in 1..sockets {
                udp.push(udp_socket(bound).with_context(|| {
                    format!("cannot listen on UDP {bound} (REGISTRY_DNS_ADDR)")
                })?);
            }
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Ok(Self { udp, tcp }),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.map_or_else(
            || anyhow::anyhow!("cannot listen on TCP {addr}"),
            anyhow::Error::from,
        ))
        .with_context(|| format!("cannot listen on TCP {addr} (REGISTRY_DNS_ADDR)"))
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.tcp.local_addr()?)
    }

    /// Answers queries for `zone` from `view` until `shutdown`: TCP on this runtime, each
    /// UDP socket on a thread of its own ([`answer_udp`]).
    pub async fn serve(self, zone: Zone, view: Arc<View>, shutdown: CancellationToken) {
        let mut udp_threads = Vec::new();
        for socket in self.udp {
            let answerer = Answerer {
                zone: zone.clone(),
                view: Arc::clone(&view),
            };
            let shutdown = shutdown.clone();
            let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
            let started = std::thread::Builder::new()
                .name("registry-dns".into())
                .spawn(move || {
                    answer_udp(socket, answerer, shutdown);
                    let _ = stopped.send(());
                });
            match started {
                Ok(_) => udp_threads.push(on_stop),
                Err(error) => tracing::error!(%error, "could not start a DNS thread"),
            }
        }
        let mut server = hickory_server::Server::new(Answerer { zone, view });
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        run_until(server, shutdown).await;
        for on_stop in udp_threads {
            // An error means the thread ended without saying so (it panicked): stopped too.
            let _ = on_stop.await;
        }
    }
}

/// Answers the queries on `socket` until `shutdown`, on the calling thread, in a runtime
/// of its own. hickory-server hands each datagram to a task of its own and sends its
/// answer back through the socket's task: on one thread those hops cost no wake-up of
/// another thread, where on the registry's shared runtime each could (docs/performance.md,
/// DNS).
fn answer_udp(socket: std::net::UdpSocket, answerer: Answerer, shutdown: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the runtime of a DNS thread");
            return;
        }
    };
    runtime.block_on(async move {
        match UdpSocket::from_std(socket) {
            Ok(socket) => {
                let mut server = hickory_server::Server::new(answerer);
                server.register_socket(socket);
                run_until(server, shutdown).await;
            }
            Err(error) => tracing::error!(%error, "could not answer DNS on a UDP socket"),
        }
    });
}

/// Runs `server` until it stops or `shutdown`, then stops it gracefully.
async fn run_until<H: RequestHandler>(
    mut server: hickory_server::Server<H>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        result = server.block_until_done() => {
            if let Err(error) = result {
                tracing::error!(%error, "the DNS server stopped");
            }
        }
        () = shutdown.cancelled() => {
            if let Err(error) = server.shutdown_gracefully().await {
                tracing::warn!(%error, "the DNS server stopped with an error");
            }
        }
    }
}

/// A UDP socket on `addr` that other sockets of this process may share (`SO_REUSEPORT`),
/// with a large receive buffer.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    // The kernel may grant less (net.core.rmem_max): any size is better than none.
    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Answers each query from the view.
struct Answerer {
    zone: Zone,
    view: Arc<View>,
}

impl Answerer {
    /// The reply to a request, and the type it asked for (for the metrics).
    fn reply(&self, request: &Request) -> (Reply, RecordType) {
        let refuse = |code| Reply {
            code,
            ..Reply::default()
        };
        if request.metadata.op_code != OpCode::Query {
            return (refuse(ResponseCode::NotImp), RecordType::Unknown(0));
        }
        let [query] = request.queries.queries() else {
            return (refuse(ResponseCode::FormErr), RecordType::Unknown(0));
        };
        let qtype = query.query_type();
        // Answers carry the name as asked, case included (resolvers match on it).
        let name = query.original().name();
        // Only Internet-class lookups in our zone: no zone transfers, no recursion.
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
            || !self.zone.contains(name)
        {
            return (refuse(ResponseCode::Refused), qtype);
        }
        let lookup = self.zone.lookup(name);
        let reply = match &lookup {
            Lookup::Service { service, .. } => {
                // The instances' URLs are parsed once per change of the service, not per query.
                let (index, targets) = self
                    .view
                    .service_derived(service, |instances| self.zone.targets(instances));
                let targets = targets.as_deref().map(Vec::as_slice);
                self.zone
                    .answer_service(name, qtype, &lookup, targets, index)
            }
            _ => self
                .zone
                .answer_other(name, qtype, &lookup, self.view.index()),
        };
        (reply, qtype)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Answerer {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let (reply, qtype) = self.reply(request);
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = reply.code != ResponseCode::Refused;
        metadata.response_code = reply.code;
        // The answer's EDNS is ours, made from the client's: without it a UDP answer
        // would stop at 512 bytes, and beyond the client's size the answer is truncated
        // (TC) so that it asks again over TCP. No options: some clients (HAProxy) misread
        // them.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let message = builder.build(
            metadata,
            reply.answers.iter(),
            [],
            reply.authority.iter(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "could not send a DNS answer");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        };
        crate::metrics::dns_query(qtype, info.response_code, started.elapsed());
        info
    }
}
