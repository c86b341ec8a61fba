//! The change feed of `GET /v1/events` as a stream of typed items.
//!
//! The server speaks `text/event-stream` (server-sent events). Rather than pull in an SSE
//! crate for the dozen lines of framing we need, this module holds a small parser that
//! follows the WHATWG rules the registry relies on (`id:`, `event:`, multi-line `data:`,
//! `:` comments for keepalives, any line ending, messages split anywhere across network
//! chunks) and turns each message into an [`Event`] or a `reset`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use registry_api::{Event, SystemStatus};

use crate::error::ClientError;

/// How long an open stream may stay silent before it is presumed dead: three of the
/// registry's 15 s keepalive periods, so one late keepalive is not fatal.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// The largest line or message the parser accepts. A `reset` carries the whole system
/// status, which can reach megabytes; anything far beyond that is a broken or hostile peer
/// and must not grow our memory without bound.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One item of the change feed.
// An `Event` is much larger than a `Reset`, but items are handled one at a time and never
// stored in bulk, so boxing it would only cost an allocation per event and ergonomics.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// One change of state, in index order.
    Event(Event),
    /// The events after the requested start are no longer kept (or the start is ahead of
    /// the registry, which lost its state): here is the whole state at `index` instead
    /// (filtered by service if the stream is), and live events follow from there.
    Reset {
        /// The index the state was taken at; events that follow are newer.
        index: u64,
        /// The same body as `GET /v1/status`.
        status: SystemStatus,
    },
}

impl StreamItem {
    /// The index this item brings the reader to.
    pub fn index(&self) -> u64 {
        match self {
            Self::Event(event) => event.index,
            Self::Reset { index, .. } => *index,
        }
    }
}

/// The body of the response, as chunks of bytes.
type Body = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

/// The parsed change feed of `GET /v1/events`, from
/// [`RegistryApi::events`](crate::RegistryApi::events) or
/// [`RegistryApi::events_resume`](crate::RegistryApi::events_resume).
///
/// A [`futures::Stream`] of `Result<StreamItem, ClientError>`: read it with
/// `futures::StreamExt::next`. It ends (`None`) when the server closes the connection, and
/// yields one last error before ending if the connection breaks or stays silent longer than
/// the idle timeout (45 s by default; the registry sends a keepalive every 15 s). A
/// [`ClientError::Decode`] for one message does not end it. To carry on after it ends,
/// open a new one with [`RegistryApi::events_resume`](crate::RegistryApi::events_resume)
/// from [`last_event_id`](Self::last_event_id).
///
/// ```no_run
/// # async fn demo(api: registry_client::RegistryApi) -> Result<(), registry_client::ClientError> {
/// use futures::StreamExt;
/// use registry_client::StreamItem;
///
/// let mut events = api.events(None, Some("sum")).await?;
/// while let Some(item) = events.next().await {
///     match item? {
///         StreamItem::Event(event) => println!("#{} {:?}", event.index, event.kind),
///         StreamItem::Reset { index, .. } => println!("resynchronised at {index}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct EventStream {
    body: Body,
    parser: SseParser,
    ready: VecDeque<Result<StreamItem, ClientError>>,
    last_event_id: Option<u64>,
    idle_timeout: Option<Duration>,
    /// Created on first use because a timer needs the runtime, which `poll_next` has.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("last_event_id", &self.last_event_id)
            .field("idle_timeout", &self.idle_timeout)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// Wraps a response body; `start` is the position the stream was opened at, if known.
    pub(crate) fn new(
        body: impl Stream<Item = Result<Bytes, ClientError>> + Send + 'static,
        start: Option<u64>,
    ) -> Self {
        Self {
            body: Box::pin(body),
            parser: SseParser::default(),
            ready: VecDeque::new(),
            last_event_id: start,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            idle: None,
            finished: false,
        }
    }

    /// The index to resume from: that of the last item this stream yielded, else the
    /// position it was opened at (`since` or `Last-Event-ID`), else `None` (a live stream
    /// that has not yielded anything yet).
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    /// Changes how long the stream may stay silent before it fails with
    /// [`ClientError::Stalled`]; `None` waits forever. Set it above the registry's
    /// keepalive period (15 s).
    pub fn set_idle_timeout(&mut self, timeout: Option<Duration>) {
        self.idle_timeout = timeout;
        self.idle = None;
    }

    fn queue(&mut self, message: SseMessage) {
        if let Some(item) = to_item(message) {
            self.ready.push_back(item);
        }
    }

    /// Whether the idle timer ran out; (re)arms it when it is not running.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let Some(timeout) = self.idle_timeout else {
            return Poll::Pending;
        };
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        timer.as_mut().poll(cx).map(|()| timeout)
    }

    fn rearm_idle(&mut self) {
        if let (Some(timer), Some(timeout)) = (self.idle.as_mut(), self.idle_timeout) {
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
    }
}

impl Stream for EventStream {
    type Item = Result<StreamItem, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                if let Ok(item) = &item {
                    this.last_event_id = Some(item.index());
                }
                return Poll::Ready(Some(item));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.rearm_idle();
                    match this.parser.feed(&chunk) {
                        Ok(messages) => messages.into_iter().for_each(|m| this.queue(m)),
                        Err(error) => {
                            this.finished = true;
                            this.ready.push_back(Err(error));
                        }
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finished = true;
                    this.ready.push_back(Err(error));
                }
                // A message not closed by a blank line when the body ends is dropped, as
                // the SSE rules say: it may be cut short.
                Poll::Ready(None) => this.finished = true,
                Poll::Pending => {
                    return match this.poll_idle(cx) {
                        Poll::Ready(silent_for) => {
                            this.finished = true;
                            Poll::Ready(Some(Err(ClientError::Stalled(silent_for))))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Turns a raw message into an item; `None` for event types this client does not know,
/// which a newer registry may send and an older client should skip.
fn to_item(message: SseMessage) -> Option<Result<StreamItem, ClientError>> {
    let id = message
        .id
        .as_deref()
        .and_then(|id| id.trim().parse::<u64>().ok());
    match message.event.as_deref() {
        None | Some("message") => Some(
            serde_json::from_str::<Event>(&message.data)
                .map(StreamItem::Event)
                .map_err(|e| ClientError::Decode(format!("event {}: {e}", describe(id)))),
        ),
        Some("reset") => Some(
            serde_json::from_str::<SystemStatus>(&message.data)
                .map(|status| StreamItem::Reset {
                    index: id.unwrap_or(status.index),
                    status,
                })
                .map_err(|e| ClientError::Decode(format!("reset {}: {e}", describe(id)))),
        ),
        Some(other) => {
            tracing::debug!(
                event = other,
                "skipping an unknown kind of server-sent event"
            );
            None
        }
    }
}

fn describe(id: Option<u64>) -> String {
    id.map_or_else(|| "without id".to_owned(), |id| format!("#{id}"))
}

/// One dispatched server-sent event message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `id:` field of this message, if it had one.
    pub(crate) id: Option<String>,
    /// The `event:` field; `None` means the default type, `message`.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// Incremental `text/event-stream` parser: feed it chunks as they arrive, get back the
/// messages they complete.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the current, unfinished line. Kept as bytes so that a UTF-8 character split
    /// across two chunks is decoded whole.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting this one belongs to it.
    after_cr: bool,
    /// No line completed yet: the first one may start with a byte order mark.
    first_line_done: bool,
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseParser {
    /// Consumes a chunk; returns the messages it completed, in order.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseMessage>, ClientError> {
        let mut messages = Vec::new();
        let mut rest = chunk;
        if self.after_cr {
            if let [b'\n', tail @ ..] = rest {
                rest = tail;
            }
            self.after_cr = false;
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            self.check_size()?;
            let line = std::mem::take(&mut self.line);
            if let Some(message) = self.process_line(&line) {
                messages.push(message);
            }
            let ending = rest[end];
            rest = &rest[end + 1..];
            if ending == b'\r' {
                match rest {
                    [b'\n', tail @ ..] => rest = tail,
                    [] => self.after_cr = true,
                    _ => {}
                }
            }
        }
        self.line.extend_from_slice(rest);
        self.check_size()?;
        Ok(messages)
    }

    fn check_size(&self) -> Result<(), ClientError> {
        if self.line.len() + self.data.len() > MAX_MESSAGE_BYTES {
            return Err(ClientError::Decode(format!(
                "server-sent event larger than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn process_line(&mut self, mut line: &[u8]) -> Option<SseMessage> {
        if !self.first_line_done {
            self.first_line_done = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(b":") {
            // A comment: the registry's `: keepalive`. Its only effect, resetting the idle
            // timer, happened when the bytes arrived.
            return None;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"event" => self.event = Some(value.into_owned()),
            // The SSE rules ignore ids containing NUL.
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            // `retry:` and unknown fields: reconnection timing is the caller's business.
            _ => {}
        }
        None
    }

    /// A blank line ends a message; one without data is not dispatched (SSE rules).
    fn dispatch(&mut self) -> Option<SseMessage> {
        let id = self.id.take();
        let event = self.event.take();
        let mut data = std::mem::take(&mut self.data);
        if data.is_empty() {
            return None;
        }
        data.pop();
        Some(SseMessage { id, event, data })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use futures::StreamExt;
    use registry_api::{EventKind, Instance, Reason, ServiceStatus, Status};

    use super::*;

    fn message(id: Option<&str>, event: Option<&str>, data: &str) -> SseMessage {
        SseMessage {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseMessage> {
        let mut parser = SseParser::default();
        chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk).expect("parses"))
            .collect()
    }

    const STREAM: &str = ": keepalive\n\
        id: 7\n\
        data: {\"a\":1}\n\
        \n\
        : keepalive\n\
        \n\
        event: reset\n\
        id: 9\n\
        data: line one\n\
        data: line two\n\
        \n\
        id: 10\n\
        data:no-space\n\
        data\n\
        \n";

    fn expected() -> Vec<SseMessage> {
        vec![
            message(Some("7"), None, "{\"a\":1}"),
            message(Some("9"), Some("reset"), "line one\nline two"),
            message(Some("10"), None, "no-space\n"),
        ]
    }

    #[test]
    fn parses_ids_types_comments_and_multi_line_data() {
        assert_eq!(parse_chunks(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn any_split_into_two_chunks_gives_the_same_messages() {
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(parse_chunks(&[a, b]), expected(), "split at {at}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_messages() {
        let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        assert_eq!(parse_chunks(&chunks), expected());
    }

    #[test]
    fn crlf_and_cr_line_endings_work_even_when_split() {
        let crlf = STREAM.replace('\n', "\r\n");
        let cr = STREAM.replace('\n', "\r");
        for text in [crlf, cr] {
            let bytes = text.as_bytes();
            assert_eq!(parse_chunks(&[bytes]), expected());
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                assert_eq!(parse_chunks(&[a, b]), expected(), "split at {at}");
            }
        }
    }

    #[test]
    fn utf8_split_across_chunks_is_decoded_whole() {
        let text = "data: caf\u{e9} \u{1F600}\n\n".as_bytes();
        for at in 0..=text.len() {
            let (a, b) = text.split_at(at);
            assert_eq!(
                parse_chunks(&[a, b]),
                vec![message(None, None, "caf\u{e9} \u{1F600}")]
            );
        }
    }

    #[test]
    fn leading_bom_is_ignored_and_only_one_space_is_stripped() {
        let text = b"\xEF\xBB\xBFdata:  two spaces\n\n";
        assert_eq!(
            parse_chunks(&[&text[..2], &text[2..]]),
            vec![message(None, None, " two spaces")]
        );
    }

    #[test]
    fn messages_without_data_or_without_blank_line_are_not_dispatched() {
        assert_eq!(parse_chunks(&[b"id: 3\n\nevent: reset\n\n"]), vec![]);
        // The id of a data-less message does not leak into the next one.
        assert_eq!(
            parse_chunks(&[b"id: 3\n\ndata: x\n\ndata: unfinished\n"]),
            vec![message(None, None, "x")]
        );
    }

    #[test]
    fn oversized_lines_are_refused() {
        let mut parser = SseParser::default();
        let big = vec![b'a'; MAX_MESSAGE_BYTES / 2 + 1];
        assert!(parser.feed(b"data: ").is_ok());
        assert!(parser.feed(&big).is_ok());
        assert!(matches!(parser.feed(&big), Err(ClientError::Decode(_))));
    }

    fn instance(id: &str, status: Status) -> Instance {
        let at = Utc
            .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
            .single()
            .expect("valid");
        Instance {
            id: id.into(),
            service: "sum".into(),
            url: "http://10.0.0.1:4040".into(),
            status,
            tags: vec![],
            metadata: BTreeMap::new(),
            ttl_seconds: 10,
            check: None,
            registered_at: at,
            last_heartbeat_at: at,
            lease_expires_at: Some(at),
            status_changed_at: at,
            last_check: None,
            lease_held: false,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        }
    }

    fn event(index: u64) -> Event {
        Event {
            index,
            at: Utc
                .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
                .single()
                .expect("valid"),
            service: "sum".into(),
            instance: "sum-1".into(),
            kind: EventKind::Status,
            from: Some(Status::Passing),
            to: Some(Status::Critical),
            reason: Reason::LeaseExpired,
            snapshot: instance("sum-1", Status::Critical),
        }
    }

    fn status(index: u64) -> SystemStatus {
        SystemStatus {
            index,
            at: Utc
                .with_ymd_and_hms(2026, 5, 1, 10, 0, 0)
                .single()
                .expect("valid"),
            history_starts_at: None,
            epoch: None,
            self_preservation: Default::default(),
            services: vec![ServiceStatus {
                name: "sum".into(),
                status: Status::Passing,
                instances: vec![instance("sum-1", Status::Passing)],
            }],
            next_cursor: None,
        }
    }

    fn sse(id: u64, event: Option<&str>, data: &impl serde::Serialize) -> String {
        let kind = event.map(|e| format!("event: {e}\n")).unwrap_or_default();
        let data = serde_json::to_string(data).expect("serializes");
        format!("{kind}id: {id}\ndata: {data}\n\n")
    }

    fn stream_of(chunks: Vec<Result<Bytes, ClientError>>, start: Option<u64>) -> EventStream {
        EventStream::new(futures::stream::iter(chunks), start)
    }

    #[tokio::test]
    async fn yields_events_and_resets_and_tracks_the_last_id() {
        let text = format!(
            ": keepalive\n\n{}{}{}",
            sse(12, Some("reset"), &status(12)),
            sse(13, None, &event(13)),
            sse(14, None, &event(14)),
        );
        // Cut into uneven pieces so that messages straddle chunks.
        let chunks = text
            .as_bytes()
            .chunks(37)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut stream = stream_of(chunks, Some(3));
        assert_eq!(stream.last_event_id(), Some(3));
        let first = stream.next().await.expect("item").expect("ok");
        assert_eq!(
            first,
            StreamItem::Reset {
                index: 12,
                status: status(12)
            }
        );
        assert_eq!(stream.last_event_id(), Some(12));
        let second = stream.next().await.expect("item").expect("ok");
        assert_eq!(second, StreamItem::Event(event(13)));
        let third = stream.next().await.expect("item").expect("ok");
        assert_eq!(third.index(), 14);
        assert_eq!(stream.last_event_id(), Some(14));
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_bad_message_is_reported_and_the_stream_goes_on() {
        let text = format!(
            "id: 5\ndata: {{not json\n\nevent: future-kind\ndata: x\n\n{}",
            sse(6, None, &event(6))
        );
        let mut stream = stream_of(vec![Ok(Bytes::from(text))], None);
        assert!(matches!(
            stream.next().await,
            Some(Err(ClientError::Decode(m))) if m.contains("#5")
        ));
        assert_eq!(stream.last_event_id(), None);
        let item = stream.next().await.expect("item").expect("ok");
        assert_eq!(item.index(), 6);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_broken_body_ends_the_stream_after_the_error() {
        let chunks = vec![
            Ok(Bytes::from(sse(1, None, &event(1)))),
            Err(ClientError::Decode("connection reset".into())),
            Ok(Bytes::from(sse(2, None, &event(2)))),
        ];
        let mut stream = stream_of(chunks, None);
        assert!(matches!(stream.next().await, Some(Ok(_))));
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(stream.next().await.is_none());
        assert_eq!(stream.last_event_id(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_stalls_but_keepalives_keep_it_open() {
        // Keepalives every 15 s for a minute, then silence.
        let body = futures::stream::unfold(0u32, |n| async move {
            if n < 4 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                Some((Ok(Bytes::from_static(b": keepalive\n\n")), n + 1))
            } else {
                futures::future::pending::<()>().await;
                None
            }
        });
        let mut stream = EventStream::new(body, Some(1));
        let started = tokio::time::Instant::now();
        match stream.next().await {
            Some(Err(ClientError::Stalled(d))) => assert_eq!(d, DEFAULT_IDLE_TIMEOUT),
            other => panic!("expected a stall, got {other:?}"),
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60) + DEFAULT_IDLE_TIMEOUT
        );
        assert!(stream.next().await.is_none());
    }
}
