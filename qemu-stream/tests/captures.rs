//! Byte identity over real QEMU 7.2 streams captured to files: a precopy
//! stream (`migrate "exec:cat > file"`) and the four channels of a multifd
//! migration (saved by the test proxy), each parsed in many random
//! chunkings and emitted back.
//!
//! The captures are made once per QEMU version and kept under the target
//! directory (`$CARGO_TARGET_TMPDIR/qemu-stream-captures-<version>`), so
//! later runs need no QEMU. Making them needs `qemu-system-x86_64`: without
//! it (and without captures) the test skips with a printed reason, unless
//! `WANMIG_REQUIRE_QEMU=1` is set.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::proxy::Proxy;
use common::qemu::{dirtying, write_image, Mode, Role, Vm};
use common::{emit_all, run};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use wanmig_qemu_stream::{ChannelKind, Parser};
use wanmig_testenv::qemu::guest::firmware;

const FILES: [&str; 5] = [
    "precopy.bin",
    "multifd-channel-0.bin",
    "multifd-channel-1.bin",
    "multifd-channel-2.bin",
    "multifd-channel-3.bin",
];

/// The capture directory for the installed QEMU, making the captures if
/// they are missing; `None` when they are missing and QEMU is not here.
fn captures(test: &str) -> Option<PathBuf> {
    let version = wanmig_testenv::qemu::binary()
        .ok()
        .and_then(|q| std::process::Command::new(q).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .unwrap_or("unknown")
                .to_string()
        });
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if version.is_none() {
        // No QEMU: any earlier capture will do.
        let found = std::fs::read_dir(root)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("qemu-stream-captures-"))
                    && FILES.iter().all(|f| p.join(f).is_file())
            });
        if found.is_none() {
            wanmig_testenv::qemu::require_qemu(test)?;
        }
        return found;
    }
    let dir = root.join(format!(
        "qemu-stream-captures-{}",
        version.unwrap_or_default()
    ));
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    let qemu = wanmig_testenv::qemu::require_qemu(test)?;
    // Made in a scratch directory and renamed into place: a concurrent run
    // never sees half a capture.
    let work = tempfile::Builder::new()
        .prefix("qemu-stream-captures-")
        .tempdir_in(root)
        .unwrap();
    capture_precopy(&qemu, work.path());
    capture_multifd(&qemu, work.path());
    let work = work.keep();
    if std::fs::rename(&work, &dir).is_err() {
        // Another run put its captures there first.
        let _ = std::fs::remove_dir_all(&work);
    }
    Some(dir)
}

/// A dirtying guest migrated to a file.
fn capture_precopy(qemu: &Path, dir: &Path) {
    let image = dir.join("ram.img");
    write_image(&image);
    let fw = dir.join("firmware.bin");
    std::fs::write(&fw, firmware(&dirtying(2000))).unwrap();
    let mut src = Vm::start(
        qemu,
        dir,
        "source",
        Role::Source {
            image: &image,
            firmware: &fw,
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = dir.join("precopy.bin");
    src.qmp
        .execute(
            "migrate",
            json!({"uri": format!("exec:cat > {}", out.display())}),
        )
        .unwrap();
    let q = src.wait_migration(Duration::from_secs(120));
    assert_eq!(q["status"], "completed", "{q}\n{}", src.log());
    let _ = std::fs::remove_file(image);
}

/// A dirtying guest migrated with multifd ×3 through the proxy, which
/// saves each channel.
fn capture_multifd(qemu: &Path, dir: &Path) {
    let image = dir.join("ram.img");
    write_image(&image);
    let fw = dir.join("firmware.bin");
    std::fs::write(&fw, firmware(&dirtying(2000))).unwrap();
    let mut src = Vm::start(
        qemu,
        dir,
        "source",
        Role::Source {
            image: &image,
            firmware: &fw,
        },
    );
    let mut dst = Vm::start(
        qemu,
        dir,
        "destination",
        Role::Destination { firmware: &fw },
    );
    for q in [&mut src.qmp, &mut dst.qmp] {
        Mode::Multifd(3).apply(q);
    }
    let port = wanmig_testenv::free_tcp_port();
    dst.qmp
        .execute(
            "migrate-incoming",
            json!({"uri": format!("tcp:127.0.0.1:{port}")}),
        )
        .unwrap();
    let saved = dir.join("multifd");
    std::fs::create_dir(&saved).unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], port).into(), 4, Some(saved.clone()));
    std::thread::sleep(Duration::from_millis(300));
    src.qmp
        .execute(
            "migrate",
            json!({"uri": format!("tcp:127.0.0.1:{}", proxy.port)}),
        )
        .unwrap();
    let q = src.wait_migration(Duration::from_secs(120));
    assert_eq!(q["status"], "completed", "{q}\n{}", src.log());
    for (i, r) in proxy.finish().into_iter().enumerate() {
        assert_eq!(r.error, None);
        std::fs::rename(
            r.capture.unwrap(),
            dir.join(format!("multifd-channel-{i}.bin")),
        )
        .unwrap();
    }
    let _ = std::fs::remove_file(image);
}

#[test]
fn captured_qemu_channels_come_back_unchanged_in_any_chunking() {
    let Some(dir) = captures("captured_qemu_channels_come_back_unchanged_in_any_chunking") else {
        return;
    };
    for file in FILES {
        let data = std::fs::read(dir.join(file)).unwrap();
        // One pass in a single piece: what the parser finds.
        let (_, p) = run(Parser::new(), &data, &[]);
        eprintln!(
            "{file}: {} bytes, {:?}, {:?}",
            data.len(),
            p.kind(),
            p.stats()
        );
        assert_eq!(p.unsupported(), None, "{file}");
        assert!(!p.truncated(), "{file}");
        match p.kind() {
            Some(ChannelKind::Main) => assert!(p.stats().zero_pages > 0 && p.stats().ram_parts > 0),
            Some(ChannelKind::Multifd) => {
                assert!(p.stats().pages > 0 && p.stats().multifd_syncs > 0)
            }
            other => panic!("{file}: classified as {other:?}"),
        }
        let mut runner = TestRunner::new(Config {
            cases: 8,
            ..Config::default()
        });
        runner
            .run(&prop::collection::vec(1usize..70_000, 1..12), |sizes| {
                let (events, _) = run(Parser::new(), &data, &sizes);
                prop_assert!(
                    emit_all(&events) == data,
                    "{} differs after re-emission",
                    file
                );
                Ok(())
            })
            .unwrap();
    }
}
