//! A 9P2000.L file server over one host directory, independent of virtio.
//!
//! [`Server::handle`] takes one T-message as bytes and writes the
//! R-message into a [`ReplyBuf`] (guest memory in the device, a plain byte
//! slice in tests and the fuzz target). It keeps the session: the
//! negotiated `msize` and the fid table, each fid holding one host file
//! descriptor (an `O_PATH` descriptor until `Tlopen`/`Tlcreate` opens it)
//! and its path from the share root.
//!
//! Confinement: a fid is only ever made by `Tattach` (the root) or by
//! walking one component at a time from another fid with
//! `host::lookup` (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`, `O_NOFOLLOW`), so a fid never names anything
//! outside the share, and a symbolic link is only ever a fid of the link
//! itself (read with `Treadlink`; the guest resolves it in its own
//! namespace). `..` is resolved by the server: at the root it stays at the
//! root, elsewhere it reopens the parent path from the root under the same
//! resolve rules. See docs/share.md for the whole security model.
//!
//! Bounds: at most `max_fids` fids, `msize` between [`MIN_MSIZE`] and
//! [`MAX_MSIZE`], names of at most 255 bytes, symlink targets of at most
//! 4095, 16 names per walk; `Tread`/`Treaddir` counts are clipped to the
//! reply room; nothing is allocated beyond `msize` per request.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::host::{self, Name, ProcFds};
use super::wire::{self, msg, Encoder, FrameError, Qid, SetAttr, Tmsg, QTDIR, QTFILE, QTSYMLINK};
use super::Errno;

/// Largest `msize` the server agrees to (the Linux virtio transport caps
/// itself at 500 KiB).
pub const MAX_MSIZE: u32 = 512 * 1024;
/// Smallest `msize` the server agrees to (Linux's own minimum).
pub const MIN_MSIZE: u32 = 4096;
/// Default bound on open fids per session.
pub const DEFAULT_MAX_FIDS: usize = 16384;
/// Longest symbolic link target (Linux `PATH_MAX` less the NUL).
const MAX_SYMLINK: usize = 4095;
/// Longest path from the root a fid may have.
const MAX_REL_PATH: usize = 4095;
/// `statfs` type answered for the share (Linux's `V9FS_MAGIC`).
const V9FS_MAGIC: u32 = 0x0102_1997;
/// `Rgetattr.valid`: the basic fields (Linux `P9_STATS_BASIC`).
const GETATTR_BASIC: u64 = 0x7ff;
/// Bytes of `getdents64` records read per system call.
const DIRENT_BUF: usize = 32 * 1024;

/// `Tsetattr.valid` bits (Linux `P9_ATTR_*`).
mod attr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const ATIME_SET: u32 = 1 << 7;
    pub const MTIME_SET: u32 = 1 << 8;
}

/// `Tlopen`/`Tlcreate` flags (Linux `P9_DOTL_*`, the x86 open flag values).
mod dotl {
    pub const ACCMODE: u32 = 0o3;
    pub const WRONLY: u32 = 0o1;
    pub const EXCL: u32 = 0o200;
    pub const TRUNC: u32 = 0o1000;
    pub const APPEND: u32 = 0o2000;
    pub const DSYNC: u32 = 0o10000;
    pub const DIRECTORY: u32 = 0o200000;
    pub const SYNC: u32 = 0o4000000;
}

/// Where a reply is written: guest memory in the device, a byte slice in
/// tests.
pub trait ReplyBuf {
    /// Bytes the reply may take.
    fn capacity(&self) -> usize;
    /// Copies `data` to offset `off`; `off + data.len()` is within
    /// [`capacity`](ReplyBuf::capacity).
    fn put(&mut self, off: usize, data: &[u8]);
    /// Reads up to `len` bytes of `file` at `file_off` into `[off, off +
    /// len)` (within the capacity); returns the bytes read.
    fn fill_from(&mut self, off: usize, len: usize, file: BorrowedFd<'_>, file_off: u64) -> io::Result<usize>;
}

impl ReplyBuf for [u8] {
    fn capacity(&self) -> usize {
        self.len()
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        self[off..off + data.len()].copy_from_slice(data);
    }

    fn fill_from(&mut self, off: usize, len: usize, file: BorrowedFd<'_>, file_off: u64) -> io::Result<usize> {
        host::pread(file, &mut self[off..off + len], file_off)
    }
}

/// How a fid's descriptor is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    /// An `O_PATH` descriptor: walks, attributes, no I/O.
    Path,
    /// Opened by `Tlopen`/`Tlcreate` with this access mode (`O_RDONLY`,
    /// `O_WRONLY`, `O_RDWR`).
    Io(u32),
}

#[derive(Debug)]
struct Fid {
    fd: OwnedFd,
    open: Open,
    /// Path from the share root, components joined by `/`; empty for the
    /// root. Used for `..`, `Tremove` and `Trename`.
    rel: Vec<u8>,
    /// The user of the attach this fid descends from.
    uid: u32,
}

impl Fid {
    fn readable(&self) -> bool {
        matches!(self.open, Open::Io(m) if m & dotl::ACCMODE != dotl::WRONLY)
    }

    fn writable(&self) -> bool {
        matches!(self.open, Open::Io(m) if m & dotl::ACCMODE != 0)
    }
}

/// Why a share cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The shared directory cannot be opened.
    #[error("cannot open shared directory {}: {source}", path.display())]
    Open {
        /// The directory.
        path: std::path::PathBuf,
        /// The open error.
        source: io::Error,
    },
    /// The host kernel has no `openat2(2)` (Linux 5.6+), which confinement
    /// depends on.
    #[error("the host kernel lacks openat2(2) (Linux 5.6 or later is needed to confine a shared directory)")]
    NoOpenat2,
    /// `/proc/self/fd` is not available.
    #[error("cannot open /proc/self/fd (needed to reopen shared files): {0}")]
    Proc(#[source] io::Error),
}

/// Counters of one server, for tests and the device's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with `Rlerror`.
    pub errors: u64,
    /// Bytes of file data read by `Tread`.
    pub read_bytes: u64,
    /// Bytes of file data written by `Twrite`.
    pub written_bytes: u64,
}

/// A 9P2000.L server for one shared directory (one session).
#[derive(Debug)]
pub struct Server {
    root: OwnedFd,
    proc: ProcFds,
    readonly: bool,
    msize: u32,
    max_fids: usize,
    fids: HashMap<u32, Fid>,
    /// Host `st_dev` values seen, their index goes into qid paths.
    devs: Vec<u64>,
    enc: Vec<u8>,
    dirbuf: Vec<u8>,
    linkbuf: Vec<u8>,
    stats: ServerStats,
}

fn join(rel: &[u8], name: &[u8]) -> Result<Vec<u8>, Errno> {
    if rel.len() + 1 + name.len() > MAX_REL_PATH {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        p.extend_from_slice(rel);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    Ok(p)
}

/// Splits a non-empty relative path into (parent, last component).
fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

fn file_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// Host open flags for guest `Tlopen`/`Tlcreate` flags: the access mode,
/// `O_TRUNC`, `O_APPEND`, `O_DSYNC`, `O_SYNC`, `O_DIRECTORY`; never
/// following a link; `O_DIRECT` and `O_NOATIME` are dropped (alignment of
/// the server's buffers, and ownership checks), `O_CREAT`/`O_EXCL` handled
/// by the caller.
fn host_flags(flags: u32) -> i32 {
    let keep = dotl::ACCMODE | dotl::TRUNC | dotl::APPEND | dotl::DSYNC | dotl::SYNC | dotl::DIRECTORY;
    (flags & keep) as i32 | libc::O_NOFOLLOW | libc::O_CLOEXEC
}

/// Mode bits the guest may set on a file: permissions and the sticky bit;
/// set-user-ID and set-group-ID are stripped from files so the guest
/// cannot plant set-id programs on the host (kept for directories, where
/// set-group-ID means group inheritance).
fn allowed_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir {
        mode & 0o3777
    } else {
        mode & 0o1777
    }
}

impl Server {
    /// Serves the directory `root`; `readonly` refuses every request that
    /// would change it with `EROFS`.
    pub fn new(root: &Path, readonly: bool) -> Result<Server, ServerError> {
        let open_err = |source| ServerError::Open { path: root.to_path_buf(), source };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(root)
            .map_err(open_err)?;
        let root_fd = OwnedFd::from(dir);
        if !host::has_openat2(root_fd.as_fd()) {
            return Err(ServerError::NoOpenat2);
        }
        let proc = ProcFds::open().map_err(ServerError::Proc)?;
        let root_dev = host::fstat(root_fd.as_fd()).map_err(open_err)?.st_dev;
        Ok(Server {
            root: root_fd,
            proc,
            readonly,
            msize: MAX_MSIZE,
            max_fids: DEFAULT_MAX_FIDS,
            fids: HashMap::new(),
            devs: vec![root_dev],
            enc: Vec::with_capacity(MIN_MSIZE as usize),
            dirbuf: vec![0; DIRENT_BUF],
            linkbuf: Vec::with_capacity(MAX_SYMLINK + 1),
            stats: ServerStats::default(),
        })
    }

    /// Bounds the number of fids a session may hold (at least 1).
    pub fn set_max_fids(&mut self, n: usize) {
        self.max_fids = n.max(1);
    }

    /// The negotiated `msize` ([`MAX_MSIZE`] before `Tversion`).
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// Fids currently held.
    pub fn fid_count(&self) -> usize {
        self.fids.len()
    }

    /// Whether the share is read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Drops every fid (device reset).
    pub fn reset(&mut self) {
        self.fids.clear();
        self.msize = MAX_MSIZE;
    }

    /// Serves one request (`req`: the T-message bytes) and writes the
    /// reply into `reply`. Returns the reply's length, or 0 when no reply
    /// can be given (fewer than 7 request bytes, or no room for even an
    /// `Rlerror`).
    pub fn handle<R: ReplyBuf + ?Sized>(&mut self, req: &[u8], reply: &mut R) -> usize {
        let cap = reply.capacity().min(self.msize as usize);
        let frame = match wire::frame(req) {
            Ok(f) => f,
            Err(FrameError::NoHeader) => return 0,
            Err(FrameError::BadSize { tag }) => return self.error(reply, cap, tag, Errno(libc::EINVAL)),
        };
        let tag = frame.tag;
        if frame.body.len() + wire::HEADER_LEN > self.msize as usize {
            return self.error(reply, cap, tag, Errno(libc::EMSGSIZE));
        }
        let m = match Tmsg::decode(frame.ty, frame.body) {
            Ok(m) => m,
            Err(e) => return self.error(reply, cap, tag, e),
        };
        if let Tmsg::Read { fid, offset, count } = m {
            return self.read(reply, cap, tag, fid, offset, count);
        }
        match self.dispatch(tag, m, cap) {
            Ok(()) if self.enc.len() <= cap => {
                self.stats.requests += 1;
                reply.put(0, &self.enc);
                self.enc.len()
            }
            Ok(()) => self.error(reply, cap, tag, Errno(libc::ERANGE)),
            Err(e) => self.error(reply, cap, tag, e),
        }
    }

    fn error<R: ReplyBuf + ?Sized>(&mut self, reply: &mut R, cap: usize, tag: u16, e: Errno) -> usize {
        self.stats.requests += 1;
        self.stats.errors += 1;
        let mut enc = Encoder::new(&mut self.enc, msg::RLERROR, tag);
        enc.u32(e.0 as u32);
        let n = enc.finish();
        if n > cap {
            return 0;
        }
        reply.put(0, &self.enc);
        n
    }

    fn read<R: ReplyBuf + ?Sized>(
        &mut self,
        reply: &mut R,
        cap: usize,
        tag: u16,
        fid: u32,
        offset: u64,
        count: u32,
    ) -> usize {
        let Some(f) = self.fids.get(&fid) else {
            return self.error(reply, cap, tag, Errno(libc::EBADF));
        };
        if !f.readable() {
            return self.error(reply, cap, tag, Errno(libc::EBADF));
        }
        if cap < wire::RREAD_HEADER_LEN {
            return self.error(reply, cap, tag, Errno(libc::ERANGE));
        }
        let len = (count as usize).min(cap - wire::RREAD_HEADER_LEN);
        let n = if len == 0 {
            0
        } else {
            match reply.fill_from(wire::RREAD_HEADER_LEN, len, f.fd.as_fd(), offset) {
                Ok(n) => n.min(len),
                Err(e) => return self.error(reply, cap, tag, e.into()),
            }
        };
        self.stats.requests += 1;
        self.stats.read_bytes += n as u64;
        let mut hdr = [0u8; wire::RREAD_HEADER_LEN];
        hdr[..4].copy_from_slice(&((wire::RREAD_HEADER_LEN + n) as u32).to_le_bytes());
        hdr[4] = msg::RREAD;
        hdr[5..7].copy_from_slice(&tag.to_le_bytes());
        hdr[7..11].copy_from_slice(&(n as u32).to_le_bytes());
        reply.put(0, &hdr);
        wire::RREAD_HEADER_LEN + n
    }

    fn fid(&self, fid: u32) -> Result<&Fid, Errno> {
        self.fids.get(&fid).ok_or(Errno(libc::EBADF))
    }

    fn writable_share(&self) -> Result<(), Errno> {
        if self.readonly {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Room for one more fid at `newfid` (which must be free unless it is
    /// `oldfid`, being replaced).
    fn check_new_fid(&self, newfid: u32, oldfid: Option<u32>) -> Result<(), Errno> {
        if Some(newfid) == oldfid {
            return Ok(());
        }
        if self.fids.contains_key(&newfid) {
            return Err(Errno(libc::EBADF));
        }
        if self.fids.len() >= self.max_fids {
            return Err(Errno(libc::ENFILE));
        }
        Ok(())
    }

    fn qid(&mut self, st: &libc::stat) -> Qid {
        let ty = match file_type(st.st_mode) {
            libc::S_IFDIR => QTDIR,
            libc::S_IFLNK => QTSYMLINK,
            _ => QTFILE,
        };
        Qid { ty, version: 0, path: self.qid_path(st.st_dev, st.st_ino) }
    }

    /// Inode numbers are unique per host file system only: the index of
    /// the device goes into the top 8 bits (up to 255 file systems, the
    /// rest share the last index).
    fn qid_path(&mut self, dev: u64, ino: u64) -> u64 {
        let idx = match self.devs.iter().position(|&d| d == dev) {
            Some(i) => i,
            None if self.devs.len() < 255 => {
                self.devs.push(dev);
                self.devs.len() - 1
            }
            None => 255,
        };
        ((idx as u64) << 56) ^ (ino & ((1 << 56) - 1))
    }

    fn stat_qid(&mut self, fd: BorrowedFd<'_>) -> Result<(Qid, libc::stat), Errno> {
        let st = host::fstat(fd)?;
        Ok((self.qid(&st), st))
    }

    fn dispatch(&mut self, tag: u16, m: Tmsg<'_>, cap: usize) -> Result<(), Errno> {
        match m {
            Tmsg::Version { msize, version } => self.version(tag, msize, version),
            Tmsg::Auth => Err(Errno(libc::EOPNOTSUPP)),
            Tmsg::Attach { fid, afid, n_uname, .. } => self.attach(tag, fid, afid, n_uname),
            Tmsg::Flush { .. } => {
                // Requests complete in order before the next one is read,
                // so the flushed request has already been answered.
                Encoder::new(&mut self.enc, msg::RFLUSH, tag).finish();
                Ok(())
            }
            Tmsg::Walk { fid, newfid, names, nwname } => self.walk(tag, fid, newfid, &names[..nwname]),
            Tmsg::Read { .. } => Err(Errno(libc::EINVAL)),
            Tmsg::Write { fid, offset, data } => self.write(tag, fid, offset, data),
            Tmsg::Clunk { fid } => {
                self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                Encoder::new(&mut self.enc, msg::RCLUNK, tag).finish();
                Ok(())
            }
            Tmsg::Remove { fid } => self.remove(tag, fid),
            Tmsg::Statfs { fid } => self.statfs(tag, fid),
            Tmsg::Lopen { fid, flags } => self.lopen(tag, fid, flags),
            Tmsg::Lcreate { fid, name, flags, mode, gid } => self.lcreate(tag, fid, name, flags, mode, gid),
            Tmsg::Symlink { fid, name, target, gid } => self.symlink(tag, fid, name, target, gid),
            Tmsg::Mknod { dfid, name, mode, gid, .. } => self.mknod(tag, dfid, name, mode, gid),
            Tmsg::Rename { fid, dfid, name } => self.rename(tag, fid, dfid, name),
            Tmsg::Readlink { fid } => self.readlink(tag, fid),
            Tmsg::Getattr { fid, .. } => self.getattr(tag, fid),
            Tmsg::Setattr { fid, attr } => self.setattr(tag, fid, &attr),
            Tmsg::XattrWalk { fid, .. } => {
                self.fid(fid)?;
                Err(Errno(libc::EOPNOTSUPP))
            }
            Tmsg::XattrCreate { fid, .. } => {
                self.fid(fid)?;
                self.writable_share()?;
                Err(Errno(libc::EOPNOTSUPP))
            }
            Tmsg::Readdir { fid, offset, count } => self.readdir(tag, fid, offset, count, cap),
            Tmsg::Fsync { fid, datasync } => self.fsync(tag, fid, datasync),
            Tmsg::Lock { fid, .. } => {
                // Byte-range locks are the guest kernel's business (as in
                // QEMU): granted without a host lock.
                self.fid(fid)?;
                Encoder::new(&mut self.enc, msg::RLOCK, tag).u8(0).finish();
                Ok(())
            }
            Tmsg::GetLock { fid, start, length, proc_id, client_id, .. } => {
                self.fid(fid)?;
                let client_id = &client_id[..client_id.len().min(host::NAME_MAX)];
                let mut e = Encoder::new(&mut self.enc, msg::RGETLOCK, tag);
                e.u8(libc::F_UNLCK as u8).u64(start).u64(length).u32(proc_id).str(client_id);
                e.finish();
                Ok(())
            }
            Tmsg::Link { dfid, fid, name } => self.link(tag, dfid, fid, name),
            Tmsg::Mkdir { dfid, name, mode, gid } => self.mkdir(tag, dfid, name, mode, gid),
            Tmsg::RenameAt { olddir, oldname, newdir, newname } => self.renameat(tag, olddir, oldname, newdir, newname),
            Tmsg::UnlinkAt { dir, name, flags } => self.unlinkat(tag, dir, name, flags),
        }
    }

    fn version(&mut self, tag: u16, msize: u32, version: &[u8]) -> Result<(), Errno> {
        // A new session: every fid of the old one is gone.
        self.fids.clear();
        let ok = version == b"9P2000.L" && msize >= MIN_MSIZE;
        let agreed = msize.min(MAX_MSIZE);
        if ok {
            self.msize = agreed;
        }
        let mut e = Encoder::new(&mut self.enc, msg::RVERSION, tag);
        e.u32(agreed).str(if ok { b"9P2000.L" } else { b"unknown" });
        e.finish();
        Ok(())
    }

    fn attach(&mut self, tag: u16, fid: u32, afid: u32, n_uname: u32) -> Result<(), Errno> {
        if afid != wire::NOFID {
            // No authentication: there is no afid to name.
            return Err(Errno(libc::EINVAL));
        }
        self.check_new_fid(fid, None)?;
        let fd = self.root.try_clone()?;
        let (qid, _) = self.stat_qid(fd.as_fd())?;
        // n_uname is the guest's uid; "none" (~0) maps to root.
        let uid = if n_uname == u32::MAX { 0 } else { n_uname };
        self.fids.insert(fid, Fid { fd, open: Open::Path, rel: Vec::new(), uid });
        Encoder::new(&mut self.enc, msg::RATTACH, tag).qid(&qid).finish();
        Ok(())
    }

    fn walk(&mut self, tag: u16, fid: u32, newfid: u32, names: &[&[u8]]) -> Result<(), Errno> {
        self.check_new_fid(newfid, Some(fid))?;
        let src = self.fid(fid)?;
        let uid = src.uid;
        let mut rel = src.rel.clone();
        let mut cur: Option<OwnedFd> = None;
        let mut qids: [Qid; wire::MAX_WELEM] = [Qid::default(); wire::MAX_WELEM];
        let mut done = 0;
        for (i, &name) in names.iter().enumerate() {
            let step = self.walk_one(cur.as_ref().map(|f| f.as_fd()), fid, &mut rel, name);
            match step {
                Ok((fd, qid)) => {
                    qids[i] = qid;
                    cur = Some(fd);
                    done += 1;
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if done == names.len() {
            let fd = match cur {
                Some(fd) => fd,
                None => self.fid(fid)?.fd.try_clone()?,
            };
            self.fids.insert(newfid, Fid { fd, open: Open::Path, rel, uid });
        }
        let mut e = Encoder::new(&mut self.enc, msg::RWALK, tag);
        e.u16(done as u16);
        for q in &qids[..done] {
            e.qid(q);
        }
        e.finish();
        Ok(())
    }

    /// One walk step from `cur` (or fid `fid`'s descriptor), updating
    /// `rel`.
    fn walk_one(
        &mut self,
        cur: Option<BorrowedFd<'_>>,
        fid: u32,
        rel: &mut Vec<u8>,
        name: &[u8],
    ) -> Result<(OwnedFd, Qid), Errno> {
        let fd = if name == b".." {
            // Never above the root; elsewhere the parent path, resolved
            // again from the root.
            let parent = split_last(rel).0.len();
            rel.truncate(parent);
            host::open_beneath(self.root.as_fd(), rel)?
        } else if name == b"." {
            match cur {
                Some(c) => host::open_beneath(c, b"")?,
                None => self.fid(fid)?.fd.try_clone()?,
            }
        } else {
            let n = Name::new(name)?;
            let next = join(rel, n.as_bytes())?;
            let dir = match cur {
                Some(c) => c,
                None => self.fid(fid)?.fd.as_fd(),
            };
            let fd = host::lookup(dir, &n, libc::O_PATH, 0)?;
            *rel = next;
            fd
        };
        let (qid, _) = self.stat_qid(fd.as_fd())?;
        Ok((fd, qid))
    }

    fn lopen(&mut self, tag: u16, fid: u32, flags: u32) -> Result<(), Errno> {
        let f = self.fid(fid)?;
        if f.open != Open::Path {
            return Err(Errno(libc::EBADF));
        }
        let st = host::fstat(f.fd.as_fd())?;
        let wants_write = flags & dotl::ACCMODE != 0 || flags & dotl::TRUNC != 0;
        match file_type(st.st_mode) {
            libc::S_IFREG => {}
            libc::S_IFDIR if wants_write => return Err(Errno(libc::EISDIR)),
            libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(Errno(libc::ELOOP)),
            // Device nodes, FIFOs and sockets are opened by the guest
            // kernel itself, never on the host.
            _ => return Err(Errno(libc::EACCES)),
        }
        if wants_write {
            self.writable_share()?;
        }
        let fd = self.proc.reopen(f.fd.as_fd(), host_flags(flags))?;
        let (qid, _) = self.stat_qid(fd.as_fd())?;
        let f = self.fids.get_mut(&fid).ok_or(Errno(libc::EBADF))?;
        f.fd = fd;
        f.open = Open::Io(flags & dotl::ACCMODE);
        Encoder::new(&mut self.enc, msg::RLOPEN, tag).qid(&qid).u32(0).finish();
        Ok(())
    }

    /// Best-effort ownership of a new file: the guest's uid and gid where
    /// the host allows it (ember running as root), else ember's own.
    fn own(&self, fd: BorrowedFd<'_>, uid: u32, gid: u32) {
        let _ = host::chown(fd, uid, gid);
    }

    fn lcreate(&mut self, tag: u16, fid: u32, name: &[u8], flags: u32, mode: u32, gid: u32) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        let dir = self.fid(fid)?;
        if dir.open != Open::Path {
            return Err(Errno(libc::EBADF));
        }
        let rel = join(&dir.rel, n.as_bytes())?;
        let uid = dir.uid;
        let hflags = host_flags(flags & !dotl::DIRECTORY);
        let created =
            host::lookup(dir.fd.as_fd(), &n, hflags | libc::O_CREAT | libc::O_EXCL, allowed_mode(mode, false));
        let fd = match created {
            Ok(fd) => {
                self.own(fd.as_fd(), uid, gid);
                fd
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & dotl::EXCL == 0 => {
                // It appeared meanwhile: open it like Tlopen would, a
                // regular file only (never a device or FIFO of the host).
                let p = host::lookup(dir.fd.as_fd(), &n, libc::O_PATH, 0)?;
                if file_type(host::fstat(p.as_fd())?.st_mode) != libc::S_IFREG {
                    return Err(Errno(libc::EEXIST));
                }
                self.proc.reopen(p.as_fd(), hflags)?
            }
            Err(e) => return Err(e.into()),
        };
        let (qid, _) = self.stat_qid(fd.as_fd())?;
        let f = self.fids.get_mut(&fid).ok_or(Errno(libc::EBADF))?;
        f.fd = fd;
        f.open = Open::Io(flags & dotl::ACCMODE);
        f.rel = rel;
        Encoder::new(&mut self.enc, msg::RLCREATE, tag).qid(&qid).u32(0).finish();
        Ok(())
    }

    /// Looks up a just-created `name` in `dir`, gives it to the guest's
    /// user and returns its qid.
    fn created(&mut self, dir: u32, n: &Name, gid: u32) -> Result<Qid, Errno> {
        let d = self.fid(dir)?;
        let uid = d.uid;
        let fd = host::lookup(d.fd.as_fd(), n, libc::O_PATH, 0)?;
        self.own(fd.as_fd(), uid, gid);
        Ok(self.stat_qid(fd.as_fd())?.0)
    }

    fn symlink(&mut self, tag: u16, fid: u32, name: &[u8], target: &[u8], gid: u32) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        if target.is_empty() {
            return Err(Errno(libc::ENOENT));
        }
        if target.len() > MAX_SYMLINK {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        host::symlinkat(target, self.fid(fid)?.fd.as_fd(), &n)?;
        let qid = self.created(fid, &n, gid)?;
        Encoder::new(&mut self.enc, msg::RSYMLINK, tag).qid(&qid).finish();
        Ok(())
    }

    fn mknod(&mut self, tag: u16, dfid: u32, name: &[u8], mode: u32, gid: u32) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        let ty = match file_type(mode) {
            0 | libc::S_IFREG => libc::S_IFREG,
            t @ (libc::S_IFIFO | libc::S_IFSOCK) => t,
            // A device node on the host would be a door to host devices
            // for whoever can open it there.
            libc::S_IFCHR | libc::S_IFBLK => return Err(Errno(libc::EPERM)),
            _ => return Err(Errno(libc::EINVAL)),
        };
        host::mknodat(self.fid(dfid)?.fd.as_fd(), &n, ty | allowed_mode(mode, false))?;
        let qid = self.created(dfid, &n, gid)?;
        Encoder::new(&mut self.enc, msg::RMKNOD, tag).qid(&qid).finish();
        Ok(())
    }

    fn mkdir(&mut self, tag: u16, dfid: u32, name: &[u8], mode: u32, gid: u32) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        host::mkdirat(self.fid(dfid)?.fd.as_fd(), &n, allowed_mode(mode, true))?;
        let qid = self.created(dfid, &n, gid)?;
        Encoder::new(&mut self.enc, msg::RMKDIR, tag).qid(&qid).finish();
        Ok(())
    }

    fn link(&mut self, tag: u16, dfid: u32, fid: u32, name: &[u8]) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        let d = self.fid(dfid)?;
        let f = self.fid(fid)?;
        // Both ends are fids, so both are inside the share.
        self.proc.link(f.fd.as_fd(), d.fd.as_fd(), &n)?;
        Encoder::new(&mut self.enc, msg::RLINK, tag).finish();
        Ok(())
    }

    /// The parent directory and name of fid `fid`, checked to still be the
    /// same file (a stale path is `ENOENT`).
    fn parent_of(&self, fid: u32) -> Result<(OwnedFd, Name), Errno> {
        let f = self.fid(fid)?;
        if f.rel.is_empty() {
            return Err(Errno(libc::EBUSY));
        }
        let (parent, last) = split_last(&f.rel);
        let n = Name::new(last)?;
        let pfd = host::open_beneath(self.root.as_fd(), parent)?;
        let now = host::fstat(host::lookup(pfd.as_fd(), &n, libc::O_PATH, 0)?.as_fd())?;
        let st = host::fstat(f.fd.as_fd())?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(Errno(libc::ENOENT));
        }
        Ok((pfd, n))
    }

    fn remove(&mut self, tag: u16, fid: u32) -> Result<(), Errno> {
        // Tremove clunks the fid whatever the outcome.
        let result = self.writable_share().and_then(|()| {
            let (pfd, n) = self.parent_of(fid)?;
            let st = host::fstat(self.fid(fid)?.fd.as_fd())?;
            let flags = if file_type(st.st_mode) == libc::S_IFDIR { libc::AT_REMOVEDIR } else { 0 };
            host::unlinkat(pfd.as_fd(), &n, flags).map_err(Errno::from)
        });
        self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
        result?;
        Encoder::new(&mut self.enc, msg::RREMOVE, tag).finish();
        Ok(())
    }

    /// After a rename of `old` to `new` (paths from the root), fids below
    /// `old` follow it.
    fn renamed(&mut self, old: &[u8], new: &[u8]) {
        for f in self.fids.values_mut() {
            let under = f.rel.starts_with(old) && (f.rel.len() == old.len() || f.rel[old.len()] == b'/');
            if under && new.len() + (f.rel.len() - old.len()) <= MAX_REL_PATH {
                let mut p = new.to_vec();
                p.extend_from_slice(&f.rel[old.len()..]);
                f.rel = p;
            }
        }
    }

    fn rename(&mut self, tag: u16, fid: u32, dfid: u32, name: &[u8]) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        let (pfd, old) = self.parent_of(fid)?;
        let d = self.fid(dfid)?;
        let new_rel = join(&d.rel, n.as_bytes())?;
        host::renameat(pfd.as_fd(), &old, d.fd.as_fd(), &n)?;
        let old_rel = self.fid(fid)?.rel.clone();
        self.renamed(&old_rel, &new_rel);
        Encoder::new(&mut self.enc, msg::RRENAME, tag).finish();
        Ok(())
    }

    fn renameat(&mut self, tag: u16, olddir: u32, oldname: &[u8], newdir: u32, newname: &[u8]) -> Result<(), Errno> {
        self.writable_share()?;
        let on = Name::new(oldname)?;
        let nn = Name::new(newname)?;
        let od = self.fid(olddir)?;
        let nd = self.fid(newdir)?;
        let old_rel = join(&od.rel, on.as_bytes())?;
        let new_rel = join(&nd.rel, nn.as_bytes())?;
        host::renameat(od.fd.as_fd(), &on, nd.fd.as_fd(), &nn)?;
        self.renamed(&old_rel, &new_rel);
        Encoder::new(&mut self.enc, msg::RRENAMEAT, tag).finish();
        Ok(())
    }

    fn unlinkat(&mut self, tag: u16, dir: u32, name: &[u8], flags: u32) -> Result<(), Errno> {
        self.writable_share()?;
        let n = Name::new(name)?;
        let flags = if flags & libc::AT_REMOVEDIR as u32 != 0 { libc::AT_REMOVEDIR } else { 0 };
        host::unlinkat(self.fid(dir)?.fd.as_fd(), &n, flags)?;
        Encoder::new(&mut self.enc, msg::RUNLINKAT, tag).finish();
        Ok(())
    }

    fn readlink(&mut self, tag: u16, fid: u32) -> Result<(), Errno> {
        let f = self.fids.get(&fid).ok_or(Errno(libc::EBADF))?;
        if file_type(host::fstat(f.fd.as_fd())?.st_mode) != libc::S_IFLNK {
            return Err(Errno(libc::EINVAL));
        }
        host::readlink(f.fd.as_fd(), &mut self.linkbuf, MAX_SYMLINK)?;
        let mut e = Encoder::new(&mut self.enc, msg::RREADLINK, tag);
        e.str(&self.linkbuf);
        e.finish();
        Ok(())
    }

    fn getattr(&mut self, tag: u16, fid: u32) -> Result<(), Errno> {
        let st = host::fstat(self.fid(fid)?.fd.as_fd())?;
        let qid = self.qid(&st);
        let mut e = Encoder::new(&mut self.enc, msg::RGETATTR, tag);
        e.u64(GETATTR_BASIC)
            .qid(&qid)
            .u32(st.st_mode)
            .u32(st.st_uid)
            .u32(st.st_gid)
            .u64(st.st_nlink)
            .u64(st.st_rdev)
            .u64(st.st_size as u64)
            .u64(st.st_blksize as u64)
            .u64(st.st_blocks as u64)
            .u64(st.st_atime as u64)
            .u64(st.st_atime_nsec as u64)
            .u64(st.st_mtime as u64)
            .u64(st.st_mtime_nsec as u64)
            .u64(st.st_ctime as u64)
            .u64(st.st_ctime_nsec as u64)
            // btime, gen, data_version: not in the basic set.
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0);
        e.finish();
        Ok(())
    }

    fn setattr(&mut self, tag: u16, fid: u32, a: &SetAttr) -> Result<(), Errno> {
        let f = self.fid(fid)?;
        let change = attr::MODE | attr::UID | attr::GID | attr::SIZE | attr::ATIME | attr::MTIME;
        if a.valid & change != 0 {
            self.writable_share()?;
        }
        let st = host::fstat(f.fd.as_fd())?;
        let ty = file_type(st.st_mode);
        let fd = f.fd.as_fd();
        if a.valid & attr::MODE != 0 && ty != libc::S_IFLNK {
            self.proc.chmod(fd, allowed_mode(a.mode, ty == libc::S_IFDIR))?;
        }
        if a.valid & (attr::UID | attr::GID) != 0 {
            let uid = if a.valid & attr::UID != 0 { a.uid } else { u32::MAX };
            let gid = if a.valid & attr::GID != 0 { a.gid } else { u32::MAX };
            host::chown(fd, uid, gid)?;
        }
        if a.valid & attr::SIZE != 0 {
            match ty {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(Errno(libc::EISDIR)),
                _ => return Err(Errno(libc::EINVAL)),
            }
            if f.writable() {
                host::ftruncate(fd, a.size)?;
            } else {
                let w = self.proc.reopen(fd, libc::O_WRONLY | libc::O_NOFOLLOW)?;
                host::ftruncate(w.as_fd(), a.size)?;
            }
        }
        if a.valid & (attr::ATIME | attr::MTIME) != 0 && ty != libc::S_IFLNK {
            let ts = |set: bool, explicit: bool, sec: u64, nsec: u64| -> Result<libc::timespec, Errno> {
                if !set {
                    return Ok(libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT });
                }
                if !explicit {
                    return Ok(libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW });
                }
                if nsec >= 1_000_000_000 {
                    return Err(Errno(libc::EINVAL));
                }
                Ok(libc::timespec { tv_sec: sec as i64, tv_nsec: nsec as i64 })
            };
            let times = [
                ts(a.valid & attr::ATIME != 0, a.valid & attr::ATIME_SET != 0, a.atime_sec, a.atime_nsec)?,
                ts(a.valid & attr::MTIME != 0, a.valid & attr::MTIME_SET != 0, a.mtime_sec, a.mtime_nsec)?,
            ];
            self.proc.utimens(fd, &times)?;
        }
        Encoder::new(&mut self.enc, msg::RSETATTR, tag).finish();
        Ok(())
    }

    fn write(&mut self, tag: u16, fid: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let f = self.fid(fid)?;
        if !f.writable() {
            return Err(Errno(if self.readonly { libc::EROFS } else { libc::EBADF }));
        }
        self.writable_share()?;
        let n = host::pwrite(f.fd.as_fd(), data, offset)?;
        self.stats.written_bytes += n as u64;
        Encoder::new(&mut self.enc, msg::RWRITE, tag).u32(n as u32).finish();
        Ok(())
    }

    fn statfs(&mut self, tag: u16, fid: u32) -> Result<(), Errno> {
        let st = host::fstatfs(self.fid(fid)?.fd.as_fd())?;
        // SAFETY: fsid_t is two plain ints; reading them as bytes is
        // always valid.
        let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
        let fsid = u64::from(fsid[0] as u32) | (u64::from(fsid[1] as u32) << 32);
        let mut e = Encoder::new(&mut self.enc, msg::RSTATFS, tag);
        e.u32(V9FS_MAGIC)
            .u32(st.f_bsize as u32)
            .u64(st.f_blocks)
            .u64(st.f_bfree)
            .u64(st.f_bavail)
            .u64(st.f_files)
            .u64(st.f_ffree)
            .u64(fsid)
            .u32(st.f_namelen as u32);
        e.finish();
        Ok(())
    }

    fn fsync(&mut self, tag: u16, fid: u32, datasync: bool) -> Result<(), Errno> {
        let f = self.fid(fid)?;
        match f.open {
            Open::Io(_) => host::fsync(f.fd.as_fd(), datasync)?,
            Open::Path => return Err(Errno(libc::EBADF)),
        }
        Encoder::new(&mut self.enc, msg::RFSYNC, tag).finish();
        Ok(())
    }

    fn readdir(&mut self, tag: u16, fid: u32, offset: u64, count: u32, cap: usize) -> Result<(), Errno> {
        let f = self.fid(fid)?;
        if !f.readable() {
            return Err(Errno(libc::EBADF));
        }
        let fd = f.fd.try_clone()?;
        let limit = cap.saturating_sub(wire::RREAD_HEADER_LEN).min(count as usize) + wire::RREAD_HEADER_LEN;
        host::seek_dir(fd.as_fd(), offset)?;
        let mut enc = std::mem::take(&mut self.enc);
        let mut dirbuf = std::mem::take(&mut self.dirbuf);
        Encoder::new(&mut enc, msg::RREADDIR, tag).u32(0);
        let result = self.fill_dir(fd.as_fd(), &mut enc, &mut dirbuf, limit);
        self.dirbuf = dirbuf;
        let n = enc.len();
        let data = (n - wire::RREAD_HEADER_LEN) as u32;
        enc[..4].copy_from_slice(&(n as u32).to_le_bytes());
        enc[7..11].copy_from_slice(&data.to_le_bytes());
        self.enc = enc;
        result
    }

    /// Appends directory entries from `fd`'s current position to `out`
    /// until `limit` bytes or the end of the directory.
    fn fill_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        out: &mut Vec<u8>,
        dirbuf: &mut [u8],
        limit: usize,
    ) -> Result<(), Errno> {
        let dev = host::fstat(fd)?.st_dev;
        loop {
            // Read no more records than could fit: each takes at least as
            // many bytes in the reply as in getdents64's buffer, less 8.
            let room = limit.saturating_sub(out.len());
            if room < QID_ENTRY_MIN && out.len() > wire::RREAD_HEADER_LEN {
                return Ok(());
            }
            let want = (room + room / 2).max(MIN_DIRENT_READ).min(dirbuf.len());
            let n = match host::getdents(fd, &mut dirbuf[..want]) {
                Ok(n) => n,
                // The next record is larger than what is left to read.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Ok(());
            }
            let mut pos = 0;
            while let Some((ino, off, dtype, name, reclen)) = host::parse_dirent(&dirbuf[pos..n]) {
                let qty = match dtype {
                    libc::DT_DIR => QTDIR,
                    libc::DT_LNK => QTSYMLINK,
                    _ => QTFILE,
                };
                let qid = Qid { ty: qty, version: 0, path: self.qid_path(dev, ino) };
                if !wire::push_dirent(out, limit, &qid, off, dtype, name) {
                    // The rest comes with the next Treaddir, which starts
                    // at the last offset returned; an entry that can never
                    // fit is an error (as in getdents64), not an empty
                    // reply, which would mean the end of the directory.
                    if out.len() == wire::RREAD_HEADER_LEN {
                        return Err(Errno(libc::EINVAL));
                    }
                    return Ok(());
                }
                pos += reclen;
            }
        }
    }
}

/// A `getdents64` buffer always large enough for one record (a 255-byte
/// name).
const MIN_DIRENT_READ: usize = 512;
/// Smallest directory entry in a reply (a one-byte name).
const QID_ENTRY_MIN: usize = wire::QID_LEN + 8 + 1 + 2 + 1;

use std::os::unix::fs::OpenOptionsExt;
