//! The 9P server against hostile requests, and the device through
//! descriptor chains.

use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::wire::{msg, Encoder, Qid, QTDIR, QTSYMLINK};
use super::*;
use crate::virtio::test_utils::*;

const CANARY: &[u8] = b"canary: the host outside the share\n";
const ENOENT: i32 = libc::ENOENT;
const EBADF: i32 = libc::EBADF;
const EINVAL: i32 = libc::EINVAL;
const EROFS: i32 = libc::EROFS;

/// A share with hostile furniture: `share/` holds a file, a directory and
/// symbolic links pointing out (absolute, relative, to a directory);
/// `outside/` holds the canary.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let share = dir.path().join("share");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("canary"), CANARY).unwrap();
        let data: Vec<u8> = (0..10_000u64).map(pattern).collect();
        std::fs::write(share.join("file"), &data).unwrap();
        std::fs::write(share.join("sub").join("inner"), b"inner\n").unwrap();
        symlink(outside.join("canary"), share.join("abs")).unwrap();
        symlink("../outside/canary", share.join("rel")).unwrap();
        symlink(&outside, share.join("dirlink")).unwrap();
        symlink("/", share.join("slash")).unwrap();
        Fixture { dir }
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn client(&self, readonly: bool) -> Client {
        let mut c = Client::new(Server::new(&self.share(), readonly).unwrap());
        c.version(MAX_MSIZE);
        c.attach(ROOT).unwrap();
        c
    }

    /// Nothing outside the share changed.
    fn outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["canary"], "something was created outside the share");
        let meta = std::fs::metadata(self.outside().join("canary")).unwrap();
        assert_eq!(meta.nlink(), 1, "the canary got a hard link");
        assert_eq!(meta.mode() & 0o7777, 0o644, "the canary's mode changed");
        assert_eq!(std::fs::read(self.outside().join("canary")).unwrap(), CANARY);
        let top: Vec<_> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(top.len(), 2, "something was created beside the share: {top:?}");
    }
}

const ROOT: u32 = 0;

/// A minimal 9P client on top of [`Server::handle`].
struct Client {
    srv: Server,
    req: Vec<u8>,
    reply: Vec<u8>,
    tag: u16,
}

type R<T> = Result<T, i32>;

impl Client {
    fn new(srv: Server) -> Self {
        Client { srv, req: Vec::new(), reply: vec![0; MAX_MSIZE as usize], tag: 0 }
    }

    /// Sends the message being built in `self.req`; returns the reply body
    /// or the Rlerror code.
    fn send(&mut self, want: u8) -> R<Vec<u8>> {
        let n = self.srv.handle(&self.req, &mut self.reply[..]);
        assert!(n >= 7, "no reply");
        let size = u32::from_le_bytes(self.reply[..4].try_into().unwrap()) as usize;
        assert_eq!(size, n, "size field");
        assert_eq!(u16::from_le_bytes([self.reply[5], self.reply[6]]), self.tag, "tag");
        let body = self.reply[7..n].to_vec();
        match self.reply[4] {
            msg::RLERROR => {
                assert_eq!(n, 11);
                Err(i32::from_le_bytes(body[..4].try_into().unwrap()))
            }
            t => {
                assert_eq!(t, want, "reply type");
                Ok(body)
            }
        }
    }

    fn t(&mut self, ty: u8) -> Encoder<'_> {
        self.tag = self.tag.wrapping_add(1) % 0xfff0;
        Encoder::new(&mut self.req, ty, self.tag)
    }

    fn version(&mut self, msize: u32) -> (u32, Vec<u8>) {
        self.t(msg::TVERSION).u32(msize).str(b"9P2000.L").finish();
        let b = self.send(msg::RVERSION).unwrap();
        (u32::from_le_bytes(b[..4].try_into().unwrap()), b[6..].to_vec())
    }

    fn attach(&mut self, fid: u32) -> R<Qid> {
        self.t(msg::TATTACH).u32(fid).u32(wire::NOFID).str(b"root").str(b"").u32(0).finish();
        self.send(msg::RATTACH).map(|b| qid(&b))
    }

    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> R<Vec<Qid>> {
        let mut e = self.t(msg::TWALK);
        e.u32(fid).u32(newfid).u16(names.len() as u16);
        for n in names {
            e.str(n);
        }
        e.finish();
        let b = self.send(msg::RWALK)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        assert_eq!(b.len(), 2 + 13 * n);
        Ok((0..n).map(|i| qid(&b[2 + 13 * i..])).collect())
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> R<Qid> {
        self.t(msg::TLOPEN).u32(fid).u32(flags).finish();
        self.send(msg::RLOPEN).map(|b| qid(&b))
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> R<Vec<u8>> {
        self.t(msg::TREAD).u32(fid).u64(offset).u32(count).finish();
        let b = self.send(msg::RREAD)?;
        let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(b.len(), 4 + n);
        Ok(b[4..].to_vec())
    }

    fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> R<u32> {
        self.t(msg::TWRITE).u32(fid).u64(offset).u32(data.len() as u32).bytes(data).finish();
        self.send(msg::RWRITE).map(|b| u32::from_le_bytes(b[..4].try_into().unwrap()))
    }

    fn clunk(&mut self, fid: u32) -> R<()> {
        self.t(msg::TCLUNK).u32(fid).finish();
        self.send(msg::RCLUNK).map(drop)
    }

    fn lcreate(&mut self, fid: u32, name: &[u8], flags: u32, mode: u32) -> R<Qid> {
        self.t(msg::TLCREATE).u32(fid).str(name).u32(flags).u32(mode).u32(0).finish();
        self.send(msg::RLCREATE).map(|b| qid(&b))
    }

    fn symlink(&mut self, fid: u32, name: &[u8], target: &[u8]) -> R<Qid> {
        self.t(msg::TSYMLINK).u32(fid).str(name).str(target).u32(0).finish();
        self.send(msg::RSYMLINK).map(|b| qid(&b))
    }

    fn mkdir(&mut self, fid: u32, name: &[u8], mode: u32) -> R<Qid> {
        self.t(msg::TMKDIR).u32(fid).str(name).u32(mode).u32(0).finish();
        self.send(msg::RMKDIR).map(|b| qid(&b))
    }

    fn mknod(&mut self, fid: u32, name: &[u8], mode: u32, major: u32, minor: u32) -> R<Qid> {
        self.t(msg::TMKNOD).u32(fid).str(name).u32(mode).u32(major).u32(minor).u32(0).finish();
        self.send(msg::RMKNOD).map(|b| qid(&b))
    }

    fn link(&mut self, dfid: u32, fid: u32, name: &[u8]) -> R<()> {
        self.t(msg::TLINK).u32(dfid).u32(fid).str(name).finish();
        self.send(msg::RLINK).map(drop)
    }

    fn readlink(&mut self, fid: u32) -> R<Vec<u8>> {
        self.t(msg::TREADLINK).u32(fid).finish();
        self.send(msg::RREADLINK).map(|b| b[2..].to_vec())
    }

    fn getattr(&mut self, fid: u32) -> R<(Qid, u32, u64)> {
        self.t(msg::TGETATTR).u32(fid).u64(0x7ff).finish();
        let b = self.send(msg::RGETATTR)?;
        assert_eq!(b.len(), 153);
        let mode = u32::from_le_bytes(b[21..25].try_into().unwrap());
        let size = u64::from_le_bytes(b[49..57].try_into().unwrap());
        Ok((qid(&b[8..]), mode, size))
    }

    fn setattr_size(&mut self, fid: u32, size: u64) -> R<()> {
        self.t(msg::TSETATTR).u32(fid).u32(8).u32(0).u32(0).u32(0).u64(size).u64(0).u64(0).u64(0).u64(0).finish();
        self.send(msg::RSETATTR).map(drop)
    }

    fn setattr_mode(&mut self, fid: u32, mode: u32) -> R<()> {
        self.t(msg::TSETATTR).u32(fid).u32(1).u32(mode).u32(0).u32(0).u64(0).u64(0).u64(0).u64(0).u64(0).finish();
        self.send(msg::RSETATTR).map(drop)
    }

    fn readdir(&mut self, fid: u32, offset: u64, count: u32) -> R<Vec<(Vec<u8>, u64)>> {
        self.t(msg::TREADDIR).u32(fid).u64(offset).u32(count).finish();
        let b = self.send(msg::RREADDIR)?;
        let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(b.len(), 4 + n);
        assert!(n <= count as usize);
        let mut out = Vec::new();
        let mut p = 4;
        while p < b.len() {
            let off = u64::from_le_bytes(b[p + 13..p + 21].try_into().unwrap());
            let len = u16::from_le_bytes([b[p + 22], b[p + 23]]) as usize;
            out.push((b[p + 24..p + 24 + len].to_vec(), off));
            p += 24 + len;
        }
        assert_eq!(p, b.len());
        Ok(out)
    }

    fn unlinkat(&mut self, dir: u32, name: &[u8], flags: u32) -> R<()> {
        self.t(msg::TUNLINKAT).u32(dir).str(name).u32(flags).finish();
        self.send(msg::RUNLINKAT).map(drop)
    }

    fn renameat(&mut self, od: u32, on: &[u8], nd: u32, nn: &[u8]) -> R<()> {
        self.t(msg::TRENAMEAT).u32(od).str(on).u32(nd).str(nn).finish();
        self.send(msg::RRENAMEAT).map(drop)
    }

    /// Reads a whole file through a fresh fid walked from the root.
    fn cat(&mut self, path: &[&[u8]]) -> R<Vec<u8>> {
        const F: u32 = 999;
        self.walk(ROOT, F, path).and_then(|q| if q.len() == path.len() { Ok(()) } else { Err(ENOENT) })?;
        let r = self.lopen(F, 0).and_then(|_| {
            let mut all = Vec::new();
            loop {
                let chunk = self.read(F, all.len() as u64, 4096)?;
                if chunk.is_empty() {
                    return Ok(all);
                }
                all.extend_from_slice(&chunk);
            }
        });
        self.clunk(F).unwrap();
        r
    }
}

fn qid(b: &[u8]) -> Qid {
    Qid {
        ty: b[0],
        version: u32::from_le_bytes(b[1..5].try_into().unwrap()),
        path: u64::from_le_bytes(b[5..13].try_into().unwrap()),
    }
}

fn file_bytes() -> Vec<u8> {
    (0..10_000u64).map(pattern).collect()
}

#[test]
fn version_negotiates_down_and_refuses_the_unknown() {
    let f = Fixture::new("p9-version");
    let mut c = Client::new(Server::new(&f.share(), false).unwrap());
    assert_eq!(c.version(1 << 30), (MAX_MSIZE, b"9P2000.L".to_vec()));
    assert_eq!(c.version(8192), (8192, b"9P2000.L".to_vec()));
    assert_eq!(c.srv.msize(), 8192);
    // Too small: refused, the old msize stays.
    let (_, v) = c.version(100);
    assert_eq!(v, b"unknown");
    c.t(msg::TVERSION).u32(65536).str(b"9P2000.u").finish();
    let b = c.send(msg::RVERSION).unwrap();
    assert_eq!(&b[6..], b"unknown");
    assert_eq!(c.srv.msize(), 8192);
    // A request above msize is refused.
    c.attach(ROOT).unwrap();
    c.walk(ROOT, 1, &[b"file"]).unwrap();
    c.lopen(1, 0).unwrap();
    let big = vec![0u8; 9000];
    assert_eq!(c.write(1, 0, &big), Err(libc::EMSGSIZE));
    // Reads are clipped to msize.
    assert_eq!(c.read(1, 0, u32::MAX).unwrap().len(), 8192 - 11);
    // A new version drops every fid.
    c.version(8192);
    assert_eq!(c.srv.fid_count(), 0);
    assert_eq!(c.read(1, 0, 10), Err(EBADF));
}

#[test]
fn reads_exact_bytes() {
    let f = Fixture::new("p9-read");
    let mut c = f.client(true);
    assert_eq!(c.cat(&[b"file"]).unwrap(), file_bytes());
    assert_eq!(c.cat(&[b"sub", b"inner"]).unwrap(), b"inner\n");
    c.walk(ROOT, 1, &[b"file"]).unwrap();
    c.lopen(1, 0).unwrap();
    assert_eq!(c.read(1, 9990, 100).unwrap(), &file_bytes()[9990..]);
    assert_eq!(c.read(1, 10_000, 100).unwrap(), b"");
    assert_eq!(c.read(1, 1 << 40, 100).unwrap(), b"");
    // An offset beyond off_t.
    assert_eq!(c.read(1, u64::MAX, 100), Err(EINVAL));
    let (q, mode, size) = c.getattr(1).unwrap();
    assert_eq!((q.ty, mode & libc::S_IFMT, size), (0, libc::S_IFREG, 10_000));
    f.outside_untouched();
}

#[test]
fn dotdot_never_leaves_the_root() {
    let f = Fixture::new("p9-dotdot");
    let mut c = f.client(false);
    let root = c.getattr(ROOT).unwrap().0;
    let q = c.walk(ROOT, 1, &[b"..", b"..", b".."]).unwrap();
    assert_eq!(q, [root, root, root]);
    // From the new fid, still the root.
    assert_eq!(c.readdir_names(1).iter().filter(|n| n.as_slice() == b"file").count(), 1);
    // Out and back in: `outside` is not reachable.
    let q = c.walk(ROOT, 2, &[b"..", b"outside", b"canary"]).unwrap();
    assert_eq!(q, [root], "stopped after `..`");
    assert_eq!(c.walk(ROOT, 2, &[b"outside"]), Err(ENOENT));
    // `..` from a subdirectory is the root, then the root again.
    let q = c.walk(ROOT, 3, &[b"sub", b"..", b"..", b"sub", b"inner"]).unwrap();
    assert_eq!(q.len(), 5);
    assert_eq!((q[1], q[2]), (root, root));
    c.walk(ROOT, 4, &[b"sub"]).unwrap();
    assert_eq!(c.walk(4, 5, &[b"..", b".."]).unwrap(), [root, root]);
    f.outside_untouched();
}

impl Client {
    fn readdir_names(&mut self, dirfid: u32) -> Vec<Vec<u8>> {
        const F: u32 = 998;
        self.walk(dirfid, F, &[]).unwrap();
        self.lopen(F, 0).unwrap();
        let mut names = Vec::new();
        let mut off = 0;
        loop {
            let ents = self.readdir(F, off, 8192).unwrap();
            if ents.is_empty() {
                break;
            }
            off = ents.last().unwrap().1;
            names.extend(ents.into_iter().map(|e| e.0));
        }
        self.clunk(F).unwrap();
        names.sort();
        names
    }
}

#[test]
fn names_with_slashes_and_dots_are_refused() {
    let f = Fixture::new("p9-names");
    let mut c = f.client(false);
    for bad in [&b"../../etc/passwd"[..], b"/etc/passwd", b"sub/inner", b"", b"a\0b", b"../outside"] {
        assert_eq!(c.walk(ROOT, 1, &[bad]), Err(EINVAL), "{bad:?}");
        assert_eq!(c.lcreate(ROOT, bad, 2, 0o644), Err(EINVAL), "{bad:?}");
        assert_eq!(c.mkdir(ROOT, bad, 0o755), Err(EINVAL), "{bad:?}");
    }
    for bad in [&b"."[..], b".."] {
        assert_eq!(c.lcreate(ROOT, bad, 2, 0o644), Err(EINVAL));
        assert_eq!(c.mkdir(ROOT, bad, 0o755), Err(EINVAL));
        assert_eq!(c.unlinkat(ROOT, bad, 0), Err(EINVAL));
        assert_eq!(c.symlink(ROOT, bad, b"x"), Err(EINVAL));
    }
    let long = vec![b'a'; 256];
    assert_eq!(c.lcreate(ROOT, &long, 2, 0o644), Err(libc::ENAMETOOLONG));
    c.walk(ROOT, 7, &[]).unwrap();
    assert_eq!(c.lcreate(7, &long[..255], 2, 0o644).map(drop), Ok(()));
    // A later bad name: the walk stops there, the new fid is not made.
    assert_eq!(c.walk(ROOT, 1, &[b"sub", b"a/b"]).unwrap().len(), 1);
    assert_eq!(c.getattr(1), Err(EBADF));
    f.outside_untouched();
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let f = Fixture::new("p9-symlink");
    let mut c = f.client(false);
    for link in [&b"abs"[..], b"rel", b"dirlink", b"slash"] {
        let q = c.walk(ROOT, 1, &[link]).unwrap();
        assert_eq!(q[0].ty, QTSYMLINK, "{link:?} is a link, not its target");
        assert_eq!(c.lopen(1, 0), Err(libc::ELOOP));
        assert_eq!(c.lopen(1, 2), Err(libc::ELOOP));
        // Walking through it stops at the link.
        assert_eq!(c.walk(ROOT, 2, &[link, b"canary"]).unwrap().len(), 1);
        assert_eq!(c.walk(ROOT, 2, &[link, b"etc"]).unwrap().len(), 1);
        assert_eq!(c.walk(1, 2, &[b"canary"]), Err(libc::ENOTDIR));
        // Creating through it fails too.
        assert_eq!(c.lcreate(1, b"new", 2, 0o644), Err(libc::ENOTDIR));
        assert_eq!(c.mkdir(1, b"new", 0o755), Err(libc::ENOTDIR));
        // Changing its size or mode never reaches the target.
        assert_eq!(c.setattr_size(1, 0), Err(EINVAL));
        c.setattr_mode(1, 0o777).unwrap();
        c.clunk(1).unwrap();
    }
    // Creating a file at a link's name never follows it.
    assert_eq!(c.lcreate(ROOT, b"abs", 2 | 0o1000, 0o644), Err(libc::EEXIST));
    assert_eq!(c.lcreate(ROOT, b"rel", 0o200 | 2, 0o644), Err(libc::EEXIST));
    // The guest sees the targets as text.
    c.walk(ROOT, 1, &[b"abs"]).unwrap();
    assert_eq!(c.readlink(1).unwrap(), f.outside().join("canary").as_os_str().as_encoded_bytes());
    c.walk(ROOT, 3, &[b"file"]).unwrap();
    assert_eq!(c.readlink(3), Err(EINVAL));
    f.outside_untouched();
}

#[test]
fn guest_made_symlinks_lead_nowhere() {
    let f = Fixture::new("p9-guestlink");
    let mut c = f.client(false);
    let out = f.outside();
    let out_b = out.as_os_str().as_encoded_bytes();
    c.symlink(ROOT, b"esc", out_b).unwrap();
    c.symlink(ROOT, b"up", b"../outside").unwrap();
    c.symlink(ROOT, b"dangling", b"../outside/new-file").unwrap();
    assert_eq!(std::fs::read_link(f.share().join("up")).unwrap(), Path::new("../outside"));
    for link in [&b"esc"[..], b"up"] {
        assert_eq!(c.walk(ROOT, 1, &[link, b"canary"]).unwrap().len(), 1);
    }
    // A dangling link to a new file outside: creating at that name fails,
    // with or without O_EXCL.
    assert_eq!(c.lcreate(ROOT, b"dangling", 2, 0o644), Err(libc::EEXIST));
    assert_eq!(c.lcreate(ROOT, b"dangling", 2 | 0o200, 0o644), Err(libc::EEXIST));
    // Over-long and empty targets.
    assert_eq!(c.symlink(ROOT, b"long", &[b'x'; 4096]), Err(libc::ENAMETOOLONG));
    assert_eq!(c.symlink(ROOT, b"empty", b""), Err(ENOENT));
    f.outside_untouched();
}

#[test]
fn hard_links_stay_inside() {
    let f = Fixture::new("p9-link");
    let mut c = f.client(false);
    // Linking a link to the outside makes a second link to the symlink
    // itself, never to its target.
    c.walk(ROOT, 1, &[b"abs"]).unwrap();
    c.link(ROOT, 1, b"hard").unwrap();
    let meta = std::fs::symlink_metadata(f.share().join("hard")).unwrap();
    assert!(meta.file_type().is_symlink());
    // A regular file inside can be linked.
    c.walk(ROOT, 2, &[b"file"]).unwrap();
    c.link(ROOT, 2, b"file2").unwrap();
    assert_eq!(std::fs::read(f.share().join("file2")).unwrap(), file_bytes());
    // Directories cannot.
    c.walk(ROOT, 3, &[b"sub"]).unwrap();
    assert_eq!(c.link(ROOT, 3, b"sub2"), Err(libc::EPERM));
    // Bad names and fids.
    assert_eq!(c.link(ROOT, 2, b"../x"), Err(EINVAL));
    assert_eq!(c.link(ROOT, 77, b"x"), Err(EBADF));
    f.outside_untouched();
}

#[test]
fn device_nodes_are_refused() {
    let f = Fixture::new("p9-mknod");
    let mut c = f.client(false);
    // /dev/null's numbers and /dev/sda's.
    assert_eq!(c.mknod(ROOT, b"null", libc::S_IFCHR | 0o666, 1, 3), Err(libc::EPERM));
    assert_eq!(c.mknod(ROOT, b"sda", libc::S_IFBLK | 0o666, 8, 0), Err(libc::EPERM));
    assert!(!f.share().join("null").exists());
    // FIFOs are fine, but never opened on the host.
    let q = c.mknod(ROOT, b"fifo", libc::S_IFIFO | 0o644, 0, 0).unwrap();
    assert_eq!(q.ty, 0);
    assert!(std::fs::metadata(f.share().join("fifo")).unwrap().file_type().is_fifo());
    c.walk(ROOT, 1, &[b"fifo"]).unwrap();
    assert_eq!(c.lopen(1, 0), Err(libc::EACCES));
    assert_eq!(c.lcreate(ROOT, b"fifo", 0, 0o644), Err(libc::EEXIST));
    // Set-id bits never reach the host.
    let q = c.mknod(ROOT, b"plain", libc::S_IFREG | 0o6755, 0, 0).unwrap();
    assert_eq!(q.ty, 0);
    assert_eq!(std::fs::metadata(f.share().join("plain")).unwrap().mode() & 0o7777, 0o755);
    c.walk(ROOT, 2, &[b"plain"]).unwrap();
    c.setattr_mode(2, 0o4755).unwrap();
    assert_eq!(std::fs::metadata(f.share().join("plain")).unwrap().mode() & 0o7777, 0o755);
    f.outside_untouched();
}

#[test]
fn fids_are_checked_and_bounded() {
    let f = Fixture::new("p9-fids");
    let mut c = f.client(false);
    assert_eq!(c.attach(ROOT), Err(EBADF), "attach to a fid in use");
    assert_eq!(c.read(42, 0, 10), Err(EBADF));
    assert_eq!(c.walk(42, 43, &[]), Err(EBADF));
    c.walk(ROOT, 1, &[b"file"]).unwrap();
    assert_eq!(c.walk(ROOT, 1, &[b"sub"]), Err(EBADF), "newfid in use");
    // Walking a fid onto itself replaces it.
    c.walk(ROOT, 2, &[]).unwrap();
    c.walk(2, 2, &[b"sub"]).unwrap();
    assert_eq!(c.getattr(2).unwrap().0.ty, QTDIR);
    // Not opened: no I/O.
    assert_eq!(c.read(1, 0, 10), Err(EBADF));
    assert_eq!(c.write(1, 0, b"x"), Err(EBADF));
    c.lopen(1, 0).unwrap();
    assert_eq!(c.lopen(1, 0), Err(EBADF), "opened twice");
    assert_eq!(c.write(1, 0, b"x"), Err(EBADF), "opened read-only");
    c.clunk(1).unwrap();
    assert_eq!(c.clunk(1), Err(EBADF), "clunk twice");
    assert_eq!(c.read(1, 0, 10), Err(EBADF), "clunked");
    // The fid table is bounded.
    c.srv.set_max_fids(8);
    for i in 0..6 {
        c.walk(ROOT, 100 + i, &[]).unwrap();
    }
    assert_eq!(c.srv.fid_count(), 8);
    assert_eq!(c.walk(ROOT, 200, &[]), Err(libc::ENFILE));
    assert_eq!(c.attach(201), Err(libc::ENFILE));
    c.walk(ROOT, ROOT, &[]).unwrap();
    // An afid is refused (no authentication).
    c.t(msg::TATTACH).u32(300).u32(5).str(b"").str(b"").u32(0).finish();
    assert_eq!(c.send(msg::RATTACH), Err(EINVAL));
    f.outside_untouched();
}

#[test]
fn malformed_messages_get_errors_not_panics() {
    let f = Fixture::new("p9-malformed");
    let mut c = f.client(false);
    let mut reply = [0u8; 64];
    // No header at all: nothing to answer.
    assert_eq!(c.srv.handle(&[1, 2, 3], &mut reply[..]), 0);
    // Size field beyond the bytes given, and below the header.
    for size in [100u32, 6, 0, u32::MAX] {
        let mut m = size.to_le_bytes().to_vec();
        m.extend_from_slice(&[msg::TCLUNK, 7, 0, 0, 0, 0, 0]);
        assert_eq!(c.srv.handle(&m, &mut reply[..]), 11);
        assert_eq!((reply[4], reply[5], reply[7]), (msg::RLERROR, 7, EINVAL as u8));
    }
    // Truncated bodies of every type, and unknown types.
    for ty in 0..=255u8 {
        for len in [0usize, 1, 3, 5, 9] {
            let mut m = ((7 + len) as u32).to_le_bytes().to_vec();
            m.push(ty);
            m.extend_from_slice(&[1, 0]);
            m.extend(std::iter::repeat_n(0xffu8, len));
            let n = c.srv.handle(&m, &mut reply[..]);
            assert!(n >= 7 && n <= reply.len());
        }
    }
    // A walk whose count says more names than it has.
    c.t(msg::TWALK).u32(ROOT).u32(1).u16(3).str(b"sub").finish();
    assert_eq!(c.send(msg::RWALK), Err(EINVAL));
    // A write whose count lies.
    c.walk(ROOT, 1, &[b"file"]).unwrap();
    c.lopen(1, 2).unwrap();
    c.t(msg::TWRITE).u32(1).u64(0).u32(1000).bytes(b"short").finish();
    assert_eq!(c.send(msg::RWRITE), Err(EINVAL));
    assert_eq!(std::fs::read(f.share().join("file")).unwrap(), file_bytes());
    // A reply buffer too small for anything: no reply; for the reply
    // but not its data: an error.
    c.t(msg::TGETATTR).u32(ROOT).u64(0x7ff).finish();
    assert_eq!(c.srv.handle(&c.req, &mut reply[..10]), 0);
    assert_eq!(c.srv.handle(&c.req, &mut reply[..64]), 11);
    assert_eq!(reply[7], libc::ERANGE as u8);
    f.outside_untouched();
}

#[test]
fn readdir_with_tiny_counts_lists_everything_once() {
    let f = Fixture::new("p9-readdir");
    for i in 0..40 {
        std::fs::write(f.share().join(format!("f{i:02}-{}", "x".repeat(i * 3))), b"").unwrap();
    }
    let mut c = f.client(false);
    let mut want: Vec<Vec<u8>> =
        std::fs::read_dir(f.share()).unwrap().map(|e| e.unwrap().file_name().into_encoded_bytes()).collect();
    want.push(b".".to_vec());
    want.push(b"..".to_vec());
    want.sort();
    c.walk(ROOT, 1, &[]).unwrap();
    // Not opened yet.
    assert_eq!(c.readdir(1, 0, 100), Err(EBADF));
    c.lopen(1, 0).unwrap();
    // Too small for the next entry: an error, as getdents64 gives, not an
    // empty (end of directory) reply.
    assert_eq!(c.readdir(1, 0, 0), Err(EINVAL));
    assert_eq!(c.readdir(1, 0, 20), Err(EINVAL));
    let mut off = 0;
    let err = loop {
        match c.readdir(1, off, 60) {
            Ok(ents) => off = ents.last().expect("ended before the long names").1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, EINVAL, "a 60-byte count cannot hold the long names");
    for count in [24 + 121, 200, 1000, u32::MAX] {
        let mut got = Vec::new();
        let mut off = 0;
        for _ in 0..1000 {
            let ents = c.readdir(1, off, count).unwrap();
            if ents.is_empty() {
                break;
            }
            off = ents.last().unwrap().1;
            got.extend(ents.into_iter().map(|e| e.0));
        }
        got.sort();
        assert!(got == want, "count {count}: {} names listed, {} expected", got.len(), want.len());
    }
    // A bogus offset.
    let _ = c.readdir(1, u64::MAX, 100);
    f.outside_untouched();
}

#[test]
fn readonly_share_refuses_every_change() {
    let f = Fixture::new("p9-ro");
    let mut c = f.client(true);
    c.walk(ROOT, 1, &[b"file"]).unwrap();
    assert_eq!(c.lopen(1, 1), Err(EROFS));
    assert_eq!(c.lopen(1, 2), Err(EROFS));
    assert_eq!(c.lopen(1, 0o1000), Err(EROFS), "O_TRUNC");
    c.lopen(1, 0).unwrap();
    assert_eq!(c.write(1, 0, b"x"), Err(EROFS));
    assert_eq!(c.setattr_size(1, 0), Err(EROFS));
    assert_eq!(c.setattr_mode(1, 0o777), Err(EROFS));
    assert_eq!(c.lcreate(ROOT, b"new", 2, 0o644), Err(EROFS));
    assert_eq!(c.mkdir(ROOT, b"new", 0o755), Err(EROFS));
    assert_eq!(c.symlink(ROOT, b"new", b"x"), Err(EROFS));
    assert_eq!(c.mknod(ROOT, b"new", libc::S_IFIFO | 0o644, 0, 0), Err(EROFS));
    assert_eq!(c.link(ROOT, 1, b"new"), Err(EROFS));
    assert_eq!(c.unlinkat(ROOT, b"file", 0), Err(EROFS));
    assert_eq!(c.renameat(ROOT, b"file", ROOT, b"new"), Err(EROFS));
    c.t(msg::TXATTRCREATE).u32(ROOT).str(b"user.x").u64(1).u32(0).finish();
    assert_eq!(c.send(msg::RXATTRCREATE), Err(EROFS));
    c.t(msg::TXATTRWALK).u32(ROOT).u32(5).str(b"user.x").finish();
    assert_eq!(c.send(msg::RXATTRWALK), Err(libc::EOPNOTSUPP));
    c.walk(ROOT, 2, &[b"file"]).unwrap();
    c.t(msg::TREMOVE).u32(2).finish();
    assert_eq!(c.send(msg::RREMOVE), Err(EROFS));
    assert_eq!(c.getattr(2), Err(EBADF), "Tremove clunks even on failure");
    assert_eq!(c.cat(&[b"file"]).unwrap(), file_bytes());
    let names: Vec<_> = std::fs::read_dir(f.share()).unwrap().collect();
    assert_eq!(names.len(), 6);
    f.outside_untouched();
}

#[test]
fn read_write_share_works_like_a_file_system() {
    let f = Fixture::new("p9-rw");
    let mut c = f.client(false);
    c.walk(ROOT, 1, &[]).unwrap();
    c.lcreate(1, b"new", 2, 0o640).unwrap();
    assert_eq!(c.write(1, 0, b"hello world").unwrap(), 11);
    assert_eq!(c.read(1, 6, 100).unwrap(), b"world");
    c.t(msg::TFSYNC).u32(1).u32(0).finish();
    c.send(msg::RFSYNC).unwrap();
    c.setattr_size(1, 5).unwrap();
    assert_eq!(std::fs::read(f.share().join("new")).unwrap(), b"hello");
    assert_eq!(std::fs::metadata(f.share().join("new")).unwrap().mode() & 0o777, 0o640);
    c.mkdir(ROOT, b"d", 0o755).unwrap();
    c.walk(ROOT, 2, &[b"d"]).unwrap();
    c.renameat(ROOT, b"new", 2, b"moved").unwrap();
    assert_eq!(c.cat(&[b"d", b"moved"]).unwrap(), b"hello");
    // The renamed file's fid follows it: `..` from it is `d`.
    let dq = c.getattr(2).unwrap().0;
    assert_eq!(c.walk(1, 3, &[b".."]).unwrap(), [dq]);
    // Trename of a fid.
    c.walk(2, 4, &[b"moved"]).unwrap();
    c.t(msg::TRENAME).u32(4).u32(ROOT).str(b"back").finish();
    c.send(msg::RRENAME).unwrap();
    assert!(f.share().join("back").exists());
    c.t(msg::TREMOVE).u32(4).finish();
    c.send(msg::RREMOVE).unwrap();
    assert!(!f.share().join("back").exists());
    assert_eq!(c.unlinkat(ROOT, b"d", 0), Err(libc::EISDIR));
    c.unlinkat(ROOT, b"d", libc::AT_REMOVEDIR as u32).unwrap();
    assert_eq!(c.unlinkat(ROOT, b"d", 0), Err(ENOENT));
    // Removing the root is refused.
    c.walk(ROOT, 5, &[]).unwrap();
    c.t(msg::TREMOVE).u32(5).finish();
    assert_eq!(c.send(msg::RREMOVE), Err(libc::EBUSY));
    c.t(msg::TSTATFS).u32(ROOT).finish();
    let b = c.send(msg::RSTATFS).unwrap();
    assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), 0x0102_1997);
    // Locks are granted; getlock says unlocked.
    c.t(msg::TLOCK).u32(ROOT).u8(1).u32(0).u64(0).u64(10).u32(7).str(b"guest").finish();
    assert_eq!(c.send(msg::RLOCK).unwrap(), [0]);
    c.t(msg::TGETLOCK).u32(ROOT).u8(1).u64(0).u64(10).u32(7).str(b"guest").finish();
    assert_eq!(c.send(msg::RGETLOCK).unwrap()[0], libc::F_UNLCK as u8);
    c.t(msg::TFLUSH).u16(3).finish();
    c.send(msg::RFLUSH).unwrap();
    f.outside_untouched();
}

#[test]
fn symlink_swapped_in_a_race_is_never_followed() {
    let f = Fixture::new("p9-race");
    let share = f.share();
    std::fs::create_dir(share.join("flip")).unwrap();
    std::fs::write(share.join("flip").join("canary"), b"inside").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, share, out) = (stop.clone(), share.clone(), f.outside());
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // The directory and a link to the outside trade places.
                let _ = std::fs::rename(share.join("flip"), share.join("flip.dir"));
                let _ = symlink(&out, share.join("flip"));
                let _ = std::fs::remove_file(share.join("flip"));
                let _ = std::fs::rename(share.join("flip.dir"), share.join("flip"));
                swaps += 1;
            }
            swaps
        })
    };
    let mut c = f.client(false);
    let mut inside = 0;
    for _ in 0..2000 {
        match c.cat(&[b"flip", b"canary"]) {
            Ok(data) => {
                assert_eq!(data, b"inside", "read through a swapped-in link");
                inside += 1;
            }
            Err(e) => assert!([ENOENT, libc::ENOTDIR, libc::ELOOP].contains(&e), "{e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = flipper.join().unwrap();
    assert!(swaps > 0);
    eprintln!("race: {inside} reads inside, {swaps} swaps");
    let _ = std::fs::remove_file(share.join("flip"));
    f.outside_untouched();
}

// ---- The device, through descriptor chains in guest memory ----

const REQ: u64 = DATA_BASE;
const HDR: u64 = DATA_BASE + 0x1000;
const DATA: u64 = DATA_BASE + 0x10_0000;

fn share_device(path: &Path, readonly: bool) -> Share {
    Share::new(&ShareConfig { path: path.to_path_buf(), tag: "hostshare".into(), readonly }).unwrap()
}

fn activate(dev: &mut Share, mem: &GuestMemoryMmap, drv: &Driver) {
    dev.activate(mem.clone(), vec![drv.queue()]).unwrap();
}

/// Sends `req` with the reply split as `reply` descriptors; returns the
/// used length.
fn exchange(dev: &mut Share, mem: &GuestMemoryMmap, drv: &mut Driver, req: &[u8], reply: &[D]) -> u32 {
    mem.write_slice(req, GuestAddress(REQ)).unwrap();
    let mut descs = vec![r(REQ, req.len() as u32)];
    descs.extend_from_slice(reply);
    let before = drv.used_idx();
    drv.add(&descs);
    dev.process_queue(0);
    assert_eq!(drv.used_idx(), before.wrapping_add(1));
    drv.used(before).1
}

fn tmsg(ty: u8, tag: u16, f: impl FnOnce(&mut Encoder<'_>)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf, ty, tag);
    f(&mut e);
    e.finish();
    buf
}

#[test]
fn config_space_holds_the_tag() {
    let f = Fixture::new("p9-config");
    let dev = share_device(&f.share(), true);
    assert_eq!(dev.device_type(), 9);
    assert_eq!(dev.avail_features(), 1);
    let mut cfg = [0xffu8; 16];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..11], b"\x09\x00hostshare");
    assert_eq!(&cfg[11..], [0; 5]);
    let mut b = [0u8; 2];
    dev.read_config(2, &mut b);
    assert_eq!(&b, b"ho");
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    for tag in ["", &"t".repeat(256), "a\0b"] {
        let cfg = ShareConfig { path: f.share(), tag: tag.into(), readonly: false };
        assert!(Share::new(&cfg).is_err(), "{tag:?}");
    }
    let cfg = ShareConfig { path: f.share().join("nope"), tag: "t".into(), readonly: false };
    let e = Share::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn device_reads_exact_bytes_through_chains() {
    let f = Fixture::new("p9-device");
    let big: Vec<u8> = (0..300_000u64).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(f.share().join("big"), &big).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 64);
    let mut dev = share_device(&f.share(), true);
    activate(&mut dev, &mem, &drv);

    let v = tmsg(msg::TVERSION, wire::NOTAG, |e| {
        e.u32(128 * 1024).str(b"9P2000.L");
    });
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &v, &[w(HDR, 100)]), 21);
    let a = tmsg(msg::TATTACH, 1, |e| {
        e.u32(0).u32(wire::NOFID).str(b"root").str(b"").u32(0);
    });
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &a, &[w(HDR, 100)]), 20);
    let wk = tmsg(msg::TWALK, 2, |e| {
        e.u32(0).u32(1).u16(1).str(b"big");
    });
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &wk, &[w(HDR, 100)]), 22);
    let o = tmsg(msg::TLOPEN, 3, |e| {
        e.u32(1).u32(0);
    });
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &o, &[w(HDR, 100)]), 24);

    // Linux's zero-copy layout: an 11-byte header buffer, then pages, the
    // first one not page-aligned; and the plain layout: one buffer.
    let mut got = Vec::new();
    let chunk = 128 * 1024 - 24;
    let mut tag = 10;
    while got.len() < big.len() {
        let rd = tmsg(msg::TREAD, tag, |e| {
            e.u32(1).u64(got.len() as u64).u32(chunk as u32);
        });
        let zc = tag % 2 == 0;
        mem.write_slice(&vec![0xeeu8; chunk + 11], GuestAddress(DATA)).unwrap();
        let n = if zc {
            let mut descs = vec![w(HDR, 11), w(DATA + 0x234, 0x1000 - 0x234)];
            let mut at = DATA + 0x1000;
            let mut left = chunk - (0x1000 - 0x234);
            while left > 0 {
                let l = left.min(0x1000);
                descs.push(w(at, l as u32));
                at += 0x1000;
                left -= l;
            }
            exchange(&mut dev, &mem, &mut drv, &rd, &descs)
        } else {
            exchange(&mut dev, &mem, &mut drv, &rd, &[w(DATA, (chunk + 11) as u32)])
        } as usize;
        let mut hdr = [0u8; 11];
        let data_at = if zc {
            mem.read_slice(&mut hdr, GuestAddress(HDR)).unwrap();
            DATA + 0x234
        } else {
            mem.read_slice(&mut hdr, GuestAddress(DATA)).unwrap();
            DATA + 11
        };
        assert_eq!(hdr[4], msg::RREAD);
        assert_eq!(u16::from_le_bytes([hdr[5], hdr[6]]), tag);
        let count = u32::from_le_bytes(hdr[7..11].try_into().unwrap()) as usize;
        assert_eq!(n, 11 + count);
        let mut data = vec![0u8; count];
        mem.read_slice(&mut data, GuestAddress(data_at)).unwrap();
        got.extend_from_slice(&data);
        tag += 1;
    }
    assert_eq!(got, big);
    assert_eq!(dev.stats().read_bytes, big.len() as u64);
}

#[test]
fn device_drops_malformed_chains_and_keeps_serving() {
    let f = Fixture::new("p9-chains");
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let mut dev = share_device(&f.share(), false);
    activate(&mut dev, &mem, &drv);
    let v = tmsg(msg::TVERSION, wire::NOTAG, |e| {
        e.u32(8192).str(b"9P2000.L");
    });
    // No writable descriptor: consumed with length 0.
    mem.write_slice(&v, GuestAddress(REQ)).unwrap();
    drv.add(&[r(REQ, v.len() as u32)]);
    dev.process_queue(0);
    assert_eq!(drv.used(drv.used_idx() - 1).1, 0);
    // Readable after writable.
    drv.add(&[r(REQ, v.len() as u32), w(HDR, 100), r(REQ, 4)]);
    dev.process_queue(0);
    assert_eq!(drv.used(drv.used_idx() - 1).1, 0);
    // Outside guest memory.
    drv.add(&[r(MEM_SIZE - 4, 100), w(HDR, 100)]);
    dev.process_queue(0);
    assert_eq!(drv.used(drv.used_idx() - 1).1, 0);
    // A request longer than msize in the readable part: cut at msize,
    // still answered from its size field.
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &v, &[w(HDR, 100)]), 21);
    let mut long = tmsg(msg::TATTACH, 1, |e| {
        e.u32(0).u32(wire::NOFID).str(b"").str(b"").u32(0);
    });
    long.resize(20_000, 0xaa);
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &long, &[w(HDR, 100)]), 20);
    // Then a normal request still works.
    let g = tmsg(msg::TGETATTR, 5, |e| {
        e.u32(0).u64(0x7ff);
    });
    assert_eq!(exchange(&mut dev, &mem, &mut drv, &g, &[w(HDR, 0x200)]), 160);
    f.outside_untouched();
}

#[test]
fn device_yields_after_its_pass_budget_and_finishes_later() {
    let f = Fixture::new("p9-budget");
    let data = vec![7u8; 512 * 1024];
    std::fs::write(f.share().join("big"), &data).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 128);
    let mut dev = share_device(&f.share(), true);
    activate(&mut dev, &mem, &drv);
    for (i, m) in [
        tmsg(msg::TVERSION, wire::NOTAG, |e| {
            e.u32(MAX_MSIZE).str(b"9P2000.L");
        }),
        tmsg(msg::TATTACH, 1, |e| {
            e.u32(0).u32(wire::NOFID).str(b"").str(b"").u32(0);
        }),
        tmsg(msg::TWALK, 2, |e| {
            e.u32(0).u32(1).u16(1).str(b"big");
        }),
        tmsg(msg::TLOPEN, 3, |e| {
            e.u32(1).u32(0);
        }),
    ]
    .iter()
    .enumerate()
    {
        assert!(exchange(&mut dev, &mem, &mut drv, m, &[w(HDR, 100)]) > 0, "step {i}");
    }
    // 100 reads of 512 KiB each into the same buffer: more bytes than one
    // pass may move.
    let rd = tmsg(msg::TREAD, 9, |e| {
        e.u32(1).u64(0).u32(u32::MAX);
    });
    mem.write_slice(&rd, GuestAddress(REQ)).unwrap();
    let before = drv.used_idx();
    for _ in 0..100 {
        drv.add(&[r(REQ, rd.len() as u32), w(DATA, MAX_MSIZE)]);
    }
    assert_eq!(dev.process_queue(0), QueueSet::of(0));
    let first = drv.used_idx().wrapping_sub(before);
    assert!(first < 100, "one pass served everything ({first})");
    assert!(u64::from(first) * u64::from(MAX_MSIZE) <= MAX_BYTES_PER_PASS + u64::from(MAX_MSIZE));
    // The device asked the event loop to come back.
    let fd = dev.backend_fds()[0];
    assert!(dev.backend_wants_input(0));
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, no timeout.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1, "continuation not signalled");
    let mut rounds = 0;
    while drv.used_idx().wrapping_sub(before) < 100 {
        dev.process_backend(0);
        rounds += 1;
        assert!(rounds < 100);
    }
    for i in 0..100 {
        assert_eq!(drv.used(before.wrapping_add(i)).1, MAX_MSIZE);
    }
    assert_eq!(dev.stats().read_bytes, 100 * u64::from(MAX_MSIZE - 11));
    // Reset drops the session.
    dev.reset();
    assert!(!dev.backend_wants_input(0));
}

/// Device nodes already in the share (as under a shared `/`: the host's
/// `/dev`) are never opened on the host, and the guest's open flags
/// (`O_PATH`, `O_DIRECTORY`, `O_NOFOLLOW`, `O_CREAT`, `O_TRUNC`) cannot turn
/// a fid into something that reaches outside or past the read-only bound.
#[test]
fn host_device_nodes_and_open_flag_tricks_reach_nothing() {
    let f = Fixture::new("p9-devnodes");
    // A host char device (/dev/null's numbers) and block device (/dev/sda's)
    // in the share: needs CAP_MKNOD; without it the flag tricks still run.
    let mut made = Vec::new();
    for (name, mode, dev) in [("null", libc::S_IFCHR, libc::makedev(1, 3)), ("sda", libc::S_IFBLK, libc::makedev(8, 0))]
    {
        let p = std::ffi::CString::new(f.share().join(name).as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mknod touches no memory of ours.
        if unsafe { libc::mknod(p.as_ptr(), mode | 0o666, dev) } == 0 {
            made.push(name);
        }
    }
    for ro in [true, false] {
        let mut c = f.client(ro);
        for name in &made {
            c.walk(ROOT, 1, &[name.as_bytes()]).unwrap();
            for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY, libc::O_PATH] {
                assert_eq!(c.lopen(1, flags as u32), Err(libc::EACCES), "{name} opened with {flags:#x}");
            }
            assert_eq!(c.read(1, 0, 16), Err(EBADF), "{name} read without an open");
            c.clunk(1).unwrap();
        }
        // O_PATH from the guest: the fid is still opened for I/O on the
        // file itself (or refused), never left as a bare path to misuse.
        c.walk(ROOT, 1, &[b"file"]).unwrap();
        if c.lopen(1, libc::O_PATH as u32).is_ok() {
            assert_eq!(c.read(1, 0, 4).unwrap(), file_bytes()[..4]);
        }
        c.clunk(1).unwrap();
        // Through a link: O_PATH, O_NOFOLLOW or O_DIRECTORY never follow it.
        for link in [&b"abs"[..], b"dirlink", b"slash"] {
            c.walk(ROOT, 1, &[link]).unwrap();
            for flags in [libc::O_PATH, libc::O_PATH | libc::O_NOFOLLOW, libc::O_DIRECTORY, libc::O_NOFOLLOW] {
                assert!(c.lopen(1, flags as u32).is_err(), "{link:?} opened with {flags:#x}");
            }
            c.clunk(1).unwrap();
        }
        // A read-only share refuses O_CREAT|O_TRUNC|O_WRONLY on an open.
        c.walk(ROOT, 1, &[b"file"]).unwrap();
        let r = c.lopen(1, (libc::O_WRONLY | libc::O_TRUNC | libc::O_CREAT) as u32);
        if ro {
            assert_eq!(r, Err(EROFS));
        }
        c.clunk(1).unwrap();
    }
    let data: Vec<u8> = std::fs::read(f.share().join("file")).unwrap();
    assert!(data.is_empty() || data == file_bytes(), "only the rw pass may truncate");
    f.outside_untouched();
}

/// A share cannot be saved: its open files are this process's file
/// descriptors. Its live queue is still reported, like every device's.
#[test]
fn snapshot_save_is_refused() {
    let dir = TempDir::new("p9-snap");
    let mem = guest_mem();
    let drv = Driver::new(&mem, 16);
    let mut dev = share_device(dir.path(), false);
    let e = dev.check_saveable().unwrap_err();
    assert!(matches!(e, crate::snapshot::SaveError::Unsupported { device: "virtio-9p", .. }), "{e}");
    assert!(dev.active_queue_states().is_empty());
    activate(&mut dev, &mem, &drv);
    assert_eq!(dev.active_queue_states(), vec![drv.queue().state()]);
    let t = crate::virtio::mmio::MmioTransport::new(
        Box::new(share_device(dir.path(), false)),
        mem.clone(),
        Arc::new(crate::interrupt::CountingIrq::default()),
    )
    .unwrap();
    assert!(t.save_state().unwrap_err().to_string().contains("virtio-9p cannot be saved"));
}
