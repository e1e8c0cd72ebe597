//! What a peer may and may not do with this site's disks and page stores,
//! through real gateways (QUIC + mutual TLS; a peer is the site its
//! certificate names): a disk is exported to one destination site only and
//! withdrawn when its migration fails before the handover; a `Done` whose
//! end-of-copy check would cover too little of the disk releases nothing;
//! the destination refuses a disk larger than its `[storage] max_disk_mib`
//! and a VM with more memory than its `[vms] max_mem_mib`; and page-store inventories stay per tenant: a peer opens only the scopes
//! it may use, and storage dedup uses the source site's own scope.

use std::path::Path;
use std::time::Duration;

use wanmig_e2e::{init_logging, Mesh, MeshBuilder};
use wanmig_gateway::migration::{MigrateRequest, Outcome};
use wanmig_gateway::peering::StreamKind;
use wanmig_gateway::storage_relay::StorageRelayError;
use wanmig_gateway::vms::VmHosting;
use wanmig_migration::machine::{DiskConfig, VmConfig};
use wanmig_migration::session::frame::{self as session_frame, OpenRequest, SESSION};
use wanmig_migration::storage::{decode_frame, Frame, Lane, MAX_FRAME, STORAGE};
use wanmig_storage::testdisk::{build_image, ImageMix};
use wanmig_storage::{disk_digest, Geometry, PresenceBitmap, ReleasePolicy, RemoteDiskConfig};

const DISK: u64 = 12 << 20;
const BS: u32 = 65536;
const WAIT: Duration = Duration::from_secs(60);

fn mix() -> ImageMix {
    ImageMix {
        text: 30,
        binary: 20,
        random: 30,
        zeros: 5,
        partial: 15,
    }
}

async fn mesh(sites: usize, extra: &str, peer_extra: &str) -> Mesh {
    init_logging();
    let mesh = MeshBuilder::new(sites)
        .extra_config(extra)
        .peer_config(peer_extra)
        .start()
        .await
        .unwrap();
    assert!(mesh.wait_all_up(WAIT).await);
    mesh
}

fn image(dir: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    build_image(&p, DISK, mix(), seed).unwrap();
    p
}

/// A storage stream from `from` to `to`, spoken frame by frame.
struct RawStorage {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl RawStorage {
    async fn open(mesh: &Mesh, from: &str, to: &str) -> Self {
        let (send, recv) = mesh
            .gw(from)
            .peering()
            .open_stream(to, StreamKind::Storage)
            .await
            .expect("a storage stream");
        RawStorage {
            send,
            recv,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, f: &Frame) {
        self.send.write_all(&f.to_bytes()).await.unwrap();
    }

    /// The next frame (skipping blocks), or `None` when the stream ended.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = wanmig_wire::split_frame(&self.buf, MAX_FRAME).unwrap() {
                let used = f.used;
                let frame = decode_frame(f.tag, f.body).unwrap();
                self.buf.drain(..used);
                match frame {
                    Some(Frame::Block { .. }) | None => continue,
                    Some(f) => return Some(f),
                }
            }
            let mut chunk = vec![0u8; 64 << 10];
            let n = tokio::time::timeout(WAIT, self.recv.read(&mut chunk))
                .await
                .expect("an answer in time")
                .ok()
                .flatten()?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Opens `name` (`disk_len` bytes in blocks of `block_size`) on the
    /// background lane; the source's first answer.
    async fn open_disk(&mut self, name: &str, disk_len: u64, block_size: u32) -> Frame {
        self.send(&Frame::Open {
            version: STORAGE.current,
            lane: Lane::Background,
            name: name.into(),
            disk_len,
            block_size,
            inventory: None,
        })
        .await;
        self.next().await.expect("an answer to Open")
    }
}

fn error_text(f: Option<Frame>) -> String {
    match f {
        Some(Frame::Error(m)) => m,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Item: any peer could read any exported disk and trigger its release.
/// An export is for its destination site only: a third site's size query,
/// `Open` and import are all told no such disk is exported to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_destination_site_may_read_an_export() {
    let mesh = mesh(3, "", "").await;
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path(), "src.img", 3);
    let a = mesh.gw("site-a").storage().clone();
    a.export("vm.img", &src, DISK, ReleasePolicy::Delete, "site-b")
        .unwrap();

    let c = mesh.gw("site-c").storage().clone();
    let e = c.exported_len("site-a", "vm.img").await.unwrap_err();
    assert!(
        matches!(&e, StorageRelayError::Refused { message, .. } if message.contains("no disk 'vm.img' is exported at this site to 'site-c'")),
        "{e}"
    );
    let mut raw = RawStorage::open(&mesh, "site-c", "site-a").await;
    let first = raw.open_disk("vm.img", DISK, BS).await;
    assert!(
        matches!(&first, Frame::Error(m) if m.contains("no disk 'vm.img'")),
        "{first:?}"
    );
    let stolen = dir.path().join("stolen.img");
    let config = RemoteDiskConfig::default();
    let e = c
        .import("site-a", "vm.img", &stolen, DISK, config)
        .await
        .expect_err("site-c's import is refused");
    assert!(e.to_string().contains("no disk 'vm.img'"), "{e}");
    assert!(!stolen.exists(), "nothing copied to site-c");
    assert!(src.exists());

    let b = mesh.gw("site-b").storage().clone();
    assert_eq!(b.exported_len("site-a", "vm.img").await.unwrap(), DISK);
    let copy = dir.path().join("copy.img");
    let import = b
        .import("site-a", "vm.img", &copy, DISK, config)
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(120), import.finish())
        .await
        .expect("the copy ends")
        .unwrap();
    assert!(r.verified);
    assert!(!src.exists(), "released to site-b by the delete policy");
    mesh.shutdown().await;
}

/// Item: a `Done` marking every block written passed a check that covered
/// nothing, and the delete policy deleted the source disk. A written set
/// that leaves less than half the disk to check lets the destination
/// finish but keeps the source copy, and says so; a wrong digest is
/// refused; an honest `Done` over half the disk still releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_that_leaves_too_little_to_check_keeps_the_source_copy() {
    let mesh = mesh(2, "", "").await;
    let dir = tempfile::tempdir().unwrap();
    let a = mesh.gw("site-a").storage().clone();
    let g = Geometry::new(DISK, BS).unwrap();
    // Every block written (the digest covers none), 60%, and half; a 60%
    // set with a wrong digest. Each case has its own export, all under the
    // delete policy: only the half-written disk may be released.
    for (share, honest, seed) in [
        (100u64, true, 5),
        (60, true, 6),
        (60, false, 7),
        (50, true, 8),
    ] {
        let name = format!("vm{share}-{honest}.img");
        let src = image(dir.path(), &name, seed);
        a.export(&name, &src, DISK, ReleasePolicy::Delete, "site-b")
            .unwrap();
        let mut written = PresenceBitmap::new(g);
        for b in 0..g.block_count() * share / 100 {
            written.set(b);
        }
        let digest = if honest {
            let source = wanmig_storage::SourceDisk::open(&src, DISK, BS).unwrap();
            source.end_of_copy_digest(&written).unwrap()
        } else {
            [0x5a; 32]
        };
        let mut raw = RawStorage::open(&mesh, "site-b", "site-a").await;
        let holes = raw.open_disk(&name, DISK, BS).await;
        assert!(matches!(holes, Frame::Holes(_)), "{name}: {holes:?}");
        raw.send(&Frame::Done {
            digest,
            written: written.to_bytes(),
        })
        .await;
        let answer = raw.next().await;
        let status = a.export_status(&name).unwrap();
        if !honest {
            let msg = error_text(answer);
            assert!(msg.contains("end-of-copy check failed"), "{name}: {msg}");
            assert!(src.exists(), "{name}: the source disk was deleted");
            assert!(!status.released && !status.verified, "{status:?}");
        } else if share > 50 {
            // The destination may finish; the source copy stays.
            assert_eq!(answer, Some(Frame::Released), "{name}");
            assert!(src.exists(), "{name}: the source disk was deleted");
            assert!(status.released && !status.verified, "{status:?}");
            let why = status.error.as_deref().unwrap_or_default();
            assert!(
                why.contains("covers only") && why.contains("source copy is kept"),
                "{name}: {why}"
            );
        } else {
            assert_eq!(answer, Some(Frame::Released), "{name}");
            assert!(!src.exists(), "{name}: released by the delete policy");
            assert!(status.verified, "{status:?}");
        }
    }
    mesh.shutdown().await;
}

/// Item: the peer picks the block size (and so the source's per-block
/// work): one outside the accepted sizes, or one that splits the disk into
/// more blocks than a copy carries, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_with_an_unusable_block_size_is_refused_with_the_reason() {
    let mesh = mesh(2, "", "").await;
    let dir = tempfile::tempdir().unwrap();
    // A sparse 512 GiB disk: 4 KiB blocks would make 2^27 of them.
    let big = dir.path().join("big.img");
    let len = 512u64 << 30;
    std::fs::File::create(&big).unwrap().set_len(len).unwrap();
    let a = mesh.gw("site-a").storage().clone();
    a.export("big.img", &big, len, ReleasePolicy::Keep, "site-b")
        .unwrap();
    let mut raw = RawStorage::open(&mesh, "site-b", "site-a").await;
    let first = raw.open_disk("big.img", len, 4096).await;
    let Frame::Error(msg) = first else {
        panic!("expected an error, got {first:?}")
    };
    assert!(
        msg.contains("more than the 67108864 a copy between sites allows")
            && msg.contains("block_size_kib"),
        "{msg}"
    );
    let mut raw = RawStorage::open(&mesh, "site-b", "site-a").await;
    let first = raw.open_disk("big.img", len, 3000).await;
    assert!(
        matches!(&first, Frame::Error(m) if m.contains("block size 3000 is invalid")),
        "{first:?}"
    );
    // The default block size is fine.
    let mut raw = RawStorage::open(&mesh, "site-b", "site-a").await;
    assert!(matches!(
        raw.open_disk("big.img", len, BS).await,
        Frame::Holes(_)
    ));
    mesh.shutdown().await;
}

/// Item (per-peer limits): nothing capped the disk size a source reports.
/// The destination refuses a disk over `[storage] max_disk_mib`, naming the
/// key, before it creates anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_over_the_destinations_max_disk_mib_is_refused() {
    let mesh = mesh(2, "[storage]\nmax_disk_mib = 8\n", "").await;
    let dir = tempfile::tempdir().unwrap();
    let src = image(dir.path(), "src.img", 7);
    let a = mesh.gw("site-a").storage().clone();
    a.export("vm.img", &src, DISK, ReleasePolicy::Keep, "site-b")
        .unwrap();
    let b = mesh.gw("site-b").storage().clone();
    let e = b.exported_disk("site-a", "vm.img").await.unwrap_err();
    assert!(
        matches!(e, StorageRelayError::TooLarge { len: DISK, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("max_disk_mib"), "{e}");
    let dst = dir.path().join("dst.img");
    let e = b
        .import("site-a", "vm.img", &dst, DISK, RemoteDiskConfig::default())
        .await
        .expect_err("refused");
    assert!(matches!(e, StorageRelayError::TooLarge { .. }), "{e}");
    assert!(!dst.exists(), "nothing created");
    mesh.shutdown().await;
}

/// Each migration `Open` makes the destination build a VM and its page
/// table of the size asked, so that size is bounded. Site-b takes VMs of
/// up to 16 MiB
/// (`[vms] max_mem_mib = 16`): a 32 MiB VM is refused, naming the key,
/// before its page store is opened; a 16 MiB VM is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_over_the_destinations_max_mem_mib_is_refused() {
    let mesh = mesh(
        2,
        "[migration]\nstore_dir = \"store-{site}\"\n\n[vms]\nmax_mem_mib = 16\n",
        "",
    )
    .await;
    let open = |id: &str, mem_size: u64| {
        session_frame::to_bytes(&session_frame::Frame::Open {
            version: SESSION.current,
            request: Box::new(OpenRequest {
                id: id.into(),
                vm: "big".into(),
                config: VmConfig {
                    mem_size,
                    ..VmConfig::default()
                },
                scope: "site-a".into(),
            }),
        })
    };
    let b_store = mesh
        .config_path("site-b")
        .parent()
        .unwrap()
        .join("store-site-b");
    match migration_answer(&mesh, &open("site-a-big", 32 << 20)).await {
        session_frame::Frame::Refuse(reason) => assert!(
            reason.contains("32 MiB")
                && reason.contains("16 MiB")
                && reason.contains("[vms] max_mem_mib"),
            "{reason}"
        ),
        other => panic!("expected a refusal, got {}", other.name()),
    }
    assert!(
        !b_store.join("site-a").exists(),
        "site-b opened a page store for a VM it refused"
    );
    assert!(mesh.gw("site-b").vm_host().list().is_empty());
    match migration_answer(&mesh, &open("site-a-fits", 16 << 20)).await {
        session_frame::Frame::Accept { .. } => {}
        other => panic!("a VM of max_mem_mib is accepted, got {}", other.name()),
    }
    mesh.shutdown().await;
}

/// Imports `name` from `from` into a fresh file at site-b; the wire bytes.
async fn copy_to_b(mesh: &Mesh, from: &str, name: &str, src: &Path, dir: &Path) -> u64 {
    let relay = mesh.gw(from).storage().clone();
    relay
        .export(name, src, DISK, ReleasePolicy::Keep, "site-b")
        .unwrap();
    let dst = dir.join(format!("copy-{name}"));
    let import = mesh
        .gw("site-b")
        .storage()
        .import(from, name, &dst, DISK, RemoteDiskConfig::default())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(120), import.finish())
        .await
        .expect("the copy ends")
        .unwrap();
    assert!(r.verified);
    assert_eq!(disk_digest(&dst).unwrap(), disk_digest(src).unwrap());
    r.wire_bytes
}

/// Item: page-store inventories leaked across tenants. At site-b, storage
/// imports dedup per source site: site-c's copy of a disk site-a sent
/// before gets no references to site-a's pages (it learns nothing of
/// them), while site-a's second copy does. A migration that names another
/// peer's scope is refused, naming the scope and the config key (before
/// the destination opens that scope's store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_store_scopes_are_per_peer_for_storage_and_memory() {
    let mesh = mesh(
        3,
        "[migration]\nstore_dir = \"store-{site}\"\n",
        "scopes = [\"shared\"]",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let one = image(dir.path(), "one.img", 21);
    let (two, three) = (dir.path().join("two.img"), dir.path().join("three.img"));
    std::fs::copy(&one, &two).unwrap();
    std::fs::copy(&one, &three).unwrap();
    let first = copy_to_b(&mesh, "site-a", "one.img", &one, dir.path()).await;
    let other_tenant = copy_to_b(&mesh, "site-c", "two.img", &two, dir.path()).await;
    let same_tenant = copy_to_b(&mesh, "site-a", "three.img", &three, dir.path()).await;
    assert!(
        other_tenant * 2 > first,
        "site-c's copy used site-a's pages: {other_tenant} vs {first} bytes"
    );
    assert!(
        same_tenant * 5 < first,
        "site-a's own scope dedups: {same_tenant} vs {first} bytes"
    );

    // Memory migrations: site-a names site-c's scope (which holds pages
    // now), then the shared one.
    let open = |scope: &str| {
        session_frame::to_bytes(&session_frame::Frame::Open {
            version: SESSION.current,
            request: Box::new(OpenRequest {
                id: format!("site-a-scope-{scope}"),
                vm: "web".into(),
                config: VmConfig::default(),
                scope: scope.into(),
            }),
        })
    };
    match migration_answer(&mesh, &open("site-c")).await {
        session_frame::Frame::Refuse(reason) => assert!(
            reason.contains("may not use dedup scope 'site-c'")
                && reason.contains("scopes")
                && reason.contains("[[peers]]"),
            "{reason}"
        ),
        other => panic!("expected a refusal, got {}", other.name()),
    }
    let b_store = mesh
        .config_path("site-b")
        .parent()
        .unwrap()
        .join("store-site-b");
    assert!(
        b_store.join("site-c").is_dir(),
        "site-c's imports fill its scope"
    );
    assert!(!b_store.join("default").exists());
    mesh.shutdown().await;
}

/// What site-b answers to a migration stream from site-a that opens with
/// `opening` (raw session bytes).
async fn migration_answer(mesh: &Mesh, opening: &[u8]) -> session_frame::Frame {
    let (mut send, mut recv) = mesh
        .gw("site-a")
        .peering()
        .open_stream("site-b", StreamKind::Migration)
        .await
        .expect("a migration stream");
    send.write_all(opening).await.unwrap();
    let mut d = session_frame::Decoder::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(f) = d.next().unwrap() {
            return f;
        }
        let n = tokio::time::timeout(WAIT, recv.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("an answer before the stream ends");
        d.feed(&chunk[..n]);
    }
}

/// Item: exports were never withdrawn, so after a failed migration the disk
/// of a VM still running at the source stayed readable (and releasable) by
/// the would-be destination. A migration refused by the destination (a VM
/// of the same name runs there) withdraws the export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_fails_before_the_handover_withdraws_the_disk_export() {
    if !wanmig_testenv::require_kvm(
        "a_migration_that_fails_before_the_handover_withdraws_the_disk_export",
    ) {
        return;
    }
    let mesh = mesh(2, "", "").await;
    // The gateways' default `[vms] disk_dirs`: `disks/` by the configs.
    let disks = mesh.dir().join("disks");
    std::fs::create_dir_all(&disks).unwrap();
    let disk = disks.join("vm1.disk");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let (a, b) = (mesh.gw("site-a"), mesh.gw("site-b"));
    let with_disk = VmConfig {
        mem_size: 32 << 20,
        disk: Some(DiskConfig {
            path: disk.clone(),
            seed: 1,
            blocks_per_iteration: 8,
            iterations: 0,
        }),
        ..VmConfig::default()
    };
    a.vm_host().start("vm1", with_disk).unwrap();
    b.vm_host()
        .start(
            "vm1",
            VmConfig {
                mem_size: 32 << 20,
                ..VmConfig::default()
            },
        )
        .unwrap();
    let rec = a
        .migration()
        .migrate(MigrateRequest {
            vm: "vm1".into(),
            to: "site-b".into(),
            downtime: None,
            scope: None,
        })
        .await
        .expect("the migration starts");
    assert_eq!(rec.outcome, Some(Outcome::FailedKeptAtSource), "{rec:?}");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("already"),
        "{rec:?}"
    );
    assert_eq!(
        a.storage().export_status("vm1"),
        None,
        "the disk of the VM still running at site-a stays exported"
    );
    let e = b.storage().exported_len("site-a", "vm1").await.unwrap_err();
    assert!(e.to_string().contains("no disk 'vm1'"), "{e}");
    assert!(disk.exists());
    mesh.shutdown().await;
}
