//! Why a VM host could not do what was asked ([`HostError`]). The control
//! API maps each case to an HTTP status, so the cases say whose fault a
//! failure is: an unknown or busy VM, a bad request, this site's disk, or
//! the VMM.

use std::path::PathBuf;

use wanmig_migration::machine::ConfigError;
use wanmig_vmm::{MigrationError, VmError};

use crate::storage_relay::StorageRelayError;

/// Why a host could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("VM '{0}' is not known at this site (see `wanmig vm list`)")]
    Unknown(String),
    #[error("VM '{name}' is {state} at this site, so it cannot {action}")]
    Busy {
        name: String,
        state: String,
        action: &'static str,
    },
    #[error("invalid VM name '{0}': use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configuration this host cannot run; `reason` says which part and
    /// what to use instead.
    #[error("invalid VM configuration: VM '{name}' {reason}")]
    Unsupported { name: String, reason: &'static str },
    /// `net.segment` names a segment this site does not have.
    #[error("invalid VM configuration `net.segment`: VM '{name}' names segment {segment:?}, which this gateway does not have; use one of its [[overlay.segment]] names")]
    UnknownSegment { name: String, segment: String },
    /// A file the configuration names that this gateway does not let VMs
    /// use. The message is the same whether the file is missing or not
    /// allowed (the gateway's log says which).
    #[error("VM '{name}': {key} {} is not a file this gateway lets VMs use: name an existing regular file (no symlinks, no '..') under one of its [vms] {setting}", path.display())]
    FileRefused {
        name: String,
        key: &'static str,
        path: PathBuf,
        setting: &'static str,
    },
    #[error("cannot create the VM state directory {} ([vms] dir): {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("starting VM '{name}': {source}")]
    Vm { name: String, source: VmError },
    #[error("starting VM '{name}': {what}: {source}")]
    StartIo {
        name: String,
        what: String,
        source: std::io::Error,
    },
    #[error("starting VM '{name}': cannot run {} ({source}); set [vms] vmm to the wanmig-vmm binary", vmm.display())]
    VmmBinary {
        name: String,
        vmm: PathBuf,
        source: std::io::Error,
    },
    /// The VM's process did not come up; `reason` quotes what it said.
    #[error("starting VM '{name}': {reason}")]
    Start { name: String, reason: String },
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The VM's disk is in a state that does not allow the request.
    #[error("disk of VM '{name}': {reason}")]
    Storage { name: String, reason: String },
    #[error("disk of VM '{name}': {what}: {source}")]
    DiskIo {
        name: String,
        what: String,
        source: std::io::Error,
    },
    #[error("disk of VM '{name}': {source}")]
    DiskRelay {
        name: String,
        source: StorageRelayError,
    },
}

impl HostError {
    /// A failure to start `name` while doing `what` with a file or process.
    pub(crate) fn start_io(
        name: &str,
        what: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let (name, what) = (name.to_string(), what.into());
        move |source| HostError::StartIo { name, what, source }
    }

    /// A failure of `name`'s disk while doing `what` with a file.
    pub(crate) fn disk_io(
        name: &str,
        what: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let (name, what) = (name.to_string(), what.into());
        move |source| HostError::DiskIo { name, what, source }
    }

    /// A failure of the storage relay with `name`'s disk.
    pub(crate) fn disk_relay(name: &str) -> impl FnOnce(StorageRelayError) -> Self {
        let name = name.to_string();
        move |source| HostError::DiskRelay { name, source }
    }
}
