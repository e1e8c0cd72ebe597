//! The contract between the VMM shim (host side) and the test guest
//! (`no_std`, built for the host target): guest-physical memory layout,
//! device MMIO windows, I/O ports and the boot-parameter block. Both sides
//! depend on this crate so the numbers cannot drift apart.
#![no_std]

pub mod virtio;
