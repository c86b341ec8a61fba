//! DNS messages by hand, for the tests of the registry's DNS interface: a query is built
//! byte by byte (so that tests can also build every kind of broken one) and an answer is
//! read by a small parser of the tests' own, which follows compression pointers with a
//! bound. UDP and TCP (RFC 1035 4.2.2: each message behind a 2-byte length) exchanges,
//! each with a timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const TYPE_A: u16 = 1;
pub const TYPE_SRV: u16 = 33;
pub const CLASS_IN: u16 = 1;

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

/// The name of an rcode, for failure messages.
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        NOERROR => "NOERROR".into(),
        FORMERR => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        NXDOMAIN => "NXDOMAIN".into(),
        NOTIMP => "NOTIMP".into(),
        REFUSED => "REFUSED".into(),
        other => format!("rcode {other}"),
    }
}

/// A 12-byte header: `id`, the flags word, then the four counts.
pub fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(12);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    bytes
}

/// `name` in wire form: each label behind its length, then the root's zero.
pub fn name(name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        bytes.push(u8::try_from(label.len()).expect("a label fits its length byte"));
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes
}

/// One question: the name in wire form, its type and class IN.
pub fn question(qname: &str, qtype: u16) -> Vec<u8> {
    let mut bytes = name(qname);
    bytes.extend_from_slice(&qtype.to_be_bytes());
    bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
    bytes
}

/// A standard query (opcode 0, recursion desired as `dig` sends it) for `qname`.
pub fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    let mut bytes = header(id, 0x0100, [1, 0, 0, 0]);
    bytes.extend(question(qname, qtype));
    bytes
}

/// One resource record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RecordData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Other(Vec<u8>),
}

/// A DNS message as read back.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub questions: Vec<(String, u16, u16)>,
    pub answers: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Message {
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The IPv4 addresses of the answer section's A records, sorted.
    pub fn a_records(&self) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = self
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RecordData::A(addr) => Some(addr),
                _ => None,
            })
            .collect();
        addrs.sort();
        addrs
    }
}

/// Reads a whole message; an error says what does not parse.
pub fn parse(bytes: &[u8]) -> Result<Message, String> {
    if bytes.len() < 12 {
        return Err(format!("{} bytes, shorter than a header", bytes.len()));
    }
    let word = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let counts = [word(4), word(6), word(8), word(10)];
    let mut at = 12;
    let mut questions = Vec::new();
    for _ in 0..counts[0] {
        let qname = read_name(bytes, &mut at)?;
        let fixed = bytes.get(at..at + 4).ok_or("question cut short")?;
        questions.push((
            qname,
            u16::from_be_bytes([fixed[0], fixed[1]]),
            u16::from_be_bytes([fixed[2], fixed[3]]),
        ));
        at += 4;
    }
    let mut sections: [Vec<Record>; 3] = Default::default();
    for (section, count) in sections.iter_mut().zip(&counts[1..]) {
        for _ in 0..*count {
            section.push(read_record(bytes, &mut at)?);
        }
    }
    if at != bytes.len() {
        return Err(format!("{} bytes after the last record", bytes.len() - at));
    }
    let [answers, _authority, additional] = sections;
    Ok(Message {
        id: word(0),
        flags: word(2),
        questions,
        answers,
        additional,
    })
}

fn read_record(bytes: &[u8], at: &mut usize) -> Result<Record, String> {
    let name = read_name(bytes, at)?;
    let fixed = bytes.get(*at..*at + 10).ok_or("record cut short")?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let length = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    *at += 10;
    let start = *at;
    let rdata = bytes
        .get(start..start + length)
        .ok_or("record data cut short")?;
    let data = match rtype {
        TYPE_A if length == 4 => {
            RecordData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
        }
        TYPE_A => return Err(format!("an A record of {length} bytes")),
        TYPE_SRV => {
            if length < 7 {
                return Err(format!("an SRV record of {length} bytes"));
            }
            let mut target_at = start + 6;
            let target = read_name(bytes, &mut target_at)?;
            if target_at != start + length {
                return Err("an SRV target that does not end with its record".into());
            }
            RecordData::Srv {
                priority: u16::from_be_bytes([rdata[0], rdata[1]]),
                weight: u16::from_be_bytes([rdata[2], rdata[3]]),
                port: u16::from_be_bytes([rdata[4], rdata[5]]),
                target,
            }
        }
        _ => RecordData::Other(rdata.to_vec()),
    };
    *at = start + length;
    Ok(Record {
        name,
        rtype,
        class,
        ttl,
        data,
    })
}

/// Reads a name at `at` (moving `at` past it), following compression pointers: each must
/// point backwards, and at most 64 are followed, so a loop is an error, not a hang.
fn read_name(bytes: &[u8], at: &mut usize) -> Result<String, String> {
    let mut labels: Vec<String> = Vec::new();
    let mut cursor = *at;
    let mut jumped = false;
    for _ in 0..64 {
        let length = *bytes.get(cursor).ok_or("name cut short")?;
        match length {
            0 => {
                if !jumped {
                    *at = cursor + 1;
                }
                let mut text = labels.join(".");
                text.push('.');
                return Ok(text);
            }
            1..=63 => {
                let label = bytes
                    .get(cursor + 1..cursor + 1 + usize::from(length))
                    .ok_or("label cut short")?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                cursor += 1 + usize::from(length);
            }
            0xc0..=0xff => {
                let low = *bytes.get(cursor + 1).ok_or("pointer cut short")?;
                let target = usize::from(u16::from_be_bytes([length & 0x3f, low]));
                if target >= cursor {
                    return Err(format!("a pointer at {cursor} that does not point back"));
                }
                if !jumped {
                    *at = cursor + 2;
                    jumped = true;
                }
                cursor = target;
            }
            other => return Err(format!("label type {other:#x}")),
        }
    }
    Err("more than 64 labels and pointers in one name".into())
}

/// How long a test waits for an answer that is due.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Sends `packet` from a new socket and answers the first datagram back within `wait`,
/// or `None`.
pub async fn udp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
    socket.send_to(packet, server).await.expect("send UDP");
    let mut buf = vec![0_u8; 65_535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .expect("receive UDP");
    buf.truncate(len);
    Some(buf)
}

/// What became of a message sent over TCP.
#[derive(Debug)]
pub enum TcpOutcome {
    /// A message came back.
    Answer(Vec<u8>),
    /// The server closed (or reset) the connection without one.
    Closed,
    /// Neither within the wait.
    Silent,
}

/// Opens a connection, writes `raw` as is (a caller frames it: see [`framed`]), and
/// reads one framed message back within `wait`.
pub async fn tcp_exchange_raw(server: SocketAddr, raw: &[u8], wait: Duration) -> TcpOutcome {
    let mut stream = TcpStream::connect(server).await.expect("connect TCP");
    stream.write_all(raw).await.expect("write TCP");
    read_framed(&mut stream, wait).await
}

/// Reads one length-prefixed message from `stream` within `wait`.
pub async fn read_framed(stream: &mut TcpStream, wait: Duration) -> TcpOutcome {
    let read = async {
        let mut length = [0_u8; 2];
        if stream.read_exact(&mut length).await.is_err() {
            return TcpOutcome::Closed;
        }
        let mut message = vec![0_u8; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut message).await.is_err() {
            return TcpOutcome::Closed;
        }
        TcpOutcome::Answer(message)
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or(TcpOutcome::Silent)
}

/// `message` behind its 2-byte length, as sent over TCP.
pub fn framed(message: &[u8]) -> Vec<u8> {
    let mut bytes = u16::try_from(message.len())
        .expect("a message fits a TCP frame")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(message);
    bytes
}

/// Sends a query over UDP and parses the answer; fails the test when none comes or it
/// does not answer this query.
pub async fn ask_udp(server: SocketAddr, id: u16, qname: &str, qtype: u16) -> Message {
    let answer = udp_exchange(server, &query(id, qname, qtype), ANSWER_WITHIN)
        .await
        .unwrap_or_else(|| panic!("no UDP answer to {qname} within {ANSWER_WITHIN:?}"));
    answering(&answer, id, qname, qtype)
}

/// Sends a query over TCP and parses the answer; fails the test when none comes or it
/// does not answer this query.
pub async fn ask_tcp(server: SocketAddr, id: u16, qname: &str, qtype: u16) -> Message {
    match tcp_exchange_raw(server, &framed(&query(id, qname, qtype)), ANSWER_WITHIN).await {
        TcpOutcome::Answer(answer) => answering(&answer, id, qname, qtype),
        other => panic!("no TCP answer to {qname}: {other:?}"),
    }
}

/// `answer` parsed, once checked to be a response to the query `id` for `qname`.
fn answering(answer: &[u8], id: u16, qname: &str, qtype: u16) -> Message {
    let message =
        parse(answer).unwrap_or_else(|e| panic!("the answer to {qname} does not parse: {e}"));
    assert!(
        message.is_response() && message.id == id,
        "not a response to query {id} for {qname}: {message:?}"
    );
    assert_eq!(
        message.questions,
        [(format!("{qname}."), qtype, CLASS_IN)],
        "the answer repeats the question"
    );
    message
}
