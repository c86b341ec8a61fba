//! `registry watch`: the change feed followed for as long as the operator wants, through
//! dropped connections and registry restarts, one line per event.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use registry_api::{Backoff, SystemStatus};
use registry_client::{ClientError, RegistryApi, StreamItem};
use serde::Serialize;

use crate::display::format_event;

/// `registry watch`: follows `GET /v1/events` and prints one line per event (one JSON
/// object per line with `json`), and a line when the registry resynchronises the stream.
///
/// Without `since` it starts at the registry's current index (read first, so that a
/// reconnect resumes from a known place even before any event arrived). A dropped or
/// silent connection is resumed with `Last-Event-ID` after a bounded backoff, so nothing
/// is missed or repeated. Returns an error at once if the first connection fails (wrong
/// URL or token), and later when the registry stays unreachable for [`MAX_RECONNECTS`]
/// attempts in a row or refuses the stream; returns `Ok` when `out` is closed
/// (`registry watch | head` ends quietly).
pub async fn watch(
    api: &RegistryApi,
    service: Option<String>,
    since: Option<u64>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let result = follow(
        api,
        service.as_deref(),
        since,
        json,
        out,
        &RECONNECT_BACKOFF,
    )
    .await;
    match result {
        Err(error) if is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

/// Consecutive failed (re)connections after which `watch` gives up: with the backoff
/// below, about a minute of an unreachable registry, more than a rolling restart takes.
pub const MAX_RECONNECTS: u32 = 10;

/// A connection that lasted this long counts as healthy even if it carried no event, so a
/// quiet stream cut now and then by a proxy never exhausts [`MAX_RECONNECTS`].
const HEALTHY_CONNECTION: Duration = Duration::from_secs(30);

/// Delays between reconnections: doubling from half a second up to 10 s, without jitter
/// (one operator at a terminal does not retry in step with anybody).
const RECONNECT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(10));

async fn follow(
    api: &RegistryApi,
    service: Option<&str>,
    since: Option<u64>,
    json: bool,
    out: &mut (dyn Write + Send),
    backoff: &Backoff,
) -> anyhow::Result<()> {
    let mut position = match since {
        Some(index) => index,
        None => {
            api.services()
                .await
                .with_context(|| format!("could not reach the registry at {}", api.base_url()))?
                .index
        }
    };
    let mut failures = 0u32;
    let mut first = true;
    loop {
        let opened = if first {
            api.events(Some(position), service).await
        } else {
            api.events_resume(position, service).await
        };
        let cause = match opened {
            Ok(mut stream) => {
                let connected_at = tokio::time::Instant::now();
                let mut received = false;
                let cause = loop {
                    match stream.next().await {
                        Some(Ok(item)) => {
                            received = true;
                            write_line(out, &item_line(&item, json)?)?;
                        }
                        // One unreadable message (a newer registry?) is reported, not
                        // fatal: the stream itself is intact.
                        Some(Err(ClientError::Decode(why))) => {
                            notice(out, json, &format!("skipped a message: {why}"))?;
                        }
                        Some(Err(error)) => break Some(error),
                        None => break None,
                    }
                };
                position = stream.last_event_id().unwrap_or(position);
                if received || connected_at.elapsed() >= HEALTHY_CONNECTION {
                    failures = 0;
                }
                cause
            }
            // A first connection that fails is a wrong URL, token or parameter far more
            // often than bad luck: say so at once instead of retrying for a minute.
            Err(error) if first => {
                return Err(anyhow::Error::new(error)).with_context(|| {
                    format!("could not open the event stream of {}", api.base_url())
                });
            }
            Err(error) => Some(error),
        };
        first = false;
        let cause = match cause {
            Some(error) if !error.is_transient() => {
                return Err(anyhow::Error::new(error)).with_context(|| {
                    format!(
                        "the registry at {} refused the event stream",
                        api.base_url()
                    )
                });
            }
            other => other,
        };
        failures += 1;
        let why = cause.map_or_else(
            || "the registry closed the stream".to_owned(),
            |error| with_causes(&error),
        );
        if failures > MAX_RECONNECTS {
            anyhow::bail!(
                "gave up after {MAX_RECONNECTS} attempts to reach the registry at {}: {why}",
                api.base_url()
            );
        }
        let delay = backoff.delay(failures);
        notice(
            out,
            json,
            &format!(
                "{why}; resuming after #{position} in {}",
                registry_api::format_duration(delay)
            ),
        )?;
        tokio::time::sleep(delay).await;
    }
}

/// The text (or JSON) line of one stream item, without the newline.
fn item_line(item: &StreamItem, json: bool) -> anyhow::Result<String> {
    Ok(match (item, json) {
        (StreamItem::Event(event), false) => format_event(event),
        (StreamItem::Event(event), true) => serde_json::to_string(event)?,
        (StreamItem::Reset { index, status }, false) => format_reset(*index, status),
        (StreamItem::Reset { index, status }, true) => reset_json(*index, status)?,
    })
}

fn write_line(out: &mut (dyn Write + Send), line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    // A watch is read as it happens, whatever `out` buffers.
    out.flush()
}

/// Connection notices go with the events in text mode; in JSON mode they go to stderr, so
/// that stdout stays one JSON object per line for `jq` and friends.
fn notice(out: &mut (dyn Write + Send), json: bool, message: &str) -> io::Result<()> {
    if json {
        eprintln!("registry watch: {message}");
        Ok(())
    } else {
        write_line(out, &format!("-- {message}"))
    }
}

/// An error with its causes (`error sending request: ...: Connection refused`): the top
/// line of a transport error alone does not say what went wrong.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

/// The line printed when the stream starts over from a snapshot instead of replaying.
fn format_reset(index: u64, status: &SystemStatus) -> String {
    let instances: usize = status.services.iter().map(|s| s.instances.len()).sum();
    format!(
        "-- resynchronised at index {index}: the events after the requested start are no \
         longer available; {} service(s), {instances} instance(s) as of now",
        status.services.len()
    )
}

/// The JSON line of a reset: `{"reset":{"index":N,"status":{...}}}`, told apart from event
/// lines by its single `reset` key.
fn reset_json(index: u64, status: &SystemStatus) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Reset<'a> {
        index: u64,
        status: &'a SystemStatus,
    }
    #[derive(Serialize)]
    struct Line<'a> {
        reset: Reset<'a>,
    }
    Ok(serde_json::to_string(&Line {
        reset: Reset { index, status },
    })?)
}

#[cfg(test)]
mod tests {
    use registry_api::{Event, EventKind, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::fixtures::{event, system};

    #[test]
    fn json_lines_round_trip() {
        let change = event(43, EventKind::Status, None, None);
        let line = item_line(&StreamItem::Event(change.clone()), true).expect("json");
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Event>(&line).expect("event"), change);

        let reset = StreamItem::Reset {
            index: 42,
            status: system(),
        };
        let line = item_line(&reset, true).expect("json");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["reset"]["index"], 42);
        let status: SystemStatus =
            serde_json::from_value(value["reset"]["status"].clone()).expect("status");
        assert_eq!(status, system());
        assert_eq!(
            item_line(&reset, false).expect("text"),
            "-- resynchronised at index 42: the events after the requested start are no \
             longer available; 2 service(s), 3 instance(s) as of now"
        );
    }

    #[test]
    fn reconnections_back_off_from_half_a_second_to_ten() {
        let delays: Vec<u128> = (1..=8)
            .map(|n| RECONNECT_BACKOFF.delay(n).as_millis())
            .collect();
        assert_eq!(
            delays,
            [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(RECONNECT_BACKOFF.delay(u32::MAX), RECONNECT_BACKOFF.max());
    }

    // A canned registry: answers each connection with the next reply, records requests.
    async fn canned(replies: Vec<String>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&raw).to_ascii_lowercase());
                socket.write_all(reply.as_bytes()).await.expect("write");
                let _ = socket.shutdown().await;
            }
            seen
        });
        (base, handle)
    }

    fn http(status: &str, content_type: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn sse(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
        )
    }

    #[tokio::test]
    async fn watch_resumes_with_last_event_id_and_stops_on_a_refusal() {
        let status_change = event(
            6,
            EventKind::Status,
            Some(Status::Passing),
            Some(Status::Critical),
        );
        let replies = vec![
            http("200 OK", "application/json", r#"{"index":5,"services":[]}"#),
            sse(&format!(
                ": keepalive\n\nid: 6\ndata: {}\n\n",
                serde_json::to_string(&status_change).expect("json")
            )),
            sse(&format!(
                "event: reset\nid: 40\ndata: {}\n\n",
                serde_json::to_string(&system()).expect("json")
            )),
            http(
                "401 Unauthorized",
                "application/json",
                r#"{"error":{"code":"unauthorized","message":"missing or wrong token"}}"#,
            ),
        ];
        let (base, server) = canned(replies).await;
        let api = RegistryApi::new(&base).expect("api");
        let mut out = Vec::new();
        let fast = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let error = follow(&api, Some("sum"), None, false, &mut out, &fast)
            .await
            .expect_err("the 401 ends the watch");
        assert!(
            format!("{error:#}").contains("missing or wrong token"),
            "{error:#}"
        );

        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], format_event(&status_change));
        assert!(lines[1].starts_with("-- the registry closed the stream; resuming after #6"));
        assert!(lines[2].starts_with("-- resynchronised at index 40"));
        assert!(lines[3].starts_with("-- the registry closed the stream; resuming after #40"));

        let seen = server.await.expect("server");
        assert!(seen[0].starts_with("get /v1/services "));
        assert!(seen[1].starts_with("get /v1/events?since=5&service=sum "));
        assert!(seen[2].starts_with("get /v1/events?service=sum "));
        assert!(seen[2].contains("last-event-id: 6\r\n"));
        assert!(seen[3].contains("last-event-id: 40\r\n"));
    }

    #[tokio::test]
    async fn watch_gives_up_when_the_registry_stays_away() {
        let first = event(8, EventKind::Status, None, None);
        // One stream with one event, then the canned registry is gone for good.
        let (base, server) = canned(vec![sse(&format!(
            "id: 8\ndata: {}\n\n",
            serde_json::to_string(&first).expect("json")
        ))])
        .await;
        let api = RegistryApi::new(&base).expect("api");
        let fast = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let mut out = Vec::new();
        let error = follow(&api, None, Some(7), false, &mut out, &fast)
            .await
            .expect_err("gives up");
        assert!(
            error.to_string().starts_with("gave up after 10 attempts"),
            "{error}"
        );
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + MAX_RECONNECTS as usize, "{text}");
        assert_eq!(lines[0], format_event(&first));
        assert!(
            lines[1..].iter().all(|l| l.contains("resuming after #8")),
            "{text}"
        );
        let seen = server.await.expect("server");
        assert!(seen[0].starts_with("get /v1/events?since=7 "));
    }

    #[tokio::test]
    async fn watch_fails_at_once_when_the_first_connection_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let api = RegistryApi::new(&format!("http://{addr}")).expect("api");
        let mut out = Vec::new();
        let error = watch(&api, None, Some(7), false, &mut out)
            .await
            .expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("could not open the event stream"),
            "{error}"
        );
        assert!(out.is_empty());
        let error = watch(&api, None, None, true, &mut out)
            .await
            .expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("could not reach the registry"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_closed_output_ends_the_watch_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let change = event(6, EventKind::Status, None, None);
        let (base, _server) = canned(vec![sse(&format!(
            "id: 6\ndata: {}\n\n",
            serde_json::to_string(&change).expect("json")
        ))])
        .await;
        let api = RegistryApi::new(&base).expect("api");
        watch(&api, None, Some(5), false, &mut Closed)
            .await
            .expect("a broken pipe is the reader leaving, not an error");
    }
}
