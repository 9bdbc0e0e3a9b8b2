//! The driver's side of the two transports for the device benches: a
//! device brought up through virtio-mmio registers, or through the
//! virtio-pci capabilities with one MSI-X vector per queue, the way a
//! Linux driver does it. Interrupt lines are eventfds, as the VMM's KVM
//! irqfds are, so signalling costs what it costs in a VM.
//!
//! Each queue's rings live at `base` (descriptors), `base + 0x1000`
//! (available) and `base + 0x2000` (used).

use std::sync::{Arc, Mutex};

use ember_devices::bus::BusDevice;
use ember_devices::interrupt::IrqLine;
use ember_devices::pci::msix::RecordingRouting;
use ember_devices::pci::PciDevice;
use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::pci::{PciInterrupts, VirtioPciTransport};
use ember_devices::virtio::VirtioDevice;
use ember_devices::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// A device behind one of the transports, with its interrupt eventfds.
pub struct Transported<T> {
    /// The transport.
    pub t: Arc<Mutex<T>>,
    /// The interrupt lines: one (MMIO) or one per MSI-X vector (PCI: entry
    /// 0 configuration, entry q + 1 queue q).
    pub irqs: Vec<Arc<EventFd>>,
    /// Clones of the queue notification eventfds (what KVM's ioeventfd
    /// writes).
    pub kicks: Vec<EventFd>,
}

/// Reads (and clears) every interrupt line in `irqs`; returns the total.
pub fn drain(irqs: &[Arc<EventFd>]) -> u64 {
    irqs.iter().map(|e| e.read().unwrap_or(0)).sum()
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

/// `device` behind virtio-mmio, brought up with `features` and the queues
/// at `rings` (base, size).
pub fn mmio(
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemoryMmap,
    features: u64,
    rings: &[(u64, u16)],
) -> Transported<MmioTransport> {
    let irq = Arc::new(eventfd());
    let mut t = MmioTransport::new(device, mem.clone(), irq.clone()).unwrap();
    let mut w = |off: u64, v: u32| t.write(off, &v.to_le_bytes());
    w(0x70, 0);
    w(0x70, ACK);
    w(0x70, ACK | DRIVER);
    w(0x24, 0);
    w(0x20, features as u32);
    w(0x24, 1);
    w(0x20, (features >> 32) as u32);
    w(0x70, ACK | DRIVER | FEATURES_OK);
    for (i, &(base, size)) in rings.iter().enumerate() {
        w(0x30, i as u32);
        w(0x38, u32::from(size));
        for (lo, a) in [(0x80, base), (0x90, base + 0x1000), (0xa0, base + 0x2000)] {
            w(lo, a as u32);
            w(lo + 4, (a >> 32) as u32);
        }
        w(0x44, 1);
    }
    w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated(), "the device did not start through virtio-mmio");
    let kicks = t.queue_events().iter().map(|e| e.try_clone().unwrap()).collect();
    Transported { t: Arc::new(Mutex::new(t)), irqs: vec![irq], kicks }
}

/// `device` behind virtio-pci, brought up with `features`, MSI-X enabled
/// and a vector per queue, and the queues at `rings` (base, size).
pub fn pci(
    device: Box<dyn VirtioDevice>,
    mem: &GuestMemoryMmap,
    features: u64,
    rings: &[(u64, u16)],
) -> Transported<VirtioPciTransport> {
    let n = VirtioPciTransport::vector_count(device.as_ref());
    let irqs: Vec<Arc<EventFd>> = (0..n).map(|_| Arc::new(eventfd())).collect();
    let wiring = PciInterrupts {
        msi: Arc::new(RecordingRouting::default()),
        vectors: irqs.iter().map(|e| e.clone() as Arc<dyn IrqLine>).collect(),
        // As in ember's VMM: MSI-X only.
        intx: None,
    };
    let mut t = VirtioPciTransport::new(device, mem.clone(), wiring).unwrap();
    // Common configuration at BAR 0 + 0, MSI-X table at + 0x4000 (as the
    // capabilities say; checked by the unit tests).
    let mut w = |off: u64, v: u64, len: usize| t.write_bar(0, off, &v.to_le_bytes()[..len]);
    for v in 0..n as u64 {
        let e = 0x4000 + 16 * v;
        w(e, 0xfee0_0000, 4);
        w(e + 4, 0, 4);
        w(e + 8, 0x40 + v, 4);
        w(e + 12, 0, 4);
    }
    w(0x14, 0, 1);
    w(0x14, u64::from(ACK), 1);
    w(0x14, u64::from(ACK | DRIVER), 1);
    w(0x08, 0, 4);
    w(0x0c, features & 0xffff_ffff, 4);
    w(0x08, 1, 4);
    w(0x0c, features >> 32, 4);
    w(0x14, u64::from(ACK | DRIVER | FEATURES_OK), 1);
    w(0x10, 0, 2);
    for (i, &(base, size)) in rings.iter().enumerate() {
        w(0x16, i as u64, 2);
        w(0x18, u64::from(size), 2);
        w(0x20, base, 8);
        w(0x28, base + 0x1000, 8);
        w(0x30, base + 0x2000, 8);
        w(0x1a, i as u64 + 1, 2);
        w(0x1c, 1, 2);
    }
    w(0x14, u64::from(ACK | DRIVER | FEATURES_OK | DRIVER_OK), 1);
    // MSI-X on: the capability's control word (the first capability).
    let mut cap = [0u8; 1];
    t.read_config(0x40, &mut cap);
    assert_eq!(cap[0], 0x11, "MSI-X is the first capability");
    t.write_config(0x42, &0x8000u16.to_le_bytes());
    assert!(t.is_activated(), "the device did not start through virtio-pci");
    assert!(t.msix().enabled());
    let kicks = t.queue_events().iter().map(|e| e.try_clone().unwrap()).collect();
    Transported { t: Arc::new(Mutex::new(t)), irqs, kicks }
}
