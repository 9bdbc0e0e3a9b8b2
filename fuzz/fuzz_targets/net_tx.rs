//! virtio-net transmit (and the receive chains) from a hostile driver,
//! through the virtio-mmio transport, over a `SOCK_SEQPACKET` socket pair
//! standing in for the TAP device (`NetBackend`): one packet per frame, as
//! on a TAP with `IFF_VNET_HDR`.
//!
//! Input: features: u64, RX and TX queue sizes (u8 each, 2^(n % 9)), a
//! layout byte (bit 0: RX ring addresses follow, bit 1: TX ring addresses
//! follow; descriptor table, available ring, used ring; else fixed
//! non-overlapping rings), then operations until the input ends, each an
//! opcode byte (modulo 12):
//!
//! ```text
//! 0-2  TX frame: 12 header bytes, flags u8 (bit 0 indirect, bit 1 split
//!      the header at u8, bit 2 indirect table address follows), buffer
//!      count u8 (modulo 5), per buffer: length, u8 (bit 0 device-writable,
//!      bit 1 address follows)
//! 3    TX raw descriptor: index u16, address, len u32, flags u16, next u16
//! 4    TX ring: u8 (bit 0: set the available index, else publish), u16
//! 5    RX chain: flags u8 (bit 0 indirect, bit 1 one buffer
//!      device-readable), buffer count u8 (1 + n % 4), lengths
//! 6    RX ring: u8 selector (modulo 4: raw descriptor as in 3, publish,
//!      available index, used_event), then its fields
//! 7    frame from the host: flags u8, gso_type u8, length u16 (at least
//!      the header)
//! 8    TX kick (QueueNotify 1, then the queue event)
//! 9    RX kick
//! 10   poke: address, u8 length, bytes
//! 11   TX used_event: u16
//! ```
//!
//! Invariants: no panic (no host access outside guest memory: guard
//! pages); every frame reaching the backend is at least the 12-byte header
//! plus an Ethernet header and at most 65536 + 12 bytes; the frames and
//! bytes the backend received are exactly what the device counted as sent.
//! With the fixed rings the device must start; rings of the fuzzer's
//! choosing may be refused.
#![no_main]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ember_devices::interrupt::CountingIrq;
use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::net::{Net, NetBackend, MAX_TX_FRAME, RX_QUEUE, TX_QUEUE};
use ember_devices::virtio::IoVecs;
use ember_fuzz::guest;
use ember_fuzz::input::Reader;
use ember_fuzz::virtio::{self, addr, reg, seg_len, Driver, Rings};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 512;
const VNET_HDR_LEN: usize = 12;
const ETH_HLEN: usize = 14;

/// RX rings and buffers.
const RX_RINGS: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
const RX_AREA: (u64, u64) = (0xb_0000, 0xf_0000);
/// TX rings and buffers (the area spans the seam between regions A and B).
const TX_RINGS: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
const TX_AREA: (u64, u64) = (0x8000, 0xb_0000);

/// The device's end of the socket pair.
struct Sock(OwnedFd);

impl NetBackend for Sock {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid writable buffer.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_frame(&mut self, frame: &IoVecs<'_>) -> io::Result<usize> {
        frame.write_to(self.0.as_fd())
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: fresh descriptors we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The host side: what the backend received.
struct Host {
    peer: OwnedFd,
    buf: Vec<u8>,
    frames: u64,
    bytes: u64,
}

impl Host {
    /// Reads every frame the device sent and checks its size.
    fn drain(&mut self) {
        loop {
            // SAFETY: `buf` is a valid writable buffer; MSG_TRUNC makes
            // recv return the real length of a longer packet.
            let n = unsafe {
                libc::recv(
                    self.peer.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "recv: {e}");
                return;
            }
            let n = n as usize;
            assert!(n >= VNET_HDR_LEN + ETH_HLEN, "{n}-byte frame sent to the backend");
            assert!(n <= MAX_TX_FRAME && n <= 65536 + VNET_HDR_LEN, "{n}-byte frame sent to the backend");
            self.frames += 1;
            self.bytes += (n - VNET_HDR_LEN) as u64;
        }
    }

    /// Queues a frame for the device to receive (dropped when the socket
    /// is full).
    fn inject(&self, frame: &[u8]) {
        // SAFETY: `frame` is a valid buffer.
        unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    }
}

fn rings(r: (u64, u64, u64), size: u16) -> Rings {
    Rings { desc: r.0, avail: r.1, used: r.2, size }
}

fn raw_desc(r: &mut Reader, drv: &Driver) {
    let idx = r.u16();
    let a = addr(r);
    let (len, flags, next) = (r.u32(), r.u16(), r.u16());
    drv.set_desc(idx, a, len, flags, next);
}

fn tx_frame(r: &mut Reader, tx: &mut Driver) {
    let hdr = r.bytes(VNET_HDR_LEN).to_vec();
    let flags = r.u8();
    let split = (flags & 2 != 0).then(|| usize::from(r.u8()) % VNET_HDR_LEN);
    let table = (flags & 4 != 0).then(|| addr(r));
    let at = tx.alloc(VNET_HDR_LEN as u64);
    tx.poke(at, &hdr);
    let mut descs = Vec::with_capacity(6);
    match split {
        Some(s) if s > 0 => {
            descs.push((at, s as u32, false));
            descs.push((at + s as u64, (VNET_HDR_LEN - s) as u32, false));
        }
        _ => descs.push((at, VNET_HDR_LEN as u32, false)),
    }
    for _ in 0..r.u8() % 5 {
        let len = seg_len(r);
        let b = r.u8();
        let a = if b & 2 != 0 { addr(r) } else { tx.alloc(u64::from(len)) };
        descs.push((a, len, b & 1 != 0));
    }
    let head = tx.chain(&descs, flags & 1 != 0, table);
    tx.publish(head);
}

fn rx_chain(r: &mut Reader, rx: &mut Driver) {
    let flags = r.u8();
    let n = 1 + r.u8() % 4;
    let descs: Vec<_> = (0..n)
        .map(|i| {
            let len = seg_len(r);
            let readable = flags & 2 != 0 && i == n - 1;
            (rx.alloc(u64::from(len)), len, !readable)
        })
        .collect();
    let head = rx.chain(&descs, flags & 1 != 0, None);
    rx.publish(head);
}

fuzz_target!(|data: &[u8]| {
    let gm = guest::shared();
    let mem = gm.mem();
    let mut r = Reader::new(data);

    let wanted = r.u64();
    let rx_size = 1u16 << (r.u8() % 9);
    let tx_size = 1u16 << (r.u8() % 9);
    let layout = r.u8();
    let mut ring_addrs = |custom: bool, fixed: (u64, u64, u64)| {
        if custom {
            (addr(&mut r), addr(&mut r), addr(&mut r))
        } else {
            fixed
        }
    };
    let rx_addrs = ring_addrs(layout & 1 != 0, RX_RINGS);
    let tx_addrs = ring_addrs(layout & 2 != 0, TX_RINGS);

    let (dev_end, peer) = socket_pair();
    let net =
        Net::with_backend("fuzz".into(), Box::new(Sock(dev_end)), Some([2, 0, 0, 0, 0, 1])).expect("Net::with_backend");
    let stats = net.stats_handle();
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irq).expect("transport");

    let (rxr, txr) = (rings(rx_addrs, rx_size), rings(tx_addrs, tx_size));
    assert!(virtio::negotiate(&mut t, wanted), "FEATURES_OK refused");
    virtio::setup_queue(&mut t, RX_QUEUE as u32, &rxr, true);
    virtio::setup_queue(&mut t, TX_QUEUE as u32, &txr, true);
    virtio::driver_ok(&mut t);
    assert!(t.is_activated() || layout & 3 != 0, "device did not start on a valid setup");

    let mut rx = Driver::with_area(gm, rxr, RX_AREA.0, RX_AREA.1);
    let mut tx = Driver::with_area(gm, txr, TX_AREA.0, TX_AREA.1);
    let mut host = Host { peer, buf: vec![0u8; 1 << 17], frames: 0, bytes: 0 };
    let kick_tx = |t: &mut MmioTransport, host: &mut Host| {
        virtio::w32(t, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        t.handle_queue_event(TX_QUEUE);
        host.drain();
        let s = stats.snapshot();
        assert_eq!(
            (host.frames, host.bytes),
            (s.tx_frames, s.tx_bytes),
            "frames/bytes received by the backend vs. counted as sent"
        );
    };

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 12 {
            0..=2 => tx_frame(&mut r, &mut tx),
            3 => raw_desc(&mut r, &tx),
            4 => {
                let set = r.u8() & 1 != 0;
                let v = r.u16();
                if set {
                    tx.set_avail_idx(v);
                } else {
                    tx.publish(v);
                }
            }
            5 => rx_chain(&mut r, &mut rx),
            6 => match r.u8() % 4 {
                0 => raw_desc(&mut r, &rx),
                1 => {
                    let v = r.u16();
                    rx.publish(v);
                }
                2 => {
                    let v = r.u16();
                    rx.set_avail_idx(v);
                }
                _ => {
                    let v = r.u16();
                    rx.set_used_event(v);
                }
            },
            7 => {
                let (flags, gso) = (r.u8(), r.u8());
                let len = usize::from(r.u16()).max(VNET_HDR_LEN);
                let mut frame = vec![0u8; len];
                frame[0] = flags;
                frame[1] = gso;
                host.inject(&frame);
            }
            8 => kick_tx(&mut t, &mut host),
            9 => {
                virtio::w32(&mut t, reg::QUEUE_NOTIFY, RX_QUEUE as u32);
                t.handle_queue_event(RX_QUEUE);
            }
            10 => {
                let at = addr(&mut r);
                let bytes = r.blob8();
                tx.poke(at, bytes);
            }
            _ => {
                let v = r.u16();
                tx.set_used_event(v);
            }
        }
    }
    kick_tx(&mut t, &mut host);
    t.handle_queue_event(RX_QUEUE);

    virtio::w32(&mut t, reg::STATUS, 0);
    assert_eq!(virtio::r32(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    drop(t);
    gm.reset();
});
