//! Virtio devices (placeholder; see the virtio-mmio work).
