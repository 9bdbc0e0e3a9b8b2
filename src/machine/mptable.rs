//! The Intel MultiProcessor Specification 1.4 table, which tells a guest
//! without ACPI how many CPUs it has, where its IOAPIC is and how ISA IRQs
//! reach it. Written at the start of the EBDA, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootError;
use crate::layout::{self, APIC_START, BIOS_AREA_SIZE, BIOS_AREA_START, EBDA_START, IOAPIC_START, LOW_RAM_END};

/// Pins on the in-kernel IOAPIC.
pub(crate) const IOAPIC_PINS: u8 = layout::IOAPIC_PINS as u8;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// Where the table goes for `num_cpus` CPUs: the EBDA when it fits there
/// (up to 37 CPUs), else the BIOS area at [`BIOS_AREA_START`], the other
/// place Linux scans.
pub(crate) fn table_base(num_cpus: u8) -> u64 {
    if table_size(num_cpus) <= (LOW_RAM_END - EBDA_START) as usize {
        EBDA_START
    } else {
        BIOS_AREA_START
    }
}

fn table_size(num_cpus: u8) -> usize {
    FLOATING_SIZE + HEADER_SIZE + 20 * num_cpus as usize + 8 * (2 + IOAPIC_PINS as usize + 2)
}

/// The table's bytes (floating pointer first, then the configuration table)
/// as they go at `base`, for `num_cpus` CPUs with APIC IDs `0..num_cpus`.
pub(crate) fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, BootError> {
    let ioapic_id = num_cpus; // first ID after the CPUs
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let (family, model, stepping) = (6u32, 15u32, 1u32);
    let signature = (family << 8) | (model << 4) | stepping;
    for cpu in 0..num_cpus {
        let mut e = [0u8; 20];
        e[0] = ENTRY_PROCESSOR;
        e[1] = cpu;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        e[4..8].copy_from_slice(&signature.to_le_bytes());
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // FPU + APIC
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let mut io = [ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    io[4..8].copy_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&io);
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n on IOAPIC pin n, polarity and trigger as the bus says
        // (ISA: active high, edge).
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // LINT0: ExtINT (the 8259), LINT1: NMI, to every local APIC.
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let room = if base == EBDA_START { LOW_RAM_END - EBDA_START } else { BIOS_AREA_SIZE };
    if num_cpus == 0 || FLOATING_SIZE + table_len > room as usize {
        return Err(BootError::MptableTooBig(num_cpus));
    }
    let table_addr = base as u32 + FLOATING_SIZE as u32;

    let mut fp = [0u8; FLOATING_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&table_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4; // spec revision 1.4
    fp[10] = checksum(&fp);

    let mut hdr = [0u8; HEADER_SIZE];
    hdr[0..4].copy_from_slice(b"PCMP");
    hdr[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    hdr[6] = 4;
    hdr[8..16].copy_from_slice(b"EMBER   ");
    hdr[16..28].copy_from_slice(b"MICROVM     ");
    hdr[34..36].copy_from_slice(&count.to_le_bytes());
    hdr[36..40].copy_from_slice(&(APIC_START as u32).to_le_bytes());
    let mut table = hdr.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = fp.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs into guest memory.
pub(crate) fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), BootError> {
    let base = table_base(num_cpus);
    let bytes = build(num_cpus, base)?;
    mem.write_slice(&bytes, GuestAddress(base))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 8, 37, 38, 254] {
            let base = table_base(n);
            assert_eq!(base == EBDA_START, n <= 37);
            let t = build(n, base).unwrap();
            assert_eq!(t.len(), table_size(n));
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let addr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize - base as usize;
            assert_eq!(addr, 16);
            let table = &t[addr..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            // Walk the entries: processors, with the BSP flagged once.
            let mut off = HEADER_SIZE;
            let mut cpus = Vec::new();
            for _ in 0..count {
                match table[off] {
                    0 => {
                        cpus.push((table[off + 1], table[off + 3]));
                        off += 20
                    }
                    _ => off += 8,
                }
            }
            assert_eq!(off, len);
            assert_eq!(cpus.len(), n as usize);
            for (i, (id, flags)) in cpus.iter().enumerate() {
                assert_eq!(*id as usize, i);
                assert_eq!(*flags & CPU_BSP != 0, i == 0);
                assert!(*flags & CPU_ENABLED != 0);
            }
        }
    }

    #[test]
    fn too_many_cpus_for_the_ebda_is_an_error() {
        assert!(matches!(build(38, EBDA_START), Err(BootError::MptableTooBig(38))));
        assert!(matches!(build(0, EBDA_START), Err(BootError::MptableTooBig(0))));
    }
}
