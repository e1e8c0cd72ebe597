//! Reconnect pacing: capped exponential backoff with jitter (sans-IO: the
//! caller supplies the random source and does the sleeping).

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: attempt n waits a random time in
/// `[d/2, d]` with `d = min(initial × 2ⁿ, max)`. The jitter keeps several
/// gateways that lost the same link from retrying in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The un-jittered delay of the next attempt.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let lo = d / 2;
        let span = (d - lo).as_nanos() as u64;
        lo + Duration::from_nanos(if span == 0 {
            0
        } else {
            rng.random_range(0..=span)
        })
    }

    /// Call after a successful connection: the next failure starts over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(
            delays.len() > 10,
            "jitter produced only {} distinct delays",
            delays.len()
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
