//! Packet loss: the [`LossModel`] knob (independent, bursty by mean rate and
//! burst length, or Gilbert-Elliott by its transition probabilities, like
//! netem's `loss random` and `loss gemodel`) and the per-link state that
//! decides, packet by packet, whether to drop.

use std::fmt;

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
    /// Losses in bursts: a mean loss rate `mean` (0..1), in bursts of
    /// `burst` packets on average (at least 1). The Gilbert-Elliott chain
    /// that loses every packet in the bad state and none in the good one,
    /// stated the way an operator specifies it (see
    /// [`LossModel::gilbert_elliott`]).
    Bursty { mean: f64, burst: f64 },
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

    /// `mean` loss: none when it is 0, independent without a burst length,
    /// [`LossModel::Bursty`] with one.
    pub fn of_mean(mean: f64, burst: Option<f64>) -> Self {
        match burst {
            _ if mean <= 0.0 => LossModel::None,
            None => LossModel::Random { p: mean },
            Some(burst) => LossModel::Bursty { mean, burst },
        }
    }

    /// The Gilbert-Elliott chain of a bursty model: every packet in the bad
    /// state is lost, none in the good one, so the mean burst is `1 / r`
    /// and the mean loss `p / (p + r)`, which gives `r = 1 / burst` and
    /// `p = mean · r / (1 − mean)`. Other models come back unchanged.
    pub fn gilbert_elliott(&self) -> Self {
        match *self {
            LossModel::Bursty { mean, burst } => {
                let r = (1.0 / burst.max(1.0)).min(1.0);
                let p = (mean * r / (1.0 - mean)).clamp(0.0, 1.0);
                LossModel::GilbertElliott {
                    p,
                    r,
                    loss_bad: 1.0,
                    loss_good: 0.0,
                }
            }
            other => other,
        }
    }

    /// Mean length of a loss burst in packets, for the bursty models.
    pub fn mean_burst(&self) -> Option<f64> {
        match *self {
            LossModel::Bursty { burst, .. } => Some(burst),
            LossModel::GilbertElliott {
                r,
                loss_bad,
                loss_good,
                ..
            } if loss_bad == 1.0 && loss_good == 0.0 && r > 0.0 => Some(1.0 / r),
            _ => None,
        }
    }

    /// Long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random { p } => p,
            LossModel::Bursty { mean, .. } => mean,
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
            LossModel::Bursty { mean, burst } => {
                check_probability("loss.mean", mean)?;
                if mean >= 1.0 {
                    return Err(NetemError::param(
                        "loss.mean",
                        "bursty loss needs a mean below 100% (the link would never deliver)",
                    ));
                }
                if !(burst.is_finite() && burst >= 1.0) {
                    return Err(NetemError::param(
                        "loss.burst",
                        format!("{burst} packets: a mean burst is at least 1 packet"),
                    ));
                }
                Ok(())
            }
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

/// How a report names the model: `none`, `random`, `bursty (Gilbert-Elliott,
/// mean burst 4 packets)`, `Gilbert-Elliott (p 1%, r 25%, 1-h 100%, 1-k 0%)`.
impl fmt::Display for LossModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LossModel::None => f.write_str("none"),
            LossModel::Random { .. } => f.write_str("random"),
            LossModel::Bursty { burst, .. } => {
                write!(f, "bursty (Gilbert-Elliott, mean burst {burst} packets)")
            }
            LossModel::GilbertElliott {
                p,
                r,
                loss_bad,
                loss_good,
            } => write!(
                f,
                "Gilbert-Elliott (p {}%, r {}%, 1-h {}%, 1-k {}%)",
                p * 100.0,
                r * 100.0,
                loss_bad * 100.0,
                loss_good * 100.0
            ),
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
            LossModel::Bursty { .. } => self.lose(&model.gilbert_elliott(), rng),
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
    fn bursty_loss_has_its_mean_and_burst() {
        let model = LossModel::of_mean(0.01, Some(4.0));
        assert_eq!(
            model,
            LossModel::Bursty {
                mean: 0.01,
                burst: 4.0
            }
        );
        assert_eq!(model.mean_loss(), 0.01);
        assert_eq!(model.mean_burst(), Some(4.0));
        let ge = model.gilbert_elliott();
        assert!((ge.mean_loss() - 0.01).abs() < 1e-12, "{ge:?}");
        assert!((ge.mean_burst().unwrap() - 4.0).abs() < 1e-12, "{ge:?}");
        let seq = run(model, 400_000);
        let lost = seq.iter().filter(|&&l| l).count();
        let bursts = seq.windows(2).filter(|w| !w[0] && w[1]).count();
        let mean_burst = lost as f64 / bursts as f64;
        assert!((mean_burst - 4.0).abs() < 0.3, "mean burst {mean_burst}");
        let rate = lost as f64 / seq.len() as f64;
        assert!((rate - 0.01).abs() < 0.001, "rate {rate}");
    }

    #[test]
    fn of_mean_picks_the_model() {
        assert_eq!(LossModel::of_mean(0.0, Some(4.0)), LossModel::None);
        assert_eq!(
            LossModel::of_mean(0.02, None),
            LossModel::Random { p: 0.02 }
        );
    }

    #[test]
    fn bursty_validation_names_the_knob() {
        let e = LossModel::of_mean(1.0, Some(4.0)).validate().unwrap_err();
        assert!(e.to_string().contains("loss.mean"), "{e}");
        let e = LossModel::of_mean(0.01, Some(0.5)).validate().unwrap_err();
        assert!(e.to_string().contains("loss.burst"), "{e}");
        let e = LossModel::of_mean(0.01, Some(f64::NAN))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("loss.burst"), "{e}");
        LossModel::of_mean(0.01, Some(1.0)).validate().unwrap();
    }

    #[test]
    fn reports_name_the_model() {
        assert_eq!(LossModel::None.to_string(), "none");
        assert_eq!(LossModel::Random { p: 0.1 }.to_string(), "random");
        assert_eq!(
            LossModel::of_mean(0.01, Some(4.0)).to_string(),
            "bursty (Gilbert-Elliott, mean burst 4 packets)"
        );
        assert!(LossModel::gemodel(0.01, Some(0.25), None, None)
            .to_string()
            .starts_with("Gilbert-Elliott (p 1%, r 25%"));
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
