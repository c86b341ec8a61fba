//! What a DNS question asks and what the registry answers, as Consul's DNS interface
//! does (docs/dns.md): the names of the zone, and the records made from a service's
//! instances. Pure: no sockets and no locks, so every rule is tested on its own.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use registry_api::{Instance, Status};

/// The zone the registry answers for, and how it answers.
#[derive(Debug, Clone)]
pub struct Zone {
    /// `<domain>.`, e.g. `consul.`.
    origin: Name,
    /// `REGISTRY_DATACENTER`, the one datacenter whose names exist here.
    datacenter: String,
    ttl: u32,
    only_passing: bool,
}

/// What a name in the zone stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The zone's own name.
    Apex,
    /// `[<tag>.]<service>.service[.<dc>]`, or in RFC 2782's form
    /// `_<service>._<tag or tcp>.service[.<dc>]` (`srv_form`).
    Service {
        service: String,
        tag: Option<String>,
        srv_form: bool,
    },
    /// `<hex>.addr[.<dc>]`: the address an SRV answer names as its target.
    Address(IpAddr),
    /// Anything else inside the zone.
    Nothing,
}

/// An answer before it is encoded: its code and its sections. The zone's SOA goes in
/// Authority whenever the answer has no records (a negative answer), so resolvers know
/// how long to remember it.
#[derive(Debug, Default)]
pub struct Reply {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    pub authority: Vec<Record>,
}

impl Zone {
    /// The zone `domain` (`consul`) of datacenter `datacenter`, answering with `ttl`
    /// seconds and, if `only_passing`, without warning instances.
    pub fn new(
        domain: &str,
        datacenter: &str,
        ttl: u32,
        only_passing: bool,
    ) -> Result<Self, String> {
        Ok(Self {
            origin: Self::check_domain(domain)?,
            datacenter: datacenter.to_ascii_lowercase(),
            ttl,
            only_passing,
        })
    }

    /// `REGISTRY_DNS_DOMAIN` as a name, or why it cannot be one.
    pub fn check_domain(domain: &str) -> Result<Name, String> {
        let trimmed = domain.trim_end_matches('.');
        let valid = !trimmed.is_empty()
            && trimmed.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        let name = valid
            .then(|| Name::from_ascii(format!("{}.", trimmed.to_ascii_lowercase())).ok())
            .flatten();
        name.ok_or_else(|| {
            format!("REGISTRY_DNS_DOMAIN '{domain}' is not a domain name like consul or registry.internal")
        })
    }

    /// Whether `name` is in the zone (otherwise the registry refuses to answer: it is no
    /// recursive resolver).
    pub fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    /// What `name`, a name in the zone, stands for.
    pub fn lookup(&self, name: &Name) -> Lookup {
        let own =
            usize::from(name.num_labels()).saturating_sub(usize::from(self.origin.num_labels()));
        let labels: Vec<String> = name
            .iter()
            .take(own)
            .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
            .collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        if labels.is_empty() {
            return Lookup::Apex;
        }
        // The datacenter label is optional; another datacenter's names do not exist here.
        let (kind_at, datacenter) = match labels.as_slice() {
            [.., "service" | "addr"] => (labels.len() - 1, None),
            [.., "service" | "addr", dc] => (labels.len() - 2, Some(*dc)),
            _ => return Lookup::Nothing,
        };
        if datacenter.is_some_and(|dc| dc != self.datacenter) {
            return Lookup::Nothing;
        }
        let prefix = &labels[..kind_at];
        match (labels[kind_at], prefix) {
            ("addr", [hex]) => address_from_hex(hex).map_or(Lookup::Nothing, Lookup::Address),
            ("service", [service, protocol_or_tag])
                if service.starts_with('_') && protocol_or_tag.starts_with('_') =>
            {
                let tag = &protocol_or_tag[1..];
                Lookup::Service {
                    service: service[1..].to_owned(),
                    // `_tcp` is RFC 2782's protocol, not a tag.
                    tag: (tag != "tcp").then(|| tag.to_owned()),
                    srv_form: true,
                }
            }
            ("service", [service]) => Lookup::Service {
                service: (*service).to_owned(),
                tag: None,
                srv_form: false,
            },
            ("service", [tag, service]) => Lookup::Service {
                service: (*service).to_owned(),
                tag: Some((*tag).to_owned()),
                srv_form: false,
            },
            _ => Lookup::Nothing,
        }
    }

    /// What DNS needs of a service's instances, parsed once per change of the service
    /// (the view keeps it): the instances answered, passing or warning (unless only
    /// passing ones are), whose URL DNS can express.
    pub fn targets(&self, instances: &mut dyn Iterator<Item = &Instance>) -> Vec<Target> {
        instances
            .filter(|i| match i.status {
                Status::Passing => true,
                Status::Warning => !self.only_passing,
                Status::Critical | Status::Maintenance => false,
            })
            .filter_map(|i| Target::of(i, self))
            .collect()
    }

    /// The answer for `qtype` at `name`, a service lookup, from the service's
    /// [`Self::targets`] (`None` when the service is unknown). `index` is the registry's
    /// index, the SOA's serial.
    pub fn answer_service(
        &self,
        name: &Name,
        qtype: RecordType,
        service: &Lookup,
        targets: Option<&[Target]>,
        index: u64,
    ) -> Reply {
        let Lookup::Service { tag, srv_form, .. } = service else {
            return self.negative(ResponseCode::NXDomain, index);
        };
        let targets: Vec<&Target> = targets
            .unwrap_or_default()
            .iter()
            .filter(|target| {
                tag.as_deref()
                    .is_none_or(|tag| target.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
            })
            .collect();
        if targets.is_empty() {
            return self.negative(ResponseCode::NXDomain, index);
        }
        let mut reply = Reply::default();
        if qtype == RecordType::SRV || (*srv_form && qtype == RecordType::ANY) {
            let mut seen = BTreeSet::new();
            for target in &targets {
                if !seen.insert((&target.srv_name, target.port)) {
                    continue;
                }
                reply.answers.push(self.record(
                    name,
                    RData::SRV(SRV::new(1, 1, target.port, target.srv_name.clone())),
                ));
                if let Host::Ip(ip) = target.host {
                    reply
                        .additionals
                        .push(self.record(&target.srv_name, address_data(ip)));
                }
            }
        } else {
            let mut seen = BTreeSet::new();
            for target in &targets {
                if !seen.insert(target.host.clone()) {
                    continue;
                }
                if let Some(data) = self.host_data(&target.host, qtype) {
                    reply.answers.push(self.record(name, data));
                }
            }
        }
        if reply.answers.is_empty() {
            return self.negative(ResponseCode::NoError, index);
        }
        // Spread clients over the instances: each answer in another order.
        let mut rng = rand::rng();
        reply.answers.shuffle(&mut rng);
        reply
    }

    /// The answer at a name that is not a service: the apex, an SRV target, or nothing.
    pub fn answer_other(
        &self,
        name: &Name,
        qtype: RecordType,
        lookup: &Lookup,
        index: u64,
    ) -> Reply {
        let data = match lookup {
            Lookup::Apex if matches!(qtype, RecordType::SOA | RecordType::ANY) => {
                Some(RData::SOA(self.soa_data(index)))
            }
            Lookup::Apex => None,
            Lookup::Address(ip) => self.host_data(&Host::Ip(*ip), qtype),
            Lookup::Service { .. } | Lookup::Nothing => {
                return self.negative(ResponseCode::NXDomain, index);
            }
        };
        match data {
            Some(data) => Reply {
                answers: vec![self.record(name, data)],
                ..Reply::default()
            },
            None => self.negative(ResponseCode::NoError, index),
        }
    }

    /// A record for `qtype` naming `host`: its address when the type fits, a CNAME to a
    /// host name whatever the type.
    fn host_data(&self, host: &Host, qtype: RecordType) -> Option<RData> {
        match host {
            Host::Ip(ip @ IpAddr::V4(_)) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                Some(address_data(*ip))
            }
            Host::Ip(ip @ IpAddr::V6(_)) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                Some(address_data(*ip))
            }
            Host::Ip(_) => None,
            Host::Name(name) => Some(RData::CNAME(CNAME(name.clone()))),
        }
    }

    /// The SRV target for `host`: `<hex>.addr.<dc>.<domain>.` for an address (its A or
    /// AAAA record goes in Additional and resolves alone), the name itself otherwise.
    fn target_name(&self, host: &Host) -> Option<Name> {
        match host {
            Host::Ip(ip) => {
                let hex: String = match ip {
                    IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
                    IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
                };
                Name::from_ascii(format!("{hex}.addr.{}.{}", self.datacenter, self.origin)).ok()
            }
            Host::Name(name) => Some(name.clone()),
        }
    }

    fn record(&self, name: &Name, data: RData) -> Record {
        Record::from_rdata(name.clone(), self.ttl, data)
    }

    fn soa_data(&self, index: u64) -> SOA {
        let within = |label: &str| {
            Name::from_ascii(format!("{label}.{}", self.origin))
                .unwrap_or_else(|_| self.origin.clone())
        };
        // The serial follows the registry's index (modulo 2^32, as serials are compared).
        SOA::new(
            within("ns"),
            within("hostmaster"),
            (index & u64::from(u32::MAX)) as u32,
            3600,
            600,
            86_400,
            self.ttl,
        )
    }

    /// A negative answer: no records, the zone's SOA in Authority.
    fn negative(&self, code: ResponseCode, index: u64) -> Reply {
        Reply {
            code,
            authority: vec![Record::from_rdata(
                self.origin.clone(),
                self.ttl,
                RData::SOA(self.soa_data(index)),
            )],
            ..Reply::default()
        }
    }
}

/// Where an instance DNS answers is reached, from its URL, and its tags.
#[derive(Debug)]
pub struct Target {
    host: Host,
    port: u16,
    /// The SRV answer's target: `<hex>.addr.<dc>.<domain>.` or the host name.
    srv_name: Name,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    Name(Name),
}

impl Target {
    /// The host and port of an instance's URL (the scheme's port when it names none);
    /// `None` for a URL DNS cannot express.
    fn of(instance: &Instance, zone: &Zone) -> Option<Self> {
        let url = url::Url::parse(&instance.url).ok()?;
        let port = url.port_or_known_default()?;
        let host = match url.host()? {
            url::Host::Ipv4(ip) => Host::Ip(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Host::Ip(IpAddr::V6(ip)),
            url::Host::Domain(domain) => {
                let domain = domain.trim_end_matches('.').to_ascii_lowercase();
                Host::Name(Name::from_ascii(format!("{domain}.")).ok()?)
            }
        };
        Some(Self {
            srv_name: zone.target_name(&host)?,
            host,
            port,
            tags: instance.tags.clone(),
        })
    }
}

fn address_data(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// `7f000001` -> 127.0.0.1; 32 digits -> an IPv6 address.
fn address_from_hex(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn zone() -> Zone {
        Zone::new("consul", "dc1", 0, false).expect("zone")
    }

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name")
    }

    fn instance(id: &str, url: &str, status: Status, tags: &[&str]) -> Instance {
        let now = chrono::Utc::now();
        Instance {
            id: id.to_owned(),
            service: "sum".to_owned(),
            url: url.to_owned(),
            status,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            metadata: BTreeMap::new(),
            ttl_seconds: 10,
            check: None,
            registered_at: now,
            last_heartbeat_at: now,
            lease_expires_at: None,
            status_changed_at: now,
            last_check: None,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
            lease_held: false,
        }
    }

    fn service(service: &str, tag: Option<&str>, srv_form: bool) -> Lookup {
        Lookup::Service {
            service: service.to_owned(),
            tag: tag.map(str::to_owned),
            srv_form,
        }
    }

    #[test]
    fn names_are_read_as_consul_reads_them() {
        let zone = zone();
        for (text, expected) in [
            ("consul.", Lookup::Apex),
            ("sum.service.consul.", service("sum", None, false)),
            ("SUM.Service.CONSUL.", service("sum", None, false)),
            ("sum.service.dc1.consul.", service("sum", None, false)),
            ("v2.sum.service.consul.", service("sum", Some("v2"), false)),
            ("_sum._tcp.service.consul.", service("sum", None, true)),
            (
                "_sum._v2.service.dc1.consul.",
                service("sum", Some("v2"), true),
            ),
            ("sum.service.dc2.consul.", Lookup::Nothing),
            ("a.b.sum.service.consul.", Lookup::Nothing),
            ("node1.node.consul.", Lookup::Nothing),
            ("service.consul.", Lookup::Nothing),
            (
                "7f000001.addr.dc1.consul.",
                Lookup::Address("127.0.0.1".parse().expect("ip")),
            ),
            (
                "20010db8000000000000000000000001.addr.dc1.consul.",
                Lookup::Address("2001:db8::1".parse().expect("ip")),
            ),
            ("7f0001.addr.dc1.consul.", Lookup::Nothing),
            ("zzzzzzzz.addr.dc1.consul.", Lookup::Nothing),
        ] {
            assert_eq!(zone.lookup(&name(text)), expected, "{text}");
        }
        assert!(zone.contains(&name("sum.service.consul.")));
        assert!(!zone.contains(&name("example.com.")));
        assert!(!zone.contains(&name("notconsul.")));
    }

    #[test]
    fn a_domain_must_be_a_name() {
        assert!(Zone::check_domain("registry.internal").is_ok());
        assert!(Zone::check_domain("consul.").is_ok());
        for bad in ["", ".", "a..b", "has space", "under_score", &"x".repeat(64)] {
            assert!(Zone::check_domain(bad).is_err(), "{bad:?}");
        }
    }

    fn answer(zone: &Zone, text: &str, qtype: RecordType, instances: &[Instance]) -> Reply {
        let query = name(text);
        let lookup = zone.lookup(&query);
        let targets = zone.targets(&mut instances.iter());
        zone.answer_service(&query, qtype, &lookup, Some(&targets), 7)
    }

    #[test]
    fn a_records_are_the_healthy_instances_only() {
        let instances = [
            instance("a", "http://10.0.0.1:8080", Status::Passing, &["v2"]),
            instance("b", "http://10.0.0.2:8080", Status::Warning, &[]),
            instance("c", "http://10.0.0.3:8080", Status::Critical, &["v2"]),
            instance("d", "http://10.0.0.4:8080", Status::Maintenance, &[]),
            instance("e", "http://10.0.0.1:9090", Status::Passing, &[]),
        ];
        let addresses = |reply: &Reply| {
            let mut found: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
            found.sort();
            found
        };
        let reply = answer(&zone(), "sum.service.consul.", RecordType::A, &instances);
        assert_eq!(reply.code, ResponseCode::NoError);
        // One record per address: two instances on one host are one A record.
        assert_eq!(addresses(&reply), ["10.0.0.1", "10.0.0.2"]);
        let only_passing = Zone::new("consul", "dc1", 0, true).expect("zone");
        let reply = answer(
            &only_passing,
            "sum.service.consul.",
            RecordType::A,
            &instances,
        );
        assert_eq!(addresses(&reply), ["10.0.0.1"]);
        let reply = answer(&zone(), "V2.sum.service.consul.", RecordType::A, &instances);
        assert_eq!(addresses(&reply), ["10.0.0.1"]);
        // A tag nobody healthy has, or a service with nobody healthy: no such name.
        let reply = answer(&zone(), "v3.sum.service.consul.", RecordType::A, &instances);
        assert_eq!(reply.code, ResponseCode::NXDomain);
        assert_eq!(reply.authority.len(), 1);
        let reply = answer(
            &zone(),
            "sum.service.consul.",
            RecordType::A,
            &instances[2..4],
        );
        assert_eq!(reply.code, ResponseCode::NXDomain);
        // The name exists, but has no AAAA record: NOERROR with the SOA.
        let reply = answer(&zone(), "sum.service.consul.", RecordType::AAAA, &instances);
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.authority[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn srv_answers_name_addr_targets_with_their_address_in_additional() {
        let instances = [
            instance("a", "http://10.0.0.1:8080", Status::Passing, &[]),
            instance("b", "http://[2001:db8::1]:9000", Status::Passing, &[]),
            instance(
                "c",
                "https://sum-0.sum.default.svc.cluster.local",
                Status::Passing,
                &[],
            ),
        ];
        let reply = answer(
            &zone(),
            "_sum._tcp.service.consul.",
            RecordType::SRV,
            &instances,
        );
        let mut srv: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
        srv.sort();
        assert_eq!(
            srv,
            [
                "1 1 443 sum-0.sum.default.svc.cluster.local.",
                "1 1 8080 0a000001.addr.dc1.consul.",
                "1 1 9000 20010db8000000000000000000000001.addr.dc1.consul.",
            ]
        );
        let mut additional: Vec<String> = reply
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        additional.sort();
        assert_eq!(
            additional,
            [
                "0a000001.addr.dc1.consul. 10.0.0.1",
                "20010db8000000000000000000000001.addr.dc1.consul. 2001:db8::1",
            ]
        );
        // The target resolves on its own.
        let zone = zone();
        let target = name("0a000001.addr.dc1.consul.");
        let reply = zone.answer_other(&target, RecordType::A, &zone.lookup(&target), 7);
        assert_eq!(reply.answers[0].data.to_string(), "10.0.0.1");
        let reply = zone.answer_other(&target, RecordType::AAAA, &zone.lookup(&target), 7);
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    #[test]
    fn a_named_host_is_a_cname() {
        let instances = [instance(
            "a",
            "http://sum-0.sum.default.svc.cluster.local:8080",
            Status::Passing,
            &[],
        )];
        let reply = answer(&zone(), "sum.service.consul.", RecordType::A, &instances);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(
            reply.answers[0].data.to_string(),
            "sum-0.sum.default.svc.cluster.local."
        );
    }

    #[test]
    fn the_apex_has_the_soa_and_unknown_names_do_not_exist() {
        let zone = zone();
        let apex = name("consul.");
        let reply = zone.answer_other(&apex, RecordType::SOA, &Lookup::Apex, 42);
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(
            reply.answers[0]
                .data
                .to_string()
                .contains("ns.consul. hostmaster.consul. 42")
        );
        let reply = zone.answer_other(&apex, RecordType::A, &Lookup::Apex, 42);
        assert_eq!(reply.code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        let nothing = name("x.node.consul.");
        let reply = zone.answer_other(&nothing, RecordType::A, &Lookup::Nothing, 42);
        assert_eq!(reply.code, ResponseCode::NXDomain);
        assert_eq!(reply.authority.len(), 1);
        let reply = answer(&zone, "nosuch.service.consul.", RecordType::A, &[]);
        assert_eq!(reply.code, ResponseCode::NXDomain);
    }
}
