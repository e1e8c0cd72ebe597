//! Percentages read as probabilities: [`parse_percent`].

use crate::error::{Problem, UnitError};

/// Parses a percentage into a probability: `0.1%` or `0.1` (percent, as
/// `tc` reads it) → 0.001. Accepts 0% to 100%.
pub fn parse_percent(s: &str) -> Result<f64, UnitError> {
    let err = |problem| UnitError::Percent {
        input: s.to_string(),
        problem,
    };
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    // Plain digits and one point only: f64's parser would also take "inf",
    // "NaN" and exponents, which are no way to write a percentage.
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err(Problem::NoNumber));
    }
    let v: f64 = t.parse().map_err(|_| err(Problem::NoNumber))?;
    if v > 100.0 {
        return Err(err(Problem::OutOfRange));
    }
    Ok(v / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_probabilities() {
        assert_eq!(parse_percent("0.1%"), Ok(0.001));
        assert_eq!(parse_percent("25"), Ok(0.25));
        assert_eq!(parse_percent(" 1 % "), Ok(0.01));
        assert_eq!(parse_percent("100%"), Ok(1.0));
        assert_eq!(parse_percent("0%"), Ok(0.0));
    }

    #[test]
    fn other_values_are_refused_with_an_example() {
        for s in ["150%", "x%", "-1%", "NaN", "inf", "1e2", "", "%", "1.2.3"] {
            let e = parse_percent(s).unwrap_err().to_string();
            assert!(e.contains("0.1%"), "{s}: {e}");
        }
    }
}
