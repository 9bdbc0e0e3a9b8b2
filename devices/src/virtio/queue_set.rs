//! [`QueueSet`]: which virtqueues a device just used.

/// A set of virtqueue indices: the queues whose used rings got buffers that
/// the driver must be notified of.
///
/// A device returns one from [`VirtioDevice::process_queue`] and
/// [`VirtioDevice::process_backend`]; the transport turns it into
/// interrupts: virtio-mmio raises its one line if the set is not empty, a
/// transport with a vector per queue (virtio-pci with MSI-X) signals the
/// vector of each queue in the set.
///
/// Queue indices 0 to 63 fit; [`QueueSet::insert`] ignores larger ones
/// (no device of this crate has more than two queues).
///
/// [`VirtioDevice::process_queue`]: super::VirtioDevice::process_queue
/// [`VirtioDevice::process_backend`]: super::VirtioDevice::process_backend
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct QueueSet(u64);

impl QueueSet {
    /// No queue.
    pub const EMPTY: QueueSet = QueueSet(0);

    /// The set holding queue `idx` alone (empty if `idx` is 64 or more).
    pub const fn of(idx: usize) -> QueueSet {
        if idx < 64 {
            QueueSet(1 << idx)
        } else {
            QueueSet(0)
        }
    }

    /// `{idx}` if `used`, else the empty set.
    pub const fn of_if(idx: usize, used: bool) -> QueueSet {
        if used {
            QueueSet::of(idx)
        } else {
            QueueSet::EMPTY
        }
    }

    /// Adds queue `idx` (ignored if 64 or more).
    pub fn insert(&mut self, idx: usize) {
        self.0 |= QueueSet::of(idx).0;
    }

    /// Whether queue `idx` is in the set.
    pub const fn contains(self, idx: usize) -> bool {
        idx < 64 && self.0 & (1 << idx) != 0
    }

    /// Whether no queue is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The queues of both sets.
    pub const fn union(self, other: QueueSet) -> QueueSet {
        QueueSet(self.0 | other.0)
    }

    /// The set as a bitmask: bit `i` stands for queue `i`.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The queue indices in the set, in increasing order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&i| self.contains(i))
    }
}

impl std::ops::BitOr for QueueSet {
    type Output = QueueSet;

    fn bitor(self, rhs: QueueSet) -> QueueSet {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for QueueSet {
    fn bitor_assign(&mut self, rhs: QueueSet) {
        *self = self.union(rhs);
    }
}

impl std::fmt::Debug for QueueSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut s = QueueSet::EMPTY;
        assert!(s.is_empty());
        s.insert(1);
        s.insert(0);
        s.insert(64);
        assert_eq!(s.bits(), 0b11);
        assert!(s.contains(0) && s.contains(1) && !s.contains(2) && !s.contains(64));
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(QueueSet::of(0) | QueueSet::of(1), s);
        assert_eq!(QueueSet::of(99), QueueSet::EMPTY);
        assert_eq!(QueueSet::of_if(3, false), QueueSet::EMPTY);
        assert_eq!(QueueSet::of_if(3, true).bits(), 8);
        assert_eq!(format!("{s:?}"), "{0, 1}");
    }
}
