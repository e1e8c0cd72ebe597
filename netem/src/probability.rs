//! Probabilities as the link knobs hold them (0..=1): the check that names
//! a bad knob, and the clamp the model applies so a value that skipped
//! validation never makes it misbehave.

use crate::error::NetemError;

/// `Ok` for a probability in `0..=1`; otherwise an error naming `field`.
pub(crate) fn check_probability(field: &str, p: f64) -> Result<(), NetemError> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(NetemError::param(
            field,
            format!("{p} is not a probability (expected 0..=1, e.g. 0.001 for 0.1%)"),
        ))
    }
}

/// Clamps a probability into `0..=1` (NaN becomes 0).
pub(crate) fn sane_probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_probability_clamps() {
        assert_eq!(sane_probability(f64::NAN), 0.0);
        assert_eq!(sane_probability(2.0), 1.0);
        assert_eq!(sane_probability(-1.0), 0.0);
        assert_eq!(sane_probability(0.25), 0.25);
    }

    #[test]
    fn check_probability_names_the_field() {
        assert!(check_probability("duplicate", 0.5).is_ok());
        let e = check_probability("duplicate", 1.5).unwrap_err().to_string();
        assert!(e.contains("`duplicate`"), "{e}");
        assert!(check_probability("reorder", f64::NAN).is_err());
    }
}
