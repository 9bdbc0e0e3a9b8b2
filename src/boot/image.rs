//! Recognising a kernel image before loading it, so a bad file gets a precise
//! error (not a kernel, truncated, wrong architecture, too big for memory)
//! instead of a loader failure deep in guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::BootError;

/// What kind of kernel image a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An ELF64 x86-64 executable (vmlinux, or a test guest).
    Elf,
    /// A Linux bzImage (setup header with "HdrS" at 0x202).
    BzImage,
}

/// Facts about a kernel image learnt without loading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image format.
    pub kind: ImageKind,
    /// The highest guest-physical address the loaded image occupies
    /// (exclusive). For a bzImage, where its protected-mode part ends.
    pub load_end: u64,
}

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Reads enough of `path` to tell what it is and whether it is whole.
pub fn inspect(path: &Path, file: &mut File) -> Result<ImageInfo, BootError> {
    let size = file.metadata().map_err(|source| BootError::ReadKernel { path: path.to_path_buf(), source })?.len();
    let mut head = vec![0u8; 4096.min(size as usize)];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut head))
        .map_err(|source| BootError::ReadKernel { path: path.to_path_buf(), source })?;
    let not_kernel = |why: &str| BootError::NotAKernel { path: path.to_path_buf(), why: why.to_string() };

    if head.len() >= 4 && head[..4] == *b"\x7fELF" {
        if head.len() < EHDR_SIZE {
            return Err(BootError::Truncated { path: path.to_path_buf(), why: "ELF header cut short".into() });
        }
        if head[4] != 2 || head[5] != 1 {
            return Err(not_kernel("not a 64-bit little-endian ELF"));
        }
        if u16_at(&head, 18) != EM_X86_64 {
            return Err(not_kernel("ELF for another architecture than x86-64"));
        }
        let phoff = u64_at(&head, 32);
        let phentsize = u16_at(&head, 54) as usize;
        let phnum = u16_at(&head, 56) as u64;
        if phentsize != PHDR_SIZE || phnum == 0 {
            return Err(not_kernel("ELF without usable program headers"));
        }
        let ph_end = phoff
            .checked_add(phnum * PHDR_SIZE as u64)
            .ok_or_else(|| not_kernel("ELF program header offset overflows"))?;
        if ph_end > size {
            return Err(BootError::Truncated {
                path: path.to_path_buf(),
                why: format!("program headers end at {ph_end:#x}, file is {size:#x} bytes"),
            });
        }
        let mut ph = vec![0u8; (phnum as usize) * PHDR_SIZE];
        file.seek(SeekFrom::Start(phoff))
            .and_then(|_| file.read_exact(&mut ph))
            .map_err(|source| BootError::ReadKernel { path: path.to_path_buf(), source })?;
        let mut load_end = 0u64;
        let mut loads = 0;
        for p in ph.chunks_exact(PHDR_SIZE) {
            if u32_at(p, 0) != PT_LOAD {
                continue;
            }
            loads += 1;
            let (offset, paddr, filesz, memsz) = (u64_at(p, 8), u64_at(p, 24), u64_at(p, 32), u64_at(p, 40));
            let file_end = offset.checked_add(filesz).ok_or_else(|| not_kernel("segment offset overflows"))?;
            if file_end > size {
                return Err(BootError::Truncated {
                    path: path.to_path_buf(),
                    why: format!("a segment ends at file offset {file_end:#x}, file is {size:#x} bytes"),
                });
            }
            let end = paddr.checked_add(memsz.max(filesz)).ok_or_else(|| not_kernel("segment address overflows"))?;
            load_end = load_end.max(end);
        }
        if loads == 0 {
            return Err(not_kernel("ELF has no loadable segment"));
        }
        return Ok(ImageInfo { kind: ImageKind::Elf, load_end });
    }

    if head.len() >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        let setup_sects = match head[0x1f1] {
            0 => 4,
            n => n as u64,
        };
        let setup_size = (setup_sects + 1) * 512;
        if size <= setup_size {
            return Err(BootError::Truncated {
                path: path.to_path_buf(),
                why: "bzImage ends inside its setup code".into(),
            });
        }
        let syssize = u32_at(&head, 0x1f4) as u64 * 16;
        if syssize != 0 && setup_size + syssize > size {
            return Err(BootError::Truncated {
                path: path.to_path_buf(),
                why: format!("setup header says {} bytes, file has {}", setup_size + syssize, size),
            });
        }
        let code32_start = u32_at(&head, 0x214) as u64;
        return Ok(ImageInfo { kind: ImageKind::BzImage, load_end: code32_start + size - setup_size });
    }

    Err(not_kernel("neither an ELF executable nor a bzImage"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A scratch image file, removed when dropped.
    struct TmpImage(std::path::PathBuf);

    impl std::ops::Deref for TmpImage {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> (TmpImage, File) {
        let p = std::env::temp_dir().join(format!("ember-image-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        let f = File::open(&p).unwrap();
        (TmpImage(p), f)
    }

    /// A minimal ELF64 with one PT_LOAD of `filesz` bytes at `paddr`.
    pub(crate) fn tiny_elf(paddr: u64, filesz: u64, machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let p = &mut b[64..];
        p[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        p[8..16].copy_from_slice(&120u64.to_le_bytes());
        p[16..24].copy_from_slice(&paddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&filesz.to_le_bytes());
        b.extend(std::iter::repeat_n(0xf4u8, filesz as usize));
        b
    }

    #[test]
    fn recognises_elf() {
        let (p, mut f) = write_tmp("ok", &tiny_elf(0x100000, 16, EM_X86_64));
        let info = inspect(&p, &mut f).unwrap();
        assert_eq!(info, ImageInfo { kind: ImageKind::Elf, load_end: 0x100010 });
    }

    #[test]
    fn rejects_truncated_elf() {
        let mut e = tiny_elf(0x100000, 64, EM_X86_64);
        e.truncate(e.len() - 10);
        let (p, mut f) = write_tmp("trunc", &e);
        assert!(matches!(inspect(&p, &mut f), Err(BootError::Truncated { .. })));
        let (p, mut f) = write_tmp("trunc-hdr", &e[..40]);
        assert!(matches!(inspect(&p, &mut f), Err(BootError::Truncated { .. })));
    }

    #[test]
    fn rejects_other_machines_and_garbage() {
        let (p, mut f) = write_tmp("arm", &tiny_elf(0x100000, 16, 183));
        assert!(matches!(inspect(&p, &mut f), Err(BootError::NotAKernel { .. })));
        let (p, mut f) = write_tmp("text", b"#!/bin/sh\necho hi\n");
        let e = inspect(&p, &mut f).unwrap_err();
        assert!(e.to_string().contains("is not a kernel"), "{e}");
        let (p, mut f) = write_tmp("empty", b"");
        assert!(matches!(inspect(&p, &mut f), Err(BootError::NotAKernel { .. })));
    }

    #[test]
    fn recognises_bzimage_header() {
        let mut b = vec![0u8; 8192];
        b[0x1f1] = 3;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
        let (p, mut f) = write_tmp("bz", &b);
        let info = inspect(&p, &mut f).unwrap();
        assert_eq!(info.kind, ImageKind::BzImage);
        assert_eq!(info.load_end, 0x100000 + 8192 - 2048);
        let (p, mut f) = write_tmp("bz-short", &b[..2048]);
        assert!(matches!(inspect(&p, &mut f), Err(BootError::Truncated { .. })));
    }
}
