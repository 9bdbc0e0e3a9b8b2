//! Interrupt lines handed to devices.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line into the guest.
///
/// The VMM backs it with an `EventFd` registered as a KVM irqfd, so raising
/// the line never leaves the calling thread's context for a vCPU exit.
pub trait IrqLine: Send + Sync {
    /// Raises the line once.
    fn trigger(&self) -> io::Result<()>;
}

impl IrqLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// An [`IrqLine`] that counts how often it was raised, for tests.
#[derive(Debug, Default)]
pub struct CountingIrq(std::sync::atomic::AtomicU64);

impl CountingIrq {
    /// How many times the line has been raised.
    pub fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IrqLine for CountingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_line_counts_triggers() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        evt.trigger().unwrap();
        evt.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
    }

    #[test]
    fn counting_irq_counts() {
        let irq = CountingIrq::default();
        irq.trigger().unwrap();
        assert_eq!(irq.count(), 1);
    }
}
