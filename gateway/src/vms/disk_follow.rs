//! A VM's disk follows it between sites when storage is attached
//! ([`DiskFollow::attach`]): the source exports the disk to the destination
//! site when the migration starts, and withdraws it when the migration
//! ends without a handover; the destination gives the arriving VM a disk that waits for the
//! handover ([`PendingDisk`]), then imports the source's disk into its
//! `[storage] dir` and puts the remote-backed copy behind the VM's
//! virtio-block device while the background copy runs. The copy's state
//! ([`DiskState`]) lives in the VM's registry entry, so any host can list
//! it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use wanmig_migration::machine::VmConfig;
use wanmig_storage::RemoteDisk;
use wanmig_vmm::virtio::{BlockBackend, RemoteBackend};

use super::disk_state::{live_disk_state, DiskState};
use super::error::HostError;
use super::registry::{Entry, Registry, VmState};
use crate::config::StorageSettings;
use crate::storage_relay::{ExportStatus, StorageRelay, StorageRelayError};

/// How long an arriving VM's first disk access waits for the import to
/// start after the handover before it fails.
const DISK_ATTACH_WAIT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How this site exports and imports VM disks, once attached.
struct Attached {
    relay: StorageRelay,
    settings: StorageSettings,
    runtime: tokio::runtime::Handle,
}

/// Storage for the VMs of one host: nothing until [`DiskFollow::attach`].
#[derive(Default)]
pub struct DiskFollow {
    attached: Mutex<Option<Arc<Attached>>>,
}

/// The disk of a VM that is arriving: where its copy goes and the backend
/// that waits for the import.
pub struct Arrival {
    attached: Arc<Attached>,
    pending: Arc<PendingDisk>,
    background: bool,
}

impl Arrival {
    /// The block device backend to build the arriving VM with.
    pub fn backend(&self) -> wanmig_vmm::DiskBackend {
        Box::new(PendingBackend(Arc::clone(&self.pending)))
    }

    /// The disk's state once the VM runs here, before the copy starts.
    pub fn first_state(&self, from: &str, path: &Path) -> DiskState {
        let (from, path) = (from.to_string(), path.to_path_buf());
        if self.background {
            DiskState::Copying {
                from,
                path,
                local_blocks: 0,
                total_blocks: 0,
                wire_bytes: 0,
            }
        } else {
            DiskState::RemoteOnly {
                from,
                path,
                local_blocks: 0,
                total_blocks: 0,
                wire_bytes: 0,
            }
        }
    }
}

impl DiskFollow {
    /// Lets VM disks follow their VMs: exports the disk of a VM that
    /// migrates away and imports the disk of one that arrives (into
    /// `settings.dir`). Call inside the tokio runtime the relay runs on.
    pub fn attach(&self, relay: StorageRelay, settings: StorageSettings) {
        *lock(&self.attached) = Some(Arc::new(Attached {
            relay,
            settings,
            runtime: tokio::runtime::Handle::current(),
        }));
    }

    fn attached(&self) -> Option<Arc<Attached>> {
        lock(&self.attached).clone()
    }

    /// Exports the disk of `name` (when it has one and storage is
    /// attached) so the destination `to`, and only it, can import it.
    pub fn export(&self, name: &str, config: &VmConfig, to: &str) -> Result<(), HostError> {
        let (Some(st), Some(disk)) = (self.attached(), &config.disk) else {
            return Ok(());
        };
        let len = std::fs::metadata(&disk.path)
            .map_err(HostError::disk_io(
                name,
                format!("cannot read {}", disk.path.display()),
            ))?
            .len();
        st.relay
            .export(name, &disk.path, len, st.settings.release, to)
            .map_err(HostError::disk_relay(name))
    }

    /// Withdraws the export of `name`'s disk to `to` (its migration ended
    /// without a handover; the VM runs here on the disk).
    pub fn withdraw(&self, name: &str, to: &str) {
        if let Some(st) = self.attached() {
            st.relay.withdraw(name, to);
        }
    }

    /// Before `name` arrives from `from` with a disk: asks the source for
    /// the disk and points `config` at a fresh local copy in this site's
    /// disk directory. `None` when the VM has no disk or storage is not
    /// attached (the VM then keeps the disk path it came with).
    pub fn prepare_arrival(
        &self,
        name: &str,
        from: &str,
        config: &mut VmConfig,
    ) -> Result<Option<Arrival>, HostError> {
        let (Some(st), Some(disk)) = (self.attached(), &mut config.disk) else {
            return Ok(None);
        };
        let exported = st
            .runtime
            .block_on(st.relay.exported_disk(from, name))
            .map_err(HostError::disk_relay(name))?;
        std::fs::create_dir_all(&st.settings.dir).map_err(HostError::disk_io(
            name,
            format!(
                "cannot create the disk directory {} ([storage] dir)",
                st.settings.dir.display()
            ),
        ))?;
        disk.path = fresh_disk_path(&st.settings.dir, name);
        Ok(Some(Arrival {
            pending: Arc::new(PendingDisk {
                len: exported.len,
                slot: Mutex::new(None),
                ready: Condvar::new(),
            }),
            background: exported.background,
            attached: st,
        }))
    }

    /// After the handover of `name` from `from`: imports its disk into the
    /// copy at `path`, hands it to the VM's block device, and records the
    /// copy's progress and outcome in `vms`.
    pub fn arrived<E: Send + 'static>(
        &self,
        vms: &Registry<E>,
        name: &str,
        from: &str,
        path: PathBuf,
        arrival: Arrival,
    ) {
        let Arrival {
            attached: st,
            pending,
            background,
        } = arrival;
        let (vms, relay, disk_config) = (vms.clone(), st.relay.clone(), st.settings.disk);
        let (name, from, dest) = (name.to_string(), from.to_string(), path);
        st.runtime.spawn(async move {
            let set_state = |state: DiskState| {
                vms.disk_at(&name, &dest, |slot| {
                    *slot.disk = Some(state);
                    *slot.remote = None;
                })
            };
            // The link may be down right after the handover: keep trying
            // (the source stays authoritative; guest I/O to missing blocks
            // waits up to DISK_ATTACH_WAIT meanwhile), while the VM still
            // runs here on this copy. A refusal is final.
            let import = loop {
                let r = relay
                    .import_with(&from, &name, &dest, pending.len, disk_config, background)
                    .await;
                match r {
                    Err(e @ (StorageRelayError::Link { .. } | StorageRelayError::Peering(_)))
                        if vms.runs_on(&name, &dest) =>
                    {
                        tracing::warn!(
                            vm = name,
                            from,
                            "disk import cannot reach the source yet: {e}; retrying"
                        );
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => break other,
                }
            };
            let import = match import {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(vm = name, from, "disk import failed: {e}");
                    let reason = e.to_string();
                    pending.set(Err(Arc::new(e)));
                    set_state(DiskState::Failed { from, reason });
                    return;
                }
            };
            pending.set(Ok(Arc::clone(import.disk())));
            let disk = Arc::clone(import.disk());
            vms.disk_at(&name, &dest, |slot| *slot.remote = Some(disk));
            tracing::info!(vm = name, from, background, "disk import started");
            match import.finish().await {
                Ok(r) => {
                    tracing::info!(vm = name, from, total_ms = r.total_ms, "disk is local");
                    set_state(DiskState::Local {
                        from,
                        path: dest.clone(),
                        disk_bytes: r.disk_bytes,
                        wire_bytes: r.wire_bytes,
                        total_ms: r.total_ms,
                        verified: r.verified,
                    });
                }
                Err(e) => {
                    tracing::warn!(vm = name, from, "disk copy failed: {e}");
                    set_state(DiskState::Failed {
                        from,
                        reason: e.to_string(),
                    });
                }
            }
        });
    }

    /// Source side, before a migration of `name`: whether the destination
    /// copies the disk in the background at once.
    pub fn set_background(&self, name: &str, background: bool) -> Result<(), HostError> {
        match self.attached() {
            Some(st) => {
                st.relay.set_background(name, background);
                Ok(())
            }
            None if background => Ok(()),
            None => Err(HostError::Storage {
                name: name.to_string(),
                reason: "this gateway moves no disks (storage is not attached), so --no-storage does not apply".into(),
            }),
        }
    }

    /// Destination side: starts (or reports) the background copy of
    /// `name`'s disk.
    pub fn migrate<E>(&self, vms: &Registry<E>, name: &str) -> Result<DiskState, HostError> {
        vms.disk(name, |slot| {
            let err = |reason: String| HostError::Storage {
                name: name.to_string(),
                reason,
            };
            match slot.disk.clone() {
                None => Err(err(match slot.state {
                    VmState::MigratedAway { to } => format!(
                        "the VM now runs at {to}: run `wanmig storage migrate {name}` against {to}'s gateway"
                    ),
                    _ => "its disk did not migrate here (nothing to copy)".to_string(),
                })),
                Some(DiskState::RemoteOnly { from, path, .. }) => {
                    let Some(disk) = slot.remote.clone() else {
                        return Err(err(
                            "the disk import has not started yet; retry in a moment".into(),
                        ));
                    };
                    disk.set_background(true);
                    let copying = DiskState::Copying {
                        from: from.clone(),
                        path,
                        local_blocks: 0,
                        total_blocks: 0,
                        wire_bytes: 0,
                    };
                    let live = live_disk_state(&copying, Some(&disk));
                    *slot.disk = Some(copying);
                    tracing::info!(vm = name, from, "background disk copy started by the operator");
                    Ok(live)
                }
                // Already copying or local: report where it stands
                // (idempotent).
                Some(s) => Ok(live_disk_state(&s, slot.remote.as_ref())),
            }
        })
    }

    /// Source side: the disks this site exports and how far their copies
    /// are.
    pub fn exports(&self) -> Vec<ExportStatus> {
        self.attached()
            .map(|st| st.relay.exports())
            .unwrap_or_default()
    }
}

/// Refuses to migrate a VM on: chaining a second storage copy onto an
/// unfinished one is not supported, as the disk would be at two sites at
/// once.
pub fn ensure_disk_settled<E>(name: &str, e: &Entry<E>) -> Result<(), HostError> {
    let Some(d) = e.disk().filter(|d| d.is_remote()) else {
        return Ok(());
    };
    let hint = match d {
        DiskState::RemoteOnly { .. } => format!(
            "run `wanmig storage migrate {name}` at this site first and wait until it reports the disk local"
        ),
        _ => format!(
            "wait until its disk copy finishes (`wanmig storage migrate {name}` at this site shows the progress)"
        ),
    };
    Err(HostError::Storage {
        name: name.to_string(),
        reason: format!("its disk is {d}, so it cannot migrate on yet: {hint}"),
    })
}

/// The virtio-block backend of an arriving VM: the VM is built before the
/// handover, but the source VM writes its disk until then, so the import
/// starts only after the handover; disk accesses wait for it.
struct PendingDisk {
    len: u64,
    slot: Mutex<Option<Result<RemoteBackend, Arc<StorageRelayError>>>>,
    ready: Condvar,
}

impl PendingDisk {
    fn set(&self, disk: Result<Arc<RemoteDisk>, Arc<StorageRelayError>>) {
        *lock(&self.slot) = Some(disk.map(RemoteBackend));
        self.ready.notify_all();
    }

    fn with<R>(&self, f: impl FnOnce(&RemoteBackend) -> std::io::Result<R>) -> std::io::Result<R> {
        let mut slot = lock(&self.slot);
        let deadline = std::time::Instant::now() + DISK_ATTACH_WAIT;
        while slot.is_none() {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the disk import did not start after the handover",
                ));
            };
            slot = self
                .ready
                .wait_timeout(slot, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match slot.as_ref() {
            Some(Ok(disk)) => f(disk),
            Some(Err(e)) => Err(std::io::Error::other(Arc::clone(e))),
            None => unreachable!("waited above"),
        }
    }
}

/// Shares a [`PendingDisk`] with the VM's block device.
struct PendingBackend(Arc<PendingDisk>);

impl BlockBackend for PendingBackend {
    fn len(&self) -> u64 {
        self.0.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.with(|d| d.read_at(offset, buf))
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.with(|d| d.write_at(offset, buf))
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.with(|d| d.flush())
    }
}

/// Where an arriving VM's disk copy goes: `<dir>/<name>.disk`, or
/// `<dir>/<name>.<n>.disk` when an earlier copy is there (a kept copy of an
/// earlier visit must neither be overwritten nor resumed from: its blocks
/// are stale).
fn fresh_disk_path(dir: &Path, name: &str) -> PathBuf {
    let taken = |p: &PathBuf| p.exists() || wanmig_storage::presence::sidecar_path(p).exists();
    let first = dir.join(format!("{name}.disk"));
    if !taken(&first) {
        return first;
    }
    (1u64..)
        .map(|n| dir.join(format!("{name}.{n}.disk")))
        .find(|p| !taken(p))
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arriving_disks_never_reuse_an_earlier_copy() {
        let d = tempfile::tempdir().unwrap();
        let first = fresh_disk_path(d.path(), "web");
        assert_eq!(first, d.path().join("web.disk"));
        std::fs::write(&first, b"old").unwrap();
        let second = fresh_disk_path(d.path(), "web");
        assert_eq!(second, d.path().join("web.1.disk"));
        // A sidecar alone (the copy file was removed) also marks it taken.
        std::fs::write(wanmig_storage::presence::sidecar_path(&second), b"x").unwrap();
        assert_eq!(
            fresh_disk_path(d.path(), "web"),
            d.path().join("web.2.disk")
        );
    }
}
