//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and
//! the pending-bit array (PBA), both of which live in a BAR.
//!
//! The table is guest-programmed: each entry holds a message address and
//! data (where the interrupt goes: on x86 a local APIC and a vector) and a
//! mask bit; the capability's control word enables MSI-X and masks the
//! whole function. The device never delivers a message itself: it raises
//! one [`IrqLine`] per vector (the VMM backs each with a KVM irqfd) and
//! tells the VMM through [`MsiRouting`] whenever a vector's message or mask
//! changes (the VMM updates the vector's KVM GSI route). A vector raised
//! while masked sets its pending bit instead, and is delivered when it is
//! unmasked.
//!
//! Hostile input: table or PBA accesses of any offset and width are
//! accepted; writes that are not aligned DWORD/QWORD accesses inside the
//! table, and all PBA writes, are ignored with a budgeted log line and have
//! no effect on the host.

use std::io;
use std::sync::Arc;

use log::{error, warn};

use super::PciError;
use crate::interrupt::IrqLine;
use crate::snapshot::RestoreError;
use crate::virtio::LogBudget;

/// The MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a table can have.
pub const MSIX_MAX_VECTORS: usize = 2048;
/// Message control: function mask.
pub const MSIX_CONTROL_MASK: u16 = 1 << 14;
/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Offset of the message control word in the capability.
pub const MSIX_CONTROL_OFFSET: u16 = 2;
/// Vector control: the entry is masked.
const ENTRY_MASKED: u32 = 1;

/// Where a vector's interrupt goes (x86: the address selects the local
/// APIC(s), the data the vector and delivery mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (bits 1:0 are always zero).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

/// The VMM's side of a device's MSI-X vectors.
///
/// Called with the device's lock held, from the vCPU thread whose access
/// changed the table or the capability. An error is logged; the device
/// keeps its state.
pub trait MsiRouting: Send + Sync {
    /// Vector `vector` of this device now sends `msg`; `masked` says
    /// whether the device may deliver it (entry mask, function mask or
    /// MSI-X disabled). The device raises the vector's line only while it
    /// is unmasked.
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Entry = Entry { addr_lo: 0, addr_hi: 0, data: 0, control: ENTRY_MASKED };

    fn message(&self) -> MsiMessage {
        MsiMessage { addr: u64::from(self.addr_hi) << 32 | u64::from(self.addr_lo), data: self.data }
    }

    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.control,
        }
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    lines: Vec<Arc<dyn IrqLine>>,
    routing: Arc<dyn MsiRouting>,
    log: LogBudget,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

/// Logs a guest-caused condition within the table's budget.
macro_rules! msix_warn {
    ($m:expr, $($arg:tt)*) => {
        if $m.log.take("msix: guest table access") {
            warn!("msix: {}", format_args!($($arg)*));
        }
    };
}

impl Msix {
    /// A table with one vector per line in `lines` (1 to 2048), all
    /// masked, MSI-X disabled.
    pub fn new(lines: Vec<Arc<dyn IrqLine>>, routing: Arc<dyn MsiRouting>) -> Result<Self, PciError> {
        let n = lines.len();
        if n == 0 || n > MSIX_MAX_VECTORS {
            return Err(PciError::MsixVectors(n));
        }
        Ok(Msix {
            entries: vec![Entry::RESET; n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            lines,
            routing,
            log: LogBudget::new(32),
        })
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the table takes in its BAR.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA takes in its BAR (whole QWORDs).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability body for [`super::ConfigSpace::add_capability`]
    /// (control, table offset/BIR, PBA offset/BIR) and its write mask
    /// (enable and function mask). Offsets must be QWORD-aligned.
    pub fn capability(&self, table_bar: u8, table_offset: u32, pba_bar: u8, pba_offset: u32) -> ([u8; 10], [u8; 2]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset & !7 | u32::from(table_bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset & !7 | u32::from(pba_bar & 7)).to_le_bytes());
        (body, (MSIX_CONTROL_ENABLE | MSIX_CONTROL_MASK).to_le_bytes())
    }

    /// Whether MSI-X is enabled (the device then interrupts through its
    /// vectors, not INTx).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the whole function is masked.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` may not be delivered now.
    pub fn is_masked(&self, vector: u16) -> bool {
        let entry_masked = self.entries.get(usize::from(vector)).is_none_or(|e| e.control & ENTRY_MASKED != 0);
        !self.enabled || self.function_masked || entry_masked
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending.get(v / 64).is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = usize::from(vector);
        if let Some(q) = self.pending.get_mut(v / 64) {
            if on {
                *q |= 1 << (v % 64);
            } else {
                *q &= !(1 << (v % 64));
            }
        }
    }

    /// Raises `vector`: delivers it, or sets its pending bit while it is
    /// masked. Returns whether it was delivered.
    pub fn trigger(&mut self, vector: u16) -> bool {
        if usize::from(vector) >= self.entries.len() {
            msix_warn!(self, "vector {vector} raised but the table has {}", self.entries.len());
            return false;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
            return false;
        }
        self.deliver(vector);
        true
    }

    fn deliver(&self, vector: u16) {
        if let Err(e) = self.lines[usize::from(vector)].trigger() {
            error!("msix: cannot raise vector {vector}: {e}");
        }
    }

    fn route(&mut self, vector: u16) {
        let msg = self.entries[usize::from(vector)].message();
        let masked = self.is_masked(vector);
        if let Err(e) = self.routing.update(vector, msg, masked) {
            error!("msix: cannot route vector {vector} to {:#x}/{:#x}: {e}", msg.addr, msg.data);
        }
    }

    /// Delivers the pending vectors that are no longer masked.
    fn deliver_unmasked_pending(&mut self) {
        for v in 0..self.vectors() {
            if self.is_pending(v) && !self.is_masked(v) {
                self.set_pending(v, false);
                self.deliver(v);
            }
        }
    }

    /// The guest wrote the capability's control word (after the write
    /// mask): applies enable and function mask.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let masked = control & MSIX_CONTROL_MASK != 0;
        if enabled == self.enabled && masked == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = masked;
        for v in 0..self.vectors() {
            self.route(v);
        }
        self.deliver_unmasked_pending();
    }

    /// Reads the table at `offset` (any width; past the entries: zeros).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            let entry = off / MSIX_ENTRY_SIZE;
            *b = match self.entries.get(entry as usize) {
                Some(e) => e.dword(off % MSIX_ENTRY_SIZE / 4).to_le_bytes()[(off % 4) as usize],
                None => 0,
            };
        }
    }

    /// Writes the table at `offset`: aligned DWORDs and QWORDs inside the
    /// table only.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if !(len == 4 || len == 8) || offset % len != 0 {
            msix_warn!(self, "{len}-byte table write at {offset:#x} ignored (aligned DWORD/QWORD only)");
            return;
        }
        let entry = offset / MSIX_ENTRY_SIZE;
        if entry >= self.entries.len() as u64 {
            msix_warn!(self, "table write at {offset:#x} past the {} entries ignored", self.entries.len());
            return;
        }
        let v = entry as u16;
        let before = self.entries[entry as usize];
        for (k, chunk) in data.chunks(4).enumerate() {
            let val = u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4]));
            let e = &mut self.entries[entry as usize];
            match offset % MSIX_ENTRY_SIZE / 4 + k as u64 {
                0 => e.addr_lo = val & !3,
                1 => e.addr_hi = val,
                2 => e.data = val,
                _ => e.control = val & ENTRY_MASKED,
            }
        }
        if self.entries[entry as usize] != before {
            self.route(v);
            if !self.is_masked(v) && self.is_pending(v) {
                self.set_pending(v, false);
                self.deliver(v);
            }
        }
    }

    /// Reads the PBA at `offset` (any width; past the array: zeros).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            *b = self.pending.get((off / 8) as usize).map_or(0, |q| q.to_le_bytes()[(off % 8) as usize]);
        }
    }

    /// The PBA is read-only: writes are ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        msix_warn!(self, "{}-byte write to the read-only PBA at {offset:#x} ignored", data.len());
    }
}

/// One saved MSI-X table entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixEntryState {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

/// The saved MSI-X state of a function: the table, the pending bits, and
/// the enable and function-mask bits of the capability.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixState {
    entries: Vec<MsixEntryState>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixState {
    /// Whether MSI-X was enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function was masked.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }
}

fn msix_bad(field: &'static str, value: u64, why: &'static str) -> RestoreError {
    RestoreError::Value { device: "msix", field, value, why }
}

impl Msix {
    /// The table, pending bits, enable and function mask.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState { addr_lo: e.addr_lo, addr_hi: e.addr_hi, data: e.data, control: e.control })
                .collect(),
            pending: self.pending.clone(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Checks a saved state against this table: the same number of
    /// vectors, entries as a guest's writes can make them, no pending bit
    /// past the last vector.
    pub fn check_state(&self, s: &MsixState) -> Result<(), RestoreError> {
        if s.entries.len() != self.entries.len() {
            return Err(RestoreError::MsixTableSize { saved: s.entries.len(), actual: self.entries.len() });
        }
        if s.pending.len() != self.pending.len() {
            return Err(msix_bad("pending array length", s.pending.len() as u64, "does not fit the table"));
        }
        for e in &s.entries {
            if e.addr_lo & 3 != 0 {
                return Err(msix_bad("entry address", e.addr_lo.into(), "bits 1:0 must be zero"));
            }
            if e.control & !ENTRY_MASKED != 0 {
                return Err(msix_bad("entry vector control", e.control.into(), "only the mask bit exists"));
            }
        }
        let n = self.entries.len();
        if let Some(&last) = s.pending.last() {
            let valid = if n % 64 == 0 { u64::MAX } else { (1u64 << (n % 64)) - 1 };
            if last & !valid != 0 {
                return Err(msix_bad("pending bits", last, "pending bit past the last vector"));
            }
        }
        Ok(())
    }

    /// Puts a saved state back (checked as by
    /// [`check_state`](Self::check_state)), then routes every vector
    /// through [`MsiRouting::update`] as a guest's table write does, and
    /// delivers pending vectors that are not masked. Pending masked
    /// vectors stay pending until the guest unmasks them.
    pub fn restore_state(&mut self, s: &MsixState) -> Result<(), RestoreError> {
        self.check_state(s)?;
        for (e, saved) in self.entries.iter_mut().zip(&s.entries) {
            *e = Entry { addr_lo: saved.addr_lo, addr_hi: saved.addr_hi, data: saved.data, control: saved.control };
        }
        self.pending.copy_from_slice(&s.pending);
        self.enabled = s.enabled;
        self.function_masked = s.function_masked;
        for v in 0..self.vectors() {
            self.route(v);
        }
        self.deliver_unmasked_pending();
        Ok(())
    }
}

/// An [`MsiRouting`] that records every update, for tests.
#[derive(Debug, Default)]
pub struct RecordingRouting(std::sync::Mutex<Vec<(u16, MsiMessage, bool)>>);

impl RecordingRouting {
    /// The updates so far, oldest first.
    pub fn updates(&self) -> Vec<(u16, MsiMessage, bool)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last update of `vector`.
    pub fn last(&self, vector: u16) -> Option<(MsiMessage, bool)> {
        self.updates().into_iter().rev().find(|u| u.0 == vector).map(|u| (u.1, u.2))
    }

    /// Forgets the updates so far.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl MsiRouting for RecordingRouting {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((vector, msg, masked));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingIrq;

    struct Setup {
        m: Msix,
        lines: Vec<Arc<CountingIrq>>,
        routing: Arc<RecordingRouting>,
    }

    fn setup(n: usize) -> Setup {
        let lines: Vec<Arc<CountingIrq>> = (0..n).map(|_| Arc::new(CountingIrq::default())).collect();
        let routing = Arc::new(RecordingRouting::default());
        let dyn_lines = lines.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect();
        let m = Msix::new(dyn_lines, routing.clone()).unwrap();
        Setup { m, lines, routing }
    }

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        m.write_table(v * 16, &(addr as u32).to_le_bytes());
        m.write_table(v * 16 + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
        m.write_table(v * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    fn rd32(m: &Msix, off: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read_table(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn capability_layout() {
        let Setup { m, .. } = setup(3);
        let (body, wmask) = m.capability(0, 0x4000, 0, 0x5000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2, "table size - 1");
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
        assert_eq!(u16::from_le_bytes(wmask), 0xc000);
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
        assert!(Msix::new(Vec::new(), Arc::new(RecordingRouting::default())).is_err());
    }

    #[test]
    fn entries_start_masked_and_read_back() {
        let Setup { mut m, routing, .. } = setup(2);
        assert_eq!(rd32(&m, 12), 1);
        program(&mut m, 1, 0xfee0_1003, 0x4031, false);
        assert_eq!(rd32(&m, 16), 0xfee0_1000, "address bits 1:0 are zero");
        assert_eq!(rd32(&m, 24), 0x4031);
        assert_eq!(rd32(&m, 28), 0);
        // A QWORD read of the address.
        let mut q = [0u8; 8];
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        // Reserved vector-control bits stay zero.
        m.write_table(28, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(rd32(&m, 28), 0);
        // Routing saw the final message; masked because MSI-X is off.
        assert_eq!(routing.last(1), Some((MsiMessage { addr: 0xfee0_1000, data: 0x4031 }, true)));
    }

    #[test]
    fn enable_function_mask_and_pending_bits() {
        let Setup { mut m, lines, routing } = setup(2);
        program(&mut m, 0, 0xfee0_0000, 0x21, false);
        program(&mut m, 1, 0xfee0_0000, 0x22, true);
        // Disabled: nothing delivered, but pending is recorded.
        assert!(!m.trigger(0));
        assert!(m.is_pending(0));
        assert_eq!(lines[0].count(), 0);
        // Enabling delivers the pending vector 0; vector 1 stays masked.
        routing.clear();
        m.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(lines[0].count(), 1);
        assert!(!m.is_pending(0));
        assert_eq!(routing.last(0), Some((MsiMessage { addr: 0xfee0_0000, data: 0x21 }, false)));
        assert!(routing.last(1).unwrap().1);
        assert!(m.trigger(0));
        assert_eq!(lines[0].count(), 2);
        // Masked entry: pending, PBA shows it, delivered on unmask.
        assert!(!m.trigger(1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        m.write_table(28, &0u32.to_le_bytes());
        assert_eq!(lines[1].count(), 1);
        assert!(!m.is_pending(1));
        // Function mask holds everything.
        m.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_MASK);
        assert!(m.function_masked());
        assert!(!m.trigger(0) && !m.trigger(1));
        assert_eq!((lines[0].count(), lines[1].count()), (2, 1));
        m.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!((lines[0].count(), lines[1].count()), (3, 2));
    }

    #[test]
    fn hostile_table_and_pba_accesses() {
        let Setup { mut m, lines, routing } = setup(2);
        routing.clear();
        // Past the table, odd widths, misaligned: ignored, no routing.
        m.write_table(32, &[0xff; 4]);
        m.write_table(0x7f0, &[0xff; 8]);
        m.write_table(u64::MAX - 3, &[0xff; 4]);
        m.write_table(0, &[0xff; 2]);
        m.write_table(1, &[0xff; 4]);
        m.write_table(4, &[0xff; 8]);
        m.write_table(0, &[0xff; 3]);
        m.write_table(0, &[]);
        assert!(routing.updates().is_empty());
        assert_eq!(rd32(&m, 0), 0);
        let mut b = [0xaau8; 8];
        m.read_table(u64::MAX - 2, &mut b);
        assert_eq!(b, [0; 8]);
        // PBA writes never set or clear bits.
        m.trigger(0);
        m.write_pba(0, &[0; 8]);
        m.write_pba(0, &[0xff; 8]);
        assert!(m.is_pending(0) && !m.is_pending(1));
        let mut b = [0u8; 3];
        m.read_pba(0x1000, &mut b);
        assert_eq!(b, [0; 3]);
        // Raising a vector that does not exist.
        assert!(!m.trigger(7));
        assert_eq!(lines.iter().map(|l| l.count()).sum::<u64>(), 0);
    }

    #[test]
    fn qword_writes_and_unchanged_entries() {
        let Setup { mut m, routing, .. } = setup(1);
        m.write_table(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        m.write_table(8, &0x0000_0000_0000_0041u64.to_le_bytes());
        assert_eq!(routing.last(0), Some((MsiMessage { addr: 0x1_fee0_0000, data: 0x41 }, true)));
        let n = routing.updates().len();
        // Rewriting the same values does not re-route.
        m.write_table(8, &0x41u32.to_le_bytes());
        assert_eq!(routing.updates().len(), n);
    }

    #[test]
    fn snapshot_round_trip_routes_again_and_refuses_corrupt_tables() {
        let mut s = setup(3);
        s.m.write_table(0, &0xfee0_1000u32.to_le_bytes());
        s.m.write_table(8, &0x31u32.to_le_bytes());
        s.m.write_table(12, &0u32.to_le_bytes());
        s.m.set_control(MSIX_CONTROL_ENABLE);
        s.m.trigger(2); // masked: pending
        let saved = s.m.save_state();

        let mut f = setup(3);
        f.m.restore_state(&saved).unwrap();
        assert_eq!(f.m.save_state(), saved);
        assert_eq!(f.routing.last(0), Some((MsiMessage { addr: 0xfee0_1000, data: 0x31 }, false)));
        assert_eq!(f.routing.last(2), Some((MsiMessage::default(), true)));
        assert!(f.m.is_pending(2));
        assert_eq!(f.lines.iter().map(|l| l.count()).sum::<u64>(), 0);

        let mut f = setup(3);
        let before = f.m.save_state();
        let mut bad = saved.clone();
        bad.entries[1].addr_lo = 0xfee0_0002;
        assert!(f.m.restore_state(&bad).unwrap_err().to_string().contains("0xfee00002"));
        let mut bad = saved.clone();
        bad.entries[1].control = 2;
        assert!(f.m.restore_state(&bad).unwrap_err().to_string().contains("vector control 0x2"));
        let mut bad = saved.clone();
        bad.pending[0] = 1 << 3;
        assert!(f.m.restore_state(&bad).unwrap_err().to_string().contains("pending bits 0x8"));
        let mut bad = saved;
        bad.entries.pop();
        assert!(f.m.restore_state(&bad).unwrap_err().to_string().contains("2 vectors, the function has 3"));
        assert_eq!(f.m.save_state(), before);
        assert!(f.routing.updates().is_empty());
    }
}
