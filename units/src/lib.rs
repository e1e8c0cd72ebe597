//! wanmig-units: the sizes, rates, durations and percentages that wanmig's
//! command lines take, parsed and printed in one place so every command
//! means the same by `64M` or `250mbit`.
//!
//! It is a leaf crate of its own because its users sit in unrelated
//! corners: the WAN emulator (`wanmig-netem`), the `wanmig` CLI
//! (`wanmig-gateway`) and the KVM shim's `wanmig-vmm` binary
//! (`wanmig-vmm`). Any of them hosting the parser would make the others
//! depend on it for nothing else.
//!
//! The conventions (also in [`SIZE_CONVENTION`] and [`RATE_CONVENTION`],
//! which the errors quote):
//!
//! - **Sizes** ([`size`]) are bytes. `K`, `M`, `G`, `T`, `P`, `E` are
//!   powers of 1024, as in QEMU's `-m` (`64M` = 64 MiB), and so are the
//!   explicit `KiB`, `MiB`, … (`Ki`, `Mi`, … too); `kB`, `MB`, `GB`, … are
//!   powers of 1000. A bare number or `B` is a byte count.
//! - **Rates** ([`rate`]) are bits per second with decimal prefixes:
//!   `250mbit`, `250Mbit/s`, `250Mbps` and `250M` are all 250 000 000 bit/s;
//!   `Kibit`, `Mibit`, … are powers of 1024 (as `tc` reads them). A rate in
//!   bytes per second (`30MB/s`, `30MBps`) is refused with the bit rate to
//!   write instead, because `tc` and the networking world disagree on what
//!   `mbps` means and a silent factor of 8 is the worst outcome.
//! - Units are case-insensitive except where case is the only difference
//!   between a bit and a byte (`Mbps` is bits, `MBps` is bytes).
//! - Numbers may have a fraction (`1.5G`); the result is exact (integer
//!   arithmetic, no `f64`) and rounded to the nearest byte or bit/s.
//! - **Durations** ([`duration`]) are humantime's: `50ms`, `1.5s`, `2m`.
//! - **Percentages** ([`percent`]) become probabilities: `0.1%` → 0.001.
//!
//! [`format_size`] and [`format_rate`] print the same units back for
//! humans, in a form the parsers read.

#![forbid(unsafe_code)]

mod convention;
pub mod duration;
mod error;
mod number;
pub mod percent;
pub mod rate;
pub mod size;

pub use duration::parse_duration;
pub use error::{Problem, UnitError};
pub use percent::parse_percent;
pub use rate::{format_rate, parse_rate, RATE_CONVENTION};
pub use size::{format_size, parse_size, SIZE_CONVENTION};
