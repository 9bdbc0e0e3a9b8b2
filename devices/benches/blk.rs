//! virtio-blk device-model bench: the `Block` device driven through a real
//! split virtqueue in guest memory, beside a plain `pread`/`pwrite` loop on
//! the same file, in the same run.
//!
//! ```text
//! cargo bench -p ember-devices --bench blk
//! EMBER_BLK_BENCH_DIR=/some/dir EMBER_BLK_BENCH_SCALE=2 cargo bench -p ember-devices --bench blk
//! EMBER_BLK_BENCH_FILTER="4K rand read" cargo bench -p ember-devices --bench blk
//! ```
//!
//! There is no vCPU: the bench plays the driver. It writes request headers
//! and descriptors for a batch of `DEPTH` requests, publishes them in the
//! available ring, calls `process_queue` and reads the used ring. Only the
//! `process_queue` calls are timed for the device path (driver work happens
//! on a vCPU in a real VM, not in the VMM); the raw path times its
//! `pread`/`pwrite` loop over the same batch, offsets and buffers. The two
//! paths alternate batch by batch so host drift hits both alike. CPU time is
//! `CLOCK_PROCESS_CPUTIME_ID` (the bench is single-threaded), wall time
//! `Instant`, both read around each batch.
//!
//! The image is a 256 MiB file in /var/tmp, fully written first, so both
//! paths run against the page cache: this measures per-request overhead,
//! not the disk. "VMM CPU/req" is the device path's CPU per request minus
//! the raw path's: what virtio processing adds on top of the system call.
//! "dev/raw" is the median of the per-round IOPS ratios (rounds alternate
//! between the paths). The "null request" row runs the device on requests
//! of an unsupported type: the chain walk, header parse, status and used
//! ring work without any file I/O, i.e. the device's own CPU per request.
//!
//! The device also runs behind each transport ("mmio", "pci"): the driver
//! brought it up through the registers (virtio-pci with MSI-X, a vector per
//! queue), and a batch is served the way the VMM serves it: the queue's
//! notification eventfd is written (what KVM's ioeventfd does, not timed),
//! then the transport's `handle_queue_event` is timed: the eventfd read,
//! `process_queue`, and the interrupt (an eventfd write, as KVM's irqfd; on
//! PCI the queue's MSI-X vector). The four paths take turns batch by batch,
//! each on its own rings over the same buffers.
//!
//! A second table compares ways of moving data between the file and guest
//! memory for 4 KiB random reads (the choice behind the device's I/O
//! engine): `pread` and single-buffer `preadv` straight into guest memory,
//! vm-memory's `read_volatile_from` with a positional reader, and `pread`
//! into a bounce buffer followed by a copy into guest memory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{Block, BlockConfig, SIZE_MAX};
use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::pci::VirtioPciTransport;
use ember_devices::virtio::VirtioDevice;
use ember_devices::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError, VolatileSlice};

#[path = "support/transports.rs"]
mod transports;
use transports::Transported;

const IMAGE_SIZE: u64 = 256 << 20;
const QSIZE: u16 = 256;
/// Requests per `process_queue` call (3 or 4 descriptors each).
const DEPTH: usize = 64;
/// Descriptors reserved per request slot: header, up to two data segments
/// of `size_max`, status.
const SLOT_DESCS: u64 = 4;
const ROUNDS: usize = 7;

/// Ring bases of the four device paths: direct, mmio, pci (descriptors at
/// the base, available ring at + 0x1000, used ring at + 0x2000).
const RINGS: [u64; 3] = [0x0, 0x4000, 0x8000];
const HEADERS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const GUEST_MEM: usize = 32 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Read,
    Write,
}

struct Workload {
    name: &'static str,
    op: Op,
    block: u64,
    random: bool,
    requests: usize,
}

fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Deterministic offsets shared by both paths.
fn offsets(w: &Workload) -> Vec<u64> {
    let blocks = IMAGE_SIZE / w.block;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..w.requests as u64)
        .map(|i| {
            if w.random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % blocks) * w.block
            } else {
                (i % blocks) * w.block
            }
        })
        .collect()
}

#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    requests: usize,
}

impl Sample {
    fn iops(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests as f64
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.iops().total_cmp(&b.iops()));
    v[v.len() / 2]
}

/// The plain loop on one batch: one `pread`/`pwrite` per request, into the
/// same guest memory buffers the device path uses (slot `i`), so both paths
/// see the same cache footprint.
fn raw_batch(file: &File, mem: &GuestMemoryMmap, w: &Workload, batch: &[u64], s: &mut Sample) {
    let len = w.block as usize;
    let fd = file.as_raw_fd();
    let base = mem.get_host_address(GuestAddress(DATA)).unwrap();
    let (c0, t0) = (cpu_now(), Instant::now());
    for (i, &off) in batch.iter().enumerate() {
        // SAFETY: DEPTH slots of `len` bytes of mapped guest memory.
        let n = unsafe {
            let buf = base.add(i * len).cast();
            match w.op {
                Op::Read => libc::pread(fd, buf, len, off as libc::off_t),
                Op::Write => libc::pwrite(fd, buf, len, off as libc::off_t),
            }
        };
        assert_eq!(n, len as isize);
    }
    s.wall += t0.elapsed();
    s.cpu += cpu_now() - c0;
    s.requests += batch.len();
}

/// The driver side of one request queue (rings at `ring`; request
/// headers, status bytes and data buffers shared by all queues).
struct Guest {
    mem: GuestMemoryMmap,
    ring: u64,
    avail_idx: u16,
}

impl Guest {
    fn new(mem: &GuestMemoryMmap, ring: u64) -> Self {
        Guest { mem: mem.clone(), ring, avail_idx: 0 }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.ring)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.ring + 0x1000)).unwrap();
        q.try_set_used_ring_address(GuestAddress(self.ring + 0x2000)).unwrap();
        q.set_event_idx(true);
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    fn desc(&self, idx: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(self.ring + 16 * idx)).unwrap();
    }

    /// Lays out `DEPTH` fixed chains: header, data in segments of at most
    /// the device's `size_max` (as Linux splits them), status.
    fn setup_chains(&self, op: Op, block: u64) {
        let next = VRING_DESC_F_NEXT as u16;
        let write = VRING_DESC_F_WRITE as u16;
        let seg = block.min(u64::from(SIZE_MAX));
        let segs = block.div_ceil(seg);
        assert!(segs + 2 <= SLOT_DESCS);
        for slot in 0..DEPTH as u64 {
            let d = SLOT_DESCS * slot;
            let data_flags = if op == Op::Read { next | write } else { next };
            self.desc(d, HEADERS + 16 * slot, 16, next, (d + 1) as u16);
            for i in 0..segs {
                let len = seg.min(block - i * seg);
                self.desc(d + 1 + i, DATA + slot * block + i * seg, len as u32, data_flags, (d + 2 + i) as u16);
            }
            self.desc(d + 1 + segs, STATUS + slot, 1, write, 0);
        }
    }

    /// Posts `offs.len()` (<= DEPTH) requests of `req_type`.
    fn post(&mut self, req_type: u32, offs: &[u64]) {
        for (slot, &off) in offs.iter().enumerate() {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..16].copy_from_slice(&(off / 512).to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(HEADERS + 16 * slot as u64)).unwrap();
            let ring = self.ring + 0x1004 + 2 * u64::from(self.avail_idx.wrapping_add(slot as u16) % QSIZE);
            self.mem.write_obj((SLOT_DESCS as usize * slot) as u16, GuestAddress(ring)).unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(offs.len() as u16);
        // Interrupt after the last request of the batch (EVENT_IDX).
        let used_event = GuestAddress(self.ring + 0x1004 + 2 * u64::from(QSIZE));
        self.mem.write_obj(self.avail_idx.wrapping_sub(1), used_event).unwrap();
        self.mem.store(self.avail_idx, GuestAddress(self.ring + 0x1002), Ordering::Release).unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.load(GuestAddress(self.ring + 0x2002), Ordering::Acquire).unwrap()
    }
}

/// How a batch reaches the device.
enum Via {
    /// `process_queue` called directly.
    Direct(Box<Block>),
    /// The virtio-mmio transport, as the VMM's event loop serves it.
    Mmio(Transported<MmioTransport>),
    /// The virtio-pci transport with MSI-X.
    Pci(Transported<VirtioPciTransport>),
}

/// One device path: how it is reached and its rings.
struct Path {
    name: &'static str,
    via: Via,
    guest: Guest,
}

impl Path {
    /// Serves the posted batch; returns whether the driver was interrupted.
    /// Only the VMM's part is timed (into `s`).
    fn serve(&mut self, s: &mut Sample) -> bool {
        if let Via::Mmio(tr) = &self.via {
            tr.kicks[0].write(1).unwrap();
        } else if let Via::Pci(tr) = &self.via {
            tr.kicks[0].write(1).unwrap();
        }
        let (c0, t0) = (cpu_now(), Instant::now());
        // Through a transport, as the event loop does: read the queue's
        // notification eventfd, serve, and again while the transport
        // signals it (a pass that stopped on its budget, src/virtio/pass.rs).
        let direct = match &mut self.via {
            // Again while the device says a pass stopped on its budget
            // (time, bytes, chains) with work left, as the transport
            // would re-signal the queue: on a busy or slow (debug) host a
            // batch can outlast one pass.
            Via::Direct(blk) => {
                let mut notify = false;
                loop {
                    notify |= !blk.process_queue(0).is_empty();
                    if blk.take_unfinished().is_empty() {
                        break notify;
                    }
                }
            }
            Via::Mmio(tr) => {
                while tr.kicks[0].read().is_ok() {
                    tr.t.lock().unwrap().handle_queue_event(0);
                }
                false
            }
            Via::Pci(tr) => {
                while tr.kicks[0].read().is_ok() {
                    tr.t.lock().unwrap().handle_queue_event(0);
                }
                false
            }
        };
        s.wall += t0.elapsed();
        s.cpu += cpu_now() - c0;
        match &self.via {
            Via::Direct(_) => direct,
            Via::Mmio(tr) => transports::drain(&tr.irqs) > 0,
            // The queue's own vector (entry 1), not the configuration one.
            Via::Pci(tr) => tr.irqs[1].read().is_ok() && transports::drain(&tr.irqs) == 0,
        }
    }
}

/// One batch through a device path: post, serve (timed), check.
fn device_batch(p: &mut Path, batch: &[u64], req_type: u32, status: u8, s: &mut Sample) {
    p.guest.post(req_type, batch);
    let want = p.guest.avail_idx;
    let notified = p.serve(s);
    s.requests += batch.len();
    assert!(notified, "{}: the batch completion interrupts", p.name);
    assert_eq!(p.guest.used_idx(), want);
    let mut statuses = [0xffu8; DEPTH];
    p.guest.mem.read_slice(&mut statuses[..batch.len()], GuestAddress(STATUS)).unwrap();
    assert!(statuses[..batch.len()].iter().all(|&b| b == status));
}

/// One round of the raw path and every device path over `offs`, taking
/// turns batch by batch (rotating who goes first), so that host drift hits
/// all alike. Returns the raw sample and one per device path.
fn paired_run(file: &File, paths: &mut [Path], w: &Workload, offs: &[u64]) -> (Sample, Vec<Sample>) {
    for p in paths.iter() {
        p.guest.setup_chains(w.op, w.block);
    }
    let req_type = if w.op == Op::Read { VIRTIO_BLK_T_IN } else { VIRTIO_BLK_T_OUT };
    let mem = paths[0].guest.mem.clone();
    let (mut raw, mut dev) = (Sample::default(), vec![Sample::default(); paths.len()]);
    let n = paths.len() + 1;
    for (b, batch) in offs.chunks(DEPTH).enumerate() {
        for k in 0..n {
            match (b + k) % n {
                0 => raw_batch(file, &mem, w, batch, &mut raw),
                i => device_batch(&mut paths[i - 1], batch, req_type, 0, &mut dev[i - 1]),
            }
        }
    }
    (raw, dev)
}

/// A device path alone on requests of `req_type`, expecting `status`.
fn device_only(p: &mut Path, w: &Workload, offs: &[u64], req_type: u32, status: u8) -> Sample {
    p.guest.setup_chains(w.op, w.block);
    let mut s = Sample::default();
    for batch in offs.chunks(DEPTH) {
        device_batch(p, batch, req_type, status, &mut s);
    }
    s
}

/// `pread` at a fixed offset, as a vm-memory `ReadVolatile`.
struct PosReader<'a> {
    file: &'a File,
    offset: u64,
}

impl ReadVolatile for PosReader<'_> {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        // SAFETY: the slice is valid guest memory of `buf.len()` bytes.
        let n =
            unsafe { libc::pread(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), self.offset as libc::off_t) };
        if n < 0 {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        self.offset += n as u64;
        Ok(n as usize)
    }
}

fn engine_run(name: &str, file: &File, mem: &GuestMemoryMmap, offs: &[u64]) -> Sample {
    let fd = file.as_raw_fd();
    let mut bounce = vec![0u8; 4096];
    let dst = GuestAddress(DATA);
    let host = mem.get_host_address(dst).unwrap();
    let (c0, t0) = (cpu_now(), Instant::now());
    for &off in offs {
        match name {
            "pread into guest memory" => {
                // SAFETY: 4 KiB of mapped guest memory.
                let n = unsafe { libc::pread(fd, host.cast(), 4096, off as libc::off_t) };
                assert_eq!(n, 4096);
            }
            "preadv into guest memory" => {
                let iov = libc::iovec { iov_base: host.cast(), iov_len: 4096 };
                // SAFETY: 4 KiB of mapped guest memory.
                let n = unsafe { libc::preadv(fd, &iov, 1, off as libc::off_t) };
                assert_eq!(n, 4096);
            }
            "read_volatile_from (pread)" => {
                let mut r = PosReader { file, offset: off };
                mem.read_exact_volatile_from(dst, &mut r, 4096).unwrap();
            }
            _ => {
                file.read_exact_at(&mut bounce, off).unwrap();
                mem.write_slice(&bounce, dst).unwrap();
            }
        }
    }
    Sample { wall: t0.elapsed(), cpu: cpu_now() - c0, requests: offs.len() }
}

fn make_image(path: &PathBuf) -> File {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    let chunk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    for i in 0..IMAGE_SIZE >> 20 {
        f.write_all_at(&chunk, i << 20).unwrap();
    }
    f.sync_all().unwrap();
    f
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a `cargo test --benches` run passes
    // nothing: keep that one short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("EMBER_BLK_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(if quick {
        0.01
    } else {
        1.0
    });
    let dir = std::env::var_os("EMBER_BLK_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp"));
    // One image per device: a Block holds an exclusive lock on its image
    // (docs/security.md), so the direct, mmio and pci paths each get their
    // own copy; the raw loop reads and writes the direct path's.
    let images: Vec<PathBuf> =
        (0..3).map(|i| dir.join(format!("ember-blk-bench-{}-{i}.img", std::process::id()))).collect();
    let _cleanup: Vec<Cleanup> = images.iter().map(|p| Cleanup(p.clone())).collect();
    let file = make_image(&images[0]);
    make_image(&images[1]);
    make_image(&images[2]);

    let n = |base: usize| ((base as f64 * scale) as usize).max(DEPTH);
    let workloads = [
        Workload { name: "4K rand read", op: Op::Read, block: 4096, random: true, requests: n(200_000) },
        Workload { name: "4K rand write", op: Op::Write, block: 4096, random: true, requests: n(200_000) },
        Workload { name: "128K seq read", op: Op::Read, block: 128 << 10, random: false, requests: n(20_000) },
        Workload { name: "128K seq write", op: Op::Write, block: 128 << 10, random: false, requests: n(20_000) },
    ];

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).unwrap();
    let block = |i: usize| Block::new(&BlockConfig { path: images[i].clone(), readonly: false, id: None }).unwrap();
    let mut blk = block(0);
    let direct = Guest::new(&mem, RINGS[0]);
    blk.activate(mem.clone(), vec![direct.queue()]).unwrap();
    // The transports: VERSION_1 and EVENT_IDX, one queue of QSIZE.
    let features = (1 << 32) | (1 << 29);
    let mmio = transports::mmio(Box::new(block(1)), &mem, features, &[(RINGS[1], QSIZE)]);
    let pci = transports::pci(Box::new(block(2)), &mem, features, &[(RINGS[2], QSIZE)]);
    let mut paths = vec![
        Path { name: "device", via: Via::Direct(Box::new(blk)), guest: direct },
        Path { name: "mmio", via: Via::Mmio(mmio), guest: Guest::new(&mem, RINGS[1]) },
        Path { name: "pci", via: Via::Pci(pci), guest: Guest::new(&mem, RINGS[2]) },
    ];
    let filter = std::env::var("EMBER_BLK_BENCH_FILTER").unwrap_or_default();

    if quick {
        println!("(smoke run without --bench: few requests, numbers not meaningful)");
    }
    println!(
        "virtio-blk bench: {} MiB image at {}, page cache warm, {DEPTH} requests per \
         notification, median of {ROUNDS} rounds",
        IMAGE_SIZE >> 20,
        images[0].display()
    );
    println!(
        "paths: device = process_queue called directly; mmio / pci = the transport's queue event \
         (eventfd read, process_queue, irqfd / MSI-X vector write)"
    );
    println!();
    println!(
        "{:<15} {:<7} {:>10} {:>9} {:>11} {:>11} {:>13}",
        "workload", "path", "IOPS", "MiB/s", "CPU us/req", "dev/raw", "VMM CPU/req"
    );
    let mut worst_ratio = vec![f64::MAX; paths.len()];
    let mut worst_vmm = vec![0f64; paths.len()];
    for w in workloads.iter().filter(|w| w.name.contains(&filter)) {
        let offs = offsets(w);
        // Warm-up of every path.
        let warm = &offs[..offs.len().min(DEPTH * 16)];
        paired_run(&file, &mut paths, w, warm);
        // The paths take turns batch by batch; each ratio is the median of
        // the per-round ratios.
        let (mut raws, mut devs, mut ratios) =
            (Vec::new(), vec![Vec::new(); paths.len()], vec![Vec::new(); paths.len()]);
        for _ in 0..ROUNDS {
            let (r, d) = paired_run(&file, &mut paths, w, &offs);
            for (i, s) in d.into_iter().enumerate() {
                ratios[i].push(s.iops() / r.iops());
                devs[i].push(s);
            }
            raws.push(r);
        }
        let raw = median(raws);
        let mib = |s: &Sample| s.iops() * w.block as f64 / f64::from(1u32 << 20);
        println!(
            "{:<15} {:<7} {:>10.0} {:>9.1} {:>11.3} {:>11} {:>13}",
            w.name,
            "raw",
            raw.iops(),
            mib(&raw),
            raw.cpu_us(),
            "",
            ""
        );
        for (i, p) in paths.iter().enumerate() {
            ratios[i].sort_by(f64::total_cmp);
            let ratio = ratios[i][ROUNDS / 2];
            let dev = median(std::mem::take(&mut devs[i]));
            let vmm = dev.cpu_us() - raw.cpu_us();
            worst_ratio[i] = worst_ratio[i].min(ratio);
            worst_vmm[i] = worst_vmm[i].max(vmm);
            println!(
                "{:<15} {:<7} {:>10.0} {:>9.1} {:>11.3} {:>10.1}% {:>10.3} us",
                "",
                p.name,
                dev.iops(),
                mib(&dev),
                dev.cpu_us(),
                ratio * 100.0,
                vmm
            );
        }
    }
    // The device paths with the file I/O taken out: requests of an
    // unsupported type walk the same chains and complete with UNSUPP.
    let null = Workload { name: "null", op: Op::Read, block: 4096, random: false, requests: n(200_000) };
    let offs = offsets(&null);
    for p in paths.iter_mut() {
        let s = median((0..ROUNDS).map(|_| device_only(p, &null, &offs, 99, 2)).collect());
        println!(
            "{:<15} {:<7} {:>10.0} {:>9} {:>11.3}   (no file I/O: the {} path's own work)",
            "null request",
            p.name,
            s.iops(),
            "",
            s.cpu_us(),
            p.name
        );
    }
    println!();
    for (i, p) in paths.iter().enumerate() {
        println!(
            "goal ({}): >= 95% of raw IOPS (worst {:.1}%), VMM CPU <= 2 us/request (worst {:.3} us)",
            p.name,
            worst_ratio[i] * 100.0,
            worst_vmm[i]
        );
    }

    if !filter.is_empty() {
        return;
    }
    // Engine choice: how to move data between the file and guest memory.
    let w = &workloads[0];
    let offs = offsets(w);
    println!();
    println!("data path for 4K random reads (median of {ROUNDS}, rounds interleaved):");
    let engines =
        ["pread into guest memory", "preadv into guest memory", "read_volatile_from (pread)", "pread + copy (bounce)"];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); engines.len()];
    for name in engines {
        engine_run(name, &file, &mem, &offs[..offs.len().min(DEPTH * 16)]);
    }
    for _ in 0..ROUNDS {
        for (i, name) in engines.iter().enumerate() {
            samples[i].push(engine_run(name, &file, &mem, &offs));
        }
    }
    for (name, runs) in engines.iter().zip(samples) {
        let s = median(runs);
        println!("  {:<28} {:>10.0} IOPS {:>8.3} us CPU/req", name, s.iops(), s.cpu_us());
    }
}
