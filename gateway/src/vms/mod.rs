//! The VMs hosted at this site: their registry (names, states and the
//! transitions that keep each VM in exactly one place), the hosting trait
//! the migration relay and the control API use, and the two hosts that
//! implement it.
//!
//! - [`registry`] holds [`Registry`], [`VmState`], [`VmRecord`] and
//!   [`VmInfo`];
//! - [`hosting`] the [`VmHosting`] trait;
//! - [`in_process`] [`VmHost`], VMs in this process;
//! - [`process`] [`ProcessHost`], one `wanmig-vmm` process per VM;
//! - [`disk_follow`] a VM's disk following it between sites, with its
//!   state in [`disk_state`] ([`DiskState`]);
//! - [`nics`] plugging the network cards of in-process VMs into the
//!   overlay ([`Nics`]);
//! - [`files`] which host files a VM's configuration may name
//!   ([`VmFiles`]);
//! - [`error`] [`HostError`].

pub mod disk_follow;
pub mod disk_state;
pub mod error;
pub mod files;
pub mod hosting;
pub mod in_process;
pub mod nics;
pub mod process;
pub mod registry;

pub use disk_state::DiskState;
pub use error::HostError;
pub use files::VmFiles;
pub use hosting::VmHosting;
pub use in_process::VmHost;
pub use nics::Nics;
pub use process::ProcessHost;
pub use registry::{validate_vm_name, Departure, Registry, VmInfo, VmRecord, VmState};
