//! Ports a Linux guest probes on every PC (other COM ports, the parallel
//! port, VGA, the POST/delay port…) that a microVM does not have (the PCI
//! configuration ports are the VMM's choice: a PCI root, or a
//! [`QuietPorts`] when the VM has none). They answer like absent hardware — reads all-ones, writes
//! ignored — without the "unknown port" log line, so probing is cheap and
//! quiet.

use crate::bus::BusDevice;

/// A silent absent device.
#[derive(Debug, Default)]
pub struct QuietPorts;

/// `(base, length)` of every port range [`QuietPorts`] should cover on an
/// x86 microVM (COM1, the i8042, the RTC and the debug-exit port are real
/// devices and not in this list, nor are the PCI configuration ports; the
/// PIC, PIT and speaker port are in KVM).
pub const QUIET_PORT_RANGES: &[(u16, u16)] = &[
    (0x0000, 0x20), // DMA controller 1
    (0x0080, 0x10), // POST/delay port 0x80, DMA page registers
    (0x0092, 0x01), // fast A20 / system control port A
    (0x00c0, 0x20), // DMA controller 2
    (0x00ed, 0x01), // alternative delay port
    (0x00f0, 0x02), // FPU error reset
    (0x0170, 0x08), // secondary IDE
    (0x01f0, 0x08), // primary IDE
    (0x0278, 0x03), // LPT2
    (0x02e8, 0x08), // COM4
    (0x02f8, 0x08), // COM2
    (0x0376, 0x01), // secondary IDE control
    (0x0378, 0x03), // LPT1
    (0x03b0, 0x30), // MDA/CGA/VGA
    (0x03e8, 0x08), // COM3
    (0x03f0, 0x06), // floppy controller
    (0x03f6, 0x01), // primary IDE control
];

impl BusDevice for QuietPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_ones_and_ranges_do_not_overlap() {
        let mut q = QuietPorts;
        let mut b = [0u8; 4];
        q.read(3, &mut b);
        assert_eq!(b, [0xff; 4]);
        q.write(0, &[1, 2]);
        let mut r: Vec<_> = QUIET_PORT_RANGES.to_vec();
        r.sort();
        for w in r.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
        for &(base, len) in QUIET_PORT_RANGES {
            for port in [0x3f8u16, 0x60, 0x64, 0x70, 0x71, 0xf4, 0x40, 0x20, 0xa0, 0x61] {
                assert!(!(base..base + len).contains(&port), "{port:#x} must not be quiet");
            }
        }
    }
}
