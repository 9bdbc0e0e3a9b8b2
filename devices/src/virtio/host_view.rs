//! A flat table of the host mappings of guest memory, for request hot paths.
//!
//! `GuestMemoryMmap` finds a region with a binary search over reference
//! counted regions and builds its slices through iterator adaptors on every
//! access; at a few million requests a second that was about half of the
//! device's own time per virtio-blk request. [`HostView`] keeps the regions
//! as a small flat array of `(guest start, length, host address)`:
//!
//! * [`HostView::ptr`] resolves a guest range that lies inside one region to
//!   a host pointer with one bounds check;
//! * it implements vm-memory's [`GuestMemory`], so virtio-queue's ring and
//!   descriptor-chain code (and its bounds on hostile chains) runs on it
//!   unchanged. Ranges spanning regions are served region by region; ranges
//!   outside guest memory are errors, exactly as with `GuestMemoryMmap`.

use std::iter::FusedIterator;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion, Permissions,
    VolatileSlice,
};

use crate::GuestMemoryMmap;

#[derive(Clone, Copy, Debug)]
struct HostRegion {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// Host addresses of the regions of one `GuestMemoryMmap`.
///
/// The view holds a clone of that `GuestMemoryMmap` (clones share the
/// mappings), so its pointers are valid for as long as the view exists.
#[derive(Debug)]
pub(crate) struct HostView {
    regions: Vec<HostRegion>,
    _mem: GuestMemoryMmap,
}

// SAFETY: the pointers are addresses of guest memory mappings the view
// keeps alive (its `_mem`); guest memory is accessed from any thread by
// design.
unsafe impl Send for HostView {}

impl HostView {
    pub(crate) fn new(mem: &GuestMemoryMmap) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = mem.get_host_address(r.start_addr()).ok()?;
                Some(HostRegion { start: r.start_addr().raw_value(), len: r.len(), host })
            })
            .collect();
        HostView { regions, _mem: mem.clone() }
    }

    /// The host address of `[addr, addr + len)` if the whole range lies in
    /// one region. `len` may be 0 (the address must still be inside).
    #[inline]
    pub(crate) fn ptr(&self, addr: GuestAddress, len: u64) -> Option<*mut u8> {
        let (p, left) = self.locate(addr.raw_value())?;
        (len <= left).then_some(p)
    }

    /// The region containing `addr`: (host address of `addr`, bytes left in
    /// the region).
    #[inline]
    fn locate(&self, addr: u64) -> Option<(*mut u8, u64)> {
        self.regions.iter().find_map(|r| {
            let off = addr.wrapping_sub(r.start);
            (addr >= r.start && off < r.len).then(|| {
                // SAFETY: off < r.len, inside the mapping.
                (unsafe { r.host.add(off as usize) }, r.len - off)
            })
        })
    }

    /// Reads `N` bytes at `addr` with one volatile access.
    #[inline]
    pub(crate) fn read_bytes<const N: usize>(&self, addr: GuestAddress) -> Option<[u8; N]> {
        let p = self.ptr(addr, N as u64)?;
        // SAFETY: in-bounds guest memory; a byte array needs no alignment.
        Some(unsafe { std::ptr::read_volatile(p.cast::<[u8; N]>()) })
    }

    /// Writes one byte at `addr`; `false` if outside guest memory.
    #[inline]
    pub(crate) fn write_u8(&self, addr: GuestAddress, val: u8) -> bool {
        match self.ptr(addr, 1) {
            Some(p) => {
                // SAFETY: in-bounds guest memory.
                unsafe { std::ptr::write_volatile(p, val) };
                true
            }
            None => false,
        }
    }
}

/// The slices covering a guest range, region by region.
pub(crate) struct Slices<'a> {
    view: &'a HostView,
    addr: GuestAddress,
    count: usize,
}

impl<'a> Iterator for Slices<'a> {
    type Item = Result<VolatileSlice<'a, BS<'a, ()>>, GuestMemoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.count == 0 {
            return None;
        }
        let addr = self.addr;
        let Some((p, left)) = self.view.locate(addr.raw_value()) else {
            self.count = 0;
            return Some(Err(GuestMemoryError::InvalidGuestAddress(addr)));
        };
        let len = usize::try_from(left).map_or(self.count, |l| l.min(self.count));
        self.count -= len;
        match addr.overflowing_add(len as u64) {
            (next, false) => self.addr = next,
            // Ends exactly at the top of the address space.
            (GuestAddress(0), true) if self.count == 0 => {}
            _ => {
                self.count = 0;
                return Some(Err(GuestMemoryError::GuestAddressOverflow));
            }
        }
        // SAFETY: `len` bytes of a live guest memory mapping, which is only
        // ever accessed with volatile semantics or by the kernel.
        Some(Ok(unsafe { VolatileSlice::new(p, len) }))
    }
}

impl FusedIterator for Slices<'_> {}

impl<'a> GuestMemorySliceIterator<'a, BS<'a, ()>> for Slices<'a> {}

impl GuestMemory for HostView {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        // As GuestMemoryMmap: an empty range is always valid.
        Slices { view: self, addr, count }.all(|s| s.is_ok())
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> Result<impl GuestMemorySliceIterator<'a, BS<'a, ()>>, GuestMemoryError> {
        Ok(Slices { view: self, addr, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn resolves_only_ranges_inside_one_region() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10_0000), 0x1000),
        ])
        .unwrap();
        let v = HostView::new(&mem);
        assert!(v.ptr(GuestAddress(0), 0x1000).is_some());
        assert!(v.ptr(GuestAddress(0xfff), 1).is_some());
        assert!(v.ptr(GuestAddress(0xfff), 2).is_none(), "spans regions");
        assert!(v.ptr(GuestAddress(0x2000), 0).is_none(), "hole");
        assert!(v.ptr(GuestAddress(0x10_0fff), 1).is_some());
        assert!(v.ptr(GuestAddress(0x10_0fff), 2).is_none(), "past the end");
        assert!(v.ptr(GuestAddress(u64::MAX), 1).is_none());
        assert!(v.ptr(GuestAddress(0x10_0000), u64::MAX).is_none());

        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x10_0003)).unwrap();
        assert_eq!(v.read_bytes::<8>(GuestAddress(0x10_0003)), Some(0x1122_3344_5566_7788u64.to_le_bytes()));
        assert_eq!(v.read_bytes::<8>(GuestAddress(0x10_0ffc)), None);
        assert!(v.write_u8(GuestAddress(0x1800), 7));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1800)).unwrap(), 7);
        assert!(!v.write_u8(GuestAddress(0x3000), 7));
    }

    #[test]
    fn guest_memory_impl_matches_guest_memory_mmap() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10_0000), 0x1000),
        ])
        .unwrap();
        let v = HostView::new(&mem);
        let data: Vec<u8> = (0..0x1800u32).map(|i| i as u8).collect();
        // Across the two adjacent regions.
        v.write_slice(&data, GuestAddress(0x400)).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x400)).unwrap();
        assert_eq!(back, data);
        v.read_slice(&mut back, GuestAddress(0x400)).unwrap();
        assert_eq!(back, data);
        for (addr, len) in [
            (0u64, 0usize),
            (0, 0x2000),
            (0, 0x2001),
            (0x1fff, 1),
            (0x2000, 0),
            (0x2000, 1),
            (0x10_0800, 0x800),
            (0x10_0800, 0x801),
            (0x10_0fff, usize::MAX),
            (u64::MAX, 1),
            (u64::MAX, 2),
        ] {
            assert_eq!(
                GuestMemory::check_range(&v, GuestAddress(addr), len, Permissions::Read),
                GuestMemory::check_range(&mem, GuestAddress(addr), len, Permissions::Read),
                "{addr:#x}+{len:#x}"
            );
            if len > 0x10_0000 {
                continue;
            }
            let mut buf = vec![0u8; len];
            assert_eq!(
                v.read_slice(&mut buf, GuestAddress(addr)).is_ok(),
                mem.read_slice(&mut buf, GuestAddress(addr)).is_ok(),
                "read {addr:#x}+{len:#x}"
            );
        }
        v.write_obj(0xabcd_u16, GuestAddress(0x10_0010)).unwrap();
        assert_eq!(v.load::<u16>(GuestAddress(0x10_0010), std::sync::atomic::Ordering::Acquire).unwrap(), 0xabcd);
        assert!(v.read_obj::<u64>(GuestAddress(0x10_0ffc)).is_err());
    }
}
