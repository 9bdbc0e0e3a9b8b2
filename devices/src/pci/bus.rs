//! PCI bus 0: the root, configuration access, and BAR decoding.
//!
//! [`PciRoot`] holds the functions of bus 0: the host bridge at 00:00.0
//! and up to 31 devices from 00:01.0, each function 0 of its device
//! number. It places their BARs in two MMIO windows given by the VMM (one
//! below 4 GiB for 32-bit BARs, one above for 64-bit BARs), as firmware
//! would, and enables their memory decoding.
//!
//! The guest reaches configuration space through [`PciConfigIo`] (the
//! legacy mechanism: `CONFIG_ADDRESS` at port 0xCF8, `CONFIG_DATA` at
//! 0xCFC-0xCFF) or [`PciConfigMmio`] (ECAM, bus 0 only: a 1 MiB window).
//! The VMM places both on its buses, together with one [`PciBarWindow`]
//! per MMIO window: the windows never move; inside them the root decodes
//! each access to whichever BAR the guest programmed there.
//!
//! When the guest moves a BAR, or turns memory decoding off or on, the root
//! updates its BAR map and re-registers the device's notification
//! addresses through [`IoEventRegistry`] (KVM ioeventfds in the VMM). A BAR
//! is decoded only while its function's memory decoding is on, it lies
//! entirely inside a window, and it overlaps no BAR already decoded (the
//! BAR that was there first keeps its place). Anything else is guest
//! input that changes nothing outside the guest: a BAR moved over RAM,
//! over another BAR, to 0 or to its sizing value simply decodes nowhere
//! until it is moved back.
//!
//! Lock order: the root, then one device; a [`PciBarWindow`] takes the
//! map's read lock, clones the device handle, releases the map, then locks
//! the device. The event loop locks a device alone.

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

use super::config::{self, ConfigSpace, PciHeader, COMMAND, COMMAND_MEMORY, CONFIG_SPACE_EXTENDED};
use super::{BarKind, BarRegion, PciDevice, PciError, BAR_COUNT};
use crate::bus::BusDevice;
use crate::virtio::LogBudget;

/// Device numbers on bus 0.
pub const DEVICES_PER_BUS: usize = 32;
/// The legacy configuration ports: `CONFIG_ADDRESS` (0xCF8) and
/// `CONFIG_DATA` (0xCFC), as one 8-byte port range.
pub const CONFIG_IO_PORT: u64 = 0xcf8;
/// Length of the legacy configuration port range.
pub const CONFIG_IO_LEN: u64 = 8;
/// Size of the ECAM window for bus 0 (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS0_SIZE: u64 = 1 << 20;

/// The host bridge's vendor: Red Hat, whose ID 0x0008 is the generic
/// "PCIe host bridge" that no operating system applies chipset quirks to.
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
/// The host bridge's device ID.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;
/// Class code of a host bridge.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// A guest-physical MMIO range in which the root places and decodes BARs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioWindow {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

impl MmioWindow {
    fn contains(&self, addr: u64, size: u64) -> bool {
        addr >= self.base && addr.checked_add(size).is_some_and(|end| end <= self.base + self.len)
    }

    fn overlaps(&self, other: &MmioWindow) -> bool {
        self.base < other.base + other.len && other.base < self.base + self.len
    }
}

/// The two windows BARs are placed in: `mmio32` below 4 GiB for 32-bit
/// BARs, `mmio64` for 64-bit BARs. Both are decoded for guest-moved BARs
/// of either kind (a 64-bit BAR may be programmed below 4 GiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// Window for 32-bit BARs (must end at or below 4 GiB).
    pub mmio32: MmioWindow,
    /// Window for 64-bit BARs.
    pub mmio64: MmioWindow,
}

/// Where the VMM follows a device's notification addresses.
///
/// Called with the root's lock held (never a device's), from the vCPU
/// thread whose configuration write moved a BAR (or from
/// [`PciRoot::add_device`]). An error is logged; the notification still
/// works through the BAR (a slower exit to user space).
pub trait IoEventRegistry: Send + Sync {
    /// Guest writes of any width to `addr` must signal `fd` (KVM: an
    /// ioeventfd with no data match).
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
    /// Undoes [`register`](IoEventRegistry::register) of `fd` at `addr`.
    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()>;
}

/// An [`IoEventRegistry`] that records registrations, for tests: the set
/// of (eventfd, address) pairs registered now.
#[derive(Debug, Default)]
pub struct RecordingIoEvents(Mutex<Vec<(i32, u64)>>);

impl RecordingIoEvents {
    /// The registered (fd number, address) pairs, sorted by address.
    pub fn registered(&self) -> Vec<(i32, u64)> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_by_key(|&(fd, a)| (a, fd));
        v
    }
}

impl IoEventRegistry for RecordingIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (fd.as_raw_fd(), addr);
        if v.contains(&key) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        v.push(key);
        Ok(())
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (fd.as_raw_fd(), addr);
        match v.iter().position(|k| *k == key) {
            Some(i) => {
                v.swap_remove(i);
                Ok(())
            }
            None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }
}

/// The host bridge at 00:00.0: a type-0 header with class 0x0600 and
/// nothing else (no BARs, no capabilities), so that a guest scanning bus 0
/// finds a PCI host (Linux's type-1 probe looks for one).
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// The bridge.
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR,
                device_id: HOST_BRIDGE_DEVICE,
                revision_id: 0,
                class_code: CLASS_HOST_BRIDGE,
                subsystem_vendor_id: HOST_BRIDGE_VENDOR,
                subsystem_id: 0x1100,
                interrupt_pin: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        // The bridge decodes nothing itself; only the scratch registers
        // (cache line size, interrupt line) keep what is written.
        self.config.write(offset, data);
    }

    fn bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        [None; BAR_COUNT]
    }
    fn config_space(&self) -> Option<&ConfigSpace> {
        Some(&self.config)
    }
    fn config_space_mut(&mut self) -> Option<&mut ConfigSpace> {
        Some(&mut self.config)
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// A BAR decoded at an address.
#[derive(Clone)]
struct Mapping {
    addr: u64,
    size: u64,
    slot: u8,
    bar: u8,
    device: Arc<Mutex<dyn PciDevice>>,
}

/// The decoded BARs, sorted by address, shared with the [`PciBarWindow`]s.
#[derive(Default)]
struct BarMap {
    entries: Vec<Mapping>,
}

impl BarMap {
    fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.entries.partition_point(|m| m.addr <= addr);
        let m = self.entries.get(i.checked_sub(1)?)?;
        (addr - m.addr < m.size).then_some(m)
    }

    fn overlaps(&self, addr: u64, size: u64) -> bool {
        self.entries.iter().any(|m| addr < m.addr + m.size && m.addr < addr + size)
    }
}

/// A device handle, the BAR index and the offset in the BAR of an access.
type BarTarget = (Arc<Mutex<dyn PciDevice>>, u8, u64);

struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    /// The BARs the function asks to decode: (address, size).
    wanted: [Option<(u64, u64)>; BAR_COUNT],
}

/// Bus 0 and its functions.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    windows: PciWindows,
    /// Next free address in (mmio32, mmio64) for BAR placement.
    next: [u64; 2],
    map: Arc<RwLock<BarMap>>,
    ioevents: Arc<dyn IoEventRegistry>,
    log: LogBudget,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("devices", &self.slots.iter().filter(|s| s.is_some()).count())
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

/// Logs a guest-caused condition within the root's budget.
macro_rules! root_warn {
    ($r:expr, $($arg:tt)*) => {
        if $r.log.take("pci: guest configuration") {
            warn!("pci: {}", format_args!($($arg)*));
        }
    };
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0. BARs go into `windows`;
    /// notification addresses are registered with `ioevents`.
    pub fn new(windows: PciWindows, ioevents: Arc<dyn IoEventRegistry>) -> Result<Self, PciError> {
        for w in [windows.mmio32, windows.mmio64] {
            if w.len == 0 || w.base.checked_add(w.len).is_none() {
                return Err(PciError::BadWindow { base: w.base, len: w.len });
            }
        }
        let (w32, w64) = (windows.mmio32, windows.mmio64);
        if w32.base + w32.len > 1 << 32 || w32.overlaps(&w64) {
            return Err(PciError::BadWindow { base: w32.base, len: w32.len });
        }
        let mut slots: Vec<Option<Slot>> = (0..DEVICES_PER_BUS).map(|_| None).collect();
        slots[0] = Some(Slot { device: Arc::new(Mutex::new(HostBridge::new())), wanted: [None; BAR_COUNT] });
        Ok(PciRoot {
            slots,
            windows,
            next: [w32.base, w64.base],
            map: Arc::new(RwLock::new(BarMap::default())),
            ioevents,
            log: LogBudget::new(32),
        })
    }

    /// The windows BARs are placed and decoded in.
    pub fn windows(&self) -> PciWindows {
        self.windows
    }

    /// Puts `device` at the next free device number (from 1), places its
    /// BARs in the windows (naturally aligned, 32-bit BARs in `mmio32`,
    /// 64-bit ones in `mmio64`) and turns its memory decoding on. Returns
    /// the device number.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return Err(PciError::BusFull(DEVICES_PER_BUS - 1));
        };
        let bars = lock(&device).bars();
        // Allocate first, so a failure leaves the root unchanged.
        let mut next = self.next;
        let mut placed = Vec::new();
        for b in bars.iter().flatten() {
            let (i, w) = match b.kind {
                BarKind::Memory32 => (0, self.windows.mmio32),
                BarKind::Memory64 => (1, self.windows.mmio64),
            };
            let at = next[i].checked_add(b.size - 1).map(|x| x & !(b.size - 1));
            match at.filter(|&a| w.contains(a, b.size)) {
                Some(a) => {
                    next[i] = a + b.size;
                    placed.push((b.index, a));
                }
                None => return Err(PciError::WindowFull { size: b.size, base: w.base, len: w.len }),
            }
        }
        self.next = next;
        {
            let mut d = lock(&device);
            for &(index, addr) in &placed {
                let reg = config::bar_reg(index);
                d.write_config(reg, &(addr as u32).to_le_bytes());
                if bars[usize::from(index)].is_some_and(|b| b.kind == BarKind::Memory64) {
                    d.write_config(reg + 4, &((addr >> 32) as u32).to_le_bytes());
                }
            }
            let mut cmd = [0u8; 2];
            d.read_config(COMMAND, &mut cmd);
            let cmd = u16::from_le_bytes(cmd) | COMMAND_MEMORY;
            d.write_config(COMMAND, &cmd.to_le_bytes());
        }
        self.slots[slot] = Some(Slot { device, wanted: [None; BAR_COUNT] });
        self.refresh(slot as u8);
        Ok(slot as u8)
    }

    /// The device at `device_number`, if any.
    pub fn device(&self, device_number: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.slots.get(usize::from(device_number))?.as_ref().map(|s| s.device.clone())
    }

    /// The decoded BARs now: (device number, BAR index, address, size),
    /// sorted by address.
    pub fn decoded_bars(&self) -> Vec<(u8, u8, u64, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.entries.iter().map(|m| (m.slot, m.bar, m.addr, m.size)).collect()
    }

    /// Where BAR `bar` of the device at `device_number` is decoded now:
    /// (address, size).
    pub fn decoded_bar(&self, device_number: u8, bar: u8) -> Option<(u64, u64)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.entries.iter().find(|m| m.slot == device_number && m.bar == bar).map(|m| (m.addr, m.size))
    }

    /// One [`PciBarWindow`] per window, as (base, length, device) for the
    /// VMM's MMIO bus.
    pub fn bar_windows(&self) -> Vec<(u64, u64, Arc<Mutex<PciBarWindow>>)> {
        [self.windows.mmio32, self.windows.mmio64]
            .into_iter()
            .map(|w| {
                (
                    w.base,
                    w.len,
                    Arc::new(Mutex::new(PciBarWindow { base: w.base, map: self.map.clone(), log: LogBudget::new(16) })),
                )
            })
            .collect()
    }

    fn target(&self, bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    /// A configuration read of `data.len()` bytes at `offset` (below 4096)
    /// of bus/device/function; absent functions read all-ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self.target(bus, device, function) {
            Some(s) if usize::from(offset) + data.len() <= CONFIG_SPACE_EXTENDED => {
                lock(&s.device).read_config(offset, data)
            }
            _ => data.fill(0xff),
        }
    }

    /// A configuration write; absent functions ignore it.
    pub fn config_write(&mut self, bus: u8, device: u8, function: u8, offset: u16, data: &[u8]) {
        let Some(s) = self.target(bus, device, function) else {
            debug!("pci: configuration write to absent {bus:02x}:{device:02x}.{function} ignored");
            return;
        };
        if usize::from(offset) + data.len() > CONFIG_SPACE_EXTENDED {
            return;
        }
        lock(&s.device).write_config(offset, data);
        self.refresh(device);
    }

    /// Re-reads the BARs of the device at `slot` and updates the map.
    fn refresh(&mut self, slot: u8) {
        let Some(s) = self.slots.get_mut(usize::from(slot)).and_then(Option::as_mut) else {
            return;
        };
        let bars = lock(&s.device).bars();
        let mut wanted = [None; BAR_COUNT];
        for b in bars.iter().flatten() {
            if b.decoding && b.addr != 0 && b.addr.checked_add(b.size).is_some() {
                wanted[usize::from(b.index)] = Some((b.addr, b.size));
            }
        }
        if wanted == s.wanted {
            return;
        }
        s.wanted = wanted;
        self.update_map();
    }

    /// Brings the map in line with what every function asks for: drops
    /// mappings no longer asked for, then adds the asked-for BARs that fit
    /// (inside a window, no overlap), in device and BAR order. Moves the
    /// ioeventfds of what changed.
    fn update_map(&mut self) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let slots = &self.slots;
            map.entries.retain(|m| {
                let keep = slots[usize::from(m.slot)]
                    .as_ref()
                    .is_some_and(|s| s.wanted[usize::from(m.bar)] == Some((m.addr, m.size)));
                if !keep {
                    removed.push(m.clone());
                }
                keep
            });
            for (slot, s) in self.slots.iter().enumerate() {
                let Some(s) = s else { continue };
                for (bar, w) in s.wanted.iter().enumerate() {
                    let Some((addr, size)) = *w else { continue };
                    if map.entries.iter().any(|m| usize::from(m.slot) == slot && usize::from(m.bar) == bar) {
                        continue;
                    }
                    let in_window =
                        self.windows.mmio32.contains(addr, size) || self.windows.mmio64.contains(addr, size);
                    if !in_window {
                        root_warn!(
                            self,
                            "BAR {bar} of 00:{slot:02x}.0 at {addr:#x}+{size:#x} is outside the windows; not decoded"
                        );
                        continue;
                    }
                    if map.overlaps(addr, size) {
                        root_warn!(
                            self,
                            "BAR {bar} of 00:{slot:02x}.0 at {addr:#x}+{size:#x} overlaps a decoded BAR; not decoded"
                        );
                        continue;
                    }
                    let m = Mapping { addr, size, slot: slot as u8, bar: bar as u8, device: s.device.clone() };
                    let pos = map.entries.partition_point(|e| e.addr < addr);
                    map.entries.insert(pos, m.clone());
                    added.push(m);
                }
            }
        }
        for m in &removed {
            self.move_ioevents(m, false);
        }
        for m in &added {
            self.move_ioevents(m, true);
        }
    }

    fn move_ioevents(&self, m: &Mapping, register: bool) {
        let dev = lock(&m.device);
        for ev in dev.ioevents().into_iter().filter(|e| e.bar == m.bar && e.offset < m.size) {
            let addr = m.addr + ev.offset;
            let r = if register { self.ioevents.register(ev.fd, addr) } else { self.ioevents.unregister(ev.fd, addr) };
            if let Err(e) = r {
                log::error!(
                    "pci: cannot {} the notification eventfd of 00:{:02x}.0 at {addr:#x}: {e}",
                    if register { "register" } else { "unregister" },
                    m.slot
                );
            }
        }
    }
}

/// The legacy configuration mechanism (PCI Local Bus 3.0 §3.2.2.3.2): a
/// [`BusDevice`] for ports 0xCF8-0xCFF.
///
/// `CONFIG_ADDRESS` (0xCF8) takes 32-bit accesses only (narrower ones go to
/// whatever else decodes those ports, here nothing: reads all-ones, writes
/// dropped): bit 31 enables, bits 23:16 bus, 15:11 device, 10:8 function,
/// 7:2 register, and bits 27:24 select the 256-byte page of the 4 KiB
/// space (AMD's extension, so no offset aliases another). `CONFIG_DATA`
/// (0xCFC-0xCFF) takes accesses of 1, 2 or 4 bytes that stay inside it.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    log: LogBudget,
}

impl std::fmt::Debug for PciConfigIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigIo").field("address", &format_args!("{:#x}", self.address)).finish_non_exhaustive()
    }
}

/// Bits of `CONFIG_ADDRESS` that hold state (the rest read as zero).
const CONFIG_ADDRESS_MASK: u32 = 0x8fff_fffc;

impl PciConfigIo {
    /// The ports, for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0, log: LogBudget::new(16) }
    }

    /// (bus, device, function, register offset) of the latched address, if
    /// enabled.
    fn target(&self) -> Option<(u8, u8, u8, u16)> {
        let a = self.address;
        if a & (1 << 31) == 0 {
            return None;
        }
        let offset = ((a >> 16) & 0xf00) as u16 | (a & 0xfc) as u16;
        Some(((a >> 16) as u8, ((a >> 11) & 0x1f) as u8, ((a >> 8) & 7) as u8, offset))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (4..=7, 1 | 2 | 4) if offset - 4 + data.len() as u64 <= 4 => match self.target() {
                Some((bus, dev, func, reg)) => {
                    let root = lock(&self.root);
                    root.config_read(bus, dev, func, reg + (offset - 4) as u16, data);
                }
                None => data.fill(0xff),
            },
            _ => {
                data.fill(0xff);
                if self.log.take("pci: configuration port access") {
                    debug!("pci: {}-byte read of port {:#x} ignored", data.len(), CONFIG_IO_PORT + offset);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let v = u32::from_le_bytes(data.try_into().unwrap_or([0; 4]));
                self.address = v & CONFIG_ADDRESS_MASK;
            }
            (4..=7, 1 | 2 | 4) if offset - 4 + data.len() as u64 <= 4 => {
                if let Some((bus, dev, func, reg)) = self.target() {
                    let mut root = lock(&self.root);
                    root.config_write(bus, dev, func, reg + (offset - 4) as u16, data);
                }
            }
            _ => {
                // Linux's type-1 probe writes a byte to 0xCFB; other
                // chipsets decode 0xCF9 (reset control) here.
                if self.log.take("pci: configuration port access") {
                    debug!("pci: {}-byte write to port {:#x} ignored", data.len(), CONFIG_IO_PORT + offset);
                }
            }
        }
    }
}

/// ECAM (enhanced configuration access, PCIe §7.2.2) for bus 0: a
/// [`BusDevice`] over a 1 MiB MMIO window; offset bits 19:15 select the
/// device, 14:12 the function, 11:0 the register. Accesses of any width
/// that stay inside one function's 4 KiB are served; others read all-ones.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
    log: LogBudget,
}

impl std::fmt::Debug for PciConfigMmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigMmio").finish_non_exhaustive()
    }
}

impl PciConfigMmio {
    /// The ECAM window, for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root, log: LogBudget::new(16) }
    }

    fn decode(&mut self, offset: u64, len: usize) -> Option<(u8, u8, u8, u16)> {
        let reg = (offset & 0xfff) as u16;
        if offset >= ECAM_BUS0_SIZE || usize::from(reg) + len > CONFIG_SPACE_EXTENDED {
            if self.log.take("pci: ECAM access") {
                warn!("pci: {len}-byte ECAM access at {offset:#x} outside bus 0 or across a function; ignored");
            }
            return None;
        }
        Some(((offset >> 20) as u8, ((offset >> 15) & 0x1f) as u8, ((offset >> 12) & 7) as u8, reg))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.decode(offset, data.len()) {
            Some((bus, dev, func, reg)) => lock(&self.root).config_read(bus, dev, func, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bus, dev, func, reg)) = self.decode(offset, data.len()) {
            lock(&self.root).config_write(bus, dev, func, reg, data);
        }
    }
}

/// One MMIO window of the root on the VMM's bus: routes each access to the
/// BAR decoded at that address, in the device's BAR offsets. Addresses
/// where no BAR is decoded, and accesses running past the end of a BAR,
/// read all-ones and drop writes (a master abort).
pub struct PciBarWindow {
    base: u64,
    map: Arc<RwLock<BarMap>>,
    log: LogBudget,
}

impl std::fmt::Debug for PciBarWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBarWindow").field("base", &format_args!("{:#x}", self.base)).finish_non_exhaustive()
    }
}

impl PciBarWindow {
    fn lookup(&mut self, offset: u64, len: usize) -> Option<BarTarget> {
        let addr = self.base.checked_add(offset)?;
        let hit = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            map.find(addr).and_then(|m| {
                let off = addr - m.addr;
                (off + len as u64 <= m.size).then(|| (m.device.clone(), m.bar, off))
            })
        };
        if hit.is_none() && self.log.take("pci: access outside any BAR") {
            debug!("pci: {len}-byte access at {addr:#x}: no BAR decoded there");
        }
        hit
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.lookup(offset, data.len()) {
            Some((dev, bar, off)) => lock(&dev).read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((dev, bar, off)) = self.lookup(offset, data.len()) {
            lock(&dev).write_bar(bar, off, data);
        }
    }
}

mod state;

pub use state::{PciConfigIoState, PciFunctionState, PciRootState};

#[cfg(test)]
mod tests;
