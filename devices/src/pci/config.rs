//! The configuration space of one PCI function (PCI Local Bus 3.0 §6.1,
//! §6.2.5, §6.7): a type-0 header, memory BARs and a capability list.
//!
//! The space is 256 bytes plus a write mask per byte. A write of any width
//! at any offset is applied byte by byte through the mask, so read-only
//! bits never change and a BAR register holds exactly its address bits
//! (the bits below its size are read-only zero, the type bits read-only):
//! writing all-ones reads back the size mask, which is how BARs are sized.
//! The host bridge uses this type as is; devices add their capabilities and
//! intercept the few registers with side effects.

use super::PciError;
use crate::snapshot::RestoreError;

/// `Vendor ID` (u16).
pub const VENDOR_ID: u16 = 0x00;
/// `Device ID` (u16).
pub const DEVICE_ID: u16 = 0x02;
/// `Command` (u16).
pub const COMMAND: u16 = 0x04;
/// `Status` (u16).
pub const STATUS: u16 = 0x06;
/// `Revision ID` (u8).
pub const REVISION_ID: u16 = 0x08;
/// `Class Code` (3 bytes: programming interface, sub-class, base class).
pub const CLASS_CODE: u16 = 0x09;
/// `Cache Line Size` (u8).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// `Header Type` (u8).
pub const HEADER_TYPE: u16 = 0x0e;
/// The first BAR register.
pub const BAR0: u16 = 0x10;
/// `Subsystem Vendor ID` (u16).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// `Subsystem ID` (u16).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// `Expansion ROM Base Address` (u32; no ROM: reads 0).
pub const ROM_BAR: u16 = 0x30;
/// `Capabilities Pointer` (u8).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// `Interrupt Line` (u8, read-write, for software).
pub const INTERRUPT_LINE: u16 = 0x3c;
/// `Interrupt Pin` (u8; 1 = INTA#).
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Where capabilities start.
pub const CAPABILITIES_START: u16 = 0x40;

/// `Command`: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// `Command`: bus master.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// `Command`: INTx emulation disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// `Status`: INTx asserted.
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// `Status`: the capability list exists.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// Size of the implemented configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Size of a function's configuration space as ECAM addresses it.
pub const CONFIG_SPACE_EXTENDED: usize = 4096;
/// BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

/// Bits 3:0 of a memory BAR: 64-bit type.
const BAR_MEM64: u32 = 0b100;
/// Bit 3 of a memory BAR: prefetchable.
const BAR_PREFETCH: u32 = 0b1000;

/// The fixed identity of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Class code: base class << 16 | sub-class << 8 | programming
    /// interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin: 0 none, 1 INTA# .. 4 INTD#.
    pub interrupt_pin: u8,
}

/// What kind of address a memory BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Anywhere below 4 GiB (one register).
    Memory32,
    /// Anywhere in the 64-bit space (two registers).
    Memory64,
}

/// A BAR a device implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// Whether reads have no side effects (may be prefetched).
    pub prefetchable: bool,
}

/// Where a BAR is programmed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// The BAR's (first) register index.
    pub index: u8,
    /// 32- or 64-bit.
    pub kind: BarKind,
    /// The address the guest (or the VMM) programmed.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Whether the function decodes it (`Command` memory space bit).
    pub decoding: bool,
}

/// What each BAR register is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarReg {
    Unused,
    Low(BarSpec),
    /// The upper half of the 64-bit BAR in the register before.
    High,
}

/// One function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    bars: [BarReg; BAR_COUNT],
    /// Offset of the last capability (its next pointer is the one to link).
    last_cap: Option<u8>,
    next_cap: usize,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("command", &format_args!("{:#06x}", self.command()))
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type-0 header with `header`'s identity, no BARs, no capabilities.
    /// Writable: `Command` memory-space, bus-master and INTx-disable bits,
    /// `Cache Line Size` and `Interrupt Line`.
    pub fn new(header: &PciHeader) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            bars: [BarReg::Unused; BAR_COUNT],
            last_cap: None,
            next_cap: usize::from(CAPABILITIES_START),
        };
        c.set_u16(VENDOR_ID, header.vendor_id);
        c.set_u16(DEVICE_ID, header.device_id);
        c.set_u8(REVISION_ID, header.revision_id);
        let class = header.class_code.to_le_bytes();
        c.set_bytes(CLASS_CODE, &class[..3]);
        c.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        c.set_u8(INTERRUPT_PIN, header.interrupt_pin);
        let cmd = (COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE).to_le_bytes();
        c.set_wmask(COMMAND, &cmd);
        c.set_wmask(CACHE_LINE_SIZE, &[0xff]);
        c.set_wmask(INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Declares BAR `index`. A 64-bit BAR also takes register `index + 1`.
    pub fn add_bar(&mut self, index: u8, spec: BarSpec) -> Result<(), PciError> {
        let i = usize::from(index);
        let regs = if spec.kind == BarKind::Memory64 { 2 } else { 1 };
        if i + regs > BAR_COUNT || self.bars[i..i + regs].iter().any(|b| *b != BarReg::Unused) {
            return Err(PciError::BarIndex(index));
        }
        let max = if spec.kind == BarKind::Memory64 { 1 << 63 } else { 1 << 31 };
        if !spec.size.is_power_of_two() || spec.size < 16 || spec.size > max {
            return Err(PciError::BarSize(spec.size));
        }
        let mut flags = if spec.kind == BarKind::Memory64 { BAR_MEM64 } else { 0 };
        if spec.prefetchable {
            flags |= BAR_PREFETCH;
        }
        let addr_mask = !(spec.size - 1);
        let reg = bar_reg(index);
        self.set_u32(reg, flags);
        self.set_wmask(reg, &((addr_mask as u32) & !0xf).to_le_bytes());
        self.bars[i] = BarReg::Low(spec);
        if spec.kind == BarKind::Memory64 {
            self.set_u32(reg + 4, 0);
            self.set_wmask(reg + 4, &((addr_mask >> 32) as u32).to_le_bytes());
            self.bars[i + 1] = BarReg::High;
        }
        Ok(())
    }

    /// Appends a capability with ID `id`: `body` is everything after the
    /// two header bytes (ID, next pointer), `wmask` the writable bits of the
    /// body (shorter than `body`: the rest is read-only). Returns the
    /// capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8, PciError> {
        let len = 2 + body.len();
        let at = self.next_cap;
        if at + len > CONFIG_SIZE {
            return Err(PciError::CapabilitySpace(len));
        }
        let off = at as u16;
        self.set_bytes(off, &[id, 0]);
        self.set_bytes(off + 2, body);
        self.set_wmask(off + 2, &wmask[..wmask.len().min(body.len())]);
        match self.last_cap {
            Some(prev) => self.set_u8(u16::from(prev) + 1, at as u8),
            None => self.set_u8(CAPABILITIES_POINTER, at as u8),
        }
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        self.last_cap = Some(at as u8);
        self.next_cap = (at + len + 3) & !3;
        Ok(at as u8)
    }

    /// Reads `data.len()` bytes at `offset`; bytes past 256 read as zero.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
    }

    /// Writes `data` at `offset` through the write mask. Returns whether
    /// the write tried to change read-only bits outside the BAR registers
    /// (a BAR's read-only low bits are written by every sizing and
    /// programming sequence, so they do not count).
    pub fn write(&mut self, offset: u16, data: &[u8]) -> bool {
        let mut read_only_change = false;
        for (i, &b) in data.iter().enumerate() {
            let off = usize::from(offset) + i;
            let Some(cur) = self.bytes.get(off).copied() else {
                read_only_change |= b != 0;
                continue;
            };
            let m = self.wmask[off];
            if (b ^ cur) & !m != 0 && !is_bar_byte(off) {
                read_only_change = true;
            }
            self.bytes[off] = (cur & !m) | (b & m);
        }
        read_only_change
    }

    /// Sets bytes at `offset` regardless of the write mask (the device's
    /// own view of read-only fields). Bytes past 256 are dropped.
    pub fn set_bytes(&mut self, offset: u16, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(x) = self.bytes.get_mut(usize::from(offset) + i) {
                *x = b;
            }
        }
    }

    fn set_wmask(&mut self, offset: u16, mask: &[u8]) {
        for (i, &b) in mask.iter().enumerate() {
            if let Some(x) = self.wmask.get_mut(usize::from(offset) + i) {
                *x = b;
            }
        }
    }

    /// Sets a byte regardless of the write mask.
    pub fn set_u8(&mut self, offset: u16, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Sets a u16 regardless of the write mask.
    pub fn set_u16(&mut self, offset: u16, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a u32 regardless of the write mask.
    pub fn set_u32(&mut self, offset: u16, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Reads a byte.
    pub fn read_u8(&self, offset: u16) -> u8 {
        let mut b = [0u8; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Reads a u16.
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a u32.
    pub fn read_u32(&self, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The `Command` register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// The declared BAR `index` (the first register of a 64-bit BAR).
    pub fn bar_spec(&self, index: u8) -> Option<BarSpec> {
        match self.bars.get(usize::from(index)) {
            Some(BarReg::Low(spec)) => Some(*spec),
            _ => None,
        }
    }

    /// Every declared BAR with its programmed address.
    pub fn bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        let decoding = self.command() & COMMAND_MEMORY != 0;
        let mut out = [None; BAR_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let BarReg::Low(spec) = self.bars[i] else {
                continue;
            };
            let reg = bar_reg(i as u8);
            let mut addr = u64::from(self.read_u32(reg) & !0xf);
            if spec.kind == BarKind::Memory64 {
                addr |= u64::from(self.read_u32(reg + 4)) << 32;
            }
            *slot = Some(BarRegion { index: i as u8, kind: spec.kind, addr, size: spec.size, decoding });
        }
        out
    }

    /// Programs BAR `index` to `addr` (as the firmware would; masked by the
    /// BAR's size like a guest write).
    pub fn program_bar(&mut self, index: u8, addr: u64) {
        if let Some(spec) = self.bar_spec(index) {
            let reg = bar_reg(index);
            self.write(reg, &(addr as u32).to_le_bytes());
            if spec.kind == BarKind::Memory64 {
                self.write(reg + 4, &((addr >> 32) as u32).to_le_bytes());
            }
        }
    }
}

impl ConfigSpace {
    /// The configuration bytes, for a snapshot ([`CONFIG_SIZE`] of them).
    pub fn save_bytes(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Checks saved bytes against this function: [`CONFIG_SIZE`] of them,
    /// differing only in bits the guest can write. `device` (its device
    /// number) names the function in the error.
    pub fn check_bytes(&self, device: u8, saved: &[u8]) -> Result<(), RestoreError> {
        if saved.len() != CONFIG_SIZE {
            return Err(RestoreError::Value {
                device: "pci",
                field: "configuration space length",
                value: saved.len() as u64,
                why: "must be 256 bytes",
            });
        }
        for (offset, ((&s, &cur), &m)) in saved.iter().zip(&self.bytes).zip(&self.wmask).enumerate() {
            if (s ^ cur) & !m != 0 {
                return Err(RestoreError::ConfigByte { device, offset, saved: s, actual: cur });
            }
        }
        Ok(())
    }

    /// Puts back bytes accepted by [`check_bytes`](Self::check_bytes):
    /// the writable bits are taken, read-only ones kept.
    pub fn restore_bytes(&mut self, saved: &[u8]) {
        for ((b, &s), &m) in self.bytes.iter_mut().zip(saved).zip(&self.wmask) {
            *b = (*b & !m) | (s & m);
        }
    }
}

/// The register offset of BAR `index`.
pub fn bar_reg(index: u8) -> u16 {
    BAR0 + 4 * u16::from(index)
}

fn is_bar_byte(off: usize) -> bool {
    (usize::from(BAR0)..usize::from(BAR0) + 4 * BAR_COUNT).contains(&off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class_code: 0x01_80_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
            interrupt_pin: 1,
        }
    }

    fn space() -> ConfigSpace {
        let mut c = ConfigSpace::new(&header());
        c.add_bar(0, BarSpec { kind: BarKind::Memory64, size: 0x8000, prefetchable: false }).unwrap();
        c.add_bar(2, BarSpec { kind: BarKind::Memory32, size: 0x1000, prefetchable: true }).unwrap();
        c
    }

    #[test]
    fn header_fields() {
        let c = space();
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(0x08), 0x0180_0001);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        assert_eq!(c.read_u32(0x2c), 0x0040_1af4);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
        assert_eq!(c.read_u16(STATUS), 0);
        assert_eq!(c.read_u32(BAR0), 0b100);
        assert_eq!(c.read_u32(BAR0 + 8), 0b1000);
        assert_eq!(c.read_u32(BAR0 + 12), 0);
        // Past the implemented space: zeros.
        let mut b = [0xffu8; 8];
        c.read(252, &mut b);
        assert_eq!(b, [0; 8]);
    }

    #[test]
    fn bar_sizing_and_programming() {
        let mut c = space();
        // Sizing: all-ones reads back the size mask with the type bits.
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0xffff_8004);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_ffff);
        c.write(BAR0 + 8, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 8), 0xffff_f008);
        // An unused BAR and the ROM BAR size to zero.
        c.write(BAR0 + 12, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0 + 12), 0);
        c.write(ROM_BAR, &[0xff; 4]);
        assert_eq!(c.read_u32(ROM_BAR), 0);
        // Programming: low bits below the size are dropped.
        c.write(BAR0, &0xe000_1234u32.to_le_bytes());
        c.write(BAR0 + 4, &0x1u32.to_le_bytes());
        let bars = c.bars();
        let b0 = bars[0].unwrap();
        assert_eq!((b0.addr, b0.size, b0.kind, b0.decoding), (0x1_e000_0000, 0x8000, BarKind::Memory64, false));
        assert!(bars[1].is_none());
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert!(c.bars()[0].unwrap().decoding);
        // Byte writes into the middle of a BAR are masked the same way.
        c.write(BAR0 + 1, &[0xff]);
        assert_eq!(c.read_u32(BAR0), 0xe000_8004);
        c.program_bar(2, 0xc000_0fff);
        assert_eq!(c.bars()[2].unwrap().addr, 0xc000_0000);
    }

    #[test]
    fn read_only_fields_stay() {
        let mut c = space();
        assert!(c.write(VENDOR_ID, &[0, 0, 0, 0]), "read-only change reported");
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert!(c.write(STATUS, &[0xff, 0xff]));
        assert_eq!(c.read_u16(STATUS), 0);
        // Command: only the memory, bus-master and INTx-disable bits.
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
        assert!(!c.write(INTERRUPT_LINE, &[9]));
        assert_eq!(c.read_u8(INTERRUPT_LINE), 9);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
        // BAR flag bits are read-only but not reported.
        assert!(!c.write(BAR0, &[0xff; 4]));
        // Writes past the end are dropped.
        assert!(c.write(255, &[1, 2, 3]));
        assert_eq!(c.read_u8(255), 0);
    }

    #[test]
    fn capability_list() {
        let mut c = space();
        let a = c.add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0]).unwrap();
        let b = c.add_capability(0x09, &[14, 1, 0], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x4c);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.read_u16(0x40), 0x4c11);
        assert_eq!(c.read_u16(0x4c), 0x0009);
        // Only the masked bits of a capability are writable.
        c.write(0x42, &[0xff, 0xff]);
        assert_eq!(c.read_u16(0x42), 0xc2 << 8 | 1);
        let big = [0u8; 200];
        assert_eq!(c.add_capability(0x09, &big, &[]), Err(PciError::CapabilitySpace(202)));
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = ConfigSpace::new(&header());
        let spec = |kind, size| BarSpec { kind, size, prefetchable: false };
        assert_eq!(c.add_bar(5, spec(BarKind::Memory64, 0x1000)), Err(PciError::BarIndex(5)));
        assert_eq!(c.add_bar(6, spec(BarKind::Memory32, 0x1000)), Err(PciError::BarIndex(6)));
        assert_eq!(c.add_bar(0, spec(BarKind::Memory32, 0x1001)), Err(PciError::BarSize(0x1001)));
        assert_eq!(c.add_bar(0, spec(BarKind::Memory32, 8)), Err(PciError::BarSize(8)));
        assert_eq!(c.add_bar(0, spec(BarKind::Memory32, 1 << 32)), Err(PciError::BarSize(1 << 32)));
        c.add_bar(0, spec(BarKind::Memory64, 1 << 33)).unwrap();
        assert_eq!(c.add_bar(1, spec(BarKind::Memory32, 0x1000)), Err(PciError::BarIndex(1)));
        // A 64-bit BAR larger than 4 GiB: the low register has no address
        // bits.
        c.write(BAR0, &[0xff; 4]);
        c.write(BAR0 + 4, &[0xff; 4]);
        assert_eq!(c.read_u32(BAR0), 0b100);
        assert_eq!(c.read_u32(BAR0 + 4), 0xffff_fffe);
    }

    #[test]
    fn any_write_keeps_the_space_consistent() {
        let mut c = space();
        let pristine = c.clone();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % 300) as u16;
            let len = 1 + (x >> 20) as usize % 8;
            let val = (x >> 8).to_le_bytes();
            c.write(off, &val[..len]);
        }
        // Identity and read-only bits unchanged; BARs hold only address
        // bits above their size.
        assert_eq!(c.read_u32(0), pristine.read_u32(0));
        assert_eq!(c.read_u32(0x08), pristine.read_u32(0x08));
        assert_eq!(c.read_u32(0x2c), pristine.read_u32(0x2c));
        assert_eq!(c.read_u16(STATUS), pristine.read_u16(STATUS));
        assert_eq!(c.read_u32(BAR0) & 0x7fff, 0b100);
        assert_eq!(c.read_u32(BAR0 + 8) & 0xfff, 0b1000);
        assert_eq!(c.read_u32(BAR0 + 12), 0);
        assert_eq!(c.command() & !(COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE), 0);
    }
}
