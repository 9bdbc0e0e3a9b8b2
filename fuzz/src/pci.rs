//! The driver side of PCI and virtio-pci for the `pci_registers` target: a
//! small machine (bus 0 with one virtio-blk function, the 0xCF8 ports, the
//! ECAM window and the BAR windows, as a VMM would wire them) and register
//! accessors a driver would use.
//!
//! Offsets and bits are written out from the PCI Local Bus 3.0 and virtio
//! 1.2 §4.1 specifications rather than taken from the code under test.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use ember_devices::bus::BusDevice;
use ember_devices::interrupt::{CountingIrq, IrqLine};
use ember_devices::pci::bus::{
    MmioWindow, PciBarWindow, PciConfigIo, PciConfigMmio, PciRoot, PciWindows, RecordingIoEvents,
};
use ember_devices::pci::msix::RecordingRouting;
use ember_devices::pci::PciDevice;
use ember_devices::virtio::pci::{IntxLine, PciInterrupts, VirtioPciTransport};
use ember_devices::virtio::VirtioDevice;
use ember_devices::GuestMemoryMmap;

use crate::input::{Reader, Writer};

/// The 32-bit BAR window.
pub const W32: MmioWindow = MmioWindow { base: 0xc000_0000, len: 0x1000_0000 };
/// The 64-bit BAR window (where the root first places the virtio BAR).
pub const W64: MmioWindow = MmioWindow { base: 0x40_0000_0000, len: 0x10_0000_0000 };
/// The device number of the virtio function.
pub const DEV: u8 = 1;

/// Configuration-space offsets.
pub mod cfg {
    pub const ID: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const CLASS: u16 = 0x08;
    pub const BAR0: u16 = 0x10;
    pub const BAR1: u16 = 0x14;
    pub const CAP_PTR: u16 = 0x34;
    pub const CMD_MEMORY: u16 = 1 << 1;
    pub const CMD_MASTER: u16 = 1 << 2;
    pub const CMD_INTX_DISABLE: u16 = 1 << 10;
    pub const MSIX_ENABLE: u16 = 1 << 15;
    pub const MSIX_MASK: u16 = 1 << 14;
}

/// Offsets in the virtio BAR (the layout the capabilities describe for
/// ember's devices; a driver would read them from the capabilities, which
/// `check_caps` does).
pub mod bar {
    pub const COMMON: u64 = 0x0000;
    pub const ISR: u64 = 0x1000;
    pub const DEVICE: u64 = 0x2000;
    pub const NOTIFY: u64 = 0x3000;
    pub const MSIX_TABLE: u64 = 0x4000;
    pub const MSIX_PBA: u64 = 0x5000;
    pub const SIZE: u64 = 0x8000;
}

/// Common configuration fields: (offset, natural width).
pub mod common {
    pub const DFSELECT: u64 = 0x00;
    pub const DF: u64 = 0x04;
    pub const GFSELECT: u64 = 0x08;
    pub const GF: u64 = 0x0c;
    pub const MSIX_CONFIG: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const STATUS: u64 = 0x14;
    pub const GENERATION: u64 = 0x15;
    pub const Q_SELECT: u64 = 0x16;
    pub const Q_SIZE: u64 = 0x18;
    pub const Q_MSIX: u64 = 0x1a;
    pub const Q_ENABLE: u64 = 0x1c;
    pub const Q_NOTIFY_OFF: u64 = 0x1e;
    pub const Q_DESC: u64 = 0x20;
    pub const Q_DRIVER: u64 = 0x28;
    pub const Q_DEVICE: u64 = 0x30;
    /// Every field with its width, for the fuzzer to pick from.
    pub const FIELDS: [(u64, usize); 22] = [
        (DFSELECT, 4),
        (DF, 4),
        (GFSELECT, 4),
        (GF, 4),
        (MSIX_CONFIG, 2),
        (NUM_QUEUES, 2),
        (STATUS, 1),
        (GENERATION, 1),
        (Q_SELECT, 2),
        (Q_SIZE, 2),
        (Q_MSIX, 2),
        (Q_ENABLE, 2),
        (Q_NOTIFY_OFF, 2),
        (Q_DESC, 8),
        (Q_DESC, 4),
        (Q_DESC + 4, 4),
        (Q_DRIVER, 8),
        (Q_DRIVER, 4),
        (Q_DRIVER + 4, 4),
        (Q_DEVICE, 8),
        (Q_DEVICE, 4),
        (Q_DEVICE + 4, 4),
    ];
}

/// "No vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Bus 0 with one virtio function, wired as a VMM would.
pub struct Machine {
    /// The root.
    pub root: Arc<Mutex<PciRoot>>,
    /// Ports 0xCF8-0xCFF.
    pub io: PciConfigIo,
    /// The ECAM window (bus 0).
    pub ecam: PciConfigMmio,
    /// The BAR windows: (base, length, device).
    pub windows: Vec<(u64, u64, Arc<Mutex<PciBarWindow>>)>,
    /// The virtio function.
    pub t: Arc<Mutex<VirtioPciTransport>>,
    /// The notification eventfds registered now.
    pub ioevents: Arc<RecordingIoEvents>,
    /// One counting line per MSI-X vector.
    pub lines: Vec<Arc<CountingIrq>>,
    /// The INTx line.
    pub intx: Arc<CountingIrq>,
    /// The queue eventfd numbers.
    pub queue_fds: Vec<i32>,
}

impl Machine {
    /// Builds the machine around `device`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Machine {
        let n = VirtioPciTransport::vector_count(device.as_ref());
        let lines: Vec<Arc<CountingIrq>> = (0..n).map(|_| Arc::new(CountingIrq::default())).collect();
        let intx = Arc::new(CountingIrq::default());
        let irqs = PciInterrupts {
            msi: Arc::new(RecordingRouting::default()),
            vectors: lines.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect(),
            intx: Some(IntxLine { line: intx.clone(), irq: 10 }),
        };
        let t = VirtioPciTransport::new(device, mem, irqs).expect("transport");
        let queue_fds = t.queue_events().iter().map(|e| e.as_raw_fd()).collect();
        let t = Arc::new(Mutex::new(t));
        let ioevents = Arc::new(RecordingIoEvents::default());
        let mut root = PciRoot::new(PciWindows { mmio32: W32, mmio64: W64 }, ioevents.clone()).expect("root");
        assert_eq!(root.add_device(t.clone()).expect("add"), DEV);
        let windows = root.bar_windows();
        let root = Arc::new(Mutex::new(root));
        Machine {
            io: PciConfigIo::new(root.clone()),
            ecam: PciConfigMmio::new(root.clone()),
            root,
            windows,
            t,
            ioevents,
            lines,
            intx,
            queue_fds,
        }
    }

    /// A configuration read of the virtio function through 0xCF8/0xCFC.
    pub fn cfg_read(&mut self, reg: u16, len: usize) -> u32 {
        self.io.write(0, &cf8_address(DEV, reg).to_le_bytes());
        let mut b = [0u8; 4];
        self.io.read(4 + u64::from(reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    /// A configuration write of the virtio function through 0xCF8/0xCFC.
    pub fn cfg_write(&mut self, reg: u16, val: u32, len: usize) {
        self.io.write(0, &cf8_address(DEV, reg).to_le_bytes());
        self.io.write(4 + u64::from(reg & 3), &val.to_le_bytes()[..len]);
    }

    /// Where BAR 0 is decoded now, if it is.
    pub fn bar0(&self) -> Option<u64> {
        self.root.lock().unwrap().decoded_bar(DEV, 0).map(|b| b.0)
    }

    /// A guest access at `offset` in the virtio BAR: through the window
    /// that decodes it, or (while the fuzzer has the BAR moved away or
    /// decoding off) straight to the function, so the registers stay
    /// reachable.
    pub fn bar_access(&mut self, offset: u64, data: &mut [u8], write: bool) {
        if let Some(base) = self.bar0() {
            let addr = base + offset;
            for (wb, wl, w) in &self.windows {
                if addr >= *wb && addr - wb < *wl {
                    let mut w = w.lock().unwrap();
                    if write {
                        w.write(addr - wb, data);
                    } else {
                        w.read(addr - wb, data);
                    }
                    return;
                }
            }
        }
        let mut t = self.t.lock().unwrap();
        if write {
            t.write_bar(0, offset, data);
        } else {
            t.read_bar(0, offset, data);
        }
    }

    /// Reads `len` bytes of the virtio BAR at `offset`.
    pub fn bar_read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.bar_access(offset, &mut b[..len], false);
        u64::from_le_bytes(b)
    }

    /// Writes the low `len` bytes of `val` at `offset` in the virtio BAR.
    pub fn bar_write(&mut self, offset: u64, val: u64, len: usize) {
        let mut b = val.to_le_bytes();
        self.bar_access(offset, &mut b[..len], true);
    }

    /// Reads a register without side effects on the machine (straight from
    /// the function; never the ISR or the PCI_CFG window).
    pub fn peek(&self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.t.lock().unwrap().read_bar(0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// The MSI-X capability offset, from the capability list.
    pub fn msix_cap(&mut self) -> u16 {
        let mut at = self.cfg_read(cfg::CAP_PTR, 1) as u16;
        for _ in 0..48 {
            if at == 0 {
                break;
            }
            if self.cfg_read(at, 1) == 0x11 {
                return at;
            }
            at = self.cfg_read(at + 1, 1) as u16;
        }
        panic!("no MSI-X capability");
    }
}

/// A `CONFIG_ADDRESS` value for bus 0.
pub fn cf8_address(dev: u8, reg: u16) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(reg & 0xfc) | u32::from(reg & 0xf00) << 16
}

/// The driver's initialisation through the common configuration (§3.1.1,
/// §4.1.5): reset, ACKNOWLEDGE, DRIVER, features (`wanted` & offered, plus
/// VERSION_1), FEATURES_OK. Returns whether the device took FEATURES_OK.
pub fn negotiate(m: &mut Machine, wanted: u64) -> bool {
    use crate::virtio::status::*;
    m.bar_write(common::STATUS, 0, 1);
    m.bar_write(common::STATUS, u64::from(ACKNOWLEDGE), 1);
    m.bar_write(common::STATUS, u64::from(ACKNOWLEDGE | DRIVER), 1);
    m.bar_write(common::DFSELECT, 0, 4);
    let lo = m.bar_read(common::DF, 4);
    m.bar_write(common::DFSELECT, 1, 4);
    let hi = m.bar_read(common::DF, 4);
    let acked = ((lo | hi << 32) & wanted) | crate::virtio::F_VERSION_1;
    m.bar_write(common::GFSELECT, 0, 4);
    m.bar_write(common::GF, acked & 0xffff_ffff, 4);
    m.bar_write(common::GFSELECT, 1, 4);
    m.bar_write(common::GF, acked >> 32, 4);
    m.bar_write(common::STATUS, u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK), 1);
    m.bar_read(common::STATUS, 1) as u32 & FEATURES_OK != 0
}

/// Sets up queue 0 on `rings` with MSI-X vector `vector`; `ready` enables
/// it.
pub fn setup_queue(m: &mut Machine, rings: &crate::virtio::Rings, vector: u16, ready: bool) {
    m.bar_write(common::Q_SELECT, 0, 2);
    m.bar_write(common::Q_SIZE, u64::from(rings.size), 2);
    m.bar_write(common::Q_DESC, rings.desc, 8);
    m.bar_write(common::Q_DRIVER, rings.avail & 0xffff_ffff, 4);
    m.bar_write(common::Q_DRIVER + 4, rings.avail >> 32, 4);
    m.bar_write(common::Q_DEVICE, rings.used, 8);
    m.bar_write(common::Q_MSIX, u64::from(vector), 2);
    if ready {
        m.bar_write(common::Q_ENABLE, 1, 2);
    }
}

/// Programs MSI-X entry `v` (fixed delivery to APIC 0, vector `data`) and
/// unmasks it.
pub fn program_vector(m: &mut Machine, v: u64, data: u32) {
    let e = bar::MSIX_TABLE + 16 * v;
    m.bar_write(e, 0xfee0_0000, 4);
    m.bar_write(e + 4, 0, 4);
    m.bar_write(e + 8, u64::from(data), 4);
    m.bar_write(e + 12, 0, 4);
}

/// Encodes a width selector for [`width`].
pub fn put_width(w: &mut Writer, len: usize) {
    w.u8(match len {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => 4,
    });
}

/// An access width: 1, 2, 4, 8 or (rarely) 3 bytes.
pub fn width(r: &mut Reader) -> usize {
    [1, 2, 4, 8, 3][usize::from(r.u8() % 5)]
}
