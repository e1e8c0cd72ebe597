//! Delay variation: draws one packet's delay from `delay`, `jitter` and the
//! [`JitterDist`].

use std::time::Duration;

use rand::Rng;
use rand_distr::{Distribution, Pareto, StandardNormal};

use crate::params::JitterDist;

/// Pareto shape used for the heavy-tailed distributions (netem's tables use 3).
const PARETO_SHAPE: f64 = 3.0;

/// A standardised (mean 0, std 1) Pareto draw.
fn std_pareto(rng: &mut impl Rng) -> f64 {
    // Pareto(scale 1, shape 3): mean 3/2, variance 3/4.
    let d = Pareto::new(1.0, PARETO_SHAPE).expect("constant parameters are valid");
    let mean = PARETO_SHAPE / (PARETO_SHAPE - 1.0);
    let var = PARETO_SHAPE / ((PARETO_SHAPE - 1.0).powi(2) * (PARETO_SHAPE - 2.0));
    (d.sample(rng) - mean) / var.sqrt()
}

/// One packet's delay: `delay` plus a draw scaled by `jitter`, never
/// negative.
pub(crate) fn sample_delay(
    delay: Duration,
    jitter: Duration,
    dist: JitterDist,
    rng: &mut impl Rng,
) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let unit: f64 = match dist {
        JitterDist::Uniform => rng.random_range(-1.0..=1.0),
        JitterDist::Normal => StandardNormal.sample(rng),
        JitterDist::Pareto => std_pareto(rng),
        JitterDist::ParetoNormal => {
            let n: f64 = StandardNormal.sample(rng);
            0.75 * n + 0.25 * std_pareto(rng)
        }
    };
    let secs = delay.as_secs_f64() + unit * jitter.as_secs_f64();
    if secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(secs.min(7200.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn stats(dist: JitterDist) -> (f64, f64, f64, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = Duration::from_millis(100);
        let j = Duration::from_millis(10);
        let xs: Vec<f64> = (0..50_000)
            .map(|_| sample_delay(d, j, dist, &mut rng).as_secs_f64() * 1e3)
            .collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = xs.iter().cloned().fold(f64::MAX, f64::min);
        let max = xs.iter().cloned().fold(f64::MIN, f64::max);
        (mean, sd, min, max)
    }

    #[test]
    fn uniform_stays_within_bounds() {
        let (mean, _, min, max) = stats(JitterDist::Uniform);
        assert!(min >= 90.0 && max <= 110.0, "{min}..{max}");
        assert!((mean - 100.0).abs() < 0.2, "{mean}");
    }

    #[test]
    fn normal_and_pareto_have_jitter_as_spread() {
        let (mean, sd, _, _) = stats(JitterDist::Normal);
        assert!(
            (mean - 100.0).abs() < 0.3 && (sd - 10.0).abs() < 0.5,
            "{mean} {sd}"
        );
        let (mean, _, min, max) = stats(JitterDist::Pareto);
        assert!((mean - 100.0).abs() < 0.5, "{mean}");
        // Heavy upper tail, bounded lower side.
        assert!(max - 100.0 > 3.0 * (100.0 - min), "{min}..{max}");
        let (mean, sd, _, _) = stats(JitterDist::ParetoNormal);
        assert!(
            (mean - 100.0).abs() < 0.5 && sd > 6.0 && sd < 10.0,
            "{mean} {sd}"
        );
    }

    #[test]
    fn delay_never_negative() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..1000 {
            let d = sample_delay(
                Duration::from_millis(1),
                Duration::from_millis(50),
                JitterDist::Normal,
                &mut rng,
            );
            assert!(d <= Duration::from_secs(1));
        }
    }
}
