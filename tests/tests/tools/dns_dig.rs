//! The DNS interface (docs/dns.md) asked by `dig` (Debian's dnsutils), over UDP and TCP:
//! instances in every status, A, AAAA, SRV with its Additional records, tag filters, the
//! datacenter form, negative answers with the zone's SOA, names outside the zone refused,
//! a change seen by the next query, and a large answer truncated over UDP and whole over
//! TCP. `dig` prints the whole answer, which [`Dig`] reads back section by section.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Backend, TestRegistry};
use registry_api::{InstanceSpec, Status};
use tokio::process::Command;

/// One answer as dig prints it.
#[derive(Debug, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    /// dig's whole output, for failure messages.
    pub text: String,
}

/// One record: owner, type, data (TTL and class left out but the TTL kept apart).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rr {
    pub name: String,
    pub kind: String,
    pub data: String,
    pub ttl: u32,
}

impl Dig {
    /// The data of the records of `kind` in the Answer section, sorted.
    pub fn answers(&self, kind: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.data.clone())
            .collect();
        found.sort();
        found
    }

    fn truncated(&self) -> bool {
        self.flags.iter().any(|f| f == "tc")
    }

    fn has_soa_authority(&self) -> bool {
        self.authority
            .iter()
            .any(|r| r.kind == "SOA" && r.name == "consul.")
    }
}

/// Asks the registry's DNS at `server` with dig, the extra `options` given (`+tcp`, ...).
pub async fn dig(server: SocketAddr, name: &str, qtype: &str, options: &[&str]) -> Dig {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, qtype])
        .args(["+norecurse", "+time=2", "+tries=1"])
        .args(options)
        .output()
        .await
        .expect("dig runs (Debian's dnsutils; scripts/ensure-tools.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "dig failed:\n{text}");
    let mut dig = Dig {
        text: text.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or_default().to_owned();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(rest) = line.strip_prefix(";; ") {
            if let Some(name) = rest.strip_suffix(" SECTION:") {
                section = match name {
                    "ANSWER" => "answer",
                    "AUTHORITY" => "authority",
                    "ADDITIONAL" => "additional",
                    _ => "",
                };
            }
            continue;
        }
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        let rr = Rr {
            name: fields[0].to_owned(),
            ttl: fields[1].parse().expect("a TTL"),
            kind: fields[3].to_owned(),
            data: fields[4..].join(" "),
        };
        match section {
            "answer" => dig.answer.push(rr),
            "authority" => dig.authority.push(rr),
            "additional" => dig.additional.push(rr),
            _ => {}
        }
    }
    dig
}

async fn register(registry: &TestRegistry, service: &str, id: &str, url: &str, tags: &[&str]) {
    let mut spec = InstanceSpec::new(url);
    spec.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    spec.ttl_seconds = Some(0);
    registry
        .api
        .register(service, id, &spec)
        .await
        .expect("registered");
}

async fn start() -> (TestRegistry, SocketAddr) {
    let registry = TestRegistry::start_with(Backend::Sqlite, |settings| {
        settings.dns_addr = Some("127.0.0.1:0".parse().expect("address"));
        settings.dns_ttl = 5;
    })
    .await;
    let dns = registry.dns_addr.expect("DNS is on");
    (registry, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_form_answers_as_consul_does_over_udp_and_tcp() {
    let (registry, dns) = start().await;
    register(&registry, "sum", "a", "http://10.0.0.1:8080", &["v2"]).await;
    register(&registry, "sum", "b", "http://10.0.0.2:8081", &[]).await;
    register(&registry, "sum", "c", "http://[2001:db8::3]:8082", &["v2"]).await;
    let mut warning = InstanceSpec::new("http://10.0.0.4:8083");
    warning.ttl_seconds = Some(120);
    warning.initial_status = Some(Status::Warning);
    registry
        .api
        .register("sum", "warn", &warning)
        .await
        .expect("registered");
    let mut critical = InstanceSpec::new("http://10.0.0.5:8084");
    critical.ttl_seconds = Some(120);
    critical.initial_status = Some(Status::Critical);
    registry
        .api
        .register("sum", "crit", &critical)
        .await
        .expect("registered");
    register(&registry, "sum", "maint", "http://10.0.0.6:8085", &["v2"]).await;
    registry
        .api
        .set_status("sum", "maint", Status::Maintenance)
        .await
        .expect("maintenance");
    register(
        &registry,
        "web",
        "w",
        "http://web-0.web.default.svc.cluster.local:80",
        &[],
    )
    .await;

    for transport in [&[][..], &["+tcp"][..]] {
        let ask = |name: &'static str, qtype: &'static str| dig(dns, name, qtype, transport);
        // A: passing and warning, never critical or maintenance; authoritative; our TTL.
        let answer = ask("sum.service.consul", "A").await;
        assert_eq!(answer.status, "NOERROR", "{}", answer.text);
        assert!(answer.flags.contains(&"aa".to_owned()), "{}", answer.text);
        assert_eq!(
            answer.answers("A"),
            ["10.0.0.1", "10.0.0.2", "10.0.0.4"],
            "{}",
            answer.text
        );
        assert!(answer.answer.iter().all(|r| r.ttl == 5), "{}", answer.text);
        // Names are case-insensitive, and answers carry the name as it was asked.
        let answer = ask("SUM.Service.Consul", "A").await;
        assert_eq!(answer.answers("A").len(), 3, "{}", answer.text);
        assert!(
            answer
                .answer
                .iter()
                .all(|r| r.name == "SUM.Service.Consul."),
            "{}",
            answer.text
        );
        let answer = ask("sum.service.consul", "AAAA").await;
        assert_eq!(answer.answers("AAAA"), ["2001:db8::3"], "{}", answer.text);
        // Tags, and the datacenter form.
        let answer = ask("v2.sum.service.consul", "A").await;
        assert_eq!(answer.answers("A"), ["10.0.0.1"], "{}", answer.text);
        let answer = ask("sum.service.dc1.consul", "A").await;
        assert_eq!(
            answer.answers("A"),
            ["10.0.0.1", "10.0.0.2", "10.0.0.4"],
            "{}",
            answer.text
        );
        // SRV, with each target's address in Additional under the target's exact name.
        let answer = ask("_sum._tcp.service.consul", "SRV").await;
        assert_eq!(
            answer.answers("SRV"),
            [
                "1 1 8080 0a000001.addr.dc1.consul.",
                "1 1 8081 0a000002.addr.dc1.consul.",
                "1 1 8082 20010db8000000000000000000000003.addr.dc1.consul.",
                "1 1 8083 0a000004.addr.dc1.consul.",
            ],
            "{}",
            answer.text
        );
        let mut additional: Vec<String> = answer
            .additional
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.kind, r.data))
            .collect();
        additional.sort();
        assert_eq!(
            additional,
            [
                "0a000001.addr.dc1.consul. A 10.0.0.1",
                "0a000002.addr.dc1.consul. A 10.0.0.2",
                "0a000004.addr.dc1.consul. A 10.0.0.4",
                "20010db8000000000000000000000003.addr.dc1.consul. AAAA 2001:db8::3",
            ],
            "{}",
            answer.text
        );
        let answer = ask("_sum._v2.service.consul", "SRV").await;
        assert_eq!(
            answer.answers("SRV"),
            [
                "1 1 8080 0a000001.addr.dc1.consul.",
                "1 1 8082 20010db8000000000000000000000003.addr.dc1.consul."
            ],
            "{}",
            answer.text
        );
        // An SRV target resolves on its own.
        let answer = ask("0a000002.addr.dc1.consul", "A").await;
        assert_eq!(answer.answers("A"), ["10.0.0.2"], "{}", answer.text);
        // A named host: SRV targets the name, A answers a CNAME to it.
        let answer = ask("_web._tcp.service.consul", "SRV").await;
        assert_eq!(
            answer.answers("SRV"),
            ["1 1 80 web-0.web.default.svc.cluster.local."],
            "{}",
            answer.text
        );
        let answer = ask("web.service.consul", "A").await;
        assert_eq!(
            answer.answers("CNAME"),
            ["web-0.web.default.svc.cluster.local."],
            "{}",
            answer.text
        );
        // Unknown service, nobody healthy with the tag, another datacenter: NXDOMAIN + SOA.
        for name in [
            "nosuch.service.consul",
            "v9.sum.service.consul",
            "sum.service.dc2.consul",
            "sum.node.consul",
        ] {
            let answer = ask(name, "A").await;
            assert_eq!(answer.status, "NXDOMAIN", "{name}: {}", answer.text);
            assert!(answer.has_soa_authority(), "{name}: {}", answer.text);
        }
        // A known name without records of the type: NOERROR + SOA.
        let answer = ask("v2.sum.service.consul", "TXT").await;
        assert_eq!(answer.status, "NOERROR", "{}", answer.text);
        assert!(answer.answer.is_empty(), "{}", answer.text);
        assert!(answer.has_soa_authority(), "{}", answer.text);
        // Outside the zone: refused, the registry is no recursive resolver.
        let answer = ask("example.com", "A").await;
        assert_eq!(answer.status, "REFUSED", "{}", answer.text);
        assert!(answer.answer.is_empty(), "{}", answer.text);
    }
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_answered_by_the_next_query() {
    let (registry, dns) = start().await;
    let answer = dig(dns, "sum.service.consul", "A", &[]).await;
    assert_eq!(answer.status, "NXDOMAIN", "{}", answer.text);
    register(&registry, "sum", "a", "http://10.0.0.1:8080", &[]).await;
    let answer = dig(dns, "sum.service.consul", "A", &[]).await;
    assert_eq!(answer.answers("A"), ["10.0.0.1"], "{}", answer.text);
    register(&registry, "sum", "b", "http://10.0.0.2:8080", &[]).await;
    registry
        .api
        .set_status("sum", "a", Status::Maintenance)
        .await
        .expect("maintenance");
    let answer = dig(dns, "sum.service.consul", "A", &[]).await;
    assert_eq!(answer.answers("A"), ["10.0.0.2"], "{}", answer.text);
    registry
        .api
        .deregister("sum", "b")
        .await
        .expect("deregistered");
    let answer = dig(dns, "sum.service.consul", "A", &[]).await;
    assert_eq!(answer.status, "NXDOMAIN", "{}", answer.text);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let (registry, dns) = start().await;
    for n in 1..=60 {
        register(
            &registry,
            "big",
            &format!("i{n}"),
            &format!("http://10.1.0.{n}:8080"),
            &[],
        )
        .await;
    }
    // dig's +ignore keeps the truncated UDP answer instead of asking again over TCP.
    let udp = dig(
        dns,
        "_big._tcp.service.consul",
        "SRV",
        &["+bufsize=512", "+ignore"],
    )
    .await;
    assert!(udp.truncated(), "{}", udp.text);
    assert!(udp.answer.len() < 60, "{}", udp.text);
    let size = udp
        .text
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .expect("dig prints the size");
    assert!(
        size <= 512,
        "a {size}-byte answer to a 512-byte client:\n{}",
        udp.text
    );
    // A client advertising more gets more over UDP, still within what it said.
    let larger = dig(
        dns,
        "big.service.consul",
        "A",
        &["+bufsize=4096", "+ignore"],
    )
    .await;
    assert!(!larger.truncated(), "{}", larger.text);
    assert_eq!(larger.answers("A").len(), 60, "{}", larger.text);
    let tcp = dig(dns, "_big._tcp.service.consul", "SRV", &["+tcp"]).await;
    assert!(!tcp.truncated(), "{}", tcp.text);
    assert_eq!(tcp.answers("SRV").len(), 60, "{}", tcp.text);
    assert_eq!(
        tcp.additional.iter().filter(|r| r.kind == "A").count(),
        60,
        "{}",
        tcp.text
    );
    // Without +ignore, dig does what resolvers do: sees TC and asks again over TCP.
    let retried = dig(dns, "_big._tcp.service.consul", "SRV", &["+bufsize=512"]).await;
    assert_eq!(retried.answers("SRV").len(), 60, "{}", retried.text);
    // Each answer comes in another order (shuffled per answer).
    let mut orders = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let answer = dig(dns, "big.service.consul", "A", &["+tcp"]).await;
        orders.insert(
            answer
                .answer
                .iter()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert!(orders.len() > 1, "five answers, all in one order");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_counted_in_the_metrics() {
    let (registry, dns) = start().await;
    register(&registry, "sum", "a", "http://10.0.0.1:8080", &[]).await;
    dig(dns, "sum.service.consul", "A", &[]).await;
    dig(dns, "example.com", "A", &[]).await;
    let metrics = registry
        .http
        .get(registry.url("/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for series in [
        "registry_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\"}",
        "registry_dns_queries_total{qtype=\"A\",rcode=\"REFUSED\"}",
        "registry_dns_query_duration_seconds_count",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    registry.stop().await;
}
