//! The DNS interface on replicas: each replica answers from its own view, so a change
//! written through one replica must reach another replica's DNS answers as fast as its
//! HTTP answers (`replicas.rs`: within a second through the change feed, well before the
//! 5 s catch-up). Two replicas on one fresh Postgres database; the change is written on
//! A and B's DNS port is asked, with a hand-built query, until it answers it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use registry_api::{InstanceSpec, Status};
use registry_server::Settings;
use sqlx::Connection;
use tokio::time::Instant;

use super::dns_wire::{self, NOERROR, NXDOMAIN, RecordData, TYPE_A, TYPE_SRV};
use crate::support::{Backend, TestRegistry};

/// Longest a test waits for B's DNS to show a change before failing.
const DEADLINE: Duration = Duration::from_secs(2);
/// As in `replicas.rs`: well below the 5 s safety net, well above the few milliseconds a
/// notification takes.
const NOTIFIED_WITHIN: Duration = Duration::from_secs(1);
/// How often B's DNS is asked while a change travels.
const POLL: Duration = Duration::from_millis(5);

fn with_dns(settings: &mut Settings) {
    settings.dns_addr = Some("127.0.0.1:0".parse().expect("address"));
}

/// Waits (with a deadline) until `count` connections to the database LISTEN: each
/// replica's change feed is up, so what follows travels through it.
async fn wait_for_listeners(url: &str, count: i64) {
    let mut db = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the replicas' database");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&mut db)
        .await
        .expect("pg_stat_activity");
        if listening == count {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out waiting for {count} LISTEN connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What B's DNS answers for `sum.service.consul A`: the rcode and the addresses.
async fn sum_a(dns: SocketAddr, id: u16) -> (u8, Vec<Ipv4Addr>) {
    let answer = dns_wire::ask_udp(dns, id, "sum.service.consul", TYPE_A).await;
    (answer.rcode(), answer.a_records())
}

/// How long after `since` B's DNS answers `want`; fails after [`DEADLINE`].
async fn answered_after(
    dns: SocketAddr,
    want: &(u8, Vec<Ipv4Addr>),
    since: Instant,
    what: &str,
) -> Duration {
    let mut id: u16 = 0x4000;
    loop {
        id = id.wrapping_add(1);
        let got = sum_a(dns, id).await;
        if got == *want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < DEADLINE,
            "{what}: B's DNS still answers {got:?} {DEADLINE:?} after A's acknowledgement, \
             expected {want:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_is_answered_by_another_replicas_dns() {
    let url = Backend::Postgres.fresh_url().await;
    let a = TestRegistry::start_on(url.clone(), with_dns).await;
    let b = TestRegistry::start_on(url.clone(), with_dns).await;
    let b_dns = b.dns_addr.expect("B serves DNS");
    wait_for_listeners(&url, 2).await;
    assert_eq!(
        sum_a(b_dns, 1).await,
        (NXDOMAIN, vec![]),
        "no sum instance yet"
    );

    let address = Ipv4Addr::new(10, 0, 0, 7);
    let present = (NOERROR, vec![address]);
    let absent = (NXDOMAIN, vec![]);
    let mut spec = InstanceSpec::new("http://10.0.0.7:8080");
    spec.ttl_seconds = Some(0);
    let mut delays = Vec::new();

    // Registered on A: in B's answers.
    a.api
        .register("sum", "sum-1", &spec)
        .await
        .expect("register on A");
    delays.push((
        "registration",
        answered_after(b_dns, &present, Instant::now(), "registration").await,
    ));
    // The SRV answer on B, over TCP: port, target and the target's address.
    let srv = dns_wire::ask_tcp(b_dns, 2, "_sum._tcp.service.consul", TYPE_SRV).await;
    assert_eq!(srv.rcode(), NOERROR, "{srv:?}");
    let targets: Vec<(u16, String)> = srv
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RecordData::Srv { port, target, .. } => Some((*port, target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        targets,
        [(8080, "0a000007.addr.dc1.consul.".to_owned())],
        "{srv:?}"
    );
    assert!(
        srv.additional
            .iter()
            .any(|r| r.name == targets[0].1 && r.data == RecordData::A(address)),
        "the target's A record is in the additional section: {srv:?}"
    );

    // Drained on A: gone from B's answers.
    a.api
        .set_status("sum", "sum-1", Status::Maintenance)
        .await
        .expect("maintenance on A");
    delays.push((
        "maintenance",
        answered_after(b_dns, &absent, Instant::now(), "maintenance").await,
    ));
    // Back from maintenance, then deregistered, both on A.
    a.api
        .set_status("sum", "sum-1", Status::Passing)
        .await
        .expect("maintenance cleared on A");
    delays.push((
        "maintenance cleared",
        answered_after(b_dns, &present, Instant::now(), "maintenance cleared").await,
    ));
    a.api
        .deregister("sum", "sum-1")
        .await
        .expect("deregister on A");
    delays.push((
        "deregistration",
        answered_after(b_dns, &absent, Instant::now(), "deregistration").await,
    ));

    println!("A's change in B's DNS answers after: {delays:?}");
    for (what, delay) in &delays {
        assert!(
            *delay < NOTIFIED_WITHIN,
            "{what}: B's DNS showed it {delay:?} after A's acknowledgement, more than \
             {NOTIFIED_WITHIN:?}: the change feed did not deliver"
        );
    }
    a.stop().await;
    b.stop().await;
}
