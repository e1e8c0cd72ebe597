//! Parsing of the human-friendly values the CLI takes: rates (`250mbit`),
//! sizes (`2MB`, `512KiB`), percentages (`0.1%`), durations (`50ms`, via
//! humantime) and the Gilbert-Elliott loss spec.

use std::time::Duration;

use crate::loss::LossModel;

/// Parses a rate in bits per second: `250mbit`, `1gbit`, `100kbit`,
/// `1.5mbit`, `64kibit` (1024-based), `10mbps` (tc's meaning: megabytes per
/// second), or a bare number of bits per second. `0` means unlimited.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    const UNITS: &[(&str, f64)] = &[
        ("tibit", 8_796_093_022_208.0 / 8.0),
        ("gibit", 1_073_741_824.0),
        ("mibit", 1_048_576.0),
        ("kibit", 1024.0),
        ("tbit", 1e12),
        ("gbit", 1e9),
        ("mbit", 1e6),
        ("kbit", 1e3),
        ("bit", 1.0),
        ("gbps", 8e9),
        ("mbps", 8e6),
        ("kbps", 8e3),
        ("bps", 8.0),
    ];
    let (num, mult) = split_unit(&t, UNITS).ok_or_else(|| {
        format!("{s:?} is not a rate; use e.g. 250mbit, 1gbit, 100kbit (or Nbps for bytes/s)")
    })?;
    scaled(num, mult, s).map_err(|e| format!("{e}; use e.g. 250mbit"))
}

/// Parses a size in bytes: `2MB` (10^6), `512KiB` (2^10), `64k`, `1500`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    const UNITS: &[(&str, f64)] = &[
        ("gib", 1_073_741_824.0),
        ("mib", 1_048_576.0),
        ("kib", 1024.0),
        ("gb", 1e9),
        ("mb", 1e6),
        ("kb", 1e3),
        ("g", 1e9),
        ("m", 1e6),
        ("k", 1e3),
        ("b", 1.0),
    ];
    let (num, mult) = split_unit(&t, UNITS)
        .ok_or_else(|| format!("{s:?} is not a size; use e.g. 2MB, 512KiB or 65536"))?;
    scaled(num, mult, s).map_err(|e| format!("{e}; use e.g. 2MB"))
}

/// Parses a probability written as a percentage: `0.1%` or `0.1` (percent,
/// like tc) → 0.001.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    let v: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage; use e.g. 0.1%"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?} is outside 0%..100%"));
    }
    Ok(v / 100.0)
}

/// Parses a duration with humantime: `50ms`, `1s`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 50ms"))
}

/// A `--loss-model` value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossSpec {
    /// Independent loss with the `--loss` probability.
    Random,
    /// Bursty loss.
    Gemodel(LossModel),
}

/// Parses `gemodel:P[,R[,1-H[,1-K]]]` (percentages, netem's defaults for the
/// omitted ones) or `random` (meaning: use `--loss`).
pub fn parse_loss_model(s: &str) -> Result<LossSpec, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("random") {
        return Ok(LossSpec::Random);
    }
    let Some(rest) = t.strip_prefix("gemodel:") else {
        return Err(format!(
            "{s:?} is not a loss model; use `random` or `gemodel:p,r,1-h,1-k` (percentages, e.g. gemodel:1%,25%)"
        ));
    };
    let parts: Vec<f64> = rest
        .split(',')
        .map(parse_percent)
        .collect::<Result<_, _>>()?;
    if parts.is_empty() || parts.len() > 4 {
        return Err(format!(
            "{s:?}: gemodel takes 1 to 4 percentages: p,r,1-h,1-k"
        ));
    }
    Ok(LossSpec::Gemodel(LossModel::gemodel(
        parts[0],
        parts.get(1).copied(),
        parts.get(2).copied(),
        parts.get(3).copied(),
    )))
}

fn split_unit<'a>(t: &'a str, units: &[(&str, f64)]) -> Option<(&'a str, f64)> {
    for (u, m) in units {
        if let Some(n) = t.strip_suffix(u) {
            return Some((n.trim(), *m));
        }
    }
    // A bare number.
    t.chars()
        .all(|c| c.is_ascii_digit() || c == '.')
        .then_some((t, 1.0))
}

fn scaled(num: &str, mult: f64, orig: &str) -> Result<u64, String> {
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{orig:?} does not start with a number"))?;
    let x = v * mult;
    if !x.is_finite() || x < 0.0 || x > u64::MAX as f64 {
        return Err(format!("{orig:?} is out of range"));
    }
    Ok(x.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("250mbit"), Ok(250_000_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100kbit"), Ok(100_000));
        assert_eq!(parse_rate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_rate("64kibit"), Ok(65_536));
        assert_eq!(parse_rate("10mbps"), Ok(80_000_000));
        assert_eq!(parse_rate("9600"), Ok(9600));
        assert!(parse_rate("fast").unwrap_err().contains("250mbit"));
        assert!(parse_rate("mbit").is_err());
        assert!(parse_rate("-5mbit").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("512KiB"), Ok(524_288));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("1500b"), Ok(1500));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("0.1%"), Ok(0.001));
        assert_eq!(parse_percent("25"), Ok(0.25));
        assert!(parse_percent("150%").is_err());
        assert!(parse_percent("x%").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert!(parse_duration("fifty").is_err());
    }

    #[test]
    fn loss_models() {
        assert_eq!(parse_loss_model("random"), Ok(LossSpec::Random));
        assert_eq!(
            parse_loss_model("gemodel:1%,25%,100%,0%"),
            Ok(LossSpec::Gemodel(LossModel::GilbertElliott {
                p: 0.01,
                r: 0.25,
                loss_bad: 1.0,
                loss_good: 0.0
            }))
        );
        assert_eq!(
            parse_loss_model("gemodel:10"),
            Ok(LossSpec::Gemodel(LossModel::gemodel(0.1, None, None, None)))
        );
        assert!(parse_loss_model("gemodel:").is_err());
        assert!(parse_loss_model("bursty").is_err());
        assert!(parse_loss_model("gemodel:1,2,3,4,5").is_err());
    }
}
