//! Scatter lists of guest-memory buffers for the kernel's vectored I/O.
//!
//! A request's data goes between a file (disk image, TAP) and guest memory
//! in one system call (`preadv`, `pwritev`, `writev`) on `struct iovec`s
//! that point into the guest mapping: no bounce buffer. [`IoVecs`] is the
//! safe form of such a list: entries can only be added as ranges of guest
//! memory, and the list borrows the memory they point into, so every entry
//! is mapped and accessible for as long as the list exists. The system
//! calls on it are therefore safe to offer as safe methods; callers never
//! handle a raw `iovec`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::host_view::HostView;

/// Largest number of buffers one list may hold (Linux `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;

/// The reusable allocation behind an [`IoVecs`]. Entries an earlier list
/// left in it are never read: [`IoVecBuf::start`], the only way to reach
/// them, empties it first.
#[derive(Debug)]
pub(crate) struct IoVecBuf(Vec<libc::iovec>);

// SAFETY: the raw pointers in the vector are only ever read through an
// IoVecs, which `start` creates after emptying the vector and which borrows
// the guest memory they point into; an IoVecBuf moved to another thread is
// a reusable allocation whose stale entries are never dereferenced.
unsafe impl Send for IoVecBuf {}

impl IoVecBuf {
    /// Storage for lists of up to [`MAX_IOVECS`] buffers, allocated once.
    pub(crate) fn new() -> Self {
        IoVecBuf(Vec::with_capacity(MAX_IOVECS))
    }

    /// Starts an empty list of buffers inside the guest memory of `view`.
    #[inline]
    pub(crate) fn start<'a>(&'a mut self, view: &'a HostView) -> IoVecs<'a> {
        self.0.clear();
        IoVecs { iov: &mut self.0, view, total: 0 }
    }
}

/// A list of buffers inside guest memory, in order, for one vectored I/O
/// call.
///
/// Every entry is a range of the guest memory the list was started on, and
/// the list borrows that memory: the entries stay valid while it exists.
/// Guest memory is shared with the guest, so what a read or write sees is
/// whatever the guest left there; the list guarantees only that it is
/// memory of this VM.
pub struct IoVecs<'a> {
    iov: &'a mut Vec<libc::iovec>,
    view: &'a HostView,
    total: usize,
}

impl std::fmt::Debug for IoVecs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecs").field("buffers", &self.iov.len()).field("bytes", &self.total).finish()
    }
}

impl IoVecs<'_> {
    /// Appends guest range `[addr, addr + len)`; `false` (and the list
    /// unchanged in its byte count) if any of it is outside guest memory
    /// or the list would exceed [`MAX_IOVECS`] buffers. A range spanning
    /// two adjacent regions takes one buffer per region.
    #[inline]
    pub(crate) fn push(&mut self, addr: GuestAddress, len: usize) -> bool {
        if len == 0 {
            return true;
        }
        match self.view.ptr(addr, len as u64) {
            Some(p) => self.push_host(p, len),
            None => self.push_spanning(addr, len),
        }
    }

    /// [`push`](Self::push) of a range that is not inside one region:
    /// outside guest memory, or spanning two adjacent regions.
    #[cold]
    #[inline(never)]
    fn push_spanning(&mut self, addr: GuestAddress, len: usize) -> bool {
        let Ok(slices) = GuestMemory::get_slices(self.view, addr, len, Permissions::ReadWrite) else {
            return false;
        };
        let (start_len, start_total) = (self.iov.len(), self.total);
        for slice in slices {
            let ok = match slice {
                Ok(s) => self.push_host(s.ptr_guard_mut().as_ptr(), s.len()),
                Err(_) => false,
            };
            if !ok {
                self.iov.truncate(start_len);
                self.total = start_total;
                return false;
            }
        }
        true
    }

    #[inline]
    fn push_host(&mut self, ptr: *mut u8, len: usize) -> bool {
        if self.iov.len() == MAX_IOVECS {
            return false;
        }
        self.iov.push(libc::iovec { iov_base: ptr.cast(), iov_len: len });
        self.total += len;
        true
    }

    /// Total bytes described.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.iov.len()
    }

    /// Whether the list holds no buffer.
    pub fn is_empty(&self) -> bool {
        self.iov.is_empty()
    }

    /// Empties the list (for the next request on the same memory).
    pub(crate) fn clear(&mut self) {
        self.iov.clear();
        self.total = 0;
    }

    /// The entries as `struct iovec`s, for a system call.
    pub(crate) fn as_raw(&self) -> &[libc::iovec] {
        self.iov
    }

    /// Drops the first `n` bytes (after a partial transfer): whole buffers,
    /// then the start of the next one.
    pub(crate) fn advance(&mut self, mut n: usize) {
        let mut whole = 0;
        for v in self.iov.iter_mut() {
            if n == 0 {
                break;
            }
            if n >= v.iov_len {
                n -= v.iov_len;
                self.total -= v.iov_len;
                whole += 1;
            } else {
                // SAFETY: n < iov_len, so the advanced pointer stays inside
                // the same buffer of guest memory.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                self.total -= n;
                n = 0;
            }
        }
        self.iov.drain(..whole);
    }

    /// Writes the buffers, in order, to `fd` with one `write` (one buffer)
    /// or `writev` (several); returns the bytes written.
    pub fn write_to(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let n = match self.as_raw() {
            // `write` skips the kernel's iovec import: measurably cheaper
            // for the usual single-buffer frame.
            // SAFETY: the buffer is live guest memory (the list's
            // invariant), read by the kernel only.
            [one] => unsafe { libc::write(fd.as_raw_fd(), one.iov_base, one.iov_len) },
            v => {
                // At most MAX_IOVECS entries, which fits a c_int.
                // SAFETY: every entry is live guest memory (the list's
                // invariant), read by the kernel only.
                unsafe { libc::writev(fd.as_raw_fd(), v.as_ptr(), v.len() as libc::c_int) }
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Copies `src` into the buffers, in order, up to the shorter of the
    /// two; returns the bytes copied.
    #[inline]
    pub(crate) fn copy_from(&self, src: &[u8]) -> usize {
        let mut off = 0;
        for v in self.as_raw() {
            let n = v.iov_len.min(src.len() - off);
            // SAFETY: the destination is live guest memory (the list's
            // invariant) of at least `n` bytes; the source is a host buffer
            // of at least `off + n` bytes; they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(off), v.iov_base.cast::<u8>(), n) };
            off += n;
            if off == src.len() {
                break;
            }
        }
        off
    }

    /// Copies the first bytes of the buffers, in order, into `dst`, up to
    /// the shorter of the two; returns the bytes copied.
    #[inline]
    pub(crate) fn copy_prefix(&self, dst: &mut [u8]) -> usize {
        let mut off = 0;
        for v in self.as_raw() {
            if off == dst.len() {
                break;
            }
            let n = v.iov_len.min(dst.len() - off);
            // SAFETY: the source is live guest memory (the list's
            // invariant) of at least `n` bytes; the destination a host
            // buffer with `n` bytes left at `off`; they cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), dst.as_mut_ptr().add(off), n) };
            off += n;
        }
        off
    }

    /// The parts of the buffers covering bytes `[off, off + len)` of the
    /// list, in order, as (host address, length); shorter if the list is.
    fn parts(&self, mut off: usize, mut len: usize) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        self.as_raw().iter().filter_map(move |v| {
            if len == 0 {
                return None;
            }
            if off >= v.iov_len {
                off -= v.iov_len;
                return None;
            }
            let n = (v.iov_len - off).min(len);
            // SAFETY: off < iov_len, so the pointer stays inside the buffer.
            let p = unsafe { v.iov_base.cast::<u8>().add(off) };
            off = 0;
            len -= n;
            Some((p, n))
        })
    }

    /// Copies `src` into the buffers from byte `off` of the list on, up to
    /// the list's end; returns the bytes copied.
    pub(crate) fn copy_from_at(&self, off: usize, src: &[u8]) -> usize {
        let mut done = 0;
        for (p, n) in self.parts(off, src.len()) {
            // SAFETY: `p` is live guest memory of at least `n` bytes (the
            // list's invariant and `parts`); `src[done..done + n]` is in
            // bounds because the parts add up to at most `src.len()`.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), p, n) };
            done += n;
        }
        done
    }

    /// Copies the buffers' bytes, in order, into `dst`, up to the shorter
    /// of the two; returns the bytes copied.
    pub(crate) fn copy_to(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for (p, n) in self.parts(0, dst.len()) {
            // SAFETY: `p` is live guest memory of at least `n` bytes;
            // `dst[done..done + n]` is in bounds (the parts add up to at
            // most `dst.len()`); host and guest buffers cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), n) };
            done += n;
        }
        done
    }

    /// Appends bytes `[off, off + len)` of `src`, a list on the same guest
    /// memory, to this list (up to `src`'s end); `false` (the list possibly
    /// partly extended) if `src` is on other memory or this list is full.
    pub(crate) fn push_part_of(&mut self, src: &IoVecs<'_>, off: usize, len: usize) -> bool {
        if !std::ptr::eq(self.view, src.view) {
            return false;
        }
        src.parts(off, len).all(|(p, n)| self.push_host(p, n))
    }

    /// Reads `fd` at `offset` into the buffers with one `preadv` (retried
    /// on `EINTR`); returns the bytes read.
    pub(crate) fn read_from_at(&self, fd: BorrowedFd<'_>, offset: u64) -> io::Result<usize> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let v = self.as_raw();
        loop {
            // SAFETY: every entry is live guest memory (the list's
            // invariant), written by the kernel only; at most MAX_IOVECS
            // entries, which fits a c_int.
            let n = unsafe { libc::preadv(fd.as_raw_fd(), v.as_ptr(), v.len() as libc::c_int, off) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The bytes of the buffers, copied out (for tests and checks).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total);
        for v in self.as_raw() {
            let start = out.len();
            out.resize(start + v.iov_len, 0);
            // SAFETY: the source is live guest memory (the list's invariant)
            // of `iov_len` bytes, the destination the space just reserved.
            unsafe { std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), out[start..].as_mut_ptr(), v.iov_len) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemoryMmap;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)]).unwrap()
    }

    #[test]
    fn only_guest_memory_goes_in() {
        let mem = mem();
        let view = HostView::new(&mem);
        let mut buf = IoVecBuf::new();
        let mut iov = buf.start(&view);
        assert!(iov.push(GuestAddress(0x10), 0));
        assert!(iov.is_empty());
        assert!(iov.push(GuestAddress(0x10), 0x10));
        // Across the two regions: one buffer each.
        assert!(iov.push(GuestAddress(0xff0), 0x20));
        assert_eq!((iov.len(), iov.total()), (3, 0x30));
        // Outside guest memory, or partly: refused, the list unchanged.
        assert!(!iov.push(GuestAddress(0x1ff0), 0x20));
        assert!(!iov.push(GuestAddress(0x5000), 1));
        assert!(!iov.push(GuestAddress(u64::MAX), 2));
        assert_eq!((iov.len(), iov.total()), (3, 0x30));
        iov.clear();
        for _ in 0..MAX_IOVECS {
            assert!(iov.push(GuestAddress(0), 1));
        }
        assert!(!iov.push(GuestAddress(0), 1), "full");
    }

    #[test]
    fn copies_and_advances() {
        let mem = mem();
        let view = HostView::new(&mem);
        let mut buf = IoVecBuf::new();
        let mut iov = buf.start(&view);
        assert!(iov.push(GuestAddress(0xffe), 4));
        assert!(iov.push(GuestAddress(0x100), 3));
        assert_eq!(iov.copy_from(b"abcdefghij"), 7);
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(0xffe)).unwrap();
        assert_eq!(&back, b"abcd");
        assert_eq!(iov.to_vec(), b"abcdefg");
        let mut head = [0u8; 5];
        assert_eq!(iov.copy_prefix(&mut head), 5);
        assert_eq!(&head, b"abcde");
        let mut all = [0u8; 9];
        assert_eq!(iov.copy_prefix(&mut all), 7);
        iov.advance(3);
        assert_eq!((iov.len(), iov.total()), (2, 4));
        assert_eq!(iov.to_vec(), b"defg");
        iov.advance(4);
        assert!(iov.is_empty());
    }

    #[test]
    fn copies_at_offsets_and_takes_parts() {
        let mem = mem();
        let view = HostView::new(&mem);
        let (mut a, mut b) = (IoVecBuf::new(), IoVecBuf::new());
        let mut iov = a.start(&view);
        assert!(iov.push(GuestAddress(0xffc), 8)); // two buffers: 4 + 4
        assert!(iov.push(GuestAddress(0x300), 4));
        assert_eq!(iov.copy_from_at(2, b"0123456789abcdef"), 10);
        let mut all = [0u8; 12];
        assert_eq!(iov.copy_to(&mut all), 12);
        assert_eq!(&all[2..], b"0123456789");
        let mut short = [0u8; 3];
        assert_eq!(iov.copy_to(&mut short), 3);
        assert_eq!(short, all[..3]);
        let mut part = b.start(&view);
        assert!(part.push_part_of(&iov, 3, 6));
        assert_eq!((part.len(), part.total()), (3, 6));
        assert_eq!(part.to_vec(), &all[3..9]);
        // Past the end: what there is.
        part.clear();
        assert!(part.push_part_of(&iov, 10, 100));
        assert_eq!(part.to_vec(), &all[10..]);
        // A list on other memory is refused.
        let other_mem = self::mem();
        let other_view = HostView::new(&other_mem);
        let mut c = IoVecBuf::new();
        let mut foreign = c.start(&other_view);
        assert!(!foreign.push_part_of(&iov, 0, 4));
        assert!(foreign.is_empty());
    }

    #[test]
    fn reads_from_a_file_at_an_offset() {
        use std::io::Write;
        let mem = mem();
        let view = HostView::new(&mem);
        let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let mut f = tmp.as_file();
        f.write_all(b"hello world").unwrap();
        let mut buf = IoVecBuf::new();
        let mut iov = buf.start(&view);
        assert!(iov.push(GuestAddress(0xffe), 4));
        assert!(iov.push(GuestAddress(0x100), 10));
        use std::os::fd::AsFd;
        assert_eq!(iov.read_from_at(f.as_fd(), 3).unwrap(), 8);
        assert_eq!(&iov.to_vec()[..8], b"lo world");
        assert!(iov.read_from_at(f.as_fd(), u64::MAX).is_err());
    }

    #[test]
    fn writes_to_a_file_descriptor() {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        let mem = mem();
        mem.write_slice(b"hello world", GuestAddress(0x200)).unwrap();
        let view = HostView::new(&mem);
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors this test owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut buf = IoVecBuf::new();
        let mut iov = buf.start(&view);
        assert!(iov.push(GuestAddress(0x200), 6));
        assert_eq!(iov.write_to(w.as_fd()).unwrap(), 6);
        assert!(iov.push(GuestAddress(0x206), 5));
        assert_eq!(iov.write_to(w.as_fd()).unwrap(), 11);
        let mut out = [0u8; 17];
        let n = std::fs::File::from(r);
        use std::io::Read;
        (&n).read_exact(&mut out).unwrap();
        assert_eq!(&out, b"hello hello world");
    }
}
