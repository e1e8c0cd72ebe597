//! Unit tests of the copy planner, driven with a synthetic clock.

use super::*;
use proptest::prelude::*;

const BS: u32 = 4096;

fn planner(blocks: u64, config: PlannerConfig) -> Planner {
    let g = Geometry::new(blocks * u64::from(BS), BS).unwrap();
    Planner::new(PresenceBitmap::new(g), config)
}

fn cfg(window: u32, demand: u32, max_req: u32) -> PlannerConfig {
    PlannerConfig {
        window_blocks: window,
        demand_window_blocks: demand,
        max_request_blocks: max_req,
        window_wire_bytes: u64::from(window) * u64::from(BS),
        max_window_blocks: window,
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    }
}

fn drain_fetches(p: &mut Planner, now: Instant) -> Vec<FetchRequest> {
    std::iter::from_fn(|| p.poll_fetch(now)).collect()
}

fn drain_events(p: &mut Planner) -> Vec<Event> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

/// Delivers and stores one block, asserting the planner wanted it.
fn deliver(p: &mut Planner, now: Instant, b: u64) {
    match p.block_arrived(now, b, u64::from(BS)).unwrap() {
        Arrival::Store { .. } => p.block_stored(b),
        Arrival::Discard => panic!("block {b} unexpectedly discarded"),
    }
}

/// Answers every background request in flight, each block costing
/// `wire_len` on the wire; returns how many were in flight.
fn answer_all(p: &mut Planner, now: Instant, wire_len: u64) -> usize {
    let reqs = drain_fetches(p, now);
    let blocks: Vec<u64> = reqs.iter().flat_map(|r| r.blocks()).collect();
    for &b in &blocks {
        match p.block_arrived(now, b, wire_len).unwrap() {
            Arrival::Store { .. } => p.block_stored(b),
            Arrival::Discard => panic!("block {b} unexpectedly discarded"),
        }
    }
    blocks.len()
}

#[test]
fn the_background_window_follows_what_blocks_cost_on_the_wire() {
    let t0 = Instant::now();
    let config = PlannerConfig {
        window_blocks: 8,
        window_wire_bytes: 128 * 1024,
        max_window_blocks: 256,
        demand_window_blocks: 4,
        max_request_blocks: 16,
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    };
    let mut p = planner(100_000, config);
    // Before anything arrived: the floor.
    assert_eq!(answer_all(&mut p, t0, 4096), 8);
    // Blocks costing a whole block: 128 KiB of wire is 32 blocks.
    for _ in 0..20 {
        answer_all(&mut p, t0, 4096);
    }
    assert_eq!(p.background_window(), 32);
    // Content the far site holds (a few hundred bytes a block): the window
    // opens up to its cap, so a round trip carries far more blocks.
    for _ in 0..20 {
        answer_all(&mut p, t0, 300);
    }
    assert_eq!(p.background_window(), 256);
    assert_eq!(answer_all(&mut p, t0, 300), 256);
    // Expensive again: back down within a few round trips, and never
    // below the floor.
    for _ in 0..6 {
        answer_all(&mut p, t0, 64 * 1024);
    }
    assert_eq!(p.background_window(), 8);
    // On-demand arrivals do not move it.
    let before = p.background_window();
    let w = p.guest_read(t0, 99_000 * u64::from(BS), u64::from(BS));
    assert!(matches!(w, Ok(IoPlan::Wait(_))));
    for r in drain_fetches(&mut p, t0) {
        for b in r.blocks() {
            if r.priority == Priority::OnDemand {
                let _ = p.block_arrived(t0, b, 1).unwrap();
            }
        }
    }
    assert_eq!(p.background_window(), before);
}

#[test]
fn background_is_windowed_coalesced_and_completes() {
    let t0 = Instant::now();
    let mut p = planner(40, cfg(10, 4, 4));
    let reqs = drain_fetches(&mut p, t0);
    // 10 blocks of window in requests of at most 4 contiguous blocks.
    let firsts: Vec<(u64, u32)> = reqs.iter().map(|r| (r.first_block, r.count)).collect();
    assert_eq!(firsts, vec![(0, 4), (4, 4), (8, 2)]);
    assert!(reqs.iter().all(|r| r.priority == Priority::Background));
    assert_eq!(p.in_flight(), 10);

    // One arrival frees one slot: exactly one more block is requested.
    deliver(&mut p, t0, 0);
    let more = drain_fetches(&mut p, t0);
    assert_eq!(
        more,
        vec![FetchRequest {
            first_block: 10,
            count: 1,
            priority: Priority::Background
        }]
    );

    // Serve everything that is asked until the planner stops asking.
    let mut pending: VecDeque<u64> = (1..11).collect();
    while let Some(b) = pending.pop_front() {
        deliver(&mut p, t0, b);
        for r in drain_fetches(&mut p, t0) {
            pending.extend(r.blocks());
        }
    }
    assert!(p.is_all_local());
    assert_eq!(drain_events(&mut p), vec![Event::AllLocal]);
    assert_eq!(
        p.stats().background_blocks_requested,
        40,
        "each block requested once"
    );
    assert!(p.poll_fetch(t0).is_none());
}

#[test]
fn on_demand_goes_first_even_with_full_background_window() {
    let t0 = Instant::now();
    let mut p = planner(100, cfg(8, 4, 8));
    assert_eq!(
        drain_fetches(&mut p, t0).len(),
        1,
        "one coalesced background request of 8"
    );
    // A guest read of blocks 50..52 (3 blocks) must wait and is fetched at once.
    let plan = p.guest_read(t0, 50 * 4096 + 100, 2 * 4096).unwrap();
    let IoPlan::Wait(id) = plan else {
        panic!("expected wait")
    };
    let reqs = drain_fetches(&mut p, t0);
    assert_eq!(
        reqs,
        vec![FetchRequest {
            first_block: 50,
            count: 3,
            priority: Priority::OnDemand
        }]
    );
    // Arrivals report on-demand latency.
    let t1 = t0 + Duration::from_millis(100);
    for b in 50..53 {
        match p.block_arrived(t1, b, u64::from(BS)).unwrap() {
            Arrival::Store {
                answered: Some((Priority::OnDemand, lat)),
            } => {
                assert_eq!(lat, Duration::from_millis(100))
            }
            other => panic!("{other:?}"),
        }
        assert!(drain_events(&mut p).is_empty() || b == 52);
        p.block_stored(b);
    }
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
    assert_eq!(
        p.guest_read(t1, 50 * 4096 + 100, 2 * 4096).unwrap(),
        IoPlan::Ready
    );
}

#[test]
fn demand_queue_is_served_before_background_when_slots_open() {
    let t0 = Instant::now();
    let mut p = planner(100, cfg(2, 1, 4));
    drain_fetches(&mut p, t0); // background 0..2
    let _ = p.guest_read(t0, 70 * 4096, 4096).unwrap();
    let _ = p.guest_read(t0, 80 * 4096, 4096).unwrap();
    // Demand budget 1: block 70 goes now, 80 waits for the slot.
    assert_eq!(
        drain_fetches(&mut p, t0),
        vec![FetchRequest {
            first_block: 70,
            count: 1,
            priority: Priority::OnDemand
        }]
    );
    // A background slot opening does not let 80 jump the demand budget, but a
    // background block goes out.
    deliver(&mut p, t0, 0);
    assert_eq!(drain_fetches(&mut p, t0)[0].priority, Priority::Background);
    deliver(&mut p, t0, 70);
    assert_eq!(
        drain_fetches(&mut p, t0),
        vec![FetchRequest {
            first_block: 80,
            count: 1,
            priority: Priority::OnDemand
        }]
    );
}

#[test]
fn read_of_local_block_is_ready_and_inflight_background_is_promoted() {
    let t0 = Instant::now();
    let mut p = planner(10, cfg(4, 4, 4));
    drain_fetches(&mut p, t0); // 0..4 in flight as background
    deliver(&mut p, t0, 0);
    assert_eq!(p.guest_read(t0, 0, 4096).unwrap(), IoPlan::Ready);
    // Block 1 is in flight as background: the read asks for it on demand too,
    // and its background slot is handed back (block 4 goes out).
    let IoPlan::Wait(id) = p.guest_read(t0, 4096, 10).unwrap() else {
        panic!()
    };
    let reqs = drain_fetches(&mut p, t0);
    assert_eq!(
        reqs[0],
        FetchRequest {
            first_block: 1,
            count: 1,
            priority: Priority::OnDemand
        }
    );
    let bg: Vec<u64> = reqs[1..].iter().flat_map(|r| r.blocks()).collect();
    assert_eq!(
        bg,
        vec![4, 5],
        "slots of block 0 and of the promoted block 1"
    );
    assert_eq!(p.in_flight(), 5, "blocks 1 (on demand), 2, 3, 4, 5");
    // Whichever copy comes first is stored; the other is discarded.
    deliver(&mut p, t0, 1);
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
    assert_eq!(
        p.block_arrived(t0, 1, u64::from(BS)).unwrap(),
        Arrival::Discard
    );
    assert_eq!(p.in_flight(), 4);
}

#[test]
fn guest_write_wins_over_copy() {
    let t0 = Instant::now();
    let mut p = planner(8, cfg(8, 4, 8));
    drain_fetches(&mut p, t0); // all 8 in flight
                               // Whole-block write to block 3 while it is in flight: no wait.
    assert_eq!(p.guest_write(t0, 3 * 4096, 4096).unwrap(), IoPlan::Ready);
    p.write_done(3 * 4096, 4096);
    assert!(p.presence().is_present(3));
    // Its late arrival is discarded, never stored over the guest's bytes.
    assert_eq!(
        p.block_arrived(t0, 3, u64::from(BS)).unwrap(),
        Arrival::Discard
    );
    assert_eq!(p.stats().blocks_discarded, 1);
    assert_eq!(p.stats().blocks_written, 1);
    // Writes to blocks nobody fetched yet also win: never requested again.
    let mut q = planner(8, cfg(2, 2, 2));
    assert_eq!(
        q.guest_write(t0, 4 * 4096, 4 * 4096).unwrap(),
        IoPlan::Ready
    );
    q.write_done(4 * 4096, 4 * 4096);
    let mut asked = Vec::new();
    loop {
        let reqs = drain_fetches(&mut q, t0);
        if reqs.is_empty() {
            break;
        }
        for r in reqs {
            for b in r.blocks() {
                asked.push(b);
                deliver(&mut q, t0, b);
            }
        }
    }
    assert_eq!(asked, vec![0, 1, 2, 3]);
    assert!(q.is_all_local());
}

#[test]
fn partial_write_to_missing_block_fetches_first() {
    let t0 = Instant::now();
    let mut p = planner(8, cfg(1, 4, 1));
    // Spans the tail of block 1 (partial), all of block 2, the head of block 3 (partial).
    let (off, len) = (4096 + 512, 2 * 4096);
    let IoPlan::Wait(id) = p.guest_write(t0, off, len).unwrap() else {
        panic!("must wait")
    };
    let reqs = drain_fetches(&mut p, t0);
    let demand: Vec<u64> = reqs
        .iter()
        .filter(|r| r.priority == Priority::OnDemand)
        .flat_map(|r| r.blocks())
        .collect();
    assert_eq!(
        demand,
        vec![1, 3],
        "only the partly covered blocks are fetched"
    );
    deliver(&mut p, t0, 1);
    deliver(&mut p, t0, 3);
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
    assert_eq!(p.guest_write(t0, off, len).unwrap(), IoPlan::Ready);
    p.write_done(off, len);
    assert!(p.presence().is_present(2));
    // A partial write_done to a missing block (caller skipped the plan) does
    // not claim the block.
    p.write_done(5 * 4096 + 1, 10);
    assert!(!p.presence().is_present(5));
}

#[test]
fn link_down_requeues_and_reissues_on_demand_first() {
    let t0 = Instant::now();
    let mut p = planner(64, cfg(8, 4, 8));
    drain_fetches(&mut p, t0); // background 0..8
    let IoPlan::Wait(id) = p.guest_read(t0, 40 * 4096, 4096).unwrap() else {
        panic!()
    };
    // Block 5 is a background block a guest now waits for.
    let IoPlan::Wait(id5) = p.guest_read(t0, 5 * 4096, 1).unwrap() else {
        panic!()
    };
    drain_fetches(&mut p, t0); // demand 40
    deliver(&mut p, t0, 0);
    p.link_down();
    assert_eq!(p.in_flight(), 0);
    assert!(
        p.poll_fetch(t0).is_none(),
        "nothing is sent while the link is down"
    );
    // An arrival that was already on its way is still good data.
    deliver(&mut p, t0, 1);
    p.link_up();
    let reqs = drain_fetches(&mut p, t0);
    assert_eq!(
        reqs[0],
        FetchRequest {
            first_block: 5,
            count: 1,
            priority: Priority::OnDemand
        }
    );
    assert_eq!(
        reqs[1],
        FetchRequest {
            first_block: 40,
            count: 1,
            priority: Priority::OnDemand
        }
    );
    let bg: Vec<u64> = reqs[2..].iter().flat_map(|r| r.blocks()).collect();
    assert_eq!(
        &bg[..6],
        &[2, 3, 4, 6, 7, 8],
        "background resumes at the first lost block"
    );
    deliver(&mut p, t0, 5);
    deliver(&mut p, t0, 40);
    let ev = drain_events(&mut p);
    assert!(
        ev.contains(&Event::Ready(id)) && ev.contains(&Event::Ready(id5)),
        "{ev:?}"
    );
    assert!(p.stats().blocks_reissued >= 8);
}

/// The transport's answer to a fetch was "no session" (a guest read came
/// before the first session's streams existed, or just as a session ended):
/// that request is lost. Its blocks are asked again with the next requests,
/// on-demand first, and the waiting read completes — long before the
/// request timeout (60 s here) would have re-issued it.
#[test]
fn a_request_the_transport_could_not_send_is_asked_again_on_demand_first() {
    let t0 = Instant::now();
    let mut p = planner(64, cfg(4, 4, 4));
    let IoPlan::Wait(id) = p.guest_read(t0, 20 * 4096, 2 * 4096).unwrap() else {
        panic!()
    };
    let reqs = drain_fetches(&mut p, t0);
    let demand = FetchRequest {
        first_block: 20,
        count: 2,
        priority: Priority::OnDemand,
    };
    assert_eq!(reqs[0], demand);
    let background = reqs[1];
    assert_eq!(background.priority, Priority::Background);
    // Neither reached the source.
    p.request_not_sent(&demand);
    p.request_not_sent(&background);
    assert_eq!(
        p.in_flight(),
        reqs[2..].iter().map(|r| r.count as usize).sum::<usize>()
    );
    let t1 = t0 + Duration::from_millis(100);
    let again = drain_fetches(&mut p, t1);
    assert_eq!(again[0], demand, "the lost on-demand request goes first");
    assert_eq!(again[1], background, "the lost background blocks come next");
    // A request not sent twice for blocks that arrived or were re-queued
    // meanwhile changes nothing.
    deliver(&mut p, t1, 20);
    p.link_down();
    p.request_not_sent(&demand);
    p.link_up();
    assert_eq!(
        drain_fetches(&mut p, t1)[0],
        FetchRequest {
            first_block: 21,
            count: 1,
            priority: Priority::OnDemand
        }
    );
    deliver(&mut p, t1, 21);
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
    assert!(p.stats().blocks_reissued >= 3);
}

/// A request in flight when the session ends is lost with it: after the
/// reconnect it is asked again (on demand, before any background block) and
/// the read waiting for it completes.
#[test]
fn a_request_in_flight_at_a_disconnect_is_asked_again_after_reconnect() {
    let t0 = Instant::now();
    let mut p = planner(64, cfg(4, 4, 4));
    let IoPlan::Wait(id) = p.guest_read(t0, 30 * 4096, 1).unwrap() else {
        panic!()
    };
    let reqs = drain_fetches(&mut p, t0);
    assert_eq!(reqs[0].blocks(), 30..31);
    p.link_down();
    assert_eq!(p.in_flight(), 0);
    assert!(drain_fetches(&mut p, t0).is_empty());
    p.link_up();
    let again = drain_fetches(&mut p, t0);
    assert_eq!(
        again[0],
        FetchRequest {
            first_block: 30,
            count: 1,
            priority: Priority::OnDemand
        }
    );
    assert!(again[1..]
        .iter()
        .all(|r| r.priority == Priority::Background));
    deliver(&mut p, t0, 30);
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
}

#[test]
fn waiters_time_out_with_an_event_not_data() {
    let t0 = Instant::now();
    let mut p = planner(16, cfg(2, 2, 2));
    p.link_down();
    let IoPlan::Wait(id) = p.guest_read(t0, 9 * 4096, 3 * 4096).unwrap() else {
        panic!()
    };
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    p.handle_timeout(t0 + Duration::from_secs(4));
    assert!(drain_events(&mut p).is_empty());
    p.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(
        drain_events(&mut p),
        vec![Event::TimedOut {
            waiter: id,
            missing: 3,
            waited: Duration::from_secs(5)
        }]
    );
    assert_eq!(p.stats().waits_timed_out, 1);
    // The blocks stay queued: when the link returns they come first.
    p.link_up();
    let t1 = t0 + Duration::from_secs(6);
    let first = p.poll_fetch(t1).unwrap();
    assert_eq!(first.priority, Priority::OnDemand);
    assert_eq!(first.first_block, 9);
}

#[test]
fn unanswered_requests_are_reissued_after_request_timeout() {
    let t0 = Instant::now();
    let mut config = cfg(4, 2, 4);
    config.request_timeout = Duration::from_secs(2);
    let mut p = planner(8, config);
    assert_eq!(
        drain_fetches(&mut p, t0),
        vec![FetchRequest {
            first_block: 0,
            count: 4,
            priority: Priority::Background
        }]
    );
    assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    let t1 = t0 + Duration::from_secs(2);
    p.handle_timeout(t1);
    assert_eq!(
        drain_fetches(&mut p, t1),
        vec![FetchRequest {
            first_block: 0,
            count: 4,
            priority: Priority::Background
        }]
    );
    // The first answer is stored, the duplicate discarded.
    deliver(&mut p, t1, 0);
    assert_eq!(
        p.block_arrived(t1, 0, u64::from(BS)).unwrap(),
        Arrival::Discard
    );
}

#[test]
fn resumes_from_a_bitmap_and_rejects_foreign_blocks() {
    let g = Geometry::new(10 * 4096, BS).unwrap();
    let mut bits = PresenceBitmap::new(g);
    for b in [0, 1, 2, 5, 9] {
        bits.set(b);
    }
    let t0 = Instant::now();
    let mut p = Planner::new(bits, cfg(16, 4, 16));
    let asked: Vec<u64> = drain_fetches(&mut p, t0)
        .iter()
        .flat_map(|r| r.blocks())
        .collect();
    assert_eq!(asked, vec![3, 4, 6, 7, 8]);
    assert!(matches!(
        p.block_arrived(t0, 10, u64::from(BS)),
        Err(StorageError::NoSuchBlock { .. })
    ));
    assert!(p.guest_read(t0, 9 * 4096, 4097).is_err());

    let mut full = PresenceBitmap::new(g);
    (0..10).for_each(|b| {
        full.set(b);
    });
    let mut done = Planner::new(full, cfg(16, 4, 16));
    assert_eq!(done.poll_event(), Some(Event::AllLocal));
    assert!(done.poll_fetch(t0).is_none());
}

#[test]
fn store_failure_refetches() {
    let t0 = Instant::now();
    let mut p = planner(4, cfg(4, 4, 4));
    drain_fetches(&mut p, t0);
    assert!(matches!(
        p.block_arrived(t0, 2, u64::from(BS)).unwrap(),
        Arrival::Store { .. }
    ));
    p.block_store_failed(2);
    let again: Vec<u64> = drain_fetches(&mut p, t0)
        .iter()
        .flat_map(|r| r.blocks())
        .collect();
    assert_eq!(again, vec![2]);
}

#[derive(Debug, Clone)]
enum Op {
    Poll,
    Deliver(usize),
    Read(u64, u64),
    Write(u64, u64),
    LinkFlap,
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Poll),
        6 => (0usize..64).prop_map(Op::Deliver),
        2 => (0u64..48 * 4096, 1u64..3 * 4096).prop_map(|(o, l)| Op::Read(o, l)),
        2 => (0u64..48 * 4096, 1u64..3 * 4096).prop_map(|(o, l)| Op::Write(o, l)),
        1 => Just(Op::LinkFlap),
        1 => (0u64..3000).prop_map(Op::Tick),
    ]
}

proptest! {
    /// Whatever the interleaving, a block the guest wrote is never stored
    /// over afterwards, and serving every request eventually makes the whole
    /// disk local.
    #[test]
    fn write_wins_and_copy_always_completes(ops in proptest::collection::vec(op(), 0..200)) {
        let blocks = 50u64;
        let mut config = cfg(6, 3, 3);
        config.request_timeout = Duration::from_secs(2);
        let mut p = planner(blocks, config);
        let mut now = Instant::now();
        let mut wire: Vec<u64> = Vec::new();
        let mut written = std::collections::HashSet::new();
        let check_store = |p: &mut Planner, b: u64, now, written: &std::collections::HashSet<u64>| {
            if let Arrival::Store { .. } = p.block_arrived(now, b, u64::from(BS)).unwrap() {
                assert!(!written.contains(&b), "stored over guest-written block {b}");
                p.block_stored(b);
            }
        };
        for op in ops {
            match op {
                Op::Poll => {
                    while let Some(r) = p.poll_fetch(now) { wire.extend(r.blocks()); }
                }
                Op::Deliver(i) => {
                    if !wire.is_empty() {
                        let b = wire.remove(i % wire.len());
                        check_store(&mut p, b, now, &written);
                    }
                }
                Op::Read(o, l) => {
                    let l = l.min(blocks * 4096 - o);
                    let _ = p.guest_read(now, o, l).unwrap();
                }
                Op::Write(o, l) => {
                    let l = l.min(blocks * 4096 - o);
                    if p.guest_write(now, o, l).unwrap() == IoPlan::Ready {
                        p.write_done(o, l);
                        for b in p.geometry().blocks_touching(o, l) {
                            if p.geometry().covers_block(o, l, b) { written.insert(b); }
                        }
                    }
                }
                Op::LinkFlap => {
                    p.link_down();
                    wire.clear(); // the cut loses whatever was on the wire
                    p.link_up();
                }
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    p.handle_timeout(now);
                }
            }
        }
        // Drain: serve everything in order until done.
        let mut rounds = 0;
        while !p.is_all_local() {
            while let Some(r) = p.poll_fetch(now) { wire.extend(r.blocks()); }
            if wire.is_empty() {
                now += Duration::from_secs(3);
                p.handle_timeout(now);
            }
            for b in std::mem::take(&mut wire) {
                check_store(&mut p, b, now, &written);
            }
            rounds += 1;
            prop_assert!(rounds < 1000, "copy does not converge");
        }
        let events: Vec<Event> = std::iter::from_fn(|| p.poll_event()).collect();
        prop_assert_eq!(events.iter().filter(|e| **e == Event::AllLocal).count(), 1);
    }
}

#[test]
fn background_off_fetches_only_on_demand_until_turned_on() {
    let t0 = Instant::now();
    let mut p = planner(10, cfg(4, 4, 4));
    p.set_background(false);
    assert!(!p.is_background_enabled());
    assert!(drain_fetches(&mut p, t0).is_empty(), "no background copy");
    let IoPlan::Wait(id) = p.guest_read(t0, 3 * 4096, 4096).unwrap() else {
        panic!("block 3 is missing")
    };
    assert_eq!(
        drain_fetches(&mut p, t0),
        vec![FetchRequest {
            first_block: 3,
            count: 1,
            priority: Priority::OnDemand
        }]
    );
    deliver(&mut p, t0, 3);
    assert_eq!(drain_events(&mut p), vec![Event::Ready(id)]);
    assert!(drain_fetches(&mut p, t0).is_empty(), "still no background");
    p.set_background(true);
    let bg: Vec<u64> = drain_fetches(&mut p, t0)
        .iter()
        .flat_map(|r| r.blocks())
        .collect();
    assert_eq!(bg, vec![0, 1, 2, 4], "the window, skipping the local block");
}
