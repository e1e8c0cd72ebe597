//! Plugs the network cards of the VMs this site hosts in-process into the
//! overlay ([`Nics`]). A VM whose `net.segment` names a segment is plugged
//! into it when it starts running here (booted, or arrived by migration)
//! and unplugged when it stops running here (it left, or was settled as
//! running elsewhere), so the overlay learns its MAC at the site that runs
//! it and withdraws it from the site it left.
//!
//! The host's calls are synchronous (they run on blocking threads) and the
//! overlay is async: one task applies plug and unplug requests in the
//! order they were made, so a VM that leaves right after it arrived is
//! never left plugged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use wanmig_migration::machine::VmConfig;
use wanmig_overlay::PortId;
use wanmig_vmm::virtio::ChannelPort;

use super::error::HostError;
use crate::overlay_service::OverlayHandle;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Request {
    Plug {
        vm: String,
        segment: String,
        port: ChannelPort,
    },
    Unplug {
        vm: String,
    },
}

struct Attached {
    overlay: OverlayHandle,
    requests: mpsc::UnboundedSender<Request>,
}

/// The overlay ports of this site's in-process VMs. Until
/// [`Nics::attach`] (a host outside a gateway), a VM naming a segment is
/// refused.
#[derive(Default)]
pub struct Nics {
    attached: Mutex<Option<Attached>>,
    /// The port each plugged VM has, once the overlay attached it.
    ports: Arc<Mutex<HashMap<String, PortId>>>,
}

impl Nics {
    /// Plugs into `overlay` from now on. Call inside the tokio runtime the
    /// overlay runs on.
    pub fn attach(&self, overlay: OverlayHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(apply(overlay.clone(), rx, Arc::clone(&self.ports)));
        *lock(&self.attached) = Some(Attached {
            overlay,
            requests: tx,
        });
    }

    /// Refuses a configuration whose `net.segment` this site cannot plug
    /// into: no overlay, or no such segment here.
    pub fn check(&self, name: &str, config: &VmConfig) -> Result<(), HostError> {
        let Some(segment) = config.net.as_ref().and_then(|n| n.segment.as_deref()) else {
            return Ok(());
        };
        let known = lock(&self.attached)
            .as_ref()
            .map(|a| a.overlay.segment_vni(segment).is_some());
        match known {
            Some(true) => Ok(()),
            Some(false) => Err(HostError::UnknownSegment {
                name: name.to_string(),
                segment: segment.to_string(),
            }),
            None => Err(HostError::Unsupported {
                name: name.to_string(),
                reason: "names net.segment, but this VM host has no overlay to plug it into; \
                         run it under a gateway",
            }),
        }
    }

    /// Plugs `vm`'s card into the segment its configuration names; hands
    /// the port back when it names none (or this host has no overlay).
    pub fn plug(&self, vm: &str, config: &VmConfig, port: ChannelPort) -> Option<ChannelPort> {
        let Some(segment) = config.net.as_ref().and_then(|n| n.segment.clone()) else {
            return Some(port);
        };
        let attached = lock(&self.attached);
        let Some(a) = attached.as_ref() else {
            return Some(port);
        };
        let request = Request::Plug {
            vm: vm.to_string(),
            segment,
            port,
        };
        match a.requests.send(request) {
            Ok(()) => None,
            Err(mpsc::error::SendError(Request::Plug { port, .. })) => Some(port),
            Err(_) => None,
        }
    }

    /// Unplugs `vm`'s card, if it is plugged (or about to be).
    pub fn unplug(&self, vm: &str) {
        if let Some(a) = lock(&self.attached).as_ref() {
            let _ = a.requests.send(Request::Unplug { vm: vm.to_string() });
        }
    }

    /// The overlay port `vm`'s card is plugged into here, once it is.
    pub fn port(&self, vm: &str) -> Option<PortId> {
        lock(&self.ports).get(vm).copied()
    }
}

/// Applies plug and unplug requests in order until the host is dropped.
async fn apply(
    overlay: OverlayHandle,
    mut requests: mpsc::UnboundedReceiver<Request>,
    ports: Arc<Mutex<HashMap<String, PortId>>>,
) {
    while let Some(request) = requests.recv().await {
        match request {
            Request::Plug { vm, segment, port } => {
                // A VM plugged again (it came back) gets a fresh port.
                let old = lock(&ports).remove(&vm);
                if let Some(old) = old {
                    let _ = overlay.detach(old).await;
                }
                match overlay
                    .attach_frame_channels(&segment, port.into_parts())
                    .await
                {
                    Ok(id) => {
                        tracing::info!(vm, segment, port = %id, "VM's network card plugged");
                        lock(&ports).insert(vm, id);
                    }
                    Err(e) => tracing::error!(
                        vm,
                        segment,
                        "cannot plug the VM's network card into the segment: {e}"
                    ),
                }
            }
            Request::Unplug { vm } => {
                let id = lock(&ports).remove(&vm);
                if let Some(id) = id {
                    match overlay.detach(id).await {
                        Ok(()) => tracing::info!(vm, port = %id, "VM's network card unplugged"),
                        Err(e) => tracing::warn!(vm, "unplugging the VM's network card: {e}"),
                    }
                }
            }
        }
    }
}
