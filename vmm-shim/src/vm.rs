//! A VM: KVM VM and vCPU, guest memory, the boot environment, the vCPU
//! thread, and the operations migration needs (pause, resume, dirty
//! tracking, state save/restore, memory digest).

use crate::dirty_log::{self, SlotError};
use crate::guest_control::ReportLog;
use crate::memory::{self, GuestMem, MemoryError};
use crate::serial::{Serial, SerialSink};
use crate::state::VmState;
use crate::vcpu::{lock, Shared, VcpuError, VcpuHandle};
use crate::vcpu_state::VcpuCaps;
use crate::virtio::{
    channel_pair, BlockBackend, ChannelPort, NetBackend, RawFileBackend, TapBackend, VirtioBlock,
    VirtioBus, VirtioMmio, VirtioNet, VirtioState,
};
use crate::{boot, elf};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use wanmig_guest_abi::virtio::{BLK_MMIO_BASE, NET_MMIO_BASE};
use wanmig_migration::admin::{MemSample, RunExit};
use wanmig_migration::machine::{ConfigError, VmConfig};

/// Errors creating or operating a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open /dev/kvm: {0}; is KVM available and are you in the kvm group?")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("cannot load the guest image: {0}")]
    Elf(#[from] elf::ElfError),
    #[error("cannot write the boot structures: {0}")]
    Boot(vm_memory::GuestMemoryError),
    #[error("cannot read the memory image {path}: {source}")]
    MemImage {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot restore VM state: {0}")]
    Restore(String),
    #[error("cannot set up the {what}: {detail}")]
    Device { what: &'static str, detail: String },
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// A running (or paused) VM with one vCPU.
pub struct Vm {
    config: VmConfig,
    // Field order matters for drop: the vCPU thread stops first, then the
    // VM fd goes, then the memory the slot pointed at.
    vcpu: VcpuHandle,
    vm_fd: VmFd,
    _kvm: Kvm,
    shared: Arc<Shared>,
    caps: VcpuCaps,
    logging: bool,
    net_port: Mutex<Option<ChannelPort>>,
    /// The size of a caller-provided disk backend, if one was given.
    disk_len: Option<u64>,
}

/// Frames a channel-backed virtio-net card queues before dropping.
const NET_CHANNEL_FRAMES: usize = 512;

/// A caller-provided disk behind the VM's virtio-block device, used instead
/// of opening `DiskConfig.path` (e.g. a remote-backed disk that is still
/// being copied from another site).
pub type DiskBackend = Box<dyn BlockBackend>;

/// Lets a boxed backend sit behind [`VirtioBlock`] (generic over its
/// backend).
struct BoxedDisk(DiskBackend);

impl BlockBackend for BoxedDisk {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Builds the virtio-mmio devices `config` asks for.
fn build_bus(
    config: &VmConfig,
    mem: &GuestMem,
    disk_backend: Option<DiskBackend>,
) -> Result<(VirtioBus, Option<ChannelPort>), VmError> {
    let dev_err = |what: &'static str| move |e: String| VmError::Device { what, detail: e };
    let mut bus = VirtioBus::new();
    let mut port = None;
    let space = Arc::new(mem.clone());
    if let Some(net) = &config.net {
        let backend: Box<dyn NetBackend> = match &net.tap {
            Some(name) => Box::new(
                TapBackend::create(name)
                    .map_err(|e| format!("TAP device {name}: {e} (needs CAP_NET_ADMIN)"))
                    .map_err(dev_err("virtio-net backend"))?,
            ),
            None => {
                let (backend, far) = channel_pair(NET_CHANNEL_FRAMES);
                port = Some(far);
                Box::new(backend)
            }
        };
        let dev = VirtioMmio::new(VirtioNet::new(backend, net.mac), space.clone())
            .map_err(|e| e.to_string())
            .map_err(dev_err("virtio-net device"))?;
        bus.add(NET_MMIO_BASE, Box::new(dev))
            .map_err(|e| e.to_string())
            .map_err(dev_err("virtio-net window"))?;
    }
    if let Some(disk) = &config.disk {
        let backend: DiskBackend = match disk_backend {
            Some(b) => b,
            None => Box::new(
                RawFileBackend::open(&disk.path)
                    .map_err(|e| format!("{}: {e}", disk.path.display()))
                    .map_err(dev_err("disk"))?,
            ),
        };
        let backend = BoxedDisk(backend);
        let dev = VirtioMmio::new(VirtioBlock::new(backend, "wanmig-disk"), space.clone())
            .map_err(|e| e.to_string())
            .map_err(dev_err("virtio-blk device"))?;
        bus.add(BLK_MMIO_BASE, Box::new(dev))
            .map_err(|e| e.to_string())
            .map_err(dev_err("virtio-blk window"))?;
    }
    Ok((bus, port))
}

impl Vm {
    /// Creates a VM from `config`, loads the built-in test guest, and
    /// leaves it paused before its first instruction; call [`Vm::start`].
    pub fn create(config: VmConfig, serial: SerialSink) -> Result<Vm, VmError> {
        Vm::create_with_disk(config, serial, None)
    }

    /// [`Vm::create`] with `disk` (when given) behind the virtio-block
    /// device instead of the file at `DiskConfig.path`.
    pub fn create_with_disk(
        config: VmConfig,
        serial: SerialSink,
        disk: Option<DiskBackend>,
    ) -> Result<Vm, VmError> {
        let image = match &config.mem_image {
            Some(path) => Some(
                std::fs::File::open(path).map_err(|source| VmError::MemImage {
                    path: path.clone(),
                    source,
                })?,
            ),
            None => None,
        };
        Vm::create_with_files(config, serial, disk, image)
    }

    /// [`Vm::create_with_disk`] with the memory image read from `mem_image`
    /// (an open file standing for `VmConfig.mem_image`, which is then only
    /// its name in messages) instead of opening that path.
    pub fn create_with_files(
        config: VmConfig,
        serial: SerialSink,
        disk: Option<DiskBackend>,
        mem_image: Option<std::fs::File>,
    ) -> Result<Vm, VmError> {
        let vm = Vm::create_empty_with_disk(config, serial, disk)?;
        let mem = &vm.shared.mem;
        if let Some(file) = mem_image {
            let path = vm.config.mem_image.clone().unwrap_or_default();
            let image = read_mem_image(file, vm.config.mem_size)
                .map_err(|source| VmError::MemImage { path, source })?;
            memory::preload(mem, &image)?;
        }
        let entry = elf::load(mem, crate::GUEST_IMAGE)?;
        let disk_sectors = match (&vm.config.disk, vm.disk_len) {
            (Some(_), Some(len)) => len / 512,
            (Some(d), None) => {
                std::fs::metadata(&d.path)
                    .map_err(|source| VmError::MemImage {
                        path: d.path.clone(),
                        source,
                    })?
                    .len()
                    / 512
            }
            (None, _) => 0,
        };
        boot::write_boot_structures(mem, &vm.config.boot_params(disk_sectors))
            .map_err(VmError::Boot)?;
        let regs = boot::initial_regs(entry);
        vm.vcpu.restore_boot(regs)?;
        Ok(vm)
    }

    /// Creates a VM with zeroed memory and a reset vCPU (paused), to be
    /// filled by an incoming migration.
    pub fn create_empty(config: VmConfig, serial: SerialSink) -> Result<Vm, VmError> {
        Vm::create_empty_with_disk(config, serial, None)
    }

    /// [`Vm::create_empty`] with `disk` (when given) behind the
    /// virtio-block device instead of the file at `DiskConfig.path`.
    pub fn create_empty_with_disk(
        config: VmConfig,
        serial: SerialSink,
        disk: Option<DiskBackend>,
    ) -> Result<Vm, VmError> {
        config.validate()?;
        let disk_len = disk.as_ref().map(|d| d.len());
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let mem = memory::create(config.mem_size)?;
        dirty_log::register(&vm_fd, &mem, false)?;
        let vcpu = vm_fd.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&boot::long_mode_sregs(sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_fpu(&boot::initial_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
        let caps = VcpuCaps::probe(&kvm, &vcpu);
        let (bus, net_port) = build_bus(&config, &mem, disk)?;
        tracing::debug!(?caps, "vCPU state capabilities");
        let shared = Arc::new(Shared {
            mem,
            serial: Mutex::new(Serial::default()),
            sink: Mutex::new(serial),
            reports: Mutex::new(ReportLog::default()),
            reports_changed: Condvar::new(),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            clock: Mutex::new(Default::default()),
            bus: Mutex::new(bus),
        });
        let vcpu = VcpuHandle::spawn(vcpu, caps.clone(), shared.clone())?;
        Ok(Vm {
            config,
            vcpu,
            vm_fd,
            _kvm: kvm,
            shared,
            caps,
            logging: false,
            net_port: Mutex::new(net_port),
            disk_len,
        })
    }

    /// The VM's configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMem {
        &self.shared.mem
    }

    /// What this host's KVM lets us save for the vCPU.
    pub fn vcpu_caps(&self) -> &VcpuCaps {
        &self.caps
    }

    /// The far end of a channel-backed virtio-net card (once): frames the
    /// guest sends come out of it, frames sent into it reach the guest.
    pub fn take_net_port(&self) -> Option<ChannelPort> {
        lock(&self.net_port).take()
    }

    /// Lets the vCPU run.
    pub fn start(&self) -> Result<(), VmError> {
        Ok(self.vcpu.resume()?)
    }

    /// Starts the VM and blocks until its run ends.
    pub fn run(&self) -> Result<RunExit, VmError> {
        self.start()?;
        loop {
            if let Some(e) = self.wait_exit(Duration::from_secs(3600)) {
                return Ok(e);
            }
        }
    }

    /// Stops the vCPU between instructions (and the guest clock with it).
    pub fn pause(&self) -> Result<(), VmError> {
        Ok(self.vcpu.pause()?)
    }

    /// Resumes after [`Vm::pause`].
    pub fn resume(&self) -> Result<(), VmError> {
        Ok(self.vcpu.resume()?)
    }

    /// Throttles the vCPU to `100 - percent` % of its time (auto-converge).
    pub fn set_throttle(&self, percent: u8) -> Result<(), VmError> {
        Ok(self.vcpu.throttle(percent)?)
    }

    /// How the run ended, if it has.
    pub fn exit_status(&self) -> Option<RunExit> {
        lock(&self.shared.exit).clone()
    }

    /// Waits up to `timeout` for the run to end.
    pub fn wait_exit(&self, timeout: Duration) -> Option<RunExit> {
        let deadline = Instant::now() + timeout;
        let mut e = lock(&self.shared.exit);
        while e.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            e = self
                .shared
                .exited
                .wait_timeout(e, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        e.clone()
    }

    /// A handle that can wait for the run to end without borrowing the VM.
    pub fn exit_watch(&self) -> ExitWatch {
        ExitWatch(self.shared.clone())
    }

    /// A copy of the guest's reports so far.
    pub fn reports(&self) -> ReportLog {
        lock(&self.shared.reports).clone()
    }

    /// Waits until the memory workload has reported iteration `n` or later
    /// and returns the first kept sample at or after `n`; `None` on timeout
    /// or when the run ended first.
    pub fn wait_mem_iteration(&self, n: u64, timeout: Duration) -> Option<MemSample> {
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.shared.reports);
        loop {
            let latest = r
                .latest(wanmig_guest_abi::REPORT_MEM_ITERATION)
                .map(|l| l.values[0]);
            if latest.is_some_and(|l| l >= n) {
                return r.mem_samples().into_iter().find(|s| s.iteration >= n);
            }
            if self.exit_status().is_some() {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            r = self
                .shared
                .reports_changed
                .wait_timeout(r, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// BLAKE3 over all of guest memory.
    pub fn memory_digest(&self) -> [u8; 32] {
        memory::digest(&self.shared.mem)
    }

    /// Switches KVM dirty logging on (clearing both dirty bitmaps) or off.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), VmError> {
        if on == self.logging {
            return Ok(());
        }
        dirty_log::register(&self.vm_fd, &self.shared.mem, on)?;
        self.logging = on;
        if on {
            memory::clear_vmm_dirty(&self.shared.mem);
        }
        Ok(())
    }

    /// Takes the pages dirtied since the last call (needs dirty logging).
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, VmError> {
        Ok(dirty_log::pages_of(&dirty_log::take_dirty(
            &self.vm_fd,
            &self.shared.mem,
        )?))
    }

    /// Saves the state of the paused VM (everything but memory).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let vcpu = self.vcpu.save()?;
        Ok(VmState {
            version: crate::state::STATE_VERSION,
            vcpu,
            caps: self.caps.clone(),
            guest_clock_ns: lock(&self.shared.clock).now_ns(Instant::now()),
            serial: lock(&self.shared.serial).clone(),
            reports_seen: lock(&self.shared.reports).total(),
            devices: Some(
                serde_json::to_value(lock(&self.shared.bus).save_state())
                    .map_err(|e| VmError::Restore(format!("cannot encode device state: {e}")))?,
            ),
        })
    }

    /// Restores `state` into this paused VM (memory is restored separately).
    pub fn restore_state(&self, state: VmState) -> Result<(), VmError> {
        let devices: Vec<VirtioState> = match &state.devices {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| VmError::Restore(format!("device state is malformed: {e}")))?,
            None => Vec::new(),
        };
        lock(&self.shared.bus)
            .restore_state(&devices)
            .map_err(|e| {
                VmError::Restore(format!("device state does not fit this VM's devices: {e}"))
            })?;
        let refused = self.vcpu.restore(state.vcpu)?;
        if !refused.is_empty() {
            tracing::warn!(
                "this host refused {} MSRs on restore: {:x?}",
                refused.len(),
                refused
            );
        }
        lock(&self.shared.clock).set(state.guest_clock_ns);
        *lock(&self.shared.serial) = state.serial;
        Ok(())
    }

    /// Announces the VM's network cards at their new location (a RARP per
    /// MAC), so switches and the overlay learn where it moved.
    pub fn announce(&self) {
        lock(&self.shared.bus).announce();
    }

    /// Pauses the VM for good: it was handed over and must never run here
    /// again. The run ends with [`RunExit::Stopped`].
    pub fn release(&self) {
        if let Err(e) = self.vcpu.pause() {
            tracing::warn!("pausing the released VM: {e}");
        }
        self.shared.finish(RunExit::Stopped);
    }
}

/// At most `mem_size` bytes of a memory image: the rest would not fit in
/// guest memory anyway, and an endless file (a device, a pipe) must not
/// exhaust this process's memory.
fn read_mem_image(file: std::fs::File, mem_size: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut image = Vec::new();
    file.take(mem_size).read_to_end(&mut image)?;
    Ok(image)
}

impl VcpuHandle {
    /// Sets the boot registers on the fresh vCPU.
    fn restore_boot(&self, regs: kvm_bindings::kvm_regs) -> Result<(), VcpuError> {
        let mut s = self.save()?;
        s.regs = regs;
        self.restore(s)?;
        Ok(())
    }
}

/// Waits for a VM's run to end (see [`Vm::exit_watch`]).
pub struct ExitWatch(Arc<Shared>);

impl ExitWatch {
    /// Waits up to `timeout`; `Some` once the run has ended.
    pub fn wait(&self, timeout: Duration) -> Option<RunExit> {
        let deadline = Instant::now() + timeout;
        let mut e = lock(&self.0.exit);
        while e.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            e = self
                .0
                .exited
                .wait_timeout(e, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        e.clone()
    }
}
