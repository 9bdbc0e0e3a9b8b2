//! virtio-net pieces the `net_tx` and `net_race` targets share: a
//! `SOCK_SEQPACKET` socket pair standing in for the TAP device (one packet
//! per frame, as on a TAP with `IFF_VNET_HDR`), the host's end of it, and
//! the driver operations both targets decode.
//!
//! Operations, each an opcode byte (modulo [`OPS`]):
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
//! 8    TX kick
//! 9    RX kick
//! 10   poke: address, u8 length, bytes
//! 11   TX used_event: u16
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use ember_devices::interrupt::CountingIrq;
use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::net::{Net, NetBackend, NetCounters, MAX_TX_FRAME, RX_QUEUE, TX_QUEUE};
use ember_devices::virtio::IoVecs;

use crate::guest::GuardedMemory;
use crate::input::Reader;
use crate::virtio::{self, addr, reg, seg_len, Driver, Rings};

/// The virtio-net header the device and the backend exchange.
pub const VNET_HDR_LEN: usize = 12;
/// An Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Number of operation opcodes.
pub const OPS: u8 = 12;

/// RX rings (descriptor table, available ring, used ring).
pub const RX_RINGS: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
/// Where RX buffers are allocated.
pub const RX_AREA: (u64, u64) = (0xb_0000, 0xf_0000);
/// TX rings.
pub const TX_RINGS: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
/// Where TX buffers are allocated (the area spans the seam between
/// regions A and B).
pub const TX_AREA: (u64, u64) = (0x8000, 0xb_0000);

/// The device's end of the socket pair.
pub struct Sock(pub OwnedFd);

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

/// A non-blocking `SOCK_SEQPACKET` pair: (the device's end, the host's).
pub fn socket_pair() -> (OwnedFd, OwnedFd) {
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
pub struct Host {
    peer: OwnedFd,
    buf: Vec<u8>,
    /// Frames received so far.
    pub frames: u64,
    /// Their bytes, without the virtio-net header.
    pub bytes: u64,
}

impl Host {
    /// The host's end of the pair.
    pub fn new(peer: OwnedFd) -> Self {
        Host { peer, buf: vec![0u8; 1 << 17], frames: 0, bytes: 0 }
    }

    /// Reads every frame the device sent and checks its size.
    pub fn drain(&mut self) {
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
    pub fn inject(&self, frame: &[u8]) {
        // SAFETY: `frame` is a valid buffer.
        unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    }

    /// Queues a frame of `len` bytes (at least the header) whose header
    /// starts with `flags` and `gso_type`.
    pub fn inject_frame(&self, flags: u8, gso_type: u8, len: u16) {
        let mut frame = vec![0u8; usize::from(len).max(VNET_HDR_LEN)];
        frame[0] = flags;
        frame[1] = gso_type;
        self.inject(&frame);
    }
}

/// A virtio-net device on a socket pair behind the virtio-mmio transport,
/// driven through the set-up a Linux driver does: features (`wanted`
/// among the offered ones), both queues on `rx` and `tx`, `DRIVER_OK`.
/// Returns the transport, the device's counters and the host's end.
pub fn net_on_mmio(
    mem: &GuardedMemory,
    wanted: u64,
    rx: &Rings,
    tx: &Rings,
) -> (MmioTransport, Arc<NetCounters>, Host) {
    let (dev_end, peer) = socket_pair();
    let net =
        Net::with_backend("fuzz".into(), Box::new(Sock(dev_end)), Some([2, 0, 0, 0, 0, 1])).expect("Net::with_backend");
    let stats = net.stats_handle();
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(net), mem.mem().clone(), irq).expect("transport");
    assert!(virtio::negotiate(&mut t, wanted), "FEATURES_OK refused");
    virtio::setup_queue(&mut t, RX_QUEUE as u32, rx, true);
    virtio::setup_queue(&mut t, TX_QUEUE as u32, tx, true);
    virtio::driver_ok(&mut t);
    (t, stats, Host::new(peer))
}

/// Notifies queue `q` (a `QueueNotify` write, then the queue's event).
pub fn kick(t: &mut MmioTransport, q: usize) {
    virtio::w32(t, reg::QUEUE_NOTIFY, q as u32);
    t.handle_queue_event(q);
}

/// Reads what the device sent and checks that the backend received
/// exactly the frames and bytes the device counted as sent.
pub fn check_sent(host: &mut Host, stats: &NetCounters) {
    host.drain();
    let s = stats.snapshot();
    assert_eq!(
        (host.frames, host.bytes),
        (s.tx_frames, s.tx_bytes),
        "frames/bytes received by the backend vs. counted as sent"
    );
}

/// Rings at `r` (descriptor table, available ring, used ring) of `size`.
pub fn rings(r: (u64, u64, u64), size: u16) -> Rings {
    Rings { desc: r.0, avail: r.1, used: r.2, size }
}

/// What an operation asks of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetStep {
    /// Nothing more.
    None,
    /// Notify the transmit queue.
    KickTx,
    /// Notify the receive queue.
    KickRx,
}

/// The driver's two queues.
pub struct NetDriver<'m> {
    /// The receive queue.
    pub rx: Driver<'m>,
    /// The transmit queue.
    pub tx: Driver<'m>,
}

impl<'m> NetDriver<'m> {
    /// Drivers for `rx` and `tx`, allocating from [`RX_AREA`] and
    /// [`TX_AREA`].
    pub fn new(mem: &'m GuardedMemory, rx: Rings, tx: Rings) -> Self {
        NetDriver {
            rx: Driver::with_area(mem, rx, RX_AREA.0, RX_AREA.1),
            tx: Driver::with_area(mem, tx, TX_AREA.0, TX_AREA.1),
        }
    }

    /// Decodes and performs one operation (frames from the host go to
    /// `host`); kicks are left to the caller.
    pub fn op(&mut self, r: &mut Reader, host: &Host) -> NetStep {
        match r.u8() % OPS {
            0..=2 => tx_frame(r, &mut self.tx),
            3 => raw_desc(r, &self.tx),
            4 => {
                let set = r.u8() & 1 != 0;
                let v = r.u16();
                if set {
                    self.tx.set_avail_idx(v);
                } else {
                    self.tx.publish(v);
                }
            }
            5 => rx_chain(r, &mut self.rx),
            6 => match r.u8() % 4 {
                0 => raw_desc(r, &self.rx),
                1 => {
                    let v = r.u16();
                    self.rx.publish(v);
                }
                2 => {
                    let v = r.u16();
                    self.rx.set_avail_idx(v);
                }
                _ => {
                    let v = r.u16();
                    self.rx.set_used_event(v);
                }
            },
            7 => {
                let (flags, gso) = (r.u8(), r.u8());
                let len = r.u16();
                host.inject_frame(flags, gso, len);
            }
            8 => return NetStep::KickTx,
            9 => return NetStep::KickRx,
            10 => {
                let at = addr(r);
                let bytes = r.blob8();
                self.tx.poke(at, bytes);
            }
            _ => {
                let v = r.u16();
                self.tx.set_used_event(v);
            }
        }
        NetStep::None
    }
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
