//! Sizes in bytes: [`parse_size`] and [`format_size`].

pub use crate::convention::SIZE_CONVENTION;
use crate::error::{Problem, UnitError};
use crate::number::split_number;

const KI: u64 = 1 << 10;

/// The byte multiple of a size unit, written in lower case (units are
/// case-insensitive: no size is ever in bits, so `mb` can only mean MB).
fn unit(lower: &str) -> Option<u64> {
    Some(match lower {
        "" | "b" | "byte" | "bytes" => 1,
        "k" | "ki" | "kib" => KI,
        "m" | "mi" | "mib" => KI.pow(2),
        "g" | "gi" | "gib" => KI.pow(3),
        "t" | "ti" | "tib" => KI.pow(4),
        "p" | "pi" | "pib" => KI.pow(5),
        "e" | "ei" | "eib" => KI.pow(6),
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "pb" => 1000u64.pow(5),
        "eb" => 1000u64.pow(6),
        _ => return None,
    })
}

/// Parses a size in bytes: `65536`, `64K` (= 64 KiB), `64M` or `64MiB`
/// (= 64 × 2^20), `2MB` (= 2 × 10^6), `1.5G` (= 1.5 × 2^30), `3.0 MiB`.
/// See [`SIZE_CONVENTION`].
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = |problem| UnitError::Size {
        input: s.to_string(),
        problem,
    };
    let (number, suffix) = split_number(s.trim()).map_err(err)?;
    let mult = unit(&suffix.to_ascii_lowercase())
        .ok_or_else(|| err(Problem::UnknownUnit(suffix.to_string())))?;
    number.times(mult).ok_or_else(|| err(Problem::TooLarge))
}

/// A byte count for humans with a binary unit and one decimal: `512 B`,
/// `3.0 MiB`, `1.5 GiB`. [`parse_size`] reads it back (to within the
/// rounding of the last digit).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < KI {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    // Move up while the value would print as 1024.0 or more.
    while v >= 1023.95 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn suffix_letters_are_binary_and_b_suffixes_decimal() {
        assert_eq!(parse_size("64M"), Ok(64 << 20), "as QEMU's -m 64M");
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64Mi"), Ok(64 << 20));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("64mb"), Ok(64_000_000));
        assert_eq!(parse_size("2kB"), Ok(2000));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        assert_eq!(parse_size("1.5G"), Ok(1_610_612_736));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size(" 1500B "), Ok(1500));
        assert_eq!(parse_size("1500 bytes"), Ok(1500));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let e = parse_size("lots").unwrap_err().to_string();
        assert!(e.contains("\"lots\"") && e.contains("64M"), "{e}");
        let e = parse_size("64X").unwrap_err();
        assert_eq!(
            e,
            UnitError::Size {
                input: "64X".into(),
                problem: Problem::UnknownUnit("X".into())
            }
        );
        assert!(e.to_string().contains("powers of 1024"), "{e}");
        let e = parse_size("10mbit").unwrap_err();
        assert!(matches!(e, UnitError::Size { .. }), "a rate is not a size");
        assert!(matches!(
            parse_size("99999999999999G"),
            Err(UnitError::Size {
                problem: Problem::TooLarge,
                ..
            })
        ));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("1.2.3").is_err());
    }

    #[test]
    fn formats_with_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(3 << 20), "3.0 MiB");
        assert_eq!(format_size(1_610_612_736), "1.5 GiB");
        assert_eq!(format_size((1 << 20) - 1), "1.0 MiB", "not 1024.0 KiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    /// Every unit the grammar lists, with its multiple.
    fn units() -> impl Strategy<Value = (&'static str, u64)> {
        prop::sample::select(vec![
            ("", 1),
            ("B", 1),
            ("K", 1 << 10),
            ("KiB", 1 << 10),
            ("kB", 1000),
            ("M", 1 << 20),
            ("Mi", 1 << 20),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("G", 1 << 30),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("T", 1 << 40),
            ("TiB", 1 << 40),
            ("TB", 1_000_000_000_000),
        ])
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(n in 0u64..=(1 << 63)) {
            let text = format_size(n);
            let back = parse_size(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // One decimal of the unit: off by at most 5% (exact below 1 KiB).
            let err = back.abs_diff(n);
            prop_assert!(err <= n / 20 + 1, "{n} -> {text} -> {back}");
            prop_assert_eq!(format_size(back), text);
        }

        #[test]
        fn a_count_and_unit_is_that_many_multiples(
            n in 0u64..1_000_000,
            (u, mult) in units(),
            space in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let mut text = format!("{n}{}{u}", if space { " " } else { "" });
            if upper {
                text = text.to_uppercase();
            }
            prop_assert_eq!(parse_size(&text), Ok(n * mult));
        }

        #[test]
        fn any_input_is_a_value_or_an_error_never_a_panic(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }
    }
}
