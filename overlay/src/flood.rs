//! BUM (broadcast, unknown-unicast, multicast) flooding policy: the token
//! bucket that rate-limits floods, and split-horizon target selection.
//!
//! Split horizon in a full mesh of sites: a frame that entered from a local
//! port goes to every other local port of its segment and to every peer
//! site; a frame that arrived from a peer goes to local ports only, never
//! back to that site nor on to another one (that site already sent it to
//! every site itself).

use std::time::Instant;

use crate::ids::{PortId, SiteId};

/// A token bucket: `rate` tokens per second, at most `burst` banked.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// `rate_pps == 0` means unlimited.
    pub fn new(rate_pps: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_pps),
            burst,
            tokens: burst,
            last: None,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        // Never move the reference time backwards (clock readings may arrive
        // slightly out of order from different tasks).
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a flooded frame entered.
#[derive(Debug, Clone, Copy)]
pub enum Ingress<'a> {
    Local(PortId),
    Remote(&'a SiteId),
}

/// Destinations of one flooded frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FloodTargets {
    pub ports: Vec<PortId>,
    pub sites: Vec<SiteId>,
}

/// Applies split horizon: `ports` are the segment's local ports, `peers` the
/// connected sites; `to_wan` false restricts a local flood to local ports
/// (used when ARP suppression knows the target is local).
pub fn targets<'a>(
    ingress: Ingress<'_>,
    ports: &[PortId],
    peers: impl Iterator<Item = &'a SiteId>,
    to_wan: bool,
) -> FloodTargets {
    let mut t = FloodTargets::default();
    match ingress {
        Ingress::Local(in_port) => {
            t.ports = ports.iter().copied().filter(|p| *p != in_port).collect();
            if to_wan {
                t.sites = peers.cloned().collect();
            }
        }
        Ingress::Remote(_) => {
            t.ports = ports.to_vec();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 5);
        // 1 s later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.try_take(t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.try_take(t2)).count(), 1);
        // An older clock reading neither adds tokens nor breaks anything.
        assert!(!b.try_take(t1));
        let mut u = TokenBucket::new(0, 1);
        assert!((0..1000).all(|_| u.try_take(t0)));
    }

    #[test]
    fn split_horizon_never_floods_back_or_across_the_wan() {
        let ports = [PortId(1), PortId(2), PortId(3)];
        let peers: Vec<SiteId> = vec!["b".into(), "c".into()];
        let t = targets(Ingress::Local(PortId(2)), &ports, peers.iter(), true);
        assert_eq!(t.ports, vec![PortId(1), PortId(3)]);
        assert_eq!(t.sites, peers);
        let t = targets(Ingress::Local(PortId(2)), &ports, peers.iter(), false);
        assert!(t.sites.is_empty());
        let b: SiteId = "b".into();
        let t = targets(Ingress::Remote(&b), &ports, peers.iter(), true);
        assert_eq!(t.ports, ports.to_vec());
        assert!(t.sites.is_empty());
    }
}
