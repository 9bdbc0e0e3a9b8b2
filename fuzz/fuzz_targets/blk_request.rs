//! virtio-blk requests from a hostile driver, through the virtio-mmio
//! transport.
//!
//! Input:
//!
//! ```text
//! config: u8   bit 0 read-only disk, bit 1 an id follows (u8 length,
//!              modulo 24: lengths over 20 must be refused), bit 2 the
//!              ring addresses follow (descriptor table, available ring,
//!              used ring; else the standard layout)
//! queue size: u8 (2^(n % 9))
//! features: u64 (the driver accepts the offered ones among these)
//! actions until the input ends (see ember_fuzz::virtio::Driver::action):
//!   requests built from a description, raw descriptors, raw available
//!   ring entries and index, used_event, raw bytes anywhere, kicks
//! ```
//!
//! The device is initialised through its registers like a Linux driver
//! would; every kick goes through `QueueNotify` and `handle_queue_event`.
//! Invariants: no panic (and, with the guard pages around guest memory, no
//! host access outside it), the image size never changes, a read-only
//! image's content never changes, the device stays active, and a reset
//! returns the status to 0. With the standard layout the device must start;
//! with rings of the fuzzer's choosing (which may overlap each other and
//! the buffers) it may refuse them.
#![no_main]

use std::sync::Arc;

use ember_devices::interrupt::CountingIrq;
use ember_devices::virtio::block::{Block, BlockConfig};
use ember_devices::virtio::mmio::MmioTransport;
use ember_fuzz::input::Reader;
use ember_fuzz::virtio::{self, addr, reg, Driver, Rings, Step};
use ember_fuzz::{guest, image};
use libfuzzer_sys::fuzz_target;

/// Bounds the work of one input.
const MAX_ACTIONS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let gm = guest::shared();
    let images = image::shared();
    let mut r = Reader::new(data);

    let config = r.u8();
    let readonly = config & 1 != 0;
    let id = (config & 2 != 0).then(|| "d".repeat(usize::from(r.u8() % 24)));
    let custom = config & 4 != 0;
    let rings = if custom {
        Rings { desc: addr(&mut r), avail: addr(&mut r), used: addr(&mut r), size: 0 }
    } else {
        Rings::standard(0)
    };
    let rings = Rings { size: 1u16 << (r.u8() % 9), ..rings };
    let wanted = r.u64();

    let img = if readonly { &images.ro } else { &images.rw };
    let cfg = BlockConfig { path: img.path().to_path_buf(), readonly, id: id.clone() };
    let block = match Block::new(&cfg) {
        Ok(b) => b,
        Err(e) => {
            assert!(id.is_some_and(|s| s.len() > 20), "Block::new: {e}");
            return;
        }
    };
    assert!(id.is_none_or(|s| s.len() <= 20), "an id over 20 bytes was taken");

    let mem = gm.mem();
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq).expect("transport");

    assert!(virtio::negotiate(&mut t, wanted), "FEATURES_OK refused");
    virtio::setup_queue(&mut t, 0, &rings, true);
    virtio::driver_ok(&mut t);
    let active = t.is_activated();
    assert!(active || custom, "device did not start on a valid setup");

    let mut drv = Driver::new(gm, rings);
    let kick = |t: &mut MmioTransport| {
        virtio::w32(t, reg::QUEUE_NOTIFY, 0);
        t.handle_queue_event(0);
        assert_eq!(img.size(), image::IMAGE_SIZE, "image size changed");
        assert_eq!(t.is_activated(), active, "device stopped");
    };
    for _ in 0..MAX_ACTIONS {
        if r.is_empty() {
            break;
        }
        if drv.action(&mut r) == Step::Kick {
            kick(&mut t);
        }
    }
    kick(&mut t);

    virtio::w32(&mut t, reg::STATUS, 0);
    assert_eq!(virtio::r32(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    drop(t);

    img.check_and_restore(readonly);
    gm.reset();
});
