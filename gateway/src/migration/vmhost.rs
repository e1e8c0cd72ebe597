//! VMs hosted at this site. [`VmHosting`] is what the migration relay needs
//! from a host: start a VM, give one up over a shim-protocol stream, take
//! one in from such a stream, and list what runs here. [`VmHost`] runs the
//! VMs in this process (wanmig-vmm's `Vm`, one set of vCPU threads each),
//! which needs no root and lets one process run several sites. An
//! out-of-process host would implement the same trait by starting the
//! `wanmig-vmm` binary and handing it the stream's other end (its
//! `--incoming unix:` and admin `migrate` commands); the relay would not
//! change, because the shim protocol on a unix stream is the boundary.
//!
//! With storage attached ([`VmHost::attach_storage`]) a VM's disk follows
//! it: the source exports the disk when the migration starts; the
//! destination gives the arriving VM a disk that waits for the handover,
//! then imports the source's disk into its `[storage] dir` and puts the
//! remote-backed copy behind the VM's virtio-block device while the
//! background copy runs ([`DiskState`]).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wanmig_migration::machine::VmConfig;
use wanmig_storage::RemoteDisk;
use wanmig_vmm::migration::IncomingReport;
use wanmig_vmm::virtio::ChannelPort;
use wanmig_vmm::virtio::{BlockBackend, RemoteBackend};
use wanmig_vmm::{
    migrate_to, receive_from_with_disk, MigrateOptions, MigrationError, MigrationReport,
    ReceiveOptions, Vm,
};

/// Serial console lines kept per VM.
const SERIAL_LINES: usize = 200;

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
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("starting VM '{name}': {reason}")]
    Start { name: String, reason: String },
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("disk of VM '{name}': {reason}")]
    Storage { name: String, reason: String },
}

/// Where a VM's disk stands at this site after it migrated here with
/// storage attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DiskState {
    /// The VM runs on a remote-backed disk; blocks are still copied from
    /// `from` (missing blocks are fetched on demand).
    Copying {
        from: String,
        path: PathBuf,
        /// Blocks local here (copied, written by the guest, or holes).
        #[serde(default)]
        local_blocks: u64,
        #[serde(default)]
        total_blocks: u64,
        /// Block payload bytes received so far.
        #[serde(default)]
        wire_bytes: u64,
    },
    /// Every block is local and durable; the source copy was released by
    /// its policy.
    Local {
        from: String,
        path: PathBuf,
        disk_bytes: u64,
        wire_bytes: u64,
        total_ms: u64,
        /// The source checked, before releasing its copy, that every block
        /// the guest did not write here equals its own disk
        /// ([`wanmig_storage::verify`]: a digest over those blocks computed
        /// at both sites).
        #[serde(default)]
        verified: bool,
    },
    /// The copy failed; the VM's disk reads of missing blocks fail.
    Failed { from: String, reason: String },
    /// Migrated with `--no-storage`: the disk stays authoritative at
    /// `from`; the VM reads missing blocks on demand and writes here. `wanmig
    /// storage migrate VM` (at this site) starts the background copy.
    RemoteOnly {
        from: String,
        path: PathBuf,
        local_blocks: u64,
        total_blocks: u64,
        wire_bytes: u64,
    },
}

fn percent(local: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        local as f64 * 100.0 / total as f64
    }
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskState::Copying {
                from,
                local_blocks,
                total_blocks,
                ..
            } if *total_blocks > 0 => write!(
                f,
                "copying from {from} ({:.0}% local)",
                percent(*local_blocks, *total_blocks)
            ),
            DiskState::Copying { from, .. } => write!(f, "copying from {from}"),
            DiskState::Local {
                total_ms, verified, ..
            } => write!(
                f,
                "local (copied in {:.1} s{})",
                *total_ms as f64 / 1e3,
                if *verified { ", verified" } else { "" }
            ),
            DiskState::Failed { from, reason } => write!(f, "copy from {from} failed: {reason}"),
            DiskState::RemoteOnly {
                from,
                local_blocks,
                total_blocks,
                ..
            } => write!(
                f,
                "remote-only at {from} ({:.0}% local; `wanmig storage migrate` copies the rest)",
                percent(*local_blocks, *total_blocks)
            ),
        }
    }
}

impl DiskState {
    /// Whether the disk still depends on the source site.
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            DiskState::Copying { .. } | DiskState::RemoteOnly { .. }
        )
    }
}

/// How this site exports and imports VM disks (see [`VmHost::attach_storage`]).
struct Storage {
    relay: crate::storage_relay::StorageRelay,
    settings: crate::storage_relay::StorageSettings,
    runtime: tokio::runtime::Handle,
}

/// How long an arriving VM's first disk access waits for the import to
/// start after the handover before it fails.
const DISK_ATTACH_WAIT: Duration = Duration::from_secs(30);

/// The virtio-block backend of an arriving VM: the VM is built before the
/// handover, but the source VM writes its disk until then, so the import
/// starts only after the handover; disk accesses wait for it.
struct PendingDisk {
    len: u64,
    slot: Mutex<Option<Result<RemoteBackend, String>>>,
    ready: Condvar,
}

impl PendingDisk {
    fn set(&self, disk: Result<Arc<RemoteDisk>, String>) {
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
            Some(Err(reason)) => Err(std::io::Error::other(reason.clone())),
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

/// Where a VM stands at this site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum VmState {
    /// Runs here.
    Running,
    /// Runs here while being migrated to `to`.
    MigratingOut { to: String },
    /// Being received from `from`; not running yet.
    Incoming { from: String },
    /// Handed over to `to`, which confirmed it runs there.
    MigratedAway { to: String },
    /// Handed over to `to`, but `to` did not confirm it resumed: it runs
    /// there unless `to` lost it; it never runs here again.
    HandoverUnconfirmed { to: String, reason: String },
    /// The guest stopped or the VMM failed.
    Failed { reason: String },
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Running => write!(f, "running"),
            VmState::MigratingOut { to } => write!(f, "migrating to {to}"),
            VmState::Incoming { from } => write!(f, "arriving from {from}"),
            VmState::MigratedAway { to } => write!(f, "migrated to {to}"),
            VmState::HandoverUnconfirmed { to, reason } => {
                write!(f, "handed over to {to}, unconfirmed: {reason}")
            }
            VmState::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// The state rules both VM hosts ([`VmHost`] and the process host) apply
/// to their table of VMs, kept here so the two cannot drift apart.
impl VmState {
    /// Whether a VM in this state may be replaced by a new one of the same
    /// name (it does not and will not run here).
    pub(crate) fn replaceable(&self) -> bool {
        matches!(
            self,
            VmState::MigratedAway { .. }
                | VmState::HandoverUnconfirmed { .. }
                | VmState::Failed { .. }
        )
    }

    /// What a handover to `to` that the source could not confirm becomes
    /// once `to` answers whether the VM runs there; `None` when this is no
    /// unconfirmed handover to `to` (nothing to settle).
    pub(crate) fn settled(&self, to: &str, running_there: bool) -> Option<VmState> {
        if !matches!(self, VmState::HandoverUnconfirmed { to: t, .. } if t == to) {
            return None;
        }
        Some(if running_there {
            VmState::MigratedAway { to: to.to_string() }
        } else {
            VmState::Failed {
                reason: format!(
                    "handed over to {to}, which discarded it: the VM runs nowhere; start it again"
                ),
            }
        })
    }
}

impl HostError {
    /// `name` is in `state`, in which it cannot do `action`.
    pub(crate) fn busy(name: &str, state: &VmState, action: &'static str) -> HostError {
        HostError::Busy {
            name: name.to_string(),
            state: state.to_string(),
            action,
        }
    }
}

/// Whether a new VM called `name` may take the place of `existing` (the
/// VM of that name here, if any) to `action`: an error naming the state
/// when that VM still runs, or is arriving, here.
pub(crate) fn ensure_replaceable(
    name: &str,
    existing: Option<&VmState>,
    action: &'static str,
) -> Result<(), HostError> {
    match existing {
        Some(state) if !state.replaceable() => Err(HostError::busy(name, state, action)),
        _ => Ok(()),
    }
}

/// One VM as listed by `wanmig status` / `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    #[serde(flatten)]
    pub state: VmState,
    pub mem_size: u64,
    /// The guest's memory-workload iteration last reported (0 = none).
    pub iteration: u64,
    /// The outcome of the last migration attempt that left the VM here.
    pub last_error: Option<String>,
    /// The disk's follow-on storage migration, when it migrated here with
    /// storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DiskState>,
}

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
    fn storage_exports(&self) -> Vec<crate::storage_relay::ExportStatus> {
        Vec::new()
    }
}

struct Entry {
    config: VmConfig,
    state: VmState,
    /// The VM, while it is here (also kept after it was handed over, paused
    /// for good, so its last reports stay readable); `None` while a
    /// migration holds it or before it arrived.
    vm: Option<Vm>,
    net_port: Option<ChannelPort>,
    serial: Arc<Mutex<VecDeque<String>>>,
    last_error: Option<String>,
    storage: Option<DiskState>,
    /// The remote-backed disk while its copy runs (for live progress and
    /// to start the background copy).
    disk: Option<Arc<RemoteDisk>>,
}

/// `state` with live progress from `disk`.
fn live_disk_state(state: &DiskState, disk: Option<&Arc<RemoteDisk>>) -> DiskState {
    let Some(disk) = disk else {
        return state.clone();
    };
    let (local, total) = disk.progress();
    let wire = disk.metrics().snapshot().bytes_after_reduction;
    match state {
        DiskState::Copying { from, path, .. } => DiskState::Copying {
            from: from.clone(),
            path: path.clone(),
            local_blocks: local,
            total_blocks: total,
            wire_bytes: wire,
        },
        DiskState::RemoteOnly { from, path, .. } => DiskState::RemoteOnly {
            from: from.clone(),
            path: path.clone(),
            local_blocks: local,
            total_blocks: total,
            wire_bytes: wire,
        },
        other => other.clone(),
    }
}

/// VMs running in this process.
#[derive(Default)]
pub struct VmHost {
    vms: Arc<Mutex<BTreeMap<String, Entry>>>,
    storage: Mutex<Option<Arc<Storage>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where an arriving VM's disk copy goes: `<dir>/<name>.disk`, or
/// `<dir>/<name>.<n>.disk` when an earlier copy is there (a kept copy of an
/// earlier visit must neither be overwritten nor resumed from: its blocks
/// are stale).
fn fresh_disk_path(dir: &std::path::Path, name: &str) -> PathBuf {
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

/// Checks a VM name (it appears in paths, logs and URLs).
pub fn validate_vm_name(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(HostError::BadName(name.to_string()))
    }
}

fn serial_sink(lines: Arc<Mutex<VecDeque<String>>>) -> wanmig_vmm::serial::SerialSink {
    Box::new(move |s: &str| {
        let mut l = lock(&lines);
        if l.len() == SERIAL_LINES {
            l.pop_front();
        }
        l.push_back(s.to_string());
    })
}

impl VmHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets VM disks follow their VMs: exports the disk of a VM that
    /// migrates away and imports the disk of one that arrives (into
    /// `settings.dir`). Call inside the tokio runtime the relay runs on.
    pub fn attach_storage(
        &self,
        relay: crate::storage_relay::StorageRelay,
        settings: crate::storage_relay::StorageSettings,
    ) {
        *lock(&self.storage) = Some(Arc::new(Storage {
            relay,
            settings,
            runtime: tokio::runtime::Handle::current(),
        }));
    }

    /// The state of `name`'s disk copy here, if it arrived with storage
    /// (with live progress while it copies).
    pub fn disk_state(&self, name: &str) -> Option<DiskState> {
        lock(&self.vms).get(name).and_then(|e| {
            e.storage
                .as_ref()
                .map(|s| live_disk_state(s, e.disk.as_ref()))
        })
    }

    /// Exports the disk of `name` (when it has one and storage is
    /// attached) so the destination can import it.
    fn export_disk(&self, name: &str, config: &VmConfig) -> Result<(), HostError> {
        let (Some(storage), Some(disk)) = (lock(&self.storage).clone(), &config.disk) else {
            return Ok(());
        };
        let err = |reason: String| HostError::Storage {
            name: name.to_string(),
            reason,
        };
        let len = std::fs::metadata(&disk.path)
            .map_err(|e| err(format!("cannot read {}: {e}", disk.path.display())))?
            .len();
        storage
            .relay
            .export(name, &disk.path, len, storage.settings.release)
            .map_err(|e| err(e.to_string()))
    }

    /// After the handover: imports `name`'s disk from `from` and hands it
    /// to the VM's block device; records the copy's progress and outcome.
    fn start_import(
        &self,
        storage: &Arc<Storage>,
        name: &str,
        from: &str,
        path: PathBuf,
        pending: Arc<PendingDisk>,
        background: bool,
    ) {
        let vms = Arc::clone(&self.vms);
        let vms2 = Arc::clone(&self.vms);
        let relay = storage.relay.clone();
        let disk_config = storage.settings.disk;
        let (name, from, dest) = (name.to_string(), from.to_string(), path);
        let (vm, ours) = (name.clone(), dest.clone());
        let (vm2, ours2) = (name.clone(), dest.clone());
        let set_state = move |state: DiskState| {
            if let Some(e) = lock(&vms).get_mut(&vm) {
                if e.config.disk.as_ref().is_some_and(|d| d.path == ours) {
                    e.storage = Some(state);
                    e.disk = None;
                }
            }
        };
        let set_disk = move |disk: Arc<RemoteDisk>| {
            if let Some(e) = lock(&vms2).get_mut(&vm2) {
                if e.config.disk.as_ref().is_some_and(|d| d.path == ours2) {
                    e.disk = Some(disk);
                }
            }
        };
        let vms3 = Arc::clone(&self.vms);
        let (vm3, ours3) = (name.clone(), dest.clone());
        // Whether the VM still runs here on this disk (else stop retrying).
        let still_ours = move || {
            lock(&vms3).get(&vm3).is_some_and(|e| {
                e.state == VmState::Running
                    && e.config.disk.as_ref().is_some_and(|d| d.path == ours3)
            })
        };
        storage.runtime.spawn(async move {
            // The link may be down right after the handover: keep trying
            // (the source stays authoritative; guest I/O to missing blocks
            // waits up to DISK_ATTACH_WAIT meanwhile). A refusal is final.
            let import = loop {
                let r = relay
                    .import_with(&from, &name, &dest, pending.len, disk_config, background)
                    .await;
                match r {
                    Err(
                        e @ (crate::storage_relay::StorageRelayError::Link { .. }
                        | crate::storage_relay::StorageRelayError::Peering(_)),
                    ) if still_ours() => {
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
                    pending.set(Err(e.to_string()));
                    set_state(DiskState::Failed {
                        from,
                        reason: e.to_string(),
                    });
                    return;
                }
            };
            pending.set(Ok(Arc::clone(import.disk())));
            set_disk(Arc::clone(import.disk()));
            tracing::info!(vm = name, from, background, "disk import started");
            match import.finish().await {
                Ok(r) => {
                    tracing::info!(vm = name, from, total_ms = r.total_ms, "disk is local");
                    set_state(DiskState::Local {
                        from,
                        path: dest,
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

    /// Runs `f` on the VM called `name` if it is held here (running, or
    /// released after a handover).
    pub fn with_vm<R>(&self, name: &str, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        lock(&self.vms).get(name).and_then(|e| e.vm.as_ref()).map(f)
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        lock(&self.vms).get(name).map(|e| e.state.clone())
    }

    /// The far end of the VM's in-process virtio-net card (once per run
    /// here), for the overlay to attach.
    pub fn take_net_port(&self, name: &str) -> Option<ChannelPort> {
        lock(&self.vms).get_mut(name)?.net_port.take()
    }

    /// The VM's last serial console lines.
    pub fn serial(&self, name: &str) -> Vec<String> {
        lock(&self.vms)
            .get(name)
            .map(|e| lock(&e.serial).iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl VmHosting for VmHost {
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError> {
        validate_vm_name(name)?;
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        ensure_replaceable(
            name,
            lock(&self.vms).get(name).map(|e| &e.state),
            "be started again",
        )?;
        let serial = Arc::new(Mutex::new(VecDeque::new()));
        let vm = Vm::create(config.clone(), serial_sink(serial.clone())).map_err(|e| {
            HostError::Start {
                name: name.to_string(),
                reason: e.to_string(),
            }
        })?;
        vm.start().map_err(|e| HostError::Start {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        let net_port = vm.take_net_port();
        let mut vms = lock(&self.vms);
        ensure_replaceable(name, vms.get(name).map(|e| &e.state), "be started again")?;
        tracing::info!(vm = name, mem = config.mem_size, "VM started");
        vms.insert(
            name.to_string(),
            Entry {
                config,
                state: VmState::Running,
                vm: Some(vm),
                net_port,
                serial,
                last_error: None,
                storage: None,
                disk: None,
            },
        );
        Ok(())
    }

    fn config(&self, name: &str) -> Result<VmConfig, HostError> {
        let vms = lock(&self.vms);
        let e = vms
            .get(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        let config = match e.state {
            VmState::Running => e.config.clone(),
            ref s => return Err(HostError::busy(name, s, "be migrated")),
        };
        // Chaining a second storage copy onto an unfinished one is not
        // supported: the disk would be at two sites at once.
        if let Some(d) = e.storage.as_ref().filter(|d| d.is_remote()) {
            let d = live_disk_state(d, e.disk.as_ref());
            let hint = match d {
                DiskState::RemoteOnly { .. } => format!(
                    "run `wanmig storage migrate {name}` at this site first and wait until it reports the disk local"
                ),
                _ => format!(
                    "wait until its disk copy finishes (`wanmig storage migrate {name}` at this site shows the progress)"
                ),
            };
            return Err(HostError::Storage {
                name: name.to_string(),
                reason: format!("its disk is {d}, so it cannot migrate on yet: {hint}"),
            });
        }
        drop(vms);
        // The relay asks for the config before it opens the migration; the
        // disk is exported now so the destination can ask for its size.
        self.export_disk(name, &config)?;
        Ok(config)
    }

    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        mut stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError> {
        let mut vm = {
            let mut vms = lock(&self.vms);
            let e = vms
                .get_mut(name)
                .ok_or_else(|| HostError::Unknown(name.to_string()))?;
            if e.state != VmState::Running || e.vm.is_none() {
                return Err(HostError::busy(name, &e.state, "be migrated"));
            }
            e.state = VmState::MigratingOut { to: to.to_string() };
            e.vm.take().expect("checked above")
        };
        let result = migrate_to(&mut vm, &mut stream, opts);
        drop(stream);
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else {
            return result.map_err(Into::into);
        };
        e.vm = Some(vm);
        match &result {
            Ok(_) => {
                e.state = VmState::MigratedAway { to: to.to_string() };
                e.last_error = None;
                e.net_port = None;
            }
            Err(err) if err.vm_kept_at_source() => {
                e.state = VmState::Running;
                e.last_error = Some(format!("migration to {to} failed: {err}"));
            }
            Err(err) => {
                e.state = VmState::HandoverUnconfirmed {
                    to: to.to_string(),
                    reason: err.to_string(),
                };
                e.net_port = None;
            }
        }
        result.map_err(Into::into)
    }

    fn receive(
        &self,
        name: &str,
        from: &str,
        config: VmConfig,
        mut stream: UnixStream,
        opts: &ReceiveOptions,
    ) -> Result<IncomingReport, HostError> {
        validate_vm_name(name)?;
        let mut config = config;
        let storage = lock(&self.storage).clone();
        let mut background = true;
        // With storage, the disk comes from `from` into this site's disk
        // directory; the VM's config names the local copy.
        let pending = match (&storage, &mut config.disk) {
            (Some(st), Some(disk)) => {
                let err = |reason: String| HostError::Storage {
                    name: name.to_string(),
                    reason,
                };
                let exported = st
                    .runtime
                    .block_on(st.relay.exported_disk(from, name))
                    .map_err(|e| err(e.to_string()))?;
                let len = exported.len;
                background = exported.background;
                std::fs::create_dir_all(&st.settings.dir).map_err(|e| {
                    err(format!(
                        "cannot create the disk directory {} ([storage] dir): {e}",
                        st.settings.dir.display()
                    ))
                })?;
                disk.path = fresh_disk_path(&st.settings.dir, name);
                Some(Arc::new(PendingDisk {
                    len,
                    slot: Mutex::new(None),
                    ready: Condvar::new(),
                }))
            }
            _ => None,
        };
        config
            .validate()
            .map_err(|e| HostError::Config(e.to_string()))?;
        let serial = Arc::new(Mutex::new(VecDeque::new()));
        // Reserve the name: a second migration of the same VM to this site
        // must not race this one.
        let previous = {
            let mut vms = lock(&self.vms);
            ensure_replaceable(name, vms.get(name).map(|e| &e.state), "be received")?;
            vms.insert(
                name.to_string(),
                Entry {
                    config: config.clone(),
                    state: VmState::Incoming {
                        from: from.to_string(),
                    },
                    vm: None,
                    net_port: None,
                    serial: serial.clone(),
                    last_error: None,
                    storage: None,
                    disk: None,
                },
            )
        };
        let disk = pending
            .as_ref()
            .map(|p| Box::new(PendingBackend(Arc::clone(p))) as wanmig_vmm::DiskBackend);
        let result =
            receive_from_with_disk(&mut stream, config.clone(), serial_sink(serial), opts, disk);
        drop(stream);
        let mut vms = lock(&self.vms);
        match result {
            Ok((vm, report)) => {
                if let Some(e) = vms.get_mut(name) {
                    e.net_port = vm.take_net_port();
                    e.vm = Some(vm);
                    e.state = VmState::Running;
                }
                tracing::info!(vm = name, from, "VM arrived and runs here");
                if let (Some(st), Some(p), Some(disk)) = (&storage, pending, &config.disk) {
                    if let Some(e) = vms.get_mut(name) {
                        let (from, path) = (from.to_string(), disk.path.clone());
                        e.storage = Some(if background {
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
                        });
                    }
                    drop(vms);
                    self.start_import(st, name, from, disk.path.clone(), p, background);
                }
                Ok(report)
            }
            Err(err) => {
                match previous {
                    Some(p) => vms.insert(name.to_string(), p),
                    None => vms.remove(name),
                };
                Err(err.into())
            }
        }
    }

    fn settle_handover(&self, name: &str, to: &str, running_there: bool) {
        let mut vms = lock(&self.vms);
        let Some(e) = vms.get_mut(name) else { return };
        if let Some(state) = e.state.settled(to, running_there) {
            e.state = state;
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        lock(&self.vms)
            .iter()
            .map(|(name, e)| VmInfo {
                name: name.clone(),
                state: e.state.clone(),
                mem_size: e.config.mem_size,
                iteration: e
                    .vm
                    .as_ref()
                    .and_then(|vm| vm.reports().mem_samples().last().map(|s| s.iteration))
                    .unwrap_or(0),
                last_error: e.last_error.clone(),
                storage: e
                    .storage
                    .as_ref()
                    .map(|s| live_disk_state(s, e.disk.as_ref())),
            })
            .collect()
    }

    fn set_storage_background(&self, name: &str, background: bool) -> Result<(), HostError> {
        match lock(&self.storage).clone() {
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

    fn storage_migrate(&self, name: &str) -> Result<DiskState, HostError> {
        let mut vms = lock(&self.vms);
        let e = vms
            .get_mut(name)
            .ok_or_else(|| HostError::Unknown(name.to_string()))?;
        let err = |reason: String| HostError::Storage {
            name: name.to_string(),
            reason,
        };
        match e.storage.clone() {
            None => Err(err(match &e.state {
                VmState::MigratedAway { to } => format!(
                    "the VM now runs at {to}: run `wanmig storage migrate {name}` against {to}'s gateway"
                ),
                _ => "its disk did not migrate here (nothing to copy)".to_string(),
            })),
            Some(DiskState::RemoteOnly { from, path, .. }) => {
                let Some(disk) = e.disk.clone() else {
                    return Err(err(
                        "the disk import has not started yet; retry in a moment".into(),
                    ));
                };
                disk.set_background(true);
                e.storage = Some(DiskState::Copying {
                    from: from.clone(),
                    path,
                    local_blocks: 0,
                    total_blocks: 0,
                    wire_bytes: 0,
                });
                tracing::info!(vm = name, from, "background disk copy started by the operator");
                Ok(live_disk_state(e.storage.as_ref().expect("set above"), Some(&disk)))
            }
            // Already copying or local: report where it stands (idempotent).
            Some(s) => Ok(live_disk_state(&s, e.disk.as_ref())),
        }
    }

    fn storage_exports(&self) -> Vec<crate::storage_relay::ExportStatus> {
        lock(&self.storage)
            .as_ref()
            .map(|st| st.relay.exports())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vm_that_left_or_failed_may_be_replaced() {
        let away = VmState::MigratedAway { to: "b".into() };
        let running = VmState::Running;
        assert!(ensure_replaceable("web", None, "be started again").is_ok());
        assert!(ensure_replaceable("web", Some(&away), "be started again").is_ok());
        let err = ensure_replaceable("web", Some(&running), "be received").unwrap_err();
        assert!(matches!(
            &err,
            HostError::Busy { name, action: "be received", .. } if name == "web"
        ));
        assert!(!VmState::Incoming { from: "a".into() }.replaceable());
        assert!(VmState::Failed { reason: "x".into() }.replaceable());
    }

    #[test]
    fn only_an_unconfirmed_handover_to_that_site_settles() {
        let unconfirmed = VmState::HandoverUnconfirmed {
            to: "b".into(),
            reason: "link cut".into(),
        };
        assert_eq!(
            unconfirmed.settled("b", true),
            Some(VmState::MigratedAway { to: "b".into() })
        );
        assert!(matches!(
            unconfirmed.settled("b", false),
            Some(VmState::Failed { reason }) if reason.contains("runs nowhere")
        ));
        assert_eq!(unconfirmed.settled("c", true), None);
        assert_eq!(VmState::Running.settled("b", true), None);
    }

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

    #[test]
    fn names_are_checked() {
        for ok in ["web", "db-1", "a.b_c"] {
            validate_vm_name(ok).unwrap();
        }
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_vms_and_bad_configs_are_refused_with_reasons() {
        let host = VmHost::new();
        let e = host.config("nope").unwrap_err();
        assert!(e.to_string().contains("not known"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            host.migrate_out("nope", "site-b", a, &MigrateOptions::default()),
            Err(HostError::Unknown(_))
        ));
        let bad = VmConfig {
            mem_size: 12345,
            ..VmConfig::default()
        };
        let e = host.start("x", bad).unwrap_err();
        assert!(e.to_string().contains("mem_size"), "{e}");
        assert!(host.list().is_empty());
    }

    #[test]
    fn states_read_well() {
        let s = VmState::HandoverUnconfirmed {
            to: "site-b".into(),
            reason: "link down".into(),
        };
        assert_eq!(
            s.to_string(),
            "handed over to site-b, unconfirmed: link down"
        );
        let j = serde_json::to_string(&VmState::MigratedAway { to: "b".into() }).unwrap();
        assert_eq!(j, r#"{"state":"migrated-away","to":"b"}"#);
    }
}
