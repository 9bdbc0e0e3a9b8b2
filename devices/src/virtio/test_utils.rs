//! Helpers for the virtio unit tests: guest memory, temporary images and a
//! minimal split-queue driver on top of `virtio_queue::mock`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;

/// Guest memory size used by the tests.
pub(crate) const MEM_SIZE: u64 = 0x100_0000;
/// Where test queues live.
pub(crate) const QUEUE_BASE: u64 = 0x1000;
/// Where test data buffers start.
pub(crate) const DATA_BASE: u64 = 0x10_0000;

/// Counts the log records of each thread (tests run in parallel threads).
struct CountingLogger;

thread_local! {
    static LOG_RECORDS: Cell<usize> = const { Cell::new(0) };
}

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &log::Record<'_>) {
        LOG_RECORDS.with(|n| n.set(n.get() + 1));
    }

    fn flush(&self) {}
}

/// Runs `f` and returns its result with the number of log records (any
/// level, any crate: virtio-queue's own included) it made on this thread.
pub(crate) fn count_log_records<R>(f: impl FnOnce() -> R) -> (R, usize) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only this logger is ever installed in the unit tests.
        let _ = log::set_logger(&CountingLogger);
        log::set_max_level(log::LevelFilter::Trace);
    });
    let before = LOG_RECORDS.with(Cell::get);
    let r = f();
    (r, LOG_RECORDS.with(Cell::get) - before)
}

pub(crate) fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ember-devices-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Creates `name` with `len` bytes, byte `i` being `pattern(i)`.
    pub(crate) fn image(&self, name: &str, len: u64) -> PathBuf {
        let path = self.0.join(name);
        let data: Vec<u8> = (0..len).map(pattern).collect();
        std::fs::write(&path, data).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Read-only files inside are removable as root and as owner.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The initial content of byte `i` of a test image.
pub(crate) fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// One descriptor of a chain to add: guest address, length, device-writable.
pub(crate) type D = (u64, u32, bool);

pub(crate) fn r(addr: u64, len: u32) -> D {
    (addr, len, false)
}

pub(crate) fn w(addr: u64, len: u32) -> D {
    (addr, len, true)
}

/// Plays the driver side of one split queue.
///
/// Uses the ring accessors of `virtio_queue::mock` but its own layout:
/// `MockSplitQueue` 0.18 places the used ring at the available ring's start
/// plus its *entry count*, so the two overlap.
pub(crate) struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    next_desc: u16,
    desc: DescriptorTable<'a, GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
}

impl<'a> Driver<'a> {
    /// Rings for a queue of `size` (at most 256) entries at `QUEUE_BASE`.
    pub(crate) fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Driver {
            mem,
            size,
            next_desc: 0,
            desc: DescriptorTable::new(mem, GuestAddress(QUEUE_BASE), size),
            avail: AvailRing::new(mem, GuestAddress(QUEUE_BASE + 0x1000), size),
            used: UsedRing::new(mem, GuestAddress(QUEUE_BASE + 0x2000), size),
        }
    }

    pub(crate) fn desc_addr(&self) -> u64 {
        QUEUE_BASE
    }

    pub(crate) fn avail_addr(&self) -> u64 {
        QUEUE_BASE + 0x1000
    }

    pub(crate) fn used_addr(&self) -> u64 {
        QUEUE_BASE + 0x2000
    }

    /// A ready device-side queue on these rings.
    pub(crate) fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc_addr())).unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail_addr())).unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used_addr())).unwrap();
        q.set_ready(true);
        q
    }

    /// Writes raw descriptor `idx` (flags and next as given).
    pub(crate) fn set_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc.store(idx, RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))).unwrap();
    }

    /// Publishes descriptor `head` in the available ring.
    pub(crate) fn publish(&self, head: u16) {
        let idx = self.avail.idx().load();
        self.avail.ring().ref_at((idx % self.size) as usize).unwrap().store(head);
        self.avail.idx().store(idx.wrapping_add(1));
    }

    /// Overwrites the available ring index.
    pub(crate) fn set_avail_idx(&self, idx: u16) {
        self.avail.idx().store(idx);
    }

    /// Adds a chain of `descs` and publishes it; returns the head index.
    pub(crate) fn add(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let next = (idx + 1) % self.size;
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(idx, addr, len, flags, next);
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The used ring index.
    pub(crate) fn used_idx(&self) -> u16 {
        self.used.idx().load()
    }

    /// Used ring entry `i`: (descriptor head, length).
    pub(crate) fn used(&self, i: u16) -> (u32, u32) {
        let e = self.used.ring().ref_at((i % self.size) as usize).unwrap().load();
        (e.id(), e.len())
    }

    /// Sets `used_event` in the available ring (EVENT_IDX suppression).
    pub(crate) fn set_used_event(&self, val: u16) {
        let addr = self.avail_addr() + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(val, GuestAddress(addr)).unwrap();
    }

    /// Reads `avail_event` from the used ring.
    pub(crate) fn avail_event(&self) -> u16 {
        let addr = self.used_addr() + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
}
