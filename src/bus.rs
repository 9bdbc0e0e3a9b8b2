//! Dispatch of port-I/O and MMIO exits to the device at the address.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ember_devices::bus::BusDevice;

use crate::sync::lock;

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("{bus} range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap {
        /// Which bus.
        bus: &'static str,
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
    },
    /// A range of length zero or one that wraps.
    #[error("{bus} range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Which bus.
        bus: &'static str,
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// An address space (port I/O or MMIO) populated with devices.
///
/// Built once before the vCPUs start, then shared read-only by every vCPU
/// thread. An access no device claims reads as all-ones and is logged once
/// per address, never fatal.
pub struct Bus {
    name: &'static str,
    entries: Vec<Entry>,
    unknown_seen: Mutex<HashSet<u64>>,
}

impl Bus {
    /// An empty bus; `name` appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus { name, entries: Vec::new(), unknown_seen: Mutex::new(HashSet::new()) }
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::BadRange { bus: self.name, base, len });
        };
        if self.entries.iter().any(|e| base < e.base + e.len && e.base < end) {
            return Err(BusError::Overlap { bus: self.name, base, len });
        }
        let pos = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr - e.base < e.len).then(|| (e, addr - e.base))
    }

    fn note_unknown(&self, addr: u64, what: &str, len: usize) {
        let mut seen = lock(&self.unknown_seen);
        if seen.len() < 4096 && seen.insert(addr) {
            log::info!("{} {what} of {len} bytes at {addr:#x}: no device there (logged once per address)", self.name);
        }
    }

    /// Handles a guest read; unclaimed addresses read as all-ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((e, off)) => lock(&e.device).read(off, data),
            None => {
                data.fill(0xff);
                self.note_unknown(addr, "read", data.len());
            }
        }
    }

    /// Handles a guest write; unclaimed addresses ignore it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((e, off)) => lock(&e.device).write(off, data),
            None => self.note_unknown(addr, "write", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg {
        last: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::new("pio");
        let a = Arc::new(Mutex::new(Reg::default()));
        let b = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 5, b.clone()).unwrap();
        let mut d = [0u8; 1];
        bus.read(0x3fd, &mut d);
        assert_eq!(d, [5]);
        bus.write(0x64, &[0xfe]);
        assert_eq!(b.lock().unwrap().last, Some((4, vec![0xfe])));
        bus.read(0x400, &mut d);
        assert_eq!(d, [0xff]);
        bus.read(0x3f7, &mut d);
        assert_eq!(d, [0xff]);
        bus.write(0x500, &[1]);
        assert!(a.lock().unwrap().last.is_none());
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new("mmio");
        let d = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0x1000, 0x1000, d.clone()).unwrap();
        assert!(matches!(bus.insert(0x1fff, 2, d.clone()), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(0x0, 0x1001, d.clone()), Err(BusError::Overlap { .. })));
        assert!(matches!(bus.insert(0x5000, 0, d.clone()), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.insert(u64::MAX, 2, d.clone()), Err(BusError::BadRange { .. })));
        bus.insert(0x2000, 0x1000, d).unwrap();
    }
}
