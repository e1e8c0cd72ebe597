//! Local ports of the overlay: in-process channel pairs (for a VMM's
//! virtio-net backend or a smoltcp test host) and TAP devices (optionally
//! enslaved to a Linux bridge). The switch only sees [`crate::PortId`]s; the
//! gateway pumps frames between these ports and the switch.

mod bridge;
mod channel;
mod tap;

pub use bridge::enslave_to_bridge;
pub use channel::{channel_pair, ChannelPort};
pub use tap::{TapOptions, TapPort};

/// Errors of port setup.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot create TAP device {name:?}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)")]
    CreateTap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot add {port:?} to bridge {bridge:?}: {source} (does the bridge exist?)")]
    Bridge {
        port: String,
        bridge: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
}
