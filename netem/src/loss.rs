//! Packet loss: the [`LossModel`] knob (independent or Gilbert-Elliott bursty
//! loss, like netem's `loss random` and `loss gemodel`) and the per-link
//! state that decides, packet by packet, whether to drop.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::NetemError;
use crate::probability::{check_probability, sane_probability};

/// How packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LossModel {
    /// No loss.
    #[default]
    None,
    /// Each packet is lost independently with probability `p`.
    Random { p: f64 },
    /// Two-state Markov chain (netem's `loss gemodel p r 1-h 1-k`):
    /// `p` = P(good → bad), `r` = P(bad → good), `loss_bad` (netem's 1-h) =
    /// loss probability in the bad state, `loss_good` (netem's 1-k) = loss
    /// probability in the good state. With `loss_bad = 1` and
    /// `loss_good = 0` the mean loss burst is `1 / r` packets and the mean
    /// loss rate `p / (p + r)`.
    #[serde(rename = "gemodel", alias = "gilbert-elliott")]
    GilbertElliott {
        p: f64,
        r: f64,
        loss_bad: f64,
        loss_good: f64,
    },
}

impl LossModel {
    /// netem's `gemodel p [r [1-h [1-k]]]` defaults: `r = 1 - p`,
    /// `1-h = 1`, `1-k = 0`.
    pub fn gemodel(p: f64, r: Option<f64>, loss_bad: Option<f64>, loss_good: Option<f64>) -> Self {
        LossModel::GilbertElliott {
            p,
            r: r.unwrap_or(1.0 - p),
            loss_bad: loss_bad.unwrap_or(1.0),
            loss_good: loss_good.unwrap_or(0.0),
        }
    }

    /// Long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random { p } => p,
            LossModel::GilbertElliott {
                p,
                r,
                loss_bad,
                loss_good,
            } => {
                if p + r == 0.0 {
                    return loss_good;
                }
                let bad = p / (p + r);
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }

    pub fn validate(&self) -> Result<(), NetemError> {
        match *self {
            LossModel::None => Ok(()),
            LossModel::Random { p } => check_probability("loss", p),
            LossModel::GilbertElliott {
                p,
                r,
                loss_bad,
                loss_good,
            } => {
                check_probability("loss.gemodel.p", p)?;
                check_probability("loss.gemodel.r", r)?;
                check_probability("loss.gemodel.1-h", loss_bad)?;
                check_probability("loss.gemodel.1-k", loss_good)
            }
        }
    }
}

/// The loss decision state of one link direction.
#[derive(Debug, Clone, Default)]
pub(crate) struct LossState {
    bad: bool,
}

impl LossState {
    /// Decides whether the next packet is lost. Gilbert-Elliott: the loss
    /// draw uses the current state's probability, then the state moves.
    pub(crate) fn lose(&mut self, model: &LossModel, rng: &mut impl Rng) -> bool {
        match *model {
            LossModel::None => false,
            LossModel::Random { p } => {
                let p = sane_probability(p);
                p > 0.0 && rng.random::<f64>() < p
            }
            LossModel::GilbertElliott {
                p,
                r,
                loss_bad,
                loss_good,
            } => {
                let (loss_p, move_p) = if self.bad {
                    (loss_bad, r)
                } else {
                    (loss_good, p)
                };
                let lost = rng.random::<f64>() < sane_probability(loss_p);
                if rng.random::<f64>() < sane_probability(move_p) {
                    self.bad = !self.bad;
                }
                lost
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(model: LossModel, n: usize) -> Vec<bool> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut st = LossState::default();
        (0..n).map(|_| st.lose(&model, &mut rng)).collect()
    }

    #[test]
    fn random_loss_rate_within_four_sigma() {
        let n = 200_000;
        let p = 0.01;
        let lost = run(LossModel::Random { p }, n)
            .iter()
            .filter(|&&l| l)
            .count();
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (lost as f64 - n as f64 * p).abs() < 4.0 * sigma,
            "lost {lost}"
        );
    }

    #[test]
    fn gilbert_elliott_has_mean_burst_one_over_r() {
        let model = LossModel::gemodel(0.01, Some(0.25), None, None);
        let seq = run(model, 400_000);
        let lost = seq.iter().filter(|&&l| l).count();
        let bursts = seq.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = lost as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.3, "mean burst {mean_burst}");
        let rate = lost as f64 / seq.len() as f64;
        let expect = model.mean_loss();
        assert!(
            (rate - expect).abs() < 0.1 * expect,
            "rate {rate} vs {expect}"
        );
    }

    #[test]
    fn gemodel_defaults_follow_netem() {
        assert_eq!(
            LossModel::gemodel(0.1, None, None, None),
            LossModel::GilbertElliott {
                p: 0.1,
                r: 0.9,
                loss_bad: 1.0,
                loss_good: 0.0
            }
        );
    }

    #[test]
    fn invalid_probabilities_never_panic() {
        let seq = run(LossModel::Random { p: f64::NAN }, 100);
        assert!(seq.iter().all(|&l| !l));
        let seq = run(LossModel::Random { p: 7.0 }, 100);
        assert!(seq.iter().all(|&l| l));
    }
}
