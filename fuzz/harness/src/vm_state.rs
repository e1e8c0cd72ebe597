//! Target `vm_state`: a migrated VM's state blob ([`VmState::decode`]) on
//! arbitrary bytes, then everything restoring it does that needs no KVM,
//! then the VM's first steps after the restore.
//!
//! What is reached, in the order `Vm::restore_state` does it:
//! - the decode (JSON, version check) and a re-encode round trip;
//! - the device state: decoded from the blob's `devices` value and
//!   restored into a virtio bus built as the VM builds it (virtio-net on
//!   an in-process channel, virtio-blk on a 4 MiB sparse file; the input
//!   picks which are present), over 16 MiB of guest memory into which the
//!   input writes (the seeds write the real VM's rings there); a restored
//!   bus must save back the state it was given;
//! - the vCPU state: [`vcpu_state::check`], the validation `restore` runs
//!   before its first ioctl, against capabilities the input picks;
//! - the guest clock and the UART, set from the blob, then used: the
//!   clock started and read a second later, a line written to the UART;
//! - the devices resumed: the net card announces itself (RARP), every
//!   device processes its queues (descriptor tables and rings at the
//!   restored addresses), every register is read.
//!
//! Not reached: the KVM ioctls that load registers, FPU/XSAVE, XCRs, debug
//! registers, LAPIC, MSRs, events and MP state into a vCPU (they need a
//! VM per input; KVM validates those values itself), and a vCPU running
//! the restored guest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes as _, GuestAddress};
use wanmig_guest_abi::virtio::{BLK_MMIO_BASE, NET_MMIO_BASE};
use wanmig_vmm::clock::GuestClock;
use wanmig_vmm::memory::GuestMem;
use wanmig_vmm::state::VmState;
use wanmig_vmm::vcpu_state::{self, VcpuCaps};
use wanmig_vmm::virtio::{
    channel_pair, RawFileBackend, VirtioBlock, VirtioBus, VirtioMmio, VirtioNet, VirtioState,
};

use crate::input::{Input, Script};

/// Guest memory the devices see: the smallest the shim maps, and the seed
/// VMs' size (their drivers keep the virtqueues in the guest heap).
pub const MEM_SIZE: u64 = 16 << 20;
/// The disk the block device restores onto (the seed VM's disk size).
pub const DISK_LEN: u64 = 4 << 20;
const HAS_NET: u8 = 1;
const HAS_BLK: u8 = 2;
/// Register window bytes read after the restore (registers and config).
const WINDOW_READ: u64 = 0x120;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let devices = input.u8();
    let caps = caps(input.u8());
    let patches: Vec<(u64, &[u8])> = (0..input.u8() % 16)
        .map(|_| (u64::from(input.u32()) % MEM_SIZE, input.blob()))
        .collect();
    let blob = input.rest();

    let Ok(state) = VmState::decode(blob) else {
        return;
    };
    let encoded = state.encode();
    let again = VmState::decode(&encoded).expect("an encoded state decodes");
    assert_eq!(
        again.encode(),
        encoded,
        "state does not survive encode/decode"
    );

    let mem = wanmig_vmm::memory::create(MEM_SIZE).expect("guest memory");
    for (at, bytes) in patches {
        let n = bytes.len().min((MEM_SIZE - at) as usize);
        mem.write_slice(&bytes[..n], GuestAddress(at))
            .expect("patch lies in guest memory");
    }
    let dir = crate::scratch_dir();
    let (mut bus, _port) = build_bus(devices, &mem, &dir.path().join("disk.img"));

    // Vm::restore_state: devices first, then the vCPU, then clock and UART.
    let restored: Vec<VirtioState> = match &state.devices {
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(d) => d,
            Err(_) => return,
        },
        None => Vec::new(),
    };
    if bus.restore_state(&restored).is_err() {
        return;
    }
    assert_eq!(
        bus.save_state(),
        restored,
        "a restored bus saves another state"
    );
    if vcpu_state::check(&caps, &state.vcpu).is_err() {
        return;
    }
    let mut clock = GuestClock::default();
    clock.set(state.guest_clock_ns);
    let mut serial = state.serial;

    // The VM resumes: the clock runs, the guest writes a line, the devices
    // announce themselves and process their queues, the guest reads them.
    let t0 = Instant::now();
    clock.start(t0);
    let later = clock.now_ns(t0 + Duration::from_secs(1));
    assert!(
        later >= state.guest_clock_ns,
        "the guest clock went backwards"
    );
    clock.stop(t0 + Duration::from_secs(2));
    for b in b"resumed\n" {
        serial.write(0, *b);
    }
    serial.read(wanmig_guest_abi::SERIAL_LSR_OFFSET);
    bus.announce();
    bus.process();
    let mut word = [0u8; 4];
    for base in [NET_MMIO_BASE, BLK_MMIO_BASE] {
        for off in (0..WINDOW_READ).step_by(4) {
            bus.read(base + off, &mut word);
        }
    }
    bus.process();
}

/// The capabilities of the restoring host: everything but what the input
/// clears.
fn caps(clear: u8) -> VcpuCaps {
    VcpuCaps {
        xsave: clear & 1 == 0,
        xcrs: clear & 2 == 0,
        lapic: clear & 4 == 0,
        vcpu_events: clear & 8 == 0,
        mp_state: clear & 16 == 0,
        debugregs: clear & 32 == 0,
        msrs: Vec::new(),
    }
}

/// The devices of a VM as `Vm` builds them (same windows, same order).
fn build_bus(
    devices: u8,
    mem: &GuestMem,
    disk: &std::path::Path,
) -> (VirtioBus, Option<wanmig_vmm::virtio::ChannelPort>) {
    let space = Arc::new(mem.clone());
    let mut bus = VirtioBus::new();
    let mut port = None;
    if devices & HAS_NET != 0 {
        let (backend, far) = channel_pair(4);
        port = Some(far);
        let dev = VirtioMmio::new(VirtioNet::new(backend, [0; 6]), space.clone())
            .expect("virtio-net device");
        bus.add(NET_MMIO_BASE, Box::new(dev)).expect("net window");
    }
    if devices & HAS_BLK != 0 {
        let backend = RawFileBackend::create(disk, DISK_LEN).expect("disk file");
        let dev = VirtioMmio::new(VirtioBlock::new(backend, "wanmig-disk"), space)
            .expect("virtio-blk device");
        bus.add(BLK_MMIO_BASE, Box::new(dev)).expect("blk window");
    }
    (bus, port)
}

/// The input for `blob` restored onto `devices`, with the capabilities
/// `clear` takes away and guest memory `patches`.
pub fn input(devices: u8, clear: u8, patches: &[(u32, Vec<u8>)], blob: &[u8]) -> Vec<u8> {
    let mut s = Script::new();
    s.u8(devices).u8(clear).u8(patches.len() as u8);
    for (at, bytes) in patches {
        s.u32(*at).blob(bytes);
    }
    s.bytes(blob).finish()
}

/// A state blob of the kind the crate's own tests build (a vCPU at its
/// reset values but for a few registers, no devices).
fn plain_state(devices: Option<serde_json::Value>) -> Vec<u8> {
    use wanmig_vmm::vcpu_state::{FpuState, VcpuState};
    VmState {
        version: wanmig_vmm::state::STATE_VERSION,
        vcpu: VcpuState {
            regs: kvm_bindings::kvm_regs {
                rip: 0x10_0000,
                rsp: 0x10_0000,
                rflags: 2,
                ..Default::default()
            },
            sregs: Default::default(),
            fpu: FpuState::default(),
            xsave: Some(vec![0; 1024]),
            xcrs: None,
            debugregs: None,
            lapic: None,
            msrs: vec![(0x10, 99), (0xc000_0080, 0x500)],
            events: None,
            mp_state: None,
        },
        caps: VcpuCaps::default(),
        guest_clock_ns: 42,
        serial: Default::default(),
        reports_seen: 3,
        devices,
    }
    .encode()
}

/// Seeds made without KVM: plain vCPU states without devices and with an
/// empty device list (the KVM seeds, real VMs paused mid-run with their
/// rings copied from guest memory, come from `wanmig-fuzz-seeds`, which
/// boots the test guest).
pub fn seeds() -> Vec<Vec<u8>> {
    let none = plain_state(None);
    let empty = plain_state(Some(serde_json::json!([])));
    vec![
        input(0, 0, &[], &none),
        input(0, 0, &[], &empty),
        input(0, 1, &[], &none),
        input(3, 0, &[], &none),
    ]
}
