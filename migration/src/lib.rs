//! wanmig-migration: the sans-IO core of live migration. The shim (KVM) and
//! the gateway (QUIC) are I/O shells around it: they move bytes, read
//! clocks and pass what they measured in; everything that decides what a
//! migration says and does lives here, as plain state machines.
//!
//! - [`machine`]: the VM description that travels between sites
//!   ([`machine::VmConfig`]) and the shape a destination must match.
//! - [`version`]: the versioning rule of the three stream protocols below,
//!   written once; [`messages`]: the one incremental decoder that applies
//!   it.
//! - [`shim`]: the shim migration protocol (source shim ↔ destination
//!   shim, or a gateway relaying between them).
//! - [`session`]: the gateway-to-gateway migration session, its frames
//!   ([`session::frame`]) and its source and destination cores.
//! - [`storage`]: the storage relay's frames (a migrated VM's disk
//!   following it).
//! - [`policy`]: the convergence policy (when to stop pre-copy, the
//!   downtime budget, flow windows, pacing, the codec level and the link
//!   rate), fed with measurements.
//! - [`scopes`]: which peer may use which of this site's page-store
//!   scopes (dedup inventories are per tenant).
//! - [`run`]: the options a shim migration runs with and the reports it
//!   returns.
//! - [`admin`]: the requests a running shim answers on its control socket
//!   and what it reports about its VM (how its run ended, the guest's
//!   reports), as plain data for the gateway.
//!
//! No tokio, no quinn, no KVM: `cargo tree -p wanmig-migration` shows it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod machine;
pub mod messages;
pub mod policy;
pub mod run;
pub mod scopes;
pub mod session;
pub mod shim;
pub mod storage;
pub mod version;
