//! Getting a kernel into guest memory and describing the machine to it.
//!
//! Three entry paths, chosen from the image: an ELF entered at its 64-bit
//! entry with a zero page (Linux boot protocol), a bzImage entered at its
//! 64-bit entry (`startup_64`, 0x200 past the protected-mode code), and an
//! ELF with a PVH note entered in 32-bit protected mode with `hvm_start_info`.

pub mod cpu_state;
pub mod image;
pub mod mptable;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::BootProtocol;
use crate::layout::*;
use crate::memory::low_ram_end;
use image::{ImageInfo, ImageKind};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const XLF_KERNEL_64: u16 = 1;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const PVH_START_MAGIC: u32 = 0x336e_c578;
/// The command-line limit of an x86 Linux kernel (`COMMAND_LINE_SIZE` 2048,
/// less the NUL), used when the image does not say.
pub const DEFAULT_CMDLINE_MAX: usize = 2047;
/// Initrd limit when the image does not say (the Linux default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Errors getting a kernel into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    ReadKernel {
        /// The kernel path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a kernel image ember can boot.
    #[error("{path} is not a kernel image ember can boot: {why}")]
    NotAKernel {
        /// The kernel path.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// The image is cut short.
    #[error("kernel {path} is truncated: {why}")]
    Truncated {
        /// The kernel path.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A bzImage without a 64-bit entry point.
    #[error("bzImage {0} has no 64-bit entry point (XLF_KERNEL_64 not set)")]
    No64BitEntry(PathBuf),
    /// PVH was asked for, but the image has no PVH note.
    #[error("kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it with --boot linux64")]
    NoPvhEntry(PathBuf),
    /// The kernel does not fit in guest memory.
    #[error("guest memory ({memory} MiB) is too small for kernel {path}, which needs up to {needed:#x}")]
    KernelTooBig {
        /// The kernel path.
        path: PathBuf,
        /// Highest address the kernel occupies.
        needed: u64,
        /// Guest memory in MiB.
        memory: u64,
    },
    /// The loader failed.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The initrd path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel and the initrd do not both fit.
    #[error("guest memory ({memory} MiB) is too small for the kernel (ends at {kernel_end:#x}) and a {initrd_size}-byte initrd below {limit:#x}")]
    InitrdTooBig {
        /// End of the kernel image.
        kernel_end: u64,
        /// The initrd size.
        initrd_size: u64,
        /// The highest address the initrd may reach.
        limit: u64,
        /// Guest memory in MiB.
        memory: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// Writing boot structures failed.
    #[error("cannot write boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Writing the MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode at this address, RSI = zero page.
    Linux64(u64),
    /// 32-bit protected mode at this address, EBX = `hvm_start_info`.
    Pvh(u64),
}

/// A kernel in guest memory, and what it told us about itself.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Where and how to enter it.
    pub entry: Entry,
    /// End of the loaded image.
    pub kernel_end: u64,
    /// The bzImage setup header, if it had one.
    pub setup_header: Option<setup_header>,
    /// Longest command line (without the NUL) it accepts.
    pub cmdline_max: usize,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
}

/// Loads the kernel at `path` into `mem`, choosing the entry path.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    boot: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::ReadKernel { path: path.into(), source })?;
    let ImageInfo { kind, load_end } = image::inspect(path, &mut file)?;
    if load_end > low_ram_end(mem_size) {
        return Err(BootError::KernelTooBig { path: path.into(), needed: load_end, memory: mem_size >> 20 });
    }
    let load_err = |source| BootError::Load { path: path.into(), source };
    match kind {
        ImageKind::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let entry = match (boot, r.pvh_boot_cap) {
                (BootProtocol::Linux64, _) => Entry::Linux64(r.kernel_load.0),
                (_, PvhBootCapability::PvhEntryPresent(a)) => Entry::Pvh(a.0),
                (BootProtocol::Pvh, _) => return Err(BootError::NoPvhEntry(path.into())),
                (BootProtocol::Auto, _) => Entry::Linux64(r.kernel_load.0),
            };
            Ok(LoadedKernel {
                entry,
                kernel_end: r.kernel_end,
                setup_header: None,
                cmdline_max: DEFAULT_CMDLINE_MAX,
                initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
            })
        }
        ImageKind::BzImage => {
            if boot == BootProtocol::Pvh {
                return Err(BootError::NoPvhEntry(path.into()));
            }
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let hdr = r.setup_header.expect("bzImage loader returns the setup header");
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry(path.into()));
            }
            let version = hdr.version;
            let cmdline_max = if version >= 0x0206 { hdr.cmdline_size as usize } else { 255 };
            let initrd_addr_max = if version >= 0x0203 { hdr.initrd_addr_max as u64 } else { 0x37ff_ffff };
            Ok(LoadedKernel {
                entry: Entry::Linux64(r.kernel_load.0 + 0x200),
                kernel_end: r.kernel_end,
                setup_header: Some(hdr),
                cmdline_max,
                initrd_addr_max,
            })
        }
    }
}

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Picks the initrd's address: as high in low RAM as the kernel allows,
/// page-aligned, above the kernel.
pub fn place_initrd(mem_size: u64, kernel: &LoadedKernel, size: u64) -> Result<InitrdPlacement, BootError> {
    let limit = low_ram_end(mem_size).min(kernel.initrd_addr_max.saturating_add(1));
    let too_big =
        || BootError::InitrdTooBig { kernel_end: kernel.kernel_end, initrd_size: size, limit, memory: mem_size >> 20 };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    Ok(InitrdPlacement { addr, size })
}

/// Writes initrd bytes: the file (if any) followed by `extra`.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    path: Option<&Path>,
    extra: Option<&[u8]>,
) -> Result<Option<InitrdPlacement>, BootError> {
    let mut file_data = Vec::new();
    if let Some(p) = path {
        file_data = std::fs::read(p).map_err(|source| BootError::ReadInitrd { path: p.into(), source })?;
    }
    let extra = extra.unwrap_or(&[]);
    if path.is_none() && extra.is_empty() {
        return Ok(None);
    }
    // A cpio appended to another must start 4-byte aligned.
    let pad = (4 - file_data.len() % 4) % 4;
    let size = (file_data.len() + if extra.is_empty() { 0 } else { pad + extra.len() }) as u64;
    let placement = place_initrd(mem_size, kernel, size)?;
    mem.write_slice(&file_data, GuestAddress(placement.addr))?;
    if !extra.is_empty() {
        mem.write_slice(extra, GuestAddress(placement.addr + (file_data.len() + pad) as u64))?;
    }
    Ok(Some(placement))
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for `mem_size` bytes of RAM: conventional memory below the
/// EBDA, the EBDA (MP table) reserved, RAM from 1 MiB up to the MMIO hole and
/// the rest above 4 GiB.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut m = vec![
        MemoryMapEntry { addr: 0, size: EBDA_START, kind: E820_RAM },
        MemoryMapEntry { addr: EBDA_START, size: LOW_RAM_END - EBDA_START, kind: E820_RESERVED },
    ];
    let low_end = low_ram_end(mem_size);
    if low_end > HIMEM_START {
        m.push(MemoryMapEntry { addr: HIMEM_START, size: low_end - HIMEM_START, kind: E820_RAM });
    }
    if mem_size > MMIO32_START {
        m.push(MemoryMapEntry { addr: FIRST_ADDR_PAST_32BITS, size: mem_size - MMIO32_START, kind: E820_RAM });
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

/// Writes the zero page for the Linux 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
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
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = 0;
    let _ = cmdline_len;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
        params.ext_ramdisk_image = (i.addr >> 32) as u32;
        params.ext_ramdisk_size = (i.size >> 32) as u32;
    }
    let map = memory_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Writes `hvm_start_info`, its module list and memory map for a PVH entry.
pub fn write_pvh_info(mem: &GuestMemoryMmap, mem_size: u64, initrd: Option<InitrdPlacement>) -> Result<(), BootError> {
    let map = memory_map(mem_size);
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
    use crate::memory::create_guest_memory;

    fn kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: Entry::Linux64(HIMEM_START),
            kernel_end: end,
            setup_header: None,
            cmdline_max: DEFAULT_CMDLINE_MAX,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        }
    }

    #[test]
    fn memory_map_matches_layout() {
        let m = memory_map(128 << 20);
        assert_eq!(m[0], MemoryMapEntry { addr: 0, size: 0x9fc00, kind: E820_RAM });
        assert_eq!(m[2], MemoryMapEntry { addr: 0x100000, size: (128 << 20) - 0x100000, kind: E820_RAM });
        assert_eq!(m.len(), 3);
        let m = memory_map(6 << 30);
        assert_eq!(m[2].addr + m[2].size, MMIO32_START);
        assert_eq!(m[3], MemoryMapEntry { addr: 1 << 32, size: 3 << 30, kind: E820_RAM });
        let above_1m: u64 = m.iter().filter(|e| e.kind == E820_RAM && e.addr >= HIMEM_START).map(|e| e.size).sum();
        assert_eq!(above_1m, (6 << 30) - HIMEM_START);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let k = kernel(0x200000);
        let p = place_initrd(128 << 20, &k, 1000).unwrap();
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + 1000 <= 128 << 20);
        assert!(p.addr >= 0x200000);
        // Limited by initrd_addr_max.
        let mut k2 = k;
        k2.initrd_addr_max = 0x3ff_ffff;
        let p = place_initrd(1 << 30, &k2, 4096).unwrap();
        assert_eq!(p.addr, 0x400_0000 - 4096);
        // Too big.
        assert!(matches!(place_initrd(4 << 20, &k, 3 << 20), Err(BootError::InitrdTooBig { .. })));
        assert!(matches!(place_initrd(4 << 20, &k, 1 << 40), Err(BootError::InitrdTooBig { .. })));
    }

    #[test]
    fn cmdline_limit() {
        let mem = create_guest_memory(8 << 20).unwrap();
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
        let mem = create_guest_memory(64 << 20).unwrap();
        let k = kernel(0x200000);
        let i = InitrdPlacement { addr: 0x300_0000, size: 1234 };
        write_zero_page(&mem, 64 << 20, &k, 10, Some(i)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!(({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }), (0x300_0000, 1234));
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[2];
        assert_eq!(({ e.addr }, { e.size }, { e.r#type }), (0x100000, (64 << 20) - 0x100000, 1));
    }

    #[test]
    fn pvh_info_fields() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_pvh_info(&mem, 64 << 20, Some(InitrdPlacement { addr: 0x200_0000, size: 77 })).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x200_0000, 77));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 48)).unwrap();
        assert_eq!((e.addr, e.type_), (0x100000, 1));
    }
}
