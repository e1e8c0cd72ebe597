//! Gateways peering over real QUIC + TLS on loopback, through the WAN
//! emulator: full mesh, link-cut detection and recovery, the stream-kind
//! and datagram extension points.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wanmig_e2e::{init_logging, Link, MeshBuilder};
use wanmig_gateway::peering::{close_code, StreamKind};
use wanmig_gateway::{LinkState, Role};

const UP_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_peer_through_the_wan_emulator() {
    init_logging();
    let rtt = Duration::from_millis(40);
    let mesh = MeshBuilder::new(2)
        .wan(rtt, 100_000_000)
        .start()
        .await
        .unwrap();
    assert!(
        mesh.wait_all_up(UP_TIMEOUT).await,
        "{:#?}",
        mesh.gw("site-a").peer_states()
    );

    let a = mesh.gw("site-a").peer_states();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].site, "site-b");
    assert_eq!(a[0].role, Role::Dial);
    assert_eq!(mesh.gw("site-b").peer_states()[0].role, Role::Accept);

    // The status API shows the same, and the RTT proves the traffic crosses
    // the emulated 40 ms path (it cannot be shorter than the delay).
    let status = mesh.control("site-a").status().await.unwrap();
    assert_eq!(status.site, "site-a");
    let peer = &status.peers[0];
    assert_eq!(peer.state, LinkState::Up);
    let link = peer.link.expect("an up peer has link stats");
    assert!(
        link.rtt_ms >= 38.0,
        "RTT {} ms is below the emulated 40 ms",
        link.rtt_ms
    );
    assert!(link.bytes_sent > 0 && link.bytes_received > 0);
    assert!(mesh.relay("site-a", "site-b").stats().forward.delivered > 0);

    // The acceptor sees the connection coming from the relay, not from A.
    let b_view = &mesh.gw("site-b").peer_states()[0];
    assert_ne!(b_view.remote, mesh.gw("site-a").local_addr());

    // Metrics expose the link.
    let metrics_addr = mesh.gw("site-a").metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let up_line = text
        .lines()
        .find(|l| l.starts_with("wanmig_peer_up{") && l.contains("peer=\"site-b\""))
        .unwrap_or_else(|| panic!("no wanmig_peer_up for site-b in\n{text}"));
    assert!(up_line.ends_with(" 1"), "{up_line}");
    assert!(text.contains("wanmig_peer_rtt_seconds{"), "{text}");
    assert!(text.contains("wanmig_peer_sent_bytes_total{"), "{text}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_form_a_full_mesh_with_one_connection_per_pair() {
    init_logging();
    let mesh = MeshBuilder::new(3)
        .link(Link::wan(Duration::from_millis(10), 0))
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(UP_TIMEOUT).await);
    for site in ["site-a", "site-b", "site-c"] {
        let gw = mesh.gw(site);
        let peers = gw.peer_states();
        assert_eq!(peers.len(), 2, "{site}");
        for p in &peers {
            assert_eq!(p.state, LinkState::Up, "{site} -> {}", p.site);
            // One connection per pair: the smaller name dialled exactly once.
            assert_eq!(p.connection_id, 1, "{site} -> {}", p.site);
            assert_eq!(
                p.role,
                if site < p.site.as_str() {
                    Role::Dial
                } else {
                    Role::Accept
                }
            );
        }
        assert_eq!(gw.refusals().total, 0, "{site}: {:?}", gw.refusals());
    }
    // Each relay carried exactly one client session (no duplicate dialling).
    for (x, y) in [
        ("site-a", "site-b"),
        ("site-a", "site-c"),
        ("site-b", "site-c"),
    ] {
        assert_eq!(mesh.relay(x, y).stats().sessions, 1, "{x}-{y}");
    }
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_detected_and_the_peering_comes_back() {
    init_logging();
    let mesh = MeshBuilder::new(2)
        .link(Link::wan(Duration::from_millis(20), 0))
        .transport("idle_timeout = \"2s\"\nkeep_alive = \"400ms\"\nreconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n")
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(UP_TIMEOUT).await);
    let relay = mesh.relay("site-a", "site-b");

    relay.cut();
    let cut_at = Instant::now();
    for site in ["site-a", "site-b"] {
        let down = mesh
            .gw(site)
            .wait_until(Duration::from_secs(30), |ps| ps[0].state != LinkState::Up)
            .await;
        assert!(down, "{site} still sees the peer up 30 s after the cut");
    }
    let detected = cut_at.elapsed();
    // idle_timeout is 2 s; generous margin for a loaded machine.
    assert!(
        detected < Duration::from_secs(8),
        "cut detected after {detected:?}"
    );
    let err = mesh.gw("site-a").peer_states()[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(err.contains("timed out"), "{err}");

    relay.restore();
    assert!(
        mesh.wait_all_up(UP_TIMEOUT).await,
        "{:#?}",
        mesh.gw("site-a").peer_states()
    );
    let a = &mesh.gw("site-a").peer_states()[0];
    assert_eq!(a.reconnects, 1);
    assert_eq!(a.connection_id, 2);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_stream_kinds_and_datagrams_reach_their_handlers() {
    init_logging();
    let mesh = MeshBuilder::new(2).start().await.unwrap();
    assert!(mesh.wait_all_up(UP_TIMEOUT).await);
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    // A kind no build defines, registered here by its raw value.
    const ECHO: StreamKind = StreamKind::Unknown(0x42);
    let mut streams = b.subscribe_streams(ECHO, 4).unwrap();
    assert!(
        b.subscribe_streams(ECHO, 4).is_err(),
        "a kind has one handler"
    );
    tokio::spawn(async move {
        while let Some(mut s) = streams.recv().await {
            assert_eq!(s.peer, "site-a");
            let data = s.recv.read_to_end(1 << 20).await.unwrap();
            s.send.write_all(&data).await.unwrap();
            s.send.finish().unwrap();
            let _ = s.send.stopped().await;
        }
    });
    // B → A works too, although A dialled: streams go both ways.
    let (mut send, mut recv) = a.open_stream("site-b", ECHO).await.unwrap();
    send.write_all(b"hello across the wan").await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        recv.read_to_end(1 << 20).await.unwrap(),
        b"hello across the wan"
    );

    // A kind nobody registered is reset with UNKNOWN_STREAM_KIND.
    let (_send, mut recv) = a
        .open_stream("site-b", StreamKind::from(0x77))
        .await
        .unwrap();
    match recv.read_to_end(1024).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(
                code.into_inner(),
                u64::from(close_code::UNKNOWN_STREAM_KIND)
            )
        }
        other => panic!("expected a reset, got {other:?}"),
    }

    // Datagrams: B → A.
    let mut dgrams = a.subscribe_datagrams(16);
    b.send_datagram("site-a", Bytes::from_static(b"frame"))
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(30), dgrams.recv())
        .await
        .expect("datagram within 30 s")
        .unwrap();
    assert_eq!(d.peer, "site-b");
    assert_eq!(&d.data[..], b"frame");

    // Unknown and disconnected peers are errors, not panics.
    assert!(a.open_stream("site-z", ECHO).await.is_err());
    assert!(a.send_datagram("site-z", Bytes::new()).is_err());
    mesh.shutdown().await;
}
