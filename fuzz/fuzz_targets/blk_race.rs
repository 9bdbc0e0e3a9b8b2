//! virtio-blk with a second thread playing a hostile vCPU: while the device
//! serves a notification, the other thread keeps rewriting guest memory
//! (descriptors, ring entries, the available index, request headers) and,
//! if asked, keeps moving `avail.idx` a full ring ahead of the used index.
//! The concurrent mode the single-threaded targets lack (issue 16).
//!
//! Input:
//!
//! ```text
//! queue size: u8 (2^(n % 9))
//! features: u64 (the driver accepts the offered ones among these)
//! flags: u8    bit 0: the hostile thread keeps avail.idx a ring ahead
//! setup: blob16, driver actions (ember_fuzz::virtio::Driver::action)
//!        run before the race, kicks included
//! kicks: u8 (1 + n % 8 notifications raced)
//! then until the input ends, up to 32 writes the hostile thread repeats
//! in a loop: addr (ember_fuzz::virtio::addr), blob8 bytes
//! ```
//!
//! Oracles, per notification served during the race: the thread CPU time
//! of `handle_queue_event` is at most 50 ms; the bytes the host moved for
//! it through read/write system calls (`rchar + wchar` of
//! /proc/thread-self/io) are at most the pass budget plus one request
//! (`MAX_PASS_BYTES + MAX_REQUEST_BYTES`); and over the whole input the
//! device logs at most the sum of its log budgets. Plus blk_request's:
//! no panic, the image size never changes, the device stays active.
#![no_main]

use std::sync::Arc;

use ember_devices::interrupt::CountingIrq;
use ember_devices::virtio::block::{Block, BlockConfig, MAX_REQUEST_BYTES};
use ember_devices::virtio::mmio::MmioTransport;
use ember_devices::virtio::MAX_PASS_BYTES;
use ember_fuzz::input::Reader;
use ember_fuzz::race::{count_logs, log_records, race, thread_cpu, thread_io, Step, MAX_KICK_CPU, PROC_IO_SLACK};
use ember_fuzz::virtio::{self, addr, reg, Driver, Rings};
use ember_fuzz::{guest, image};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// Log lines a block device on virtio-mmio may make in its life: each
/// budget's lines plus its "suppressed" line (transport 64, configuration
/// writes 4, malformed chains 32, I/O errors 32, queue errors 8).
const MAX_LOG_LINES: usize = 65 + 5 + 33 + 33 + 9;

fuzz_target!(|data: &[u8]| {
    count_logs();
    let gm = guest::shared();
    let images = image::shared();
    let mut r = Reader::new(data);

    let rings = Rings { size: 1u16 << (r.u8() % 9), ..Rings::standard(0) };
    let wanted = r.u64();
    let flags = r.u8();
    let setup = r.blob16();
    let kicks = 1 + r.u8() % 8;
    let mut writes = Vec::new();
    while !r.is_empty() && writes.len() < 32 {
        let at = addr(&mut r);
        writes.push((at, r.blob8().to_vec()));
    }

    let img = &images.rw;
    let cfg = BlockConfig { path: img.path().to_path_buf(), readonly: false, id: None };
    let block = Block::new(&cfg).expect("Block::new");
    let mem = gm.mem();
    let logs_before = log_records();
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq).expect("transport");
    assert!(virtio::negotiate(&mut t, wanted), "FEATURES_OK refused");
    virtio::setup_queue(&mut t, 0, &rings, true);
    virtio::driver_ok(&mut t);
    assert!(t.is_activated(), "device did not start on a valid setup");

    let mut drv = Driver::new(gm, rings);
    let mut s = Reader::new(setup);
    let kick = |t: &mut MmioTransport| {
        virtio::w32(t, reg::QUEUE_NOTIFY, 0);
        t.handle_queue_event(0);
    };
    while !s.is_empty() {
        if drv.action(&mut s) == virtio::Step::Kick {
            kick(&mut t);
        }
    }

    let refill = flags & 1 != 0;
    let (avail_idx, used_idx) = (GuestAddress(rings.avail + 2), GuestAddress(rings.used + 2));
    let hostile: Step = Box::new(move || {
        for (at, bytes) in &writes {
            gm.write(*at, bytes);
        }
        if refill {
            let mem = gm.mem();
            let used: u16 = mem.read_obj(used_idx).unwrap_or(0);
            let _ = mem.write_obj(used.wrapping_add(rings.size), avail_idx);
        }
    });
    race(hostile, || {
        for _ in 0..kicks {
            let (cpu0, io0) = (thread_cpu(), thread_io());
            kick(&mut t);
            let (cpu, io) = (thread_cpu() - cpu0, thread_io() - io0);
            assert!(cpu <= MAX_KICK_CPU, "one notification took {cpu:?} of CPU");
            assert!(io <= MAX_PASS_BYTES + MAX_REQUEST_BYTES + PROC_IO_SLACK, "one notification moved {io} bytes");
            assert_eq!(img.size(), image::IMAGE_SIZE, "image size changed");
            assert!(t.is_activated(), "device stopped");
        }
    });
    // Continuations the budget left: served as the event loop would.
    for _ in 0..64 {
        kick(&mut t);
    }

    virtio::w32(&mut t, reg::STATUS, 0);
    assert_eq!(virtio::r32(&mut t, reg::STATUS), 0);
    drop(t);
    let lines = log_records() - logs_before;
    assert!(lines <= MAX_LOG_LINES, "{lines} log lines from one device");

    img.restore();
    gm.reset();
});
