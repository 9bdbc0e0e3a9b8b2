//! A writer for the cpio "newc" format (the format Linux's initramfs
//! unpacker reads; `cpio -H newc`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name padded to a multiple of 4, then the data
//! padded to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`. Archives can be concatenated: Linux unpacks one after the
//! other, later entries replacing earlier ones.

use std::collections::HashSet;

/// File-type bits of `mode` (as in `st_mode`).
pub const S_IFDIR: u32 = 0o040000;
/// A regular file.
pub const S_IFREG: u32 = 0o100000;
/// A symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// A character device.
pub const S_IFCHR: u32 = 0o020000;

/// Errors building an archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// A name that is empty, absolute, contains `..` or a NUL, or is too long.
    #[error("invalid cpio entry name {0:?}")]
    BadName(String),
    /// The same name twice.
    #[error("duplicate cpio entry {0:?}")]
    Duplicate(String),
    /// A file larger than the format's 32-bit size field.
    #[error("cpio entry {name:?} is {size} bytes, more than the format's 4 GiB limit")]
    TooLarge {
        /// The entry.
        name: String,
        /// Its size.
        size: usize,
    },
}

/// Builds a newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
    names: HashSet<String>,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        CpioWriter { out: Vec::new(), ino: 1, names: HashSet::new() }
    }

    /// Adds a directory with permission bits `perm`.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), b"")
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link `name` → `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, (major, minor), b"")
    }

    /// Whether `name` is already in the archive.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Ends the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> Result<(), CpioError> {
        let ok = !name.is_empty()
            && !name.starts_with('/')
            && !name.contains('\0')
            && name.len() < 4096
            && name.split('/').all(|c| !c.is_empty() && c != "..");
        if !ok || name == "TRAILER!!!" {
            return Err(CpioError::BadName(name.to_string()));
        }
        if !self.names.insert(name.to_string()) {
            return Err(CpioError::Duplicate(name.to_string()));
        }
        let size =
            u32::try_from(data.len()).map_err(|_| CpioError::TooLarge { name: name.into(), size: data.len() })?;
        let ino = self.ino;
        self.ino += 1;
        self.header(name, ino, mode, nlink, rdev, size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, rdev: (u32, u32), size: u32) {
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

/// One entry read back from a newc archive (for tests and checks).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg(any(test, feature = "fuzzing"))]
pub struct CpioEntry {
    /// Path inside the archive.
    pub name: String,
    /// `st_mode`.
    pub mode: u32,
    /// Contents (the target, for a symlink).
    pub data: Vec<u8>,
    /// Device numbers of a device node.
    pub rdev: (u32, u32),
}

/// Parses a newc archive up to its trailer. Returns `None` on any
/// malformation.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse(mut buf: &[u8]) -> Option<Vec<CpioEntry>> {
    let mut entries = Vec::new();
    let total = buf.len();
    loop {
        let hdr = buf.get(..110)?;
        if &hdr[..6] != b"070701" {
            return None;
        }
        let field = |i: usize| -> Option<u32> {
            let s = std::str::from_utf8(&hdr[6 + i * 8..14 + i * 8]).ok()?;
            u32::from_str_radix(s, 16).ok()
        };
        let (mode, size, rmaj, rmin, namesize) =
            (field(1)?, field(6)? as usize, field(9)?, field(10)?, field(11)? as usize);
        let name_end = 110 + namesize;
        let name = buf.get(110..name_end - 1)?;
        let name = String::from_utf8(name.to_vec()).ok()?;
        let data_start = align4(total - buf.len() + name_end) - (total - buf.len());
        let data = buf.get(data_start..data_start + size)?.to_vec();
        let next = align4(total - buf.len() + data_start + size) - (total - buf.len());
        if name == "TRAILER!!!" {
            return Some(entries);
        }
        entries.push(CpioEntry { name, mode, data, rdev: (rmaj, rmin) });
        buf = buf.get(next..)?;
    }
}

#[cfg(any(test, feature = "fuzzing"))]
fn align4(x: usize) -> usize {
    (x + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF....").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        let e = parse(&a).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/busybox", "bin/sh", "console", "init", "empty"]);
        assert_eq!(e[0].mode, S_IFDIR | 0o755);
        assert_eq!(e[1].mode, S_IFREG | 0o755);
        assert_eq!(e[1].data, b"\x7fELF....");
        assert_eq!(e[2].mode, S_IFLNK | 0o777);
        assert_eq!(e[2].data, b"busybox");
        assert_eq!((e[3].mode, e[3].rdev), (S_IFCHR | 0o600, (5, 1)));
        assert!(e[5].data.is_empty());
    }

    #[test]
    fn header_layout() {
        let mut w = CpioWriter::new();
        w.file("a", 0o644, b"xyz").unwrap();
        let a = w.finish();
        // magic, ino 1, mode 0100644, uid, gid, nlink 1, mtime, size 3.
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081a4");
        assert_eq!(&a[54..62], b"00000003");
        // namesize 2 ("a\0"), name at 110, data at 112 (4-aligned).
        assert_eq!(&a[94..102], b"00000002");
        assert_eq!(&a[110..112], b"a\0");
        assert_eq!(&a[112..115], b"xyz");
        assert_eq!(a[115], 0);
        assert_eq!(&a[116..122], b"070701");
    }

    #[test]
    fn bad_names_and_duplicates() {
        let mut w = CpioWriter::new();
        for n in ["", "/abs", "a/../b", "a//b", "nul\0", "TRAILER!!!"] {
            assert!(matches!(w.file(n, 0o644, b""), Err(CpioError::BadName(_))), "{n:?}");
        }
        w.file("x", 0o644, b"").unwrap();
        assert_eq!(w.file("x", 0o644, b""), Err(CpioError::Duplicate("x".into())));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse(b"").is_none());
        assert!(parse(b"070702").is_none());
        let mut w = CpioWriter::new();
        w.file("f", 0o644, b"data").unwrap();
        let a = w.finish();
        assert!(parse(&a[..a.len() - 20]).is_none());
    }
}
