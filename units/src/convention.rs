//! The conventions the parsers follow, as sentences: error messages and
//! `--help` texts end with them. A leaf, so the errors can quote them and
//! the parsers can refer to them without importing each other.

/// What [`crate::parse_size`] accepts, as the errors and `--help` texts say it.
pub const SIZE_CONVENTION: &str = "Sizes are bytes: a count, or a number with K, M, G, T \
     (powers of 1024, the same as KiB, MiB, GiB, TiB: 64M = 64 MiB, as QEMU's -m) \
     or kB, MB, GB, TB (powers of 1000), e.g. 64M, 512KiB, 2MB";

/// What [`crate::parse_rate`] accepts, as the errors and `--help` texts say it.
pub const RATE_CONVENTION: &str = "Rates are bits per second: a number with k, M, G, T \
     (powers of 1000) and optionally bit, bit/s or bps, e.g. 250mbit, 250Mbit/s, 250Mbps, 1G; \
     for a rate in bytes per second multiply by 8 (30 MB/s = 240mbit)";
