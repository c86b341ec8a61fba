//! The registry's DNS port faces whatever the network sends it. Broken messages, over
//! UDP and over TCP, must each get the DNS error that fits or no answer at all, never a
//! crash or a listener that stops: after every one, a well-formed query is answered
//! correctly on both transports, and the registry still stops cleanly at the end.
//!
//! A message whose 12-byte header reads but whose rest does not (or that asks no
//! question, or two) is answered FORMERR, with the header's id; one too short for a
//! header has nothing to answer to and is dropped; a well-formed response (QR set) is
//! dropped, so two servers cannot bounce messages at each other; an opcode other than
//! QUERY is answered NOTIMP.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use registry_api::InstanceSpec;

use super::dns_wire::{
    self, ANSWER_WITHIN, FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, TYPE_A, TYPE_SRV, TcpOutcome,
    framed, header, parse, question, rcode_name,
};
use crate::support::{Backend, TestRegistry};

/// How long a broken message is given to draw an answer before it counts as dropped:
/// answers on loopback take a few milliseconds.
const SILENCE: Duration = Duration::from_millis(300);

/// What a broken message must draw.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// No answer: nothing to answer to, or a message that must never be answered.
    Dropped,
    /// An answer with one of these rcodes.
    Error(&'static [u8]),
    /// Either (random bytes may read as anything).
    DroppedOrError(&'static [u8]),
}

/// A message that reads as a header but not as a query.
const MALFORMED: Expect = Expect::Error(&[FORMERR]);

struct Case {
    what: String,
    message: Vec<u8>,
    expect: Expect,
}

fn case(what: impl Into<String>, message: Vec<u8>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        message,
        expect,
    }
}

/// A header with one question for `sum.service.consul`, then whatever `rest` is.
fn with_header(id: u16, counts: [u16; 4], rest: &[u8]) -> Vec<u8> {
    let mut message = header(id, 0x0100, counts);
    message.extend_from_slice(rest);
    message
}

/// Every broken message, each with its own id.
fn cases() -> Vec<Case> {
    let mut cases = vec![
        case("an empty message", Vec::new(), Expect::Dropped),
        case(
            "a header cut at 5 bytes",
            header(0x1001, 0x0100, [1, 0, 0, 0])[..5].to_vec(),
            Expect::Dropped,
        ),
        case(
            "a header cut at 11 bytes",
            header(0x1002, 0x0100, [1, 0, 0, 0])[..11].to_vec(),
            Expect::Dropped,
        ),
        case(
            "a header announcing 65535 of every section and no body",
            header(0x1003, 0x0100, [u16::MAX; 4]),
            MALFORMED,
        ),
        case(
            "a header announcing 65535 answers and no question",
            header(0x1004, 0x0100, [0, u16::MAX, 0, 0]),
            MALFORMED,
        ),
        case(
            "a header announcing 65535 questions followed by one",
            with_header(
                0x1005,
                [u16::MAX, 0, 0, 0],
                &question("sum.service.consul", TYPE_A),
            ),
            MALFORMED,
        ),
        case(
            "a query with no question",
            header(0x1006, 0x0100, [0, 0, 0, 0]),
            MALFORMED,
        ),
        // The name at offset 12 is a pointer to offset 12.
        case(
            "a name that is a compression pointer to itself",
            with_header(0x1007, [1, 0, 0, 0], &[0xc0, 0x0c, 0, 1, 0, 1]),
            MALFORMED,
        ),
        // Offset 12 points to 14, offset 14 back to 12 (and is read as the type too).
        case(
            "two compression pointers pointing at each other",
            with_header(0x1008, [1, 0, 0, 0], &[0xc0, 0x0e, 0xc0, 0x0c, 0, 1]),
            MALFORMED,
        ),
        // `abc` then a pointer back to the label: abc.abc.abc... without end.
        case(
            "a label followed by a pointer back to itself",
            with_header(
                0x1009,
                [1, 0, 0, 0],
                &[3, b'a', b'b', b'c', 0xc0, 0x0c, 0, 1, 0, 1],
            ),
            MALFORMED,
        ),
        case(
            "a pointer past the end of the message",
            with_header(0x100a, [1, 0, 0, 0], &[0xc0, 0xff, 0, 1, 0, 1]),
            MALFORMED,
        ),
        case(
            "a label of 64 bytes",
            with_header(0x100b, [1, 0, 0, 0], &{
                let mut rest = vec![64];
                rest.extend([b'a'; 64]);
                rest.extend(dns_wire::name("service.consul"));
                rest.extend([0, 1, 0, 1]);
                rest
            }),
            MALFORMED,
        ),
        case(
            "a label length with the reserved 0b10 prefix",
            with_header(0x100c, [1, 0, 0, 0], &[0x80, b'a', 0, 0, 1, 0, 1]),
            MALFORMED,
        ),
        case(
            "a name of 5 labels of 63 bytes (over 255)",
            with_header(0x100d, [1, 0, 0, 0], &{
                let long = vec!["a".repeat(63); 5].join(".");
                question(&long, TYPE_A)
            }),
            MALFORMED,
        ),
        case(
            "a question cut inside its type",
            with_header(0x100e, [1, 0, 0, 0], &{
                let mut rest = dns_wire::name("sum.service.consul");
                rest.push(0);
                rest
            }),
            MALFORMED,
        ),
        case(
            "a name cut inside a label",
            with_header(0x100f, [1, 0, 0, 0], &[10, b's', b'u', b'm']),
            MALFORMED,
        ),
        // A well-formed question, then an additional record whose name points to itself.
        case(
            "an additional record whose name is a pointer to itself",
            with_header(0x1010, [1, 0, 0, 1], &{
                let mut rest = question("sum.service.consul", TYPE_A);
                let own_offset = 12 + rest.len();
                rest.extend([0xc0, u8::try_from(own_offset).expect("small offset")]);
                rest.extend([0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
                rest
            }),
            MALFORMED,
        ),
        case(
            "a record length past the end of the message",
            with_header(0x1011, [1, 0, 0, 1], &{
                let mut rest = question("sum.service.consul", TYPE_A);
                rest.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff]);
                rest
            }),
            MALFORMED,
        ),
        // A response must never be answered: that is how two servers loop.
        case(
            "a well-formed response (QR set)",
            {
                let mut message = header(0x1012, 0x8180, [1, 0, 0, 0]);
                message.extend(question("sum.service.consul", TYPE_A));
                message
            },
            Expect::Dropped,
        ),
        case(
            "two questions",
            with_header(0x1013, [2, 0, 0, 0], &{
                let mut rest = question("sum.service.consul", TYPE_A);
                rest.extend(question("_sum._tcp.service.consul", TYPE_SRV));
                rest
            }),
            Expect::Error(&[FORMERR, NOTIMP]),
        ),
    ];
    // Every opcode but QUERY (0): IQUERY, STATUS, unassigned 3, NOTIFY, UPDATE, DSO, and
    // the last unassigned one.
    for (n, opcode) in [1_u16, 2, 3, 4, 5, 6, 15].into_iter().enumerate() {
        let mut message = header(0x1100 + n as u16, (opcode << 11) | 0x0100, [1, 0, 0, 0]);
        message.extend(question("sum.service.consul", TYPE_A));
        cases.push(case(
            format!("opcode {opcode}"),
            message,
            Expect::Error(&[NOTIMP]),
        ));
    }
    // Random bytes from fixed seeds (the same bytes on every run), of lengths from 1 to
    // 512: whatever they happen to read as, any DNS error or silence is fine.
    let mut rng = rand::rngs::StdRng::seed_from_u64(18);
    for n in 0..12 {
        let length = if n < 3 {
            n + 1
        } else {
            rng.random_range(12..=512)
        };
        let mut bytes = vec![0_u8; length];
        rng.fill(&mut bytes[..]);
        cases.push(case(
            format!("{length} random bytes (#{n})"),
            bytes,
            Expect::DroppedOrError(&[FORMERR, 2, NXDOMAIN, NOTIMP, REFUSED]),
        ));
    }
    cases
}

/// Checks what a broken message drew over `transport`: `None` when nothing came back.
fn judge(case: &Case, transport: &str, answer: Option<&[u8]>) {
    let what = &case.what;
    let (allowed, answer) = match (case.expect, answer) {
        (Expect::Dropped | Expect::DroppedOrError(_), None) => return,
        (Expect::Dropped, Some(answer)) => {
            panic!("{what} over {transport} was answered: {answer:02x?}")
        }
        (Expect::Error(allowed), None) => panic!(
            "{what} over {transport} drew no answer within {SILENCE:?}, expected {}",
            names(allowed)
        ),
        (Expect::Error(allowed) | Expect::DroppedOrError(allowed), Some(answer)) => {
            (allowed, answer)
        }
    };
    assert!(
        answer.len() >= 12,
        "{what} over {transport} drew {} bytes, shorter than a header: {answer:02x?}",
        answer.len()
    );
    let flags = u16::from_be_bytes([answer[2], answer[3]]);
    let rcode = (flags & 0x0f) as u8;
    assert!(
        flags & 0x8000 != 0,
        "{what} over {transport} drew a message that is not a response: {answer:02x?}"
    );
    if case.message.len() >= 2 {
        assert_eq!(
            answer[..2],
            case.message[..2],
            "{what} over {transport}: the answer's id is not the message's"
        );
    }
    assert!(
        allowed.contains(&rcode),
        "{what} over {transport} drew {}, expected {}",
        rcode_name(rcode),
        names(allowed)
    );
}

fn names(rcodes: &[u8]) -> String {
    rcodes
        .iter()
        .map(|r| rcode_name(*r))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A correct answer to `sum.service.consul A`, over UDP and over TCP.
async fn still_answers(dns: SocketAddr, after: &str, id: u16) {
    let expected = [Ipv4Addr::LOCALHOST];
    for (transport, answer) in [
        (
            "UDP",
            dns_wire::ask_udp(dns, id, "sum.service.consul", TYPE_A).await,
        ),
        (
            "TCP",
            dns_wire::ask_tcp(dns, id.wrapping_add(1), "sum.service.consul", TYPE_A).await,
        ),
    ] {
        assert_eq!(
            (answer.rcode(), answer.a_records()),
            (NOERROR, expected.to_vec()),
            "after {after}: sum.service.consul A over {transport} answered {answer:?}"
        );
    }
}

/// A registry serving DNS, with one instance of `sum` (at 127.0.0.1) to ask for.
async fn registry_with_sum() -> (TestRegistry, SocketAddr) {
    let registry = TestRegistry::start_with(Backend::Sqlite, |s| {
        s.dns_addr = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await;
    let dns = registry.dns_addr.expect("the registry serves DNS");
    let mut spec = InstanceSpec::new("http://127.0.0.1:9");
    spec.ttl_seconds = Some(0);
    registry
        .api
        .register("sum", "sum-1", &spec)
        .await
        .expect("register sum-1");
    (registry, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_messages_draw_errors_and_the_next_query_is_answered() {
    let (registry, dns) = registry_with_sum().await;
    still_answers(dns, "the start", 1).await;

    let mut observed = Vec::new();
    for (n, case) in cases().iter().enumerate() {
        let udp = dns_wire::udp_exchange(dns, &case.message, SILENCE).await;
        judge(case, "UDP", udp.as_deref());
        // Over TCP the same message in its frame, on a connection of its own: an answer,
        // a closed connection or silence are all fine; what matters is what comes after.
        let tcp = dns_wire::tcp_exchange_raw(dns, &framed(&case.message), SILENCE).await;
        match &tcp {
            TcpOutcome::Answer(answer) => judge(case, "TCP", Some(answer)),
            TcpOutcome::Closed | TcpOutcome::Silent => judge(case, "TCP", None),
        }
        observed.push(format!(
            "{:<58} UDP {:<10} TCP {}",
            case.what,
            udp.as_deref().map_or("-".to_owned(), describe),
            match &tcp {
                TcpOutcome::Answer(answer) => describe(answer),
                TcpOutcome::Closed => "closed".to_owned(),
                TcpOutcome::Silent => "-".to_owned(),
            }
        ));
        still_answers(dns, &case.what, 0x2000 + 2 * n as u16).await;
    }
    println!("what each broken message drew:\n{}", observed.join("\n"));
    registry.stop().await;
}

/// The rcode of an answer, or why it does not read.
fn describe(answer: &[u8]) -> String {
    match parse(answer) {
        Ok(message) => rcode_name(message.rcode()),
        Err(_) if answer.len() >= 4 => format!("{} (unparsed)", rcode_name(answer[3] & 0x0f)),
        Err(error) => error,
    }
}

/// TCP frames that never complete, or are empty, must not take the listener down: the
/// server gives up on them (closes or waits), and other connections are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tcp_frames_do_not_stop_the_tcp_listener() {
    let (registry, dns) = registry_with_sum().await;

    let valid = dns_wire::query(0x3000, "sum.service.consul", TYPE_A);
    let frames: [(&str, Vec<u8>); 4] = [
        ("a frame of length 0", vec![0, 0]),
        ("one byte of a length", vec![0]),
        ("a length of 512 followed by 10 bytes", {
            let mut bytes = vec![2, 0];
            bytes.extend(&valid[..10]);
            bytes
        }),
        ("a length of 65535 followed by a whole query", {
            let mut bytes = vec![0xff, 0xff];
            bytes.extend(&valid);
            bytes
        }),
    ];
    // Each broken frame on a connection that stays open (the server may wait for the
    // rest, or give up), then each closed half-way; other connections are answered.
    let mut open = Vec::new();
    for (n, (what, frame)) in frames.iter().enumerate() {
        let mut stream = tokio::net::TcpStream::connect(dns)
            .await
            .expect("connect TCP");
        tokio::io::AsyncWriteExt::write_all(&mut stream, frame)
            .await
            .expect("write");
        match dns_wire::read_framed(&mut stream, SILENCE).await {
            TcpOutcome::Answer(answer) => panic!("{what} drew an answer: {answer:02x?}"),
            TcpOutcome::Closed | TcpOutcome::Silent => {}
        }
        open.push(stream);
        still_answers(dns, what, 0x3100 + 2 * n as u16).await;
    }
    drop(open);
    still_answers(dns, "the connections closed half-way", 0x3200).await;

    // A broken message and then a valid one on the same connection: if the server keeps
    // the connection, the valid one is answered; if it closed it, a new one is.
    let mut stream = tokio::net::TcpStream::connect(dns)
        .await
        .expect("connect TCP");
    let mut both = framed(&header(0x3300, 0x0100, [u16::MAX; 4]));
    both.extend(framed(&valid));
    tokio::io::AsyncWriteExt::write_all(&mut stream, &both)
        .await
        .expect("write");
    let mut answered_valid = false;
    for _ in 0..2 {
        match dns_wire::read_framed(&mut stream, ANSWER_WITHIN).await {
            TcpOutcome::Answer(answer) => {
                let message = parse(&answer).expect("the answer parses");
                if message.id == 0x3000 {
                    assert_eq!(message.rcode(), NOERROR, "{message:?}");
                    assert_eq!(message.a_records(), [Ipv4Addr::LOCALHOST]);
                    answered_valid = true;
                    break;
                }
                assert_eq!(
                    (message.id, message.rcode()),
                    (0x3300, FORMERR),
                    "{message:?}"
                );
            }
            TcpOutcome::Closed => break,
            TcpOutcome::Silent => panic!("neither an answer nor a close on one connection"),
        }
    }
    println!("a valid query after a broken one on one connection answered: {answered_valid}");
    still_answers(
        dns,
        "a broken and a valid message on one connection",
        0x3400,
    )
    .await;
    registry.stop().await;
}
