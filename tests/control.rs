//! The control API end to end: bearer-token guard, status, and a probe that
//! moves N bytes through the WAN emulator.

use std::time::Duration;

use wanmig_e2e::{init_logging, MeshBuilder};
use wanmig_gateway::control_client::{ClientError, ControlClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_rejects_a_wrong_or_missing_token() {
    init_logging();
    let mesh = MeshBuilder::new(2).start().await.unwrap();
    let addr = mesh.gw("site-a").control_addr().unwrap();

    let wrong = ControlClient::new(addr, "not-the-token".into()).unwrap();
    match wrong.status().await {
        Err(ClientError::Unauthorized { message, .. }) => {
            assert!(message.contains("wrong"), "{message}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    match wrong.probe("site-b", 10).await {
        Err(ClientError::Unauthorized { .. }) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let raw = reqwest::get(format!("http://{addr}/v1/status"))
        .await
        .unwrap();
    assert_eq!(raw.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The token file the gateway created is private and works.
    let token_file = mesh.dir().join("site-a.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = mesh.control("site-a").status().await.unwrap();
    assert_eq!(status.site, "site-a");
    assert_eq!(status.peers.len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_gateway_that_is_not_running_says_so() {
    // A port that was free a moment ago: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = ControlClient::new(addr, "t".into())
        .unwrap()
        .status()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    assert!(err.to_string().contains("wanmig gateway"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_moves_n_bytes_through_the_emulated_link_and_reports_them() {
    init_logging();
    let rtt = Duration::from_millis(30);
    let rate = 50_000_000;
    let mesh = MeshBuilder::new(2).wan(rtt, rate).start().await.unwrap();
    assert!(mesh.wait_all_up(Duration::from_secs(20)).await);
    let relay_before = mesh
        .relay("site-a", "site-b")
        .stats()
        .forward
        .delivered_bytes;

    let n = 4_000_000;
    let report = mesh.control("site-a").probe("site-b", n).await.unwrap();
    assert_eq!(report.peer, "site-b");
    assert_eq!(report.bytes, n);
    assert!(report.goodput_mbit > 0.0);
    // Physics, not speed: the bytes crossed a 50 Mbit/s emulated link, so
    // the goodput cannot exceed it (small margin for timer granularity),
    // and the transfer took at least one RTT.
    assert!(
        report.goodput_mbit < 55.0,
        "{report:?} beat the 50 Mbit/s link"
    );
    assert!(report.duration_ms >= 30.0, "{report:?}");
    assert!(report.rtt_ms >= 29.0, "{report:?}");
    let carried = mesh
        .relay("site-a", "site-b")
        .stats()
        .forward
        .delivered_bytes
        - relay_before;
    assert!(
        carried >= n,
        "the relay carried {carried} bytes, fewer than the {n} probed"
    );

    // Probing in the other direction works too (B accepts, yet may probe A).
    let back = mesh
        .control("site-b")
        .probe("site-a", 100_000)
        .await
        .unwrap();
    assert_eq!(back.bytes, 100_000);

    // Asking for an unknown peer is a clear 4xx, not a hang.
    match mesh.control("site-a").probe("site-q", 10).await {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status.as_u16(), 400);
            assert!(message.contains("site-q"), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    mesh.shutdown().await;
}
