//! Guest RAM: where it lies in the guest-physical space ([`RamLayout`]),
//! how it is backed, and its registration with KVM ([`GuestRam`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use crate::layout::{FIRST_ADDR_PAST_32BITS, MMIO32_START};

/// Errors creating guest memory or handing it to KVM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot} ({size} bytes at {addr:#x}): {source}")]
    Register {
        /// The slot.
        slot: u32,
        /// Its guest-physical address.
        addr: u64,
        /// Its size in bytes.
        size: u64,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// A memory file could not be mapped or read.
    #[error("cannot map guest memory from the memory file ({size} bytes at file offset {offset}): {source}")]
    MapFile {
        /// Bytes of the region.
        size: u64,
        /// Where the region starts in the file.
        offset: u64,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How guest RAM restored from a memory file is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Mapped from the file copy-on-write (`MAP_PRIVATE`): a page is read
    /// from the file (through the page cache, shared by every VM restored
    /// from it) when the guest first touches it; what the guest writes
    /// stays in this process. The file must not change while the VM runs.
    #[default]
    Lazy,
    /// Read into anonymous memory before the VM starts: the file is no
    /// longer needed once the VM is built.
    Copy,
}

/// Where `size` bytes of guest RAM lie: from 0 up to the 32-bit MMIO hole,
/// and the rest from 4 GiB. Derived once from the configuration; everything
/// that needs the RAM's shape (the loader, the memory map) asks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    size: u64,
}

impl RamLayout {
    /// The layout of `size` bytes of RAM.
    pub const fn new(size: u64) -> Self {
        RamLayout { size }
    }

    /// Total RAM in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The end of RAM below the MMIO hole.
    pub const fn low_end(&self) -> u64 {
        if self.size < MMIO32_START {
            self.size
        } else {
            MMIO32_START
        }
    }

    /// One past the last RAM address (above 4 GiB when RAM reaches the
    /// MMIO hole).
    pub const fn end(&self) -> u64 {
        if self.high_size() > 0 {
            FIRST_ADDR_PAST_32BITS + self.high_size()
        } else {
            self.low_end()
        }
    }

    /// RAM above 4 GiB, in bytes (0 when it all fits below the hole).
    pub(crate) const fn high_size(&self) -> u64 {
        self.size - self.low_end()
    }

    /// The RAM ranges: one from 0, split around the 32-bit MMIO hole when
    /// it reaches it.
    pub(crate) fn ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut r = vec![(GuestAddress(0), self.low_end() as usize)];
        if self.high_size() > 0 {
            r.push((GuestAddress(FIRST_ADDR_PAST_32BITS), self.high_size() as usize));
        }
        r
    }
}

/// The huge-page size KVM maps guest memory with on x86-64 (a PMD).
const HUGE_PAGE: usize = 2 << 20;

/// Anonymous, private, lazily-populated memory for the `len` bytes of
/// guest RAM at `gpa`, at a host address congruent to `gpa` modulo 2 MiB
/// when the host allows.
///
/// Why: KVM maps a guest page with a 2 MiB page of its own (nested or
/// extended page tables) only where the guest-physical and the host
/// address agree modulo 2 MiB and the host backs the range with a huge
/// page. `mmap` of anonymous memory does not align (Linux before 6.7), so
/// an unaligned region makes every guest page a 4 KiB mapping, one nested
/// page fault each: on the real-KVM lab's hosts (transparent huge pages
/// `always`) a stock kernel's boot took seconds longer than with the
/// aligned memory Firecracker maps (docs/performance.md).
///
/// How, without owning a raw mapping (vm-memory must own and unmap the
/// region itself, as every clone of guest memory may outlive the VM's
/// structures): a `PROT_NONE` reservation 2 MiB larger is mapped, the
/// aligned `len` bytes in it are unmapped, and vm-memory's own `mmap`
/// lands in that hole (the kernel places a mapping in the highest gap it
/// fits, and the reservation was placed in the highest that fits it); the
/// rest of the reservation is then unmapped. A thread that maps memory in
/// between can take the hole: the region is then checked, and mapped
/// again (three tries) before it is accepted unaligned, which costs only
/// speed.
fn anonymous_region(gpa: GuestAddress, len: usize) -> std::io::Result<GuestRegionMmap> {
    let want = gpa.0 as usize % HUGE_PAGE;
    let try_once = || {
        let hole = Reservation::around(len, want);
        let region = MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build();
        drop(hole);
        region.map_err(|e| std::io::Error::other(e.to_string()))
    };
    let aligned = |r: &MmapRegion| r.as_ptr() as usize % HUGE_PAGE == want;
    let mut region = try_once()?;
    for _ in 1..3 {
        if aligned(&region) {
            break;
        }
        region = try_once()?;
    }
    if !aligned(&region) {
        log::debug!(
            "guest RAM at {:#x} mapped at {:p}: not 2 MiB aligned (KVM maps it with 4 KiB pages)",
            gpa.0,
            region.as_ptr()
        );
    }
    GuestRegionMmap::new(region, gpa)
        .ok_or_else(|| std::io::Error::other(format!("a region of {len} bytes at {:#x} overflows", gpa.0)))
}

/// A `PROT_NONE` reservation of `len` + 2 MiB bytes with a hole of `len`
/// bytes at the first address in it that is `want` modulo 2 MiB; dropping
/// it unmaps what is left of the reservation (never the hole).
struct Reservation {
    /// The pieces of the reservation around the hole: (start, length).
    pieces: [(usize, usize); 2],
}

impl Reservation {
    /// `None` if the host refuses (then the caller maps without it).
    fn around(len: usize, want: usize) -> Option<Reservation> {
        let total = len.checked_add(HUGE_PAGE)?;
        // SAFETY: a new anonymous PROT_NONE mapping at an address the
        // kernel picks; it touches no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        let hole = base + (want + HUGE_PAGE - base % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: [hole, hole + len) lies inside the reservation just
        // mapped (hole - base < 2 MiB), which nothing else uses.
        unsafe { libc::munmap(hole as *mut libc::c_void, len) };
        let end = base + total;
        Some(Reservation { pieces: [(base, hole - base), (hole + len, end - (hole + len))] })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for &(start, len) in &self.pieces {
            if len > 0 {
                // SAFETY: each piece is part of the PROT_NONE reservation
                // this value mapped and still owns (the hole between them
                // is not touched); nothing else maps over a live mapping.
                unsafe { libc::munmap(start as *mut libc::c_void, len) };
            }
        }
    }
}

/// Guest RAM: the host mapping and its layout.
#[derive(Debug)]
pub struct GuestRam {
    layout: RamLayout,
    mem: GuestMemoryMmap,
    /// Mapped from a file (a restored snapshot's, lazily): a page the guest
    /// never wrote is the file's, not zero.
    backing_file: Option<BackingFile>,
}

/// The file guest RAM is mapped from, copy-on-write.
#[derive(Clone, Debug)]
pub(crate) struct BackingFile {
    /// The file (RAM's regions one after the other).
    pub(crate) file: std::sync::Arc<File>,
    /// Its (device, inode): it must not be written while mapped.
    pub(crate) id: (u64, u64),
}

impl GuestRam {
    /// Maps anonymous, lazily-populated memory for `layout`.
    ///
    /// Pages are only backed by host memory once touched, so an idle guest
    /// costs what it has used, not what it was given.
    ///
    /// Each region's host address is congruent to its guest-physical
    /// address modulo 2 MiB ([`anonymous_region`]), so that where the host
    /// backs RAM with transparent huge pages, KVM can map the guest's
    /// memory with 2 MiB pages too.
    pub fn create(layout: RamLayout) -> Result<Self, MemoryError> {
        let err = |source| MemoryError::Mmap { size: layout.size(), source };
        let regions = layout
            .ranges()
            .into_iter()
            .map(|(addr, len)| anonymous_region(addr, len).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        Ok(GuestRam { layout, mem, backing_file: None })
    }

    /// Guest RAM for `layout` with the contents of `file`, which holds the
    /// regions one after the other (as a snapshot's memory file does) and
    /// must be exactly `layout.size()` bytes long (the caller checks).
    pub(crate) fn from_file(layout: RamLayout, file: &File, backing: MemoryBacking) -> Result<Self, MemoryError> {
        if backing == MemoryBacking::Copy {
            let ram = GuestRam::create(layout)?;
            let mut offset = 0u64;
            for region in ram.mem.iter() {
                let len = region.len();
                // SAFETY: the region is a live read/write mapping of `len`
                // bytes owned by `ram`, which no vCPU runs on yet, and no
                // other reference to it exists.
                let host = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len as usize) };
                let err = |source| MemoryError::MapFile { size: len, offset, source };
                // Only the file's data: its holes are zeros, as the fresh
                // anonymous pages are (and stay unallocated).
                for (start, end) in data_runs(file, offset, offset + len).map_err(err)? {
                    let (a, b) = ((start - offset) as usize, (end - offset) as usize);
                    file.read_exact_at(&mut host[a..b], start).map_err(err)?;
                }
                offset += len;
            }
            return Ok(ram);
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (addr, len) in layout.ranges() {
            let map_err = |source| MemoryError::MapFile { size: len as u64, offset, source };
            let clone = file.try_clone().map_err(map_err)?;
            let region = MmapRegionBuilder::new(len)
                .with_file_offset(FileOffset::new(clone, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| map_err(std::io::Error::other(e.to_string())))?;
            let region = GuestRegionMmap::new(region, addr)
                .ok_or_else(|| map_err(std::io::Error::other(format!("region at {:#x} overflows", addr.0))))?;
            regions.push(region);
            offset += len as u64;
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::MapFile {
            size: layout.size(),
            offset: 0,
            source: std::io::Error::other(e.to_string()),
        })?;
        use std::os::unix::fs::MetadataExt;
        let err = |source| MemoryError::MapFile { size: layout.size(), offset: 0, source };
        let id = file.metadata().map(|m| (m.dev(), m.ino())).map_err(err)?;
        let file = std::sync::Arc::new(file.try_clone().map_err(err)?);
        Ok(GuestRam { layout, mem, backing_file: Some(BackingFile { file, id }) })
    }

    /// The file RAM is mapped from, if it is: a page the guest never wrote
    /// then holds the file's bytes, not zeros, and the file must not
    /// change while the VM lives.
    pub(crate) fn backing_file(&self) -> Option<&BackingFile> {
        self.backing_file.as_ref()
    }

    /// Gives every region to the VM as a KVM memory slot (0, 1, …).
    ///
    /// Call it before `KVM_CREATE_IRQCHIP`: on the PVM hosts ember is
    /// developed on, registering RAM after the irqchip exists costs ~7.5 ms
    /// (~0.06 ms before), a large part of ember's start-up budget
    /// (docs/architecture.md).
    pub(crate) fn register(&self, vm: &VmFd) -> Result<(), MemoryError> {
        for (slot, region) in self.mem.iter().enumerate() {
            let slot = slot as u32;
            let r = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `self.mem`; the
            // VM keeps this GuestRam (or a clone of its memory) for as long
            // as the VM fd exists, so the guest never sees freed memory.
            unsafe { vm.set_user_memory_region(r) }.map_err(|source| MemoryError::Register {
                slot,
                addr: r.guest_phys_addr,
                size: r.memory_size,
                source,
            })?;
        }
        Ok(())
    }

    /// Where the RAM lies.
    pub(crate) fn layout(&self) -> RamLayout {
        self.layout
    }

    /// The host mapping.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

/// The ranges of `file` in `[from, to)` that hold data (`SEEK_DATA` /
/// `SEEK_HOLE`; a file system without holes reports one run).
pub(crate) fn data_runs(file: &File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut runs = Vec::new();
    let mut at = from;
    while at < to {
        // SAFETY: lseek on a descriptor `file` owns; only the offset moves.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data past `at`
            }
            return Err(e);
        }
        let data = data as u64;
        if data >= to {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(to);
        runs.push((data, end));
        at = end;
    }
    Ok(runs)
}

/// Guest memory of `size` bytes, laid out as a VM's, for unit tests.
#[cfg(test)]
pub(crate) fn test_memory(size: u64) -> GuestMemoryMmap {
    GuestRam::create(RamLayout::new(size)).expect("guest memory").mem
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Address, Bytes};

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(RamLayout::new(128 << 20).ranges(), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(RamLayout::new(3 << 30).ranges(), vec![(GuestAddress(0), 3 << 30)]);
        assert_eq!(RamLayout::new(3 << 30).high_size(), 0);
    }

    #[test]
    fn large_memory_is_split_around_the_hole() {
        let l = RamLayout::new(5 << 30);
        let r = l.ranges();
        assert_eq!(r, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]);
        assert_eq!(r.iter().map(|x| x.1 as u64).sum::<u64>(), 5 << 30);
        assert_eq!(l.low_end(), 3 << 30);
        assert_eq!(l.high_size(), 2 << 30);
        assert_eq!(l.end(), 6 << 30);
        assert_eq!(RamLayout::new(128 << 20).end(), 128 << 20);
    }

    /// Each region's host address agrees with its guest-physical address
    /// modulo 2 MiB (so KVM can use 2 MiB pages), for sizes that are and
    /// are not multiples of 2 MiB and for RAM split around the MMIO hole,
    /// and the memory is usable at both ends.
    #[test]
    fn guest_ram_is_2_mib_aligned_on_the_host() {
        for size in [(128u64 << 20) + 4096, 256 << 20, 5 << 30] {
            let ram = GuestRam::create(RamLayout::new(size)).unwrap();
            for region in ram.mem.iter() {
                let host = region.as_ptr() as usize;
                let gpa = region.start_addr().0 as usize;
                assert_eq!(host % HUGE_PAGE, gpa % HUGE_PAGE, "{size} bytes: {gpa:#x} mapped at {host:#x}");
                let last = region.start_addr().unchecked_add(region.len() - 4);
                ram.memory().write_obj(0x1234_5678u32, region.start_addr()).unwrap();
                ram.memory().write_obj(0x9abc_def0u32, last).unwrap();
                assert_eq!(ram.memory().read_obj::<u32>(region.start_addr()).unwrap(), 0x1234_5678);
                assert_eq!(ram.memory().read_obj::<u32>(last).unwrap(), 0x9abc_def0);
            }
        }
    }

    /// The reservation leaves a hole of the asked size at the asked
    /// alignment, and dropping it unmaps the rest: each piece can then be
    /// mapped again with MAP_FIXED_NOREPLACE (which fails on a live
    /// mapping).
    #[test]
    fn a_reservation_leaves_its_hole_and_nothing_else() {
        for want in [0, 4096, HUGE_PAGE - 4096] {
            let len = 8 << 20;
            let r = Reservation::around(len, want).unwrap();
            let [(a, a_len), (b, b_len)] = r.pieces;
            let hole = a + a_len;
            assert_eq!(hole % HUGE_PAGE, want);
            assert_eq!(b, hole + len);
            assert_eq!(a_len + b_len, HUGE_PAGE);
            drop(r);
            for (start, len) in [(a, a_len), (b, b_len)] {
                if len == 0 {
                    continue;
                }
                // SAFETY: maps only where nothing is mapped (NOREPLACE),
                // and unmaps what it mapped.
                let p = unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                        -1,
                        0,
                    )
                };
                assert_eq!(
                    p as usize,
                    start,
                    "piece {start:#x}+{len:#x} still mapped: {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: the mapping just made.
                unsafe { libc::munmap(p, len) };
            }
        }
    }

    #[test]
    fn data_runs_skip_holes() {
        let path = std::env::temp_dir().join(format!("ember-data-runs-{}", std::process::id()));
        let f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"x", 1 << 20).unwrap();
        f.write_all_at(b"y", (8 << 20) - 1).unwrap();
        let runs = data_runs(&f, 0, 8 << 20).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Block-sized runs around each byte (exact sizes are the file
        // system's); everything else is a hole.
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(runs[0].0 <= 1 << 20 && runs[0].1 > 1 << 20, "{runs:?}");
        assert_eq!(runs[1].1, 8 << 20);
        assert!(runs.iter().map(|r| r.1 - r.0).sum::<u64>() < 1 << 20);
        // Only part of the file.
        assert_eq!(data_runs(&f, 2 << 20, 4 << 20).unwrap(), vec![]);
    }

    #[test]
    fn memory_maps_lazily() {
        let ram = GuestRam::create(RamLayout::new(4 << 30)).unwrap();
        let m = ram.memory();
        assert_eq!(m.num_regions(), 2);
        let total: u64 = m.iter().map(|r| r.len()).sum();
        assert_eq!(total, 4 << 30);
        assert!(m.address_in_range(GuestAddress(0xbfff_ffff)));
        assert!(!m.address_in_range(GuestAddress(0xc000_0000)));
        assert!(m.address_in_range(GuestAddress(0x1_0000_0000)));
    }
}
