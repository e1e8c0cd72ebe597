//! Rates in bits per second: [`parse_rate`] and [`format_rate`].

pub use crate::convention::RATE_CONVENTION;
use crate::error::{Problem, UnitError};
use crate::number::{split_number, Decimal};

/// How a unit counts: bits, or bytes (refused, with the bit rate to write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    Bits,
    Bytes,
}

/// Splits a unit such as `Mbit/s` into its multiple (`10^6`) and what it
/// counts, or `None` when it is not a rate unit.
fn unit(u: &str) -> Option<(u64, Counts)> {
    if u.to_ascii_lowercase().contains("byte") {
        // "MByte/s", "bytes/s": whatever the prefix, the answer is the
        // same refusal; the multiple is worked out for the suggestion.
        let at = u.find(['b', 'B']).unwrap_or(0);
        return match prefix_of(&u[..at])? {
            (mult, "") => Some((mult, Counts::Bytes)),
            _ => None,
        };
    }
    let (mult, rest) = prefix_of(u)?;
    let counts = match rest.to_ascii_lowercase().as_str() {
        "" | "bit" | "bits" | "bit/s" | "bits/s" => Counts::Bits,
        // Only the case of the b tells bits from bytes here.
        "bps" | "b/s" if rest.starts_with('b') => Counts::Bits,
        "bps" | "b/s" | "b" if rest.starts_with('B') => Counts::Bytes,
        _ => return None,
    };
    Some((mult, counts))
}

/// Reads a leading `k`/`M`/`G`/`T` (decimal) or `Ki`/`Mi`/`Gi`/`Ti`
/// (binary), any case; returns its multiple and the rest.
fn prefix_of(u: &str) -> Option<(u64, &str)> {
    let Some(first) = u.chars().next() else {
        return Some((1, u));
    };
    let power = match first.to_ascii_lowercase() {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        _ => return Some((1, u)),
    };
    let rest = &u[1..];
    match rest.strip_prefix(['i', 'I']) {
        Some(rest) => Some((1024u64.pow(power), rest)),
        None => Some((1000u64.pow(power), rest)),
    }
}

/// Parses a rate in bits per second: `250mbit`, `250Mbit/s`, `250Mbps`,
/// `250M`, `1.5gbit`, `64kibit` (= 65 536), or a bare number of bit/s;
/// `0` is zero (callers say what it means). A byte rate (`30MB/s`) is an
/// error that gives the bit rate to write. See [`RATE_CONVENTION`].
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let err = |problem| UnitError::Rate {
        input: s.to_string(),
        problem,
    };
    let (number, suffix) = split_number(s.trim()).map_err(err)?;
    let (mult, counts) = unit(suffix).ok_or_else(|| err(Problem::UnknownUnit(suffix.into())))?;
    match counts {
        Counts::Bits => number.times(mult).ok_or_else(|| err(Problem::TooLarge)),
        Counts::Bytes => Err(byte_rate(s, number, mult)),
    }
}

/// The refusal of a byte rate, with the same rate in bits per second.
fn byte_rate(input: &str, number: Decimal, mult: u64) -> UnitError {
    let bits = number
        .times(mult)
        .and_then(|bytes| bytes.checked_mul(8))
        .map(exact_rate)
        .unwrap_or_else(|| "a rate in bits per second".into());
    UnitError::ByteRate {
        input: input.to_string(),
        bits,
    }
}

/// `bps` with the largest decimal prefix that keeps it whole: `80mbit`,
/// `83886080bit`.
fn exact_rate(bps: u64) -> String {
    for (div, prefix) in [
        (1_000_000_000_000, "t"),
        (1_000_000_000, "g"),
        (1_000_000, "m"),
        (1_000, "k"),
    ] {
        if bps >= div && bps % div == 0 {
            return format!("{}{prefix}bit", bps / div);
        }
    }
    format!("{bps}bit")
}

/// A rate for humans with a decimal unit: `812 bit/s`, `64.0 kbit/s`,
/// `250.0 Mbit/s`, `1.25 Gbit/s`. Negative or NaN rates print as zero.
/// [`parse_rate`] reads it back (to within the rounding of the last digit).
pub fn format_rate(bits_per_sec: f64) -> String {
    let r = if bits_per_sec.is_nan() {
        0.0
    } else {
        bits_per_sec.max(0.0)
    };
    if r >= 999.995e9 {
        format!("{:.2} Tbit/s", r / 1e12)
    } else if r >= 999.95e6 {
        format!("{:.2} Gbit/s", r / 1e9)
    } else if r >= 999.95e3 {
        format!("{:.1} Mbit/s", r / 1e6)
    } else if r >= 999.5 {
        format!("{:.1} kbit/s", r / 1e3)
    } else {
        format!("{r:.0} bit/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_spelling_of_megabits_per_second() {
        for s in [
            "250mbit",
            "250Mbit",
            "250MBIT",
            "250Mbit/s",
            "250mbps",
            "250Mbps",
            "250Mb/s",
            "250M",
            "250m",
            "250 Mbit/s",
            "250000kbit",
            "0.25gbit",
            "250000000",
            "250000000bit/s",
            "250000000bps",
        ] {
            assert_eq!(parse_rate(s), Ok(250_000_000), "{s}");
        }
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100kbit"), Ok(100_000));
        assert_eq!(parse_rate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("64kibit"), Ok(65_536));
        assert_eq!(parse_rate("1Gibit/s"), Ok(1 << 30));
        assert_eq!(parse_rate("2tbit"), Ok(2_000_000_000_000));
        assert_eq!(parse_rate("9600"), Ok(9600));
        assert_eq!(parse_rate("0"), Ok(0));
    }

    #[test]
    fn mbps_is_megabits_not_tcs_megabytes() {
        assert_eq!(parse_rate("10mbps"), Ok(10_000_000));
        assert_eq!(parse_rate("10Mbps"), parse_rate("10mbit"));
    }

    #[test]
    fn byte_rates_are_refused_with_the_bit_rate_to_write() {
        for (s, bits) in [
            ("10MB/s", "80mbit"),
            ("10MBps", "80mbit"),
            ("10MBPS", "80mbit"),
            ("1.5GB/s", "12gbit"),
            ("10 MByte/s", "80mbit"),
            ("100 bytes/s", "800bit"),
            ("10MiB/s", "83886080bit"),
            ("10MB", "80mbit"),
        ] {
            let e = parse_rate(s).unwrap_err();
            assert_eq!(
                e,
                UnitError::ByteRate {
                    input: s.into(),
                    bits: bits.into()
                },
                "{s}"
            );
            assert!(e.to_string().contains("bits per second"), "{e}");
        }
    }

    #[test]
    fn errors_say_what_is_accepted() {
        let e = parse_rate("fast").unwrap_err().to_string();
        assert!(e.contains("\"fast\"") && e.contains("250mbit"), "{e}");
        let e = parse_rate("10mb").unwrap_err().to_string();
        assert!(
            e.contains("not a unit") && e.contains("bits per second"),
            "ambiguous lower-case mb: {e}"
        );
        assert!(parse_rate("mbit").is_err());
        assert!(parse_rate("-5mbit").is_err());
        assert!(parse_rate("5 furlongs").is_err());
        assert!(matches!(
            parse_rate("99999999999tbit"),
            Err(UnitError::Rate {
                problem: Problem::TooLarge,
                ..
            })
        ));
    }

    #[test]
    fn formats_with_decimal_units() {
        assert_eq!(format_rate(0.0), "0 bit/s");
        assert_eq!(format_rate(-3.0), "0 bit/s");
        assert_eq!(format_rate(f64::NAN), "0 bit/s");
        assert_eq!(format_rate(812.0), "812 bit/s");
        assert_eq!(format_rate(64e3), "64.0 kbit/s");
        assert_eq!(format_rate(250e6), "250.0 Mbit/s");
        assert_eq!(format_rate(1.25e9), "1.25 Gbit/s");
        assert_eq!(format_rate(999_999.0), "1.0 Mbit/s", "not 1000.0 kbit/s");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(bps in 0u64..=(1 << 60)) {
            let text = format_rate(bps as f64);
            let back = parse_rate(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            // One decimal of the unit: off by at most 5% (exact below
            // 1 kbit/s).
            let err = back.abs_diff(bps);
            prop_assert!(err <= bps / 20 + 1, "{bps} -> {text} -> {back}");
            prop_assert_eq!(format_rate(back as f64), text);
        }

        #[test]
        fn prefixes_are_powers_of_1000_in_any_case(
            n in 0u64..1_000_000,
            (p, mult) in prop::sample::select(vec![
                ("", 1u64), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000),
            ]),
            unit in prop::sample::select(vec!["", "bit", "bit/s", "bits/s", "bps"]),
            upper in any::<bool>(),
        ) {
            let mut text = format!("{n}{p}{unit}");
            // Upper case is the same rate, except for bps, which reads as
            // bytes in capitals.
            if upper && (unit.is_empty() || unit.contains("bit")) {
                text = text.to_uppercase();
            }
            prop_assert_eq!(parse_rate(&text), Ok(n * mult));
        }

        #[test]
        fn any_input_is_a_value_or_an_error_never_a_panic(s in "\\PC{0,24}") {
            let _ = parse_rate(&s);
        }
    }
}
