//! The QEMU baseline end to end: a 64 MiB guest holding the demo memory mix
//! and dirtying memory migrates with QEMU's multifd+zstd over an emulated
//! 20 ms / 100 Mbit/s link between two namespaces.
//!
//! Needs root (namespaces, TUN) and `qemu-system-x86_64`. Without QEMU it
//! skips with a printed reason, unless `WANMIG_REQUIRE_QEMU=1` is set (then
//! it fails); `WANMIG_REQUIRE_KVM` does not make a missing QEMU a failure.

use std::time::Duration;

use wanmig_benches::qemu::{self, QemuScenario};

/// Whether the QEMU tests can run here; prints why not when they cannot.
fn gate(name: &str) -> bool {
    if !wanmig_testenv::require_netns(name) {
        return false;
    }
    match qemu::available() {
        Ok(_) => true,
        Err(why) if std::env::var("WANMIG_REQUIRE_QEMU").is_ok_and(|v| v == "1") => {
            panic!("{name}: {why} (WANMIG_REQUIRE_QEMU=1 is set)")
        }
        Err(why) => {
            eprintln!("SKIPPED {name}: {why} (set WANMIG_REQUIRE_QEMU=1 to make this a failure)");
            false
        }
    }
}

#[test]
fn qemu_migrates_a_dirtying_guest_and_the_wire_carries_less_than_its_memory() {
    let name = "qemu_migrates_a_dirtying_guest_and_the_wire_carries_less_than_its_memory";
    if !gate(name) {
        return;
    }
    let s = QemuScenario {
        mem_bytes: 64 << 20,
        rtt: Duration::from_millis(20),
        rate_bps: 100_000_000,
        dirty_bytes_per_sec: 2 << 20,
        working_set_pages: 2048,
        ..QemuScenario::demo()
    };
    let r = qemu::run_baseline_blocking(&s).expect("the QEMU baseline runs");
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.ok, "migration not ok: {}", r.note);
    assert_eq!(r.status, "completed");
    assert_eq!(
        (r.source_status.as_str(), r.destination_status.as_str()),
        ("postmigrate", "running"),
        "the guest must run at the destination only"
    );
    assert!(
        r.memory_spot_check,
        "destination memory differs: {}",
        r.note
    );
    assert!(r.downtime_ms.is_some(), "QEMU reported no downtime");
    assert!(r.total_ms > 0);
    // The guest really dirtied memory while it ran.
    let dirty = r
        .guest_dirty_mib_s
        .expect("a dirtying guest has a measured rate");
    assert!(dirty > 0.1, "the guest dirtied only {dirty} MiB/s");
    // The stream crossed the link, and compression and zero pages made it
    // smaller than the memory QEMU counts as sent (uncompressed) — the demo
    // mix is 40 % zero pages and 10 % incompressible.
    assert!(r.wire_bytes > 0, "no bytes crossed the link");
    assert!(
        r.sent_bytes >= r.wire_bytes,
        "{} sent, {} crossed",
        r.sent_bytes,
        r.wire_bytes
    );
    assert!(
        r.wire_bytes < r.qemu_reported_bytes && r.wire_bytes < s.mem_bytes,
        "wire {} bytes, QEMU counted {} bytes, guest has {}",
        r.wire_bytes,
        r.qemu_reported_bytes,
        s.mem_bytes
    );
    // The non-zero pages alone (60 % of 64 MiB, at least a tenth of them
    // incompressible) cannot cross in under 5 % of the memory.
    assert!(
        r.wire_bytes > s.mem_bytes / 20,
        "implausibly few wire bytes: {}",
        r.wire_bytes
    );
}

#[test]
fn qemu_migration_that_cannot_finish_in_time_is_cancelled_and_the_guest_stays_at_the_source() {
    let name =
        "qemu_migration_that_cannot_finish_in_time_is_cancelled_and_the_guest_stays_at_the_source";
    if !gate(name) {
        return;
    }
    // 64 MiB at 10 Mbit/s needs well over 10 s even compressed.
    let s = QemuScenario {
        mem_bytes: 64 << 20,
        rtt: Duration::from_millis(20),
        rate_bps: 10_000_000,
        dirty_bytes_per_sec: 0,
        timeout: Some(Duration::from_secs(3)),
        ..QemuScenario::demo()
    };
    let r = qemu::run_baseline_blocking(&s).expect("the QEMU baseline runs");
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(!r.ok);
    assert_eq!(r.status, "cancelled", "{}", r.note);
    assert_eq!(
        r.source_status, "running",
        "the guest must keep running at the source"
    );
    assert!(r.note.contains("did not converge"), "{}", r.note);
    assert_eq!(r.downtime_ms, None);
    assert_eq!(r.guest_dirty_mib_s, None, "an idle guest has no dirty rate");
    assert!(r.wire_bytes > 0 && r.wire_bytes < s.mem_bytes);
}

/// A guest whose RAM is an image file (as the real-memory bench gives
/// QEMU a corpus image) arrives with the file's pages, and the file stays
/// as it was (QEMU maps it privately).
#[test]
fn qemu_migrates_a_guest_whose_ram_is_an_image_file() {
    let name = "qemu_migrates_a_guest_whose_ram_is_an_image_file";
    if !gate(name) {
        return;
    }
    const MEM: u64 = 32 << 20;
    // Every page numbered, so a page that arrived at the wrong place or
    // not at all fails the spot check.
    let image: Vec<u8> = (0..MEM / 8)
        .flat_map(|w| (w / 512 * 0x9e37_79b9 + w % 512).to_le_bytes())
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &image).unwrap();
    let s = QemuScenario {
        image: Some(file.path().to_path_buf()),
        mem_bytes: MEM,
        rtt: Duration::from_millis(20),
        rate_bps: 100_000_000,
        dirty_bytes_per_sec: 0,
        ..QemuScenario::demo()
    };
    let r = qemu::run_baseline_blocking(&s).expect("the QEMU baseline runs");
    assert!(r.ok, "migration not ok: {}", r.note);
    assert!(
        r.memory_spot_check,
        "destination memory differs from the file"
    );
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        image,
        "the image file changed"
    );
    let short = QemuScenario {
        mem_bytes: MEM * 2,
        ..s
    };
    let e = format!("{:#}", short.validate().unwrap_err());
    assert!(e.contains("scenario.image"), "{e}");
}
