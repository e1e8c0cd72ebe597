//! VMs hosted in this process ([`VmHost`]): wanmig-vmm's `Vm`, one set of
//! vCPU threads each, which needs no root and lets one process run several
//! sites (what `wanmig demo` and the tests use). Its VMs' disks follow them
//! when storage is attached ([`VmHost::attach_storage`],
//! [`super::disk_follow`]); their network cards are plugged into the
//! segment they name while they run here ([`VmHost::attach_overlay`],
//! [`super::nics`]). A VM that has left (handed over, or settled as
//! moved) gives its memory back: what stays is a [`ReleasedVm`], its last
//! reports and memory digest.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use wanmig_migration::admin::RunExit;
use wanmig_migration::machine::VmConfig;
use wanmig_migration::run::{IncomingReport, MigrateOptions, MigrationReport, ReceiveOptions};
use wanmig_vmm::guest_control::ReportLog;
use wanmig_vmm::virtio::{ChannelPort, RawFileBackend};
use wanmig_vmm::{migrate_to, receive_from_with_disk, DiskBackend, Vm};

use super::disk_follow::{ensure_disk_settled, DiskFollow};
use super::disk_state::DiskState;
use super::error::HostError;
use super::files::VmFiles;
use super::hosting::VmHosting;
use super::nics::Nics;
use super::registry::{validate_vm_name, Departure, Registry, VmInfo, VmState};
use crate::config::StorageSettings;
use crate::overlay_service::OverlayHandle;
use crate::storage_relay::{ExportStatus, StorageRelay};

/// Serial console lines kept per VM.
const SERIAL_LINES: usize = 200;

/// Where a VM that boots here says it comes from while it boots.
const BOOTING: &str = "this site (booting)";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What stays of a VM that left this site once its memory is freed: how
/// its run here ended, the guest's last reports and the digest of its
/// memory when it stopped here.
#[derive(Debug, Clone)]
pub struct ReleasedVm {
    pub exit: Option<RunExit>,
    pub reports: ReportLog,
    pub memory_digest: [u8; 32],
}

impl ReleasedVm {
    /// Keeps the record of `vm` and drops it, which unmaps its memory.
    fn of(vm: Vm) -> Self {
        ReleasedVm {
            exit: vm.exit_status(),
            reports: vm.reports(),
            memory_digest: vm.memory_digest(),
        }
    }
}

/// What this host keeps of a VM besides its registry record.
struct InProcess {
    /// The VM, while it is here (also while a handover is unconfirmed,
    /// paused); `None` while a migration holds it, before it arrived, or
    /// after it left. A slot of its own, so work on one VM
    /// ([`VmHost::with_vm`]) never holds the registry's lock.
    vm: Arc<Mutex<Option<Vm>>>,
    /// What stays of the VM once it left (its memory freed).
    released: Option<ReleasedVm>,
    /// The far end of its network card, while it runs here and names no
    /// segment (one that does is plugged by [`Nics`]).
    net_port: Option<ChannelPort>,
    serial: Arc<Mutex<VecDeque<String>>>,
}

impl InProcess {
    fn new() -> Self {
        InProcess {
            vm: Arc::new(Mutex::new(None)),
            released: None,
            net_port: None,
            serial: Arc::new(Mutex::new(VecDeque::new())),
        }
    }
}

/// VMs running in this process.
#[derive(Default)]
pub struct VmHost {
    vms: Registry<InProcess>,
    disks: DiskFollow,
    nics: Nics,
    files: VmFiles,
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
    /// A host whose VMs may name no files (no memory image, no disk).
    pub fn new() -> Self {
        Self::default()
    }

    /// A host whose VMs may name the files `files` allows.
    pub fn with_files(files: VmFiles) -> Self {
        VmHost {
            files,
            ..Self::default()
        }
    }

    /// Lets VM disks follow their VMs (see [`DiskFollow::attach`]). Call
    /// inside the tokio runtime the relay runs on.
    pub fn attach_storage(&self, relay: StorageRelay, settings: StorageSettings) {
        self.disks.attach(relay, settings);
    }

    /// Plugs the network cards of VMs that name a segment into `overlay`
    /// while they run here. Call inside the tokio runtime the overlay runs
    /// on.
    pub fn attach_overlay(&self, overlay: OverlayHandle) {
        self.nics.attach(overlay);
    }

    /// The overlay port `name`'s network card is plugged into here.
    pub fn nic_port(&self, name: &str) -> Option<wanmig_overlay::PortId> {
        self.nics.port(name)
    }

    /// The state of `name`'s disk copy here, if it arrived with storage
    /// (with live progress while it copies).
    pub fn disk_state(&self, name: &str) -> Option<DiskState> {
        self.vms.with(name, |e| e.disk()).flatten()
    }

    /// What stays of `name` after it left this site.
    pub fn released(&self, name: &str) -> Option<ReleasedVm> {
        self.vms.with(name, |e| e.host.released.clone()).flatten()
    }

    /// The guest's reports of `name`, whether it is held here or left.
    pub fn reports(&self, name: &str) -> Option<ReportLog> {
        self.with_vm(name, |v| v.reports())
            .or_else(|| self.released(name).map(|r| r.reports))
    }

    /// How `name`'s run here ended, if it has (also after it left).
    pub fn exit_status(&self, name: &str) -> Option<RunExit> {
        self.with_vm(name, |v| v.exit_status())
            .or_else(|| self.released(name).map(|r| r.exit))
            .flatten()
    }

    /// Frees the memory of `name` if it has left: its VM object becomes a
    /// [`ReleasedVm`].
    fn release_if_left(&self, name: &str) {
        let slot = self.vms.with(name, |e| {
            matches!(e.record().state, VmState::MigratedAway { .. }).then(|| Arc::clone(&e.host.vm))
        });
        let Some(vm) = slot.flatten().and_then(|s| lock(&s).take()) else {
            return;
        };
        self.nics.unplug(name);
        let released = ReleasedVm::of(vm);
        self.vms.with_host(name, |h| h.released = Some(released));
        tracing::info!(vm = name, "VM left; its memory is freed");
    }

    /// Runs `f` on the VM called `name` if it is held here (running, or
    /// paused while its handover is unconfirmed).
    pub fn with_vm<R>(&self, name: &str, f: impl FnOnce(&Vm) -> R) -> Option<R> {
        let slot = self.vms.with(name, |e| Arc::clone(&e.host.vm))?;
        let vm = lock(&slot);
        vm.as_ref().map(f)
    }

    /// The state of `name` here.
    pub fn state(&self, name: &str) -> Option<VmState> {
        self.vms.state(name)
    }

    /// The far end of the VM's in-process virtio-net card (once per run
    /// here) when its configuration names no segment, for the caller to
    /// wire up.
    pub fn take_net_port(&self, name: &str) -> Option<ChannelPort> {
        self.vms.with_host(name, |h| h.net_port.take()).flatten()
    }

    /// The VM's last serial console lines.
    pub fn serial(&self, name: &str) -> Vec<String> {
        self.vms
            .with(name, |e| lock(&e.host.serial).iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl VmHosting for VmHost {
    fn start(&self, name: &str, config: VmConfig) -> Result<(), HostError> {
        validate_vm_name(name)?;
        config.validate()?;
        self.nics.check(name, &config)?;
        let host = InProcess::new();
        let serial = Arc::clone(&host.serial);
        let held = self
            .vms
            .reserve(name, config.clone(), BOOTING, "be started again", host)?;
        let vm_err = |source| HostError::Vm {
            name: name.to_string(),
            source,
        };
        let files = self.files.open(name, &config)?;
        let disk = match (files.disk, &config.disk) {
            (Some(f), Some(d)) => Some(Box::new(
                RawFileBackend::from_file(f, d.path.clone())
                    .map_err(HostError::start_io(name, "reading the disk's size"))?,
            ) as DiskBackend),
            _ => None,
        };
        let vm = Vm::create_with_files(config.clone(), serial_sink(serial), disk, files.mem_image)
            .map_err(vm_err)?;
        vm.start().map_err(vm_err)?;
        let net_port = vm
            .take_net_port()
            .and_then(|p| self.nics.plug(name, &config, p));
        tracing::info!(vm = name, mem = config.mem_size, "VM started");
        held.commit(None, |h| {
            *lock(&h.vm) = Some(vm);
            h.net_port = net_port;
        });
        Ok(())
    }

    fn config(&self, name: &str) -> Result<VmConfig, HostError> {
        self.vms.migratable(name, |e| ensure_disk_settled(name, e))
    }

    fn export_disk(&self, name: &str, to: &str) -> Result<(), HostError> {
        // The relay exports before it opens the migration, so the
        // destination can ask for the disk's size.
        let config = self.config(name)?;
        self.disks.export(name, &config, to)
    }

    fn withdraw_disk(&self, name: &str, to: &str) {
        // Only while the VM is here (running, or failed here): once it
        // left, its export is the copy that follows it.
        if matches!(
            self.vms.state(name),
            Some(VmState::Running | VmState::Failed { .. })
        ) {
            self.disks.withdraw(name, to);
        }
    }

    fn migrate_out(
        &self,
        name: &str,
        to: &str,
        mut stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, HostError> {
        let slot = self.vms.depart(name, to, |h| Arc::clone(&h.vm))?;
        let Some(mut vm) = lock(&slot).take() else {
            // Running without a VM object cannot happen (a reservation is
            // committed with one); refuse rather than pretend.
            let state = self
                .vms
                .departed(name, to, Departure::Stayed { error: None }, |_, _| ());
            return Err(HostError::busy(
                name,
                &state.unwrap_or(VmState::Running),
                "be migrated",
            ));
        };
        let result = migrate_to(&mut vm, &mut stream, opts);
        drop(stream);
        let how = match &result {
            Ok(_) => Departure::Left,
            Err(err) if err.vm_kept_at_source() => Departure::Stayed {
                error: Some(format!("migration to {to} failed: {err}")),
            },
            Err(err) => Departure::Unconfirmed {
                reason: err.to_string(),
            },
        };
        self.vms.departed(name, to, how, |h, state| {
            *lock(&h.vm) = Some(vm);
            if *state != VmState::Running {
                h.net_port = None;
            }
        });
        self.release_if_left(name);
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
        // With storage, the disk comes from `from` into this site's disk
        // directory; the VM's config names the local copy.
        let arrival = self.disks.prepare_arrival(name, from, &mut config)?;
        config.validate()?;
        self.nics.check(name, &config)?;
        let host = InProcess::new();
        let serial = Arc::clone(&host.serial);
        // Hold the name: a second migration of the same VM to this site
        // must not race this one.
        let held = self
            .vms
            .reserve(name, config.clone(), from, "be received", host)?;
        let disk = arrival.as_ref().map(|a| a.backend());
        let (vm, report) =
            receive_from_with_disk(&mut stream, config.clone(), serial_sink(serial), opts, disk)?;
        drop(stream);
        let net_port = vm
            .take_net_port()
            .and_then(|p| self.nics.plug(name, &config, p));
        let disk_path = config.disk.as_ref().map(|d| d.path.clone());
        let first = match (&arrival, &disk_path) {
            (Some(a), Some(path)) => Some(a.first_state(from, path)),
            _ => None,
        };
        held.commit(first, |h| {
            *lock(&h.vm) = Some(vm);
            h.net_port = net_port;
        });
        tracing::info!(vm = name, from, "VM arrived and runs here");
        if let (Some(a), Some(path)) = (arrival, disk_path) {
            self.disks.arrived(&self.vms, name, from, path, a);
        }
        Ok(report)
    }

    fn settle_handover(&self, name: &str, to: &str, running_there: bool) {
        self.vms.settle(name, to, running_there);
        if !running_there {
            self.withdraw_disk(name, to);
        }
        // The relay settles from an async task; freeing and digesting a
        // large memory must not stall the runtime's other tasks.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.release_if_left(name))
            }
            _ => self.release_if_left(name),
        }
    }

    fn list(&self) -> Vec<VmInfo> {
        // The iteration is read from each VM after the registry's lock is
        // released.
        self.vms
            .list(|h| {
                let released = h.released.as_ref().map(|r| r.reports.clone());
                (Arc::clone(&h.vm), released)
            })
            .into_iter()
            .map(|(mut info, (slot, released))| {
                info.iteration = lock(&slot)
                    .as_ref()
                    .map(|vm| vm.reports())
                    .or(released)
                    .and_then(|r| r.mem_samples().last().map(|s| s.iteration))
                    .unwrap_or(0);
                info
            })
            .collect()
    }

    fn set_storage_background(&self, name: &str, background: bool) -> Result<(), HostError> {
        self.disks.set_background(name, background)
    }

    fn storage_migrate(&self, name: &str) -> Result<DiskState, HostError> {
        self.disks.migrate(&self.vms, name)
    }

    fn storage_exports(&self) -> Vec<ExportStatus> {
        self.disks.exports()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A card on a segment needs an overlay to plug into.
        let on_segment = VmConfig {
            net: Some(wanmig_migration::machine::NetConfig {
                mac: [2, 0, 0, 0, 0, 1],
                ip: std::net::Ipv4Addr::new(198, 18, 0, 2),
                prefix_len: 15,
                port: 7000,
                tap: None,
                segment: Some("lan".into()),
            }),
            ..VmConfig::default()
        };
        let e = host.start("x", on_segment).unwrap_err();
        assert!(e.to_string().contains("net.segment"), "{e}");
        assert!(host.list().is_empty());
    }
}
