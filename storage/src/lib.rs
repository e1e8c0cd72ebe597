//! Follow-on storage migration core: after the compute handover the disk
//! follows the VM to the new site without stopping it.
//!
//! The crate owns the transport-independent parts; the gateway carries the
//! bytes and the vmm-shim plugs [`remote_disk::RemoteDisk`] behind its
//! virtio-block device.
//!
//! - [`geometry`]: how a disk splits into blocks (64 KiB by default).
//! - [`presence`]: the per-block presence bitmap and its atomic sidecar file.
//! - [`planner`]: the sans-IO destination-side copy planner.
//! - [`extents`]: allocated extents of a file via SEEK_DATA/SEEK_HOLE.
//! - [`source`]: source disk validation and the block reader serving fetches.
//! - [`remote_disk`]: the destination's remote-backed disk (synchronous block
//!   device over a local sparse copy, the bitmap and the planner).
//! - [`wire`]: the block payload codec (zero, raw, zstd) and its byte counts.
//! - [`metrics`]: `wanmig_storage_*` counters and on-demand latency.
//! - [`digest`]: BLAKE3 of a whole disk file, holes as zeros.
//! - [`verify`]: the end-of-copy check (digest of blocks the guest did not
//!   write at the destination, compared at the source before release).
//! - [`done`]: the destination's durable record of what it confirmed in
//!   `Done`, sent again unchanged after a reconnect or restart.
//! - [`copy`]: an in-process link that drives a whole copy for tests/benches.
//! - [`testdisk`]: realistic sparse test images (text, binaries, free space).
//!
//! How the pieces are used (destination B, source A, after the handover):
//!
//! 1. A: [`SourceDisk::open`] validates the disk against the VM's configured
//!    size (missing, truncated, wrong size: error before anything moves) and
//!    sends [`SourceDisk::hole_blocks`] to B.
//! 2. B: [`RemoteDisk::open`] (creates or resumes the local sparse copy and
//!    its `<disk>.presence` sidecar), [`RemoteDisk::apply_source_holes`],
//!    [`RemoteDisk::start`]; the virtio-block device reads and writes through
//!    it. The gateway implements [`Fetcher`] (on-demand requests must overtake
//!    background data on the wire), answers go to
//!    [`RemoteDisk::on_block_arrived`], outages to `link_down`/`link_up`, and
//!    a timer calls [`RemoteDisk::tick`].
//! 3. A serves each [`FetchRequest`] with [`SourceDisk::serve`] and
//!    [`wire::BlockEncoder`] (the gateway may dedup payloads as for memory).
//! 4. B: when [`RemoteDisk::is_all_local`], [`RemoteDisk::confirmation`]
//!    fsyncs, computes the end-of-copy digest and saves it (`<disk>.done`)
//!    before B sends it; A checks it and only then calls
//!    [`release_source`] by policy.

#![forbid(unsafe_code)]

pub mod copy;
pub mod digest;
pub mod done;
pub mod error;
pub mod extents;
pub mod geometry;
pub mod metrics;
pub mod planner;
pub mod presence;
pub mod remote_disk;
pub mod source;
pub mod testdisk;
pub mod verify;
pub mod wire;

pub use digest::disk_digest;
pub use done::DoneRecord;
pub use error::StorageError;
pub use geometry::{Geometry, DEFAULT_BLOCK_SIZE};
pub use planner::{FetchRequest, Planner, PlannerConfig, Priority};
pub use presence::PresenceBitmap;
pub use remote_disk::{Fetcher, LinkDown, RemoteDisk, RemoteDiskConfig};
pub use source::{release_source, ReleasePolicy, SourceDisk};
