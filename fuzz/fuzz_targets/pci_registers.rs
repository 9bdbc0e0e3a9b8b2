//! PCI bus 0 with a virtio-blk function on the virtio-pci transport under
//! arbitrary configuration-space traffic (0xCF8/0xCFC and ECAM), BAR
//! register traffic (common configuration, notifications, ISR, device
//! configuration, MSI-X table and PBA), BAR moves and queue notifications,
//! in guest memory the fuzzer also controls.
//!
//! Input: a config byte (bit 0: read-only disk), then operations until the
//! input ends, each an opcode byte (modulo 12):
//!
//! ```text
//! 0   cf8:     address: u8 tag (bit 0: raw u32 follows, else device u8 % 4,
//!              register u16 % 4096), then u8 (bit 0 write, bit 1 at
//!              CONFIG_ADDRESS itself), port offset u8 % 8, width, value: u32
//! 1   ecam:    offset u32 % 0x10_8000, width, u8 (bit 0 write), value: u32
//! 2   bar:     register: u8 tag (0 a common field u8, 1 notify u8, 2 MSI-X
//!              table u16 % 0x1000, 3 PBA u8, 4 ISR/device config u8,
//!              else any u16), width (a common field's own width for tag 0
//!              with bit 7 clear), u8 (bit 0 write), value: u64
//! 3   window:  u8 (bit 0: 64-bit window, bit 1 write), offset u32, width,
//!              value: u64
//! 4   init:    features: u64, queue size u8 (2^(n % 9)), flags u8 (bit 0
//!              leave not ready, bit 1 no DRIVER_OK, bit 2 MSI-X on, bit 3
//!              function mask), vector u8 (queue), vector u8 (config)
//! 5   driver:  one split-queue driver action on the standard rings; a
//!              kick is a notification write at queue 0's address, then the
//!              event is served
//! 6   serve:   u8 queue index % 3
//! 7   reset:   device_status = 0
//! 8   move:    u8 (0 W32 + u32, 1 W64 + u32, 2 RAM u32, 3 zero, 4 all-ones,
//!              else raw u64), u8 (bit 0: decoding off while moving)
//! 9   command: u16
//! 10  msix:    control u16 (written at the MSI-X capability + 2)
//! 11  poke:    guest address, u8 length, bytes
//!
//! width: u8 % 5 selects 1, 2, 4, 8 or 3 bytes
//! ```
//!
//! Invariants: no panic; the function's identity, class and BAR type bits
//! never change; decoded BARs lie inside the windows and never overlap;
//! the registered notification addresses are exactly queue 0's address in
//! the decoded BAR (none while it is not decoded); the device status is a
//! valid prefix of the init sequence (plus FAILED / DEVICE_NEEDS_RESET);
//! an active device has DRIVER_OK; MSI-X vector mappings read NO_VECTOR or
//! an existing vector; a pending MSI-X vector is masked (an unmasked one is
//! delivered at once); after a reset the status, queue_enable and vector
//! mappings read 0 / 0 / NO_VECTOR and the device is stopped; the image
//! keeps its size (and its content, when read-only).
#![no_main]

use ember_devices::bus::BusDevice;
use ember_devices::pci::PciDevice;
use ember_devices::virtio::block::{Block, BlockConfig};
use ember_fuzz::input::Reader;
use ember_fuzz::pci::{self, bar, cfg, common, width, Machine, DEV, NO_VECTOR, W32, W64};
use ember_fuzz::virtio::{self, addr, status, Driver, Rings, Step};
use ember_fuzz::{guest, image};
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 1024;
/// Vectors of a one-queue device: the queue and configuration changes.
const VECTORS: u16 = 2;

fn check_reset(m: &mut Machine) {
    assert_eq!(m.peek(common::STATUS, 1), 0, "status after reset");
    assert!(!m.t.lock().unwrap().is_activated(), "device still active after reset");
    assert_eq!(m.peek(common::Q_SELECT, 2), 0, "queue_select after reset");
    assert_eq!(m.peek(common::Q_ENABLE, 2), 0, "queue_enable after reset");
    assert_eq!(m.peek(common::Q_MSIX, 2), u64::from(NO_VECTOR), "queue vector after reset");
    assert_eq!(m.peek(common::MSIX_CONFIG, 2), u64::from(NO_VECTOR), "config vector after reset");
}

/// What must hold after any operation; `config_changed` adds the BAR map
/// checks (only configuration writes move BARs).
fn check_always(m: &mut Machine, img: &image::Image, config_changed: bool) {
    if config_changed {
        check_bar_map(m);
    }
    let s = m.peek(common::STATUS, 1) as u32;
    assert!(virtio::status_is_valid(s), "invalid status {s:#x}");
    let t = m.t.lock().unwrap();
    assert!(!t.is_activated() || s & status::DRIVER_OK != 0, "active without DRIVER_OK ({s:#x})");
    let msix = t.msix();
    for v in 0..msix.vectors() {
        assert!(!msix.is_pending(v) || msix.is_masked(v), "vector {v} pending while unmasked");
    }
    drop(t);
    let cv = m.peek(common::MSIX_CONFIG, 2) as u16;
    assert!(cv == NO_VECTOR || cv < VECTORS, "config vector {cv}");
    assert_eq!(img.size(), image::IMAGE_SIZE, "image size changed");
}

/// The identity registers and the BAR map.
fn check_bar_map(m: &mut Machine) {
    let root = m.root.lock().unwrap();
    let mut id = [0u8; 4];
    root.config_read(0, DEV, 0, cfg::ID, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1042_1af4, "identity");
    root.config_read(0, DEV, 0, cfg::CLASS, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x0180_0001, "class and revision");
    root.config_read(0, DEV, 0, cfg::BAR0, &mut id);
    assert_eq!(u32::from_le_bytes(id) & 0x7fff, 0b100, "BAR 0 type bits and size");
    let bars = root.decoded_bars();
    drop(root);
    for w in bars.windows(2) {
        assert!(w[0].2 + w[0].3 <= w[1].2, "overlapping BARs {bars:x?}");
    }
    let inside = |a: u64, s: u64| {
        [W32, W64].iter().any(|w| a >= w.base && a.checked_add(s).is_some_and(|e| e <= w.base + w.len))
    };
    for &(_, _, a, s) in &bars {
        assert!(inside(a, s), "BAR decoded outside the windows: {a:#x}+{s:#x}");
    }
    let want: Vec<(i32, u64)> = m.bar0().map(|b| (m.queue_fds[0], b + bar::NOTIFY)).into_iter().collect();
    assert_eq!(m.ioevents.registered(), want, "notification registrations");
}

fn bar_register(r: &mut Reader) -> (u64, Option<usize>) {
    let tag = r.u8();
    match tag % 6 {
        0 => {
            let (off, len) = common::FIELDS[usize::from(r.u8()) % common::FIELDS.len()];
            (off, (tag & 0x80 == 0).then_some(len))
        }
        1 => (bar::NOTIFY + u64::from(r.u8()), None),
        2 => (bar::MSIX_TABLE + u64::from(r.u16() % 0x1000), None),
        3 => (bar::MSIX_PBA + u64::from(r.u8()), None),
        4 => ([bar::ISR, bar::DEVICE][usize::from(r.u8() & 1)] + u64::from(r.u8()), None),
        _ => (u64::from(r.u16()), None),
    }
}

fuzz_target!(|data: &[u8]| {
    let gm = guest::shared();
    let images = image::shared();
    let mem = gm.mem();
    let mut r = Reader::new(data);

    let readonly = r.u8() & 1 != 0;
    let img = if readonly { &images.ro } else { &images.rw };
    let block = Block::new(&BlockConfig { path: img.path().to_path_buf(), readonly, id: None }).expect("Block::new");
    let mut m = Machine::new(Box::new(block), mem.clone());
    let msix_cap = m.msix_cap();
    let mut drv = Driver::new(gm, Rings::standard(256));

    check_bar_map(&mut m);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 12;
        match op {
            0 => {
                let tag = r.u8();
                let address = if tag & 1 != 0 { r.u32() } else { pci::cf8_address(r.u8() % 4, r.u16() % 4096) };
                let mode = r.u8();
                let port = u64::from(r.u8() % 8);
                let w = width(&mut r);
                let val = r.u32();
                let mut b = u64::from(val).to_le_bytes();
                if mode & 2 != 0 {
                    // CONFIG_ADDRESS itself, any width.
                    if mode & 1 != 0 {
                        m.io.write(port % 4, &b[..w]);
                    } else {
                        m.io.read(port % 4, &mut b[..w]);
                    }
                } else {
                    m.io.write(0, &address.to_le_bytes());
                    if mode & 1 != 0 {
                        m.io.write(port, &b[..w]);
                    } else {
                        m.io.read(port, &mut b[..w]);
                    }
                }
            }
            1 => {
                let off = u64::from(r.u32() % 0x10_8000);
                let w = width(&mut r);
                let write = r.u8() & 1 != 0;
                let mut b = u64::from(r.u32()).to_le_bytes();
                if write {
                    m.ecam.write(off, &b[..w]);
                } else {
                    m.ecam.read(off, &mut b[..w]);
                }
            }
            2 => {
                let (off, natural) = bar_register(&mut r);
                let w = natural.unwrap_or_else(|| width(&mut r));
                let write = r.u8() & 1 != 0;
                let val = r.u64();
                if write {
                    m.bar_write(off, val, w);
                    if off == common::STATUS && w == 1 && val as u8 == 0 {
                        check_reset(&mut m);
                    }
                } else {
                    let got = m.bar_read(off, w);
                    if off == bar::DEVICE && w == 8 {
                        assert_eq!(got, image::SECTORS, "capacity");
                    }
                    if off == bar::ISR && w == 1 {
                        assert_eq!(got & !3, 0, "ISR {got:#x}");
                    }
                }
            }
            3 => {
                let mode = r.u8();
                let off = u64::from(r.u32());
                let w = width(&mut r);
                let mut b = r.u64().to_le_bytes();
                let (_, len, win) = &m.windows[usize::from(mode & 1)];
                let mut win = win.lock().unwrap();
                if mode & 2 != 0 {
                    win.write(off % len, &b[..w]);
                } else {
                    win.read(off % len, &mut b[..w]);
                }
            }
            4 => {
                let features = r.u64();
                let size = 1u16 << (r.u8() % 9);
                let flags = r.u8();
                let (qv, cv) = (u16::from(r.u8() % 4), u16::from(r.u8() % 4));
                let rings = Rings::standard(size);
                if flags & 4 != 0 {
                    let ctl = cfg::MSIX_ENABLE | if flags & 8 != 0 { cfg::MSIX_MASK } else { 0 };
                    m.cfg_write(msix_cap + 2, u32::from(ctl), 2);
                    for v in 0..u64::from(VECTORS) {
                        pci::program_vector(&mut m, v, 0x40 + v as u32);
                    }
                }
                if pci::negotiate(&mut m, features) {
                    m.bar_write(common::MSIX_CONFIG, u64::from(cv), 2);
                    pci::setup_queue(&mut m, &rings, qv, flags & 1 == 0);
                    if flags & 2 == 0 {
                        m.bar_write(common::STATUS, 0xf, 1);
                    }
                }
                drv = Driver::new(gm, rings);
            }
            5 => {
                if drv.action(&mut r) == Step::Kick {
                    m.bar_write(bar::NOTIFY, 0, 2);
                    m.t.lock().unwrap().handle_queue_event(0);
                }
            }
            6 => {
                let q = usize::from(r.u8() % 3);
                m.t.lock().unwrap().handle_queue_event(q);
            }
            7 => {
                m.bar_write(common::STATUS, 0, 1);
                check_reset(&mut m);
            }
            8 => {
                let a = match r.u8() % 6 {
                    0 => W32.base + u64::from(r.u32()),
                    1 => W64.base + u64::from(r.u32()),
                    2 => u64::from(r.u32()) % guest::RAM_END,
                    3 => 0,
                    4 => u64::MAX,
                    _ => r.u64(),
                };
                let off_while = r.u8() & 1 != 0;
                let cmd = m.cfg_read(cfg::COMMAND, 2);
                if off_while {
                    m.cfg_write(cfg::COMMAND, cmd & !u32::from(cfg::CMD_MEMORY), 2);
                }
                m.cfg_write(cfg::BAR0, a as u32, 4);
                m.cfg_write(cfg::BAR1, (a >> 32) as u32, 4);
                if off_while {
                    m.cfg_write(cfg::COMMAND, cmd, 2);
                }
            }
            9 => {
                let v = r.u16();
                m.cfg_write(cfg::COMMAND, u32::from(v), 2);
            }
            10 => {
                let v = r.u16();
                m.cfg_write(msix_cap + 2, u32::from(v), 2);
            }
            _ => {
                let at = addr(&mut r);
                let bytes = r.blob8();
                drv.poke(at, bytes);
            }
        }
        // cf8, ecam, window (PCI_CFG writes), move, command.
        check_always(&mut m, img, matches!(op, 0 | 1 | 3 | 8 | 9));
    }
    check_bar_map(&mut m);

    // A reset always brings the device back to its initial state.
    m.t.lock().unwrap().write_bar(0, common::STATUS, &[0]);
    check_reset(&mut m);
    drop(m);

    img.check_and_restore(readonly);
    gm.reset();
});
