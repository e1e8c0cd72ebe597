//! Virtio-mmio transport and device models (net, block); owned by the virtio engineer.
