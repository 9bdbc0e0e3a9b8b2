//! The VM's devices: the port-I/O and MMIO buses the vCPUs dispatch to, the
//! event-loop subscribers that serve the devices' file descriptors, and the
//! virtio devices with their place on a transport.
//!
//! [`DeviceManager::add_legacy_devices`] puts the PC devices on their ports
//! ([`crate::layout`]); [`DeviceManager::add_virtio_devices`] puts each disk,
//! NIC and shared directory behind its transport (virtio-pci on the PCI root of [`pci`],
//! or virtio-mmio) and records where ([`Transport`]); every VM gets the
//! PCI root, its host bridge alone when no device is on PCI. What the guest is told about the devices is
//! derived from that one list: the kernel parameters
//! ([`DeviceManager::kernel_cmdline`]: `virtio_mmio.device=` for
//! virtio-mmio, `pci=noearly` for the PCI root) and what the ACPI tables
//! and the memory map describe ([`DeviceManager::acpi_devices`]: the
//! virtio-mmio windows, the PCI root's ECAM and windows).

mod pci;

use std::sync::{Arc, Mutex};

use ember_devices::bus::BusDevice;
use ember_devices::interrupt::IrqLine;
use ember_devices::legacy::{AcpiSleep, Cmos, DebugExit, ExitLine, QuietPorts, SerialDevice, I8042, QUIET_PORT_RANGES};
use ember_devices::virtio::block::{Block, BlockConfig};
use ember_devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use ember_devices::virtio::net::{format_mac, Net, NetCounters, NetStats};
use ember_devices::virtio::p9::Share;
use ember_devices::virtio::pci::VirtioPciTransport;
use ember_devices::virtio::VirtioDevice;
use kvm_ioctls::{IoEventAddress, VmFd};
use pci::{PciBus, PciPlacement};
use virtio_bindings::bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::config::{DiskConfig, NetConfig, SerialConfig, ShareConfig, VirtioTransport, VmConfig};
use crate::console::{self, ConsoleInput};
use crate::error::{io_err, kvm_err, Error};
use crate::event_loop::Subscriber;
use crate::exit::ExitSignal;
use crate::layout;
use crate::machine::acpi::{self, MmioDevice, PciRoot};
use crate::memory::RamLayout;
use crate::snapshot::devices::{DeviceStates, SavedVirtio};
use crate::snapshot::SnapshotError;
use crate::sync::lock;

/// Where a virtio device is attached, and so how the guest finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A virtio-mmio register window at `base` ([`MMIO_SIZE`] bytes) whose
    /// interrupt is IOAPIC pin `irq`.
    Mmio {
        /// Guest-physical address of the register window.
        base: u64,
        /// The interrupt line (GSI).
        irq: u32,
    },
    /// A virtio-pci function on bus 0, found by enumerating the bus.
    Pci(PciPlacement),
}

impl Transport {
    /// The kernel command line parameter that tells Linux about the device
    /// (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES); none for a PCI function.
    pub(crate) fn cmdline_param(&self) -> Option<String> {
        match *self {
            Transport::Mmio { base, irq } => Some(format!("virtio_mmio.device={}K@{base:#x}:{irq}", MMIO_SIZE >> 10)),
            Transport::Pci(_) => None,
        }
    }

    /// How the DSDT describes the device, if it does (a device on a PCI
    /// bus is found by enumerating the bus instead).
    pub(crate) fn acpi_mmio(&self) -> Option<MmioDevice> {
        match *self {
            Transport::Mmio { base, irq } => Some(MmioDevice { base, size: MMIO_SIZE, gsi: irq }),
            Transport::Pci(_) => None,
        }
    }
}

/// A virtio device on its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VirtioPlacement {
    /// The virtio device ID (`VIRTIO_ID_*`).
    pub(crate) device_type: u32,
    /// Where it is.
    pub(crate) transport: Transport,
}

/// Every device of a VM, built before its vCPUs.
pub(crate) struct DeviceManager {
    /// Port I/O, dispatched by the vCPU threads.
    pub(crate) pio: Bus,
    /// MMIO, dispatched by the vCPU threads.
    pub(crate) mmio: Bus,
    /// What the event loop serves: queue notifications, TAP fds, stdin.
    pub(crate) subscribers: Vec<Subscriber>,
    /// The virtio devices, in guest order (disks, NICs, shared directories).
    pub(crate) virtio: Vec<VirtioPlacement>,
    /// Stdin into COM1, when the console is on stdio.
    pub(crate) console_input: Option<ConsoleInput>,
    /// Each NIC's name (`net0 (tap0)`) and live counters.
    pub(crate) net_counters: Vec<(String, Arc<NetCounters>)>,
    /// The i8042 (the host sends it Ctrl+Alt+Del).
    pub(crate) i8042: Option<Arc<Mutex<I8042>>>,
    /// Where the PCI root is (every VM has one once its devices are added).
    pub(crate) pci_root: Option<PciRoot>,
    /// The PCI root itself.
    pci: Option<PciBus>,
    /// The UARTs after COM1, as (first port, GSI).
    pub(crate) extra_uarts: Vec<(u64, u32)>,
    /// Each NIC's MAC, in guest order (a snapshot records them).
    pub(crate) macs: Vec<[u8; 6]>,
    /// The devices whose state a snapshot saves, beside the i8042 and the
    /// PCI root kept above.
    saveable: Saveable,
}

/// A virtio transport, as a snapshot reaches it.
#[derive(Clone)]
enum VirtioHandle {
    Mmio(Arc<Mutex<MmioTransport>>),
    Pci(Arc<Mutex<VirtioPciTransport>>),
}

/// The devices with state a snapshot saves (the i8042 and the PCI root are
/// kept in [`DeviceManager`] for other reasons too).
#[derive(Clone, Default)]
struct Saveable {
    com1: Option<Arc<Mutex<SerialDevice>>>,
    extra_uarts: Vec<Arc<Mutex<SerialDevice>>>,
    cmos: Option<Arc<Mutex<Cmos>>>,
    /// In guest order, as [`DeviceManager::virtio`].
    virtio: Vec<VirtioHandle>,
}

impl DeviceManager {
    /// No devices yet.
    pub(crate) fn new() -> Self {
        DeviceManager {
            pio: Bus::new("port I/O"),
            mmio: Bus::new("MMIO"),
            subscribers: Vec::new(),
            virtio: Vec::new(),
            console_input: None,
            net_counters: Vec::new(),
            i8042: None,
            pci_root: None,
            pci: None,
            extra_uarts: Vec::new(),
            macs: Vec::new(),
            saveable: Saveable::default(),
        }
    }

    /// The PC devices: COM1 (with stdin when the console is on stdio), the
    /// i8042 with its keyboard (IRQ 1 and 12), the CMOS clock, the ACPI
    /// sleep registers (power-off), the debug-exit port when configured,
    /// and quiet stand-ins for the ports Linux probes.
    pub(crate) fn add_legacy_devices(
        &mut self,
        vm: &VmFd,
        config: &VmConfig,
        exit: &Arc<ExitSignal>,
    ) -> Result<(), Error> {
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?;
        vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ).map_err(kvm_err(None, "KVM_IRQFD (COM1)"))?;
        let (out, input) = console::serial_output(&config.serial)?;
        let input_ready = if input {
            Some(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?)
        } else {
            None
        };
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            Arc::new(serial_irq) as Arc<dyn IrqLine>,
            out,
            input_ready.as_ref().map(|e| e.try_clone()).transpose().map_err(io_err("duplicating an eventfd"))?,
        )));
        self.pio.insert(layout::COM1_PORT, layout::COM1_PORT_LEN, serial.clone())?;
        self.saveable.com1 = Some(serial.clone());
        self.console_input = input_ready.map(|evt| {
            // SAFETY: isatty only inspects fd 0.
            let tty = unsafe { libc::isatty(0) } == 1;
            ConsoleInput::new(0, tty, serial, evt, exit.clone())
        });

        let exit_line: Arc<dyn ExitLine> = exit.clone();
        let kbd_irq = irq_line(vm, layout::I8042_KBD_IRQ, "KVM_IRQFD (i8042 keyboard)")?;
        let aux_irq = irq_line(vm, layout::I8042_AUX_IRQ, "KVM_IRQFD (i8042 aux)")?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exit_line.clone(), kbd_irq, aux_irq)));
        self.pio.insert(layout::I8042_PORT, layout::I8042_PORT_LEN, i8042.clone())?;
        self.i8042 = Some(i8042);
        let cmos = Arc::new(Mutex::new(Cmos::new()));
        self.pio.insert(layout::CMOS_PORT, layout::CMOS_PORT_LEN, cmos.clone())?;
        self.saveable.cmos = Some(cmos);
        let sleep = Arc::new(Mutex::new(AcpiSleep::new(exit_line.clone(), acpi::S5_SLEEP_TYPE)));
        self.pio.insert(layout::ACPI_SLEEP_CONTROL_PORT, 2, sleep)?;
        if config.debug_exit {
            let debug_exit = Arc::new(Mutex::new(DebugExit::new(exit_line)));
            self.pio.insert(layout::DEBUG_EXIT_PORT, layout::DEBUG_EXIT_PORT_LEN, debug_exit)?;
        }
        #[cfg(feature = "seccomp-probe")]
        self.pio.insert(layout::SECCOMP_PROBE_PORT, 1, Arc::new(Mutex::new(SeccompProbe)))?;
        let mut uarts = Vec::new();
        for (out, &(port, irq)) in config.extra_serials.iter().zip(layout::EXTRA_COM_PORTS.iter()) {
            self.add_output_uart(vm, out, port, irq)?;
            uarts.push(port);
            self.extra_uarts.push((port, irq));
        }
        let quiet: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(QuietPorts));
        for &(base, len) in QUIET_PORT_RANGES {
            // A UART configured there takes the place of its quiet stand-in.
            if !uarts.contains(&u64::from(base)) {
                self.pio.insert(u64::from(base), u64::from(len), quiet.clone())?;
            }
        }
        Ok(())
    }

    /// An output-only 8250 UART at `port` whose interrupt is `irq`.
    fn add_output_uart(&mut self, vm: &VmFd, output: &SerialConfig, port: u64, irq: u32) -> Result<(), Error> {
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?;
        vm.register_irqfd(&irq_evt, irq).map_err(kvm_err(None, "KVM_IRQFD (UART)"))?;
        let (out, _stdin) = console::serial_output(output)?;
        let uart = Arc::new(Mutex::new(SerialDevice::new(Arc::new(irq_evt) as Arc<dyn IrqLine>, out, None)));
        self.pio.insert(port, layout::COM1_PORT_LEN, uart.clone())?;
        self.saveable.extra_uarts.push(uart);
        Ok(())
    }

    /// The disks, the NICs, then the shared directories, each behind its
    /// virtio transport in the next free place, and the PCI root (made by
    /// the first device on PCI, or here for its host bridge alone).
    pub(crate) fn add_virtio_devices(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        ram: RamLayout,
        config: &VmConfig,
    ) -> Result<(), Error> {
        for disk in &config.disks {
            self.add_virtio(vm, mem, ram, Box::new(block_device(disk)?), disk.transport)?;
        }
        for (i, nic) in config.nets.iter().enumerate() {
            let net = net_device(nic)?;
            log::info!("net{i}: tap {} mac {}", nic.tap, format_mac(&net.mac()));
            self.net_counters.push((format!("net{i} ({})", nic.tap), net.stats_handle()));
            self.macs.push(net.mac());
            self.add_virtio(vm, mem, ram, Box::new(net), nic.transport)?;
        }
        if !config.shares.is_empty() {
            let max_fids = fids_per_share(raise_fd_limit(), config.shares.len());
            for (i, share) in config.shares.iter().enumerate() {
                let mut dev = share_device(share)?;
                dev.set_max_fids(max_fids);
                log::info!(
                    "share{i}: {} as tag {:?}{} on {} (at most {max_fids} open files)",
                    share.path.display(),
                    share.tag,
                    if share.read_only { ", read-only" } else { "" },
                    share.transport
                );
                self.add_virtio(vm, mem, ram, Box::new(dev), share.transport)?;
            }
        }
        if self.pci.is_none() {
            // Every VM has a PCI root (the host bridge alone, here), so a
            // kernel with PCI support finds a bus it can reach rather than
            // configuration ports nobody answers.
            let pci = PciBus::new(vm.clone(), ram, &mut self.pio, &mut self.mmio)?;
            self.pci_root = Some(pci.info());
            self.pci = Some(pci);
        }
        Ok(())
    }

    /// Puts `device` behind `transport` in its next free place.
    fn add_virtio(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        ram: RamLayout,
        device: Box<dyn VirtioDevice>,
        transport: VirtioTransport,
    ) -> Result<(), Error> {
        let index = self.virtio.len();
        let device_type = device.device_type();
        let placed = match transport {
            VirtioTransport::Mmio => self.add_virtio_mmio(vm, mem, device, index)?,
            VirtioTransport::Pci => {
                let pci = match self.pci.take() {
                    Some(p) => p,
                    None => PciBus::new(vm.clone(), ram, &mut self.pio, &mut self.mmio)?,
                };
                self.pci_root = Some(pci.info());
                let pci = self.pci.insert(pci);
                let (t, placement) = pci.add_virtio(mem, device, index)?;
                self.saveable.virtio.push(VirtioHandle::Pci(t.clone()));
                self.subscribers.push(t);
                Transport::Pci(placement)
            }
        };
        self.virtio.push(VirtioPlacement { device_type, transport: placed });
        Ok(())
    }

    /// Puts `device` behind a virtio-mmio transport in the next slot: its
    /// interrupt is an irqfd, and each queue's notification (a write of the
    /// queue index to QueueNotify) is an ioeventfd, so the data path never
    /// exits to a vCPU thread in user space.
    fn add_virtio_mmio(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Box<dyn VirtioDevice>,
        index: usize,
    ) -> Result<Transport, Error> {
        let slot = self.virtio.iter().filter(|v| matches!(v.transport, Transport::Mmio { .. })).count();
        // VmConfig::validate checked the count against the slots.
        let (base, irq) = layout::virtio_slot(slot);
        let verr = |source: std::io::Error| Error::Virtio { index, source };
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(verr)?;
        vm.register_irqfd(&irq_evt, irq).map_err(kvm_err(None, "KVM_IRQFD (virtio)"))?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::new(irq_evt)).map_err(verr)?;
        for (q, evt) in transport.queue_events().iter().enumerate() {
            let addr = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            vm.register_ioevent(evt, &addr, q as u32).map_err(kvm_err(None, "KVM_IOEVENTFD (virtio)"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio.insert(base, MMIO_SIZE, transport.clone())?;
        self.saveable.virtio.push(VirtioHandle::Mmio(transport.clone()));
        self.subscribers.push(transport);
        Ok(Transport::Mmio { base, irq })
    }

    /// `base` with what the kernel needs to know about the devices:
    /// `pci=noearly` with the PCI root (docs/boot.md: the early scans of
    /// PCI configuration space look for chipsets ember does not have, and
    /// on some CPU families read 8,192 absent addresses, two VM exits each),
    /// `pci=off` without one (so Linux does not probe absent configuration
    /// ports), and with `mmio_params`, each virtio-mmio device for kernels
    /// without ACPI (a kernel with ACPI finds them in the DSDT). They go at
    /// the end, or before a `--` in `base` (the kernel passes what follows
    /// `--` to init, so parameters after it would not reach the kernel).
    pub(crate) fn kernel_cmdline(&self, base: &str, mmio_params: bool) -> String {
        let (kernel, init) = split_at_dashes(base);
        let mut cmdline = kernel.trim_end().to_string();
        cmdline.push_str(if self.pci_root.is_some() { " pci=noearly" } else { " pci=off" });
        for param in self.virtio.iter().filter(|_| mmio_params).filter_map(|v| v.transport.cmdline_param()) {
            cmdline.push(' ');
            cmdline.push_str(&param);
        }
        if let Some(init) = init {
            cmdline.push_str(" --");
            cmdline.push_str(init);
        }
        cmdline.trim_start().to_string()
    }

    /// What the ACPI tables describe: the virtio-mmio transports and the
    /// PCI root.
    pub(crate) fn acpi_devices(&self) -> acpi::Devices {
        acpi::Devices {
            virtio_mmio: self.virtio.iter().filter_map(|v| v.transport.acpi_mmio()).collect(),
            pci: self.pci_root,
            extra_uarts: self.extra_uarts.clone(),
        }
    }

    /// A reader of every device's state, for snapshots of the running VM
    /// (called only while it is paused, so no device is busy).
    pub(crate) fn state_reader(&self) -> Box<dyn Fn() -> Result<DeviceStates, SnapshotError> + Send + Sync> {
        let saveable = self.saveable.clone();
        let i8042 = self.i8042.clone();
        let pci = self.pci.as_ref().map(|p| (p.root(), p.config_io()));
        Box::new(move || {
            let unsupported = |e: ember_devices::snapshot::SaveError| SnapshotError::Unsupported(e.to_string());
            let missing = |what: &str| SnapshotError::Unsupported(format!("the VM has no {what}"));
            let (root, config_io) = pci.as_ref().ok_or_else(|| missing("PCI root"))?;
            let mut virtio = Vec::with_capacity(saveable.virtio.len());
            for v in &saveable.virtio {
                virtio.push(match v {
                    VirtioHandle::Mmio(t) => SavedVirtio::Mmio(lock(t).save_state().map_err(unsupported)?),
                    VirtioHandle::Pci(t) => SavedVirtio::Pci(lock(t).save_state().map_err(unsupported)?),
                });
            }
            Ok(DeviceStates {
                com1: lock(saveable.com1.as_ref().ok_or_else(|| missing("COM1"))?).save_state(),
                extra_uarts: saveable.extra_uarts.iter().map(|u| lock(u).save_state()).collect(),
                i8042: lock(i8042.as_ref().ok_or_else(|| missing("i8042"))?).save_state(),
                cmos: lock(saveable.cmos.as_ref().ok_or_else(|| missing("CMOS"))?).save_state(),
                pci_root: lock(root).save_state(),
                pci_config_io: lock(config_io).save_state(),
                virtio,
            })
        })
    }

    /// Puts each device's saved state back (a restore: after the irqchip,
    /// before the vCPUs run): the legacy devices, the PCI root (which
    /// restores each function's configuration space, moving BARs as a
    /// guest's writes do), then each virtio transport, which activates a
    /// device its driver had started.
    pub(crate) fn restore_states(&mut self, states: &DeviceStates) -> Result<(), SnapshotError> {
        let dev = |device: String| {
            move |e: ember_devices::snapshot::RestoreError| SnapshotError::Device { device, message: e.to_string() }
        };
        let missing = |what: &str| SnapshotError::Inconsistent(format!("the restored VM has no {what}"));
        let s = &self.saveable;
        lock(s.com1.as_ref().ok_or_else(|| missing("COM1"))?)
            .restore_state(&states.com1)
            .map_err(dev("COM1".into()))?;
        if s.extra_uarts.len() != states.extra_uarts.len() {
            return Err(missing("extra UARTs the snapshot has"));
        }
        for (i, (u, st)) in s.extra_uarts.iter().zip(&states.extra_uarts).enumerate() {
            lock(u).restore_state(st).map_err(dev(format!("COM{}", i + 2)))?;
        }
        let i8042 = self.i8042.as_ref().ok_or_else(|| missing("i8042"))?;
        lock(i8042).restore_state(&states.i8042).map_err(dev("i8042".into()))?;
        lock(s.cmos.as_ref().ok_or_else(|| missing("CMOS"))?)
            .restore_state(&states.cmos)
            .map_err(dev("CMOS".into()))?;
        let pci = self.pci.as_ref().ok_or_else(|| missing("PCI root"))?;
        lock(&pci.config_io()).restore_state(&states.pci_config_io).map_err(dev("PCI configuration ports".into()))?;
        // No device lock may be held here: the root locks each function.
        let root = pci.root();
        lock(&root).restore_state(&states.pci_root).map_err(dev("PCI bus 0".into()))?;
        if s.virtio.len() != states.virtio.len() {
            return Err(missing("virtio devices the snapshot has"));
        }
        for (i, (h, st)) in s.virtio.iter().zip(&states.virtio).enumerate() {
            let name = format!("virtio device {i} ({})", st.transport());
            match (h, st) {
                (VirtioHandle::Mmio(t), SavedVirtio::Mmio(st)) => lock(t).restore_state(st).map_err(dev(name))?,
                (VirtioHandle::Pci(t), SavedVirtio::Pci(st)) => lock(t).restore_state(st).map_err(dev(name))?,
                _ => return Err(SnapshotError::Inconsistent(format!("{name} is on the other transport here"))),
            }
        }
        Ok(())
    }

    /// The NICs' counters now, by name.
    pub(crate) fn net_stats(counters: &[(String, Arc<NetCounters>)]) -> Vec<(String, NetStats)> {
        counters.iter().map(|(n, c)| (n.clone(), c.snapshot())).collect()
    }
}

/// An interrupt line for GSI `gsi`: an eventfd registered as a KVM irqfd.
fn irq_line(vm: &VmFd, gsi: u32, what: &'static str) -> Result<Arc<dyn IrqLine>, Error> {
    let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("creating an eventfd"))?;
    vm.register_irqfd(&evt, gsi).map_err(kvm_err(None, what))?;
    Ok(Arc::new(evt))
}

/// The virtio-blk device for a configured disk.
fn block_device(disk: &DiskConfig) -> Result<Block, Error> {
    let cfg = BlockConfig { path: disk.path.clone(), readonly: disk.read_only, id: disk.id.clone() };
    Ok(Block::new(&cfg)?)
}

/// The virtio-net device for a configured NIC.
fn net_device(nic: &NetConfig) -> Result<Net, Error> {
    let cfg = ember_devices::virtio::net::NetConfig { tap: nic.tap.clone(), mac: nic.mac };
    Ok(Net::new(&cfg)?)
}

/// The virtio-9p device for a configured shared directory.
fn share_device(share: &ShareConfig) -> Result<Share, Error> {
    let cfg = ember_devices::virtio::p9::ShareConfig {
        path: share.path.clone(),
        tag: share.tag.clone(),
        readonly: share.read_only,
    };
    Ok(Share::new(&cfg)?)
}

/// File descriptors kept for everything but the shares' open files.
const FD_RESERVE: u64 = 256;
/// The most open files one share may hold (the server's own bound).
const MAX_FIDS_PER_SHARE: u64 = 16_384;
/// The fewest open files a share is given, whatever the limit.
const MIN_FIDS_PER_SHARE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard one (each file the guest
/// holds open in a share is a host descriptor, and a guest with
/// `cache=loose` keeps thousands) and returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        log::warn!("cannot raise the open-file limit from {} to {}", lim.rlim_cur, lim.rlim_max);
    }
    lim.rlim_cur
}

/// How many open files each of `shares` shares may hold under a
/// descriptor limit of `limit`.
fn fids_per_share(limit: u64, shares: usize) -> usize {
    let each = limit.saturating_sub(FD_RESERVE) / shares.max(1) as u64;
    each.clamp(MIN_FIDS_PER_SHARE, MAX_FIDS_PER_SHARE) as usize
}

/// Test-only (feature `seccomp-probe`): a port whose writes make the vCPU
/// thread call what its seccomp filter refuses: 0x5e sysinfo(2); 0x5f an
/// executable mprotect; 0x60 tgkill to another process (pid 1, signal 0);
/// 0x61 a SIGSYS handler of its own (then sysinfo).
#[cfg(feature = "seccomp-probe")]
struct SeccompProbe;

#[cfg(feature = "seccomp-probe")]
impl BusDevice for SeccompProbe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let sysinfo = || {
            // SAFETY: libc::sysinfo is plain integers, for which all-zero
            // bytes are a valid value.
            let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
            // SAFETY: sysinfo fills the struct we pass.
            unsafe { libc::syscall(libc::SYS_sysinfo, &mut info) }
        };
        match data.first() {
            Some(0x5e) => eprintln!("ember: seccomp-probe: sysinfo returned {}", sysinfo()),
            Some(0x5f) => {
                let mut page = vec![0u8; 8192];
                let at = (page.as_mut_ptr() as usize + 4095) & !4095;
                // SAFETY: changes the protection of a page inside a live
                // heap buffer, back to read/write right after.
                let r = unsafe { libc::mprotect(at as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_EXEC) };
                // SAFETY: as above.
                unsafe { libc::mprotect(at as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_WRITE) };
                eprintln!("ember: seccomp-probe: mprotect(PROT_EXEC) returned {r}");
            }
            Some(0x60) => {
                // SAFETY: signal 0 only checks that the target exists.
                let r = unsafe { libc::syscall(libc::SYS_tgkill, 1, 1, 0) };
                eprintln!("ember: seccomp-probe: tgkill(1) returned {r}");
            }
            Some(0x61) => {
                // SAFETY: ignoring SIGSYS is the escape being probed; the
                // filter must refuse it.
                let r = unsafe { libc::signal(libc::SIGSYS, libc::SIG_IGN) };
                eprintln!("ember: seccomp-probe: signal(SIGSYS) returned {r}, sysinfo returned {}", sysinfo());
            }
            _ => {}
        }
    }
}

/// Splits a kernel command line at its first `--` word outside double
/// quotes (the kernel's rule): the kernel's part, and what follows `--`.
fn split_at_dashes(cmdline: &str) -> (&str, Option<&str>) {
    let b = cmdline.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'-' if !quoted
                && b.get(i + 1) == Some(&b'-')
                && (i == 0 || b[i - 1].is_ascii_whitespace())
                && b.get(i + 2).is_none_or(u8::is_ascii_whitespace) =>
            {
                return (&cmdline[..i], Some(&cmdline[i + 2..]));
            }
            _ => {}
        }
        i += 1;
    }
    (cmdline, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16 item 9: a `--` in the user's command line swallowed the
    /// device parameters ember appends (they went to init, not the kernel).
    #[test]
    fn device_parameters_go_before_a_double_dash() {
        let mut dm = DeviceManager::new();
        let (base, irq) = layout::virtio_slot(0);
        dm.virtio.push(VirtioPlacement { device_type: 2, transport: Transport::Mmio { base, irq } });
        let dev = "pci=off virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(
            dm.kernel_cmdline("console=ttyS0 -- init-arg --x", true),
            format!("console=ttyS0 {dev} -- init-arg --x")
        );
        assert_eq!(dm.kernel_cmdline("-- a", true), format!("{dev} -- a"));
        assert_eq!(dm.kernel_cmdline("a --", true), format!("a {dev} --"));
        // Not a `--` word: left alone.
        assert_eq!(dm.kernel_cmdline("a --b c--", true), format!("a --b c-- {dev}"));
        assert_eq!(dm.kernel_cmdline("x=\"1 -- 2\" y", true), format!("x=\"1 -- 2\" y {dev}"));
    }

    #[test]
    fn open_files_are_shared_out_under_the_limit() {
        assert_eq!(fids_per_share(1024, 1), 768);
        assert_eq!(fids_per_share(1024, 3), 256);
        assert_eq!(fids_per_share(1 << 20, 2), 16_384);
        assert_eq!(fids_per_share(100, 1), 64);
        assert_eq!(fids_per_share(u64::MAX, 0), 16_384);
    }

    #[test]
    fn raising_the_fd_limit_reaches_the_hard_limit() {
        let soft = raise_fd_limit();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((soft, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }

    #[test]
    fn command_line_lists_each_virtio_device() {
        let mut dm = DeviceManager::new();
        assert_eq!(dm.kernel_cmdline("console=ttyS0", true), "console=ttyS0 pci=off");
        for i in 0..2 {
            let (base, irq) = layout::virtio_slot(i);
            dm.virtio.push(VirtioPlacement { device_type: 2, transport: Transport::Mmio { base, irq } });
        }
        assert_eq!(
            dm.kernel_cmdline("console=ttyS0", true),
            "console=ttyS0 pci=off virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(
            dm.kernel_cmdline("", true),
            "pci=off virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        // A kernel with ACPI finds them in the DSDT.
        assert_eq!(dm.kernel_cmdline("console=ttyS0", false), "console=ttyS0 pci=off");
        // With a PCI root (every VM ember builds has one) the kernel
        // probes PCI, but not early.
        dm.pci_root = Some(PciRoot::for_layout(256 << 20));
        assert_eq!(
            dm.kernel_cmdline("console=ttyS0", true),
            "console=ttyS0 pci=noearly virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        // A PCI function needs no parameter: the kernel enumerates bus 0.
        dm.virtio.push(VirtioPlacement {
            device_type: 1,
            transport: Transport::Pci(PciPlacement { device: 1, first_gsi: 24, vectors: 3 }),
        });
        assert_eq!(
            dm.kernel_cmdline("", true),
            "pci=noearly virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn acpi_devices_follow_the_placements() {
        let mut dm = DeviceManager::new();
        assert_eq!(dm.acpi_devices(), acpi::Devices::default());
        for i in 0..3 {
            let (base, irq) = layout::virtio_slot(i);
            dm.virtio.push(VirtioPlacement { device_type: 1, transport: Transport::Mmio { base, irq } });
        }
        let d = dm.acpi_devices();
        assert_eq!(d.virtio_mmio[2], MmioDevice { base: 0xd000_2000, size: 0x1000, gsi: 7 });
        assert_eq!(d.virtio_mmio.len(), 3);
        assert_eq!(d.pci, None);
        dm.pci_root = Some(PciRoot::for_layout(256 << 20));
        assert_eq!(dm.acpi_devices().pci, dm.pci_root);
        // A PCI function is not in the DSDT: the bus is.
        dm.virtio.push(VirtioPlacement {
            device_type: 2,
            transport: Transport::Pci(PciPlacement { device: 1, first_gsi: 24, vectors: 2 }),
        });
        assert_eq!(dm.acpi_devices().virtio_mmio.len(), 3);
    }
}
