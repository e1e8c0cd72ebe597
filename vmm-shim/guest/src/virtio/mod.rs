//! The guest's virtio side: a minimal virtio-mmio driver (probe, feature
//! negotiation, one split virtqueue per direction in the guest heap,
//! polling, no interrupts), the block and net drivers on top of it, and the
//! two workloads that use them: the TCP echo/status service and the disk
//! write/verify workload. Both workloads are `new(...)` + `step(now_ms)`
//! state machines for the cooperative main loop.

mod arena;
mod blk;
mod decimal;
mod disk_workload;
mod error;
mod net;
mod queue;
mod tcp_service;
mod transport;
mod workloads;

pub use workloads::Workloads;
