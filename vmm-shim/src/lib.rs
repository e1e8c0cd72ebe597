//! wanmig's KVM VMM shim: runs the test guest on KVM (guest memory, vCPU,
//! serial console, guest control port, virtio-mmio devices), tracks dirty
//! pages, saves/restores VM state and live-migrates a VM over a byte stream.

pub mod virtio;
