//! wanmig's L2 overlay: stretches Ethernet segments between sites.
//!
//! The core is sans-IO: [`switch::Switch`] takes frames from local ports,
//! datagrams and control messages from peer sites, and clock readings, and
//! returns [`switch::Action`]s (deliver to a port, send a datagram or a
//! control message to a peer, report an event). The gateway carries the
//! datagrams over QUIC and the control messages over a reliable stream;
//! [`port`] provides the local ports (TAP devices and in-process channels).
//!
//! Wiring, per gateway: build a [`Switch`] from an [`OverlayConfig`] (the
//! gateway TOML embeds it) and [`OverlayMetrics::register`]; attach ports
//! with [`Switch::add_port`]; on a peer connection call
//! [`Switch::on_peer_up`] with the path's max datagram size (and
//! [`Switch::set_max_datagram_size`] when it changes); feed frames from
//! ports to [`Switch::on_local_frame`], QUIC datagrams to
//! [`Switch::on_datagram`], control messages read with
//! [`control::read_msg`] to [`Switch::on_control`]; call
//! [`Switch::poll_timers`] about once a second; carry out every returned
//! [`Action`]. The clock is always passed in.

// Unsafe code lives in one module only: the bridge ioctl in `port::bridge`,
// which allows it locally, each block with its `// SAFETY:` line.
#![deny(unsafe_code)]

pub mod arp_suppress;
pub mod config;
pub mod control;
pub mod encap;
pub mod flood;
pub mod fragment;
pub mod frame;
pub mod ids;
pub mod mactable;
pub mod metrics;
pub mod mss_clamp;
pub mod port;
pub mod switch;

pub use config::{OverlayConfig, SegmentConfig};
pub use control::{ControlMsg, MacAdvert};
pub use ids::{MacAddr, PortId, SiteId, Vni};
pub use metrics::{DropReason, OverlayMetrics};
pub use switch::{Action, Actions, Switch, SwitchError, SwitchEvent};
