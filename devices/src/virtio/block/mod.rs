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
//! used length of 0 and logged. A request's data may be at most `seg_max`
//! segments ([`SEG_MAX`]) of at most `size_max` bytes ([`SIZE_MAX`]), both
//! offered in the configuration space; a larger one completes with `IOERR`
//! before any I/O. A pass over the queue stops on its budget (chains,
//! bytes, time: [`crate::virtio::MAX_PASS_CHAINS`]) and continues through
//! the transport ([`VirtioDevice::take_unfinished`]).
//!
//! Chains are walked by `chain::ChainWalker`, which applies virtio-queue's
//! bounds (a `next` loop ends after `queue size` descriptors, one level of
//! indirection, and stricter: no indirect table longer than the queue) and is checked against virtio-queue's `DescriptorChain` in
//! its tests, but reads descriptors through a flat host view of guest memory
//! (`host_view::HostView`), as do the ring accesses of virtio-queue here.
//!
//! The device is split by concern:
//!
//! * this module: configuration, features, the configuration space,
//!   activation and reset ([`Block`], [`BlockConfig`], [`BlockError`]);
//! * `request`: a chain parsed once into a typed request, checked against
//!   the image before any I/O;
//! * `handler`: the queue loop, executing parsed requests and completing
//!   them in order;
//! * `engine`: the disk I/O behind a small trait (`DiskEngine`), with a
//!   synchronous positional-I/O engine today; the seam where an io_uring
//!   engine could replace it.
//!
//! The request path does not allocate and does not log on success.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use log::warn;
use virtio_bindings::bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueState, QueueT};

use super::host_view::HostView;
use super::{ActivateError, LogBudget, QueueSet, VirtioDevice};
use crate::GuestMemoryMmap;
use engine::SyncDisk;
use handler::RequestHandler;
use request::{Image, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS};

mod engine;
mod handler;
mod request;

/// Size of the request queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// The logical block size in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the `GET_ID` answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

const SECTOR_SHIFT: u32 = 9;
/// Data segments per request advertised in `seg_max` (and enforced): with
/// the header and the status byte, a chain as long as the queue.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment advertised in `size_max` (and enforced): 64 KiB,
/// Linux's default segment size, so one request moves at most
/// `SEG_MAX * SIZE_MAX` (~16 MiB), within one pass budget
/// ([`crate::virtio::MAX_PASS_BYTES`]).
pub const SIZE_MAX: u32 = 64 << 10;
/// The most data one request may carry: `SEG_MAX` segments of `SIZE_MAX`
/// bytes. Larger requests complete with `IOERR` before any I/O.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
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
    /// The image path is neither a regular file nor a block device (a
    /// FIFO, a socket, a character device).
    #[error("disk image {} is not a regular file or a block device", path.display())]
    NotAnImage {
        /// The image path.
        path: PathBuf,
    },
    /// Another open file holds a lock on the image that conflicts with
    /// this use (a writer excludes every other user; readers share).
    #[error("disk image {} is in use by another process (it holds a lock on it)", path.display())]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// The disk id does not fit the 20-byte `GET_ID` answer.
    #[error("disk id {id:?} is {} bytes; at most 20 are allowed", id.len())]
    IdTooLong {
        /// The id given.
        id: String,
    },
}

/// State that exists while the driver runs the device.
struct Active {
    /// The guest memory (the view keeps it mapped).
    view: HostView,
    queue: Queue,
}

/// The virtio-blk device model.
pub struct Block {
    handler: RequestHandler,
    avail_features: u64,
    acked_features: u64,
    config: [u8; std::mem::size_of::<virtio_blk_config>()],
    queue_sizes: [u16; 1],
    active: Option<Active>,
    config_write_log: LogBudget,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("size", &self.handler.exec.image.size)
            .field("readonly", &self.handler.exec.image.readonly)
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

/// Opens the image: a regular file or a block device, locked (`flock`)
/// exclusively when writable and shared when read-only, so two VMs cannot
/// both write one image nor one read what the other writes. Opened
/// non-blocking, so a FIFO is refused instead of waiting for a writer.
fn open_image(cfg: &BlockConfig) -> Result<File, BlockError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    let path = || cfg.path.clone();
    let file = OpenOptions::new()
        .read(true)
        .write(!cfg.readonly)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&cfg.path)
        .map_err(|e| open_error(&cfg.path, cfg.readonly, e))?;
    let kind = file.metadata().map_err(|source| BlockError::Open { path: path(), source })?.file_type();
    if kind.is_dir() {
        return Err(BlockError::IsDirectory { path: path() });
    }
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(BlockError::NotAnImage { path: path() });
    }
    let fd = file.as_raw_fd();
    let op = if cfg.readonly { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock and fcntl on a descriptor this function owns; no
    // memory is passed.
    if unsafe { libc::flock(fd, op | libc::LOCK_NB) } != 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::EWOULDBLOCK) => BlockError::Locked { path: path() },
            _ => BlockError::Open { path: path(), source },
        });
    }
    // Regular files and block devices ignore O_NONBLOCK; cleared all the
    // same so that I/O is plainly blocking.
    // SAFETY: as above.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(BlockError::Open { path: path(), source: io::Error::last_os_error() });
    }
    Ok(file)
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
            | (1u64 << VIRTIO_BLK_F_SIZE_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_DISCARD)
            | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        if cfg.readonly {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }

        let image = Image { size, readonly: cfg.readonly };
        Ok(Block {
            handler: RequestHandler::new(Box::new(SyncDisk::new(file)), image, id),
            avail_features,
            acked_features: 0,
            config: build_config(size >> SECTOR_SHIFT),
            queue_sizes: [QUEUE_SIZE],
            active: None,
            config_write_log: LogBudget::new(4),
        })
    }

    /// The image size in bytes.
    pub fn size(&self) -> u64 {
        self.handler.exec.image.size
    }

    /// The 20-byte serial answered to `GET_ID`.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.handler.exec.id
    }
}

fn build_config(capacity: u64) -> [u8; std::mem::size_of::<virtio_blk_config>()] {
    let cfg = virtio_blk_config {
        capacity: capacity.to_le(),
        size_max: SIZE_MAX.to_le(),
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
        super::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_write_log.take("virtio-blk: config write") {
            warn!("virtio-blk: ignoring {}-byte write to read-only config space at {offset:#x}", data.len());
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let [queue] = super::ready_queues(self.active.is_some(), queues)?;
        self.active = Some(Active { view: HostView::new(&mem), queue });
        Ok(())
    }

    fn process_queue(&mut self, idx: usize) -> QueueSet {
        let Some(Active { view, queue }) = self.active.as_mut() else {
            return QueueSet::EMPTY;
        };
        if idx != 0 || !queue.ready() {
            return QueueSet::EMPTY;
        }
        // The ring and descriptor code of virtio-queue runs on the flat host
        // view of guest memory.
        QueueSet::of_if(0, self.handler.process_queue(queue, view))
    }

    fn take_unfinished(&mut self) -> QueueSet {
        QueueSet::of_if(0, std::mem::take(&mut self.handler.unfinished))
    }

    /// Requests are served synchronously inside
    /// [`process_queue`](VirtioDevice::process_queue): once the VM is
    /// paused no request is in flight, so the queue is the whole state.
    fn active_queue_states(&self) -> Vec<QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.handler.unfinished = false;
    }
}

#[cfg(test)]
mod tests;
