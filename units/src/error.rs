//! [`UnitError`]: which value could not be read, why, and what to write.

use crate::convention::{RATE_CONVENTION, SIZE_CONVENTION};

/// A value on a command line (or in a setting) that is not what its flag
/// takes. The message names the value and says what is accepted; clap
/// prints it after the flag's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("{input:?} is not a size: {problem}. {SIZE_CONVENTION}")]
    Size { input: String, problem: Problem },

    #[error("{input:?} is not a rate: {problem}. {RATE_CONVENTION}")]
    Rate { input: String, problem: Problem },

    /// A byte rate where bits per second are expected; `bits` is the same
    /// rate written the accepted way.
    #[error("{input:?} is in bytes per second, but rates here are bits per second: write {bits} (bytes × 8)")]
    ByteRate { input: String, bits: String },

    // The cause is part of the message (clap prints only the message), so
    // it is a plain field rather than an error source printed twice.
    #[error("{input:?} is not a duration ({cause}); write e.g. 50ms, 1.5s, 2m or 1h")]
    Duration {
        input: String,
        cause: humantime::DurationError,
    },

    #[error(
        "{input:?} is not a percentage: {problem}; write e.g. 0.1% (a bare 0.1 is also percent)"
    )]
    Percent { input: String, problem: Problem },
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it does not start with a number")]
    NoNumber,
    #[error("{0:?} is not a unit it takes")]
    UnknownUnit(String),
    #[error("it is too large")]
    TooLarge,
    #[error("it is outside 0%..100%")]
    OutOfRange,
}
