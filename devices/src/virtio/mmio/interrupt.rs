//! The interrupt side of the virtio-mmio transport: the `InterruptStatus`
//! register and the transport's one interrupt line.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::interrupt::IrqLine;

/// The transport's `InterruptStatus` register (bit 0: used buffer
/// notification, bit 1: configuration change) and its line into the
/// guest. The guest clears bits through `InterruptACK`.
///
/// Devices never see it: they report used queues to the transport
/// ([`QueueSet`](crate::virtio::QueueSet)), which signals here.
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: Arc<dyn IrqLine>,
}

impl std::fmt::Debug for MmioInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioInterrupt").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl MmioInterrupt {
    /// An interrupt with a clear status raising `irq`.
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        MmioInterrupt { status: AtomicU32::new(0), irq }
    }

    /// Tells the driver that buffers were placed in a used ring.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.status.fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        self.irq.trigger()
    }

    /// Tells the driver that the configuration space or the device status
    /// changed (for example `DEVICE_NEEDS_RESET`).
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.status.fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
        self.irq.trigger()
    }

    /// The current `InterruptStatus` register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the `bits` the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts a saved `InterruptStatus` back and raises the line if a bit is
    /// set, as the signal that set it did.
    pub(crate) fn restore(&self, status: u32) -> io::Result<()> {
        self.status.store(status, Ordering::SeqCst);
        if status != 0 {
            self.irq.trigger()?;
        }
        Ok(())
    }

    /// Clears every pending bit (device reset).
    pub(crate) fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingIrq;

    #[test]
    fn interrupt_status_and_ack() {
        let irq = Arc::new(CountingIrq::default());
        let intr = MmioInterrupt::new(irq.clone());
        intr.signal_used_queue().unwrap();
        intr.signal_config_change().unwrap();
        assert_eq!(intr.status(), 3);
        assert_eq!(irq.count(), 2);
        intr.ack(1);
        assert_eq!(intr.status(), 2);
        intr.clear();
        assert_eq!(intr.status(), 0);
    }
}
