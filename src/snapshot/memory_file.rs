//! Writing guest RAM to a snapshot's memory file: the regions one after
//! the other, `RamLayout::size()` bytes. For anonymous RAM only the pages
//! the guest has touched are written (`/proc/self/pagemap`: present or
//! swapped); the others stay holes in a sparse file, which read as zeros,
//! as the untouched pages did.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::SnapshotError;

const PAGE: u64 = 4096;
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
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

/// Writes `mem` to `file` (new and empty). `sparse`: the RAM is anonymous,
/// so a page the guest never touched is zero and is left a hole; `pagemap`
/// is `/proc/self/pagemap`, opened while `/proc` was in reach (without it
/// every page is written).
pub(crate) fn write(
    mem: &GuestMemoryMmap,
    file: &File,
    sparse: bool,
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
        match pagemap.filter(|_| sparse) {
            Some(pm) => {
                for (start, end) in touched_runs(pm, host as u64, rlen).map_err(io("reading /proc/self/pagemap"))? {
                    file.write_all_at(&bytes[start as usize..end as usize], offset + start)
                        .map_err(io("writing the memory file"))?;
                    data += end - start;
                }
            }
            None => {
                file.write_all_at(bytes, offset).map_err(io("writing the memory file"))?;
                data += rlen;
            }
        }
        offset += rlen;
    }
    file.sync_all().map_err(io("syncing the memory file"))?;
    Ok(Written { len, data })
}

/// The runs `[start, end)` (byte offsets into the mapping at `host` of
/// `len` bytes) of pages that are present or swapped out.
fn touched_runs(pagemap: &File, host: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let pages = len.div_ceil(PAGE) as usize;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; PAGEMAP_BATCH.min(pages) * 8];
    let mut page = 0usize;
    while page < pages {
        let n = PAGEMAP_BATCH.min(pages - page);
        let chunk = &mut buf[..n * 8];
        pagemap.read_exact_at(chunk, (host / PAGE + page as u64) * 8)?;
        for (i, e) in chunk.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            if entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) == 0 {
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
        let w = write(&mem, &f, true, Some(&pm)).unwrap();
        assert_eq!(w.len, 8 << 20);
        assert_eq!(w.data, 2 * PAGE, "{w:?}");
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(&back[0x10_0000..0x10_0004], &0x1234_5678u32.to_le_bytes());
        assert_eq!(back[(8 << 20) - 1], 0xab);
        assert!(back[..0x10_0000].iter().all(|&b| b == 0));
    }

    #[test]
    fn without_pagemap_everything_is_written() {
        let mem = crate::memory::test_memory(2 << 20);
        mem.write_obj(7u8, GuestAddress(5)).unwrap();
        let path = scratch("full");
        let f = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let w = write(&mem, &f, true, None).unwrap();
        let back = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w, Written { len: 2 << 20, data: 2 << 20 });
        assert_eq!(back[5], 7);
    }
}
