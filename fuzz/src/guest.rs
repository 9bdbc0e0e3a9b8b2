//! Guest memory for the device targets.
//!
//! Every region is its own anonymous mapping with an inaccessible guard
//! page on either side, so a host pointer that a device computes past the
//! end of a region faults at once instead of silently hitting a neighbouring
//! mapping. The layout has two regions adjacent in guest-physical space but
//! not on the host (so accesses spanning them must be split), then a hole,
//! then a small third region:
//!
//! ```text
//! [0x000000, 0x080000)  region A, 512 KiB
//! [0x080000, 0x100000)  region B, 512 KiB (adjacent to A)
//! [0x100000, 0x110000)  hole
//! [0x110000, 0x120000)  region C, 64 KiB
//! ```
//!
//! The memory is created once per process; [`GuardedMemory::reset`] zeroes
//! it between runs by dropping its pages (cheap: only touched pages cost).

use std::sync::OnceLock;

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The guest-physical regions: (start, length).
pub const REGIONS: [(u64, usize); 3] = [(0, 0x8_0000), (0x8_0000, 0x8_0000), (0x11_0000, 0x1_0000)];
/// Where region A ends and region B begins.
pub const SEAM: u64 = 0x8_0000;
/// The end of the contiguous low RAM (regions A and B).
pub const LOW_END: u64 = 0x10_0000;
/// One past the last guest-physical byte.
pub const RAM_END: u64 = 0x12_0000;

const PAGE: usize = 4096;

/// Guest memory whose regions are fenced by guard pages.
pub struct GuardedMemory {
    mem: GuestMemoryMmap,
    /// (guest start, host address, length) of each region.
    hosts: Vec<(u64, usize, usize)>,
}

impl GuardedMemory {
    /// Maps `regions` (page-aligned starts and lengths).
    pub fn new(regions: &[(u64, usize)]) -> Self {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let mut out = Vec::new();
        let mut hosts = Vec::new();
        for &(start, len) in regions {
            assert!(len % PAGE == 0 && start % PAGE as u64 == 0);
            // SAFETY: a fresh anonymous mapping; nothing else refers to it.
            let base = unsafe { libc::mmap(std::ptr::null_mut(), len + 2 * PAGE, libc::PROT_NONE, flags, -1, 0) };
            assert!(base != libc::MAP_FAILED, "mmap failed");
            // SAFETY: the middle of the mapping just created.
            let host = unsafe { base.cast::<u8>().add(PAGE) };
            // SAFETY: `host..host+len` lies inside the mapping just created.
            let rc = unsafe { libc::mprotect(host.cast(), len, prot) };
            assert_eq!(rc, 0, "mprotect failed");
            // SAFETY: `host..host+len` is a live read-write mapping that is
            // never unmapped (the memory lives for the whole process).
            let region = unsafe { MmapRegion::<()>::build_raw(host, len, prot, flags) }.expect("guest region");
            out.push(GuestRegionMmap::new(region, GuestAddress(start)).expect("guest region"));
            hosts.push((start, host as usize, len));
        }
        GuardedMemory { mem: GuestMemoryMmap::from_regions(out).expect("guest memory"), hosts }
    }

    /// The guest memory (clones share the mappings).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Writes `bytes` at guest address `at`; the parts that fall outside
    /// guest memory are dropped. (A plain copy through the host mappings:
    /// the driver side of the targets writes a lot, and vm-memory's checked
    /// accessors were a good part of the run time.)
    pub fn write(&self, at: u64, bytes: &[u8]) {
        let end = at.saturating_add(bytes.len() as u64);
        for &(start, host, len) in &self.hosts {
            let (lo, hi) = (at.max(start), end.min(start + len as u64));
            if lo >= hi {
                continue;
            }
            let src = &bytes[(lo - at) as usize..(hi - at) as usize];
            // SAFETY: `[lo, hi)` lies inside this region's live mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), (host as *mut u8).add((lo - start) as usize), src.len())
            };
        }
    }

    /// Zeroes all of guest memory.
    pub fn reset(&self) {
        for &(_, host, len) in &self.hosts {
            // SAFETY: private anonymous memory owned by this object; the
            // pages read as zero afterwards.
            let rc = unsafe { libc::madvise(host as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            assert_eq!(rc, 0, "madvise failed");
        }
    }
}

/// The process-wide guest memory with the [`REGIONS`] layout.
pub fn shared() -> &'static GuardedMemory {
    static MEM: OnceLock<GuardedMemory> = OnceLock::new();
    MEM.get_or_init(|| GuardedMemory::new(&REGIONS))
}
