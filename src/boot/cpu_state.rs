//! The boot CPU's initial state for each entry protocol: the GDT and identity
//! page tables in guest memory, and the register values that go with them.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    BOOT_STACK_POINTER, GDT_START, IDENTITY_MAP_SIZE, IDT_START, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// GDT index of the 64-bit code segment (selector 0x10, the Linux boot
/// protocol's `__BOOT_CS`).
const GDT_CODE64: usize = 2;
/// GDT index of the flat data segment (selector 0x18, `__BOOT_DS`).
const GDT_DATA: usize = 3;
/// GDT index of the TSS (selector 0x20).
const GDT_TSS: usize = 4;
/// GDT index of the 32-bit code segment used by the PVH entry (0x28).
const GDT_CODE32: usize = 5;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The boot GDT: null, null, code64, data, TSS, code32.
pub(crate) const GDT: [u64; 6] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
];

/// Encodes a GDT descriptor from its flags (the access byte in bits 0..8 and
/// the G/DB/L/AVL nibble in bits 12..16), base and 20-bit limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes GDT entry `index` into the segment KVM loads.
fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let base = ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000);
    let limit_raw = (e & 0xffff) | ((e >> 32) & 0xf_0000);
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 { ((limit_raw << 12) | 0xfff) as u32 } else { limit_raw as u32 },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables covering the first
/// [`IDENTITY_MAP_SIZE`] bytes (2 MiB pages) into guest memory.
pub(crate) fn write_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    let mut gdt = [0u8; GDT.len() * 8];
    for (i, e) in GDT.iter().enumerate() {
        gdt[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
    }
    mem.write_slice(&gdt, GuestAddress(GDT_START))?;
    mem.write_obj(0u64, GuestAddress(IDT_START))?;

    let pds = IDENTITY_MAP_SIZE >> 30;
    mem.write_obj(PDPTE_START | 0x3, GuestAddress(PML4_START))?;
    let mut pdpt = [0u8; 4096];
    for i in 0..pds {
        let e = (PDE_START + i * 0x1000) | 0x3;
        pdpt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
    }
    mem.write_slice(&pdpt, GuestAddress(PDPTE_START))?;
    let mut pd = vec![0u8; (pds * 4096) as usize];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        // Present, writable, 2 MiB page.
        let e = ((i as u64) << 21) | 0x83;
        chunk.copy_from_slice(&e.to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START))
}

fn common_sregs(sregs: &mut kvm_sregs) {
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 0;
    let data = segment(GDT_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS);
}

/// Special registers for the Linux 64-bit boot protocol: long mode, paging
/// on with the identity map, `__BOOT_CS`/`__BOOT_DS` loaded.
pub(crate) fn linux64_sregs(sregs: &mut kvm_sregs) {
    common_sregs(sregs);
    sregs.cs = segment(GDT_CODE64);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers for the Linux 64-bit boot protocol.
pub(crate) fn linux64_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Special registers for the PVH entry: 32-bit protected mode, paging off.
pub(crate) fn pvh_sregs(sregs: &mut kvm_sregs) {
    common_sregs(sregs);
    sregs.cs = segment(GDT_CODE32);
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers for the PVH entry: EBX holds the `hvm_start_info`.
pub(crate) fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs { rip: entry, rbx: PVH_INFO_START, rflags: 0x2, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::test_memory;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(GDT_CODE64);
        assert_eq!((cs.selector, cs.l, cs.db, cs.type_, cs.present, cs.s), (0x10, 1, 0, 0xb, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(GDT_DATA);
        assert_eq!((ds.selector, ds.l, ds.db, ds.type_), (0x18, 0, 1, 0x3));
        let cs32 = segment(GDT_CODE32);
        assert_eq!((cs32.selector, cs32.l, cs32.db, cs32.type_), (0x28, 0, 1, 0xb));
        let tr = segment(GDT_TSS);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x20, 0xb, 0));
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn identity_map_covers_4gib() {
        let mem = test_memory(64 << 20);
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        for gib in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START + gib * 8)).unwrap();
            assert_eq!(pdpte, (PDE_START + gib * 0x1000) | 3);
        }
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 4 * 4096 - 8)).unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }

    #[test]
    fn entry_registers() {
        let r = linux64_regs(0x1000000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x1000000, ZERO_PAGE_START, 2));
        let mut s = kvm_sregs::default();
        linux64_sregs(&mut s);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert!(s.cr0 & CR0_PG != 0);
        let p = pvh_regs(0x100040);
        assert_eq!((p.rip, p.rbx), (0x100040, PVH_INFO_START));
        let mut s = kvm_sregs { cr0: CR0_PG | 0x60000010, ..Default::default() };
        pvh_sregs(&mut s);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!((s.cr4, s.efer), (0, 0));
    }
}
