//! The initramfs cpio writer and reader: arbitrary entries into
//! `ember::CpioWriter`, then ember's cpio reader (`parse_cpio`, through the
//! `fuzzing` feature) must give back
//! exactly the entries the writer accepted.
//!
//! Input: operations until the input ends, each an opcode byte (modulo 6):
//!
//! ```text
//! 0  dir:       name, perm u32
//! 1  file:      name, perm u32, data (u16 length, bytes)
//! 2  symlink:   name, target (u8 length, bytes)
//! 3  char_dev:  name, perm u32, major u32, minor u32
//! 4  again:     u8 index of an accepted name, added again as a file
//! 5  applet:    name, kept for the initramfs check below
//! name: u8 length and bytes (lossy UTF-8); length 255 means a long name
//!       of 4090 + u8 % 12 bytes instead
//! ```
//!
//! Invariants: no panic; a name is refused (`BadName`) exactly when it is
//! empty, absolute, has an empty or `..` component, a NUL, 4096 bytes or
//! more, or is `TRAILER!!!`, and otherwise refused (`Duplicate`) exactly
//! when it was accepted before; the archive is 4-byte aligned; `parse`
//! returns exactly the accepted entries, in order, with their names, modes
//! (type bits plus `perm & 0o7777`; 0o777 for symlinks), data and device
//! numbers; any strict prefix of the archive does not parse; `parse` of the
//! raw input does not panic. Finally, when the input names applets,
//! the smoke test's `build_initramfs` with them: when it succeeds, its archive parses and holds
//! `/init`, `bin/busybox` and `dev/console` as given.
#![no_main]

use ember::fuzzing::{self as cpio, CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
use ember::{CpioError, CpioWriter};
use ember_fuzz::input::Reader;
use libfuzzer_sys::fuzz_target;

fn name(r: &mut Reader) -> String {
    let n = r.u8();
    if n == 255 {
        return "x".repeat(4090 + usize::from(r.u8() % 12));
    }
    String::from_utf8_lossy(r.bytes(usize::from(n))).into_owned()
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('/')
        && !n.contains('\0')
        && n.len() < 4096
        && n.split('/').all(|c| !c.is_empty() && c != "..")
        && n != "TRAILER!!!"
}

fuzz_target!(|data: &[u8]| {
    let _ = cpio::parse_cpio(data);

    let mut r = Reader::new(data);
    let mut w = CpioWriter::new();
    let mut accepted: Vec<CpioEntry> = Vec::new();
    let mut applets = Vec::new();
    while !r.is_empty() {
        let op = r.u8() % 6;
        let (name, result, mode, data, rdev) = match op {
            0 => {
                let n = name(&mut r);
                let perm = r.u32();
                let res = w.dir(&n, perm);
                (n, res, S_IFDIR | (perm & 0o7777), Vec::new(), (0, 0))
            }
            1 => {
                let n = name(&mut r);
                let perm = r.u32();
                let d = r.blob16().to_vec();
                let res = w.file(&n, perm, &d);
                (n, res, S_IFREG | (perm & 0o7777), d, (0, 0))
            }
            2 => {
                let n = name(&mut r);
                let target = String::from_utf8_lossy(r.blob8()).into_owned();
                let res = w.symlink(&n, &target);
                (n, res, S_IFLNK | 0o777, target.into_bytes(), (0, 0))
            }
            3 => {
                let n = name(&mut r);
                let (perm, major, minor) = (r.u32(), r.u32(), r.u32());
                let res = w.char_dev(&n, perm, major, minor);
                (n, res, S_IFCHR | (perm & 0o7777), Vec::new(), (major, minor))
            }
            4 => {
                let i = usize::from(r.u8());
                let Some(n) = accepted.get(i % accepted.len().max(1)).map(|e| e.name.clone()) else {
                    continue;
                };
                assert!(w.contains(&n));
                let res = w.file(&n, 0o644, b"");
                assert_eq!(res, Err(CpioError::Duplicate(n)));
                continue;
            }
            _ => {
                applets.push(name(&mut r));
                continue;
            }
        };
        let dup = accepted.iter().any(|e| e.name == name);
        if !valid_name(&name) {
            assert_eq!(result, Err(CpioError::BadName(name.clone())), "{name:?}");
        } else if dup {
            assert_eq!(result, Err(CpioError::Duplicate(name.clone())), "{name:?}");
        } else {
            assert_eq!(result, Ok(()), "{name:?}");
            assert!(w.contains(&name));
            accepted.push(CpioEntry { name, mode, data, rdev });
        }
    }

    let archive = w.finish();
    assert_eq!(archive.len() % 4, 0);
    let parsed = cpio::parse_cpio(&archive).expect("the writer's archive does not parse");
    assert!(parsed == accepted, "round trip:\n wrote {accepted:?}\n read {parsed:?}");
    let cut = data.len() % archive.len();
    assert!(cpio::parse_cpio(&archive[..cut]).is_none(), "a {cut}-byte prefix parsed");
    assert!(cpio::parse_cpio(&archive[..archive.len() - 1]).is_none());

    if applets.is_empty() {
        return;
    }
    let busybox = &data[..data.len().min(64)];
    let init = ember::fuzzing::init_script(&applets);
    if let Ok(a) = ember::fuzzing::build_initramfs(busybox, &applets, &init) {
        let e = cpio::parse_cpio(&a).expect("initramfs does not parse");
        let find = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("no {n}"));
        assert_eq!(find("init").data, init.as_bytes());
        assert_eq!(find("bin/busybox").data, busybox);
        assert_eq!(find("dev/console").rdev, (5, 1));
    }
});
