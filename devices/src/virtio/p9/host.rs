//! The host system calls behind the 9P server, as small safe wrappers.
//!
//! Every path the guest supplies reaches the host as **one name** (checked
//! by [`Name::new`]: 1 to 255 bytes, no `/`, no NUL, not `.` or `..`)
//! relative to a directory file descriptor the server holds. Lookups go
//! through `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS` and `O_NOFOLLOW`, so no symbolic link is ever
//! followed on the host and nothing resolves outside the directory. The
//! `*at` calls that create, remove or rename (`mkdirat`, `symlinkat`,
//! `mknodat`, `unlinkat`, `renameat`, `linkat` without
//! `AT_SYMLINK_FOLLOW` on the new name) never follow a final symbolic link
//! either, and a single name has no other component to follow.
//!
//! The only magic links used are the server's own: `/proc/self/fd/N` of a
//! file descriptor the server already holds (opened once, before any
//! chroot), to reopen an `O_PATH` descriptor for I/O, to change its mode
//! or times, and as the source of a hard link. None of those names comes
//! from the guest.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::Errno;

/// Longest name the server accepts (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
/// How every lookup of a guest-supplied name resolves.
pub const RESOLVE_STRICT: u64 = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// One validated path component, NUL-terminated for the kernel.
#[derive(Debug)]
pub struct Name(CString);

impl Name {
    /// Checks a guest-supplied name: 1 to 255 bytes, no `/`, no NUL, not
    /// `.` or `..`.
    pub fn new(raw: &[u8]) -> Result<Name, Errno> {
        if raw.is_empty() || raw == b"." || raw == b".." {
            return Err(Errno(libc::EINVAL));
        }
        if raw.len() > NAME_MAX {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        if raw.contains(&b'/') {
            return Err(Errno(libc::EINVAL));
        }
        CString::new(raw).map(Name).map_err(|_| Errno(libc::EINVAL))
    }

    /// The name without its NUL.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn ptr(&self) -> *const libc::c_char {
        self.0.as_ptr()
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Retries `f` while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned
    // by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `openat2(dir, path, flags | O_CLOEXEC, mode, resolve)`.
pub fn openat2(dir: BorrowedFd<'_>, path: &std::ffi::CStr, flags: i32, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u32 as u64, mode: u64::from(mode), resolve };
    retry(|| {
        // SAFETY: `how` and `path` outlive the call; the kernel reads
        // `size_of::<OpenHow>()` bytes of `how`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        cvt(ret as libc::c_int).map(owned)
    })
}

/// Looks up one name in `dir` under [`RESOLVE_STRICT`] with `O_NOFOLLOW`:
/// a symbolic link is returned as itself (with `O_PATH`) or refused.
pub fn lookup(dir: BorrowedFd<'_>, name: &Name, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    openat2(dir, name.0.as_c_str(), flags | libc::O_NOFOLLOW, mode, RESOLVE_STRICT)
}

/// Opens a directory path relative to `root` (components joined by `/`,
/// each one checked when it was walked) with [`RESOLVE_STRICT`], as
/// `O_PATH`. An empty path is `root` itself.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let path = if rel.is_empty() { CString::new(".") } else { CString::new(rel) }
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    openat2(root, &path, libc::O_PATH | libc::O_NOFOLLOW, 0, RESOLVE_STRICT)
}

/// Whether the running kernel has `openat2(2)` (Linux 5.6+).
pub fn has_openat2(dir: BorrowedFd<'_>) -> bool {
    !matches!(
        openat2(dir, c".", libc::O_PATH, 0, RESOLVE_STRICT),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS)
    )
}

/// The attributes of `fd` itself (a symbolic link is not followed).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH refers to
    // `fd`; `st` is a valid buffer.
    cvt(unsafe {
        libc::fstatat(fd.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
    })?;
    Ok(st)
}

/// File system statistics of the file system holding `fd`.
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statfs> {
    // SAFETY: an all-zero `statfs` is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer; fstatfs accepts O_PATH descriptors.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// `/proc/self/fd`, opened once so that the server's own descriptors can
/// be reopened (even after a chroot without /proc).
#[derive(Debug)]
pub struct ProcFds(OwnedFd);

impl ProcFds {
    /// Opens `/proc/self/fd`.
    pub fn open() -> io::Result<ProcFds> {
        // SAFETY: a NUL-terminated constant path.
        let fd =
            cvt(unsafe { libc::open(c"/proc/self/fd".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        Ok(ProcFds(owned(fd)))
    }

    fn entry(fd: RawFd) -> CString {
        // Digits only: never contains a NUL.
        CString::new(fd.to_string()).unwrap_or_default()
    }

    /// Reopens the server's own `fd` with `flags` (never `O_CREAT`, and
    /// without `O_NOFOLLOW`, which would refuse the magic link itself). The
    /// caller has checked that `fd` is a regular file or a directory.
    pub fn reopen(&self, fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
        let name = Self::entry(fd.as_raw_fd());
        retry(|| {
            // SAFETY: a NUL-terminated path relative to our /proc/self/fd.
            cvt(unsafe {
                libc::openat(
                    self.0.as_raw_fd(),
                    name.as_ptr(),
                    (flags | libc::O_CLOEXEC) & !(libc::O_CREAT | libc::O_NOFOLLOW),
                )
            })
            .map(owned)
        })
    }

    /// `chmod` of the file behind the server's own `fd`.
    pub fn chmod(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        let name = Self::entry(fd.as_raw_fd());
        // SAFETY: a NUL-terminated path relative to our /proc/self/fd.
        cvt(unsafe { libc::fchmodat(self.0.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
    }

    /// `utimensat` of the file behind the server's own `fd`.
    pub fn utimens(&self, fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
        let name = Self::entry(fd.as_raw_fd());
        // SAFETY: a NUL-terminated path and a two-element array.
        cvt(unsafe { libc::utimensat(self.0.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) }).map(drop)
    }

    /// Creates the hard link `dir/name` to the file behind the server's own
    /// `fd`.
    pub fn link(&self, fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &Name) -> io::Result<()> {
        let src = Self::entry(fd.as_raw_fd());
        // SAFETY: NUL-terminated paths. AT_SYMLINK_FOLLOW follows only the
        // magic link of our own descriptor to its file; the new name is
        // one component and never followed.
        cvt(unsafe {
            libc::linkat(self.0.as_raw_fd(), src.as_ptr(), dir.as_raw_fd(), name.ptr(), libc::AT_SYMLINK_FOLLOW)
        })
        .map(drop)
    }
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &Name, mode: u32) -> io::Result<()> {
    // SAFETY: a NUL-terminated single-component name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.ptr(), mode) }).map(drop)
}

/// `symlinkat(target, dir, name)`; the target is stored, never resolved.
pub fn symlinkat(target: &[u8], dir: BorrowedFd<'_>, name: &Name) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.ptr()) }).map(drop)
}

/// `mknodat(dir, name, mode, 0)`: the caller allows only FIFOs, sockets
/// and regular files.
pub fn mknodat(dir: BorrowedFd<'_>, name: &Name, mode: u32) -> io::Result<()> {
    // SAFETY: a NUL-terminated single-component name.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.ptr(), mode, 0) }).map(drop)
}

/// `unlinkat(dir, name, flags)`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &Name, flags: i32) -> io::Result<()> {
    // SAFETY: a NUL-terminated single-component name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.ptr(), flags) }).map(drop)
}

/// `renameat(olddir, oldname, newdir, newname)`.
pub fn renameat(olddir: BorrowedFd<'_>, oldname: &Name, newdir: BorrowedFd<'_>, newname: &Name) -> io::Result<()> {
    // SAFETY: NUL-terminated single-component names.
    cvt(unsafe { libc::renameat(olddir.as_raw_fd(), oldname.ptr(), newdir.as_raw_fd(), newname.ptr()) }).map(drop)
}

/// The target of the symbolic link `fd` (an `O_PATH` descriptor of the
/// link itself), at most `max` bytes.
pub fn readlink(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize) -> io::Result<()> {
    buf.clear();
    buf.resize(max + 1, 0);
    // SAFETY: `buf` has `max + 1` writable bytes; the empty path refers
    // to `fd` (Linux 2.6.39+).
    let n = cvt_size(unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), max + 1) })?;
    if n > max {
        buf.clear();
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(())
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`;
/// `u32::MAX` leaves an id unchanged.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH refers to
    // `fd` itself.
    cvt(unsafe {
        libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
    })
    .map(drop)
}

/// `ftruncate(fd, size)`.
pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    retry(|| {
        // SAFETY: plain syscall on a descriptor we own.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) }).map(drop)
    })
}

/// `fsync` or `fdatasync`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    retry(|| {
        // SAFETY: plain syscalls on a descriptor we own.
        cvt(unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        })
        .map(drop)
    })
}

/// `pread(fd, buf, offset)` into a host buffer.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    retry(|| {
        // SAFETY: `buf` is a valid writable buffer of its length.
        cvt_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
    })
}

/// `pwrite(fd, buf, offset)`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    retry(|| {
        // SAFETY: `buf` is a valid buffer of its length.
        cvt_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) })
    })
}

/// Positions a directory stream at `offset` (a `d_off` it returned, or 0).
pub fn seek_dir(fd: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, libc::SEEK_SET) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getdents64(fd, buf)`: fills `buf` with `linux_dirent64` records.
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is a valid writable buffer of its length.
        let r = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        cvt_size(r as isize)
    })
}

/// One `linux_dirent64` record: (inode, next offset, `d_type`, name).
pub fn parse_dirent(buf: &[u8]) -> Option<(u64, u64, u8, &[u8], usize)> {
    if buf.len() < 19 {
        return None;
    }
    let ino = u64::from_le_bytes(buf[0..8].try_into().ok()?);
    let off = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let reclen = usize::from(u16::from_le_bytes([buf[16], buf[17]]));
    let ty = buf[18];
    if reclen < 19 || reclen > buf.len() {
        return None;
    }
    let name = &buf[19..reclen];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some((ino, off, ty, &name[..end], reclen))
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}
