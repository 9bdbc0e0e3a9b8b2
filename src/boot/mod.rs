//! Getting a kernel into guest memory: [`load`], the one entry, loads the
//! kernel and the initrd and writes the boot vCPU's tables, and returns the
//! [`BootInfo`] the machine description and the vCPUs need.
//!
//! Three entry paths, chosen from the image: an ELF entered at its 64-bit
//! entry with a zero page (Linux boot protocol), a bzImage entered at its
//! 64-bit entry (`startup_64`, 0x200 past the protected-mode code), and an
//! ELF with a PVH note entered in 32-bit protected mode with `hvm_start_info`.

pub(crate) mod cpu_state;
pub mod image;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{BootProtocol, VmConfig};
use crate::layout::HIMEM_START;
use crate::memory::{GuestRam, RamLayout};
use image::{ImageInfo, ImageKind};

const XLF_KERNEL_64: u16 = 1;
/// The command-line limit of an x86 Linux kernel (`COMMAND_LINE_SIZE` 2048,
/// less the NUL), used when the image does not say.
pub(crate) const DEFAULT_CMDLINE_MAX: usize = 2047;
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
    #[error("kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); boot it with the linux64 protocol")]
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
    /// The kernel or initrd path is not a regular file (a directory, a
    /// FIFO, a device): refused before it is read.
    #[error("{what} {path} is not a regular file")]
    NotAFile {
        /// `kernel` or `initrd`.
        what: &'static str,
        /// The path.
        path: PathBuf,
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
    /// The MP table does not fit where Linux looks for it.
    #[error("an MP table for {0} vCPUs does not fit in the EBDA or the BIOS area")]
    MptableTooBig(u8),
    /// The ACPI tables do not fit in their area below 1 MiB.
    #[error("the ACPI tables ({0} bytes) do not fit in their area below 1 MiB")]
    AcpiTooBig(usize),
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

/// What [`load`] put in guest memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BootInfo {
    /// The kernel, and how to enter it.
    pub(crate) kernel: LoadedKernel,
    /// Where the initrd went, if there is one.
    pub(crate) initrd: Option<InitrdPlacement>,
}

impl BootInfo {
    /// How the boot vCPU enters the kernel.
    pub(crate) fn entry(&self) -> Entry {
        self.kernel.entry
    }
}

/// Loads the kernel and initrd of `config` into `ram` and writes the boot
/// vCPU's GDT and page tables.
pub(crate) fn load(ram: &GuestRam, config: &VmConfig) -> Result<BootInfo, BootError> {
    let (mem, layout) = (ram.memory(), ram.layout());
    let kernel = load_kernel(mem, layout, &config.kernel, config.boot)?;
    let initrd = load_initrd(
        mem,
        layout,
        &kernel,
        config.initrd.as_deref(),
        config.initrd_bytes.as_deref().map(|v| v.as_slice()),
    )?;
    cpu_state::write_tables(mem)?;
    Ok(BootInfo { kernel, initrd })
}

/// Loads the kernel at `path` into `mem`, choosing the entry path.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    ram: RamLayout,
    path: &Path,
    boot: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let (mut file, _) = open_regular(path, "kernel")
        .map_err(|e| e.unwrap_or_else(|source| BootError::ReadKernel { path: path.into(), source }))?;
    let ImageInfo { kind, load_end } = image::inspect(path, &mut file)?;
    if load_end > ram.low_end() {
        return Err(BootError::KernelTooBig { path: path.into(), needed: load_end, memory: ram.size() >> 20 });
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
pub fn place_initrd(ram: RamLayout, kernel: &LoadedKernel, size: u64) -> Result<InitrdPlacement, BootError> {
    let limit = ram.low_end().min(kernel.initrd_addr_max.saturating_add(1));
    let too_big = || BootError::InitrdTooBig {
        kernel_end: kernel.kernel_end,
        initrd_size: size,
        limit,
        memory: ram.size() >> 20,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    Ok(InitrdPlacement { addr, size })
}

/// Writes initrd bytes: the file (if any) followed by `extra`.
/// Opens `path` (the `what`: kernel or initrd) if it is a regular file;
/// returns it with its size. Opened non-blocking, so a FIFO is refused
/// rather than waited on. The error is the open's, or `NotAFile`.
fn open_regular(path: &Path, what: &'static str) -> Result<(File, u64), Result<BootError, std::io::Error>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(Err)?;
    let meta = file.metadata().map_err(Err)?;
    if !meta.is_file() {
        return Err(Ok(BootError::NotAFile { what, path: path.into() }));
    }
    Ok((file, meta.len()))
}

pub(crate) fn load_initrd(
    mem: &GuestMemoryMmap,
    ram: RamLayout,
    kernel: &LoadedKernel,
    path: Option<&Path>,
    extra: Option<&[u8]>,
) -> Result<Option<InitrdPlacement>, BootError> {
    let extra = extra.unwrap_or(&[]);
    fn read_err(p: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
        move |source| BootError::ReadInitrd { path: p.into(), source }
    }
    // The file's size is checked (it must fit with the kernel) before any
    // of it is read.
    let file = match path {
        Some(p) => Some(open_regular(p, "initrd").map_err(|e| e.unwrap_or_else(read_err(p)))?),
        None if extra.is_empty() => return Ok(None),
        None => None,
    };
    let file_len = file.as_ref().map_or(0, |f| f.1);
    // A cpio appended to another must start 4-byte aligned.
    let pad = (4 - file_len % 4) % 4;
    let size = file_len.saturating_add(if extra.is_empty() { 0 } else { pad + extra.len() as u64 });
    let placement = place_initrd(ram, kernel, size)?;
    if let (Some((mut f, len)), Some(p)) = (file, path) {
        // Straight into guest memory, exactly the size checked: a file
        // that changed size meanwhile is an error, not a larger read.
        mem.read_exact_volatile_from(GuestAddress(placement.addr), &mut f, len as usize).map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => read_err(p)(source),
            other => BootError::Memory(other),
        })?;
        let mut probe = [0u8; 1];
        if std::io::Read::read(&mut f, &mut probe).map_err(read_err(p))? != 0 {
            return Err(read_err(p)(std::io::Error::other("the file grew while it was read")));
        }
    }
    if !extra.is_empty() {
        mem.write_slice(extra, GuestAddress(placement.addr + file_len + pad))?;
    }
    Ok(Some(placement))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A loaded kernel ending at `end`, with the defaults of an ELF.
    pub(crate) fn kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: Entry::Linux64(HIMEM_START),
            kernel_end: end,
            setup_header: None,
            cmdline_max: DEFAULT_CMDLINE_MAX,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        }
    }

    /// Issue 16 item 9: the initrd is a regular file whose size is checked
    /// before it is read (a 1 TiB sparse file used to be read whole into
    /// host memory first; a FIFO blocked the open).
    #[test]
    fn initrd_is_a_regular_file_checked_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("ember-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ram = RamLayout::new(64 << 20);
        let mem = crate::memory::test_memory(64 << 20);
        let k = kernel(0x200000);
        let huge = dir.join("huge");
        std::fs::File::create(&huge).unwrap().set_len(1 << 40).unwrap();
        let e = load_initrd(&mem, ram, &k, Some(&huge), None).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooBig { initrd_size, .. } if initrd_size == 1 << 40), "{e}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for p in [fifo.as_path(), dir.as_path(), Path::new("/dev/zero")] {
            let e = load_initrd(&mem, ram, &k, Some(p), None).unwrap_err();
            assert!(matches!(e, BootError::NotAFile { what: "initrd", .. }), "{}: {e}", p.display());
            let e = load_kernel(&mem, ram, p, BootProtocol::Auto).unwrap_err();
            assert!(matches!(e, BootError::NotAFile { what: "kernel", .. }), "{}: {e}", p.display());
        }
        // A file that fits is read whole, the extra archive after it.
        let small = dir.join("small");
        std::fs::write(&small, b"abcde").unwrap();
        let p = load_initrd(&mem, ram, &k, Some(&small), Some(b"XY")).unwrap().unwrap();
        let mut back = [0u8; 10];
        mem.read_slice(&mut back, GuestAddress(p.addr)).unwrap();
        assert_eq!(&back, b"abcde\0\0\0XY");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let k = kernel(0x200000);
        let p = place_initrd(RamLayout::new(128 << 20), &k, 1000).unwrap();
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + 1000 <= 128 << 20);
        assert!(p.addr >= 0x200000);
        // Limited by initrd_addr_max.
        let mut k2 = k;
        k2.initrd_addr_max = 0x3ff_ffff;
        let p = place_initrd(RamLayout::new(1 << 30), &k2, 4096).unwrap();
        assert_eq!(p.addr, 0x400_0000 - 4096);
        // Too big.
        let small = RamLayout::new(4 << 20);
        assert!(matches!(place_initrd(small, &k, 3 << 20), Err(BootError::InitrdTooBig { .. })));
        assert!(matches!(place_initrd(small, &k, 1 << 40), Err(BootError::InitrdTooBig { .. })));
    }
}
