//! virtio-net device-model bench: the `Net` device driven through real split
//! virtqueues in guest memory against a real TAP interface, beside plain
//! `write`/`read` system calls on a second, identically configured TAP, in
//! the same run.
//!
//! ```text
//! sudo cargo bench -p ember-devices --bench net
//! EMBER_NET_BENCH_SCALE=3 cargo bench -p ember-devices --bench net
//! EMBER_NET_BENCH_FILTER="RX 1514" cargo bench -p ember-devices --bench net
//! ```
//!
//! Needs root (a network namespace and TAP interfaces); it says so and
//! exits otherwise. Everything happens in a namespace of its own,
//! `ember-bench-<pid>`, deleted at the end (and from a panic hook, since the
//! release profile aborts on panic). The bench thread joins the namespace
//! with `setns`, creates two TAPs there with `ip` (`tdev` for the device,
//! `traw` for the raw path), brings them up with IPv6 off (no kernel
//! chatter on them) and attaches to both with the same `Tap::open` the VMM
//! uses: vnet header of 12 bytes, the same offloads.
//!
//! There is no vCPU: the bench plays the driver, with `EVENT_IDX` and the
//! features a Linux guest takes (`CSUM`, `GUEST_CSUM`, `HOST/GUEST_TSO4/6`,
//! `MRG_RXBUF`). Only device calls are timed on the device path (driver work
//! runs on a vCPU in a real VM, not in the VMM); only the system calls on
//! the raw path. The paths alternate batch by batch (256 frames, one ring)
//! so host drift hits both alike. Wall time is `Instant`, CPU time
//! `CLOCK_THREAD_CPUTIME_ID` of the (only) bench thread.
//!
//! * **TX**: the driver publishes 256 chains, `process_queue(TX)` sends them
//!   (one `writev` each, straight from guest memory). Raw: one `write` per
//!   frame from the same guest buffers. Frames go to a unicast MAC that is
//!   not the TAP's, so the kernel drops them at `ip_rcv` (the cheapest
//!   kernel path, which makes the device's share the most visible).
//! * **RX**: frames are injected from the host side through an `AF_PACKET`
//!   socket bound to each TAP (with `PACKET_VNET_HDR`, so TSO frames go in
//!   as one GSO packet; the TAPs carry the TSO offloads, so the kernel hands
//!   them over unsegmented). Injection is not timed. Then the device gets the
//!   refill kick and backend events until it delivered the batch (one
//!   `read` into its buffer and a copy into guest memory per frame); raw:
//!   one `read` per frame straight into guest memory.
//!
//! * **Transports** ("mmio", "pci" rows): two more TAPs (`tmmio`, `tpci`),
//!   each with a `Net` behind a transport the bench brought up through its
//!   registers as a driver does (virtio-pci: MSI-X, a vector per queue), on
//!   rings of their own over the same buffers, served by an event loop of
//!   their own (`event-manager`, as the VMM does). A batch is published,
//!   the queue's notification eventfd written (what KVM's ioeventfd does;
//!   not timed), then event-loop passes are timed until the batch is done:
//!   `epoll_wait`, the eventfd read, the device's work and the interrupt (an
//!   eventfd write, as KVM's irqfd; on PCI the queue's MSI-X vector). RX
//!   frames are injected first (not timed); the refill kick and the backend
//!   events deliver them.
//!
//! Frame sizes: 64 B and 1514 B (full-MTU) UDP/IPv4 Ethernet frames, and
//! "64 KiB" TCP/IPv4 frames of 65534 bytes with a vnet header declaring
//! `GSO_TCPV4` (gso_size 1448, partial checksum): the largest GSO packet
//! the kernel passes to a TAP unsegmented (`skb->len` must stay below the
//! device's 65536-byte `gso_max_size`). Gbit/s counts Ethernet bytes.
//! "VMM CPU/pkt" is the device path's CPU per frame, system call included;
//! "extra" is that minus the raw path's; "dev/raw" is the median of the
//! per-round frame-rate ratios.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

use ember_devices::virtio::net::tap::{if_index, Tap, VNET_HDR_LEN};
use ember_devices::virtio::net::{Net, NetConfig, NetCounters, RX_QUEUE, TX_QUEUE};
use ember_devices::virtio::VirtioDevice;
use ember_devices::GuestMemoryMmap;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

#[path = "support/transports.rs"]
mod transports;
use transports::Transported;

const QSIZE: u16 = 256;
const BATCH: usize = QSIZE as usize;
const ROUNDS: usize = 7;

const RXQ: u64 = 0x0;
const TXQ: u64 = 0x4000;
/// Rings of the transport paths: (RX, TX) for mmio and pci.
const TR_RINGS: [(u64, u64); 2] = [(0x8000, 0xc000), (0x1_0000, 0x1_4000)];
/// Receive buffers: 256 slots of 64 KiB + header.
const RX_BUFS: u64 = 0x10_0000;
/// Transmit frames: 256 slots.
const TX_BUFS: u64 = 0x200_0000;
const SLOT: u64 = 0x1_0100;
const GUEST_MEM: usize = 64 << 20;

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_QDISC_BYPASS: libc::c_int = 20;

const DEV_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
/// Not the MAC of either TAP: frames sent to it are dropped at `ip_rcv`.
const OTHER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

/// The bench's network namespace; deleted on drop and on panic.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("ember-bench-{}", std::process::id());
        assert!(ip(&["netns", "add", &name]), "ip netns add {name} failed");
        let hook_name = name.clone();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = Command::new("ip").args(["netns", "del", &hook_name]).status();
            prev(info);
        }));
        Netns(name)
    }

    fn exec(&self, args: &[&str]) -> bool {
        let mut v = vec!["netns", "exec", &self.0];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        // SAFETY: a namespace fd; affects the calling thread only.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    fn add_tap(&self, name: &str) {
        assert!(self.exec(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]));
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.0, "sysctl", "-qw"])
            .arg(format!("net.ipv6.conf.{name}.disable_ipv6=1"))
            .status();
        assert!(self.exec(&["ip", "link", "set", name, "up"]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Quietly: the panic hook may have deleted it already.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).stderr(std::process::Stdio::null()).status();
    }
}

/// A sending-only `AF_PACKET` socket on `ifname` taking a virtio-net header
/// before each frame.
fn injector(ifname: &str) -> OwnedFd {
    // SAFETY: plain socket calls on an owned descriptor.
    unsafe {
        // Protocol 0: the socket receives nothing.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [PACKET_VNET_HDR, PACKET_QDISC_BYPASS] {
            let r = libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, opt, (&one as *const libc::c_int).cast(), 4);
            assert_eq!(r, 0, "setsockopt {opt}");
        }
        let big: libc::c_int = 64 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&big as *const libc::c_int).cast(),
            4,
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = if_index(ifname).unwrap() as i32;
        let r = libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(r, 0);
        fd
    }
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A frame as the TAP carries it: 12-byte virtio-net header, then an
/// Ethernet frame of `len` bytes to `dst`. Up to 1514 bytes: UDP/IPv4
/// (checksum 0). Above: a TCP/IPv4 GSO frame (gso_size 1448, partial
/// checksum: the pseudo-header sum in the TCP checksum field).
fn make_frame(len: usize, dst: [u8; 6]) -> Vec<u8> {
    let tso = len > 1514;
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    let (hdr, eth) = f.split_at_mut(VNET_HDR_LEN);
    if tso {
        hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        hdr[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        hdr[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        hdr[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    }
    eth[0..6].copy_from_slice(&dst);
    eth[6..12].copy_from_slice(&DEV_MAC);
    eth[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    let ipv4 = &mut eth[14..34];
    ipv4[0] = 0x45;
    ipv4[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ipv4[6] = 0x40; // DF
    ipv4[8] = 64;
    ipv4[9] = if tso { 6 } else { 17 };
    ipv4[12..16].copy_from_slice(&[10, 99, 0, 1]);
    ipv4[16..20].copy_from_slice(&[10, 99, 0, 2]);
    let c = !csum_fold(csum_add(0, ipv4));
    ipv4[10..12].copy_from_slice(&c.to_be_bytes());
    let l4_len = len - 34;
    for (i, b) in eth[54..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let l4 = &mut eth[34..];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&9u16.to_be_bytes());
    if tso {
        l4[4..8].copy_from_slice(&1u32.to_be_bytes()); // seq
        l4[12] = 5 << 4; // data offset
        l4[13] = 0x18; // PSH, ACK
        l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
        // Partial checksum: the pseudo-header sum, not complemented.
        let mut ph = csum_add(0, &[10, 99, 0, 1, 10, 99, 0, 2]);
        ph += 6 + l4_len as u32;
        l4[16..18].copy_from_slice(&csum_fold(ph).to_be_bytes());
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    f
}

/// The driver side of the two queues.
struct Guest {
    mem: GuestMemoryMmap,
    base: *mut u8,
}

impl Guest {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_MEM)]).unwrap();
        let base = mem.get_host_address(GuestAddress(0)).unwrap();
        Guest { mem, base }
    }

    fn queue(&self, at: u64) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(at)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(at + 0x1000)).unwrap();
        q.try_set_used_ring_address(GuestAddress(at + 0x2000)).unwrap();
        q.set_event_idx(true);
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    fn desc(&self, q: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(q + 16 * u64::from(idx))).unwrap();
    }

    fn read_u16(&self, addr: u64) -> u16 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn write_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    /// Publishes `heads` on queue `q` and asks for an interrupt on the
    /// first completion (`used_event`), as Linux does.
    fn publish(&self, q: u64, heads: &[u16]) {
        let idx = self.read_u16(q + 0x1002);
        for (i, &h) in heads.iter().enumerate() {
            let slot = (idx as usize + i) % BATCH;
            self.write_u16(q + 0x1004 + 2 * slot as u64, h);
        }
        self.write_u16(q + 0x1004 + 2 * BATCH as u64, self.read_u16(q + 0x2002));
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.write_u16(q + 0x1002, idx.wrapping_add(heads.len() as u16));
    }

    fn used_idx(&self, q: u64) -> u16 {
        self.read_u16(q + 0x2002)
    }

    fn host(&self, addr: u64) -> *mut u8 {
        // SAFETY: callers stay inside the mapping.
        unsafe { self.base.add(addr as usize) }
    }
}

#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    frames: usize,
    bytes: usize,
}

impl Sample {
    fn pps(&self) -> f64 {
        self.frames as f64 / self.wall.as_secs_f64()
    }
    fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.wall.as_secs_f64() / 1e9
    }
    fn cpu_ns(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e9 / self.frames as f64
    }
    fn add(&mut self, wall: Duration, cpu: Duration, frames: usize, bytes: usize) {
        self.wall += wall;
        self.cpu += cpu;
        self.frames += frames;
        self.bytes += bytes;
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.pps().total_cmp(&b.pps()));
    v[v.len() / 2]
}

/// A `Net` behind a transport, on its own TAP, rings and event loop.
struct TrPath {
    name: &'static str,
    rxq: u64,
    txq: u64,
    inj: OwnedFd,
    kicks: Vec<EventFd>,
    irqs: Vec<Arc<EventFd>>,
    counters: Arc<NetCounters>,
    /// One pass of the path's event loop (`epoll_wait` with no timeout).
    pass: Box<dyn FnMut()>,
}

impl TrPath {
    fn new<T: MutEventSubscriber + 'static>(
        name: &'static str,
        tr: Transported<T>,
        rings: (u64, u64),
        tap: &str,
        counters: Arc<NetCounters>,
    ) -> TrPath {
        let mut em = EventManager::<Arc<Mutex<T>>>::new().unwrap();
        em.add_subscriber(tr.t.clone());
        TrPath {
            name,
            rxq: rings.0,
            txq: rings.1,
            inj: injector(tap),
            kicks: tr.kicks,
            irqs: tr.irqs,
            counters,
            pass: Box::new(move || {
                em.run_with_timeout(0).unwrap();
            }),
        }
    }

    /// Runs event-loop passes until queue `q` has `want` more used
    /// entries than `before`.
    fn serve(&mut self, g: &Guest, q: u64, before: u16, want: usize) {
        let mut spins = 0;
        while (g.used_idx(q).wrapping_sub(before) as usize) < want {
            (self.pass)();
            spins += 1;
            assert!(spins < 1_000_000, "{}: device stalled", self.name);
        }
    }
}

struct Bench {
    guest: Guest,
    net: Net,
    raw: Tap,
    inj_dev: OwnedFd,
    inj_raw: OwnedFd,
    paths: Vec<TrPath>,
}

/// Indirect descriptor tables, one per transmit slot.
const TX_TABLES: u64 = 0x310_0000;

/// Lays out transmit slot `slot` for a frame of `len` Ethernet bytes, as
/// Linux does: header and linear part in one descriptor for small frames;
/// for a 64 KiB frame an indirect table with the header and protocol
/// headers, then 16 page fragments.
fn tx_chain(g: &Guest, txq: u64, slot: u16, len: usize) {
    let addr = TX_BUFS + SLOT * u64::from(slot);
    let total = (VNET_HDR_LEN + len) as u64;
    if total <= 4096 {
        g.desc(txq, slot, addr, total as u32, 0, 0);
        return;
    }
    let table = TX_TABLES + 0x200 * u64::from(slot);
    let first = (VNET_HDR_LEN + 54) as u64;
    let mut entries = vec![(addr, first)];
    let mut off = first;
    while off < total {
        let n = (total - off).min(4096);
        entries.push((addr + off, n));
        off += n;
    }
    for (i, &(a, n)) in entries.iter().enumerate() {
        let last = i + 1 == entries.len();
        let flags = if last { 0 } else { VRING_DESC_F_NEXT as u16 };
        g.desc(table, i as u16, a, n as u32, flags, i as u16 + 1);
    }
    g.desc(txq, slot, table, 16 * entries.len() as u32, VRING_DESC_F_INDIRECT as u16, 0);
}

impl Bench {
    fn tx_round(&mut self, len: usize, frames: usize, dev: &mut Sample, raw: &mut Sample, trs: &mut [Sample]) {
        let g = &self.guest;
        let heads: Vec<u16> = (0..QSIZE).collect();
        let eth = len;
        let mut left = frames;
        while left > 0 {
            let n = left.min(BATCH);
            left -= n;
            // Device: publish, then time process_queue.
            g.publish(TXQ, &heads[..n]);
            let before = g.used_idx(TXQ);
            let (c0, t0) = (thread_cpu(), Instant::now());
            self.net.process_queue(TX_QUEUE);
            let (t, c) = (t0.elapsed(), thread_cpu() - c0);
            assert_eq!(g.used_idx(TXQ).wrapping_sub(before) as usize, n);
            dev.add(t, c, n, n * eth);
            // Transports: publish, kick (KVM's part), serve (timed).
            for (p, s) in self.paths.iter_mut().zip(trs.iter_mut()) {
                g.publish(p.txq, &heads[..n]);
                let before = g.used_idx(p.txq);
                p.kicks[TX_QUEUE].write(1).unwrap();
                let (c0, t0) = (thread_cpu(), Instant::now());
                p.serve(g, p.txq, before, n);
                s.add(t0.elapsed(), thread_cpu() - c0, n, n * eth);
                assert!(transports::drain(&p.irqs) > 0, "{}: no TX interrupt", p.name);
            }
            // Raw: one write per frame from the same buffers.
            let fd = self.raw.as_raw_fd();
            let (c0, t0) = (thread_cpu(), Instant::now());
            for i in 0..n {
                let p = g.host(TX_BUFS + SLOT * i as u64);
                // SAFETY: a frame inside guest memory.
                let r = unsafe { libc::write(fd, p.cast(), VNET_HDR_LEN + len) };
                assert_eq!(r as usize, VNET_HDR_LEN + len);
            }
            raw.add(t0.elapsed(), thread_cpu() - c0, n, n * eth);
        }
    }

    fn inject(fd: &OwnedFd, frame: &[u8], n: usize) {
        // The injector takes the 10-byte virtio_net_hdr (no num_buffers).
        let mut pkt = frame[..10].to_vec();
        pkt.extend_from_slice(&frame[VNET_HDR_LEN..]);
        for i in 0..n {
            // SAFETY: a readable buffer.
            let r = unsafe { libc::send(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0) };
            assert_eq!(r as usize, pkt.len(), "inject frame {i} of {n}: {}", std::io::Error::last_os_error());
        }
    }

    /// Receive `frames` frames of `frame`, the driver posting chains of
    /// one `buf_len`-byte buffer (several per frame when smaller than it).
    fn rx_round(
        &mut self,
        frame: &[u8],
        buf_len: u32,
        frames: usize,
        dev: &mut Sample,
        raw: &mut Sample,
        trs: &mut [Sample],
    ) {
        let eth = frame.len() - VNET_HDR_LEN;
        let per_frame = frame.len().div_ceil(buf_len as usize);
        let heads: Vec<u16> = (0..QSIZE).collect();
        let mut left = frames;
        while left > 0 {
            let n = left.min(BATCH / per_frame);
            left -= n;
            // Device: inject n frames, then the refill kick and backend
            // events until all n are delivered.
            Self::inject(&self.inj_dev, frame, n);
            let g = &self.guest;
            let before = g.used_idx(RXQ);
            let chains = n * per_frame;
            g.publish(RXQ, &heads[..chains]);
            let (c0, t0) = (thread_cpu(), Instant::now());
            self.net.process_queue(RX_QUEUE);
            let mut spins = 0;
            while (g.used_idx(RXQ).wrapping_sub(before) as usize) < chains {
                assert!(self.net.backend_wants_input(0));
                self.net.process_backend(0);
                spins += 1;
                assert!(spins < 1_000_000, "device stalled");
            }
            dev.add(t0.elapsed(), thread_cpu() - c0, n, n * eth);
            if per_frame == 1 {
                let slot = u64::from(before) % u64::from(QSIZE);
                let e = RXQ + 0x2004 + 8 * slot + 4;
                let len: u32 = g.mem.read_obj(GuestAddress(e)).unwrap();
                assert_eq!(len as usize, frame.len());
            }

            // Transports: inject, publish, kick (not timed), serve.
            for (p, s) in self.paths.iter_mut().zip(trs.iter_mut()) {
                Self::inject(&p.inj, frame, n);
                let before = g.used_idx(p.rxq);
                g.publish(p.rxq, &heads[..chains]);
                p.kicks[RX_QUEUE].write(1).unwrap();
                let (c0, t0) = (thread_cpu(), Instant::now());
                p.serve(g, p.rxq, before, chains);
                s.add(t0.elapsed(), thread_cpu() - c0, n, n * eth);
                assert!(transports::drain(&p.irqs) > 0, "{}: no RX interrupt", p.name);
            }

            // Raw: inject n frames, read each into guest memory.
            Self::inject(&self.inj_raw, frame, n);
            let fd = self.raw.as_raw_fd();
            let (c0, t0) = (thread_cpu(), Instant::now());
            for i in 0..n {
                let p = g.host(RX_BUFS + SLOT * i as u64);
                // SAFETY: a buffer inside guest memory (slots are SLOT
                // bytes apart).
                let r = unsafe { libc::read(fd, p.cast(), SLOT as usize) };
                // Injection is synchronous: a short read is a lost frame.
                assert_eq!(r as usize, frame.len(), "raw read: {}", std::io::Error::last_os_error());
            }
            raw.add(t0.elapsed(), thread_cpu() - c0, n, n * eth);
        }
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    // SAFETY: no side effects.
    if unsafe { libc::geteuid() } != 0 {
        println!("net bench: skipped, needs root (network namespace and TAP interfaces)");
        return;
    }
    let scale: f64 = std::env::var("EMBER_NET_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(if quick {
        0.02
    } else {
        1.0
    });
    let ns = Netns::create();
    for tap in ["tdev", "traw", "tmmio", "tpci"] {
        ns.add_tap(tap);
    }
    ns.enter();

    let guest = Guest::new();
    let mut net = Net::new(&NetConfig { tap: "tdev".into(), mac: Some(DEV_MAC) }).unwrap();
    let features = (1u64 << VIRTIO_NET_F_CSUM)
        | (1u64 << VIRTIO_NET_F_GUEST_CSUM)
        | (1u64 << VIRTIO_NET_F_GUEST_TSO4)
        | (1u64 << VIRTIO_NET_F_GUEST_TSO6)
        | (1u64 << VIRTIO_NET_F_HOST_TSO4)
        | (1u64 << VIRTIO_NET_F_HOST_TSO6)
        | (1u64 << VIRTIO_NET_F_MRG_RXBUF)
        | (1u64 << 32)
        | (1u64 << 29);
    net.ack_features(features);
    net.activate(guest.mem.clone(), vec![guest.queue(RXQ), guest.queue(TXQ)]).unwrap();
    let raw = Tap::open("traw").unwrap();
    raw.set_offload(features).unwrap();
    // The same device behind each transport, on TAPs of their own.
    let tr_net = |tap: &str| Net::new(&NetConfig { tap: tap.into(), mac: Some(DEV_MAC) }).unwrap();
    let rings = |(rx, tx): (u64, u64)| [(rx, QSIZE), (tx, QSIZE)];
    let n = tr_net("tmmio");
    let counters = n.stats_handle();
    let mmio = transports::mmio(Box::new(n), &guest.mem, features, &rings(TR_RINGS[0]));
    let mmio = TrPath::new("mmio", mmio, TR_RINGS[0], "tmmio", counters);
    let n = tr_net("tpci");
    let counters = n.stats_handle();
    let pci = transports::pci(Box::new(n), &guest.mem, features, &rings(TR_RINGS[1]));
    let pci = TrPath::new("pci", pci, TR_RINGS[1], "tpci", counters);
    let mut b = Bench { guest, net, raw, inj_dev: injector("tdev"), inj_raw: injector("traw"), paths: vec![mmio, pci] };

    // (direction, label, Ethernet bytes, receive buffer size, frames)
    let cases: [(&str, &str, usize, u32, usize); 7] = [
        ("TX", "64 B", 64, 0, 200_000),
        ("TX", "1514 B", 1514, 0, 200_000),
        ("TX", "64 KiB TSO", 65534, 0, 20_000),
        ("RX", "64 B", 64, 2048, 200_000),
        ("RX", "1514 B", 1514, 2048, 200_000),
        ("RX", "64 KiB TSO", 65534, 65562, 20_000),
        ("RX", "64K TSO/4K", 65534, 4096, 20_000),
    ];
    if quick {
        println!("(smoke run without --bench: few frames, numbers not meaningful)");
    }
    println!(
        "virtio-net bench: namespace {}, TAPs tdev (device) and traw (raw), up to {BATCH} frames \
         per batch, paths alternating, median of {ROUNDS} rounds",
        ns.0
    );
    println!("RX buffers: 2 KiB chains for 64/1514 B; one 65562-byte chain per 64 KiB frame;");
    println!("\"64K TSO/4K\": 4 KiB mergeable buffers (17 chains per frame), as a Linux guest posts.");
    println!();
    println!(
        "{:<4} {:<11} {:<6} {:>9} {:>9} {:>12} {:>9} {:>12}",
        "dir", "frame", "path", "kpps", "Gbit/s", "CPU ns/pkt", "dev/raw", "extra ns/pkt"
    );
    // EMBER_NET_BENCH_FILTER="RX 1514" runs the matching rows only.
    let filter = std::env::var("EMBER_NET_BENCH_FILTER").unwrap_or_default();
    for &(dir, name, len, buf_len, base_frames) in &cases {
        if !format!("{dir} {name}").contains(&filter) {
            continue;
        }
        let frames = ((base_frames as f64 * scale) as usize).max(BATCH);
        let frame = make_frame(len, OTHER_MAC);
        // Every path uses the same guest buffers, on rings of its own.
        let g = &b.guest;
        let queues: Vec<(u64, u64)> = [(RXQ, TXQ)].into_iter().chain(b.paths.iter().map(|p| (p.rxq, p.txq))).collect();
        for slot in 0..QSIZE {
            let addr = if dir == "TX" { TX_BUFS } else { RX_BUFS } + SLOT * u64::from(slot);
            if dir == "TX" {
                g.mem.write_slice(&frame, GuestAddress(addr)).unwrap();
            }
            for &(rxq, txq) in &queues {
                if dir == "TX" {
                    tx_chain(g, txq, slot, len);
                } else {
                    g.desc(rxq, slot, addr, buf_len, VRING_DESC_F_WRITE as u16, 0);
                }
            }
        }
        let ntr = b.paths.len();
        let run = |b: &mut Bench, frames: usize| {
            let (mut d, mut r, mut t) = (Sample::default(), Sample::default(), vec![Sample::default(); ntr]);
            if dir == "TX" {
                b.tx_round(len, frames, &mut d, &mut r, &mut t);
            } else {
                b.rx_round(&frame, buf_len, frames, &mut d, &mut r, &mut t);
            }
            (d, r, t)
        };
        // Warm-up.
        run(&mut b, (frames / 10).max(BATCH));
        // Per path (device, then the transports): samples and ratios.
        let (mut devs, mut raws, mut ratios) = (vec![Vec::new(); ntr + 1], Vec::new(), vec![Vec::new(); ntr + 1]);
        for _ in 0..ROUNDS {
            let (d, r, t) = run(&mut b, frames);
            for (i, s) in [d].into_iter().chain(t).enumerate() {
                ratios[i].push(s.pps() / r.pps());
                devs[i].push(s);
            }
            raws.push(r);
        }
        let r = median(raws);
        println!("{:<4} {:<11} {:<6} {:>9.0} {:>9.2} {:>12.0}", dir, name, "raw", r.pps() / 1e3, r.gbps(), r.cpu_ns());
        let names: Vec<&str> = ["device"].into_iter().chain(b.paths.iter().map(|p| p.name)).collect();
        for (i, path) in names.iter().enumerate() {
            ratios[i].sort_by(f64::total_cmp);
            let ratio = ratios[i][ROUNDS / 2];
            let d = median(std::mem::take(&mut devs[i]));
            println!(
                "{:<4} {:<11} {:<6} {:>9.0} {:>9.2} {:>12.0} {:>8.1}% {:>12.0}",
                "",
                "",
                path,
                d.pps() / 1e3,
                d.gbps(),
                d.cpu_ns(),
                ratio * 100.0,
                d.cpu_ns() - r.cpu_ns()
            );
        }
    }
    println!();
    let all = [("device", b.net.stats())].into_iter().chain(b.paths.iter().map(|p| (p.name, p.counters.snapshot())));
    for (name, s) in all {
        println!(
            "{name} counters: tx {} frames {} bytes, {} dropped; rx {} frames {} bytes, {} dropped",
            s.tx_frames, s.tx_bytes, s.tx_dropped, s.rx_frames, s.rx_bytes, s.rx_dropped
        );
        assert_eq!(s.tx_dropped + s.rx_dropped + s.tx_malformed + s.rx_malformed, 0, "{name}");
    }
    drop(ns);
}
