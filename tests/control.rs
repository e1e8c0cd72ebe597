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

/// `POST /v1/vms` opens only regular files under the site's `[vms]`
/// directories, without following symlinks, and answers the same whether
/// a refused file exists or not; a refused disk is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_may_name_only_files_under_the_configured_dirs() {
    use wanmig_migration::machine::{DiskConfig, VmConfig};
    init_logging();
    let mesh = MeshBuilder::new(2).start().await.unwrap();
    let ctl = mesh.control("site-a");
    // The defaults: images/ and disks/ next to the config.
    let (images, disks) = (mesh.dir().join("images"), mesh.dir().join("disks"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&disks).unwrap();
    let secret = mesh.dir().join("site-a.token");
    let victim = mesh.dir().join("victim.disk");
    std::fs::write(&victim, vec![7u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&secret, images.join("link.img")).unwrap();
    std::os::unix::fs::symlink(&victim, disks.join("link.disk")).unwrap();
    let image = |p: std::path::PathBuf| VmConfig {
        mem_image: Some(p),
        ..VmConfig::default()
    };
    let disk = |p: std::path::PathBuf| VmConfig {
        disk: Some(DiskConfig {
            path: p,
            seed: 1,
            blocks_per_iteration: 8,
            iterations: 0,
        }),
        ..VmConfig::default()
    };
    let cases = [
        ("mem_image", secret.clone(), image(secret.clone())),
        ("mem_image", "/dev/zero".into(), image("/dev/zero".into())),
        (
            "mem_image",
            images.join("link.img"),
            image(images.join("link.img")),
        ),
        (
            "mem_image",
            images.join("../site-a.token"),
            image(images.join("../site-a.token")),
        ),
        (
            "mem_image",
            images.join("missing.img"),
            image(images.join("missing.img")),
        ),
        ("disk.path", victim.clone(), disk(victim.clone())),
        (
            "disk.path",
            disks.join("link.disk"),
            disk(disks.join("link.disk")),
        ),
        (
            "disk.path",
            disks.join("missing.disk"),
            disk(disks.join("missing.disk")),
        ),
    ];
    let mut answers = std::collections::BTreeMap::new();
    for (key, path, config) in cases {
        let err = ctl.start_vm("vm1", &config).await.unwrap_err();
        let ClientError::Api {
            status, message, ..
        } = &err
        else {
            panic!("{key} {}: expected an API error, got {err}", path.display());
        };
        assert_eq!(*status, reqwest::StatusCode::BAD_REQUEST, "{message}");
        assert!(message.contains(key), "{message}");
        // Apart from the path it names, the answer is the same for every
        // refused file, existing or not.
        let path = path.display().to_string();
        assert!(message.contains(&path), "{message}");
        answers.insert(message.replace(&path, "PATH"), path);
    }
    assert_eq!(answers.len(), 2, "one answer per key: {answers:#?}");
    assert_eq!(std::fs::read(&victim).unwrap(), vec![7u8; 1 << 20]);
    assert!(ctl.vms().await.unwrap().vms.is_empty());

    // An image in images/ boots (and may be larger than memory: only
    // mem_size bytes are read).
    if wanmig_testenv::require_kvm("a_vm_may_name_only_files_under_the_configured_dirs") {
        let ok = images.join("ok.img");
        std::fs::write(&ok, vec![1u8; (32 << 20) + 4096]).unwrap();
        ctl.start_vm("vm1", &image(ok))
            .await
            .expect("an image under images/ is allowed");
    }
    mesh.shutdown().await;
}
