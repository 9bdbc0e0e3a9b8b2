//! The committed seed corpus, as code: `examples/gen_seeds.rs` writes these
//! to `corpus/<target>/<name>`. Each seed is a small, meaningful input in
//! the target's encoding (see the comment at the top of each target).

use crate::guest::SEAM;
use crate::input::Writer;
use crate::virtio::{
    self, blk, op, put_addr, put_kick_action, put_request_action, reg, status, Request, Seg, StatusDesc, F_EVENT_IDX,
    F_INDIRECT_DESC, STD_AVAIL, STD_DESC, STD_USED,
};

/// A named seed.
pub type Seed = (&'static str, Vec<u8>);

/// The blk_request header: config, queue size exponent, features.
fn blk_header(w: &mut Writer, readonly: bool, qsize_log2: u8, features: u64) {
    w.u8(u8::from(readonly)).u8(qsize_log2).u64(features);
}

fn seg_at(len: u32, write: Option<bool>, addr: u64) -> Seg {
    Seg { len, write, addr: Some(addr) }
}

/// Seeds of `blk_request`.
pub fn blk_request() -> Vec<Seed> {
    let mut out = Vec::new();
    let all = u64::MAX;

    let mut w = Writer::new();
    blk_header(&mut w, false, 8, all);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 0, &[4096]));
    put_request_action(&mut w, &Request::simple(blk::T_OUT, 8, &[512, 1024]));
    put_request_action(&mut w, &Request::simple(blk::T_IN, 8, &[1536]));
    put_kick_action(&mut w);
    out.push(("in_out", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 4, all);
    put_request_action(&mut w, &Request::simple(blk::T_FLUSH, 0, &[]));
    put_request_action(&mut w, &Request::simple(blk::T_GET_ID, 0, &[20]));
    put_request_action(&mut w, &Request::simple(0x42, 0, &[]));
    put_kick_action(&mut w);
    out.push(("flush_getid_unsupp", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 8, all);
    for (kind, seg) in [
        (blk::T_DISCARD, (8, 8, 0)),
        (blk::T_WRITE_ZEROES, (16, 8, blk::WRITE_ZEROES_FLAG_UNMAP)),
        (blk::T_WRITE_ZEROES, (24, 8, 0)),
        (blk::T_DISCARD, (120, 16, 0)),
    ] {
        let mut r = Request::simple(kind, 0, &[]);
        r.segment = Some(seg);
        put_request_action(&mut w, &r);
    }
    put_kick_action(&mut w);
    out.push(("discard_write_zeroes", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 8, all);
    let mut r = Request::simple(blk::T_IN, 4, &[512, 1024]);
    r.indirect = true;
    r.split_header = Some(7);
    put_request_action(&mut w, &r);
    let mut r = Request::simple(blk::T_IN, 2, &[513]);
    r.status = StatusDesc::InLastData;
    put_request_action(&mut w, &r);
    put_kick_action(&mut w);
    out.push(("indirect_split_inline_status", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, true, 8, all);
    put_request_action(&mut w, &Request::simple(blk::T_OUT, 0, &[512]));
    let mut r = Request::simple(blk::T_WRITE_ZEROES, 0, &[]);
    r.segment = Some((0, 8, 0));
    put_request_action(&mut w, &r);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 127, &[512]));
    put_kick_action(&mut w);
    out.push(("readonly_writes", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 3, F_EVENT_IDX | F_INDIRECT_DESC);
    for i in 0..12 {
        put_request_action(&mut w, &Request::simple(blk::T_IN, i, &[512]));
        if i % 2 == 1 {
            w.u8(op::USED_EVENT).u16(i as u16);
            put_kick_action(&mut w);
        }
    }
    out.push(("event_idx_ring_wrap", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 8, all);
    let mut r = Request::simple(blk::T_IN, 0, &[]);
    r.header_addr = Some(SEAM - 8);
    r.data.push(seg_at(1024, None, SEAM - 512));
    put_request_action(&mut w, &r);
    let mut r = Request::simple(blk::T_OUT, 16, &[]);
    r.data.push(seg_at(2048, None, SEAM - 1000));
    put_request_action(&mut w, &r);
    put_kick_action(&mut w);
    out.push(("seam_spanning_buffers", w.finish()));

    let mut w = Writer::new();
    blk_header(&mut w, false, 4, all);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 128, &[512]));
    put_request_action(&mut w, &Request::simple(blk::T_IN, 127, &[1024]));
    let mut r = Request::simple(blk::T_OUT, 0, &[512]);
    r.data[0].write = Some(true);
    put_request_action(&mut w, &r);
    let mut r = Request::simple(blk::T_IN, 0, &[512]);
    r.status = StatusDesc::Missing;
    put_request_action(&mut w, &r);
    // A descriptor loop, published.
    w.u8(op::RAW_DESC).u16(9);
    put_addr(&mut w, 0x9000);
    w.u32(16).u16(virtio::DESC_NEXT).u16(9);
    w.u8(op::PUBLISH).u16(9);
    put_kick_action(&mut w);
    w.u8(op::AVAIL_IDX).u16(1000);
    put_kick_action(&mut w);
    out.push(("malformed", w.finish()));

    out
}

/// mmio_registers opcodes.
mod mop {
    pub const WRITE: u8 = 0;
    pub const READ: u8 = 2;
    pub const NOTIFY: u8 = 3;
    pub const INIT: u8 = 5;
    pub const DRIVER: u8 = 6;
    pub const RESET: u8 = 7;
    pub const WRITE32: u8 = 8;
}

fn reg_index(off: u64) -> u8 {
    virtio::reg::ALL.iter().position(|&r| r == off).expect("known register") as u8
}

fn write32(w: &mut Writer, off: u64, val: u32) {
    w.u8(mop::WRITE32).u8(reg_index(off)).u32(val);
}

fn read(w: &mut Writer, off: u64, width_sel: u8) {
    w.u8(mop::READ).u8(0).u8(reg_index(off)).u8(width_sel);
}

/// Seeds of `mmio_registers`.
pub fn mmio_registers() -> Vec<Seed> {
    let mut out = Vec::new();
    use status::*;

    // The init sequence of a Linux driver, register by register, then one
    // request, a notification, an interrupt acknowledgement and a reset.
    let mut w = Writer::new();
    w.u8(0);
    for (off, val) in [
        (reg::STATUS, 0),
        (reg::STATUS, ACKNOWLEDGE),
        (reg::STATUS, ACKNOWLEDGE | DRIVER),
        (reg::DEVICE_FEATURES_SEL, 1),
        (reg::DRIVER_FEATURES_SEL, 1),
        (reg::DRIVER_FEATURES, 1),
        (reg::DRIVER_FEATURES_SEL, 0),
        (reg::DRIVER_FEATURES, 1 << 28 | 1 << 29),
        (reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK),
        (reg::QUEUE_SEL, 0),
        (reg::QUEUE_NUM, 128),
        (reg::QUEUE_DESC_LOW, STD_DESC as u32),
        (reg::QUEUE_DESC_HIGH, 0),
        (reg::QUEUE_AVAIL_LOW, STD_AVAIL as u32),
        (reg::QUEUE_AVAIL_HIGH, 0),
        (reg::QUEUE_USED_LOW, STD_USED as u32),
        (reg::QUEUE_USED_HIGH, 0),
        (reg::QUEUE_READY, 1),
        (reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
    ] {
        write32(&mut w, off, val);
        if off == reg::DEVICE_FEATURES_SEL {
            read(&mut w, reg::DEVICE_FEATURES, 0);
        }
    }
    read(&mut w, reg::STATUS, 0);
    w.u8(mop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 1, &[512]));
    w.u8(mop::NOTIFY).u8(0x80);
    read(&mut w, reg::INTERRUPT_STATUS, 0);
    write32(&mut w, reg::INTERRUPT_ACK, 1);
    write32(&mut w, reg::STATUS, 0);
    out.push(("linux_init_sequence", w.finish()));

    // The same through the init macro, with DRIVER kicks and a reset in
    // the middle of I/O.
    let mut w = Writer::new();
    w.u8(0);
    w.u8(mop::INIT).u64(u64::MAX).u8(8).u8(0).u8(0);
    w.u8(mop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_OUT, 3, &[1024]));
    w.u8(mop::DRIVER);
    put_kick_action(&mut w);
    w.u8(mop::RESET);
    w.u8(mop::INIT).u64(F_EVENT_IDX).u8(2).u8(0).u8(0);
    w.u8(mop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 3, &[1024]));
    w.u8(mop::NOTIFY).u8(0x80);
    w.u8(mop::NOTIFY).u8(3);
    out.push(("init_macro_reset_mid_io", w.finish()));

    // Config space and odd widths.
    let mut w = Writer::new();
    w.u8(1);
    for width in 0..4u8 {
        for off in [0u8, 4, 8, 20, 24, 34, 36, 40, 52, 56, 60, 63] {
            w.u8(mop::READ).u8(1).u8(off).u8(width);
        }
    }
    for off in [reg::MAGIC, reg::STATUS, reg::QUEUE_NUM_MAX, reg::CONFIG_GENERATION, reg::SHM_LEN_LOW] {
        for width in 0..4u8 {
            read(&mut w, off, width);
        }
    }
    w.u8(mop::WRITE).u8(1).u8(0).u8(1).u64(0xff);
    w.u8(mop::WRITE).u8(2).u16(0x72).u8(1).u64(0);
    out.push(("config_and_widths", w.finish()));

    // Transitions a driver must not make.
    let mut w = Writer::new();
    w.u8(0);
    write32(&mut w, reg::STATUS, DRIVER_OK);
    write32(&mut w, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write32(&mut w, reg::STATUS, ACKNOWLEDGE);
    write32(&mut w, reg::STATUS, ACKNOWLEDGE | DRIVER);
    write32(&mut w, reg::DRIVER_FEATURES_SEL, 2);
    write32(&mut w, reg::DRIVER_FEATURES, 1);
    write32(&mut w, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write32(&mut w, reg::QUEUE_SEL, 5);
    write32(&mut w, reg::QUEUE_NUM, 3);
    write32(&mut w, reg::QUEUE_READY, 1);
    write32(&mut w, reg::QUEUE_SEL, 0);
    write32(&mut w, reg::QUEUE_DESC_LOW, 0x0012_0000);
    write32(&mut w, reg::QUEUE_READY, 1);
    write32(&mut w, reg::QUEUE_NOTIFY, 7);
    write32(&mut w, reg::STATUS, FAILED);
    write32(&mut w, reg::STATUS, 0x4f);
    write32(&mut w, reg::STATUS, 0);
    out.push(("invalid_transitions", w.finish()));

    out
}

/// pci_registers opcodes.
mod pop {
    pub const CF8: u8 = 0;
    pub const ECAM: u8 = 1;
    pub const BAR: u8 = 2;
    pub const WINDOW: u8 = 3;
    pub const INIT: u8 = 4;
    pub const DRIVER: u8 = 5;
    pub const SERVE: u8 = 6;
    pub const RESET: u8 = 7;
    pub const MOVE: u8 = 8;
    pub const COMMAND: u8 = 9;
    pub const MSIX: u8 = 10;
}

/// A configuration access of the virtio function through 0xCF8/0xCFC.
fn cf8(w: &mut Writer, reg: u16, len: usize, write: bool, val: u32) {
    w.u8(pop::CF8).u8(0).u8(crate::pci::DEV).u16(reg).u8(u8::from(write));
    w.u8(4 + (reg & 3) as u8);
    crate::pci::put_width(w, len);
    w.u32(val);
}

/// A common-configuration field at its natural width.
fn common_field(w: &mut Writer, off: u64, len: usize, write: bool, val: u64) {
    let i = crate::pci::common::FIELDS.iter().position(|&f| f == (off, len)).expect("a common field") as u8;
    w.u8(pop::BAR).u8(0).u8(i).u8(u8::from(write)).u64(val);
}

/// An MSI-X table access (dword) at `off` in the table.
fn table(w: &mut Writer, off: u16, len: usize, val: u64) {
    w.u8(pop::BAR).u8(2).u16(off);
    crate::pci::put_width(w, len);
    w.u8(1).u64(val);
}

/// Seeds of `pci_registers`.
pub fn pci_registers() -> Vec<Seed> {
    use crate::pci::{cfg, common};
    use status::*;
    let mut out = Vec::new();

    // What Linux does: identify, size BAR 0 with decoding off, enable
    // memory and bus mastering, MSI-X (masked while programming), the
    // virtio init sequence with a vector per queue, one request, a kick, a
    // read of the ISR, a reset.
    let mut w = Writer::new();
    w.u8(0);
    cf8(&mut w, cfg::ID, 4, false, 0);
    cf8(&mut w, cfg::CLASS, 4, false, 0);
    cf8(&mut w, cfg::COMMAND, 2, true, 0);
    for reg in [cfg::BAR0, cfg::BAR1] {
        cf8(&mut w, reg, 4, false, 0);
        cf8(&mut w, reg, 4, true, 0xffff_ffff);
        cf8(&mut w, reg, 4, false, 0);
    }
    cf8(&mut w, cfg::BAR0, 4, true, 0);
    cf8(&mut w, cfg::BAR1, 4, true, 0x40);
    cf8(&mut w, cfg::COMMAND, 2, true, u32::from(cfg::CMD_MEMORY | cfg::CMD_MASTER));
    cf8(&mut w, cfg::CAP_PTR, 1, false, 0);
    w.u8(pop::MSIX).u16(cfg::MSIX_ENABLE | cfg::MSIX_MASK);
    for v in 0..2u16 {
        table(&mut w, 16 * v, 4, 0xfee0_0000);
        table(&mut w, 16 * v + 4, 4, 0);
        table(&mut w, 16 * v + 8, 4, 0x40 + u64::from(v));
        table(&mut w, 16 * v + 12, 4, 0);
    }
    w.u8(pop::MSIX).u16(cfg::MSIX_ENABLE);
    for (off, len, val) in [
        (common::STATUS, 1, 0),
        (common::STATUS, 1, u64::from(ACKNOWLEDGE)),
        (common::STATUS, 1, u64::from(ACKNOWLEDGE | DRIVER)),
        (common::DFSELECT, 4, 1),
        (common::GFSELECT, 4, 1),
        (common::GF, 4, 1),
        (common::GFSELECT, 4, 0),
        (common::GF, 4, 1 << 28 | 1 << 29),
        (common::STATUS, 1, u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK)),
        (common::MSIX_CONFIG, 2, 1),
        (common::Q_SELECT, 2, 0),
        (common::Q_SIZE, 2, 128),
        (common::Q_DESC, 8, STD_DESC),
        (common::Q_DRIVER, 8, STD_AVAIL),
        (common::Q_DEVICE, 4, STD_USED),
        (common::Q_DEVICE + 4, 4, 0),
        (common::Q_MSIX, 2, 0),
        (common::Q_ENABLE, 2, 1),
        (common::STATUS, 1, u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)),
    ] {
        common_field(&mut w, off, len, true, val);
        if off == common::DFSELECT {
            common_field(&mut w, common::DF, 4, false, 0);
        }
    }
    common_field(&mut w, common::STATUS, 1, false, 0);
    w.u8(pop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 1, &[512]));
    w.u8(pop::DRIVER);
    put_kick_action(&mut w);
    w.u8(pop::BAR).u8(4).u8(0).u8(0);
    crate::pci::put_width(&mut w, 1);
    w.u8(0).u64(0);
    common_field(&mut w, common::STATUS, 1, true, 0);
    out.push(("linux_init_sequence", w.finish()));

    // The init macro with MSI-X, I/O, a function mask around a kick (the
    // vector goes pending, then is delivered), and the PBA.
    let mut w = Writer::new();
    w.u8(0);
    w.u8(pop::INIT).u64(F_EVENT_IDX | F_INDIRECT_DESC).u8(8).u8(4).u8(0).u8(1);
    w.u8(pop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_OUT, 3, &[1024]));
    w.u8(pop::DRIVER);
    put_kick_action(&mut w);
    w.u8(pop::MSIX).u16(cfg::MSIX_ENABLE | cfg::MSIX_MASK);
    w.u8(pop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 3, &[1024]));
    w.u8(pop::DRIVER);
    put_kick_action(&mut w);
    w.u8(pop::BAR).u8(3).u8(0).u8(3).u8(0).u64(0);
    w.u8(pop::MSIX).u16(cfg::MSIX_ENABLE);
    w.u8(pop::SERVE).u8(0);
    w.u8(pop::RESET);
    out.push(("init_macro_msix_io", w.finish()));

    // BAR moves: into the 32-bit window, over RAM, to 0, to all-ones, back
    // with decoding off, with I/O in between.
    let mut w = Writer::new();
    w.u8(0);
    w.u8(pop::INIT).u64(0).u8(4).u8(0).u8(0).u8(0);
    w.u8(pop::MOVE).u8(0).u32(0x10_0000).u8(0);
    w.u8(pop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 0, &[512]));
    w.u8(pop::DRIVER);
    put_kick_action(&mut w);
    w.u8(pop::MOVE).u8(2).u32(0x8000).u8(0);
    w.u8(pop::MOVE).u8(3).u8(0);
    w.u8(pop::MOVE).u8(4).u8(1);
    w.u8(pop::MOVE).u8(1).u32(0).u8(1);
    w.u8(pop::COMMAND).u16(0);
    w.u8(pop::COMMAND).u16(cfg::CMD_MEMORY | cfg::CMD_INTX_DISABLE);
    w.u8(pop::WINDOW).u8(3).u32(0x3000).u8(1).u64(0);
    w.u8(pop::SERVE).u8(0);
    out.push(("bar_moves", w.finish()));

    // Configuration space at every width through both mechanisms, writes to
    // read-only fields, CONFIG_ADDRESS at odd widths, the PCI_CFG window.
    let mut w = Writer::new();
    w.u8(1);
    for reg in (0u16..0x100).step_by(3) {
        for len in [1, 2, 4] {
            cf8(&mut w, reg, len, false, 0);
        }
        w.u8(pop::ECAM).u32(u32::from(crate::pci::DEV) << 15 | u32::from(reg));
        crate::pci::put_width(&mut w, 8);
        w.u8(0).u32(0);
    }
    cf8(&mut w, cfg::ID, 4, true, 0);
    cf8(&mut w, cfg::STATUS, 2, true, 0xffff);
    w.u8(pop::CF8).u8(0).u8(0).u16(0).u8(3).u8(3);
    crate::pci::put_width(&mut w, 1);
    w.u32(1);
    // The PCI_CFG window (last capability of ember's devices at 0x90):
    // BAR 0, num_queues, 2 bytes.
    cf8(&mut w, 0x94, 1, true, 0);
    cf8(&mut w, 0x98, 4, true, common::NUM_QUEUES as u32);
    cf8(&mut w, 0x9c, 4, true, 2);
    cf8(&mut w, 0xa0, 2, false, 0);
    w.u8(pop::ECAM).u32(u32::from(crate::pci::DEV) << 15 | 0xffe);
    crate::pci::put_width(&mut w, 4);
    w.u8(1).u32(u32::MAX);
    out.push(("config_widths", w.finish()));

    // Hostile MSI-X traffic: past the table, odd widths, the PBA, and
    // vectors that do not exist.
    let mut w = Writer::new();
    w.u8(0);
    w.u8(pop::INIT).u64(0).u8(4).u8(4).u8(0).u8(1);
    table(&mut w, 32, 4, 0xfee0_0000);
    table(&mut w, 0xff8, 8, u64::MAX);
    table(&mut w, 1, 4, u64::MAX);
    table(&mut w, 8, 1, 0x99);
    table(&mut w, 12, 2, 1);
    w.u8(pop::BAR).u8(3).u8(0).u8(2).u8(1).u64(u64::MAX);
    common_field(&mut w, common::MSIX_CONFIG, 2, true, 7);
    common_field(&mut w, common::Q_MSIX, 2, true, 0x8000);
    w.u8(pop::BAR).u8(1).u8(4).u8(1).u8(1).u64(1);
    w.u8(pop::BAR).u8(1).u8(2).u8(1).u8(1).u64(0);
    w.u8(pop::DRIVER);
    put_request_action(&mut w, &Request::simple(blk::T_IN, 0, &[512]));
    w.u8(pop::DRIVER);
    put_kick_action(&mut w);
    out.push(("msix_hostile", w.finish()));

    out
}

/// Seeds of `net_tx`.
pub fn net_tx() -> Vec<Seed> {
    const TX_FRAME: u8 = 0;
    const RX_CHAIN: u8 = 5;
    const HOST_FRAME: u8 = 7;
    const KICK_TX: u8 = 8;
    const KICK_RX: u8 = 9;
    const MRG_RXBUF: u64 = 1 << 15;
    let mut out = Vec::new();

    let tx_frame = |w: &mut Writer, flags: u8, lens: &[u32]| {
        w.u8(TX_FRAME).bytes(&[0; 12]).u8(flags);
        if flags & 2 != 0 {
            w.u8(5);
        }
        w.u8(lens.len() as u8);
        for &l in lens {
            virtio::put_seg_len(w, l);
            w.u8(0);
        }
    };

    let mut w = Writer::new();
    w.u64(u64::MAX).u8(8).u8(8).u8(0);
    tx_frame(&mut w, 0, &[60]);
    tx_frame(&mut w, 0, &[14, 1500]);
    w.u8(KICK_TX);
    out.push(("tx_basic", w.finish()));

    let mut w = Writer::new();
    w.u64(u64::MAX).u8(4).u8(4).u8(0);
    tx_frame(&mut w, 1, &[14, 100, 1000]);
    tx_frame(&mut w, 2, &[1514]);
    tx_frame(&mut w, 0, &[65536]);
    tx_frame(&mut w, 0, &[65536, 1]);
    tx_frame(&mut w, 0, &[13]);
    tx_frame(&mut w, 0, &[]);
    w.u8(KICK_TX);
    out.push(("tx_sizes_indirect_split", w.finish()));

    let mut w = Writer::new();
    w.u64(0).u8(8).u8(8).u8(0);
    w.u8(RX_CHAIN).u8(0).u8(0);
    virtio::put_seg_len(&mut w, 1526);
    w.u8(HOST_FRAME).u8(0).u8(0).u16(72);
    w.u8(KICK_RX);
    w.u8(HOST_FRAME).u8(1).u8(0).u16(1514 + 12);
    w.u8(RX_CHAIN).u8(1).u8(1);
    virtio::put_seg_len(&mut w, 12);
    virtio::put_seg_len(&mut w, 1514);
    w.u8(KICK_RX);
    out.push(("rx_basic", w.finish()));

    let mut w = Writer::new();
    w.u64(MRG_RXBUF | u64::MAX).u8(8).u8(8).u8(0);
    for _ in 0..4 {
        w.u8(RX_CHAIN).u8(0).u8(0);
        virtio::put_seg_len(&mut w, 1526);
    }
    w.u8(HOST_FRAME).u8(0).u8(0).u16(4000);
    w.u8(HOST_FRAME).u8(0).u8(1).u16(9000);
    w.u8(KICK_RX);
    tx_frame(&mut w, 0, &[60]);
    w.u8(KICK_TX);
    out.push(("rx_mergeable", w.finish()));

    out
}

/// Seeds of `net_race`: set-up operations in `net_tx`'s encoding, then the
/// race.
pub fn net_race() -> Vec<Seed> {
    const TX_FRAME: u8 = 0;
    const RX_CHAIN: u8 = 5;
    const KICK_TX: u8 = 8;
    const MRG_RXBUF: u64 = 1 << 15;
    const ALL_TX: u8 = 0;
    const ALL_RX: u8 = 0xff;
    let tx_frame = |w: &mut Writer, flags: u8, lens: &[u32]| {
        w.u8(TX_FRAME).bytes(&[0; 12]).u8(flags);
        w.u8(lens.len() as u8);
        for &l in lens {
            virtio::put_seg_len(w, l);
            w.u8(0);
        }
    };
    let rx_chain = |w: &mut Writer, flags: u8, lens: &[u32]| {
        w.u8(RX_CHAIN).u8(flags).u8(lens.len() as u8 - 1);
        for &l in lens {
            virtio::put_seg_len(w, l);
        }
    };
    // features, sizes, flags, setup, kicks, which, frames and their length,
    // then the hostile writes.
    let race =
        |features: u64, flags: u8, setup: &[u8], kicks: u8, which: u8, frames: (u8, u16), writes: &[(u64, &[u8])]| {
            let mut w = Writer::new();
            w.u64(features).u8(8).u8(8).u8(flags).blob16(setup);
            w.u8(kicks - 1).u8(which).u8(frames.0).u16(frames.1);
            for (at, bytes) in writes {
                put_addr(&mut w, *at);
                w.blob8(bytes);
            }
            w.finish()
        };
    let mut out = Vec::new();

    // Finding 1: a malformed first receive chain (device-readable), frames
    // waiting, the receive ring refilled without end.
    let mut setup = Writer::new();
    rx_chain(&mut setup, 2, &[1526]);
    out.push(("rx_refill_malformed", race(0, 2, &setup.finish(), 4, ALL_RX, (4, 100), &[])));

    // Good receive buffers republished without end, mergeable buffers.
    let mut setup = Writer::new();
    for _ in 0..4 {
        rx_chain(&mut setup, 0, &[1526]);
    }
    out.push(("rx_refill_good", race(MRG_RXBUF | u64::MAX, 2, &setup.finish(), 4, ALL_RX, (7, 9000), &[])));

    // A good frame transmitted over and over: the transmit ring refilled.
    let mut setup = Writer::new();
    tx_frame(&mut setup, 0, &[60]);
    setup.u8(KICK_TX);
    out.push(("tx_refill_good", race(u64::MAX, 1, &setup.finish(), 8, ALL_TX, (0, 0), &[])));

    // A 64 KiB frame through an indirect table, its header flipped under
    // the device (checksum and GSO flags it did not negotiate), the first
    // receive descriptor turned device-readable under it, both rings
    // refilled, notifications alternating.
    let mut setup = Writer::new();
    tx_frame(&mut setup, 1, &[14, 65000, 522]);
    rx_chain(&mut setup, 0, &[1526]);
    let header = crate::net::TX_AREA.0;
    let rx_desc0_flags = crate::net::RX_RINGS.0 + 12;
    out.push((
        "tx_rx_header_flip",
        race(0, 3, &setup.finish(), 8, 0b1010_1010, (2, 1514), &[(header, &[1, 4, 0, 0]), (rx_desc0_flags, &[0, 0])]),
    ));

    out
}

/// A minimal x86-64 ELF executable: one PT_LOAD of `code.len()` bytes at
/// `paddr`, and a PVH entry note when `pvh` is set.
pub fn tiny_elf(paddr: u64, code: &[u8], pvh: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let data_off = 64 + 56 * u64::from(phnum);
    let note_off = data_off + code.len() as u64;
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    let phdr = |ty: u32, off: u64, addr: u64, size: u64| {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&ty.to_le_bytes());
        p[4..8].copy_from_slice(&7u32.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    b.extend(phdr(1, data_off, paddr, code.len() as u64));
    if pvh.is_some() {
        b.extend(phdr(4, note_off, paddr + code.len() as u64, 20));
    }
    b.extend_from_slice(code);
    if let Some(entry) = pvh {
        // namesz 4, descsz 4, type XEN_ELFNOTE_PHYS32_ENTRY (18), "Xen\0".
        for v in [4u32, 4, 18] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"Xen\0");
        b.extend_from_slice(&entry.to_le_bytes());
    }
    b
}

/// A minimal bzImage: one setup sector after the boot sector, a 64-bit
/// capable protocol 2.15 header, and `payload` as the protected-mode part.
pub fn tiny_bzimage(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1f1] = 1; // setup_sects
    b[0x1f4..0x1f8].copy_from_slice(&(payload.len() as u32 / 16).to_le_bytes()); // syssize
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes()); // boot_flag
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    b[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    b[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    b.extend_from_slice(payload);
    b
}

/// Seeds of `kernel_image`; `hello` is a built test guest, if available.
pub fn kernel_image(hello: Option<&[u8]>) -> Vec<Seed> {
    // selector: protocol (bits 0-1), boot structures (bit 2), initrd size
    // (bits 3-5), command line length (bits 6-7).
    let sel = |proto: u8, structures: bool, initrd: u8, cmdline: u8| {
        proto | u8::from(structures) << 2 | initrd << 3 | cmdline << 6
    };
    let with = |s: u8, img: &[u8]| {
        let mut v = vec![s];
        v.extend_from_slice(img);
        v
    };
    let hlt = [0xf4u8; 16];
    let mut out = vec![
        ("elf_linux64", with(sel(1, true, 2, 1), &tiny_elf(0x10_0000, &hlt, None))),
        ("elf_pvh_note", with(sel(2, true, 3, 2), &tiny_elf(0x10_0000, &hlt, Some(0x10_0000)))),
        ("elf_below_himem", with(sel(0, false, 0, 0), &tiny_elf(0x1000, &hlt, None))),
        ("bzimage", with(sel(0, true, 4, 2), &tiny_bzimage(&[0x90; 512]))),
        ("bzimage_pvh_refused", with(sel(2, false, 0, 0), &tiny_bzimage(&[0x90; 512]))),
        ("not_a_kernel", with(0, b"#!/bin/sh\necho hi\n")),
    ];
    if let Some(h) = hello {
        out.push(("hello_guest", with(sel(0, true, 1, 1), h)));
        out.push(("hello_guest_linux64", with(sel(1, true, 5, 3), h)));
    }
    out
}

/// Seeds of `cli_parsers`.
pub fn cli_parsers() -> Vec<Seed> {
    let texts: &[(&str, &str)] = &[
        ("size_mib", "512M"),
        ("size_plain", "128"),
        ("size_gib_suffix", " 64GiB "),
        ("size_kb", "4096kb"),
        ("size_tb", "1T"),
        ("size_zero", "0"),
        ("duration_s", "90s"),
        ("duration_ms", "500ms"),
        ("duration_frac", "1.5m"),
        ("mac", "02:00:00:00:00:01"),
        ("disk", "path=/x.img,readonly=on,id=abc"),
        ("disk_short", "path=/x=y.img,ro=1,serial=12345678901234567890"),
        ("net", "tap=tap0,mac=02:00:00:00:00:01"),
        ("serial", "file=/tmp/console.log"),
        ("boot", "pvh"),
        ("argv_help", "run\0--help"),
    ];
    let argvs: &[(&str, &[&str])] = &[
        (
            "argv_run",
            &[
                "run",
                "--kernel",
                "/k",
                "--memory",
                "512M",
                "--cpus",
                "2",
                "--disk",
                "path=/d.img,ro=on",
                "--net",
                "tap=tap0",
                "--serial",
                "none",
                "--boot",
                "linux64",
                "--log-level",
                "debug",
            ],
        ),
        (
            "argv_smoke",
            &[
                "smoke",
                "--kernel",
                "/k",
                "--timeout",
                "3m",
                "--expect",
                "Linux version",
                "--quiet",
                "--",
                "sh",
                "-c",
                "echo 'it''s' \"$x\"; exit 3",
            ],
        ),
    ];
    let mut out: Vec<Seed> = texts.iter().map(|&(n, t)| (n, t.as_bytes().to_vec())).collect();
    out.extend(argvs.iter().map(|&(n, a)| (n, a.join("\0").into_bytes())));
    out
}

/// Seeds of `cpio_roundtrip`.
pub fn cpio_roundtrip() -> Vec<Seed> {
    let name = |w: &mut Writer, n: &str| {
        w.blob8(n.as_bytes());
    };
    let mut w = Writer::new();
    w.u8(0);
    name(&mut w, "bin");
    w.u32(0o755);
    w.u8(1);
    name(&mut w, "bin/busybox");
    w.u32(0o755).blob16(b"\x7fELF\x02\x01\x01");
    w.u8(2);
    name(&mut w, "bin/sh");
    w.blob8(b"busybox");
    w.u8(0);
    name(&mut w, "dev");
    w.u32(0o40755);
    w.u8(3);
    name(&mut w, "dev/console");
    w.u32(0o600).u32(5).u32(1);
    w.u8(1);
    name(&mut w, "init");
    w.u32(0o100755).blob16(b"#!/bin/sh\nexec sh\n");
    w.u8(1);
    name(&mut w, "empty");
    w.u32(0o644).blob16(b"");
    w.u8(4).u8(2);
    let initramfs = w.finish();

    let mut w = Writer::new();
    for bad in ["", "/abs", "a/../b", "a//b", "trailing/", "nul\0", "TRAILER!!!", "..", "ok"] {
        w.u8(1);
        name(&mut w, bad);
        w.u32(0o644).blob16(b"x");
    }
    w.u8(0);
    w.u8(255).u8(5).u32(0o755);
    w.u8(1);
    name(&mut w, "ok");
    w.u32(0).blob16(b"");
    let bad_names = w.finish();

    let mut w = Writer::new();
    for a in ["bin/sh", "/usr/bin/ls", "sbin/reboot", "bin/", "usr/bin/x y", "bin/busybox"] {
        w.u8(5);
        name(&mut w, a);
    }
    w.u8(3);
    name(&mut w, "dev/null");
    w.u32(0o666).u32(1).u32(3);
    let applets = w.finish();

    vec![("initramfs_like", initramfs), ("bad_names", bad_names), ("applets", applets)]
}

/// Seeds of `legacy_pio`.
pub fn legacy_pio() -> Vec<Seed> {
    // (opcode 0) write port, width selector (0: 1 byte, 1: 2, 2: 4), value
    let write = |w: &mut Writer, port: u16, width: u8, v: u32| {
        w.u8(0).u16(port).u8(width).u32(v);
    };
    let read = |w: &mut Writer, port: u16, width: u8| {
        w.u8(1).u16(port).u8(width);
    };
    let mut out = Vec::new();

    // Linux's 8250 set-up, some output, then input from the host.
    let mut w = Writer::new();
    for (port, v) in [(0x3fb, 0x80), (0x3f8, 1), (0x3f9, 0), (0x3fb, 0x03), (0x3fa, 0xc7), (0x3fc, 0x0b), (0x3f9, 1)] {
        write(&mut w, port, 0, v);
    }
    for b in b"hi\n" {
        read(&mut w, 0x3fd, 0);
        write(&mut w, 0x3f8, 0, u32::from(*b));
    }
    read(&mut w, 0x3fa, 0);
    w.u8(2).blob8(b"abc\r");
    for _ in 0..5 {
        read(&mut w, 0x3fd, 0);
        read(&mut w, 0x3f8, 0);
    }
    write(&mut w, 0x3fc, 0, 0x10); // loopback
    write(&mut w, 0x3f8, 0, 0x41);
    read(&mut w, 0x3f8, 0);
    out.push(("uart_init_io_loopback", w.finish()));

    // The RTC: time registers, status registers, CMOS RAM.
    let mut w = Writer::new();
    for idx in [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0a, 0x0b, 0x0c, 0x0d] {
        write(&mut w, 0x70, 0, idx);
        read(&mut w, 0x71, 0);
    }
    write(&mut w, 0x70, 0, 0x80 | 0x40);
    write(&mut w, 0x71, 0, 0x55);
    read(&mut w, 0x70, 0);
    read(&mut w, 0x71, 1);
    out.push(("rtc", w.finish()));

    // The i8042 (read the command byte, then reset) and the debug-exit port.
    let mut w = Writer::new();
    write(&mut w, 0x64, 0, 0x20);
    read(&mut w, 0x64, 0);
    read(&mut w, 0x60, 0);
    write(&mut w, 0x64, 0, 0x60);
    write(&mut w, 0x60, 0, 0x47);
    write(&mut w, 0x64, 0, 0xfe);
    write(&mut w, 0xf4, 0, 0x21);
    write(&mut w, 0xf6, 2, 0x1234_5601);
    w.u8(3).u8(9).u8(0xfe);
    out.push(("i8042_reset_debug_exit", w.finish()));

    // What a booting Linux probes.
    let mut w = Writer::new();
    for (port, width) in
        [(0x80, 0), (0xcf8, 2), (0xcfc, 2), (0x2f8, 0), (0x3e8, 0), (0x378, 0), (0x1234, 1), (0xffff, 2)]
    {
        read(&mut w, port, width);
        write(&mut w, port, width, 0xffff_ffff);
    }
    out.push(("probed_ports", w.finish()));

    out
}

/// Seeds of `p9_server`: valid sessions (Linux's order of requests) and
/// the hostile walks of the unit tests.
pub fn p9_server() -> Vec<Seed> {
    use crate::p9::Session;
    use ember_devices::virtio::p9::wire::msg;
    let mut out = Vec::new();

    let mut s = Session::new(true, 2);
    s.version(65536).attach(0).walk(0, 1, &[b"file"]).on_fid(msg::TGETATTR, 1).lopen(1, 0);
    s.read(msg::TREAD, 1, 0, 4096).read(msg::TREAD, 1, 1000, 100_000).clunk(1);
    s.walk(0, 2, &[b"sub"]).lopen(2, 0o200000).read(msg::TREADDIR, 2, 0, 8192).clunk(2).on_fid(msg::TSTATFS, 0);
    out.push(("ro_read_session", s.finish()));

    let mut s = Session::new(false, 2);
    s.version(512 * 1024).attach(0).walk(0, 1, &[]).lcreate(1, b"new", 2, 0o644);
    s.write(1, 0, b"hello").write(1, 1 << 20, b"sparse").read(msg::TREAD, 1, 0, 100).clunk(1);
    s.walk(0, 2, &[]).mknod(2, b"fifo", 0o10644, 0, 0).renameat(0, b"new", 0, b"new2");
    s.walk(0, 3, &[b"new2"]).link(0, 3, b"new").on_fid(msg::TREMOVE, 3);
    out.push(("rw_session", s.finish()));

    let mut s = Session::new(false, 1);
    s.version(8192).attach(0).walk(0, 1, &[b"..", b"..", b"outside", b"canary"]);
    s.walk(0, 2, &[b"abs"]).lopen(2, 2).on_fid(msg::TREADLINK, 2).link(0, 2, b"new");
    s.walk(0, 3, &[b"dirlink", b"canary"]).walk(0, 4, &[b"../outside"]).walk(0, 5, &[b"slash", b"etc", b"passwd"]);
    s.symlink(0, b"new2", b"../outside").walk(0, 6, &[b"new2", b"canary"]).lcreate(0, b"rel", 0o1002, 0o644);
    s.mknod(0, b"fifo", 0o20666, 1, 3);
    out.push(("hostile_walks", s.finish()));

    let mut s = Session::new(false, 0);
    s.version(4096).attach(0).attach(0).clunk(7).clunk(0).clunk(0);
    s.raw(&[3, 0, 0, 0, 120, 1, 0]).raw(&[0xff, 0xff, 0xff, 0xff, 110, 1, 0, 0, 0]).raw(&[1, 2]);
    out.push(("bad_fids_and_frames", s.finish()));
    out
}

/// A wire-mode `api_http` input: `chunks` arrive one after another, each
/// followed by the peer reading the answers.
fn api_wire(small: bool, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![if small { 4 } else { 0 }];
    for c in chunks {
        for piece in c.chunks(253) {
            out.push(piece.len() as u8 + 2);
            out.extend_from_slice(piece);
        }
        out.push(0);
    }
    out
}

/// A request-mode `api_http` input: (route index, body) pairs.
fn api_requests(fail_start: bool, reqs: &[(u8, &str)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(if fail_start { 3 } else { 1 });
    for (route, body) in reqs {
        w.u8(*route).u16(body.len() as u16);
        for b in body.bytes() {
            w.u8(b);
        }
    }
    w.finish()
}

/// An HTTP/1.1 request with a JSON body.
fn http(method: &str, path: &str, body: &str) -> Vec<u8> {
    if body.is_empty() {
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    } else {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Seeds of `api_http`: the requests firecracker-python sends for a whole
/// VM life, curl-style requests, pipelining, and each refusal.
pub fn api_http() -> Vec<Seed> {
    let session = [
        http("GET", "/", ""),
        http(
            "PUT",
            "/logger",
            r#"{"log_path": "/tmp/fc.log", "level": "Debug", "show_level": true, "show_log_origin": false}"#,
        ),
        http(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/images/vmlinux", "boot_args": "console=ttyS0 reboot=k pci=off panic=1"}"#,
        ),
        http(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/images/rootfs.ext4", "is_root_device": true, "is_read_only": false}"#,
        ),
        http("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
        http(
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#,
        ),
        http("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        http("PATCH", "/vm", r#"{"state": "Paused"}"#),
        http("GET", "/", ""),
        http("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        http("GET", "/vm/config", ""),
        http("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
    ];
    let session: Vec<&[u8]> = session.iter().map(Vec::as_slice).collect();
    let pipelined = [
        http("GET", "/version", ""),
        http("PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#),
        http("GET", "/machine-config", ""),
    ]
    .concat();
    let mut out = vec![
        ("wire_session", api_wire(false, &session)),
        ("wire_session_small", api_wire(true, &session)),
        ("wire_pipelined", api_wire(false, &[&pipelined])),
        ("wire_bytewise", {
            let req = http("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128}"#);
            let bytes: Vec<&[u8]> = req.chunks(1).collect();
            api_wire(false, &bytes)
        }),
        (
            "wire_continue",
            api_wire(
                false,
                &[
                    b"PUT /boot-source HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 29\r\n\r\n",
                    br#"{"kernel_image_path": "/k"} "#,
                ],
            ),
        ),
        (
            "wire_chunked",
            api_wire(false, &[b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"]),
        ),
        ("wire_close", api_wire(false, &[b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n"])),
        ("wire_too_big", api_wire(true, &[b"PUT /logger HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"])),
        ("wire_garbage", api_wire(false, &[b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"])),
        (
            "wire_methods",
            api_wire(
                false,
                &[&[
                    http("POST", "/actions", "{}"),
                    http("DELETE", "/drives/x", ""),
                    http("HEAD", "/", ""),
                    http("GET", "/balloon", ""),
                ]
                .concat()],
            ),
        ),
    ];
    out.push((
        "req_lifecycle",
        api_requests(
            false,
            &[
                (3, r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false, "huge_pages": "None"}"#),
                (5, r#"{"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "console=ttyS0"}"#),
                (6, r#"{"drive_id": "rootfs", "partuuid": null, "is_root_device": true, "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r.img", "io_engine": "Sync", "rate_limiter": null, "socket": null}"#),
                (7, r#"{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true}"#),
                (8, r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}"#),
                (11, r#"{"serial_out_path": "/tmp/serial.log"}"#),
                (4, r#"{"ember": {"debug_exit": true, "boot_protocol": "pvh", "transport": "mmio", "seccomp": "log", "serial": "none"}}"#),
                (14, ""),
                (12, r#"{"action_type": "InstanceStart"}"#),
                (13, r#"{"state": "Paused"}"#),
                (13, r#"{"state": "Resumed"}"#),
                (12, r#"{"action_type": "FlushMetrics"}"#),
                (12, r#"{"action_type": "SendCtrlAltDel"}"#),
                (3, r#"{"vcpu_count": 1, "mem_size_mib": 128}"#),
            ],
        ),
    ));
    out.push((
        "req_refusals",
        api_requests(
            true,
            &[
                (3, r#"{"vcpu_count": 0, "mem_size_mib": 128}"#),
                (3, r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M", "cpu_template": "T2"}"#),
                (6, r#"{"drive_id": "other", "path_on_host": "/r.img", "is_root_device": true}"#),
                (6, r#"{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "io_engine": "Async", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#),
                (9, r#"{"iface_id": "eth1", "host_dev_name": "tap0", "mtu": 1500}"#),
                (10, r#"{"level": "Loud"}"#),
                (13, r#"{"state": "Paused"}"#),
                (12, r#"{"action_type": "InstanceStart"}"#),
                (5, r#"{"kernel_image_path": "/k"}"#),
                (12, r#"{"action_type": "InstanceStart"}"#),
                (12, r#"{"action_type": "InstanceStart"}"#),
                (19, "{}"),
                (15, ""),
            ],
        ),
    ));
    out.push((
        "req_config_file",
        api_requests(
            false,
            &[(
                21,
                r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": null},
                    "drives": [{"drive_id": "rootfs", "is_root_device": true, "path_on_host": "/r", "is_read_only": false}],
                    "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "ember": {"serial": "stdio"}},
                    "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
                    "cpu-config": null, "balloon": null, "vsock": null, "logger": null, "metrics": null,
                    "mmds-config": null, "entropy": null, "pmem": [], "memory-hotplug": null}"#,
            )],
        ),
    ));
    out
}

/// Seeds of `snapshot_state`: state payloads of 1 and 2 vCPUs (framed by
/// the target, mode 1) and a whole framed file (mode 0).
pub fn snapshot_state() -> Vec<Seed> {
    use ember::fuzzing::snapshot;
    let framed = |p: Vec<u8>| [&[1u8][..], &p].concat();
    vec![
        ("payload_1cpu", framed(snapshot::sample_payload(1, 4))),
        ("payload_2cpu", framed(snapshot::sample_payload(2, 1))),
        ("file_1cpu", [&[0u8][..], &snapshot::encode(&snapshot::sample_payload(1, 2))].concat()),
    ]
}
