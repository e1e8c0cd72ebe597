//! Real QEMU 7.2 migrations (TCG) through a loopback proxy that parses and
//! re-emits every channel: precopy and multifd, of a stopped guest and of
//! a guest dirtying memory while it moves, and the variants the parser
//! relays unreduced (xbzrle, compress threads, multifd zstd). Each checks
//! that the destination accepts the stream and runs, that the proxy's
//! output equals its input, that the parser's page counts equal QEMU's own,
//! and that the destination's memory (`pmemsave`) hashes as the source's.
//!
//! Skips with a printed reason without `qemu-system-x86_64`, unless
//! `WANMIG_REQUIRE_QEMU=1` is set (then it fails).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proxy::{ChannelReport, Proxy};
use common::qemu::{differing_pages, dirtying, write_image, Mode, Role, Vm, MEM_MIB};
use serde_json::{json, Value};
use wanmig_qemu_stream::{ChannelKind, Phase, Unsupported};
use wanmig_testenv::qemu::guest::{firmware, DirtyParams, STACK_PAGE, WORKING_SET_BASE};

/// What one migration did.
struct Outcome {
    /// The source's last `query-migrate`.
    query: Value,
    reports: Vec<ChannelReport>,
    source_status: String,
    /// The destination's state after the migration (paused: it was
    /// started with `-S`) and after `cont`.
    destination_status: String,
    destination_after_cont: String,
    source_memory: String,
    destination_memory: String,
    /// Pages at which the two memories differ.
    differing: Vec<usize>,
    /// Whether the guest ran (dirtying memory) while it moved.
    live: bool,
}

impl Outcome {
    fn ram(&self, key: &str) -> u64 {
        self.query["ram"][key].as_u64().unwrap_or(0)
    }

    fn main(&self) -> &ChannelReport {
        &self.reports[0]
    }

    /// Checks what every migration must satisfy.
    fn check_moved(&self) {
        assert_eq!(
            self.query["status"], "completed",
            "migration did not complete: {}",
            self.query
        );
        assert_eq!(self.source_status, "postmigrate");
        assert_eq!(self.destination_status, "paused");
        assert_eq!(self.destination_after_cont, "running");
        if self.live {
            // QEMU 7.2 under TCG loses guest writes made after a dirty
            // bitmap sync to pages whose TLB entries stayed writable (its
            // fast sync path clears the bitmap without re-arming TCG's dirty
            // tracking): a running guest's written pages can differ, with
            // or without anything between the two QEMUs. Every other page
            // must be exact.
            let ws = WORKING_SET_BASE as usize / 4096;
            let written = |p: &usize| *p == STACK_PAGE as usize || (ws..ws + 2048).contains(p);
            assert!(
                self.differing.iter().all(written),
                "destination memory differs outside the pages the guest writes: {:?}",
                self.differing
            );
        } else {
            assert_eq!(
                self.source_memory, self.destination_memory,
                "destination memory differs from the source's at pages {:?}",
                self.differing
            );
        }
        for (i, r) in self.reports.iter().enumerate() {
            assert_eq!(r.error, None, "channel {i}");
            assert!(!r.truncated, "channel {i} ended inside a record");
            assert_eq!(
                (r.bytes_out, r.hash_out),
                (r.bytes_in, r.hash_in),
                "channel {i}: the re-emitted bytes differ from the source's"
            );
        }
        assert_eq!(self.main().kind, Some(ChannelKind::Main));
    }

    /// Pages the parser saw on all channels.
    fn pages(&self) -> u64 {
        self.reports.iter().map(|r| r.stats.pages).sum()
    }

    fn zero_pages(&self) -> u64 {
        self.reports.iter().map(|r| r.stats.zero_pages).sum()
    }

    /// Distinct pages (block, offset) sent with data, on any channel.
    fn distinct_data_pages(&self) -> u64 {
        let all: HashSet<_> = self.reports.iter().flat_map(|r| &r.data_pages).collect();
        all.len() as u64
    }

    /// Distinct pages sent at all, with data or as zero pages.
    fn distinct_pages(&self) -> u64 {
        let all: HashSet<_> = self
            .reports
            .iter()
            .flat_map(|r| r.data_pages.iter().chain(&r.zero_pages))
            .collect();
        all.len() as u64
    }

    /// The multifd bytes QEMU counts (packet headers and page data, not the
    /// hellos), from what the parser found.
    fn multifd_bytes(&self) -> u64 {
        self.reports[1..]
            .iter()
            .map(|r| r.stats.multifd_packets * (320 + 128 * 8) + r.stats.pages * 4096)
            .sum()
    }

    /// Pages of guest RAM in the RAMBlock list.
    fn ram_pages(&self) -> u64 {
        let list = self.main().block_list.as_ref().expect("no RAMBlock list");
        assert_eq!(
            list.blocks.iter().map(|b| b.used_length).sum::<u64>(),
            list.total
        );
        // Guest RAM is the block named after its memory backend.
        assert!(list
            .blocks
            .iter()
            .any(|b| b.name.as_bytes() == b"ram0" && b.used_length == MEM_MIB << 20));
        list.total / 4096
    }
}

/// The bandwidth cap while a test holds a live migration for `rounds`
/// passes: 8192 pages/s, below [`LIVE_DIRTY_RATE`]. QEMU completes once the
/// pages left fit the downtime limit at the measured bandwidth (1 ms here:
/// 32 KiB, 8 pages); a guest that dirties faster than the link drains
/// keeps that from happening on any machine, however fast QEMU's own passes
/// run (an uncapped loopback pass can end before the guest has dirtied
/// enough pages to hold the migration).
const HOLD_BANDWIDTH: u64 = 32 << 20;
/// Pages per second the live tests' guest dirties: 2.4x the hold's drain
/// rate, so a guest slowed by TCG still outruns it.
const LIVE_DIRTY_RATE: u32 = 20_000;

/// Migrates a 64 MiB guest from a source to a destination QEMU through
/// the proxy; `dirty` makes the guest dirty memory while it moves (else it
/// is stopped first), and with `rounds` the migration is held from
/// converging (a 1 ms downtime limit) until QEMU has synced its dirty
/// bitmap that many times.
fn migrate(test: &str, mode: Mode, dirty: Option<u32>, rounds: Option<u64>) -> Option<Outcome> {
    let qemu = wanmig_testenv::qemu::require_qemu(test)?;
    let dir = tempfile::Builder::new()
        .prefix("wanmig-qemu-stream-")
        .tempdir()
        .unwrap();
    let image = dir.path().join("ram.img");
    write_image(&image);
    let params = dirty.map(dirtying).unwrap_or_else(DirtyParams::idle);
    let fw = dir.path().join("firmware.bin");
    std::fs::write(&fw, firmware(&params)).unwrap();

    let mut src = Vm::start(
        &qemu,
        dir.path(),
        "source",
        Role::Source {
            image: &image,
            firmware: &fw,
        },
    );
    let mut dst = Vm::start(
        &qemu,
        dir.path(),
        "destination",
        Role::Destination { firmware: &fw },
    );
    mode.apply(&mut src.qmp);
    mode.apply(&mut dst.qmp);
    src.qmp
        .execute(
            "migrate-set-parameters",
            json!({
                "max-bandwidth": if rounds.is_some() { HOLD_BANDWIDTH } else { 1u64 << 40 },
                "downtime-limit": if rounds.is_some() { 1 } else { 300 },
            }),
        )
        .unwrap();
    let port = wanmig_testenv::free_tcp_port();
    dst.qmp
        .execute(
            "migrate-incoming",
            json!({"uri": format!("tcp:127.0.0.1:{port}")}),
        )
        .unwrap();
    let channels = match mode {
        Mode::Multifd(n) | Mode::MultifdZstd(n) => 1 + n as usize,
        _ => 1,
    };
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let proxy = Proxy::start(dest, channels, None);
    if dirty.is_some() {
        // Let the guest set up its timer and start dirtying.
        std::thread::sleep(Duration::from_millis(500));
    } else {
        src.qmp.execute("stop", json!({})).unwrap();
    }
    src.qmp
        .execute(
            "migrate",
            json!({"uri": format!("tcp:127.0.0.1:{}", proxy.port)}),
        )
        .unwrap();
    if let Mode::Postcopy { start: true } = mode {
        // Once the first pass has begun (the 1 ms downtime limit holds the
        // migration in precopy until then).
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let q = src.qmp.execute("query-migrate", json!({})).unwrap();
            if q["status"] == "active" && q["ram"]["transferred"].as_u64() > Some(4 << 20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        src.qmp
            .execute("migrate-start-postcopy", json!({}))
            .unwrap();
    }
    if let Some(n) = rounds {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let q = src.qmp.execute("query-migrate", json!({})).unwrap();
            let syncs = q["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
            let over = matches!(
                q["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            if syncs >= n || over || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        src.qmp
            .execute(
                "migrate-set-parameters",
                json!({"downtime-limit": 1000, "max-bandwidth": 1u64 << 40}),
            )
            .unwrap();
    }
    let query = src.wait_migration(Duration::from_secs(180));
    let reports = proxy.finish();
    let source_status = src.status();
    let destination_status = dst.wait_status(&["paused", "running"], Duration::from_secs(60));
    eprintln!("{test}: {query}");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "{test}: channel {i}: {:?} {:?} {:?} in {} out {}",
            r.kind, r.stats, r.phase, r.bytes_in, r.bytes_out
        );
    }
    if query["status"] != "completed" {
        eprintln!(
            "source QEMU: {}\ndestination QEMU: {}",
            src.log(),
            dst.log()
        );
    }
    let (source_memory, destination_memory, differing) = if destination_status == "paused" {
        let (a, sa) = src.memory();
        let (b, sb) = dst.memory();
        let differing = differing_pages(&a, &b, usize::MAX);
        eprintln!("{test}: memory differs at {} pages", differing.len());
        (sa, sb, differing)
    } else {
        (String::new(), "destination did not arrive".into(), vec![])
    };
    dst.qmp.execute("cont", json!({})).ok();
    let destination_after_cont = dst.wait_status(&["running"], Duration::from_secs(30));
    Some(Outcome {
        query,
        reports,
        source_status,
        destination_status,
        destination_after_cont,
        source_memory,
        destination_memory,
        differing,
        live: dirty.is_some(),
    })
}

#[test]
fn precopy_of_a_stopped_guest_keeps_every_page() {
    let Some(o) = migrate(
        "precopy_of_a_stopped_guest_keeps_every_page",
        Mode::Precopy,
        None,
        None,
    ) else {
        return;
    };
    o.check_moved();
    let m = o.main();
    assert_eq!(m.unsupported, None);
    assert_eq!(m.phase, Phase::DeviceState);
    // Each page of a stopped guest is sent once, as data or as a zero page,
    // and the parser saw exactly what QEMU counted.
    assert_eq!(o.pages(), o.ram("normal"));
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
    assert_eq!(o.pages() + o.zero_pages(), o.ram_pages());
    assert_eq!(o.distinct_pages(), o.ram_pages());
    // The image is 60% non-zero pages.
    assert!(o.pages() > o.ram_pages() / 2, "{} pages", o.pages());
}

#[test]
fn multifd_of_a_stopped_guest_keeps_every_page() {
    let Some(o) = migrate(
        "multifd_of_a_stopped_guest_keeps_every_page",
        Mode::Multifd(3),
        None,
        None,
    ) else {
        return;
    };
    o.check_moved();
    assert_eq!(o.reports.len(), 4);
    let mut ids: Vec<u8> = o.reports[1..]
        .iter()
        .map(|r| {
            assert_eq!(r.kind, Some(ChannelKind::Multifd));
            assert_eq!(r.unsupported, None);
            assert!(r.stats.multifd_syncs > 0);
            r.hello
                .expect("a multifd channel without its hello")
                .channel
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    // Data pages travel on the multifd channels, zero pages on the main one.
    assert_eq!(o.main().stats.pages, 0);
    assert!(o.reports[1..].iter().all(|r| r.stats.pages > 0));
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
    assert_eq!(o.distinct_pages(), o.ram_pages());
    // Every byte QEMU put on the multifd channels was a parsed header or
    // page. QEMU 7.2 counts each page it queued once, but can put a page
    // into two packets (multifd_queue_page reads the batch it just handed
    // to a channel thread, racing with that thread's reset of it).
    assert_eq!(o.multifd_bytes(), o.ram("multifd-bytes"));
    assert_eq!(o.distinct_data_pages(), o.ram("normal"));
    assert!(o.pages() >= o.ram("normal"));
}

#[test]
fn live_precopy_of_a_dirtying_guest_arrives_intact() {
    let Some(o) = migrate(
        "live_precopy_of_a_dirtying_guest_arrives_intact",
        Mode::Precopy,
        Some(LIVE_DIRTY_RATE),
        Some(4),
    ) else {
        return;
    };
    o.check_moved();
    assert_eq!(o.main().unsupported, None);
    assert_eq!(o.pages(), o.ram("normal"));
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
    // Dirtied pages went again after the first pass.
    assert!(o.pages() + o.zero_pages() > o.ram_pages());
    assert!(o.ram("dirty-sync-count") >= 4);
    assert!(o.main().stats.ram_parts >= 4);
    assert_eq!(o.distinct_pages(), o.ram_pages());
}

#[test]
fn live_multifd_of_a_dirtying_guest_arrives_intact() {
    let Some(o) = migrate(
        "live_multifd_of_a_dirtying_guest_arrives_intact",
        Mode::Multifd(2),
        Some(LIVE_DIRTY_RATE),
        Some(4),
    ) else {
        return;
    };
    o.check_moved();
    assert!(o.reports.iter().all(|r| r.unsupported.is_none()));
    assert_eq!(o.multifd_bytes(), o.ram("multifd-bytes"));
    assert!(o.pages() >= o.ram("normal"));
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
    assert!(o.pages() + o.zero_pages() > o.ram_pages());
    assert!(o.ram("dirty-sync-count") >= 4);
    assert!(o.reports[1..].iter().all(|r| r.stats.multifd_syncs >= 4));
    assert_eq!(o.distinct_pages(), o.ram_pages());
}

#[test]
fn xbzrle_is_relayed_unreduced_from_its_first_delta() {
    let Some(o) = migrate(
        "xbzrle_is_relayed_unreduced_from_its_first_delta",
        Mode::Xbzrle,
        Some(LIVE_DIRTY_RATE),
        Some(5),
    ) else {
        return;
    };
    o.check_moved();
    // QEMU caches pages for xbzrle from the second pass on and sends
    // deltas from the third: the passes before are parsed.
    assert_eq!(o.main().unsupported, Some(Unsupported::Xbzrle));
    assert!(o.pages() > 0);
}

#[test]
fn compress_threads_are_relayed_unreduced() {
    let Some(o) = migrate(
        "compress_threads_are_relayed_unreduced",
        Mode::Compress,
        None,
        None,
    ) else {
        return;
    };
    o.check_moved();
    assert_eq!(o.main().unsupported, Some(Unsupported::CompressThreads));
}

#[test]
fn multifd_zstd_is_relayed_unreduced() {
    let Some(o) = migrate(
        "multifd_zstd_is_relayed_unreduced",
        Mode::MultifdZstd(2),
        None,
        None,
    ) else {
        return;
    };
    o.check_moved();
    for r in &o.reports[1..] {
        assert_eq!(r.unsupported, Some(Unsupported::MultifdCompression(4)));
        assert_eq!(r.stats.pages, 0);
    }
    // Zero pages still travel on the main channel and are parsed.
    assert_eq!(o.main().unsupported, None);
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
}

#[test]
fn postcopy_enabled_but_never_started_is_parsed_and_the_return_path_relayed() {
    let Some(o) = migrate(
        "postcopy_enabled_but_never_started_is_parsed_and_the_return_path_relayed",
        Mode::Postcopy { start: false },
        Some(LIVE_DIRTY_RATE),
        Some(3),
    ) else {
        return;
    };
    // The source waits for the destination's SHUT on the return path
    // before it completes: the proxy relayed it.
    o.check_moved();
    assert_eq!(o.main().unsupported, None);
    assert_eq!(o.pages(), o.ram("normal"));
    assert_eq!(o.zero_pages(), o.ram("duplicate"));
    assert_eq!(o.distinct_pages(), o.ram_pages());
}

#[test]
fn postcopy_is_relayed_unreduced_from_the_switch() {
    let Some(o) = migrate(
        "postcopy_is_relayed_unreduced_from_the_switch",
        Mode::Postcopy { start: true },
        Some(LIVE_DIRTY_RATE),
        Some(1000),
    ) else {
        return;
    };
    o.check_moved();
    assert!(
        matches!(o.main().unsupported, Some(Unsupported::Postcopy(_))),
        "{:?}",
        o.main().unsupported
    );
    assert!(o.ram("postcopy-requests") > 0 || o.ram("postcopy-bytes") > 0);
}
