//! Guest RAM: where it lies in the guest-physical space and how it is backed.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{FIRST_ADDR_PAST_32BITS, MMIO32_START};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host refused the mapping.
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The underlying error.
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes of guest memory: one range from 0, split
/// around the 32-bit MMIO hole when it reaches it.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO32_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO32_START as usize),
            (GuestAddress(FIRST_ADDR_PAST_32BITS), (size - MMIO32_START) as usize),
        ]
    }
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO32_START)
}

/// Maps anonymous, lazily-populated guest memory of `size` bytes.
///
/// Pages are only backed by host memory once touched, so an idle guest costs
/// what it has used, not what it was given.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|source| MemoryError::Mmap { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(GuestAddress(0), 3 << 30)]);
    }

    #[test]
    fn large_memory_is_split_around_the_hole() {
        let r = ram_ranges(5 << 30);
        assert_eq!(r, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]);
        assert_eq!(r.iter().map(|x| x.1 as u64).sum::<u64>(), 5 << 30);
        assert_eq!(low_ram_end(5 << 30), 3 << 30);
    }

    #[test]
    fn memory_maps_lazily() {
        let m = create_guest_memory(4 << 30).unwrap();
        assert_eq!(m.num_regions(), 2);
        let total: u64 = m.iter().map(|r| r.len()).sum();
        assert_eq!(total, 4 << 30);
        assert!(m.address_in_range(GuestAddress(0xbfff_ffff)));
        assert!(!m.address_in_range(GuestAddress(0xc000_0000)));
        assert!(m.address_in_range(GuestAddress(0x1_0000_0000)));
    }
}
