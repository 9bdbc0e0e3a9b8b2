//! 9P2000.L request sequences against ember's virtio-9p file server
//! (`ember_devices::virtio::p9::Server`) over a scratch directory.
//!
//! Input: see `ember_fuzz::p9` (a config byte, then requests built from a
//! description or taken raw).
//!
//! The scratch directory (per process, rebuilt before every input) is
//! `base/share/` (served) holding a file, a subdirectory with a file, and
//! symbolic links pointing out (absolute to the canary, relative to it,
//! to the outside directory, to `/`), and `base/outside/canary`.
//! Invariants: no panic; every reply fits the room given, its size field
//! is its length, its tag is the request's, its type is `Rlerror` or the
//! request's type + 1; the fid count stays within the bound; after every
//! input the canary has its content, mode and a single link, `outside/`
//! holds only the canary and `base/` only `share/` and `outside/`.
#![no_main]

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// Lays out a fresh share.
fn fresh_share(base: &Path) -> PathBuf {
    let share = base.join("share");
    if share.exists() && std::fs::remove_dir_all(&share).is_err() {
        // Not root, and the input chmod'ed a directory: make it removable.
        let _ = std::process::Command::new("chmod").args(["-R", "u+rwx"]).arg(&share).status();
        std::fs::remove_dir_all(&share).unwrap();
    }
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("file"), b"0123456789abcdef".repeat(64)).unwrap();
    std::fs::write(share.join("sub/inner"), b"inner\n").unwrap();
    symlink(base.join("outside/canary"), share.join("abs")).unwrap();
    symlink("../outside/canary", share.join("rel")).unwrap();
    symlink(base.join("outside"), share.join("dirlink")).unwrap();
    symlink("/", share.join("slash")).unwrap();
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
    let mut reply = vec![0u8; MAX_MSIZE as usize];
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
    assert!(share.is_dir(), "the share's root is gone");
    check_outside(base);
});
