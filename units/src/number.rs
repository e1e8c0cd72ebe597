//! The number in front of a unit, read exactly: `1.5` in `1.5G` is scaled
//! by the unit in integer arithmetic, so `1.5G` is exactly 1 610 612 736
//! bytes and a 20-digit byte count is not rounded through `f64`.

use crate::error::Problem;

/// Fraction digits past this many cannot change a result counted in whole
/// bytes or bits per second (units go up to 2^60), so they are dropped.
const MAX_FRACTION_DIGITS: u32 = 24;

/// A non-negative decimal: `digits / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    digits: u128,
    scale: u32,
}

impl Decimal {
    /// `self × unit`, rounded half up to a whole number; `None` when it
    /// does not fit a `u64`.
    pub(crate) fn times(self, unit: u64) -> Option<u64> {
        let num = self.digits.checked_mul(u128::from(unit))?;
        let den = 10u128.pow(self.scale);
        let rounded = num.checked_add(den / 2)? / den;
        u64::try_from(rounded).ok()
    }
}

/// Splits `s` (already trimmed) into its leading number and the rest with
/// surrounding spaces removed (`"3.0 MiB"` → 3.0 and `"MiB"`).
pub(crate) fn split_number(s: &str) -> Result<(Decimal, &str), Problem> {
    let mut digits: u128 = 0;
    let mut scale = 0u32;
    let mut seen_digit = false;
    let mut seen_point = false;
    let mut end = s.len();
    for (i, c) in s.char_indices() {
        match c {
            '0'..='9' => {
                seen_digit = true;
                if seen_point && scale == MAX_FRACTION_DIGITS {
                    continue;
                }
                let d = u128::from(c as u8 - b'0');
                digits = digits
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(d))
                    .ok_or(Problem::TooLarge)?;
                if seen_point {
                    scale += 1;
                }
            }
            '.' if !seen_point => seen_point = true,
            _ => {
                end = i;
                break;
            }
        }
    }
    if !seen_digit {
        return Err(Problem::NoNumber);
    }
    Ok((Decimal { digits, scale }, s[end..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> (Decimal, &str) {
        split_number(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn splits_the_number_from_the_unit() {
        assert_eq!(n("3.0 MiB").1, "MiB");
        assert_eq!(n("250mbit").1, "mbit");
        assert_eq!(n("42").1, "");
        assert_eq!(n(".5k").0.times(1000), Some(500));
        assert_eq!(n("5.k").0.times(1000), Some(5000));
        assert_eq!(split_number("mbit"), Err(Problem::NoNumber));
        assert_eq!(split_number(".k"), Err(Problem::NoNumber));
        assert_eq!(split_number("-5"), Err(Problem::NoNumber));
    }

    #[test]
    fn scales_exactly_and_rounds_half_up() {
        assert_eq!(n("1.5").0.times(1 << 30), Some(1_610_612_736));
        assert_eq!(n("18446744073709551615").0.times(1), Some(u64::MAX));
        assert_eq!(n("18446744073709551616").0.times(1), None);
        assert_eq!(n("0.0005").0.times(1000), Some(1));
        assert_eq!(n("0.0004").0.times(1000), Some(0));
        assert_eq!(
            n("1.0000000000000000000000000000000001").0.times(1),
            Some(1),
            "fraction digits past the limit are dropped, not an overflow"
        );
        assert_eq!(
            split_number("1000000000000000000000000000000000000000"),
            Err(Problem::TooLarge)
        );
    }
}
