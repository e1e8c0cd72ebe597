//! Durations: [`parse_duration`], humantime's grammar (`50ms`, `1.5s`,
//! `2m`, `1h 30m`) with the error every wanmig command prints.

use std::time::Duration;

use crate::error::UnitError;

/// Parses a duration with humantime: `50ms`, `250us`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(s.trim()).map_err(|cause| UnitError::Duration {
        input: s.to_string(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        let e = parse_duration("fifty").unwrap_err().to_string();
        assert!(e.contains("\"fifty\"") && e.contains("50ms"), "{e}");
    }
}
