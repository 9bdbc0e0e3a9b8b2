//! virtio-blk (virtio 1.x §5.2) on a raw image file.
//!
//! One request queue. Supported requests: `IN`, `OUT`, `FLUSH`, `GET_ID`,
//! `DISCARD` and `WRITE_ZEROES`; anything else completes with
//! `VIRTIO_BLK_S_UNSUPP`. Every request is bounds-checked against the image
//! size before the file is touched, so the image never grows.
//!
//! Descriptor chains are guest input and treated as hostile. Any layout is
//! accepted (`VIRTIO_F_ANY_LAYOUT` is implied by `VERSION_1`): the
//! device-readable descriptors form one byte stream (the 16-byte header, then
//! `OUT` data or a discard/write-zeroes segment), the device-writable ones
//! another (`IN` or `GET_ID` data, then the status byte, which is the last
//! byte of the last descriptor). Readable descriptors after a writable one, a
//! short header, data in the wrong direction, a buffer outside guest memory
//! or an out-of-range sector complete with `VIRTIO_BLK_S_IOERR` and never
//! reach the file. A chain with no room for a status byte is consumed with a
//! used length of 0 and logged.
//!
//! Chains are walked by `chain::ChainWalker`, which applies virtio-queue's
//! bounds (a `next` loop ends after `queue size` descriptors, one level of
//! indirection) and is checked against virtio-queue's `DescriptorChain` in
//! its tests, but reads descriptors through a flat host view of guest memory
//! (`host_view::HostView`), as do the ring accesses of virtio-queue here.
//! The I/O itself is done by a small synchronous engine (`disk::SyncDisk`),
//! the seam where an io_uring engine could replace it. The request path
//! does not allocate and does not log on success.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use log::{error, warn};
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::chain::{ChainWalker, RawDesc};
use super::disk::SyncDisk;
use super::host_view::HostView;
use super::iovec::{IoVecBuf, IoVecs};
use super::{ActivateError, LogBudget, QueueSet, VirtioDevice};
use crate::GuestMemoryMmap;

/// Size of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The logical block size in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the `GET_ID` answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

const SECTOR_SHIFT: u32 = 9;
const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: u64 = 16;
/// Data segments per request advertised in `seg_max`.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Descriptors one request may use (header + data + status, or an indirect
/// table up to this length).
const MAX_DESCS: usize = 1024;
const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Bounded so that the write-zeroes fallback (writing actual zeroes) keeps
/// the event loop responsive.
const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// Discard granularity, in sectors (4 KiB).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// How to open a disk image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image file (or block device).
    pub path: PathBuf,
    /// Open read-only and offer `VIRTIO_BLK_F_RO`.
    pub readonly: bool,
    /// The serial answered to `GET_ID` (at most 20 bytes); the image's file
    /// name, truncated, when absent.
    pub id: Option<String>,
}

/// Why a disk image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image path does not exist.
    #[error("disk image {} does not exist", path.display())]
    NotFound {
        /// The image path.
        path: PathBuf,
    },
    /// The image path is a directory.
    #[error("disk image {} is a directory", path.display())]
    IsDirectory {
        /// The image path.
        path: PathBuf,
    },
    /// The image size is not a whole number of 512-byte sectors.
    #[error("disk image {} is {size} bytes, not a multiple of 512", path.display())]
    BadSize {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The image cannot be opened for writing.
    #[error("disk image {} cannot be opened for writing ({source}); use readonly=on", path.display())]
    ReadOnlyImage {
        /// The image path.
        path: PathBuf,
        /// The open error (permission denied or read-only file system).
        source: io::Error,
    },
    /// Any other error opening or inspecting the image.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The disk id does not fit the 20-byte `GET_ID` answer.
    #[error("disk id {id:?} is {} bytes; at most 20 are allowed", id.len())]
    IdTooLong {
        /// The id given.
        id: String,
    },
}

/// One descriptor of a request chain, as read from guest memory.
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    write: bool,
}

impl From<RawDesc> for Desc {
    fn from(d: RawDesc) -> Self {
        Desc { addr: d.addr, len: d.len, write: d.is_write_only() }
    }
}

/// Calls `f` for each guest range of bytes `[skip, skip + take)` of the
/// byte stream formed by `descs`. Stops and returns `false` when `f` does.
fn for_each_range(
    descs: &[Desc],
    mut skip: u64,
    mut take: u64,
    mut f: impl FnMut(GuestAddress, usize) -> bool,
) -> bool {
    for d in descs {
        if take == 0 {
            break;
        }
        let len = u64::from(d.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        let Some(addr) = d.addr.checked_add(skip) else {
            return false;
        };
        if !f(addr, n as usize) {
            return false;
        }
        skip = 0;
        take -= n;
    }
    take == 0
}

/// Fills `iov` with the guest buffers of bytes `[skip, skip + take)` of the
/// stream formed by `descs`; `false` if any byte is outside guest memory or
/// the scatter list overflows.
fn map_ranges(iov: &mut IoVecs<'_>, descs: &[Desc], skip: u64, take: u64) -> bool {
    iov.clear();
    for_each_range(descs, skip, take, |addr, len| iov.push(addr, len)) && iov.total() as u64 == take
}

/// The outcome of one request: the status byte and the bytes written into
/// device-writable data buffers (the status byte not included).
struct Completion {
    status: u8,
    written: u32,
}

impl Completion {
    const fn ok(written: u32) -> Self {
        Completion { status: VIRTIO_BLK_S_OK as u8, written }
    }
    const fn ioerr(written: u32) -> Self {
        Completion { status: VIRTIO_BLK_S_IOERR as u8, written }
    }
    const fn unsupp() -> Self {
        Completion { status: VIRTIO_BLK_S_UNSUPP as u8, written: 0 }
    }
}

/// The request-serving half of the device: the image and scratch space.
struct Backend {
    disk: SyncDisk,
    readonly: bool,
    /// Image size in bytes (a multiple of 512).
    size: u64,
    id: [u8; ID_BYTES],
    descs: Vec<Desc>,
    iov: IoVecBuf,
    bad_chain_log: LogBudget,
    io_error_log: LogBudget,
}

impl Backend {
    /// The byte offset of `len` bytes at `sector`, if they lie inside the
    /// image.
    fn check_bounds(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.size).then_some(offset)
    }

    fn log_bad_chain(&mut self, head: u16, why: &str) {
        if self.bad_chain_log.take("virtio-blk: malformed descriptor chain") {
            warn!("virtio-blk: descriptor chain {head}: {why}");
        }
    }

    fn log_io_error(&mut self, what: &str, err: &io::Error) {
        if self.io_error_log.take("virtio-blk: I/O error") {
            error!("virtio-blk: {what} failed: {err}");
        }
    }

    /// Serves one descriptor chain; returns the used length for the used
    /// ring (0 when there was no place for a status byte).
    fn handle_chain(&mut self, mem: &GuestMemoryMmap, view: &HostView, head: u16, chain: ChainWalker<'_>) -> u32 {
        self.descs.clear();
        let mut last: Option<Desc> = None;
        let mut too_long = false;
        let mut misordered = false;
        let mut seen_writable = false;
        for d in chain {
            let d = Desc::from(d);
            if d.write {
                seen_writable = true;
            } else if seen_writable {
                misordered = true;
            }
            if self.descs.len() < MAX_DESCS {
                self.descs.push(d);
            } else {
                too_long = true;
            }
            last = Some(d);
        }

        // The status byte is the last byte of the last descriptor, which
        // must be device-writable and inside guest memory.
        let status_addr = match last {
            Some(d) if d.write && d.len > 0 => {
                d.addr.checked_add(u64::from(d.len) - 1).filter(|a| view.ptr(*a, 1).is_some())
            }
            _ => None,
        };
        let Some(status_addr) = status_addr else {
            self.log_bad_chain(head, "no device-writable status byte; dropped");
            return 0;
        };

        let done = if too_long {
            self.log_bad_chain(head, "too many descriptors");
            Completion::ioerr(0)
        } else if misordered {
            self.log_bad_chain(head, "device-readable descriptor after a writable one");
            Completion::ioerr(0)
        } else {
            self.serve(mem, view, head)
        };

        // Checked above, and written last.
        view.write_u8(status_addr, done.status);
        done.written + 1
    }

    /// Serves a well-formed chain (in `self.descs`, the status byte being
    /// the last byte of the last descriptor).
    fn serve(&mut self, mem: &GuestMemoryMmap, view: &HostView, head: u16) -> Completion {
        let nread = self.descs.iter().take_while(|d| !d.write).count();
        let (rd, wr) = self.descs.split_at(nread);
        let rd_len: u64 = rd.iter().map(|d| u64::from(d.len)).sum();
        // At least the status byte, checked by the caller.
        let wr_len: u64 = wr.iter().map(|d| u64::from(d.len)).sum::<u64>() - 1;

        let hdr = match read_header(mem, view, rd) {
            Some(h) if rd_len >= HEADER_LEN => h,
            _ => {
                self.log_bad_chain(head, "request header short or outside guest memory");
                return Completion::ioerr(0);
            }
        };
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
        let rd_data = rd_len - HEADER_LEN;

        match req_type {
            VIRTIO_BLK_T_IN => {
                if rd_data != 0 {
                    self.log_bad_chain(head, "IN request with device-readable data");
                    return Completion::ioerr(0);
                }
                let len = wr_len;
                let Some(offset) = self.check_data(sector, len) else {
                    return Completion::ioerr(0);
                };
                let mut iov = self.iov.start(view);
                if !map_ranges(&mut iov, wr, 0, len) {
                    drop(iov);
                    self.log_bad_chain(head, "IN buffer outside guest memory");
                    return Completion::ioerr(0);
                }
                let (n, err) = self.disk.read_vectored_at(&mut iov, offset);
                drop(iov);
                // `n` <= len <= u32::MAX: a chain is at most 4 GiB long.
                match err {
                    None => Completion::ok(n as u32),
                    Some(e) => {
                        self.log_io_error("read", &e);
                        Completion::ioerr(n as u32)
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                if wr_len != 0 {
                    self.log_bad_chain(head, "OUT request with a device-writable data buffer");
                    return Completion::ioerr(0);
                }
                if self.readonly {
                    return Completion::ioerr(0);
                }
                let len = rd_data;
                let Some(offset) = self.check_data(sector, len) else {
                    return Completion::ioerr(0);
                };
                let mut iov = self.iov.start(view);
                if !map_ranges(&mut iov, rd, HEADER_LEN, len) {
                    drop(iov);
                    self.log_bad_chain(head, "OUT buffer outside guest memory");
                    return Completion::ioerr(0);
                }
                let (_, err) = self.disk.write_vectored_at(&mut iov, offset);
                drop(iov);
                match err {
                    None => Completion::ok(0),
                    Some(e) => {
                        self.log_io_error("write", &e);
                        Completion::ioerr(0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.disk.flush() {
                Ok(()) => Completion::ok(0),
                Err(e) => {
                    self.log_io_error("flush", &e);
                    Completion::ioerr(0)
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = wr_len.min(ID_BYTES as u64) as usize;
                let id = self.id;
                let mut pos = 0;
                let ok = for_each_range(wr, 0, n as u64, |addr, len| {
                    let r = mem.write_slice(&id[pos..pos + len], addr).is_ok();
                    pos += len;
                    r
                });
                if ok {
                    Completion::ok(n as u32)
                } else {
                    self.log_bad_chain(head, "GET_ID buffer outside guest memory");
                    Completion::ioerr(0)
                }
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard_or_zero(mem, view, head, req_type, rd_data, wr_len)
            }
            _ => Completion::unsupp(),
        }
    }

    /// Validates an `IN`/`OUT` transfer of `len` bytes at `sector`; the
    /// byte offset when valid.
    fn check_data(&self, sector: u64, len: u64) -> Option<u64> {
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        self.check_bounds(sector, len)
    }

    fn discard_or_zero(
        &mut self,
        mem: &GuestMemoryMmap,
        view: &HostView,
        head: u16,
        req_type: u32,
        rd_data: u64,
        wr_len: u64,
    ) -> Completion {
        if wr_len != 0 || rd_data != SEGMENT_LEN {
            // One segment (max_discard_seg = max_write_zeroes_seg = 1) and
            // no device-writable data.
            self.log_bad_chain(head, "discard/write-zeroes request with a bad segment list");
            return Completion::ioerr(0);
        }
        if self.readonly {
            return Completion::ioerr(0);
        }
        let nread = self.descs.iter().take_while(|d| !d.write).count();
        let mut seg = [0u8; SEGMENT_LEN as usize];
        if !read_stream(mem, view, &self.descs[..nread], HEADER_LEN, &mut seg) {
            self.log_bad_chain(head, "discard/write-zeroes segment outside guest memory");
            return Completion::ioerr(0);
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (req_type == VIRTIO_BLK_T_DISCARD && unmap) {
            return Completion::unsupp();
        }
        let max = if req_type == VIRTIO_BLK_T_DISCARD { MAX_DISCARD_SECTORS } else { MAX_WRITE_ZEROES_SECTORS };
        if num > max {
            return Completion::ioerr(0);
        }
        let len = u64::from(num) << SECTOR_SHIFT;
        let Some(offset) = self.check_bounds(sector, len) else {
            return Completion::ioerr(0);
        };
        if len == 0 {
            return Completion::ok(0);
        }
        let res = if req_type == VIRTIO_BLK_T_DISCARD {
            match self.disk.punch_hole(offset, len) {
                // Discard is a hint; a file system without hole punching
                // simply keeps the data.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => Ok(()),
                r => r,
            }
        } else {
            self.disk.write_zeroes(offset, len, unmap)
        };
        match res {
            Ok(()) => Completion::ok(0),
            Err(e) => {
                self.log_io_error("discard/write-zeroes", &e);
                Completion::ioerr(0)
            }
        }
    }
}

/// Reads `buf.len()` bytes at `skip` of the byte stream formed by `descs`.
fn read_stream(mem: &GuestMemoryMmap, view: &HostView, descs: &[Desc], skip: u64, buf: &mut [u8]) -> bool {
    let mut pos = 0;
    for_each_range(descs, skip, buf.len() as u64, |addr, len| {
        let dst = &mut buf[pos..pos + len];
        pos += len;
        match view.ptr(addr, len as u64) {
            Some(p) => {
                // SAFETY: `len` bytes of guest memory into a local buffer.
                unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), len) };
                true
            }
            None => mem.read_slice(dst, addr).is_ok(),
        }
    })
}

/// Reads the 16-byte request header: one volatile read in the usual case
/// of a header descriptor of its own.
fn read_header(mem: &GuestMemoryMmap, view: &HostView, rd: &[Desc]) -> Option<[u8; 16]> {
    if let Some(d) = rd.first().filter(|d| u64::from(d.len) >= HEADER_LEN) {
        if let Some(h) = view.read_bytes::<16>(d.addr) {
            return Some(h);
        }
    }
    let mut h = [0u8; 16];
    read_stream(mem, view, rd, 0, &mut h).then_some(h)
}

/// State that exists while the driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    view: HostView,
    queue: Queue,
}

/// The virtio-blk device model.
pub struct Block {
    backend: Backend,
    avail_features: u64,
    acked_features: u64,
    config: [u8; std::mem::size_of::<virtio_blk_config>()],
    queue_sizes: [u16; 1],
    active: Option<Active>,
    /// (head, used length) of the chains served in one pass, completed
    /// after it; at most a queue's worth, so it never reallocates.
    completed: Vec<(u16, u32)>,
    queue_error_log: LogBudget,
    config_write_log: LogBudget,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.backend.size)
            .field("readonly", &self.backend.readonly)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// Maps an error opening the image at `path` to the [`BlockError`] a user
/// can act on.
fn open_error(path: &Path, readonly: bool, source: io::Error) -> BlockError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) => BlockError::NotFound { path },
        Some(libc::EISDIR) => BlockError::IsDirectory { path },
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) if !readonly => {
            BlockError::ReadOnlyImage { path, source }
        }
        _ => BlockError::Open { path, source },
    }
}

fn open_image(cfg: &BlockConfig) -> Result<File, BlockError> {
    OpenOptions::new()
        .read(true)
        .write(!cfg.readonly)
        .open(&cfg.path)
        .map_err(|e| open_error(&cfg.path, cfg.readonly, e))
}

fn default_id(path: &Path) -> [u8; ID_BYTES] {
    use std::os::unix::ffi::OsStrExt;
    let mut id = [0u8; ID_BYTES];
    if let Some(name) = path.file_name() {
        let name = name.as_bytes();
        let n = name.len().min(ID_BYTES);
        id[..n].copy_from_slice(&name[..n]);
    }
    id
}

impl Block {
    /// Opens the image described by `cfg` (read-only when
    /// `cfg.readonly`).
    pub fn new(cfg: &BlockConfig) -> Result<Block, BlockError> {
        let id = match &cfg.id {
            Some(id) if id.len() > ID_BYTES => {
                return Err(BlockError::IdTooLong { id: id.clone() });
            }
            Some(id) => {
                let mut buf = [0u8; ID_BYTES];
                buf[..id.len()].copy_from_slice(id.as_bytes());
                buf
            }
            None => default_id(&cfg.path),
        };
        let mut file = open_image(cfg)?;
        let open_err = |source| BlockError::Open { path: cfg.path.clone(), source };
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(BlockError::IsDirectory { path: cfg.path.clone() });
        }
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::BadSize { path: cfg.path.clone(), size });
        }

        let mut avail_features = (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_DISCARD)
            | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        if cfg.readonly {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }

        Ok(Block {
            backend: Backend {
                disk: SyncDisk::new(file),
                readonly: cfg.readonly,
                size,
                id,
                descs: Vec::with_capacity(MAX_DESCS),
                iov: IoVecBuf::new(),
                bad_chain_log: LogBudget::new(32),
                io_error_log: LogBudget::new(32),
            },
            avail_features,
            acked_features: 0,
            config: build_config(size >> SECTOR_SHIFT),
            queue_sizes: [QUEUE_SIZE],
            active: None,
            completed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            queue_error_log: LogBudget::new(8),
            config_write_log: LogBudget::new(4),
        })
    }

    /// The image size in bytes.
    pub fn size(&self) -> u64 {
        self.backend.size
    }

    /// The 20-byte serial answered to `GET_ID`.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.backend.id
    }
}

fn build_config(capacity: u64) -> [u8; std::mem::size_of::<virtio_blk_config>()] {
    let cfg = virtio_blk_config {
        capacity: capacity.to_le(),
        size_max: 0,
        seg_max: SEG_MAX.to_le(),
        blk_size: (SECTOR_SIZE as u32).to_le(),
        max_discard_sectors: MAX_DISCARD_SECTORS.to_le(),
        max_discard_seg: 1u32.to_le(),
        discard_sector_alignment: DISCARD_SECTOR_ALIGNMENT.to_le(),
        max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS.to_le(),
        max_write_zeroes_seg: 1u32.to_le(),
        write_zeroes_may_unmap: 1,
        ..Default::default()
    };
    let mut bytes = [0u8; std::mem::size_of::<virtio_blk_config>()];
    // SAFETY: virtio_blk_config is a packed plain-old-data struct of
    // integers, exactly `bytes.len()` long.
    unsafe {
        std::ptr::copy_nonoverlapping((&cfg as *const virtio_blk_config).cast::<u8>(), bytes.as_mut_ptr(), bytes.len());
    }
    bytes
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= self.config.len() {
            return;
        }
        let n = data.len().min(self.config.len() - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_write_log.take("virtio-blk: config write") {
            warn!("virtio-blk: ignoring {}-byte write to read-only config space at {offset:#x}", data.len());
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, mut queues: Vec<Queue>) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: queues.len() });
        }
        let queue = queues.remove(0);
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(Active { view: HostView::new(&mem), mem, queue });
        Ok(())
    }

    fn process_queue(&mut self, idx: usize) -> QueueSet {
        let Block { backend, active, queue_error_log, completed, .. } = self;
        let Some(Active { mem, view, queue }) = active.as_mut() else {
            return QueueSet::EMPTY;
        };
        // The ring and descriptor code of virtio-queue runs on the flat host
        // view; it is the same memory as `mem`.
        let (mem, view) = (&*mem, &*view);
        if idx != 0 || !queue.ready() {
            return QueueSet::EMPTY;
        }
        let mut used = false;
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > super::MAX_QUEUE_ROUNDS {
                if queue_error_log.take("virtio-blk: queue error") {
                    error!("virtio-blk: request queue keeps refilling itself; leaving it until the next notification");
                }
                break;
            }
            if queue.disable_notification(view).is_err() {
                // The used ring was checked at QueueReady; nothing sensible
                // can be done if it is not writable now.
                break;
            }
            // Serve every chain published so far in one pass over the
            // available ring (at most the queue size, bounded by
            // virtio-queue), then complete them in order.
            let (table, size) = (queue.desc_table(), queue.size());
            let mut avail = match queue.iter(view) {
                Ok(avail) => avail,
                Err(e) => {
                    // A driver publishing a bogus avail index; stop rather
                    // than spin on the same error.
                    if queue_error_log.take("virtio-blk: queue error") {
                        error!("virtio-blk: request queue: {e}");
                    }
                    break;
                }
            };
            for chain in &mut avail {
                // virtio-queue hands out the head; the walk itself reads
                // descriptors through the host view with virtio-queue's
                // bounds (see `chain`).
                let head = chain.head_index();
                let walker = ChainWalker::new(view, table, size, head);
                let len = backend.handle_chain(mem, view, head, walker);
                completed.push((head, len));
            }
            for (head, len) in completed.drain(..) {
                match queue.add_used(view, head, len) {
                    Ok(()) => used = true,
                    Err(e) => {
                        if queue_error_log.take("virtio-blk: queue error") {
                            error!("virtio-blk: cannot complete descriptor {head}: {e}");
                        }
                    }
                }
            }
            match queue.enable_notification(view) {
                Ok(true) => continue,
                _ => break,
            }
        }
        QueueSet::of_if(0, used && queue.needs_notification(view).unwrap_or(true))
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests;
