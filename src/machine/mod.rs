//! The machine description: what the guest reads about the machine before
//! it runs, written once the kernel is loaded and the devices are placed.
//!
//! [`describe`] writes the kernel command line (with the devices'
//! parameters), the memory map (e820, with the PCI root's ECAM reserved
//! when the VM has one), the zero page for the Linux 64-bit entry or
//! `hvm_start_info` for PVH, the MP table (for kernels without ACPI) and
//! the ACPI tables ([`acpi`]), whose RSDP address the zero page and the
//! start info carry.

pub(crate) mod acpi;
pub(crate) mod mptable;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::{BootError, BootInfo, Entry, InitrdPlacement, LoadedKernel};
use crate::layout::*;
use crate::memory::{GuestRam, RamLayout};
use acpi::PciRoot;

/// E820 type of usable RAM.
pub(crate) const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub(crate) const E820_RESERVED: u32 = 2;

const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const PVH_START_MAGIC: u32 = 0x336e_c578;

/// Describes the machine to the guest: the command line `cmdline` (checked
/// against the kernel's limit), the memory map and entry structures for
/// the kernel's entry path, and the MP table and ACPI tables for `vcpus`
/// vCPUs and `devices` (whose PCI root, if any, also reserves its ECAM in
/// the memory map).
pub(crate) fn describe(
    ram: &GuestRam,
    boot: &BootInfo,
    cmdline: &str,
    vcpus: u8,
    devices: &acpi::Devices,
) -> Result<(), BootError> {
    let (mem, layout) = (ram.memory(), ram.layout());
    write_cmdline(mem, &boot.kernel, cmdline)?;
    mptable::write(mem, vcpus)?;
    let rsdp = acpi::write(mem, vcpus, devices)?;
    match boot.entry() {
        Entry::Linux64(_) => write_zero_page(mem, layout, devices.pci.as_ref(), &boot.kernel, boot.initrd, rsdp),
        Entry::Pvh(_) => write_pvh_info(mem, layout, devices.pci.as_ref(), boot.initrd, rsdp),
    }
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemoryMapEntry {
    /// Start address.
    pub(crate) addr: u64,
    /// Length in bytes.
    pub(crate) size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub(crate) kind: u32,
}

/// The memory map of `ram`: conventional memory below the EBDA, the EBDA
/// (MP table) reserved, RAM from 1 MiB up to the MMIO hole, the ECAM of
/// the PCI root `pci` reserved (Linux accepts an MCFG region only inside a
/// reserved one), and the rest of RAM above 4 GiB.
pub(crate) fn memory_map(ram: RamLayout, pci: Option<&PciRoot>) -> Vec<MemoryMapEntry> {
    let mut m = vec![
        MemoryMapEntry { addr: 0, size: EBDA_START, kind: E820_RAM },
        MemoryMapEntry { addr: EBDA_START, size: LOW_RAM_END - EBDA_START, kind: E820_RESERVED },
    ];
    let low_end = ram.low_end();
    if low_end > HIMEM_START {
        m.push(MemoryMapEntry { addr: HIMEM_START, size: low_end - HIMEM_START, kind: E820_RAM });
    }
    if let Some(p) = pci {
        m.push(MemoryMapEntry { addr: p.ecam_base, size: p.ecam_size, kind: E820_RESERVED });
    }
    if ram.high_size() > 0 {
        m.push(MemoryMapEntry { addr: FIRST_ADDR_PAST_32BITS, size: ram.high_size(), kind: E820_RAM });
    }
    m
}

/// Writes the command line, checking it against the kernel's limit.
pub fn write_cmdline(mem: &GuestMemoryMmap, kernel: &LoadedKernel, cmdline: &str) -> Result<(), BootError> {
    let max = kernel.cmdline_max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong { len: cmdline.len(), max });
    }
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_START))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_START + cmdline.len() as u64))?;
    Ok(())
}

/// Writes the zero page for the Linux 64-bit boot protocol (its e820 map
/// from `ram` and `pci`), with the ACPI RSDP at `rsdp` (`acpi_rsdp_addr`,
/// boot protocol 2.14).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    ram: RamLayout,
    pci: Option<&PciRoot>,
    kernel: &LoadedKernel,
    initrd: Option<InitrdPlacement>,
    rsdp: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => {
            params.hdr = hdr;
            params.hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
            params.hdr.heap_end_ptr = 0xfe00 - 0x200;
        }
        None => {
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            params.hdr.kernel_alignment = 0x100_0000;
            params.hdr.cmdline_size = kernel.cmdline_max as u32;
        }
    }
    params.hdr.type_of_loader = 0xff;
    params.acpi_rsdp_addr = rsdp;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = 0;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
        params.ext_ramdisk_image = (i.addr >> 32) as u32;
        params.ext_ramdisk_size = (i.size >> 32) as u32;
    }
    let map = memory_map(ram, pci);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes `hvm_start_info`, its module list and memory map (from `ram` and
/// `pci`) for a PVH entry, with the ACPI RSDP at `rsdp`.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap,
    ram: RamLayout,
    pci: Option<&PciRoot>,
    initrd: Option<InitrdPlacement>,
    rsdp: u64,
) -> Result<(), BootError> {
    let map = memory_map(ram, pci);
    debug_assert!(map.len() <= PVH_MEMMAP_MAX_ENTRIES);
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind, reserved: 0 };
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP_START + 24 * i as u64))?;
    }
    let mut info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: rsdp,
        ..Default::default()
    };
    if let Some(i) = initrd {
        let module = hvm_modlist_entry { paddr: i.addr, size: i.size, ..Default::default() };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::tests::kernel;
    use crate::memory::test_memory;

    #[test]
    fn memory_map_matches_layout() {
        let m = memory_map(RamLayout::new(128 << 20), None);
        assert_eq!(m[0], MemoryMapEntry { addr: 0, size: 0x9fc00, kind: E820_RAM });
        assert_eq!(m[2], MemoryMapEntry { addr: 0x100000, size: (128 << 20) - 0x100000, kind: E820_RAM });
        assert_eq!(m.len(), 3);
        let m = memory_map(RamLayout::new(6 << 30), None);
        assert_eq!(m[2].addr + m[2].size, MMIO32_START);
        assert_eq!(m[3], MemoryMapEntry { addr: 1 << 32, size: 3 << 30, kind: E820_RAM });
        let above_1m: u64 = m.iter().filter(|e| e.kind == E820_RAM && e.addr >= HIMEM_START).map(|e| e.size).sum();
        assert_eq!(above_1m, (6 << 30) - HIMEM_START);
    }

    #[test]
    fn a_pci_root_reserves_its_ecam_in_address_order() {
        let ram = RamLayout::new(6 << 30);
        let pci = PciRoot::for_layout(ram.end());
        assert_eq!(pci.mmio64, (7 << 30, 64 << 30), "the 64-bit window starts past RAM on a GiB");
        let m = memory_map(ram, Some(&pci));
        assert_eq!(m[3], MemoryMapEntry { addr: PCI_ECAM_START, size: 1 << 20, kind: E820_RESERVED });
        assert_eq!(m[4].addr, 1 << 32);
        assert!(m.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        let small = PciRoot::for_layout(RamLayout::new(128 << 20).end());
        assert_eq!(small.mmio64.0, 4 << 30);
        assert_eq!(small.mmio32, (0xc000_0000, 0x1000_0000));
    }

    #[test]
    fn cmdline_limit() {
        let mem = test_memory(8 << 20);
        let k = kernel(0x200000);
        write_cmdline(&mem, &k, "console=ttyS0").unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        let long = "x".repeat(2048);
        assert!(matches!(write_cmdline(&mem, &k, &long), Err(BootError::CmdlineTooLong { len: 2048, max: 2047 })));
    }

    #[test]
    fn zero_page_fields() {
        let mem = test_memory(64 << 20);
        let k = kernel(0x200000);
        let i = InitrdPlacement { addr: 0x300_0000, size: 1234 };
        write_zero_page(&mem, RamLayout::new(64 << 20), None, &k, Some(i), ACPI_RSDP_START).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!(({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }), (0x300_0000, 1234));
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        let e = p.e820_table[2];
        assert_eq!(({ e.addr }, { e.size }, { e.r#type }), (0x100000, (64 << 20) - 0x100000, 1));
    }

    #[test]
    fn pvh_info_fields() {
        let mem = test_memory(64 << 20);
        let initrd = Some(InitrdPlacement { addr: 0x200_0000, size: 77 });
        write_pvh_info(&mem, RamLayout::new(64 << 20), None, initrd, ACPI_RSDP_START).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x200_0000, 77));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 48)).unwrap();
        assert_eq!((e.addr, e.type_), (0x100000, 1));
    }
}
