//! A CMOS real-time clock at ports 0x70/0x71 that reads the host's UTC time.
//!
//! Linux reads the RTC once at boot for the wall clock. Without it, reads of
//! all-ones would give it a nonsense date (and an "update in progress" bit
//! that never clears). Writes to the time registers are accepted and ignored;
//! the other CMOS bytes are plain storage.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;
use crate::snapshot::RestoreError;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// The RTC / CMOS device (offset 0: index port, offset 1: data port).
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

fn host_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// (year, month, day) of the proleptic Gregorian calendar for days since
/// 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

impl Cmos {
    /// An RTC reading the host clock.
    pub fn new() -> Self {
        Cmos { index: 0, ram: [0; 128], now: host_now }
    }

    fn read_reg(&self, reg: u8) -> u8 {
        let t = (self.now)();
        let days = (t / 86_400) as i64;
        let secs = t % 86_400;
        let (y, m, d) = civil_from_days(days);
        match reg {
            REG_SECONDS => bcd(secs % 60),
            REG_MINUTES => bcd(secs / 60 % 60),
            REG_HOURS => bcd(secs / 3600),
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => bcd(d as u64),
            REG_MONTH => bcd(m as u64),
            REG_YEAR => bcd((y.rem_euclid(100)) as u64),
            REG_CENTURY => bcd((y / 100) as u64),
            REG_A => 0x26, // 32.768 kHz base, 1024 Hz rate, no update in progress
            REG_B => 0x02, // 24-hour, BCD, no interrupts
            REG_C => 0x00, // no interrupt flags
            REG_D => 0x80, // valid RAM and time
            r => self.ram[r as usize & 0x7f],
        }
    }
}

/// The saved CMOS: the index register and the 128 bytes of storage (the
/// clock registers are the host's and are not saved).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    index: u8,
    ram: Vec<u8>,
}

impl Cmos {
    /// The index register and the storage bytes.
    pub fn save_state(&self) -> CmosState {
        CmosState { index: self.index, ram: self.ram.to_vec() }
    }

    /// Puts a saved state back; refuses an index above 0x7f or storage of
    /// another size than 128 bytes, and then changes nothing.
    pub fn restore_state(&mut self, state: &CmosState) -> Result<(), RestoreError> {
        let bad = |field, value: usize, why| RestoreError::Value { device: "cmos", field, value: value as u64, why };
        if state.index > 0x7f {
            return Err(bad("index", state.index.into(), "above 0x7f (bit 7 is the NMI mask, not stored)"));
        }
        let ram: [u8; 128] =
            state.ram.as_slice().try_into().map_err(|_| bad("storage length", state.ram.len(), "must be 128 bytes"))?;
        self.index = state.index;
        self.ram = ram;
        Ok(())
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let v = match offset {
            0 => self.index,
            1 => self.read_reg(self.index),
            _ => return,
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & 0x7f, // bit 7 is the NMI mask
            1 => match self.index {
                REG_SECONDS..=REG_D | REG_CENTURY => {}
                i => self.ram[i as usize] = v,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg | 0x80]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reads_a_known_time_in_bcd() {
        // 2026-11-24 15:04:05 UTC, a Tuesday.
        let mut c = Cmos { now: || 1_795_532_645, ..Cmos::new() };
        assert_eq!(read(&mut c, REG_SECONDS), 0x05);
        assert_eq!(read(&mut c, REG_MINUTES), 0x04);
        assert_eq!(read(&mut c, REG_HOURS), 0x15);
        assert_eq!(read(&mut c, REG_DAY), 0x24);
        assert_eq!(read(&mut c, REG_MONTH), 0x11);
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_WEEKDAY), 3);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "update-in-progress must be clear");
        assert_eq!(read(&mut c, REG_D), 0x80);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn ram_bytes_are_storage_and_odd_accesses_are_safe() {
        let mut c = Cmos::new();
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
        c.write(0, &[0x00]);
        c.write(1, &[0x99]);
        let mut b = [0u8; 4];
        c.read(7, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(1, &[]);
        c.read(0, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn save_restore_round_trip_and_corrupt_states() {
        let mut c = Cmos::new();
        c.write(0, &[0x40]);
        c.write(1, &[0x77]);
        c.write(0, &[0x41]);
        let saved = c.save_state();
        let mut fresh = Cmos::new();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh.save_state(), saved);
        assert_eq!(read(&mut fresh, 0x40), 0x77);

        let mut fresh = Cmos::new();
        let before = fresh.save_state();
        let bad = CmosState { index: 0x80, ..saved.clone() };
        assert!(fresh.restore_state(&bad).unwrap_err().to_string().contains("index 0x80"));
        let bad = CmosState { ram: vec![0; 129], ..saved };
        assert!(fresh.restore_state(&bad).unwrap_err().to_string().contains("0x81"));
        assert_eq!(fresh.save_state(), before);
    }
}
