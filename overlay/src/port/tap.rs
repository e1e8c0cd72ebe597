//! TAP ports: a Linux TAP device (tun-rs, `Layer::L2`) read and written
//! asynchronously, optionally enslaved to a bridge. The device disappears
//! when the port is dropped (it is not persistent).

use std::io;

use tun_rs::{AsyncDevice, DeviceBuilder, Layer};

use super::{enslave_to_bridge, PortError};
use crate::ids::MacAddr;

/// How to create a TAP port.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Interface name (at most 15 bytes); `None` lets the kernel pick.
    pub name: Option<String>,
    /// Interface MTU; `None` keeps the kernel default (1500).
    pub mtu: Option<u16>,
    /// MAC address of the TAP interface itself.
    pub mac: Option<MacAddr>,
    /// Bridge to enslave the TAP to.
    pub bridge: Option<String>,
}

/// A TAP device carrying Ethernet frames.
pub struct TapPort {
    dev: AsyncDevice,
    name: String,
}

impl TapPort {
    /// Creates the TAP device, brings it up, and enslaves it to the bridge
    /// if one is named. Must be called within a tokio runtime.
    pub fn create(opts: &TapOptions) -> Result<TapPort, PortError> {
        let label = opts.name.clone().unwrap_or_default();
        if let Some(n) = &opts.name {
            if n.is_empty() || n.len() > 15 {
                return Err(PortError::BadName(n.clone()));
            }
        }
        let mut b = DeviceBuilder::new().layer(Layer::L2).enable(true);
        if let Some(n) = &opts.name {
            b = b.name(n);
        }
        if let Some(m) = opts.mtu {
            b = b.mtu(m);
        }
        if let Some(m) = opts.mac {
            b = b.mac_addr(m.0);
        }
        let err = |source| PortError::CreateTap {
            name: label.clone(),
            source,
        };
        let dev = b.build_async().map_err(err)?;
        let name = dev.name().map_err(err)?;
        if let Some(br) = &opts.bridge {
            enslave_to_bridge(&name, br)?;
        }
        tracing::info!(tap = %name, bridge = ?opts.bridge, "TAP port created");
        Ok(TapPort { dev, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's interface index of the TAP.
    pub fn if_index(&self) -> io::Result<u32> {
        self.dev.if_index()
    }

    /// Receives one frame into `buf` (make it at least MTU + 18 bytes).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Sends one whole frame.
    pub async fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.dev.send(frame).await
    }

    /// Sends one frame if the device can take it now.
    pub fn try_send(&self, frame: &[u8]) -> io::Result<usize> {
        self.dev.try_send(frame)
    }
}
