//! wanmig's KVM VMM shim: runs the test guest on KVM (guest memory, vCPU,
//! serial console, guest control port, virtio-mmio devices), tracks dirty
//! pages, saves/restores VM state and live-migrates a VM over a byte stream.
//! What a VM is (`wanmig_migration::machine`) and the migration protocol
//! (`wanmig_migration::shim`) live in the sans-IO core; this crate is their
//! KVM and blocking-I/O shell.

pub mod admin;
pub mod boot;
pub mod clock;
pub mod dirty_log;
pub mod elf;
pub mod guest_control;
mod kick;
pub mod memory;
pub mod migration;
pub mod protocol_io;
pub mod serial;
pub mod state;
pub mod throttle;
pub mod vcpu;
pub mod vcpu_state;
pub mod virtio;
pub mod vm;
pub mod workload_model;

pub use migration::{
    migrate_to, receive_from, receive_from_with_disk, MigrateOptions, MigrationError,
    MigrationReport, ReceiveOptions,
};
pub use vm::{DiskBackend, Vm, VmError};

/// The test guest (vmm-shim/guest), built by build.rs.
pub static GUEST_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/wanmig-guest.elf"));
