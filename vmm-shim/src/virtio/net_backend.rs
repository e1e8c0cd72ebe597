//! Where a virtio-net device's frames go: the [`NetBackend`] trait, a TAP
//! device backend (tun-rs, L2 mode, non-blocking) and an in-process channel
//! pair that the gateway's overlay plugs into.
//!
//! The channel uses tokio's bounded mpsc: the VMM side stays synchronous
//! (`try_send`/`try_recv`, a full queue drops the frame like a NIC would)
//! while the gateway side can `await` frames without a helper thread.

use std::io;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tracing::debug;

/// A frame sink and source for a virtio-net device. Both calls must not
/// block: `recv` returns `None` when no frame is waiting.
pub trait NetBackend: Send {
    /// Send one Ethernet frame (without virtio header). Frames the backend
    /// cannot take right now are dropped, as on a real wire.
    fn send(&mut self, frame: &[u8]);
    /// Receive one frame into `buf`, returning its length, or `None` when
    /// nothing is waiting. Frames larger than `buf` are dropped.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
}

impl<T: NetBackend + ?Sized> NetBackend for Box<T> {
    fn send(&mut self, frame: &[u8]) {
        (**self).send(frame)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        (**self).recv(buf)
    }
}

/// A Linux TAP device in L2 mode.
pub struct TapBackend {
    dev: tun_rs::SyncDevice,
    name: String,
    send_errors: u64,
}

impl TapBackend {
    /// Create TAP device `name` (up, non-blocking) in the calling thread's
    /// network namespace. Needs CAP_NET_ADMIN.
    pub fn create(name: &str) -> io::Result<Self> {
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .layer(tun_rs::Layer::L2)
            .build_sync()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("create TAP device {name}: {e} (needs root / CAP_NET_ADMIN and /dev/net/tun)"),
                )
            })?;
        dev.set_nonblocking(true)?;
        dev.enabled(true)?;
        Ok(TapBackend {
            dev,
            name: name.to_owned(),
            send_errors: 0,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames the kernel refused (queue full, device down).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }
}

impl NetBackend for TapBackend {
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.dev.send(frame) {
            self.send_errors += 1;
            debug!(tap = %self.name, error = %e, "TAP send failed; frame dropped");
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.dev.recv(buf) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                debug!(tap = %self.name, error = %e, "TAP receive failed");
                None
            }
        }
    }
}

/// The VMM's end of an in-process link (see [`channel_pair`]).
pub struct ChannelBackend {
    to_port: mpsc::Sender<Vec<u8>>,
    from_port: mpsc::Receiver<Vec<u8>>,
    dropped: u64,
}

/// The far end of an in-process link: what the overlay (or a test host)
/// holds. Frames the VM sends come out of `recv`; frames given to `send`
/// reach the VM.
pub struct ChannelPort {
    to_vm: mpsc::Sender<Vec<u8>>,
    from_vm: mpsc::Receiver<Vec<u8>>,
}

/// A connected backend/port pair; each direction buffers up to `capacity`
/// frames (at least 1) and drops frames beyond that.
pub fn channel_pair(capacity: usize) -> (ChannelBackend, ChannelPort) {
    let capacity = capacity.max(1);
    let (to_port, from_vm) = mpsc::channel(capacity);
    let (to_vm, from_port) = mpsc::channel(capacity);
    (
        ChannelBackend {
            to_port,
            from_port,
            dropped: 0,
        },
        ChannelPort { to_vm, from_vm },
    )
}

impl ChannelBackend {
    /// Frames dropped (port full or gone, or too large for the receive buffer).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl NetBackend for ChannelBackend {
    fn send(&mut self, frame: &[u8]) {
        match self.to_port.try_send(frame.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => self.dropped += 1,
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            match self.from_port.try_recv() {
                Ok(frame) if frame.len() <= buf.len() => {
                    buf[..frame.len()].copy_from_slice(&frame);
                    return Some(frame.len());
                }
                Ok(frame) => {
                    debug!(
                        len = frame.len(),
                        "frame larger than the receive buffer dropped"
                    );
                    self.dropped += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return None,
            }
        }
    }
}

/// Why a frame could not be handed to the VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortSendError {
    /// The VM side is not draining frames fast enough; the frame was dropped.
    #[error("the VM's receive channel is full; frame dropped")]
    Full,
    /// The VM's device is gone.
    #[error("the VM's network device was dropped")]
    Closed,
}

impl ChannelPort {
    /// Hand a frame to the VM without waiting.
    pub fn try_send(&self, frame: Vec<u8>) -> Result<(), PortSendError> {
        self.to_vm.try_send(frame).map_err(|e| match e {
            TrySendError::Full(_) => PortSendError::Full,
            TrySendError::Closed(_) => PortSendError::Closed,
        })
    }

    /// Hand a frame to the VM, waiting for room.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), PortSendError> {
        self.to_vm
            .send(frame)
            .await
            .map_err(|_| PortSendError::Closed)
    }

    /// The next frame the VM sent, without waiting.
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        self.from_vm.try_recv().ok()
    }

    /// The next frame the VM sent; `None` once the device is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.from_vm.recv().await
    }

    /// The raw halves, for code that wants to move them into separate tasks:
    /// (sender of frames to the VM, receiver of frames from the VM).
    pub fn into_parts(self) -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        (self.to_vm, self.from_vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_pair_carries_frames_both_ways_and_drops_when_full() {
        let (mut backend, mut port) = channel_pair(2);
        backend.send(b"one");
        backend.send(b"two");
        backend.send(b"three"); // over capacity
        assert_eq!(backend.dropped(), 1);
        assert_eq!(port.try_recv().as_deref(), Some(&b"one"[..]));
        assert_eq!(port.try_recv().as_deref(), Some(&b"two"[..]));
        assert_eq!(port.try_recv(), None);

        let mut buf = [0u8; 4];
        assert_eq!(backend.recv(&mut buf), None);
        port.try_send(b"toolarge".to_vec()).unwrap();
        port.try_send(b"ok".to_vec()).unwrap();
        assert_eq!(port.try_send(b"x".to_vec()), Err(PortSendError::Full));
        // The oversized frame is dropped, the next one delivered.
        assert_eq!(backend.recv(&mut buf), Some(2));
        assert_eq!(&buf[..2], b"ok");
        assert_eq!(backend.dropped(), 2);

        drop(backend);
        assert_eq!(port.try_send(b"x".to_vec()), Err(PortSendError::Closed));
    }
}
