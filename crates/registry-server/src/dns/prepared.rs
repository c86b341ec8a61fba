//! Answers encoded once per change of a service, for the question asked most: the A or
//! AAAA records of a service (`sum.service.consul`), over UDP. Parsing each query into
//! hickory's message, building its records and encoding them again cost more than the
//! kernel's work per query (docs/performance.md, DNS); here a query of that one shape is
//! read in place and answered with bytes made when the service last changed, shuffled
//! per query. Every other message takes the full path ([`super::Answerer`]), and what is
//! answered is the zone's rule either way ([`Zone::answer_service`]): this module only
//! encodes.

use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::Rng;
use registry_api::Instance;

use super::udp_payload_limit;
use super::zone::{Lookup, Reply, Target, Zone};

/// Where the question starts in a message: after the 12-byte header.
const QUESTION_AT: usize = 12;
/// A compression pointer to the question's name, the owner of every answer record.
const POINTER_TO_QUESTION: [u8; 2] = [0xC0, QUESTION_AT as u8];
/// An EDNS (OPT) record without options: root name, type, payload size, extended code,
/// version, flags and an empty length.
const OPT_RECORD_LEN: usize = 11;

/// What DNS keeps of a service, made once per change of it (the view holds it): its
/// targets, and the records answering its plain A and AAAA questions, encoded.
pub struct ServiceRecords {
    pub targets: Vec<Target>,
    a: Option<EncodedRecords>,
    aaaa: Option<EncodedRecords>,
}

impl ServiceRecords {
    pub fn new(zone: &Zone, instances: &mut dyn Iterator<Item = &Instance>) -> Self {
        let targets = zone.targets(instances);
        let plain = Lookup::Service {
            service: String::new(),
            tag: None,
            srv_form: false,
        };
        // The owner name is replaced by a pointer to the question when encoded.
        let encode = |qtype| {
            let reply = zone.answer_service(&Name::root(), qtype, &plain, Some(&targets), 0);
            EncodedRecords::of(&reply)
        };
        Self {
            a: encode(RecordType::A),
            aaaa: encode(RecordType::AAAA),
            targets,
        }
    }

    /// The encoded answer to a plain `qtype` question, if it has one (an address answer).
    fn encoded(&self, qtype: RecordType) -> Option<&EncodedRecords> {
        match qtype {
            RecordType::A => self.a.as_ref(),
            RecordType::AAAA => self.aaaa.as_ref(),
            _ => None,
        }
    }
}

/// The answer section of a positive address answer: `count` records of `record_len`
/// bytes each, each owned by the question's name.
struct EncodedRecords {
    count: u16,
    record_len: usize,
    bytes: Vec<u8>,
}

impl EncodedRecords {
    /// `reply` encoded, if it is address records only (A or AAAA, nothing in the other
    /// sections); other answers (CNAMEs, negative answers with the SOA) take the full path.
    fn of(reply: &Reply) -> Option<Self> {
        if reply.code != ResponseCode::NoError
            || reply.answers.is_empty()
            || !reply.additionals.is_empty()
            || !reply.authority.is_empty()
        {
            return None;
        }
        let mut bytes = Vec::new();
        let mut record_len = 0;
        for (k, record) in reply.answers.iter().enumerate() {
            encode_address(record, &mut bytes)?;
            if k == 0 {
                record_len = bytes.len();
            }
            // Records are shuffled whole, so they must be of one length (one type).
            if bytes.len() != record_len * (k + 1) {
                return None;
            }
        }
        Some(Self {
            count: u16::try_from(reply.answers.len()).ok()?,
            record_len,
            bytes,
        })
    }
}

/// Appends `record`, an A or AAAA record, with its owner a pointer to the question.
fn encode_address(record: &Record, out: &mut Vec<u8>) -> Option<()> {
    let address = match &record.data {
        RData::A(a) => IpAddr::V4(a.0),
        RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
        _ => return None,
    };
    out.extend_from_slice(&POINTER_TO_QUESTION);
    out.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
    out.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    match address {
        IpAddr::V4(v4) => {
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.extend_from_slice(&16u16.to_be_bytes());
            out.extend_from_slice(&v6.octets());
        }
    }
    Some(())
}

/// A query of the one shape answered here: a standard query (QR and opcode 0) with one
/// question of class IN for A or AAAA, its name without compression, and at most an EDNS
/// record of version 0 without options. Anything else, however well formed, is `None`.
pub struct PlainQuery<'a> {
    packet: &'a [u8],
    question_end: usize,
    pub name: Name,
    pub qtype: RecordType,
    /// The payload size the client advertised (EDNS), `None` without EDNS.
    advertised_payload: Option<u16>,
}

impl<'a> PlainQuery<'a> {
    pub fn read(packet: &'a [u8]) -> Option<Self> {
        let header = packet.get(..QUESTION_AT)?;
        let [_, _, flags_high, _, 0, 1, 0, 0, 0, 0, 0, additional_count] = *header else {
            return None;
        };
        // QR (0x80) clear, opcode (0x78) QUERY; RD and the others are the client's.
        if flags_high & 0xF8 != 0 || additional_count > 1 {
            return None;
        }
        let mut at = QUESTION_AT;
        loop {
            let len = usize::from(*packet.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            // A compression pointer (or the reserved label types): not this shape.
            if len > 63 {
                return None;
            }
            at += len;
        }
        let name_end = at;
        let qtype = RecordType::from(read_u16(packet, at)?);
        let qclass = DNSClass::from(read_u16(packet, at + 2)?);
        let question_end = at + 4;
        if !matches!(qtype, RecordType::A | RecordType::AAAA) || qclass != DNSClass::IN {
            return None;
        }
        let mut decoder = BinDecoder::new(packet.get(..name_end)?);
        decoder.read_slice(QUESTION_AT).ok()?;
        let name = Name::read(&mut decoder).ok()?;
        let advertised_payload = if additional_count == 1 {
            // Root name, type OPT (41), the payload as class, then extended code 0,
            // version 0, any flags, and no options.
            let opt = packet.get(question_end..)?;
            let [0, 0, 41, size_high, size_low, 0, 0, _, _, 0, 0] = *opt else {
                return None;
            };
            Some(u16::from_be_bytes([size_high, size_low]))
        } else if packet.len() == question_end {
            None
        } else {
            return None;
        };
        Some(Self {
            packet,
            question_end,
            name,
            qtype,
            advertised_payload,
        })
    }

    /// The answer to this query from the service's records: the header answering it, its
    /// question as asked (case included), the records in a random order, and EDNS when it
    /// was asked. `None` when the service has no encoded answer for the type, or when the
    /// answer does not fit the client's size (the full path truncates it).
    pub fn answer(&self, records: &ServiceRecords) -> Option<Vec<u8>> {
        let encoded = records.encoded(self.qtype)?;
        let question = &self.packet[QUESTION_AT..self.question_end];
        let edns_len = if self.advertised_payload.is_some() {
            OPT_RECORD_LEN
        } else {
            0
        };
        let len = QUESTION_AT + question.len() + encoded.bytes.len() + edns_len;
        if len > usize::from(udp_payload_limit(self.advertised_payload)) {
            return None;
        }
        let mut answer = Vec::with_capacity(len);
        let [id_high, id_low, flags_high, flags_low] = [
            self.packet[0],
            self.packet[1],
            self.packet[2],
            self.packet[3],
        ];
        // QR and AA set, the client's RD and CD kept, NOERROR.
        answer.extend_from_slice(&[
            id_high,
            id_low,
            0x80 | 0x04 | (flags_high & 0x01),
            flags_low & 0x10,
        ]);
        answer.extend_from_slice(&1u16.to_be_bytes());
        answer.extend_from_slice(&encoded.count.to_be_bytes());
        answer.extend_from_slice(&0u16.to_be_bytes());
        answer.extend_from_slice(&u16::from(self.advertised_payload.is_some()).to_be_bytes());
        answer.extend_from_slice(question);
        let records_at = answer.len();
        answer.extend_from_slice(&encoded.bytes);
        shuffle_records(&mut answer[records_at..], encoded.record_len);
        if let Some(advertised) = self.advertised_payload {
            let size = udp_payload_limit(Some(advertised));
            answer.extend_from_slice(&[0, 0, 41]);
            answer.extend_from_slice(&size.to_be_bytes());
            answer.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        Some(answer)
    }
}

/// Puts the records of `section` (each `record_len` bytes) in a random order, so that
/// clients spread over the instances.
fn shuffle_records(section: &mut [u8], record_len: usize) {
    let count = section.len() / record_len;
    let mut rng = rand::rng();
    for last in (1..count).rev() {
        let other = rng.random_range(0..=last);
        if other != last {
            let (low, high) = section.split_at_mut(last * record_len);
            low[other * record_len..(other + 1) * record_len]
                .swap_with_slice(&mut high[..record_len]);
        }
    }
}

fn read_u16(packet: &[u8], at: usize) -> Option<u16> {
    let bytes = packet.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sum.service.consul`, type A (1), class IN (1), as on the wire.
    const QUESTION: &[u8] = b"\x03sum\x07service\x06consul\x00\x00\x01\x00\x01";
    /// An EDNS record: root, OPT, payload 1232, code 0, version 0, DO set, no options.
    const EDNS: &[u8] = &[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0];

    fn message(flags: [u8; 2], counts: [u16; 4], rest: &[&[u8]]) -> Vec<u8> {
        let mut message = vec![0xAB, 0xCD, flags[0], flags[1]];
        for count in counts {
            message.extend_from_slice(&count.to_be_bytes());
        }
        for part in rest {
            message.extend_from_slice(part);
        }
        message
    }

    #[test]
    fn only_the_plain_shape_is_read() {
        let read =
            |packet: &[u8]| PlainQuery::read(packet).map(|q| (q.qtype, q.advertised_payload));
        assert_eq!(
            read(&message([1, 0], [1, 0, 0, 0], &[QUESTION])),
            Some((RecordType::A, None))
        );
        assert_eq!(
            read(&message([1, 0], [1, 0, 0, 1], &[QUESTION, EDNS])),
            Some((RecordType::A, Some(1232)))
        );
        let aaaa = b"\x03sum\x07service\x06consul\x00\x00\x1c\x00\x01";
        assert_eq!(
            read(&message([0, 0], [1, 0, 0, 0], &[aaaa])),
            Some((RecordType::AAAA, None))
        );
        let srv = b"\x03sum\x07service\x06consul\x00\x00\x21\x00\x01";
        let chaos = b"\x03sum\x07service\x06consul\x00\x00\x01\x00\x03";
        let pointer = b"\x03sum\xc0\x0c\x00\x01\x00\x01";
        let edns_version_1 = &[0, 0, 41, 0x04, 0xD0, 0, 1, 0, 0, 0, 0];
        let edns_option = &[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 0];
        for (what, packet) in [
            (
                "an answer (QR)",
                message([0x81, 0], [1, 0, 0, 0], &[QUESTION]),
            ),
            (
                "opcode NOTIFY",
                message([0x20, 0], [1, 0, 0, 0], &[QUESTION]),
            ),
            (
                "two questions",
                message([1, 0], [2, 0, 0, 0], &[QUESTION, QUESTION]),
            ),
            ("no question", message([1, 0], [0, 0, 0, 0], &[])),
            (
                "records in Answer",
                message([1, 0], [1, 1, 0, 0], &[QUESTION]),
            ),
            ("SRV", message([1, 0], [1, 0, 0, 0], &[srv])),
            ("class CH", message([1, 0], [1, 0, 0, 0], &[chaos])),
            (
                "a compressed name",
                message([1, 0], [1, 0, 0, 0], &[pointer]),
            ),
            (
                "EDNS version 1",
                message([1, 0], [1, 0, 0, 1], &[QUESTION, edns_version_1]),
            ),
            (
                "an EDNS option",
                message([1, 0], [1, 0, 0, 1], &[QUESTION, edns_option]),
            ),
            (
                "EDNS counted, absent",
                message([1, 0], [1, 0, 0, 1], &[QUESTION]),
            ),
            (
                "bytes after",
                message([1, 0], [1, 0, 0, 0], &[QUESTION, &[0]]),
            ),
            (
                "cut short",
                message([1, 0], [1, 0, 0, 0], &[&QUESTION[..10]]),
            ),
            ("only a header", message([1, 0], [1, 0, 0, 0], &[])),
            ("less than a header", vec![0xAB, 0xCD, 1]),
        ] {
            assert!(read(&packet).is_none(), "{what}");
        }
    }

    #[test]
    fn records_are_shuffled_whole() {
        let records: Vec<[u8; 4]> = (0..10u8).map(|k| [k; 4]).collect();
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut section = records.concat();
            shuffle_records(&mut section, 4);
            let mut shuffled: Vec<&[u8]> = section.chunks(4).collect();
            firsts.insert(shuffled[0][0]);
            shuffled.sort();
            assert_eq!(shuffled, records.iter().map(|r| &r[..]).collect::<Vec<_>>());
        }
        // Each of the ten comes first at some point (missing one: about 10 * 0.9^200).
        assert_eq!(firsts.len(), 10);
    }
}
