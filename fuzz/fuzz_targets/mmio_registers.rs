//! The virtio-mmio register window of a virtio-blk device under arbitrary
//! register traffic, interleaved with queue notifications, in guest memory
//! whose contents the fuzzer also controls.
//!
//! Input: a config byte (bit 0: read-only disk), then operations until the
//! input ends, each an opcode byte (modulo 9):
//!
//! ```text
//! 0, 1  write:   register, width, value: u64
//! 2     read:    register, width
//! 3     notify:  u8 (queue index modulo 4; bit 7: via QueueNotify first)
//! 4     poke:    guest address, u8 length, bytes
//! 5     init:    features: u64, queue size: u8 (2^(n % 9)), layout: u8
//!                (bit 0: ring addresses follow), flags: u8 (bit 0: leave
//!                the queue not ready, bit 1: stop before DRIVER_OK)
//! 6     driver:  one action of the split-queue driver on the standard
//!                rings (requests, raw descriptors, ring indexes, kicks)
//! 7     reset:   Status = 0
//! 8     write32: register index u8 (into the register list), value u32
//!
//! register: u8 tag (modulo 4): 0 a known register (u8 index), 1 config
//!           space (u8 offset), 2 anywhere in the window (u16), 3 any u64
//! width:    u8, modulo 4 selects 4, 1, 2 or 8 bytes
//! ```
//!
//! Invariants: no panic; after Status = 0 the status, interrupt status and
//! the selected queue's QueueReady read 0 and the device is stopped; the
//! identification registers never change; non-32-bit register accesses
//! read as zero; Status always holds a valid prefix of the init sequence
//! (plus FAILED / DEVICE_NEEDS_RESET); InterruptStatus has only bits 0-1;
//! an active device has DRIVER_OK; the image keeps its size (and its
//! content, when read-only).
#![no_main]

use std::sync::Arc;

use ember_devices::bus::BusDevice;
use ember_devices::interrupt::CountingIrq;
use ember_devices::virtio::block::{Block, BlockConfig};
use ember_devices::virtio::mmio::MmioTransport;
use ember_fuzz::input::Reader;
use ember_fuzz::virtio::{self, addr, r32, reg, status, w32, Driver, Rings, Step};
use ember_fuzz::{guest, image};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 1024;

fn register(r: &mut Reader) -> u64 {
    match r.u8() % 4 {
        0 => reg::ALL[usize::from(r.u8()) % reg::ALL.len()],
        1 => reg::CONFIG + u64::from(r.u8()),
        2 => u64::from(r.u16()) % 0x1000,
        _ => r.u64(),
    }
}

fn width(r: &mut Reader) -> usize {
    [4, 1, 2, 8][usize::from(r.u8() % 4)]
}

/// What must hold after a reset (Status = 0).
fn check_reset(t: &mut MmioTransport) {
    assert_eq!(r32(t, reg::STATUS), 0, "Status after reset");
    assert_eq!(r32(t, reg::INTERRUPT_STATUS), 0, "InterruptStatus after reset");
    assert_eq!(r32(t, reg::QUEUE_READY), 0, "QueueReady after reset");
    assert!(!t.is_activated(), "device still active after reset");
}

/// What must hold after any operation.
fn check_always(t: &mut MmioTransport, img: &image::Image) {
    assert_eq!(r32(t, reg::MAGIC), virtio::MAGIC_VALUE);
    assert_eq!(r32(t, reg::VERSION), 2);
    assert_eq!(r32(t, reg::DEVICE_ID), virtio::blk::DEVICE_ID);
    let s = r32(t, reg::STATUS);
    assert!(virtio::status_is_valid(s), "invalid Status {s:#x}");
    assert!(!t.is_activated() || s & status::DRIVER_OK != 0, "active without DRIVER_OK ({s:#x})");
    let isr = r32(t, reg::INTERRUPT_STATUS);
    assert_eq!(isr & !3, 0, "InterruptStatus {isr:#x}");
    assert_eq!(img.size(), image::IMAGE_SIZE, "image size changed");
}

/// Checks a read of `data` at `off`.
fn check_read(off: u64, data: &[u8]) {
    if off < reg::CONFIG && data.len() != 4 {
        assert!(data.iter().all(|&b| b == 0), "{}-byte read of {off:#x}: {data:?}", data.len());
        return;
    }
    if data.len() == 4 {
        let v = u32::from_le_bytes(data.try_into().unwrap());
        match off {
            reg::MAGIC => assert_eq!(v, virtio::MAGIC_VALUE),
            reg::VERSION => assert_eq!(v, 2),
            reg::DEVICE_ID => assert_eq!(v, virtio::blk::DEVICE_ID),
            reg::VENDOR_ID => assert_eq!(v, u32::from_le_bytes(*b"EMBR")),
            reg::STATUS => assert!(virtio::status_is_valid(v), "Status {v:#x}"),
            reg::QUEUE_READY => assert!(v <= 1, "QueueReady {v}"),
            reg::INTERRUPT_STATUS => assert_eq!(v & !3, 0),
            _ => {}
        }
    }
    if off == reg::CONFIG && data.len() == 8 {
        // virtio_blk_config.capacity, in sectors.
        assert_eq!(u64::from_le_bytes(data.try_into().unwrap()), image::SECTORS);
    }
}

fuzz_target!(|data: &[u8]| {
    let gm = guest::shared();
    let images = image::shared();
    let mem = gm.mem();
    let mut r = Reader::new(data);

    let readonly = r.u8() & 1 != 0;
    let img = if readonly { &images.ro } else { &images.rw };
    let cfg = BlockConfig { path: img.path().to_path_buf(), readonly, id: None };
    let block = Block::new(&cfg).expect("Block::new");
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq).expect("transport");
    let mut drv = Driver::new(gm, Rings::standard(256));

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 9 {
            0 | 1 => {
                let off = register(&mut r);
                let w = width(&mut r);
                let val = r.u64();
                t.write(off, &val.to_le_bytes()[..w]);
                if off == reg::STATUS && w == 4 && val as u32 == 0 {
                    check_reset(&mut t);
                }
            }
            2 => {
                let off = register(&mut r);
                let w = width(&mut r);
                let mut buf = [0xa5u8; 8];
                t.read(off, &mut buf[..w]);
                check_read(off, &buf[..w]);
            }
            3 => {
                let q = r.u8();
                if q & 0x80 != 0 {
                    w32(&mut t, reg::QUEUE_NOTIFY, u32::from(q % 4));
                }
                t.handle_queue_event(usize::from(q % 4));
            }
            4 => {
                let at = addr(&mut r);
                let bytes = r.blob8();
                drv.poke(at, bytes);
            }
            5 => {
                let features = r.u64();
                let size = 1u16 << (r.u8() % 9);
                let layout = r.u8();
                let rings = if layout & 1 == 0 {
                    Rings::standard(size)
                } else {
                    Rings { desc: addr(&mut r), avail: addr(&mut r), used: addr(&mut r), size }
                };
                let flags = r.u8();
                // negotiate() starts with a reset.
                if virtio::negotiate(&mut t, features) {
                    virtio::setup_queue(&mut t, 0, &rings, flags & 1 == 0);
                    if flags & 2 == 0 {
                        virtio::driver_ok(&mut t);
                    }
                }
                drv = Driver::new(gm, Rings::standard(size));
            }
            6 => {
                if drv.action(&mut r) == Step::Kick {
                    w32(&mut t, reg::QUEUE_NOTIFY, 0);
                    t.handle_queue_event(0);
                }
            }
            7 => {
                w32(&mut t, reg::STATUS, 0);
                check_reset(&mut t);
            }
            _ => {
                let off = reg::ALL[usize::from(r.u8()) % reg::ALL.len()];
                let val = r.u32();
                w32(&mut t, off, val);
                if off == reg::STATUS && val == 0 {
                    check_reset(&mut t);
                }
            }
        }
        check_always(&mut t, img);
    }

    w32(&mut t, reg::STATUS, 0);
    check_reset(&mut t);
    drop(t);

    img.check_and_restore(readonly);
    gm.reset();
});
