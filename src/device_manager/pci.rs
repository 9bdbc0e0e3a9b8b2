//! The VM's PCI root and its virtio-pci functions: the KVM side of the
//! device crate's PCI traits.
//!
//! [`PciBus::new`] makes bus 0 (ember-devices' `PciRoot`) with the BAR
//! windows of the layout and puts on the VMM's buses what the guest
//! reaches it through: the configuration ports 0xcf8–0xcff, the ECAM
//! window, and the two BAR windows (fixed; the root decodes the BARs the
//! guest moves inside them). [`PciBus::add_virtio`] puts a virtio device
//! behind a `VirtioPciTransport`: each MSI-X vector gets a GSI of its own
//! ([`MsiVectors`]) with an irqfd on it, and each queue's notification
//! address an ioeventfd that follows the BAR ([`KvmIoEvents`]).
//!
//! What runs later, on the vCPU threads: `KVM_SET_GSI_ROUTING` when the
//! guest unmasks a vector with a new message, and `KVM_IOEVENTFD` when it
//! moves a BAR or turns memory decoding off and on (seccomp allows both
//! ioctls on the vCPU threads of a VM with a device on PCI, and only
//! then: the host bridge alone moves nothing).
//! Nothing is added at run time: the irqfds, GSIs and bus entries are all
//! made here, before the vCPUs exist.

use std::io;
use std::sync::{Arc, Mutex};

use ember_devices::interrupt::IrqLine;
use ember_devices::pci::bus::{IoEventRegistry, MmioWindow, PciConfigIo, PciConfigMmio, PciRoot, PciWindows};
use ember_devices::virtio::pci::{PciInterrupts, VirtioPciTransport};
use ember_devices::virtio::VirtioDevice;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::error::{io_err, kvm_err, Error};
use crate::irq_routing::{GsiRouting, MsiVectors};
use crate::layout;
// `PciRoot` is the device crate's bus; the machine description's is
// where that bus is.
use crate::machine::acpi::PciRoot as PciRootInfo;
use crate::memory::RamLayout;
use crate::sync::lock;

/// `IoEventRegistry` on KVM: an ioeventfd of any access width, no data
/// match, at the notification address.
struct KvmIoEvents(Arc<VmFd>);

impl IoEventRegistry for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let r = self.0.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch);
        r.map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        let r = self.0.unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch);
        r.map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// A virtio-pci function as placed: its device number on bus 0 and the
/// GSIs of its MSI-X vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PciPlacement {
    /// Device number on bus 0 (function 0).
    pub(crate) device: u8,
    /// GSI of MSI-X vector 0; vector *v* is `first_gsi + v`.
    pub(crate) first_gsi: u32,
    /// Number of MSI-X vectors.
    pub(crate) vectors: u16,
}

/// Bus 0 of a VM, and the GSI routing its MSI-X vectors use.
pub(crate) struct PciBus {
    vm: Arc<VmFd>,
    root: Arc<Mutex<PciRoot>>,
    /// The legacy configuration ports (their latched address is state).
    config_io: Arc<Mutex<PciConfigIo>>,
    routing: Arc<GsiRouting>,
    info: PciRootInfo,
}

impl PciBus {
    /// The root for RAM laid out as `ram`, reachable through `pio` (ports
    /// 0xcf8–0xcff) and `mmio` (ECAM and the BAR windows).
    pub(crate) fn new(vm: Arc<VmFd>, ram: RamLayout, pio: &mut Bus, mmio: &mut Bus) -> Result<Self, Error> {
        let info = PciRootInfo::for_layout(ram.end());
        let windows = PciWindows {
            mmio32: MmioWindow { base: info.mmio32.0, len: info.mmio32.1 },
            mmio64: MmioWindow { base: info.mmio64.0, len: info.mmio64.1 },
        };
        let root = PciRoot::new(windows, Arc::new(KvmIoEvents(vm.clone())))?;
        let bar_windows = root.bar_windows();
        let root = Arc::new(Mutex::new(root));
        let config_io = Arc::new(Mutex::new(PciConfigIo::new(root.clone())));
        pio.insert(layout::PCI_CONFIG_PORT, layout::PCI_CONFIG_PORT_LEN, config_io.clone())?;
        mmio.insert(info.ecam_base, info.ecam_size, Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))))?;
        for (base, len, window) in bar_windows {
            mmio.insert(base, len, window)?;
        }
        let routing = Arc::new(GsiRouting::new(vm.clone()));
        Ok(PciBus { vm, root, config_io, routing, info })
    }

    /// The root (bus 0's functions), for snapshots.
    pub(crate) fn root(&self) -> Arc<Mutex<PciRoot>> {
        self.root.clone()
    }

    /// The legacy configuration ports, for snapshots.
    pub(crate) fn config_io(&self) -> Arc<Mutex<PciConfigIo>> {
        self.config_io.clone()
    }

    /// Where the root's configuration space and windows are.
    pub(crate) fn info(&self) -> PciRootInfo {
        self.info
    }

    /// Puts `device` on the bus behind a virtio-pci transport at the next
    /// device number, its BARs placed and its notifications on ioeventfds;
    /// returns the transport (for the event loop) and where it is.
    pub(crate) fn add_virtio(
        &mut self,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        index: usize,
    ) -> Result<(Arc<Mutex<VirtioPciTransport>>, PciPlacement), Error> {
        let verr = |source: io::Error| Error::Virtio { index, source };
        let count = VirtioPciTransport::vector_count(device.as_ref());
        let count = u16::try_from(count).map_err(|_| verr(io::Error::other(format!("{count} MSI-X vectors"))))?;
        let vectors = MsiVectors::new(self.routing.clone(), count)?;
        let first_gsi = vectors.gsis().next().unwrap_or(layout::MSI_GSI_BASE);
        let mut lines: Vec<Arc<dyn IrqLine>> = Vec::with_capacity(usize::from(count));
        for gsi in vectors.gsis() {
            let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?;
            self.vm.register_irqfd(&evt, gsi).map_err(kvm_err(None, "KVM_IRQFD (MSI-X vector)"))?;
            lines.push(Arc::new(evt));
        }
        let irqs = PciInterrupts { msi: Arc::new(vectors), vectors: lines, intx: None };
        let transport = Arc::new(Mutex::new(VirtioPciTransport::new(device, mem.clone(), irqs).map_err(verr)?));
        let device = lock(&self.root).add_device(transport.clone())?;
        Ok((transport, PciPlacement { device, first_gsi, vectors: count }))
    }
}
