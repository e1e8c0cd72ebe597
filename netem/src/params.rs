//! The knobs of one direction of an emulated link ([`LinkParams`]) and their
//! validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::NetemError;
use crate::loss::LossModel;
use crate::probability::check_probability;

/// Shape of the random delay variation added to `delay`.
///
/// All distributions are scaled so that `jitter` is their spread: uniform
/// draws from `delay ± jitter`; the others have standard deviation of about
/// `jitter` (like netem's distribution tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JitterDist {
    /// Uniform in `[-jitter, +jitter]` (netem's default without a table).
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter`.
    Normal,
    /// Pareto (shape 3, heavy upper tail), shifted to mean 0, std `jitter`.
    Pareto,
    /// netem's "paretonormal": 3/4 normal plus 1/4 pareto.
    ParetoNormal,
}

/// Parameters of one direction of a link. Build with [`LinkParams::ideal`] or
/// [`LinkParams::wan`] and adjust with the builder-style setters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkParams {
    /// One-way propagation delay added to every packet.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Spread of the random delay variation (0 = none).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Distribution of the delay variation.
    pub jitter_dist: JitterDist,
    /// Random or bursty (Gilbert-Elliott) loss.
    pub loss: LossModel,
    /// Probability (0..=1) that a packet is sent twice.
    pub duplicate: f64,
    /// Probability (0..=1) that a packet skips the delay and overtakes
    /// packets sent before it (netem's `reorder`).
    pub reorder: f64,
    /// Bottleneck rate in bits per second of payload; `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes that may wait for the bottleneck before tail drop (only with a
    /// rate). Large values emulate bufferbloat.
    pub queue_bytes: u64,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self::ideal()
    }
}

/// Smallest default queue, so a slow link still holds a few full datagrams.
const MIN_DEFAULT_QUEUE: u64 = 64 * 1024;

impl LinkParams {
    /// A perfect link: no delay, no loss, unlimited rate.
    pub fn ideal() -> Self {
        LinkParams {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_dist: JitterDist::Uniform,
            loss: LossModel::None,
            duplicate: 0.0,
            reorder: 0.0,
            rate_bps: None,
            queue_bytes: MIN_DEFAULT_QUEUE,
        }
    }

    /// One direction of a WAN path with round-trip time `rtt` and bottleneck
    /// `rate_bps`: delay `rtt / 2`, and a queue of one bandwidth-delay
    /// product (rate × rtt, the classic router buffer rule), at least 64 KiB.
    /// `rate_bps == 0` means unlimited.
    pub fn wan(rtt: Duration, rate_bps: u64) -> Self {
        let bdp = (rate_bps as f64 * rtt.as_secs_f64() / 8.0) as u64;
        LinkParams {
            delay: rtt / 2,
            rate_bps: (rate_bps > 0).then_some(rate_bps),
            queue_bytes: bdp.max(MIN_DEFAULT_QUEUE),
            ..Self::ideal()
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_jitter(mut self, jitter: Duration, dist: JitterDist) -> Self {
        self.jitter = jitter;
        self.jitter_dist = dist;
        self
    }

    pub fn with_loss(mut self, loss: LossModel) -> Self {
        self.loss = loss;
        self
    }

    /// Random (independent) loss with probability `p`.
    pub fn with_random_loss(self, p: f64) -> Self {
        self.with_loss(LossModel::Random { p })
    }

    pub fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    pub fn with_reorder(mut self, p: f64) -> Self {
        self.reorder = p;
        self
    }

    /// Sets the bottleneck rate (`0` = unlimited).
    pub fn with_rate(mut self, rate_bps: u64) -> Self {
        self.rate_bps = (rate_bps > 0).then_some(rate_bps);
        self
    }

    pub fn with_queue_bytes(mut self, bytes: u64) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// Checks every knob; the error names the bad one.
    pub fn validate(&self) -> Result<(), NetemError> {
        check_probability("duplicate", self.duplicate)?;
        check_probability("reorder", self.reorder)?;
        self.loss.validate()?;
        if self.delay > Duration::from_secs(3600) {
            return Err(NetemError::param("delay", "must be at most one hour"));
        }
        if self.jitter > Duration::from_secs(3600) {
            return Err(NetemError::param("jitter", "must be at most one hour"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_splits_rtt_and_sizes_queue_to_bdp() {
        let p = LinkParams::wan(Duration::from_millis(100), 250_000_000);
        assert_eq!(p.delay, Duration::from_millis(50));
        assert_eq!(p.rate_bps, Some(250_000_000));
        assert_eq!(p.queue_bytes, 3_125_000);
        let slow = LinkParams::wan(Duration::from_millis(10), 1_000_000);
        assert_eq!(slow.queue_bytes, MIN_DEFAULT_QUEUE);
        assert_eq!(LinkParams::wan(Duration::ZERO, 0).rate_bps, None);
    }

    #[test]
    fn validation_names_the_bad_knob() {
        let e = LinkParams::ideal()
            .with_duplicate(1.5)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`duplicate`"), "{e}");
        let e = LinkParams::ideal()
            .with_reorder(f64::NAN)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("`reorder`"), "{e}");
        let e = LinkParams::ideal()
            .with_random_loss(-0.1)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("loss"), "{e}");
        LinkParams::wan(Duration::from_millis(100), 1)
            .with_random_loss(0.01)
            .validate()
            .unwrap();
    }

    #[test]
    fn deserializes_from_config_text_with_defaults() {
        let p: LinkParams = serde_json::from_str(
            r#"{"delay":"50ms","jitter":"2ms","jitter_dist":"pareto-normal","rate_bps":250000000,
                "loss":{"model":"gemodel","p":0.01,"r":0.25,"loss_bad":1.0,"loss_good":0.0}}"#,
        )
        .unwrap();
        assert_eq!(p.delay, Duration::from_millis(50));
        assert_eq!(p.jitter_dist, JitterDist::ParetoNormal);
        assert_eq!(p.loss, LossModel::gemodel(0.01, Some(0.25), None, None));
        assert_eq!(p.queue_bytes, MIN_DEFAULT_QUEUE);
        let e = serde_json::from_str::<LinkParams>(r#"{"dealy":"5ms"}"#).unwrap_err();
        assert!(e.to_string().contains("dealy"), "{e}");
    }
}
