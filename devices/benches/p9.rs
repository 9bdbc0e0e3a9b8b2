//! virtio-9p read-throughput bench: a 256 MiB file read through the whole
//! device path (`Share::process_queue`: chain walk, request copy, 9P
//! decode, fid lookup, `preadv` straight into guest memory, reply header,
//! used ring) beside a plain `pread` loop of the same chunk size over the
//! same file, in the same run.
//!
//! ```text
//! cargo bench -p ember-devices --bench p9
//! EMBER_P9_BENCH_DIR=/some/dir cargo bench -p ember-devices --bench p9
//! ```
//!
//! There is no vCPU: the bench plays Linux's 9P client with `msize=512K`.
//! Each `Tread` asks for `msize - 24` bytes (Linux's `iounit` default) and
//! goes in one indirect descriptor table, as Linux's virtio ring does for
//! multi-buffer requests, laid out like Linux's zero-copy read: the
//! T-message, an 11-byte reply-header buffer, then the destination in
//! 4 KiB pages ("zero-copy" row), or the T-message and one contiguous
//! reply buffer ("one buffer" row). `DEPTH` requests are published, then
//! `process_queue` is timed; the raw path times `pread` of the same chunks
//! into guest memory. A pass over the queue that spends its budget
//! (`MAX_PASS_TIME` and friends) is continued with `process_backend`, as
//! the event loop would. The file is written first, so both paths read from
//! the page cache: this measures the device's overhead on the data path,
//! not the disk. Paths alternate pass by pass; figures are medians.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_devices::virtio::p9::wire::{msg, Encoder, NOFID};
use ember_devices::virtio::p9::{Share, ShareConfig, MAX_MSIZE};
use ember_devices::virtio::VirtioDevice;
use ember_devices::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const FILE_SIZE: u64 = 256 << 20;
const QSIZE: u16 = 128;
const DEPTH: usize = 8;
const PASSES: usize = 5;
const MSIZE: u32 = MAX_MSIZE;
const COUNT: u32 = MSIZE - 24;

const DESC_TABLE: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const REQS: u64 = 0x1_0000;
const HDRS: u64 = 0x2_0000;
const TABLES: u64 = 0x4_0000;
const DATA: u64 = 0x10_0000;
const GUEST_MEM: usize = 16 << 20;

struct Guest {
    mem: GuestMemoryMmap,
    avail_idx: u16,
    used_seen: u16,
    tag: u16,
}

impl Guest {
    fn desc_at(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC_TABLE)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_event_idx(true);
        q.set_ready(true);
        q
    }

    /// One message in slot `slot` (or, for setup, slot 0) with a reply
    /// buffer of `room` bytes at DATA; posts it.
    fn post_simple(&mut self, m: &[u8], room: u32) {
        self.mem.write_slice(m, GuestAddress(REQS)).unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        self.desc_at(DESC_TABLE, REQS, m.len() as u32, next, 1);
        self.desc_at(DESC_TABLE + 16, DATA, room, VRING_DESC_F_WRITE as u16, 0);
        self.publish(&[0]);
    }

    fn publish(&mut self, heads: &[u16]) {
        for &h in heads {
            let slot = u64::from(self.avail_idx % QSIZE);
            self.mem.write_obj(h, GuestAddress(AVAIL + 4 + 2 * slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem.write_obj(self.avail_idx, GuestAddress(AVAIL + 2)).unwrap();
    }

    /// Used entries since the last call: their lengths.
    fn reap(&mut self) -> Vec<u32> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QSIZE);
            out.push(self.mem.read_obj(GuestAddress(USED + 4 + 8 * slot + 4)).unwrap());
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Lays out `DEPTH` indirect chains of Tread requests for fid 1.
    fn setup_reads(&self, zero_copy: bool) {
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        for slot in 0..DEPTH as u64 {
            let table = TABLES + slot * 0x1000;
            let data = DATA + slot * u64::from(MSIZE);
            let mut n = 0u64;
            let mut add = |addr: u64, len: u32, flags: u16| {
                self.desc_at(table + 16 * n, addr, len, flags | next, (n + 1) as u16);
                n += 1;
            };
            add(REQS + slot * 64, 23, 0);
            if zero_copy {
                add(HDRS + slot * 16, 11, write);
                let mut left = COUNT;
                let mut at = data;
                while left > 0 {
                    let l = left.min(4096);
                    add(at, l, write);
                    at += 4096;
                    left -= l;
                }
            } else {
                add(data, COUNT + 11, write);
            }
            // The last descriptor ends the chain.
            let last = table + 16 * (n - 1);
            let mut flags = [0u8; 2];
            self.mem.read_slice(&mut flags, GuestAddress(last + 12)).unwrap();
            let f = u16::from_le_bytes(flags) & !next;
            self.mem.write_slice(&f.to_le_bytes(), GuestAddress(last + 12)).unwrap();
            self.desc_at(DESC_TABLE + 16 * slot, table, (16 * n) as u32, VRING_DESC_F_INDIRECT as u16, 0);
        }
    }

    fn post_reads(&mut self, offs: &[u64]) {
        let mut heads = Vec::with_capacity(offs.len());
        for (slot, &off) in offs.iter().enumerate() {
            self.tag = self.tag.wrapping_add(1) % 0xff00;
            let mut m = Vec::with_capacity(23);
            Encoder::new(&mut m, msg::TREAD, self.tag).u32(1).u64(off).u32(COUNT).finish();
            self.mem.write_slice(&m, GuestAddress(REQS + slot as u64 * 64)).unwrap();
            heads.push(slot as u16);
        }
        self.publish(&heads);
    }
}

fn message(ty: u8, f: impl FnOnce(&mut Encoder<'_>)) -> Vec<u8> {
    let mut m = Vec::new();
    let mut e = Encoder::new(&mut m, ty, 0);
    f(&mut e);
    e.finish();
    m
}

fn main() {
    let dir = std::env::var_os("EMBER_P9_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    let share = dir.join(format!("ember-p9-bench-{}", std::process::id()));
    std::fs::create_dir_all(&share).unwrap();
    let path = share.join("big");
    {
        let mut f = File::create(&path).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for _ in 0..FILE_SIZE >> 20 {
            f.write_all(&chunk).unwrap();
        }
    }
    let file = File::open(&path).unwrap();

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).unwrap();
    let mut g = Guest { mem: mem.clone(), avail_idx: 0, used_seen: 0, tag: 0 };
    let mut dev = Share::new(&ShareConfig { path: share.clone(), tag: "bench".into(), readonly: true }).unwrap();
    dev.activate(mem.clone(), vec![g.queue()]).unwrap();
    for m in [
        message(msg::TVERSION, |e| {
            e.u32(MSIZE).str(b"9P2000.L");
        }),
        message(msg::TATTACH, |e| {
            e.u32(0).u32(NOFID).str(b"bench").str(b"").u32(0);
        }),
        message(msg::TWALK, |e| {
            e.u32(0).u32(1).u16(1).str(b"big");
        }),
        message(msg::TLOPEN, |e| {
            e.u32(1).u32(0);
        }),
    ] {
        g.post_simple(&m, 4096);
        dev.process_queue(0);
        let used = g.reap();
        let mut ty = [0u8; 1];
        mem.read_slice(&mut ty, GuestAddress(DATA + 4)).unwrap();
        assert!(used.len() == 1 && ty[0] == m[4] + 1, "setup request {} failed", m[4]);
    }

    let chunks: Vec<u64> = (0..FILE_SIZE.div_ceil(u64::from(COUNT))).map(|i| i * u64::from(COUNT)).collect();
    let fd = file.as_raw_fd();
    let host = mem.get_host_address(GuestAddress(DATA)).unwrap();

    let raw_pass = || -> Duration {
        let t0 = Instant::now();
        let mut total = 0u64;
        for (i, &off) in chunks.iter().enumerate() {
            // SAFETY: DEPTH slots of MSIZE bytes of mapped guest memory.
            let n = unsafe {
                libc::pread(fd, host.add((i % DEPTH) * MSIZE as usize).cast(), COUNT as usize, off as libc::off_t)
            };
            assert!(n > 0);
            total += n as u64;
        }
        assert_eq!(total, FILE_SIZE);
        t0.elapsed()
    };

    let mut results = Vec::new();
    for zero_copy in [true, false] {
        g.setup_reads(zero_copy);
        let mut dev_t = Vec::new();
        let mut raw_t = Vec::new();
        // One warm-up pass each, then PASSES measured.
        for pass in 0..=PASSES {
            let mut elapsed = Duration::ZERO;
            let mut total = 0u64;
            for batch in chunks.chunks(DEPTH) {
                g.post_reads(batch);
                let t0 = Instant::now();
                dev.process_queue(0);
                let mut used = g.reap();
                // A pass that spent its budget continues from the event
                // loop (the device's eventfd), as here.
                while used.len() < batch.len() {
                    dev.process_backend(0);
                    used.extend(g.reap());
                }
                elapsed += t0.elapsed();
                total += used.iter().map(|&l| u64::from(l) - 11).sum::<u64>();
            }
            assert_eq!(total, FILE_SIZE);
            let raw = raw_pass();
            if pass > 0 {
                dev_t.push(elapsed);
                raw_t.push(raw);
            }
        }
        dev_t.sort();
        raw_t.sort();
        let mbs = |d: Duration| FILE_SIZE as f64 / d.as_secs_f64() / 1e6;
        let (dv, rw) = (mbs(dev_t[PASSES / 2]), mbs(raw_t[PASSES / 2]));
        results.push((if zero_copy { "zero-copy (11 B + 4 KiB pages)" } else { "one buffer" }, dv, rw));
    }

    // The device's bytes are the file's bytes.
    g.setup_reads(false);
    g.post_reads(&[12_345]);
    dev.process_queue(0);
    g.reap();
    let mut got = vec![0u8; 4096];
    mem.read_slice(&mut got, GuestAddress(DATA + 11)).unwrap();
    let mut want = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut want, 12_345).unwrap();
    assert!(got == want, "device read the wrong bytes");

    println!(
        "virtio-9p read of a {} MiB file, msize {} KiB, Tread of {} bytes, {} in flight (median of {} passes)",
        FILE_SIZE >> 20,
        MSIZE >> 10,
        COUNT,
        DEPTH,
        PASSES
    );
    println!("{:<32} {:>12} {:>12} {:>8}", "layout", "device MB/s", "pread MB/s", "dev/raw");
    for (name, dv, rw) in results {
        println!("{name:<32} {dv:>12.0} {rw:>12.0} {:>8.2}", dv / rw);
    }
    let _ = std::fs::remove_dir_all(&share);
}
