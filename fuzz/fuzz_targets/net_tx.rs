//! virtio-net transmit (and the receive chains) from a hostile driver,
//! through the virtio-mmio transport, over a `SOCK_SEQPACKET` socket pair
//! standing in for the TAP device (`NetBackend`): one packet per frame, as
//! on a TAP with `IFF_VNET_HDR`.
//!
//! Input: features: u64, RX and TX queue sizes (u8 each, 2^(n % 9)), a
//! layout byte (bit 0: RX ring addresses follow, bit 1: TX ring addresses
//! follow; descriptor table, available ring, used ring; else fixed
//! non-overlapping rings), then up to 512 operations until the input ends
//! (`ember_fuzz::net`: TX frames, RX chains, raw descriptors and ring
//! entries, frames from the host, kicks, pokes, `used_event`).
//!
//! Invariants: no panic (no host access outside guest memory: guard
//! pages); every frame reaching the backend is at least the 12-byte header
//! plus an Ethernet header and at most 65536 + 12 bytes; the frames and
//! bytes the backend received are exactly what the device counted as sent.
//! With the fixed rings the device must start; rings of the fuzzer's
//! choosing may be refused.
#![no_main]

use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::net::{RX_QUEUE, TX_QUEUE};
use ember_fuzz::guest;
use ember_fuzz::input::Reader;
use ember_fuzz::net::{check_sent, kick, net_on_mmio, rings, Host, NetDriver, NetStep, RX_RINGS, TX_RINGS};
use ember_fuzz::virtio::{self, addr, reg};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let gm = guest::shared();
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

    let (rxr, txr) = (rings(rx_addrs, rx_size), rings(tx_addrs, tx_size));
    let (mut t, stats, mut host) = net_on_mmio(gm, wanted, &rxr, &txr);
    assert!(t.is_activated() || layout & 3 != 0, "device did not start on a valid setup");
    let mut drv = NetDriver::new(gm, rxr, txr);
    let kick_tx = |t: &mut MmioTransport, host: &mut Host| {
        kick(t, TX_QUEUE);
        check_sent(host, &stats);
    };

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match drv.op(&mut r, &host) {
            NetStep::KickTx => kick_tx(&mut t, &mut host),
            NetStep::KickRx => kick(&mut t, RX_QUEUE),
            NetStep::None => {}
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
