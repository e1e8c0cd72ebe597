//! wanmig-migration: the sans-IO core of live migration. The shim (KVM) and
//! the gateway (QUIC) are I/O shells around it: they move bytes, read
//! clocks and pass what they measured in; everything that decides what a
//! migration says and does lives here, as plain state machines.
//!
//! No tokio, no quinn, no KVM: `cargo tree -p wanmig-migration` shows it.

pub mod policy;
