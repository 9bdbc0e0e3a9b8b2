//! Disk images for the virtio-blk targets.
//!
//! Each image is a memfd (reached by path as `/proc/self/fd/N`, which is
//! what `BlockConfig` wants): nothing to clean up when the fuzzer exits,
//! no file-system journal or disk flush behind `FLUSH` requests, and hole
//! punching supported. Where memfd is unavailable a file in the temporary
//! directory is used instead.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Size of every image: 128 sectors.
pub const IMAGE_SIZE: u64 = 64 << 10;
/// Sectors in an image.
pub const SECTORS: u64 = IMAGE_SIZE / 512;

/// The initial content of byte `i` of an image.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ 0x5a
}

/// A fresh, empty scratch file reachable by path: a memfd
/// (`/proc/self/fd/N`), or where memfd is unavailable a file named after
/// `tag` in the temporary directory.
pub fn scratch_file(tag: &str) -> (File, PathBuf) {
    let name = std::ffi::CString::new(format!("ember-fuzz-{tag}")).unwrap();
    // SAFETY: a valid C string; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: a fresh fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        return (file, PathBuf::from(format!("/proc/self/fd/{fd}")));
    }
    let path = std::env::temp_dir().join(format!("ember-fuzz-{}-{tag}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    (file, path)
}

/// One disk image and its pristine content.
pub struct Image {
    file: File,
    path: PathBuf,
    original: Vec<u8>,
}

impl Image {
    fn new(tag: &str) -> Image {
        let original: Vec<u8> = (0..IMAGE_SIZE).map(pattern).collect();
        let (file, path) = scratch_file(tag);
        file.write_all_at(&original, 0).expect("write image");
        Image { file, path, original }
    }

    /// The path to open the image by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current size in bytes (`st_size` of an `fstat`: the targets
    /// ask after every operation, and `File::metadata`'s `statx` of an
    /// empty path with every field was an eighth of `pci_registers`' time).
    pub fn size(&self) -> u64 {
        // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fstat` on an fd this object owns, writing the `stat` it is given.
        let rc = unsafe { libc::fstat(self.file.as_raw_fd(), &mut st) };
        assert_eq!(rc, 0, "stat image: {}", std::io::Error::last_os_error());
        st.st_size as u64
    }

    /// Whether the content is still the pristine one.
    pub fn unchanged(&self) -> bool {
        let mut buf = vec![0u8; self.original.len()];
        self.file.read_exact_at(&mut buf, 0).expect("read image");
        buf == self.original
    }

    /// The end-of-run checks of the virtio-blk targets: the size never
    /// changes, a read-only image's content never changes; a read-write
    /// image gets its pristine content back for the next run.
    pub fn check_and_restore(&self, readonly: bool) {
        assert_eq!(self.size(), IMAGE_SIZE, "image size changed");
        if readonly {
            assert!(self.unchanged(), "read-only image was modified");
        } else {
            self.restore();
        }
    }

    /// Puts the pristine content back (the size is left alone, so a change
    /// of size stays visible to [`Image::size`]).
    pub fn restore(&self) {
        self.file.write_all_at(&self.original, 0).expect("restore image");
    }
}

/// The two images of a process: one served read-write, one read-only.
pub struct Images {
    /// Served read-write; restored after every run that used it.
    pub rw: Image,
    /// Served read-only; must never change.
    pub ro: Image,
}

/// The process-wide images.
pub fn shared() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| Images { rw: Image::new("rw"), ro: Image::new("ro") })
}
