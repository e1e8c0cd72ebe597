//! The sans-IO model of one direction of an emulated link.
//!
//! [`LinkModel`] takes packets with [`LinkModel::submit`] (with the clock
//! reading passed in) and hands them back with [`LinkModel::poll`] once
//! their departure time has come. Per packet it decides, in order: cut
//! (drop), loss (drop), duplication (a second copy), reorder (skip the
//! queue and the delay), tail drop at the rate-limited queue, then the
//! departure time = end of serialization at the bottleneck + delay + jitter.
//! Packets that are not reordered leave in the order they came (jitter
//! never reorders, like netem with a rate). Everything random comes from a
//! seeded ChaCha stream, so a seed replays the same decisions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::jitter::sample_delay;
use crate::loss::LossState;
use crate::params::LinkParams;
use crate::probability::sane_probability;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The loss model chose to drop it.
    Loss,
    /// The rate-limited queue was full (tail drop).
    QueueFull,
    /// The link was cut.
    Cut,
}

/// What [`LinkModel::submit`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Scheduled; `copies` is 2 when it was duplicated (and both copies fit).
    Queued {
        copies: u8,
        reordered: bool,
    },
    Dropped(DropReason),
}

/// A packet whose departure time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure<P> {
    pub packet: P,
    pub len: usize,
    /// When the model scheduled it to leave (≤ the `now` it was polled at).
    pub at: Instant,
}

/// Counters of one link direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub submitted: u64,
    pub submitted_bytes: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_cut: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Packets currently scheduled but not yet delivered.
    pub in_flight: u64,
}

impl LinkStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_queue + self.dropped_cut
    }
}

#[derive(Debug)]
struct Scheduled<P> {
    packet: P,
    len: usize,
    at: Instant,
}

/// One direction of an emulated link, holding packets of type `P`.
#[derive(Debug)]
pub struct LinkModel<P> {
    params: LinkParams,
    rng: ChaCha8Rng,
    loss: LossState,
    cut: bool,
    /// Latest clock reading seen (time never goes backwards in the model).
    clock: Option<Instant>,
    /// When the bottleneck finishes serializing what it has accepted.
    link_free_at: Option<Instant>,
    /// Departure time of the last in-order packet (FIFO floor for jitter).
    last_departure: Option<Instant>,
    /// In-order packets; departure times are non-decreasing.
    fifo: VecDeque<Scheduled<P>>,
    /// Reordered packets (leave at their submit time); non-decreasing too.
    ahead: VecDeque<Scheduled<P>>,
    stats: LinkStats,
}

impl<P> LinkModel<P> {
    pub fn new(params: LinkParams, seed: u64) -> Self {
        LinkModel {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss: LossState::default(),
            cut: false,
            clock: None,
            link_free_at: None,
            last_departure: None,
            fifo: VecDeque::new(),
            ahead: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Replaces the knobs; packets already scheduled keep their times.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
    }

    /// While cut, submitted packets are dropped and scheduled packets whose
    /// time comes are dropped instead of delivered.
    pub fn set_cut(&mut self, cut: bool) {
        self.cut = cut;
    }

    pub fn is_cut(&self) -> bool {
        self.cut
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Bytes not yet serialized by the bottleneck at `now`, including the
    /// packet on the wire (0 without a rate). The queue limit applies to it.
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        match (self.params.rate_bps, self.link_free_at) {
            (Some(rate), Some(free)) if free > now => {
                ((free - now).as_secs_f64() * rate as f64 / 8.0) as u64
            }
            _ => 0,
        }
    }

    /// The earliest departure time, for arming a timer.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match (self.fifo.front(), self.ahead.front()) {
            (Some(a), Some(b)) => Some(a.at.min(b.at)),
            (Some(a), None) => Some(a.at),
            (None, Some(b)) => Some(b.at),
            (None, None) => None,
        }
    }

    /// Removes every scheduled packet without delivering it (e.g. at
    /// shutdown), returning how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.fifo.len() + self.ahead.len();
        self.fifo.clear();
        self.ahead.clear();
        self.stats.in_flight = 0;
        n
    }

    fn advance(&mut self, now: Instant) -> Instant {
        let now = match self.clock {
            Some(c) if c > now => c,
            _ => now,
        };
        self.clock = Some(now);
        now
    }

    /// The next packet due at `now`, in departure order. Packets due while
    /// the link is cut are dropped (counted as `dropped_cut`).
    pub fn poll(&mut self, now: Instant) -> Option<Departure<P>> {
        let now = self.advance(now);
        loop {
            let take_ahead = match (self.fifo.front(), self.ahead.front()) {
                (Some(f), Some(a)) => a.at <= f.at,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (None, None) => return None,
            };
            let queue = if take_ahead {
                &mut self.ahead
            } else {
                &mut self.fifo
            };
            if queue.front().is_some_and(|s| s.at > now) {
                return None;
            }
            let s = queue.pop_front()?;
            self.stats.in_flight -= 1;
            if self.cut {
                self.stats.dropped_cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            self.stats.delivered_bytes += s.len as u64;
            return Some(Departure {
                packet: s.packet,
                len: s.len,
                at: s.at,
            });
        }
    }

    /// Schedules one copy; returns false when the queue is full.
    fn schedule(&mut self, now: Instant, packet: P, len: usize, reorder: bool) -> bool {
        if reorder {
            self.ahead.push_back(Scheduled {
                packet,
                len,
                at: now,
            });
            self.stats.in_flight += 1;
            return true;
        }
        let start = match self.link_free_at {
            Some(free) if free > now => free,
            _ => now,
        };
        let sent = match self.params.rate_bps {
            Some(rate) if rate > 0 => {
                let backlog = self.backlog_bytes(now);
                if backlog > 0 && backlog + len as u64 > self.params.queue_bytes {
                    return false;
                }
                let nanos = (len as u128 * 8 * 1_000_000_000) / rate as u128;
                let done = start + Duration::from_nanos(nanos.min(u64::MAX as u128) as u64);
                self.link_free_at = Some(done);
                done
            }
            _ => now,
        };
        let p = &self.params;
        let mut at = sent + sample_delay(p.delay, p.jitter, p.jitter_dist, &mut self.rng);
        if let Some(last) = self.last_departure {
            at = at.max(last);
        }
        self.last_departure = Some(at);
        self.fifo.push_back(Scheduled { packet, len, at });
        self.stats.in_flight += 1;
        true
    }
}

impl<P: Clone> LinkModel<P> {
    /// Offers a packet of `len` bytes to the link at `now`.
    pub fn submit(&mut self, now: Instant, packet: P, len: usize) -> Verdict {
        let now = self.advance(now);
        self.stats.submitted += 1;
        self.stats.submitted_bytes += len as u64;
        if self.cut {
            self.stats.dropped_cut += 1;
            return Verdict::Dropped(DropReason::Cut);
        }
        if self.loss.lose(&self.params.loss, &mut self.rng) {
            self.stats.dropped_loss += 1;
            return Verdict::Dropped(DropReason::Loss);
        }
        let dup = draw(&mut self.rng, self.params.duplicate);
        let reorder = draw(&mut self.rng, self.params.reorder);
        let copy = dup.then(|| packet.clone());
        if !self.schedule(now, packet, len, reorder) {
            self.stats.dropped_queue += 1;
            return Verdict::Dropped(DropReason::QueueFull);
        }
        if reorder {
            self.stats.reordered += 1;
        }
        let mut copies = 1;
        if let Some(copy) = copy {
            if self.schedule(now, copy, len, false) {
                self.stats.duplicated += 1;
                copies = 2;
            } else {
                self.stats.dropped_queue += 1;
            }
        }
        Verdict::Queued {
            copies,
            reordered: reorder,
        }
    }
}

fn draw(rng: &mut ChaCha8Rng, p: f64) -> bool {
    let p = sane_probability(p);
    p > 0.0 && rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::LossModel;
    use crate::params::JitterDist;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(m: &mut LinkModel<u32>, now: Instant) -> Vec<(u32, Instant)> {
        std::iter::from_fn(|| m.poll(now).map(|d| (d.packet, d.at))).collect()
    }

    #[test]
    fn delay_holds_packet_until_due() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkParams::ideal().with_delay(ms(50)), 1);
        assert!(matches!(m.submit(t0, 1u32, 100), Verdict::Queued { .. }));
        assert_eq!(m.next_wakeup(), Some(t0 + ms(50)));
        assert!(m.poll(t0 + ms(49)).is_none());
        let d = m.poll(t0 + ms(50)).unwrap();
        assert_eq!((d.packet, d.at, d.len), (1, t0 + ms(50), 100));
        assert_eq!(m.stats().delivered, 1);
        assert_eq!(m.stats().in_flight, 0);
    }

    #[test]
    fn rate_serializes_back_to_back_packets() {
        let t0 = Instant::now();
        // 8 Mbit/s: a 1000-byte packet takes 1 ms.
        let p = LinkParams::ideal()
            .with_rate(8_000_000)
            .with_queue_bytes(1 << 20);
        let mut m = LinkModel::new(p, 1);
        for i in 0..10 {
            m.submit(t0, i, 1000);
        }
        let out = drain(&mut m, t0 + ms(100));
        let times: Vec<Duration> = out.iter().map(|(_, at)| *at - t0).collect();
        let expect: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(times, expect);
        // After the link went idle, the next packet starts fresh.
        m.submit(t0 + ms(100), 99, 1000);
        assert_eq!(m.next_wakeup(), Some(t0 + ms(101)));
    }

    #[test]
    fn full_queue_tail_drops() {
        let t0 = Instant::now();
        let p = LinkParams::ideal()
            .with_rate(8_000_000)
            .with_queue_bytes(5000);
        let mut m = LinkModel::new(p, 1);
        let verdicts: Vec<Verdict> = (0..10).map(|i| m.submit(t0, i, 1000)).collect();
        let dropped = verdicts
            .iter()
            .filter(|v| **v == Verdict::Dropped(DropReason::QueueFull))
            .count();
        // The backlog counts every byte not yet serialized: 5 packets fit.
        assert_eq!(dropped, 5, "{verdicts:?}");
        assert_eq!(m.stats().dropped_queue, 5);
        assert_eq!(m.backlog_bytes(t0), 5000);
        // Once 2 ms of backlog drained, 2000 bytes fit again, not 3000.
        assert_eq!(m.backlog_bytes(t0 + ms(2)), 3000);
        assert!(matches!(
            m.submit(t0 + ms(2), 20, 1000),
            Verdict::Queued { .. }
        ));
        assert!(matches!(
            m.submit(t0 + ms(2), 21, 1000),
            Verdict::Queued { .. }
        ));
        assert_eq!(
            m.submit(t0 + ms(2), 22, 1000),
            Verdict::Dropped(DropReason::QueueFull)
        );
    }

    #[test]
    fn jitter_without_reorder_keeps_order() {
        let t0 = Instant::now();
        let p = LinkParams::ideal()
            .with_delay(ms(20))
            .with_jitter(ms(10), JitterDist::Normal);
        let mut m = LinkModel::new(p, 5);
        for i in 0..1000u32 {
            m.submit(t0 + Duration::from_micros(100 * i as u64), i, 100);
        }
        let out = drain(&mut m, t0 + ms(1000));
        assert_eq!(out.len(), 1000);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        // The jitter did vary the delays.
        let delays: Vec<Duration> = out
            .iter()
            .map(|(i, at)| *at - (t0 + Duration::from_micros(100 * *i as u64)))
            .collect();
        assert!(delays.iter().max().unwrap() > &ms(30));
    }

    #[test]
    fn reordered_packets_overtake_delayed_ones() {
        let t0 = Instant::now();
        let p = LinkParams::ideal().with_delay(ms(10)).with_reorder(0.25);
        let mut m = LinkModel::new(p, 9);
        let mut out = Vec::new();
        for i in 0..4000u32 {
            let now = t0 + Duration::from_micros(100 * i as u64);
            m.submit(now, i, 100);
            out.extend(drain(&mut m, now));
        }
        out.extend(drain(&mut m, t0 + ms(2000)));
        assert_eq!(out.len(), 4000);
        let reordered = m.stats().reordered as f64;
        assert!((reordered / 4000.0 - 0.25).abs() < 0.03, "{reordered}");
        let inversions = out.windows(2).filter(|w| w[0].0 > w[1].0).count();
        assert!(inversions > 500, "{inversions}");
    }

    #[test]
    fn duplicates_make_two_copies() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkParams::ideal().with_duplicate(1.0), 1);
        assert_eq!(
            m.submit(t0, 7u32, 10),
            Verdict::Queued {
                copies: 2,
                reordered: false
            }
        );
        assert_eq!(drain(&mut m, t0), vec![(7, t0), (7, t0)]);
        let s = m.stats();
        assert_eq!((s.duplicated, s.delivered, s.submitted), (1, 2, 1));
    }

    #[test]
    fn cut_drops_new_and_in_flight_packets_until_restored() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkParams::ideal().with_delay(ms(10)), 1);
        m.submit(t0, 1u32, 10);
        m.set_cut(true);
        assert_eq!(m.submit(t0, 2, 10), Verdict::Dropped(DropReason::Cut));
        assert!(m.poll(t0 + ms(20)).is_none());
        m.set_cut(false);
        m.submit(t0 + ms(20), 3, 10);
        assert_eq!(drain(&mut m, t0 + ms(30)), vec![(3, t0 + ms(30))]);
        assert_eq!(m.stats().dropped_cut, 2);
    }

    #[test]
    fn same_seed_same_decisions() {
        let t0 = Instant::now();
        let p = LinkParams::ideal()
            .with_delay(ms(5))
            .with_jitter(ms(3), JitterDist::ParetoNormal)
            .with_loss(LossModel::gemodel(0.05, Some(0.3), None, None))
            .with_duplicate(0.05)
            .with_reorder(0.05);
        let run = |seed| {
            let mut m = LinkModel::new(p.clone(), seed);
            let v: Vec<Verdict> = (0..2000u32).map(|i| m.submit(t0, i, 10)).collect();
            (v, drain(&mut m, t0 + ms(100)))
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn time_going_backwards_is_tolerated() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkParams::ideal().with_delay(ms(5)), 1);
        m.submit(t0 + ms(10), 1u32, 10);
        m.submit(t0, 2, 10);
        assert_eq!(
            drain(&mut m, t0 + ms(15)),
            vec![(1, t0 + ms(15)), (2, t0 + ms(15))]
        );
    }

    #[test]
    fn random_loss_counts() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkParams::ideal().with_random_loss(0.1), 3);
        for i in 0..100_000u32 {
            m.submit(t0, i, 1);
            while m.poll(t0).is_some() {}
        }
        let s = m.stats();
        let sigma = (100_000.0f64 * 0.1 * 0.9).sqrt();
        assert!((s.dropped_loss as f64 - 10_000.0).abs() < 4.0 * sigma);
        assert_eq!(s.delivered + s.dropped_loss, 100_000);
    }
}
