//! 9P2000.L messages on the wire: decoding T-messages, encoding R-messages.
//!
//! Every message is `size[4] type[1] tag[2]` followed by its fields, all
//! little-endian; strings are `len[2]` and that many bytes (not
//! NUL-terminated); a qid is `type[1] version[4] path[8]`. The layouts are
//! those of Linux's 9P client (`net/9p/client.c`, `include/net/9p/9p.h`).
//!
//! Decoding borrows from the request buffer and never allocates: a message
//! longer than its size field says is cut there, one shorter is an error
//! (`EINVAL`), a walk of more than [`MAX_WELEM`] names is an error, and
//! every string is bounded by the request it sits in. Encoding writes into
//! a caller-owned `Vec<u8>` whose capacity was reserved once.

use super::Errno;

/// Size of the message header: `size[4] type[1] tag[2]`.
pub const HEADER_LEN: usize = 7;
/// Size of an `Rread` before its data: header and `count[4]`.
pub const RREAD_HEADER_LEN: usize = HEADER_LEN + 4;
/// Size of an encoded qid.
pub const QID_LEN: usize = 13;
/// Most names in one `Twalk` (9P's MAXWELEM).
pub const MAX_WELEM: usize = 16;
/// The tag of `Tversion` (9P's NOTAG).
pub const NOTAG: u16 = 0xffff;
/// "No fid" in `Tattach`'s `afid` (9P's NOFID).
pub const NOFID: u32 = 0xffff_ffff;

/// The message type numbers of 9P2000.L (and the 9P2000 ones Linux sends).
#[allow(missing_docs)]
pub mod msg {
    pub const TLERROR: u8 = 6;
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const RSTATFS: u8 = 9;
    pub const TLOPEN: u8 = 12;
    pub const RLOPEN: u8 = 13;
    pub const TLCREATE: u8 = 14;
    pub const RLCREATE: u8 = 15;
    pub const TSYMLINK: u8 = 16;
    pub const RSYMLINK: u8 = 17;
    pub const TMKNOD: u8 = 18;
    pub const RMKNOD: u8 = 19;
    pub const TRENAME: u8 = 20;
    pub const RRENAME: u8 = 21;
    pub const TREADLINK: u8 = 22;
    pub const RREADLINK: u8 = 23;
    pub const TGETATTR: u8 = 24;
    pub const RGETATTR: u8 = 25;
    pub const TSETATTR: u8 = 26;
    pub const RSETATTR: u8 = 27;
    pub const TXATTRWALK: u8 = 30;
    pub const RXATTRWALK: u8 = 31;
    pub const TXATTRCREATE: u8 = 32;
    pub const RXATTRCREATE: u8 = 33;
    pub const TREADDIR: u8 = 40;
    pub const RREADDIR: u8 = 41;
    pub const TFSYNC: u8 = 50;
    pub const RFSYNC: u8 = 51;
    pub const TLOCK: u8 = 52;
    pub const RLOCK: u8 = 53;
    pub const TGETLOCK: u8 = 54;
    pub const RGETLOCK: u8 = 55;
    pub const TLINK: u8 = 70;
    pub const RLINK: u8 = 71;
    pub const TMKDIR: u8 = 72;
    pub const RMKDIR: u8 = 73;
    pub const TRENAMEAT: u8 = 74;
    pub const RRENAMEAT: u8 = 75;
    pub const TUNLINKAT: u8 = 76;
    pub const RUNLINKAT: u8 = 77;
    pub const TVERSION: u8 = 100;
    pub const RVERSION: u8 = 101;
    pub const TAUTH: u8 = 102;
    pub const TATTACH: u8 = 104;
    pub const RATTACH: u8 = 105;
    pub const TFLUSH: u8 = 108;
    pub const RFLUSH: u8 = 109;
    pub const TWALK: u8 = 110;
    pub const RWALK: u8 = 111;
    pub const TREAD: u8 = 116;
    pub const RREAD: u8 = 117;
    pub const TWRITE: u8 = 118;
    pub const RWRITE: u8 = 119;
    pub const TCLUNK: u8 = 120;
    pub const RCLUNK: u8 = 121;
    pub const TREMOVE: u8 = 122;
    pub const RREMOVE: u8 = 123;
}

/// A qid: the server's identity of a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Qid {
    /// `QTDIR` (0x80), `QTSYMLINK` (0x02) or `QTFILE` (0).
    pub ty: u8,
    /// Changes when the file changes (ember: 0, as QEMU without caching
    /// hints).
    pub version: u32,
    /// Unique per file within the share.
    pub path: u64,
}

/// Qid type of a directory.
pub const QTDIR: u8 = 0x80;
/// Qid type of a symbolic link.
pub const QTSYMLINK: u8 = 0x02;
/// Qid type of any other file.
pub const QTFILE: u8 = 0;

/// A bounds-checked little-endian reader over one message.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        if self.buf.len() < n {
            return Err(Errno(libc::EINVAL));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Errno> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Errno> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Errno> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Errno> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<&'a [u8], Errno> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// The header of a request: type and tag, and its body.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Message type.
    pub ty: u8,
    /// The tag the reply must carry.
    pub tag: u16,
    /// The fields after the header, cut at the size field.
    pub body: &'a [u8],
}

/// Why a request could not even be framed.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 7 bytes: there is no tag to answer to.
    NoHeader,
    /// The size field is below 7 or beyond the bytes given; the tag is
    /// known.
    BadSize {
        /// The request's tag.
        tag: u16,
    },
}

/// Splits the header off a request.
pub fn frame(req: &[u8]) -> Result<Frame<'_>, FrameError> {
    if req.len() < HEADER_LEN {
        return Err(FrameError::NoHeader);
    }
    let size = u32::from_le_bytes([req[0], req[1], req[2], req[3]]) as usize;
    let ty = req[4];
    let tag = u16::from_le_bytes([req[5], req[6]]);
    if size < HEADER_LEN || size > req.len() {
        return Err(FrameError::BadSize { tag });
    }
    Ok(Frame { ty, tag, body: &req[HEADER_LEN..size] })
}

/// Attributes to set (`Tsetattr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SetAttr {
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_sec: u64,
    pub atime_nsec: u64,
    pub mtime_sec: u64,
    pub mtime_nsec: u64,
}

/// A decoded T-message. Strings are raw bytes borrowed from the request.
///
/// `Walk` carries its names inline (no allocation per request); the enum
/// lives on the stack for one request only, so its size does not matter.
#[derive(Debug)]
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum Tmsg<'a> {
    Version { msize: u32, version: &'a [u8] },
    Auth,
    Attach { fid: u32, afid: u32, uname: &'a [u8], aname: &'a [u8], n_uname: u32 },
    Flush { oldtag: u16 },
    Walk { fid: u32, newfid: u32, names: [&'a [u8]; MAX_WELEM], nwname: usize },
    Read { fid: u32, offset: u64, count: u32 },
    Write { fid: u32, offset: u64, data: &'a [u8] },
    Clunk { fid: u32 },
    Remove { fid: u32 },
    Statfs { fid: u32 },
    Lopen { fid: u32, flags: u32 },
    Lcreate { fid: u32, name: &'a [u8], flags: u32, mode: u32, gid: u32 },
    Symlink { fid: u32, name: &'a [u8], target: &'a [u8], gid: u32 },
    Mknod { dfid: u32, name: &'a [u8], mode: u32, major: u32, minor: u32, gid: u32 },
    Rename { fid: u32, dfid: u32, name: &'a [u8] },
    Readlink { fid: u32 },
    Getattr { fid: u32, mask: u64 },
    Setattr { fid: u32, attr: SetAttr },
    XattrWalk { fid: u32, newfid: u32, name: &'a [u8] },
    XattrCreate { fid: u32, name: &'a [u8], size: u64, flags: u32 },
    Readdir { fid: u32, offset: u64, count: u32 },
    Fsync { fid: u32, datasync: bool },
    Lock { fid: u32, ty: u8, flags: u32, start: u64, length: u64, proc_id: u32, client_id: &'a [u8] },
    GetLock { fid: u32, ty: u8, start: u64, length: u64, proc_id: u32, client_id: &'a [u8] },
    Link { dfid: u32, fid: u32, name: &'a [u8] },
    Mkdir { dfid: u32, name: &'a [u8], mode: u32, gid: u32 },
    RenameAt { olddir: u32, oldname: &'a [u8], newdir: u32, newname: &'a [u8] },
    UnlinkAt { dir: u32, name: &'a [u8], flags: u32 },
}

impl<'a> Tmsg<'a> {
    /// Decodes the body of a message of type `ty`. Unknown types (and the
    /// 9P2000 ones 9P2000.L replaced) are `EOPNOTSUPP`; short bodies
    /// `EINVAL`.
    pub fn decode(ty: u8, body: &'a [u8]) -> Result<Tmsg<'a>, Errno> {
        use msg::*;
        let mut r = Reader::new(body);
        let m = match ty {
            TVERSION => Tmsg::Version { msize: r.u32()?, version: r.str()? },
            TAUTH => Tmsg::Auth,
            TATTACH => Tmsg::Attach {
                fid: r.u32()?,
                afid: r.u32()?,
                uname: r.str()?,
                aname: r.str()?,
                // 9P2000.u/.L extension; Linux always sends it.
                n_uname: r.u32()?,
            },
            TFLUSH => Tmsg::Flush { oldtag: r.u16()? },
            TWALK => {
                let fid = r.u32()?;
                let newfid = r.u32()?;
                let nwname = usize::from(r.u16()?);
                if nwname > MAX_WELEM {
                    return Err(Errno(libc::EINVAL));
                }
                let mut names: [&[u8]; MAX_WELEM] = [&[]; MAX_WELEM];
                for n in names.iter_mut().take(nwname) {
                    *n = r.str()?;
                }
                Tmsg::Walk { fid, newfid, names, nwname }
            }
            TREAD => Tmsg::Read { fid: r.u32()?, offset: r.u64()?, count: r.u32()? },
            TWRITE => {
                let fid = r.u32()?;
                let offset = r.u64()?;
                let count = r.u32()? as usize;
                let rest = r.rest();
                if count > rest.len() {
                    // The count says more than the message carries.
                    return Err(Errno(libc::EINVAL));
                }
                Tmsg::Write { fid, offset, data: &rest[..count] }
            }
            TCLUNK => Tmsg::Clunk { fid: r.u32()? },
            TREMOVE => Tmsg::Remove { fid: r.u32()? },
            TSTATFS => Tmsg::Statfs { fid: r.u32()? },
            TLOPEN => Tmsg::Lopen { fid: r.u32()?, flags: r.u32()? },
            TLCREATE => Tmsg::Lcreate { fid: r.u32()?, name: r.str()?, flags: r.u32()?, mode: r.u32()?, gid: r.u32()? },
            TSYMLINK => Tmsg::Symlink { fid: r.u32()?, name: r.str()?, target: r.str()?, gid: r.u32()? },
            TMKNOD => Tmsg::Mknod {
                dfid: r.u32()?,
                name: r.str()?,
                mode: r.u32()?,
                major: r.u32()?,
                minor: r.u32()?,
                gid: r.u32()?,
            },
            TRENAME => Tmsg::Rename { fid: r.u32()?, dfid: r.u32()?, name: r.str()? },
            TREADLINK => Tmsg::Readlink { fid: r.u32()? },
            TGETATTR => Tmsg::Getattr { fid: r.u32()?, mask: r.u64()? },
            TSETATTR => Tmsg::Setattr {
                fid: r.u32()?,
                attr: SetAttr {
                    valid: r.u32()?,
                    mode: r.u32()?,
                    uid: r.u32()?,
                    gid: r.u32()?,
                    size: r.u64()?,
                    atime_sec: r.u64()?,
                    atime_nsec: r.u64()?,
                    mtime_sec: r.u64()?,
                    mtime_nsec: r.u64()?,
                },
            },
            TXATTRWALK => Tmsg::XattrWalk { fid: r.u32()?, newfid: r.u32()?, name: r.str()? },
            TXATTRCREATE => Tmsg::XattrCreate { fid: r.u32()?, name: r.str()?, size: r.u64()?, flags: r.u32()? },
            TREADDIR => Tmsg::Readdir { fid: r.u32()?, offset: r.u64()?, count: r.u32()? },
            TFSYNC => {
                let fid = r.u32()?;
                // Older clients send no datasync field.
                let datasync = r.u32().unwrap_or(0) != 0;
                Tmsg::Fsync { fid, datasync }
            }
            TLOCK => Tmsg::Lock {
                fid: r.u32()?,
                ty: r.u8()?,
                flags: r.u32()?,
                start: r.u64()?,
                length: r.u64()?,
                proc_id: r.u32()?,
                client_id: r.str()?,
            },
            TGETLOCK => Tmsg::GetLock {
                fid: r.u32()?,
                ty: r.u8()?,
                start: r.u64()?,
                length: r.u64()?,
                proc_id: r.u32()?,
                client_id: r.str()?,
            },
            TLINK => Tmsg::Link { dfid: r.u32()?, fid: r.u32()?, name: r.str()? },
            TMKDIR => Tmsg::Mkdir { dfid: r.u32()?, name: r.str()?, mode: r.u32()?, gid: r.u32()? },
            TRENAMEAT => Tmsg::RenameAt { olddir: r.u32()?, oldname: r.str()?, newdir: r.u32()?, newname: r.str()? },
            TUNLINKAT => Tmsg::UnlinkAt { dir: r.u32()?, name: r.str()?, flags: r.u32()? },
            _ => return Err(Errno(libc::EOPNOTSUPP)),
        };
        Ok(m)
    }
}

/// Builds one R-message in a reusable buffer: header first, fields
/// appended, size patched by [`Encoder::finish`].
#[derive(Debug)]
pub struct Encoder<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> Encoder<'b> {
    /// Starts a message of type `ty` answering `tag`; clears `buf`.
    pub fn new(buf: &'b mut Vec<u8>, ty: u8, tag: u16) -> Self {
        buf.clear();
        buf.extend_from_slice(&[0, 0, 0, 0, ty]);
        buf.extend_from_slice(&tag.to_le_bytes());
        Encoder { buf }
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a string; the caller bounds it to 65535 bytes.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.buf.extend_from_slice(&s[..n]);
        self
    }

    /// Appends a qid.
    pub fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Bytes encoded so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Patches the size field; returns the message length.
    pub fn finish(&mut self) -> usize {
        let n = self.buf.len();
        self.buf[..4].copy_from_slice(&(n as u32).to_le_bytes());
        n
    }
}

/// Appends one `Rreaddir` entry (`qid offset[8] type[1] name[s]`) to
/// `out` if it fits within `limit` bytes in total; `false` if not.
pub fn push_dirent(out: &mut Vec<u8>, limit: usize, qid: &Qid, offset: u64, ty: u8, name: &[u8]) -> bool {
    let need = QID_LEN + 8 + 1 + 2 + name.len();
    if name.len() > usize::from(u16::MAX) || out.len() + need > limit {
        return false;
    }
    out.push(qid.ty);
    out.extend_from_slice(&qid.version.to_le_bytes());
    out.extend_from_slice(&qid.path.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.push(ty);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checks_the_size_field() {
        assert_eq!(frame(&[1, 2, 3]).unwrap_err(), FrameError::NoHeader);
        let mut m = vec![0u8; 11];
        m[4] = msg::TCLUNK;
        m[5] = 9;
        m[0] = 6;
        assert_eq!(frame(&m).unwrap_err(), FrameError::BadSize { tag: 9 });
        m[0] = 12;
        assert_eq!(frame(&m).unwrap_err(), FrameError::BadSize { tag: 9 });
        m[0] = 11;
        let f = frame(&m).unwrap();
        assert_eq!((f.ty, f.tag, f.body.len()), (msg::TCLUNK, 9, 4));
        // Trailing bytes past the size field are ignored.
        m.extend_from_slice(&[0xff; 5]);
        assert_eq!(frame(&m).unwrap().body.len(), 4);
    }

    #[test]
    fn decode_refuses_short_and_lying_bodies() {
        assert_eq!(Tmsg::decode(msg::TREAD, &[0; 15]).unwrap_err(), Errno(libc::EINVAL));
        assert!(matches!(Tmsg::decode(msg::TREAD, &[0; 16]), Ok(Tmsg::Read { .. })));
        // Twrite with a count beyond the data.
        let mut w = vec![0u8; 16];
        w[12..16].copy_from_slice(&5u32.to_le_bytes());
        w.extend_from_slice(b"abcd");
        assert_eq!(Tmsg::decode(msg::TWRITE, &w).unwrap_err(), Errno(libc::EINVAL));
        w.push(b'e');
        assert!(matches!(Tmsg::decode(msg::TWRITE, &w), Ok(Tmsg::Write { data: b"abcde", .. })));
        // A string longer than the message.
        let mut a = vec![0u8; 8];
        a.extend_from_slice(&100u16.to_le_bytes());
        a.extend_from_slice(b"x");
        assert_eq!(Tmsg::decode(msg::TATTACH, &a).unwrap_err(), Errno(libc::EINVAL));
        // Too many walk names.
        let mut wk = vec![0u8; 8];
        wk.extend_from_slice(&17u16.to_le_bytes());
        wk.extend_from_slice(&[0u8; 34]);
        assert_eq!(Tmsg::decode(msg::TWALK, &wk).unwrap_err(), Errno(libc::EINVAL));
        assert_eq!(Tmsg::decode(200, &[]).unwrap_err(), Errno(libc::EOPNOTSUPP));
    }

    #[test]
    fn encoder_patches_size() {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf, msg::RLERROR, 7);
        e.u32(2);
        assert_eq!(e.finish(), 11);
        assert_eq!(buf, [11, 0, 0, 0, msg::RLERROR, 7, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn dirents_respect_the_limit() {
        let mut out = Vec::new();
        let q = Qid::default();
        assert!(push_dirent(&mut out, 30, &q, 1, 0, b"abcdef"));
        assert_eq!(out.len(), 30);
        assert!(!push_dirent(&mut out, 59, &q, 2, 0, b"abcdef"));
        assert_eq!(out.len(), 30);
    }
}
