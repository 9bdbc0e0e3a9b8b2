//! 9P2000.L request sequences against ember's virtio-9p file server
//! (`ember_devices::virtio::p9::Server`) over a scratch directory.
//!
//! Input: see `ember_fuzz::p9` (a config byte, then requests built from a
//! description or taken raw).
//!
//! The scratch directory (per process; every input starts on a pristine
//! share: the previous one if it is verifiably unchanged, else one rebuilt)
//! is `base/share/` (served) holding a file, a subdirectory with a file,
//! and symbolic links pointing out (absolute to the canary, relative to
//! it, to the outside directory, to `/`), and `base/outside/canary`.
//! Invariants: no panic; every reply fits the room given, its size field
//! is its length, its tag is the request's, its type is `Rlerror` or the
//! request's type + 1; the fid count stays within the bound; after every
//! input the canary has its content, mode and a single link, `outside/`
//! holds only the canary and `base/` only `share/` and `outside/`.
#![no_main]

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ember_devices::virtio::p9::wire::msg;
use ember_devices::virtio::p9::{Server, MAX_MSIZE};
use ember_fuzz::input::Reader;
use ember_fuzz::p9::{build, MAX_REQUESTS};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"the host, outside the share\n";
const MAX_FIDS: usize = 64;

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("ember-fuzz-p9-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("outside")).unwrap();
        std::fs::write(b.join("outside/canary"), CANARY).unwrap();
        b
    })
}

/// The share's entries (paths from its root; "" is the root itself).
const ENTRIES: [&str; 8] = ["", "file", "sub", "sub/inner", "abs", "rel", "dirlink", "slash"];

/// What a share entry's `lstat` says, less the access time (reads move
/// it; a fresh share's is "now" anyway).
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    blocks: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn meta(path: &Path) -> Option<Meta> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(Meta {
        ino: m.ino(),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink(),
        size: m.size(),
        blocks: m.blocks(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn file_content() -> Vec<u8> {
    b"0123456789abcdef".repeat(64)
}

/// The link targets of the share: (entry, target).
fn links(base: &Path) -> [(&'static str, PathBuf); 4] {
    [
        ("abs", base.join("outside/canary")),
        ("rel", PathBuf::from("../outside/canary")),
        ("dirlink", base.join("outside")),
        ("slash", PathBuf::from("/")),
    ]
}

/// Lays out a fresh share.
fn build_share(base: &Path) -> PathBuf {
    let share = base.join("share");
    if share.exists() && std::fs::remove_dir_all(&share).is_err() {
        // Not root, and the input chmod'ed a directory: make it removable.
        let _ = std::process::Command::new("chmod").args(["-R", "u+rwx"]).arg(&share).status();
        std::fs::remove_dir_all(&share).unwrap();
    }
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("file"), file_content()).unwrap();
    std::fs::write(share.join("sub/inner"), b"inner\n").unwrap();
    for (name, target) in links(base) {
        symlink(target, share.join(name)).unwrap();
    }
    share
}

fn names(dir: &Path) -> Option<Vec<std::ffi::OsString>> {
    let mut v = std::fs::read_dir(dir).ok()?.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>().ok()?;
    v.sort();
    Some(v)
}

/// Whether the share is still exactly as `build_share` laid it out, with
/// the metadata recorded then: the same inodes with the same type, mode,
/// owner, link count, size, blocks, modification and change times; no
/// other entry in the share or in `sub`; the files' content and the links'
/// targets. (Nothing the server can do leaves all of that unchanged: it
/// sets no extended attributes, and a change of content, entries or
/// metadata shows in the content, the listings or the `lstat` fields even
/// within one tick of the coarse file-system clock.)
fn pristine(base: &Path, share: &Path, recorded: &[Meta]) -> bool {
    ENTRIES.iter().zip(recorded).all(|(e, want)| meta(&share.join(e)).as_ref() == Some(want))
        && names(share).is_some_and(|n| n == ["abs", "dirlink", "file", "rel", "slash", "sub"])
        && names(&share.join("sub")).is_some_and(|n| n == ["inner"])
        && std::fs::read(share.join("file")).is_ok_and(|c| c == file_content())
        && std::fs::read(share.join("sub/inner")).is_ok_and(|c| c == b"inner\n")
        && links(base).iter().all(|(name, target)| std::fs::read_link(share.join(name)).is_ok_and(|t| &t == target))
}

/// A share as `build_share` lays it out: the one the previous input left if
/// it is still pristine (most inputs change nothing, and tearing the share
/// down and laying it out again was most of the target's time), else a
/// freshly built one.
fn fresh_share(base: &Path) -> PathBuf {
    static RECORDED: Mutex<Option<(PathBuf, Vec<Meta>)>> = Mutex::new(None);
    let mut recorded = RECORDED.lock().unwrap();
    if let Some((share, metas)) = recorded.as_ref() {
        if pristine(base, share, metas) {
            return share.clone();
        }
    }
    let share = build_share(base);
    let metas = ENTRIES.iter().map(|e| meta(&share.join(e)).expect("lstat of a fresh share entry")).collect();
    *recorded = Some((share.clone(), metas));
    share
}

fn check_outside(base: &Path) {
    let canary = base.join("outside/canary");
    assert_eq!(std::fs::read(&canary).unwrap(), CANARY, "canary changed");
    let meta = std::fs::metadata(&canary).unwrap();
    assert_eq!(meta.nlink(), 1, "canary got a hard link");
    assert_eq!(meta.mode() & 0o7777, 0o644, "canary's mode changed");
    let outside: Vec<_> = std::fs::read_dir(base.join("outside")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, ["canary"], "created outside the share");
    let mut top: Vec<_> = std::fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name()).collect();
    top.sort();
    assert_eq!(top, ["outside", "share"], "created beside the share");
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let share = fresh_share(base);
    let mut r = Reader::new(data);
    let config = r.u8();
    let readonly = config & 1 != 0;
    let mut srv = Server::new(&share, readonly).expect("server");
    srv.set_max_fids(MAX_FIDS);
    let mut req = Vec::new();
    // All zero, as a fresh buffer would be: the previous input's replies
    // are wiped at the end (the room it used), without allocating and
    // faulting in 512 KiB per input.
    static REPLY: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut reply = REPLY.lock().unwrap();
    if reply.is_empty() {
        reply.resize(MAX_MSIZE as usize, 0);
    }
    let mut dirty = 0;
    for i in 0..MAX_REQUESTS {
        if r.is_empty() {
            break;
        }
        let tag = i as u16;
        build(&mut r, &mut req, tag);
        let room = match (config >> 1) & 3 {
            0 => 64,
            1 => 4096,
            2 => srv.msize() as usize,
            _ => 11,
        };
        dirty = dirty.max(room);
        let n = srv.handle(&req, &mut reply[..room]);
        assert!(n <= room, "reply of {n} bytes in {room}");
        if n > 0 {
            assert!(n >= 7);
            assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize, n, "size field");
            if req.len() >= 7 {
                assert_eq!(reply[5..7], req[5..7], "tag");
                let ty = reply[4];
                assert!(ty == msg::RLERROR || ty == req[4].wrapping_add(1), "reply type {ty} to {}", req[4]);
                if ty == msg::RLERROR {
                    assert_eq!(n, 11);
                }
            }
        } else {
            assert!(req.len() < 7 || room < 11, "no reply to a framed request with room");
        }
        assert!(srv.fid_count() <= MAX_FIDS);
    }
    drop(srv);
    reply[..dirty].fill(0);
    drop(reply);
    assert!(share.is_dir(), "the share's root is gone");
    check_outside(base);
});
