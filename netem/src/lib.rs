//! wanmig's userspace WAN emulator (this kernel has no `sch_netem`).
//!
//! The core is [`LinkModel`], a sans-IO model of one direction of a link
//! (delay, jitter, random and bursty loss, duplication, reordering, a rate
//! with a bounded queue, and cut). [`UdpRelay`] runs two models as a UDP
//! path between gateways; [`tun::TunLink`] runs them between two network
//! namespaces over TUN devices; [`cli`] is the `wanmig netem` command and
//! [`link_args`] the link flags it shares with `wanmig demo`.

pub mod cli;
pub mod control;
pub mod error;
mod jitter;
mod lane;
pub mod link_args;
pub mod loss;
pub mod model;
pub mod params;
mod probability;
pub mod relay;
pub mod tun;
mod workers;

pub use error::NetemError;
pub use link_args::LinkArgs;
pub use loss::LossModel;
pub use model::{Departure, DropReason, LinkModel, LinkStats, Verdict};
pub use params::{JitterDist, LinkParams};
pub use relay::{Direction, RelayConfig, RelayHandle, RelayStats, UdpRelay};
pub use tun::{TunLink, TunLinkConfig, TunLinkHandle, TunStats};
