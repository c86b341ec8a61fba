//! The DNS row: `dnsperf` A queries for one service of 10 instances, against the
//! registry's DNS interface and against NSD serving the same records from a static zone.
//!
//! NSD is the ceiling: an authoritative-only server in C that answers from a precompiled
//! zone, so nothing does less per query on this machine. Both run on the same two cores
//! as dnsperf, in turns, and the ratio of the two is the figure (as lookups are taken
//! against the no-op HTTP handler). dnsperf is C and UDP, like wrk for HTTP: it leaves
//! the servers as much of the machine as a load generator can.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::process::{Child, Command};

use crate::registry::unique_suffix;

/// The service the row asks for, and the zone it lives in (Consul's default domain).
pub const SERVICE: &str = "sum";
pub const DOMAIN: &str = "consul";

/// The name dnsperf asks for: `sum.service.consul`.
pub fn query_name() -> String {
    format!("{SERVICE}.service.{DOMAIN}")
}

/// The address of instance `k` (0-based) of the service, in the registry and in the zone.
pub fn instance_address(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, u8::try_from(k + 1).unwrap_or(u8::MAX))
}

/// What is missing to measure the row, if anything: a one-line reason.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = [("dnsperf", find_program("dnsperf")), ("nsd", nsd_binary())]
        .into_iter()
        .filter_map(|(name, path)| path.is_none().then_some(name))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (apt-get install dnsperf nsd; make bench does as root)",
            missing.join(" and ")
        )
    })
}

/// `name` on `PATH`, or in the system folders Debian puts daemons in (`nsd` is in
/// `/usr/sbin`, which is not on a user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn nsd_binary() -> Option<PathBuf> {
    find_program("nsd")
}

/// A port of 127.0.0.1 that is free for both UDP and TCP now (the servers listen on
/// both). Chosen at run time and released before the server binds it: a fixed port
/// could be taken by anything else on the machine.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port of 127.0.0.1 free for both UDP and TCP")
}

/// A running NSD on a scratch folder of its own: its configuration, the zone, its pid
/// file and logs. [`Nsd::stop`] ends it and removes the folder.
pub struct Nsd {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

/// How many server processes NSD runs: one per core of this machine, as its manual
/// advises for throughput (and `reuseport` so each has its own socket).
fn nsd_servers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Nsd {
    /// Starts NSD in the foreground on a free port with the zone `consul.`: SOA, NS and
    /// one A record of `sum.service.consul.` per address, TTL 0 as the registry answers.
    pub async fn start(addresses: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let nsd = nsd_binary().context("nsd is not installed")?;
        let dir = std::env::temp_dir().join(format!("registry-bench-nsd-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = free_port()?;
        std::fs::write(dir.join("consul.zone"), zone(addresses))?;
        std::fs::write(dir.join("nsd.conf"), config(&dir, port, nsd_servers()))?;
        let child = Command::new(&nsd)
            .arg("-d")
            .arg("-c")
            .arg(dir.join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", nsd.display()))?;
        let mut server = Self {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        if let Err(error) = wait_for_answer(server.addr, &mut server.child).await {
            let log = std::fs::read_to_string(server.dir.join("nsd.log")).unwrap_or_default();
            server.stop().await?;
            bail!("{error:#}; its log: {}", log.trim());
        }
        Ok(server)
    }

    /// SIGTERM (NSD's own servers end with it), at most 10 s, then SIGKILL; removes the
    /// scratch folder.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child).await?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// SIGTERM with `kill` (signalling from Rust would need `libc` and unsafe code), then
/// SIGKILL after 10 s.
pub async fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    Ok(())
}

/// The zone file of `consul.`: SOA and NS (an authoritative zone needs both), and the
/// service's A records.
fn zone(addresses: &[Ipv4Addr]) -> String {
    let mut text = format!(
        "$ORIGIN {DOMAIN}.\n$TTL 0\n\
         @ IN SOA ns.{DOMAIN}. hostmaster.{DOMAIN}. 1 3600 600 86400 0\n\
         @ IN NS ns.{DOMAIN}.\n\
         ns IN A 127.0.0.1\n"
    );
    for address in addresses {
        text.push_str(&format!("{SERVICE}.service IN A {address}\n"));
    }
    text
}

/// NSD's configuration: everything in the scratch folder (no database file, no chroot,
/// no change of user), only 127.0.0.1 on `port`.
fn config(dir: &Path, port: u16, servers: usize) -> String {
    let dir = dir.display();
    format!(
        r#"server:
  ip-address: 127.0.0.1
  port: {port}
  do-ip6: no
  server-count: {servers}
  reuseport: yes
  username: ""
  chroot: ""
  database: ""
  zonesdir: "{dir}"
  zonelistfile: "{dir}/zone.list"
  xfrdfile: "{dir}/xfrd.state"
  xfrdir: "{dir}"
  pidfile: "{dir}/nsd.pid"
  logfile: "{dir}/nsd.log"
  verbosity: 0
  hide-version: yes
  # NSD limits answers per source and name by default (response rate limiting, against
  # reflection attacks); dnsperf is one source asking one name, so it would be held to
  # a few hundred answers per second.
  rrl-ratelimit: 0
  # Only the answer, as the registry gives it: the NS record and its address added to
  # every answer would make NSD's answers larger than the registry's.
  minimal-responses: yes
remote-control:
  control-enable: no
zone:
  name: "{DOMAIN}"
  zonefile: "consul.zone"
"#
    )
}

/// Asks `addr` for the service until it answers (at most 10 s), or `child` exits.
async fn wait_for_answer(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("exited ({status}) before answering on {addr}");
        }
        let error = match query_a(addr, &query_name()).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(error.context(format!("no DNS answer on {addr} within 10 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one A query was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub authoritative: bool,
    pub addresses: Vec<Ipv4Addr>,
    pub ttls: Vec<u32>,
    pub size: usize,
}

/// One A query for `name` over UDP, the answer parsed (enough of the format to read A
/// records: a client library would be a dependency for one check).
pub async fn query_a(addr: SocketAddr, name: &str) -> anyhow::Result<Answer> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let id: u16 = 0x4242;
    socket.send_to(&a_query(id, name), addr).await?;
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
        .await
        .context("no answer within 1 s")??;
    parse_answer(id, &buffer[..len])
}

/// A DNS query message: header (one question, recursion not asked for: both servers are
/// authoritative), the name as labels, type A, class IN.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        message.push(label.len() as u8);
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

fn parse_answer(id: u16, message: &[u8]) -> anyhow::Result<Answer> {
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        let bytes = message.get(at..at + 2).context("answer cut short")?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    ensure!(u16_at(0)? == id, "answer to another query");
    let flags = u16_at(2)?;
    ensure!(flags & 0x8000 != 0, "not an answer");
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4;
    }
    let mut addresses = Vec::new();
    let mut ttls = Vec::new();
    for _ in 0..answers {
        at = skip_name(message, at)?;
        let (kind, class) = (u16_at(at)?, u16_at(at + 2)?);
        let ttl = (u32::from(u16_at(at + 4)?) << 16) | u32::from(u16_at(at + 6)?);
        let len = usize::from(u16_at(at + 8)?);
        let data = message
            .get(at + 10..at + 10 + len)
            .context("record cut short")?;
        if kind == 1 && class == 1 && len == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            ttls.push(ttl);
        }
        at += 10 + len;
    }
    Ok(Answer {
        rcode: (flags & 0x000f) as u8,
        authoritative: flags & 0x0400 != 0,
        addresses,
        ttls,
        size: message.len(),
    })
}

/// The offset after the name at `at`: labels up to the root, or up to a compression
/// pointer (two bytes that end the name where it stands).
fn skip_name(message: &[u8], mut at: usize) -> anyhow::Result<usize> {
    loop {
        let len = *message.get(at).context("name cut short")?;
        match len {
            0 => return Ok(at + 1),
            l if l & 0xc0 == 0xc0 => return Ok(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// Checks that `addr` answers the service's A query as the row expects: NOERROR,
/// authoritative, exactly `expected` (in any order: the registry shuffles them).
pub async fn check_answer(
    addr: SocketAddr,
    expected: &[Ipv4Addr],
    who: &str,
) -> anyhow::Result<Answer> {
    let answer = query_a(addr, &query_name())
        .await
        .with_context(|| format!("{who} did not answer {} A on {addr}", query_name()))?;
    let got: BTreeSet<_> = answer.addresses.iter().collect();
    let want: BTreeSet<_> = expected.iter().collect();
    ensure!(
        answer.rcode == 0 && answer.authoritative && answer.addresses.len() == expected.len(),
        "{who} answered {} A with rcode {}, authoritative {}, {} A records; expected NOERROR, \
         authoritative, {}",
        query_name(),
        answer.rcode,
        answer.authoritative,
        answer.addresses.len(),
        expected.len()
    );
    ensure!(
        got == want,
        "{who} answered {:?}, expected {:?}",
        answer.addresses,
        expected
    );
    Ok(answer)
}

/// Asks `addr` until it answers the service with `expected` (at most `within`): the
/// registry's view takes the seeded instances in as they are written.
pub async fn wait_for_records(
    addr: SocketAddr,
    expected: &[Ipv4Addr],
    who: &str,
    within: Duration,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + within;
    loop {
        match check_answer(addr, expected, who).await {
            Ok(answer) => return Ok(answer),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// How dnsperf is driven: the same for both servers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DnsperfOptions {
    /// `-c`: clients, each its own UDP socket.
    pub clients: usize,
    /// `-T`: dnsperf threads.
    pub threads: usize,
    /// `-q`: queries outstanding at most.
    pub outstanding: usize,
}

/// What one dnsperf run measured.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DnsperfResult {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    /// Responses with NOERROR; every completed query should be one.
    pub noerror: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub avg_latency_ms: f64,
    pub response_bytes: f64,
}

impl DnsperfResult {
    /// Every query answered, and with NOERROR.
    pub fn clean(&self) -> bool {
        self.completed > 0 && self.lost == 0 && self.noerror == self.completed
    }

    pub fn summary(&self) -> String {
        format!(
            "{:.0} q/s (avg {:.2} ms{})",
            self.per_second,
            self.avg_latency_ms,
            if self.clean() {
                String::new()
            } else {
                format!(
                    "; {} lost, {} not NOERROR",
                    self.lost,
                    self.completed - self.noerror
                )
            }
        )
    }
}

/// Runs dnsperf against `addr` for `duration` with the service's A query.
pub async fn dnsperf(
    addr: SocketAddr,
    options: DnsperfOptions,
    duration: Duration,
) -> anyhow::Result<DnsperfResult> {
    let path =
        std::env::temp_dir().join(format!("registry-bench-dnsperf-{}.txt", std::process::id()));
    std::fs::write(&path, format!("{} A\n", query_name()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let output = Command::new(find_program("dnsperf").context("dnsperf is not installed")?)
        .arg("-s")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .arg("-d")
        .arg(&path)
        .arg("-l")
        .arg(duration.as_secs().max(1).to_string())
        .arg("-c")
        .arg(options.clients.to_string())
        .arg("-T")
        .arg(options.threads.to_string())
        .arg("-q")
        .arg(options.outstanding.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run dnsperf")?;
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_dnsperf(&stdout).with_context(|| {
        format!(
            "dnsperf printed no statistics: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The figures of dnsperf's "Statistics:" report.
fn parse_dnsperf(text: &str) -> anyhow::Result<DnsperfResult> {
    let field = |label: &str| -> Option<&str> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(str::trim)
    };
    let first_number = |label: &str| -> anyhow::Result<f64> {
        field(label)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(',').parse().ok())
            .with_context(|| format!("no {label}"))
    };
    // "NOERROR 196008 (100.00%), SERVFAIL 2 (0.00%)"
    let noerror = field("Response codes:")
        .and_then(|codes| {
            codes.split(',').find_map(|code| {
                let mut words = code.split_whitespace();
                (words.next() == Some("NOERROR"))
                    .then(|| words.next()?.parse().ok())
                    .flatten()
            })
        })
        .unwrap_or(0);
    // "request 36, response 229"
    let response_bytes = field("Average packet size:")
        .and_then(|sizes| sizes.split("response").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0);
    Ok(DnsperfResult {
        sent: first_number("Queries sent:")? as u64,
        completed: first_number("Queries completed:")? as u64,
        lost: first_number("Queries lost:")? as u64,
        noerror,
        seconds: first_number("Run time (s):")?,
        per_second: first_number("Queries per second:")?,
        avg_latency_ms: first_number("Average Latency (s):")? * 1e3,
        response_bytes,
    })
}

/// The runs of one server added up: queries over run time (each run's own figure would
/// weigh a short run like a long one); latency and size averaged per query.
pub fn combine(runs: &[DnsperfResult]) -> DnsperfResult {
    let completed: u64 = runs.iter().map(|r| r.completed).sum();
    let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    let weighted = |pick: fn(&DnsperfResult) -> f64| {
        runs.iter()
            .map(|r| pick(r) * r.completed as f64)
            .sum::<f64>()
            / completed.max(1) as f64
    };
    DnsperfResult {
        sent: runs.iter().map(|r| r.sent).sum(),
        completed,
        lost: runs.iter().map(|r| r.lost).sum(),
        noerror: runs.iter().map(|r| r.noerror).sum(),
        seconds,
        per_second: if seconds > 0.0 {
            completed as f64 / seconds
        } else {
            0.0
        },
        avg_latency_ms: weighted(|r| r.avg_latency_ms),
        response_bytes: weighted(|r| r.response_bytes),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    const REPORT: &str = "
Statistics:

  Queries sent:         196008
  Queries completed:    196000 (100.00%)
  Queries lost:         8 (0.00%)

  Response codes:       NOERROR 195990 (99.99%), SERVFAIL 10 (0.01%)
  Average packet size:  request 36, response 229
  Run time (s):         3.000311
  Queries per second:   65329.227537

  Average Latency (s):  0.001172 (min 0.000012, max 0.025037)
  Latency StdDev (s):   0.001427
";

    #[test]
    fn reads_dnsperf_statistics() {
        let result = parse_dnsperf(REPORT).expect("a dnsperf report");
        assert_eq!(
            (result.sent, result.completed, result.lost, result.noerror),
            (196_008, 196_000, 8, 195_990)
        );
        assert!((result.per_second - 65_329.2).abs() < 0.1);
        assert!((result.avg_latency_ms - 1.172).abs() < 1e-9);
        assert!((result.response_bytes - 229.0).abs() < 1e-9);
        assert!(!result.clean());
    }

    #[test]
    fn reads_an_answer_with_compressed_names() {
        let mut message = a_query(7, "sum.service.consul");
        message[2] = 0x84; // an answer, authoritative
        message[7] = 2; // two answers
        for last in [1u8, 2] {
            // name: pointer to the question's name; A IN, TTL 0, 4 bytes.
            message.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 10, 0, 0, last]);
        }
        let answer = parse_answer(7, &message).expect("an answer");
        assert_eq!(answer.rcode, 0);
        assert!(answer.authoritative);
        assert_eq!(
            answer.addresses,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(answer.ttls, [0, 0]);
    }

    #[test]
    fn zone_holds_every_address() {
        let zone = zone(&[instance_address(0), instance_address(9)]);
        assert!(zone.contains("sum.service IN A 10.0.0.1\n"));
        assert!(zone.contains("sum.service IN A 10.0.0.10\n"));
        assert!(zone.contains("IN SOA"));
    }
}
