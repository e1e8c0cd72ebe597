//! Live migration between two VMs in one process over a unix socket pair:
//! idle and dirtying guests, digests against the unmigrated reference, and
//! the failure paths (corrupted stream, refused config, version mismatch,
//! total timeout), after which the VM must still run at the source; and
//! the round number each `Pages` message carries.

mod common;

use common::{capture, dirtying_config, reference_digests};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use wanmig_migration::admin::RunExit;
use wanmig_migration::machine::VmConfig;
use wanmig_migration::policy::{ConvergenceMode, PlannerConfig};
use wanmig_migration::shim::{Decoder, Kind, Message, ProtocolError, SHIM};
use wanmig_migration::version::{PreambleError, VersionError};
use wanmig_vmm::migration::IncomingReport;
use wanmig_vmm::protocol_io::{self, StreamError};
use wanmig_vmm::{migrate_to, receive_from, MigrateOptions, MigrationError, ReceiveOptions, Vm};

const WAIT: Duration = Duration::from_secs(60);

fn spawn_destination(
    config: VmConfig,
    mut stream: UnixStream,
) -> std::thread::JoinHandle<Result<(Vm, IncomingReport), MigrationError>> {
    std::thread::spawn(move || {
        let (_lines, sink) = capture();
        receive_from(&mut stream, config, sink, &ReceiveOptions::default())
    })
}

fn latest_iteration(vm: &Vm) -> u64 {
    vm.reports()
        .latest(wanmig_guest_abi::REPORT_MEM_ITERATION)
        .map(|r| r.values[0])
        .unwrap_or(0)
}

/// The source must keep making progress after a failed migration.
fn assert_still_running_at_source(vm: &Vm) {
    assert_eq!(vm.exit_status(), None);
    let now = latest_iteration(vm);
    assert!(
        vm.wait_mem_iteration(now + 5, WAIT).is_some(),
        "the source VM stopped making progress after the failed migration"
    );
}

#[test]
fn dirtying_guest_migrates_and_matches_the_reference() {
    if !wanmig_testenv::require_kvm("dirtying_guest_migrates_and_matches_the_reference") {
        return;
    }
    let config = dirtying_config(32, 32, Duration::ZERO);
    let w = config.memory_workload.clone().unwrap();
    let (src_lines, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    src.wait_mem_iteration(20, WAIT).unwrap_or_else(|| {
        panic!(
            "guest did not reach iteration 20: {:?} {:?}",
            src.exit_status(),
            src_lines.lock().unwrap()
        )
    });

    let (mut a, b) = UnixStream::pair().unwrap();
    let dest = spawn_destination(config.clone(), b);
    let report = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap();
    let (dst, incoming) = dest.join().unwrap().unwrap();
    eprintln!("{report:#?}");

    assert_eq!(report.memory_digest, incoming.memory_digest);
    // Both ends kept their digests as pages went by; hashing all of the
    // source's memory as it stopped gives the same.
    assert_eq!(
        report.memory_digest,
        wanmig_vmm::memory::hex(&src.memory_digest()),
        "the source's running digest is its memory's"
    );
    assert!(
        report.pause.digest_blocks <= report.final_pages,
        "only the final dirty set's blocks are hashed at the pause: {:?}",
        report.pause
    );
    assert_eq!(src.exit_status(), Some(RunExit::Stopped));
    assert_eq!(report.rounds[0].pages, 8192, "round 0 sends all of memory");
    assert!(report.total_pages_sent >= 8192);
    assert!(report.downtime < Duration::from_secs(10));

    // The guest carries on at the destination and its digests equal an
    // unmigrated run's at the same iteration numbers.
    let at_handover = latest_iteration(&src);
    let target = at_handover + 30;
    dst.wait_mem_iteration(target, WAIT)
        .expect("the guest runs on at the destination");
    let reference = reference_digests(&w, target);
    let src_samples = src.reports().mem_samples();
    let dst_samples = dst.reports().mem_samples();
    assert!(!dst_samples.is_empty());
    assert!(
        dst_samples[0].iteration <= at_handover + 1,
        "no iteration lost at the handover"
    );
    for s in src_samples
        .iter()
        .chain(dst_samples.iter().filter(|s| s.iteration <= target))
    {
        assert_eq!(
            (s.iteration, s.digest),
            reference[(s.iteration - 1) as usize],
            "digest at iteration {} differs from the unmigrated reference",
            s.iteration
        );
    }
    assert_eq!(dst.exit_status(), None);

    // And an unmigrated VM of the same configuration reports the same.
    let (_ref_lines, sink) = capture();
    let reference_vm = Vm::create(config, sink).unwrap();
    reference_vm.start().unwrap();
    reference_vm
        .wait_mem_iteration(target, WAIT)
        .expect("the reference VM runs");
    let unmigrated = reference_vm.reports().mem_samples();
    for s in dst_samples.iter().filter(|s| s.iteration <= target) {
        let r = unmigrated
            .iter()
            .find(|r| r.iteration == s.iteration)
            .expect("kept sample");
        assert_eq!(r.digest, s.digest, "iteration {}", s.iteration);
    }
}

#[test]
fn idle_guest_migrates_in_one_live_round() {
    if !wanmig_testenv::require_kvm("idle_guest_migrates_in_one_live_round") {
        return;
    }
    let config = VmConfig {
        mem_size: 16 << 20,
        ..Default::default()
    };
    let (lines, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    // Wait for the boot report so the guest is in its idle loop.
    for _ in 0..500 {
        if src
            .reports()
            .latest(wanmig_guest_abi::REPORT_BOOTED)
            .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        src.reports()
            .latest(wanmig_guest_abi::REPORT_BOOTED)
            .is_some(),
        "{:?}",
        lines.lock().unwrap()
    );
    let (mut a, b) = UnixStream::pair().unwrap();
    let dest = spawn_destination(config, b);
    let report = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap();
    let (dst, incoming) = dest.join().unwrap().unwrap();
    assert_eq!(report.memory_digest, incoming.memory_digest);
    assert_eq!(report.rounds.len(), 1, "{report:#?}");
    assert_eq!(report.mode, ConvergenceMode::Converged);
    assert!(
        report.final_pages < 64,
        "idle guest dirtied {} pages",
        report.final_pages
    );
    assert_eq!(report.total_pages_sent, 4096 + report.final_pages);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(dst.exit_status(), None);
}

/// Relays bytes from `from` to `to`, flipping the byte at stream offset
/// `flip_at`, and relays the other direction untouched.
fn corrupting_relay(from: UnixStream, to: UnixStream, flip_at: u64) {
    let (mut f_r, mut t_w) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut pos = 0u64;
        loop {
            let n = match f_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (pos..pos + n as u64).contains(&flip_at) {
                buf[(flip_at - pos) as usize] ^= 0x40;
            }
            pos += n as u64;
            if t_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = t_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut t_r, mut f_w) = (to, from);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut t_r, &mut f_w);
        let _ = f_w.shutdown(std::net::Shutdown::Write);
    });
}

#[test]
fn corrupted_page_aborts_cleanly_and_the_vm_stays_at_the_source() {
    if !wanmig_testenv::require_kvm("corrupted_page_aborts_cleanly_and_the_vm_stays_at_the_source")
    {
        return;
    }
    let config = dirtying_config(16, 16, Duration::from_millis(1));
    let (_l, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    src.wait_mem_iteration(5, WAIT).unwrap();
    let (mut a, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, b) = UnixStream::pair().unwrap();
    corrupting_relay(relay_in, relay_out, 300_000);
    let dest = spawn_destination(config, b);
    let err = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap_err();
    assert!(err.vm_kept_at_source());
    assert!(
        matches!(err, MigrationError::PeerAborted(ref r) if r.contains("digest") || r.contains("page")),
        "{err}"
    );
    let dest_err = dest
        .join()
        .unwrap()
        .err()
        .expect("the destination must not run the VM");
    eprintln!("source: {err}\ndestination: {dest_err}");
    assert_still_running_at_source(&src);
}

/// Each `Pages` message's round and page count, as a [`tap`] saw them.
type SeenRounds = std::sync::Arc<std::sync::Mutex<Vec<(u32, u64)>>>;

/// Copies `from` to `to` until either closes; with `rounds`, also decodes
/// the shim messages passing and records each `Pages` message's round and
/// page count.
fn tap(
    mut from: UnixStream,
    mut to: UnixStream,
    rounds: Option<SeenRounds>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut d = Decoder::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(rounds) = &rounds {
                d.feed(&buf[..n]);
                while let Ok(Some(m)) = d.next() {
                    if let Message::Pages { round, batch } = m {
                        rounds.lock().unwrap().push((round, batch.len() as u64));
                    }
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

#[test]
fn every_pages_message_names_the_round_the_report_counts_it_in() {
    if !wanmig_testenv::require_kvm("every_pages_message_names_the_round_the_report_counts_it_in") {
        return;
    }
    // A guest that keeps dirtying pages, so there are several rounds.
    let config = dirtying_config(32, 32, Duration::ZERO);
    let (_l, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    src.wait_mem_iteration(5, WAIT).unwrap();
    let (mut src_end, tap_src) = UnixStream::pair().unwrap();
    let (tap_dst, dst_end) = UnixStream::pair().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let forward = tap(
        tap_src.try_clone().unwrap(),
        tap_dst.try_clone().unwrap(),
        Some(seen.clone()),
    );
    let back = tap(tap_dst, tap_src, None);
    let dest = spawn_destination(config, dst_end);
    // A budget no round fits: the planner runs rounds up to its limit.
    let opts = MigrateOptions {
        planner: PlannerConfig {
            downtime_budget: Duration::from_micros(1),
            max_rounds: 3,
            auto_converge: false,
            ..PlannerConfig::default()
        },
        ..MigrateOptions::default()
    };
    let report = migrate_to(&mut src, &mut src_end, &opts).unwrap();
    dest.join().unwrap().unwrap();
    drop(src_end);
    forward.join().unwrap();
    back.join().unwrap();
    // Pages per round as the messages named them, in order.
    let mut per_round: Vec<(u32, u64)> = Vec::new();
    for &(round, pages) in seen.lock().unwrap().iter() {
        match per_round.last_mut() {
            Some((r, p)) if *r == round => *p += pages,
            _ => per_round.push((round, pages)),
        }
    }
    let mut expected: Vec<(u32, u64)> = report
        .rounds
        .iter()
        .filter(|r| r.pages > 0)
        .map(|r| (r.round, r.pages))
        .collect();
    if report.final_pages > 0 {
        expected.push((report.rounds.len() as u32, report.final_pages));
    }
    assert!(report.rounds.len() >= 2, "{report:#?}");
    assert_eq!(per_round, expected, "{report:#?}");
}

#[test]
fn garbage_instead_of_an_answer_keeps_the_vm_at_the_source() {
    if !wanmig_testenv::require_kvm("garbage_instead_of_an_answer_keeps_the_vm_at_the_source") {
        return;
    }
    let config = dirtying_config(16, 16, Duration::from_millis(1));
    let (_l, sink) = capture();
    let mut src = Vm::create(config, sink).unwrap();
    src.start().unwrap();
    src.wait_mem_iteration(3, WAIT).unwrap();
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let fake = std::thread::spawn(move || {
        let mut d = Decoder::new();
        let hello = protocol_io::read_message(&mut b, &mut d).unwrap();
        assert!(matches!(hello, Message::Hello { .. }));
        // A well-formed frame of an essential kind no build defines, then
        // garbage.
        b.write_all(&[0x6e, 0, 0, 0, 0]).unwrap();
        // (The source may have hung up already.)
        let _ = b.write_all(&[0xee; 64]);
        // Drain until the source gives up.
        let mut sink = Vec::new();
        let _ = b.read_to_end(&mut sink);
    });
    let err = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap_err();
    assert!(err.to_string().contains("message kind 110"), "{err}");
    drop(a);
    fake.join().unwrap();
    assert_still_running_at_source(&src);
}

#[test]
fn destination_refuses_a_different_machine_and_the_vm_stays() {
    if !wanmig_testenv::require_kvm("destination_refuses_a_different_machine_and_the_vm_stays") {
        return;
    }
    let config = dirtying_config(16, 8, Duration::from_millis(1));
    let (_l, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let dest = spawn_destination(
        VmConfig {
            mem_size: 32 << 20,
            ..config
        },
        b,
    );
    let err = migrate_to(&mut src, &mut a, &MigrateOptions::default()).unwrap_err();
    assert!(
        matches!(err, MigrationError::PeerAborted(ref r) if r.contains("memory size differs")),
        "{err}"
    );
    assert!(matches!(
        dest.join().unwrap(),
        Err(MigrationError::ConfigMismatch(_))
    ));
    assert_still_running_at_source(&src);
}

#[test]
fn destination_rejects_another_protocol_version_with_a_reason() {
    if !wanmig_testenv::require_kvm("destination_rejects_another_protocol_version_with_a_reason") {
        return;
    }
    let (mut a, b) = UnixStream::pair().unwrap();
    let dest = spawn_destination(VmConfig::default(), b);
    // A hello from a newer source: the same magic, the next version.
    let mut body = SHIM.magic.to_vec();
    body.extend_from_slice(&(SHIM.current + 1).to_le_bytes());
    body.extend_from_slice(b"{}");
    let mut frame = vec![u8::from(Kind::Hello)];
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    a.write_all(&frame).unwrap();
    let answer = protocol_io::read_message(&mut a, &mut Decoder::new()).unwrap();
    assert!(
        matches!(answer, Message::Abort(ref r) if r.contains("upgrade wanmig at the destination shim's site")),
        "{answer:?}"
    );
    let err = dest.join().unwrap().err().expect("the destination refuses");
    assert!(
        matches!(
            err,
            MigrationError::Stream(StreamError::Protocol(ProtocolError::Preamble(
                PreambleError::Version(VersionError::TooNew { .. })
            )))
        ),
        "{err}"
    );
}

#[test]
fn total_timeout_cancels_and_the_vm_stays() {
    if !wanmig_testenv::require_kvm("total_timeout_cancels_and_the_vm_stays") {
        return;
    }
    let config = dirtying_config(16, 64, Duration::ZERO);
    let (_l, sink) = capture();
    let mut src = Vm::create(config.clone(), sink).unwrap();
    src.start().unwrap();
    src.wait_mem_iteration(3, WAIT).unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let dest = spawn_destination(config, b);
    let opts = MigrateOptions {
        planner: PlannerConfig {
            total_timeout: Duration::from_millis(1),
            downtime_budget: Duration::from_nanos(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = migrate_to(&mut src, &mut a, &opts).unwrap_err();
    assert!(matches!(err, MigrationError::Timeout(_)), "{err}");
    assert!(matches!(
        dest.join().unwrap(),
        Err(MigrationError::PeerAborted(_))
    ));
    assert_still_running_at_source(&src);
}
