//! Writing guest RAM to a snapshot's memory file: the regions one after
//! the other, `RamLayout::size()` bytes, as sparse as the RAM allows
//! (`/proc/self/pagemap` says which pages hold what):
//!
//! * anonymous RAM (a booted VM): only the pages the guest has touched
//!   (present or swapped); the others stay holes, which read as zeros, as
//!   the untouched pages did;
//! * RAM mapped copy-on-write from a file (a restored VM): the file's data
//!   is copied in the kernel (`copy_file_range`, its holes kept), then the
//!   pages the guest has written since (anonymous now: present or swapped
//!   and not a file page) over it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::SnapshotError;

const PAGE: u64 = 4096;
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
/// The page is a file page (or shared anonymous): for a private file
/// mapping, one the guest has not written.
const PAGEMAP_FILE: u64 = 1 << 61;
/// Pagemap entries read at once (512 KiB of entries, 1 GiB of RAM).
const PAGEMAP_BATCH: usize = 1 << 16;

/// What [`write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// The file's length (the RAM's size).
    pub(crate) len: u64,
    /// Bytes actually written (the rest are holes).
    pub(crate) data: u64,
}

/// Writes `mem` to `file` (new and empty). `backing`: the file RAM is
/// mapped from copy-on-write, if it is. `pagemap` is `/proc/self/pagemap`,
/// opened while `/proc` was in reach; without it every page is written.
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    file: &File,
    backing: Option<&File>,
    pagemap: Option<&File>,
) -> Result<Written, SnapshotError> {
    let io = |what: &'static str| move |source| SnapshotError::Io { what: what.to_string(), source };
    let len: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(len).map_err(io("sizing the memory file"))?;
    let mut offset = 0u64;
    let mut data = 0u64;
    for region in mem.iter() {
        let host = region.as_ptr();
        let rlen = region.len();
        // SAFETY: the region is a live mapping of `rlen` bytes owned by
        // `mem`; the VM is paused (no vCPU runs, no device is served), so
        // nothing writes it while this shared view exists.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, rlen as usize) };
        let Some(pm) = pagemap else {
            file.write_all_at(bytes, offset).map_err(io("writing the memory file"))?;
            data += rlen;
            offset += rlen;
            continue;
        };
        let wanted: fn(u64) -> bool = match backing {
            None => |e| e & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0,
            Some(_) => |e| e & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0 && e & PAGEMAP_FILE == 0,
        };
        if let Some(b) = backing {
            for (start, end) in
                crate::memory::data_runs(b, offset, offset + rlen).map_err(io("reading the old memory file"))?
            {
                copy_range(b, file, start, end - start).map_err(io("copying the old memory file"))?;
                data += end - start;
            }
        }
        for (start, end) in page_runs(pm, host as u64, rlen, wanted).map_err(io("reading /proc/self/pagemap"))? {
            file.write_all_at(&bytes[start as usize..end as usize], offset + start)
                .map_err(io("writing the memory file"))?;
            data += end - start;
        }
        offset += rlen;
    }
    file.sync_all().map_err(io("syncing the memory file"))?;
    Ok(Written { len, data })
}

/// Copies `len` bytes at `at` from `from` to the same offset of `to`, in
/// the kernel.
fn copy_range(from: &File, to: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut off_in, mut off_out) = (at as libc::loff_t, at as libc::loff_t);
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: both descriptors are open files this function borrows;
        // the kernel reads and writes at the offsets passed by pointer.
        let n = unsafe { libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, left, 0) };
        match n {
            n if n > 0 => left -= n as usize,
            0 => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The runs `[start, end)` (byte offsets into the mapping at `host` of
/// `len` bytes) of pages whose pagemap entry `wanted` accepts.
fn page_runs(pagemap: &File, host: u64, len: u64, wanted: fn(u64) -> bool) -> std::io::Result<Vec<(u64, u64)>> {
    let pages = len.div_ceil(PAGE) as usize;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; PAGEMAP_BATCH.min(pages) * 8];
    let mut page = 0usize;
    while page < pages {
        let n = PAGEMAP_BATCH.min(pages - page);
        let chunk = &mut buf[..n * 8];
        pagemap.read_exact_at(chunk, (host / PAGE + page as u64) * 8)?;
        for (i, e) in chunk.chunks_exact(8).enumerate() {
            if !wanted(u64::from_le_bytes(e.try_into().expect("8 bytes"))) {
                continue;
            }
            let start = (page + i) as u64 * PAGE;
            let end = (start + PAGE).min(len);
            match runs.last_mut() {
                Some(r) if r.1 == start => r.1 = end,
                _ => runs.push((start, end)),
            }
        }
        page += n;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ember-memfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn only_touched_pages_are_written_and_the_rest_read_zero() {
        let mem = crate::memory::test_memory(8 << 20);
        mem.write_obj(0x1234_5678u32, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(0xabu8, GuestAddress((8 << 20) - 1)).unwrap();
        let path = scratch("sparse");
        let f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let pm = File::open("/proc/self/pagemap").unwrap();
        let w = write(&mem, &f, None, Some(&pm)).unwrap();
        assert_eq!(w.len, 8 << 20);
        assert_eq!(w.data, 2 * PAGE, "{w:?}");
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(&back[0x10_0000..0x10_0004], &0x1234_5678u32.to_le_bytes());
        assert_eq!(back[(8 << 20) - 1], 0xab);
        assert!(back[..0x10_0000].iter().all(|&b| b == 0));
    }

    /// RAM restored lazily from a file: the new file is the old one with
    /// the guest's writes on top; only those pages and the old file's data
    /// are written, and the old file's holes stay holes.
    #[test]
    fn a_file_backed_ram_copies_the_old_file_and_writes_the_dirty_pages() {
        use crate::memory::{GuestRam, MemoryBacking, RamLayout};
        let old_path = scratch("old");
        let old = File::options().read(true).write(true).create_new(true).open(&old_path).unwrap();
        old.set_len(8 << 20).unwrap();
        old.write_all_at(&[0x11; 4096], 0x20_0000).unwrap();
        old.write_all_at(&[0x22; 4096], 0x30_0000).unwrap();
        let ram = GuestRam::from_file(RamLayout::new(8 << 20), &old, MemoryBacking::Lazy).unwrap();
        let mem = ram.memory();
        // Read one old page (a file page now), write over another, and
        // write one page of a hole.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x20_0010)).unwrap(), 0x11);
        mem.write_obj(0x33u8, GuestAddress(0x30_0001)).unwrap();
        mem.write_obj(0x44u8, GuestAddress(0x60_0000)).unwrap();
        let new_path = scratch("new");
        let f = File::options().read(true).write(true).create_new(true).open(&new_path).unwrap();
        let pm = File::open("/proc/self/pagemap").unwrap();
        let backing = ram.backing_file().unwrap().file.clone();
        let w = write(mem, &f, Some(&backing), Some(&pm)).unwrap();
        let back = std::fs::read(&new_path).unwrap();
        let _ = std::fs::remove_file(&old_path);
        let _ = std::fs::remove_file(&new_path);
        assert_eq!(back.len(), 8 << 20);
        assert!(back[0x20_0000..0x20_1000].iter().all(|&b| b == 0x11));
        assert_eq!(back[0x30_0000], 0x22);
        assert_eq!(back[0x30_0001], 0x33);
        assert_eq!(back[0x60_0000], 0x44);
        assert!(back[..0x20_0000].iter().all(|&b| b == 0));
        // The old file's data (whole blocks around its two pages) and the
        // two written pages; nowhere near the 8 MiB.
        assert!(w.data >= 4 * PAGE && w.data < 1 << 20, "{w:?}");
    }

    #[test]
    fn without_pagemap_everything_is_written() {
        let mem = crate::memory::test_memory(2 << 20);
        mem.write_obj(7u8, GuestAddress(5)).unwrap();
        let path = scratch("full");
        let f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let w = write(&mem, &f, None, None).unwrap();
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w, Written { len: 2 << 20, data: 2 << 20 });
        assert_eq!(back[5], 7);
    }
}
