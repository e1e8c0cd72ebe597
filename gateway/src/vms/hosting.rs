//! What the migration relay and the control API need from the VMs at a
//! site ([`VmHosting`]): start a VM, give one up over a shim-protocol
//! stream, take one in from such a stream, list what runs here, and move
//! disks. The shim protocol on a unix stream is the boundary, so the relay
//! does not care whether the VM runs in this process ([`super::VmHost`])
//! or in its own `wanmig-vmm` process ([`super::ProcessHost`]).

use std::os::unix::net::UnixStream;

use wanmig_migration::machine::VmConfig;
use wanmig_migration::run::{IncomingReport, MigrateOptions, MigrationReport, ReceiveOptions};

use super::disk_state::DiskState;
use super::error::HostError;
use super::registry::VmInfo;
use crate::storage_relay::ExportStatus;

/// What the migration relay needs from the VMs at a site.
pub trait VmHosting: Send + Sync + 'static {
    /// Boots a VM called `name` and lets it run.
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError>;
    /// The configuration of a VM that runs here.
    fn config(&self, name: &str) -> Result<VmConfig, HostError>;
    /// Migrates `name` out over `stream` (blocking, the shim protocol).
    /// Marks it as leaving for `to` while it runs; on failure before the
    /// handover the VM keeps running here.
    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError>;
    /// Receives `name` from `from` over `stream` (blocking). Returns once it
    /// runs here; on error nothing runs here.
    fn receive(
        &self,
        name: &str,
        from: &str,
        config: VmConfig,
        stream: UnixStream,
        opts: &ReceiveOptions,
    ) -> Result<IncomingReport, HostError>;
    /// Every VM this site knows of.
    fn list(&self) -> Vec<VmInfo>;
    /// Settles a VM left [`VmState::HandoverUnconfirmed`]: `to` now says
    /// whether it runs there.
    fn settle_handover(&self, name: &str, to: &str, running_there: bool);

    /// Source side, as a migration of `name` to `to` starts (before the
    /// destination hears of it): lets `to`, and no other site, fetch the
    /// VM's disk, when this host moves disks and the VM has one.
    fn export_disk(&self, _name: &str, _to: &str) -> Result<(), HostError> {
        Ok(())
    }

    /// Source side, after a migration of `name` to `to` ended without a
    /// handover: withdraws the export of its disk (the VM runs here on
    /// it, so no site may copy it, nor have it released).
    fn withdraw_disk(&self, _name: &str, _to: &str) {}

    /// Source side, before a migration of `name`: whether the destination
    /// should copy the disk in the background right after the compute move
    /// (`true`, the default) or leave it at this site and read on demand
    /// (`false`, `wanmig migrate --no-storage`).
    fn set_storage_background(&self, name: &str, background: bool) -> Result<(), HostError> {
        if background {
            Ok(())
        } else {
            Err(HostError::Storage {
                name: name.to_string(),
                reason: "this VM host does not move disks, so --no-storage does not apply".into(),
            })
        }
    }

    /// Destination side: starts (or resumes) the background copy of
    /// `name`'s disk, which must run here on a remote-backed disk.
    fn storage_migrate(&self, name: &str) -> Result<DiskState, HostError> {
        Err(HostError::Storage {
            name: name.to_string(),
            reason: "this VM host does not move disks".into(),
        })
    }

    /// Source side: the disks this site exports (one per VM that migrated
    /// away with a disk) and how far their copies are.
    fn storage_exports(&self) -> Vec<ExportStatus> {
        Vec::new()
    }
}
