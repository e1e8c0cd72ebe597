//! A VM started through the control API with a network card on a segment
//! is plugged into the overlay by its gateway, wherever it runs: a real KVM
//! guest at site A serves TCP echo to a client on the segment at site A;
//! after a live migration to site B over real QUIC+TLS through the WAN
//! emulator, the same TCP session carries on (every byte in order) to the
//! guest now plugged in at B, and A has unplugged it. Memory at the
//! handover and the guest's own results are checked against the source and
//! an unmigrated run, and both sites' records and `/metrics` report the
//! migration alike.

#[path = "migration_support.rs"]
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::*;
use wanmig_e2e::{init_logging, MeshBuilder};
use wanmig_gateway::demo::echo_client::{EchoClient, EchoClientConfig};
use wanmig_gateway::migration::{Direction, MigrationRecord};
use wanmig_gateway::GatewayHandle;
use wanmig_migration::machine::NetConfig;

const SEGMENT: &str = "lan";
const VM: &str = "web";
const GUEST_MAC: [u8; 6] = [0x02, 0x57, 0x4d, 0x00, 0x01, 0x10];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0x57, 0x4d, 0x00, 0x01, 0x20];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const ECHO_PORT: u16 = 7000;

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The local ports of `SEGMENT` at `gw`, and where its switch puts `mac`
/// (`("local", "port3")` or `("remote", "site-b")`).
async fn segment_view(gw: &GatewayHandle, mac: [u8; 6]) -> (Vec<u32>, Option<(String, String)>) {
    let state = gw.overlay().state().await.expect("overlay state");
    let seg = state
        .segments
        .into_iter()
        .find(|s| s.name == SEGMENT)
        .expect("the segment is configured");
    let mac = mac_text(mac);
    let at = seg
        .macs
        .iter()
        .find(|m| m.mac == mac)
        .map(|m| (m.kind.clone(), m.at.clone()));
    (seg.ports, at)
}

/// The value of the sample of `metric` whose labels include every one of
/// `labels` (`key="value"`), on `gw`'s `/metrics`.
async fn metric(gw: &GatewayHandle, metric: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.metrics_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels.iter().all(|want| l.contains(want))
        })
        .unwrap_or_else(|| panic!("no {metric} with {labels:?} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `cond` until it holds or [`WAIT`] passes.
async fn eventually<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The destination's record of migration `id` once it has finished.
async fn incoming(gw: &GatewayHandle, id: &str) -> MigrationRecord {
    let found = eventually(|| async {
        gw.migration()
            .records()
            .iter()
            .any(|r| r.id == id && r.direction == Direction::Incoming && r.finished())
    })
    .await;
    let rec = gw
        .migration()
        .records()
        .into_iter()
        .find(|r| r.id == id && r.direction == Direction::Incoming);
    assert!(found, "the incoming record {id} did not finish: {rec:?}");
    rec.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_a_segment_keeps_its_tcp_session_across_a_migration() {
    if !wanmig_testenv::require_kvm("a_vm_on_a_segment_keeps_its_tcp_session_across_a_migration") {
        return;
    }
    init_logging();
    let mesh = MeshBuilder::new(2)
        .wan(Duration::from_millis(20), 200_000_000)
        .extra_config(&format!(
            "[overlay]\n[[overlay.segment]]\nname = \"{SEGMENT}\"\nvni = 100\n"
        ))
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));

    // The VM, started as an operator does: through site A's control API.
    let mut config = dirtying_vm(32, 8, Duration::from_millis(1));
    config.net = Some(NetConfig {
        mac: GUEST_MAC,
        ip: GUEST_IP,
        prefix_len: 15,
        port: ECHO_PORT,
        tap: None,
        segment: Some(SEGMENT.into()),
    });
    let control = mesh.control("site-a");
    control
        .start_vm(VM, &config)
        .await
        .expect("the VM starts through the control API");

    // A segment this site does not have is refused, naming the key.
    let mut elsewhere = config.clone();
    elsewhere.net.as_mut().unwrap().segment = Some("nosuch".into());
    let e = control.start_vm("other", &elsewhere).await.unwrap_err();
    assert!(
        e.to_string().contains("net.segment") && e.to_string().contains("nosuch"),
        "{e}"
    );

    // A client on the segment at site A talks to the guest's echo service.
    let (_, client_port) = a.overlay().attach_port(SEGMENT).await.unwrap();
    let client = EchoClient::start(
        EchoClientConfig {
            mac: CLIENT_MAC,
            ip: CLIENT_IP,
            prefix_len: 15,
            server: GUEST_IP,
            port: ECHO_PORT,
            rate: 2 << 20,
        },
        client_port,
    )
    .expect("the client starts");
    let c = &client;
    assert!(
        tokio::task::block_in_place(|| c.wait_verified(64 << 10, WAIT)),
        "no echo from the guest at site A: {:?}; guest console {:?}",
        client.stats(),
        a.vm_host().serial(VM)
    );
    let vm_port = a.vm_host().nic_port(VM).expect("the VM is plugged in at A");
    let (ports, at) = segment_view(a, GUEST_MAC).await;
    assert!(ports.contains(&vm_port.0), "{ports:?}");
    assert_eq!(at, Some(("local".into(), vm_port.to_string())));
    assert!(wait_iteration(a.vm_host(), VM, 20).await);

    // The move to site B, with the session open.
    let rec = migrate_ok(a, VM, "site-b", "A to B").await;
    let at_move = client.stats().bytes_verified;
    let target = at_move + (128 << 10);
    assert!(
        tokio::task::block_in_place(|| c.wait_verified(target, WAIT)),
        "the TCP session stalled after the move: {:?}",
        client.stats()
    );
    let stats = client.stop();
    assert!(stats.connected && !stats.reset, "{stats:?}");
    assert_eq!(stats.mismatched, 0, "{stats:?}");
    assert!(stats.error.is_none(), "{stats:?}");

    // Plugged in at B, unplugged at A; A forwards the MAC to B.
    let b_port = b.vm_host().nic_port(VM).expect("the VM is plugged in at B");
    let (b_ports, b_at) = segment_view(b, GUEST_MAC).await;
    assert_eq!(b_ports, vec![b_port.0]);
    assert_eq!(b_at, Some(("local".into(), b_port.to_string())));
    assert_eq!(a.vm_host().nic_port(VM), None);
    let unplugged = eventually(|| async {
        let (ports, at) = segment_view(a, GUEST_MAC).await;
        !ports.contains(&vm_port.0) && at == Some(("remote".into(), "site-b".into()))
    })
    .await;
    assert!(
        unplugged,
        "site A still has the VM's port: {:?}",
        segment_view(a, GUEST_MAC).await
    );

    // Memory at the handover and the guest's own results.
    let digest = rec
        .memory_digest
        .clone()
        .expect("digest of a finished move");
    let released = a.vm_host().released(VM).expect("the released copy");
    assert_eq!(
        digest,
        hex(&released.memory_digest),
        "source memory at the pause"
    );
    let inc = incoming(b, &rec.id).await;
    assert_eq!(inc.memory_digest.as_deref(), Some(digest.as_str()));
    assert_matches_reference(&config, &samples(a.vm_host(), VM), "at site A");
    let before = iteration(b.vm_host(), VM);
    assert!(wait_iteration(b.vm_host(), VM, before + 20).await);
    assert_matches_reference(&config, &samples(b.vm_host(), VM), "at site B");

    // Both ends report the move: the same wire and page bytes, hence the
    // same reduction, and rounds; the destination's pause is the part of
    // the source's it can see (the source's adds the link's delay).
    eprintln!("source: {rec:?}\ndestination: {inc:?}");
    assert!(rec.progress.bytes_out > 0);
    assert_eq!(inc.progress.bytes_out, rec.progress.bytes_out, "wire bytes");
    assert_eq!(inc.progress.bytes_in, rec.progress.bytes_in, "page bytes");
    assert_eq!(
        inc.progress.reduction_ratio(),
        rec.progress.reduction_ratio()
    );
    assert!(rec.rounds >= 1);
    assert_eq!(inc.rounds, rec.rounds, "rounds");
    let (src_pause, dst_pause) = (rec.downtime_ms.unwrap(), inc.downtime_ms.unwrap());
    assert!(
        dst_pause > 0.0 && dst_pause <= src_pause,
        "pause at the destination {dst_pause} ms, at the source {src_pause} ms"
    );
    let (out, inn) = (r#"direction="outgoing""#, r#"direction="incoming""#);
    for (name, want) in [
        (
            "wanmig_migration_bytes_after_reduction_total",
            rec.progress.bytes_out as f64,
        ),
        (
            "wanmig_migration_bytes_before_reduction_total",
            rec.progress.bytes_in as f64,
        ),
    ] {
        assert_eq!(metric(a, name, &[out]).await, want, "{name} at A");
        assert_eq!(metric(b, name, &[inn]).await, want, "{name} at B");
    }
    let rounds = metric(a, "wanmig_migration_rounds_total", &[out]).await;
    assert!(rounds >= 2.0, "{rounds}");
    assert_eq!(
        metric(b, "wanmig_migration_rounds_total", &[inn]).await,
        rounds
    );
    let succeeded = r#"outcome="succeeded""#;
    assert_eq!(
        metric(a, "wanmig_migration_total", &[out, succeeded]).await,
        1.0
    );
    assert_eq!(
        metric(b, "wanmig_migration_total", &[inn, succeeded]).await,
        1.0
    );
    assert_eq!(
        metric(b, "wanmig_migration_downtime_seconds_sum", &[inn]).await,
        dst_pause / 1e3
    );
    assert_eq!(
        metric(a, "wanmig_migration_downtime_seconds_sum", &[out]).await,
        src_pause / 1e3
    );

    mesh.shutdown().await;
}
