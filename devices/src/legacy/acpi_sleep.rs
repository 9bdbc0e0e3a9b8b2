//! The ACPI sleep control and status registers of a hardware-reduced
//! platform (FADT `SLEEP_CONTROL_REG` and `SLEEP_STATUS_REG`): writing the
//! soft-off sleep type with the sleep-enable bit powers the machine off.

use std::sync::Arc;

use super::{ExitLine, GuestExitRequest};
use crate::bus::BusDevice;

/// SLP_EN: the write starts the transition.
const SLEEP_ENABLE: u8 = 0x20;
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x07;

/// The two one-byte registers: the sleep control register at offset 0 and
/// the sleep status register at offset 1 (reads 0: the guest never wakes;
/// writes, which clear the wake status, are ignored).
pub struct AcpiSleep {
    exit: Arc<dyn ExitLine>,
    s5_type: u8,
    ignored_logged: bool,
}

impl AcpiSleep {
    /// Creates the registers; a write of sleep type `s5_type` (the value
    /// the DSDT's `_S5` object gives) with SLP_EN pulls `exit` for a
    /// power-off.
    pub fn new(exit: Arc<dyn ExitLine>, s5_type: u8) -> Self {
        AcpiSleep { exit, s5_type: s5_type & SLEEP_TYPE_MASK, ignored_logged: false }
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else { return };
        if v & SLEEP_ENABLE == 0 {
            return;
        }
        if (v >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK == self.s5_type {
            self.exit.request_exit(GuestExitRequest::PowerOff);
        } else if !self.ignored_logged {
            self.ignored_logged = true;
            log::info!("ACPI: ignoring a request for sleep type {} (only S5 is offered)", (v >> 2) & 7);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::RecordingExit;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = AcpiSleep::new(rec.clone(), 5);
        let mut b = [0xffu8; 1];
        d.read(1, &mut b);
        assert_eq!(b, [0]);
        // Linux clears the wake status first, then writes SLP_TYP | SLP_EN.
        d.write(1, &[0x80]);
        d.write(0, &[5 << 2]);
        d.write(0, &[(3 << 2) | 0x20]);
        assert!(rec.0.lock().unwrap().is_empty());
        d.write(0, &[(5 << 2) | 0x20]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::PowerOff]);
        d.write(0, &[]);
    }
}
