//! virtio-net with a second thread playing a hostile vCPU: while the device
//! serves a transmit or receive notification, the other thread keeps
//! rewriting guest memory (descriptors, ring entries, available indexes,
//! headers, indirect tables) and, if asked, keeps moving either queue's
//! `avail.idx` a full ring ahead of its used index (finding 1 of issue 16:
//! a refilling receive ring with a frame waiting held the event loop for as
//! long as the refilling lasted). The concurrent mode of `net_tx`, as
//! `blk_race` is of `blk_request`.
//!
//! Input:
//!
//! ```text
//! features: u64 (the driver accepts the offered ones among these)
//! queue sizes: u8 RX, u8 TX (2^(n % 9)); fixed rings
//! flags: u8    bit 0: the hostile thread keeps the TX avail.idx a ring
//!              ahead; bit 1: the same for RX
//! setup: blob16, net operations (ember_fuzz::net) run before the race,
//!        kicks included
//! kicks: u8 (1 + n % 8 notifications raced), which: u8 (bit i: the i-th
//!        is a receive notification, else transmit)
//! frames: u8 (n % 8 frames from the host before each receive
//!         notification), their length: u16
//! then until the input ends, up to 32 writes the hostile thread repeats
//! in a loop: addr (ember_fuzz::virtio::addr), blob8 bytes
//! ```
//!
//! Oracles, per notification served during the race: the thread CPU time
//! of `handle_queue_event` is at most 50 ms; the bytes the host moved for
//! it through read/write system calls (`rchar + wchar` of
//! /proc/thread-self/io: frames written to the backend) are at most the
//! pass budget plus one frame; the frames and bytes the backend received
//! are exactly what the device counted as sent; and over the whole input
//! the device logs at most the sum of its log budgets. Plus `net_tx`'s: no
//! panic (no host access outside guest memory), every frame reaching the
//! backend within the sizes a TAP takes, the device active until reset.
#![no_main]

use ember_devices::virtio::net::{MAX_TX_FRAME, RX_QUEUE, TX_QUEUE};
use ember_devices::virtio::MAX_PASS_BYTES;
use ember_fuzz::guest;
use ember_fuzz::input::Reader;
use ember_fuzz::net::{check_sent, kick, net_on_mmio, rings, NetDriver, NetStep, RX_RINGS, TX_RINGS};
use ember_fuzz::race::{count_logs, log_records, race, thread_cpu, thread_io, Step, MAX_KICK_CPU, PROC_IO_SLACK};
use ember_fuzz::virtio::{self, addr, reg};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Log lines a virtio-net device on virtio-mmio may make in its life: each
/// budget's lines plus its "suppressed" line (transport 64, configuration
/// writes 4, transmit 32, receive 32, queue 16, backend 16).
const MAX_LOG_LINES: usize = 65 + 5 + 33 + 33 + 17 + 17;
/// Set-up operations at most.
const MAX_SETUP_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    count_logs();
    let gm = guest::shared();
    let mut r = Reader::new(data);

    let wanted = r.u64();
    let rx_size = 1u16 << (r.u8() % 9);
    let tx_size = 1u16 << (r.u8() % 9);
    let flags = r.u8();
    let setup = r.blob16();
    let kicks = 1 + r.u8() % 8;
    let which = r.u8();
    let frames = r.u8() % 8;
    let frame_len = r.u16();
    let mut writes = Vec::new();
    while !r.is_empty() && writes.len() < 32 {
        let at = addr(&mut r);
        writes.push((at, r.blob8().to_vec()));
    }

    let logs_before = log_records();
    let (rxr, txr) = (rings(RX_RINGS, rx_size), rings(TX_RINGS, tx_size));
    let (mut t, stats, mut host) = net_on_mmio(gm, wanted, &rxr, &txr);
    assert!(t.is_activated(), "device did not start on a valid setup");
    let mut drv = NetDriver::new(gm, rxr, txr);
    let mut s = Reader::new(setup);
    for _ in 0..MAX_SETUP_OPS {
        if s.is_empty() {
            break;
        }
        match drv.op(&mut s, &host) {
            NetStep::KickTx => kick(&mut t, TX_QUEUE),
            NetStep::KickRx => kick(&mut t, RX_QUEUE),
            NetStep::None => {}
        }
    }
    check_sent(&mut host, &stats);

    let refills: Vec<(GuestAddress, GuestAddress, u16)> = [(flags & 1 != 0, txr), (flags & 2 != 0, rxr)]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, q)| (GuestAddress(q.avail + 2), GuestAddress(q.used + 2), q.size))
        .collect();
    let hostile: Step = Box::new(move || {
        for (at, bytes) in &writes {
            gm.write(*at, bytes);
        }
        let mem = gm.mem();
        for &(avail_idx, used_idx, size) in &refills {
            let used: u16 = mem.read_obj(used_idx).unwrap_or(0);
            let _ = mem.write_obj(used.wrapping_add(size), avail_idx);
        }
    });
    race(hostile, || {
        for i in 0..kicks {
            let q = if which >> i & 1 != 0 { RX_QUEUE } else { TX_QUEUE };
            if q == RX_QUEUE {
                for _ in 0..frames {
                    host.inject_frame(0, 0, frame_len);
                }
            }
            let (cpu0, io0) = (thread_cpu(), thread_io());
            kick(&mut t, q);
            let (cpu, io) = (thread_cpu() - cpu0, thread_io() - io0);
            assert!(cpu <= MAX_KICK_CPU, "one notification of queue {q} took {cpu:?} of CPU");
            assert!(
                io <= MAX_PASS_BYTES + MAX_TX_FRAME as u64 + PROC_IO_SLACK,
                "one notification of queue {q} moved {io} bytes"
            );
            check_sent(&mut host, &stats);
            assert!(t.is_activated(), "device stopped");
        }
    });
    // Continuations the budget left: served as the event loop would.
    for _ in 0..64 {
        t.handle_queue_event(TX_QUEUE);
        t.handle_queue_event(RX_QUEUE);
    }
    check_sent(&mut host, &stats);

    virtio::w32(&mut t, reg::STATUS, 0);
    assert_eq!(virtio::r32(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    drop(t);
    let lines = log_records() - logs_before;
    assert!(lines <= MAX_LOG_LINES, "{lines} log lines from one device");
    gm.reset();
});
