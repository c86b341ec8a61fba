//! The DNS interface: every passing instance resolvable by name, as Consul's DNS interface
//! answers (`<service>.service.consul`, SRV under `_<service>._tcp.service.consul`), so
//! that any language, load balancer or resolver finds services without a library
//! (docs/dns.md).
//!
//! An adapter like the HTTP ones: [`zone`] says what a name means and which records answer
//! it; this module answers each question from the view, never from the database, so a
//! change is visible to the next query. hickory-server parses and encodes the messages
//! and serves TCP; UDP is read here, so that the question asked most, a service's A or
//! AAAA records, is answered with records encoded once per change of the service
//! ([`prepared`]). It keeps no state of its own.

mod prepared;
mod zone;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hickory_server::net::NetError;
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::view::View;
use prepared::{PlainQuery, ServiceRecords};
pub use zone::{Lookup, Reply, Zone};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The largest UDP answer, whatever a client advertises (EDNS): beyond it, TCP.
const MAX_UDP_PAYLOAD: u16 = 4096;
/// The largest UDP answer without EDNS (RFC 1035 4.2.1).
const PLAIN_UDP_PAYLOAD: u16 = 512;
/// How often binding UDP and TCP to one free port is tried before giving up (with port 0,
/// the port UDP got may be taken for TCP).
const BIND_ATTEMPTS: usize = 20;

/// The largest query read over UDP (as hickory-server reads them).
const UDP_QUERY_BUFFER: usize = 4096;

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
/// of its own, so that no query costs a wake-up of another thread (docs/performance.md,
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
            Ok(socket) => answer_datagrams(Arc::new(socket), &answerer, &shutdown).await,
            Err(error) => tracing::error!(%error, "could not answer DNS on a UDP socket"),
        }
    });
}

/// Answers each datagram on `socket` in turn until `shutdown` (answering waits on
/// nothing but the socket): a plain question from its service's encoded answer
/// ([`prepared`]), any other message as hickory-server would, parsed and answered by
/// [`Answerer`] and encoded by hickory.
async fn answer_datagrams(
    socket: Arc<UdpSocket>,
    answerer: &Answerer,
    shutdown: &CancellationToken,
) {
    let mut buffer = vec![0; UDP_QUERY_BUFFER];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            () = shutdown.cancelled() => return,
        };
        let (len, client) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "could not receive a DNS query");
                continue;
            }
        };
        // Port 0, an unspecified or a broadcast address cannot be answered.
        let broadcast = matches!(client.ip(), std::net::IpAddr::V4(ip) if ip.is_broadcast());
        if client.port() == 0 || client.ip().is_unspecified() || broadcast {
            continue;
        }
        let packet = &buffer[..len];
        let started = Instant::now();
        if let Some((answer, qtype)) = answerer.prepared_answer(packet) {
            let code = match socket.send_to(&answer, client).await {
                Ok(_) => ResponseCode::NoError,
                Err(error) => {
                    tracing::debug!(%error, "could not send a DNS answer");
                    ResponseCode::ServFail
                }
            };
            crate::metrics::dns_query(qtype, code, started.elapsed());
            continue;
        }
        let responder = UdpResponder {
            socket: Arc::clone(&socket),
            client,
        };
        match Request::from_bytes(packet.to_vec(), client, Protocol::Udp) {
            // Never answer an answer: two servers would bounce messages at each other.
            Ok(request) if request.metadata.message_type == MessageType::Response => {}
            Ok(request) => {
                answerer
                    .handle_request::<_, TokioTime>(&request, responder)
                    .await;
            }
            // A header that reads is answered FORMERR; anything shorter is dropped.
            Err(_) => {
                if let Ok(header) = Header::read(&mut BinDecoder::new(packet)) {
                    let mut metadata = Metadata::response_from_request(&header.metadata);
                    metadata.response_code = ResponseCode::FormErr;
                    let answer = encode_header(&header_only(metadata));
                    if let Err(error) = socket.send_to(&answer, client).await {
                        tracing::debug!(%error, "could not send a DNS answer");
                    }
                }
            }
        }
    }
}

/// An answer that is only a header: no question, no records.
fn header_only(metadata: Metadata) -> Header {
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
}

/// `header` as the twelve bytes of a message.
fn encode_header(header: &Header) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    // A header always encodes: twelve bytes, no size limit reached.
    let _ = header.emit(&mut BinEncoder::new(&mut bytes));
    bytes
}

/// Sends each answer to `client` over UDP, encoded as hickory-server encodes one: within
/// the size its EDNS allows (512 bytes without EDNS), truncated (TC) beyond it; SERVFAIL
/// if it cannot be encoded.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let limit = udp_payload_limit(response.edns().map(Edns::max_payload));
        let mut bytes = Vec::with_capacity(usize::from(PLAIN_UDP_PAYLOAD));
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                tracing::error!(%error, "could not encode a DNS answer");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = header_only(metadata);
                bytes = encode_header(&header);
                ResponseInfo::from(header)
            }
        };
        self.socket.send_to(&bytes, self.client).await?;
        Ok(info)
    }
}

/// The largest UDP answer for a client that advertised `advertised` (EDNS), or none: at
/// least 512 bytes, at most [`MAX_UDP_PAYLOAD`]; beyond it the answer is truncated and the
/// client asks again over TCP.
fn udp_payload_limit(advertised: Option<u16>) -> u16 {
    advertised.map_or(PLAIN_UDP_PAYLOAD, |size| {
        size.clamp(PLAIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
    })
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
                let (index, records) = self.service_records(service);
                let targets = records.as_deref().map(|records| records.targets.as_slice());
                self.zone
                    .answer_service(name, qtype, &lookup, targets, index)
            }
            _ => self
                .zone
                .answer_other(name, qtype, &lookup, self.view.index()),
        };
        (reply, qtype)
    }

    /// What DNS keeps of `service` (`None` when it is unknown), with the registry's index:
    /// the instances' URLs are parsed and the plain answers encoded once per change of
    /// the service, not per query.
    fn service_records(&self, service: &str) -> (u64, Option<Arc<ServiceRecords>>) {
        self.view.service_derived(service, |instances| {
            ServiceRecords::new(&self.zone, instances)
        })
    }

    /// The answer to `packet` from the service's encoded records, when it is a plain A or
    /// AAAA question for a service that has them ([`prepared`]); `None` sends it the full
    /// way.
    fn prepared_answer(&self, packet: &[u8]) -> Option<(Vec<u8>, RecordType)> {
        let query = PlainQuery::read(packet)?;
        if !self.zone.contains(&query.name) {
            return None;
        }
        let Lookup::Service {
            service,
            tag: None,
            srv_form: false,
        } = self.zone.lookup(&query.name)
        else {
            return None;
        };
        let records = self.service_records(&service).1?;
        Some((query.answer(&records)?, query.qtype))
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
            edns.set_max_payload(udp_payload_limit(Some(asked.max_payload())));
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
                ResponseInfo::from(header_only(failed))
            }
        };
        crate::metrics::dns_query(qtype, info.response_code, started.elapsed());
        info
    }
}

#[cfg(test)]
mod tests {
    use hickory_server::proto::op::{Message, Query};
    use hickory_server::proto::rr::Name;

    use super::*;
    use crate::testing::{memory_store, register_at};

    /// An answerer over a view of: `sum` at three addresses (two instances sharing one),
    /// `six` at an IPv6 address, `named` at a host name, and `many` at 40 addresses.
    async fn answerer() -> Answerer {
        let store = memory_store().await;
        for (service, id, url) in [
            ("sum", "a", "http://10.0.0.1:8080"),
            ("sum", "b", "http://10.0.0.2:8080"),
            ("sum", "c", "http://10.0.0.3:8080"),
            ("sum", "d", "http://10.0.0.3:9090"),
            ("six", "a", "http://[2001:db8::1]:8080"),
            (
                "named",
                "a",
                "http://sum-0.sum.default.svc.cluster.local:8080",
            ),
        ] {
            register_at(&store, service, id, url).await;
        }
        for k in 0..40 {
            register_at(
                &store,
                "many",
                &format!("m{k}"),
                &format!("http://10.1.0.{k}:80"),
            )
            .await;
        }
        let view = View::load(&store).await.expect("view");
        Answerer {
            zone: Zone::new("consul", "dc1", 0, false).expect("zone"),
            view: Arc::new(view),
        }
    }

    /// A query for `name` and `qtype`, with RD and CD set, and EDNS advertising
    /// `payload` when given.
    fn query(name: &str, qtype: RecordType, payload: Option<u16>) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.metadata.checking_disabled = true;
        message
            .queries
            .push(Query::query(Name::from_ascii(name).expect("name"), qtype));
        if let Some(payload) = payload {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            message.edns = Some(edns);
        }
        message.to_vec().expect("encoded")
    }

    /// The answer the full path gives `packet`, as sent over UDP.
    async fn full_answer(answerer: &Answerer, packet: &[u8]) -> Vec<u8> {
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        let client_addr = client.local_addr().expect("client address");
        let request =
            Request::from_bytes(packet.to_vec(), client_addr, Protocol::Udp).expect("a request");
        let responder = UdpResponder {
            socket: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("server")),
            client: client_addr,
        };
        answerer
            .handle_request::<_, TokioTime>(&request, responder)
            .await;
        let mut answer = vec![0; usize::from(MAX_UDP_PAYLOAD)];
        let len = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut answer))
            .await
            .expect("answered within 10 s")
            .expect("received");
        answer.truncate(len);
        answer
    }

    /// `answer` decoded, its answer records in a fixed order (both paths shuffle them).
    fn decoded(answer: &[u8]) -> Message {
        let mut message = Message::from_vec(answer).expect("an answer hickory reads");
        message
            .answers
            .sort_by_key(|record| record.data.to_string());
        message
    }

    #[tokio::test]
    async fn a_plain_question_is_answered_as_the_full_path_answers_it() {
        let answerer = answerer().await;
        for (name, qtype, payload, records) in [
            ("sum.service.consul.", RecordType::A, None, 3),
            ("SUM.Service.consul.", RecordType::A, Some(1232), 3),
            ("sum.service.dc1.consul.", RecordType::A, Some(100), 3),
            ("six.service.consul.", RecordType::AAAA, Some(4096), 1),
            ("many.service.consul.", RecordType::A, Some(9000), 40),
        ] {
            let packet = query(name, qtype, payload);
            let (prepared, answered_type) = answerer
                .prepared_answer(&packet)
                .unwrap_or_else(|| panic!("{name} {qtype} has a prepared answer"));
            assert_eq!(answered_type, qtype);
            let prepared = decoded(&prepared);
            assert_eq!(prepared.answers.len(), records, "{name}");
            let full = decoded(&full_answer(&answerer, &packet).await);
            assert_eq!(prepared.metadata, full.metadata, "{name} header");
            assert_eq!(prepared.queries, full.queries, "{name} question");
            assert_eq!(prepared.answers, full.answers, "{name} answers");
            assert_eq!(prepared.authorities, full.authorities, "{name} authority");
            assert_eq!(prepared.additionals, full.additionals, "{name} additional");
            assert_eq!(prepared.edns, full.edns, "{name} EDNS");
            // The question as asked, case included.
            assert_eq!(prepared.queries[0].name().to_string(), name);
        }
    }

    #[tokio::test]
    async fn every_other_question_takes_the_full_path() {
        let answerer = answerer().await;
        for (name, qtype, payload) in [
            // Not an address question, a tag, a host name (CNAME), no such service.
            ("_sum._tcp.service.consul.", RecordType::SRV, None),
            ("sum.service.consul.", RecordType::SRV, None),
            ("sum.service.consul.", RecordType::ANY, None),
            ("v2.sum.service.consul.", RecordType::A, None),
            ("named.service.consul.", RecordType::A, None),
            ("nosuch.service.consul.", RecordType::A, None),
            // The name exists but has no AAAA record: NOERROR with the SOA.
            ("sum.service.consul.", RecordType::AAAA, None),
            // Outside the zone, or another datacenter's.
            ("sum.service.example.", RecordType::A, None),
            ("sum.service.dc2.consul.", RecordType::A, None),
            // Too large for 512 bytes (or the client's size): truncated by the full path.
            ("many.service.consul.", RecordType::A, None),
            ("many.service.consul.", RecordType::A, Some(600)),
        ] {
            let packet = query(name, qtype, payload);
            assert!(
                answerer.prepared_answer(&packet).is_none(),
                "{name} {qtype} {payload:?}"
            );
        }
    }
}
