//! How long a client may keep one of our connections waiting, in two deadlines kept
//! apart: a request head must arrive whole within the header read timeout of its first
//! byte (against clients that send it a byte at a time), and a connection on which
//! nothing happens is closed after [`IDLE_TIMEOUT`].
//!
//! hyper's own header read timeout counts from the moment a connection falls idle, so it
//! also closes idle keep-alive connections after that same short time. A client that
//! sends its next request on such a connection just as it is closed loses the request
//! (it sees the connection end with no answer), and a client polling at the timeout's
//! period does that again and again. Here an idle connection is kept for
//! [`IDLE_TIMEOUT`]: longer than clients poll (every 5 to 60 s), and off their round
//! periods. A client that leaves its connection unused for longer sees it closed well
//! before it next sends, and opens a new one.
//!
//! One timer per connection, moved only when it fires: a request costs no timer work.
//! HTTP/2 connections (prior knowledge) are left alone, as hyper leaves them. A connection
//! upgraded to another protocol would be held to the head deadline; no route upgrades.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection with no request in flight and nothing read or written for this long is
/// closed (within one more tick of its timer: at most the header read timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The first bytes of every HTTP/2 connection with prior knowledge.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The requests of one connection, counted by the service that answers them; the reader
/// uses the counts to tell a new request head from the body of a request in flight.
#[derive(Default)]
pub struct Requests {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Requests {
    /// Counts a request as in flight until the returned guard is dropped (when its
    /// answer is ready, or the request is abandoned).
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> bool {
        self.finished.load(Ordering::Relaxed) != self.started()
    }
}

/// A request in flight; see [`Requests::start`].
pub struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which protocol the connection speaks, told by its first bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    /// Fewer bytes than the HTTP/2 preface have come, and they match it so far.
    Undecided {
        matched: usize,
    },
    Http1,
    Http2,
}

/// The request head being read: which request it will be and when its first bytes came.
#[derive(Clone, Copy)]
struct Head {
    request: u64,
    since: Instant,
}

/// A client connection with both deadlines; reads fail with `TimedOut` once one passes,
/// which makes hyper close the connection.
pub struct Deadlines<S> {
    stream: S,
    requests: Arc<Requests>,
    header_read_timeout: Duration,
    protocol: Protocol,
    head: Option<Head>,
    /// Since when nothing has happened, as far as the timer's last firing saw.
    quiet_since: Option<Instant>,
    /// Something was read or written since the timer last fired.
    active: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadlines<S> {
    pub fn new(stream: S, requests: Arc<Requests>, header_read_timeout: Duration) -> Self {
        Self {
            stream,
            requests,
            header_read_timeout,
            protocol: Protocol::Undecided { matched: 0 },
            head: None,
            quiet_since: None,
            active: false,
            timer: None,
        }
    }

    /// How often the timer fires while the connection waits: often enough that a head
    /// is never checked late.
    fn tick(&self) -> Duration {
        self.header_read_timeout.min(IDLE_TIMEOUT)
    }

    fn bytes_read(&mut self, bytes: &[u8]) {
        self.active = true;
        if let Protocol::Undecided { matched } = self.protocol {
            let expected = &HTTP2_PREFACE[matched..];
            let compared = bytes.len().min(expected.len());
            self.protocol = if bytes[..compared] != expected[..compared] {
                Protocol::Http1
            } else if compared == expected.len() {
                Protocol::Http2
            } else {
                Protocol::Undecided {
                    matched: matched + compared,
                }
            };
        }
        if self.protocol == Protocol::Http2 {
            self.head = None;
            return;
        }
        let started = self.requests.started();
        let reading_this_head = self.head.is_some_and(|head| head.request == started);
        if !reading_this_head && !self.requests.in_flight() {
            self.head = Some(Head {
                request: started,
                since: Instant::now(),
            });
        }
    }

    /// Called while the connection waits for bytes: an error once a deadline has passed.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.protocol == Protocol::Http2 {
            return None;
        }
        let tick = self.tick();
        loop {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(tick)));
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let next = match self.next_check(now) {
                Ok(next) => next,
                Err(error) => return Some(error),
            };
            if let Some(timer) = &mut self.timer {
                timer.as_mut().reset(next);
            }
        }
    }

    /// What the timer found when it fired at `now`: when to look again, or the deadline
    /// that has passed.
    fn next_check(&mut self, now: Instant) -> Result<Instant, io::Error> {
        let started = self.requests.started();
        if let Some(head) = self.head.filter(|head| head.request == started) {
            let due = head.since + self.header_read_timeout;
            if now >= due {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request head did not arrive within {:?}",
                        self.header_read_timeout
                    ),
                ));
            }
            return Ok(due);
        }
        if std::mem::take(&mut self.active) || self.requests.in_flight() {
            self.quiet_since = None;
        }
        let quiet_since = *self.quiet_since.get_or_insert(now);
        let idle_until = quiet_since + IDLE_TIMEOUT;
        if now >= idle_until {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the connection was idle for {IDLE_TIMEOUT:?}"),
            ));
        }
        Ok(idle_until.min(now + self.tick()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled_before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[filled_before..];
                if !read.is_empty() {
                    this.bytes_read(read);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.poll_deadlines(cx) {
                Some(error) => Poll::Ready(Err(error)),
                None => Poll::Pending,
            },
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.active |= matches!(written, Poll::Ready(Ok(n)) if n > 0);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.active |= matches!(written, Poll::Ready(Ok(n)) if n > 0);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

    /// A connection's server end, with its deadlines, and the client's end.
    fn connection() -> (Deadlines<DuplexStream>, Arc<Requests>, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let requests = Arc::new(Requests::default());
        let deadlines = Deadlines::new(server, requests.clone(), HEADER_READ_TIMEOUT);
        (deadlines, requests, client)
    }

    /// The client sends `bytes`, and the connection reads them.
    async fn send(
        client: &mut DuplexStream,
        deadlines: &mut Deadlines<DuplexStream>,
        bytes: &[u8],
    ) {
        client.write_all(bytes).await.expect("write");
        let mut buffer = [0; 1024];
        assert!(deadlines.read(&mut buffer).await.expect("read") > 0);
    }

    /// Reads until the read fails; the error and when it came.
    async fn read_until_error(deadlines: &mut Deadlines<DuplexStream>) -> (io::Error, Instant) {
        let mut buffer = [0; 1024];
        loop {
            match deadlines.read(&mut buffer).await {
                Ok(0) => panic!("the client end closed"),
                Ok(_) => {}
                Err(error) => return (error, Instant::now()),
            }
        }
    }

    /// Reads for `wait`; panics if the read fails or ends.
    async fn reads_on_for(deadlines: &mut Deadlines<DuplexStream>, wait: Duration) {
        let mut buffer = [0; 1024];
        let deadline = Instant::now() + wait;
        while let Ok(read) = tokio::time::timeout_at(deadline, deadlines.read(&mut buffer)).await {
            match read {
                Ok(0) => panic!("the client end closed"),
                Ok(_) => {}
                Err(error) => panic!("the connection was cut: {error}"),
            }
        }
    }

    /// Reads on until the connection is cut for being idle; panics if that came sooner
    /// than [`IDLE_TIMEOUT`] after `quiet_since`.
    async fn closed_idle_after(deadlines: &mut Deadlines<DuplexStream>, quiet_since: Instant) {
        let (error, at) = read_until_error(deadlines).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        let idle = at - quiet_since;
        assert!(
            (IDLE_TIMEOUT..=IDLE_TIMEOUT + HEADER_READ_TIMEOUT).contains(&idle),
            "closed after {idle:?} idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_slowly_is_cut_off_at_its_first_bytes_plus_the_timeout() {
        let (mut deadlines, _requests, mut client) = connection();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let first_byte = Instant::now();
        send(
            &mut client,
            &mut deadlines,
            b"GET /v1/services HTTP/1.1\r\n",
        )
        .await;
        let trickle = tokio::spawn(async move {
            for byte in b"Host: registry\r\n" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.write_all(&[*byte]).await.expect("write");
            }
            client
        });
        let (error, at) = read_until_error(&mut deadlines).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert_eq!(at - first_byte, HEADER_READ_TIMEOUT);
        drop(trickle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_outlives_the_header_timeout_until_the_idle_timeout() {
        let (mut deadlines, requests, mut client) = connection();
        send(
            &mut client,
            &mut deadlines,
            b"GET /healthz HTTP/1.1\r\n\r\n",
        )
        .await;
        drop(requests.start());
        deadlines
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        reads_on_for(&mut deadlines, HEADER_READ_TIMEOUT * 3).await;
        // The next request, after a pause three times the header read timeout, is read.
        send(
            &mut client,
            &mut deadlines,
            b"GET /healthz HTTP/1.1\r\n\r\n",
        )
        .await;
        drop(requests.start());
        let answered = Instant::now();
        closed_idle_after(&mut deadlines, answered).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_its_connection_however_long_it_takes() {
        let (mut deadlines, requests, mut client) = connection();
        let long_poll = b"GET /v1/health/service/web?index=7&wait=10m HTTP/1.1\r\n\r\n";
        send(&mut client, &mut deadlines, long_poll).await;
        let in_flight = requests.start();
        reads_on_for(&mut deadlines, IDLE_TIMEOUT * 8).await;
        drop(in_flight);
        let answered = Instant::now();
        closed_idle_after(&mut deadlines, answered).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_while_its_request_is_in_flight_starts_no_head_deadline() {
        let (mut deadlines, requests, mut client) = connection();
        let head = b"PUT /v1/services/s/instances/i HTTP/1.1\r\nContent-Length: 30\r\n\r\n";
        send(&mut client, &mut deadlines, head).await;
        let in_flight = requests.start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        send(
            &mut client,
            &mut deadlines,
            b"{\"url\":\"http://10.0.0.1:8080\"}",
        )
        .await;
        drop(in_flight);
        let answered = Instant::now();
        closed_idle_after(&mut deadlines, answered).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_still_being_written_keeps_its_connection() {
        let (mut deadlines, requests, mut client) = connection();
        send(
            &mut client,
            &mut deadlines,
            b"GET /v1/events HTTP/1.1\r\n\r\n",
        )
        .await;
        // An event stream: the service's answer is ready at once, its body comes later.
        drop(requests.start());
        for _ in 0..20 {
            let mut buffer = [0; 1024];
            tokio::select! {
                read = deadlines.read(&mut buffer) => panic!("the stream was cut: {read:?}"),
                () = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
            deadlines
                .write_all(b": keepalive\n\n")
                .await
                .expect("write");
        }
        let last_write = Instant::now();
        closed_idle_after(&mut deadlines, last_write).await;
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_are_left_alone() {
        let (mut deadlines, _requests, mut client) = connection();
        send(&mut client, &mut deadlines, &HTTP2_PREFACE[..10]).await;
        send(&mut client, &mut deadlines, &HTTP2_PREFACE[10..]).await;
        reads_on_for(&mut deadlines, IDLE_TIMEOUT * 3).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_only_starts_like_the_http2_preface_has_its_deadline() {
        let (mut deadlines, _requests, mut client) = connection();
        send(&mut client, &mut deadlines, b"PRI * HTTP/1.1\r\n").await;
        let (error, _) = read_until_error(&mut deadlines).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }
}
