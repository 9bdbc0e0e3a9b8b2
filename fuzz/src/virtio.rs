//! The driver side of virtio-mmio and split virtqueues, as much as the
//! device targets need: register access, device initialisation, rings in
//! guest memory and a virtio-blk request builder driven by fuzzer bytes.
//!
//! Register offsets and bits are written out from the virtio 1.x
//! specification (§4.2.2, §2.7, §5.2) rather than taken from the code under
//! test.

use ember_devices::bus::BusDevice;
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{GuardedMemory, LOW_END, RAM_END, SEAM};
use crate::image::SECTORS;
use crate::input::{Reader, Writer};

/// virtio-mmio register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;

    /// Every register, for the fuzzer to pick from (plus a few legacy
    /// offsets a version-1 driver would use).
    pub const ALL: [u64; 33] = [
        MAGIC,
        VERSION,
        DEVICE_ID,
        VENDOR_ID,
        DEVICE_FEATURES,
        DEVICE_FEATURES_SEL,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SEL,
        QUEUE_SEL,
        QUEUE_NUM_MAX,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_STATUS,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC_LOW,
        QUEUE_DESC_HIGH,
        QUEUE_AVAIL_LOW,
        QUEUE_AVAIL_HIGH,
        QUEUE_USED_LOW,
        QUEUE_USED_HIGH,
        SHM_SEL,
        SHM_LEN_LOW,
        SHM_LEN_HIGH,
        SHM_BASE_LOW,
        SHM_BASE_HIGH,
        CONFIG_GENERATION,
        CONFIG,
        0x028, // legacy GuestPageSize
        0x03c, // legacy QueueAlign
        0x040, // legacy QueuePFN
        0x108, // blk config: capacity high / size_max
    ];
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
/// Device-writable buffer.
pub const DESC_WRITE: u16 = 2;
/// The buffer is an indirect descriptor table.
pub const DESC_INDIRECT: u16 = 4;

/// virtio-blk request types.
pub mod blk {
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const T_GET_ID: u32 = 8;
    pub const T_DISCARD: u32 = 11;
    pub const T_WRITE_ZEROES: u32 = 13;
    pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
    /// The device ID of a block device.
    pub const DEVICE_ID: u32 = 2;
}

/// "virt".
pub const MAGIC_VALUE: u32 = 0x7472_6976;

/// Reads a 32-bit register.
pub fn r32(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes a 32-bit register.
pub fn w32(dev: &mut dyn BusDevice, offset: u64, val: u32) {
    dev.write(offset, &val.to_le_bytes());
}

/// Where one split virtqueue lives in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rings {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

/// The standard ring layout of the targets: rings in the first pages of
/// region A, buffers above them.
pub const STD_DESC: u64 = 0x1000;
/// See [`STD_DESC`].
pub const STD_AVAIL: u64 = 0x2000;
/// See [`STD_DESC`].
pub const STD_USED: u64 = 0x3000;
/// Start of the area buffers are allocated from.
pub const DATA_BASE: u64 = 0x4000;
/// End of that area (it spans the seam between regions A and B).
pub const DATA_END: u64 = 0xf_0000;

impl Rings {
    /// The standard layout with `size` entries.
    pub fn standard(size: u16) -> Self {
        Rings { desc: STD_DESC, avail: STD_AVAIL, used: STD_USED, size }
    }
}

/// The driver's part of device initialisation up to `FEATURES_OK`
/// (§3.1.1): reset, ACKNOWLEDGE, DRIVER, then accept the offered features
/// in `wanted` plus `VIRTIO_F_VERSION_1`. Returns whether the device took
/// `FEATURES_OK`.
pub fn negotiate(dev: &mut dyn BusDevice, wanted: u64) -> bool {
    use status::*;
    w32(dev, reg::STATUS, 0);
    w32(dev, reg::STATUS, ACKNOWLEDGE);
    w32(dev, reg::STATUS, ACKNOWLEDGE | DRIVER);
    w32(dev, reg::DEVICE_FEATURES_SEL, 0);
    let lo = r32(dev, reg::DEVICE_FEATURES);
    w32(dev, reg::DEVICE_FEATURES_SEL, 1);
    let hi = r32(dev, reg::DEVICE_FEATURES);
    let offered = u64::from(lo) | u64::from(hi) << 32;
    let acked = (offered & wanted) | F_VERSION_1;
    w32(dev, reg::DRIVER_FEATURES_SEL, 0);
    w32(dev, reg::DRIVER_FEATURES, acked as u32);
    w32(dev, reg::DRIVER_FEATURES_SEL, 1);
    w32(dev, reg::DRIVER_FEATURES, (acked >> 32) as u32);
    w32(dev, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    r32(dev, reg::STATUS) & FEATURES_OK != 0
}

/// Configures queue `idx` on `rings`; `ready` writes `QueueReady = 1`.
pub fn setup_queue(dev: &mut dyn BusDevice, idx: u32, rings: &Rings, ready: bool) {
    w32(dev, reg::QUEUE_SEL, idx);
    w32(dev, reg::QUEUE_NUM, u32::from(rings.size));
    w32(dev, reg::QUEUE_DESC_LOW, rings.desc as u32);
    w32(dev, reg::QUEUE_DESC_HIGH, (rings.desc >> 32) as u32);
    w32(dev, reg::QUEUE_AVAIL_LOW, rings.avail as u32);
    w32(dev, reg::QUEUE_AVAIL_HIGH, (rings.avail >> 32) as u32);
    w32(dev, reg::QUEUE_USED_LOW, rings.used as u32);
    w32(dev, reg::QUEUE_USED_HIGH, (rings.used >> 32) as u32);
    if ready {
        w32(dev, reg::QUEUE_READY, 1);
    }
}

/// Sets `DRIVER_OK` (after `FEATURES_OK`).
pub fn driver_ok(dev: &mut dyn BusDevice) {
    use status::*;
    w32(dev, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
}

/// Whether `s` is a status the transport may hold: the driver's bits form
/// a prefix of ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (§3.1.1), plus
/// any of FAILED and DEVICE_NEEDS_RESET.
pub fn status_is_valid(s: u32) -> bool {
    use status::*;
    let driver_bits = s & !(FAILED | NEEDS_RESET);
    let prefixes = [
        0,
        ACKNOWLEDGE,
        ACKNOWLEDGE | DRIVER,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ];
    prefixes.contains(&driver_bits)
}

/// A guest address chosen by the fuzzer. The encoding favours addresses
/// that matter: the buffer area, around the seam between the two adjacent
/// regions, the rings, just below the end of each region or of the address
/// space, the hole, past the end of memory, and anything at all.
pub fn addr(r: &mut Reader) -> u64 {
    match r.u8() % 6 {
        0 => DATA_BASE + u64::from(r.u32()) % (DATA_END - DATA_BASE),
        1 => SEAM.wrapping_add(r.u16() as i16 as i64 as u64),
        2 => u64::from(r.u16()),
        3 => {
            // Just below the end of a region, or of the address space.
            let end = [SEAM, LOW_END, RAM_END, 0][usize::from(r.u8() % 4)];
            end.wrapping_sub(u64::from(r.u8()))
        }
        4 => u64::from(r.u32()) % (2 * RAM_END),
        _ => r.u64(),
    }
}

/// Encodes `a` for [`addr`] (as a "low" address if it fits in 16 bits, or
/// a buffer-area one when it lies there, else as a wild one).
pub fn put_addr(w: &mut Writer, a: u64) {
    if a < 0x1_0000 {
        w.u8(2).u16(a as u16);
    } else if (DATA_BASE..DATA_END).contains(&a) {
        w.u8(0).u32((a - DATA_BASE) as u32);
    } else {
        w.u8(5).u64(a);
    }
}

/// A sector number: inside the image, in its last sectors, just past it,
/// or any.
fn read_sector(r: &mut Reader) -> u64 {
    match r.u8() % 4 {
        0 => u64::from(r.u8()) % SECTORS,
        1 => SECTORS - 1 - u64::from(r.u8() % 8),
        2 => SECTORS + u64::from(r.u8()),
        _ => r.u64(),
    }
}

fn put_sector(w: &mut Writer, s: u64) {
    if s < SECTORS {
        w.u8(0).u8(s as u8);
    } else {
        w.u8(3).u64(s);
    }
}

/// A buffer length: whole sectors (small or up to the image size), any
/// 16-bit length, or any 32-bit length.
pub fn seg_len(r: &mut Reader) -> u32 {
    match r.u8() % 4 {
        0 => 512 * u32::from(r.u8() % 9),
        1 => 512 * (u32::from(r.u8()) % (SECTORS as u32 + 1)),
        2 => u32::from(r.u16()),
        _ => r.u32(),
    }
}

pub fn put_seg_len(w: &mut Writer, len: u32) {
    if len.is_multiple_of(512) && len / 512 <= 8 {
        w.u8(0).u8((len / 512) as u8);
    } else if len <= 0xffff {
        w.u8(2).u16(len as u16);
    } else {
        w.u8(3).u32(len);
    }
}

/// The driver side of one split virtqueue in guest memory.
///
/// Ring writes that fall outside guest memory are dropped: the fuzzer may
/// point the rings anywhere.
pub struct Driver<'m> {
    mem: &'m GuardedMemory,
    /// The rings.
    pub rings: Rings,
    avail_idx: u16,
    next_desc: u16,
    area: (u64, u64),
    bump: u64,
}

/// What an action asks the target to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing; go on decoding.
    Continue,
    /// Notify the queue (the driver's kick).
    Kick,
}

/// Action opcodes of [`Driver::action`] (the opcode byte modulo
/// [`ACTIONS`]).
pub mod op {
    pub const REQUEST: u8 = 0;
    pub const RAW_DESC: u8 = 3;
    pub const PUBLISH: u8 = 4;
    pub const AVAIL_IDX: u8 = 5;
    pub const USED_EVENT: u8 = 6;
    pub const POKE: u8 = 7;
    pub const KICK: u8 = 8;
}
/// Number of action opcodes (0..=2 are all requests).
pub const ACTIONS: u8 = 9;

impl<'m> Driver<'m> {
    /// A driver for `rings` in `mem`, which must be zeroed, allocating
    /// buffers from `[DATA_BASE, DATA_END)`.
    pub fn new(mem: &'m GuardedMemory, rings: Rings) -> Self {
        Self::with_area(mem, rings, DATA_BASE, DATA_END)
    }

    /// A driver allocating buffers from `[start, end)`.
    pub fn with_area(mem: &'m GuardedMemory, rings: Rings, start: u64, end: u64) -> Self {
        Driver { mem, rings, avail_idx: 0, next_desc: 0, area: (start, end), bump: start }
    }

    fn write_u16(&self, val: u16, at: u64) {
        self.poke(at, &val.to_le_bytes());
    }

    /// Writes raw bytes at `at` (as far as guest memory goes).
    pub fn poke(&self, at: u64, bytes: &[u8]) {
        self.mem.write(at, bytes);
    }

    /// Writes descriptor `idx` of the main table (modulo its size).
    pub fn set_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let idx = idx % self.rings.size.max(1);
        let at = self.rings.desc.wrapping_add(16 * u64::from(idx));
        self.put_desc(at, addr, len, flags, next);
    }

    fn put_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.poke(at, &d);
    }

    /// Puts `head` in the next available ring slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail_idx % self.rings.size.max(1);
        self.write_u16(head, self.rings.avail.wrapping_add(4 + 2 * u64::from(slot)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write_u16(self.avail_idx, self.rings.avail.wrapping_add(2));
    }

    /// Overwrites the available ring index.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.write_u16(idx, self.rings.avail.wrapping_add(2));
    }

    /// Sets `used_event` (event index suppression).
    pub fn set_used_event(&self, val: u16) {
        let at = self.rings.avail.wrapping_add(4 + 2 * u64::from(self.rings.size));
        self.write_u16(val, at);
    }

    /// The used ring index the device last wrote.
    pub fn used_idx(&self) -> u16 {
        self.mem.mem().read_obj(GuestAddress(self.rings.used.wrapping_add(2))).unwrap_or(0)
    }

    /// Allocates `len` bytes (16-byte aligned) from the buffer area,
    /// wrapping around when it is used up. Oversized buffers are placed but
    /// run past the area (and possibly past guest memory).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let (start, end) = self.area;
        let len = len.min(end - start);
        if self.bump + len > end {
            self.bump = start;
        }
        let at = self.bump;
        self.bump = (self.bump + len + 15) & !15;
        at
    }

    /// Decodes and performs one action.
    pub fn action(&mut self, r: &mut Reader) -> Step {
        match r.u8() % ACTIONS {
            0..=2 => self.request(r),
            op::RAW_DESC => {
                let idx = r.u16();
                let a = addr(r);
                let (len, flags, next) = (r.u32(), r.u16(), r.u16());
                self.set_desc(idx, a, len, flags, next);
            }
            op::PUBLISH => {
                let head = r.u16();
                self.publish(head);
            }
            op::AVAIL_IDX => {
                let idx = r.u16();
                self.set_avail_idx(idx);
            }
            op::USED_EVENT => {
                let v = r.u16();
                self.set_used_event(v);
            }
            op::POKE => {
                let at = addr(r);
                let bytes = r.blob8();
                self.poke(at, bytes);
            }
            _ => return Step::Kick,
        }
        Step::Continue
    }

    /// Decodes one virtio-blk request (see [`Request`]), lays it out in
    /// guest memory and publishes it.
    pub fn request(&mut self, r: &mut Reader) {
        let req = Request::decode(r);
        self.build(&req);
    }

    /// Lays out `req` and publishes its head.
    pub fn build(&mut self, req: &Request) {
        // (address, length, device-writable)
        let mut descs: Vec<(u64, u32, bool)> = Vec::with_capacity(8);

        let hdr = req.header_addr.unwrap_or_else(|| self.alloc(16));
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req.kind.to_le_bytes());
        h[8..16].copy_from_slice(&req.sector.to_le_bytes());
        self.poke(hdr, &h);
        match req.split_header {
            Some(at) if (1..16).contains(&at) => {
                descs.push((hdr, u32::from(at), false));
                descs.push((hdr.wrapping_add(u64::from(at)), 16 - u32::from(at), false));
            }
            _ => descs.push((hdr, 16, false)),
        }

        if let Some((sector, num, flags)) = req.segment {
            let at = self.alloc(16);
            let mut s = [0u8; 16];
            s[0..8].copy_from_slice(&sector.to_le_bytes());
            s[8..12].copy_from_slice(&num.to_le_bytes());
            s[12..16].copy_from_slice(&flags.to_le_bytes());
            self.poke(at, &s);
            descs.push((at, 16, false));
        }

        let natural_write = matches!(req.kind, blk::T_IN | blk::T_GET_ID);
        for seg in &req.data {
            let write = seg.write.unwrap_or(natural_write);
            let at = seg.addr.unwrap_or_else(|| self.alloc(u64::from(seg.len)));
            descs.push((at, seg.len, write));
        }

        match req.status {
            StatusDesc::Separate => {
                let at = self.alloc(1);
                descs.push((at, 1, true));
            }
            StatusDesc::InLastData => {}
            StatusDesc::Missing => {}
            StatusDesc::ReadOnly => {
                let at = self.alloc(1);
                descs.push((at, 1, false));
            }
        }
        if req.status == StatusDesc::Missing {
            // Drop the last device-writable descriptor, if any: no room
            // for the status byte.
            if let Some(pos) = descs.iter().rposition(|d| d.2) {
                descs.remove(pos);
            }
        }

        let head = self.chain(&descs, req.indirect, req.indirect_table);
        self.publish(head);
    }

    /// Writes a chain of `descs` (address, length, device-writable) at the
    /// next free descriptors of the main table (wrapping around it), or in
    /// an indirect table (at `table`, or allocated) referenced by one
    /// descriptor; returns the head. The chain is not published.
    pub fn chain(&mut self, descs: &[(u64, u32, bool)], indirect: bool, table: Option<u64>) -> u16 {
        let n = descs.len();
        let size = self.rings.size.max(1);
        let head = self.next_desc % size;
        if indirect {
            let table = table.unwrap_or_else(|| self.alloc(16 * n as u64));
            for (i, &(a, len, write)) in descs.iter().enumerate() {
                let mut flags = if write { DESC_WRITE } else { 0 };
                if i + 1 < n {
                    flags |= DESC_NEXT;
                }
                self.put_desc(table.wrapping_add(16 * i as u64), a, len, flags, i as u16 + 1);
            }
            self.set_desc(head, table, 16 * n as u32, DESC_INDIRECT, 0);
            self.next_desc = (head + 1) % size;
        } else {
            for (i, &(a, len, write)) in descs.iter().enumerate() {
                let idx = ((usize::from(head) + i) % usize::from(size)) as u16;
                let mut flags = if write { DESC_WRITE } else { 0 };
                if i + 1 < n {
                    flags |= DESC_NEXT;
                }
                self.set_desc(idx, a, len, flags, (idx + 1) % size);
            }
            self.next_desc = ((usize::from(head) + n) % usize::from(size)) as u16;
        }
        head
    }
}

/// Where the status byte of a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusDesc {
    /// A one-byte device-writable descriptor of its own (the usual layout).
    Separate,
    /// No descriptor of its own: the last byte of the last data buffer.
    InLastData,
    /// No device-writable byte at the end at all.
    Missing,
    /// A one-byte descriptor, but device-readable.
    ReadOnly,
}

/// One data buffer of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Length in bytes.
    pub len: u32,
    /// Device-writable; `None` is the natural direction of the request.
    pub write: Option<bool>,
    /// Where it is; `None` allocates it.
    pub addr: Option<u64>,
}

/// A virtio-blk request as the fuzzer describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `VIRTIO_BLK_T_*` (or anything).
    pub kind: u32,
    /// The header's sector.
    pub sector: u64,
    /// Header split into two descriptors at this byte.
    pub split_header: Option<u8>,
    /// Header address; `None` allocates it.
    pub header_addr: Option<u64>,
    /// The discard / write-zeroes segment (sector, num_sectors, flags),
    /// placed after the header.
    pub segment: Option<(u64, u32, u32)>,
    /// Data buffers.
    pub data: Vec<Seg>,
    /// The status byte.
    pub status: StatusDesc,
    /// Put the chain in an indirect table.
    pub indirect: bool,
    /// Indirect table address; `None` allocates it.
    pub indirect_table: Option<u64>,
}

const KINDS: [u32; 6] = [blk::T_IN, blk::T_OUT, blk::T_FLUSH, blk::T_GET_ID, blk::T_DISCARD, blk::T_WRITE_ZEROES];

impl Request {
    /// A well-formed request of `kind` at `sector` with `data` buffers in
    /// their natural direction.
    pub fn simple(kind: u32, sector: u64, data: &[u32]) -> Self {
        Request {
            kind,
            sector,
            split_header: None,
            header_addr: None,
            segment: None,
            data: data.iter().map(|&len| Seg { len, write: None, addr: None }).collect(),
            status: StatusDesc::Separate,
            indirect: false,
            indirect_table: None,
        }
    }

    /// Decodes the encoding written by [`Request::encode`]:
    ///
    /// ```text
    /// kind: u8 (0..=5 IN OUT FLUSH GET_ID DISCARD WRITE_ZEROES; 6: u32 follows)
    /// sector
    /// flags: u8  bit 0 indirect, bit 1 split header (u8 follows),
    ///            bits 2-3 status layout, bit 4 header address follows,
    ///            bit 5 indirect table address follows,
    ///            bit 6 discard/write-zeroes segment follows
    ///            (always present for DISCARD and WRITE_ZEROES)
    /// [segment: sector, num: u32, flags: u32]
    /// nseg: u8 (modulo 5), then per buffer: length, u8 (bits 0-1:
    ///            natural/readable/writable, bit 2: address follows)
    /// ```
    pub fn decode(r: &mut Reader) -> Self {
        let k = r.u8() % 7;
        let kind = if k == 6 { r.u32() } else { KINDS[usize::from(k)] };
        let sector = read_sector(r);
        let flags = r.u8();
        let split_header = (flags & 2 != 0).then(|| r.u8() % 16);
        let status = match (flags >> 2) & 3 {
            0 => StatusDesc::Separate,
            1 => StatusDesc::InLastData,
            2 => StatusDesc::Missing,
            _ => StatusDesc::ReadOnly,
        };
        let header_addr = (flags & 0x10 != 0).then(|| addr(r));
        let indirect_table = (flags & 0x20 != 0).then(|| addr(r));
        let segment = (flags & 0x40 != 0 || matches!(kind, blk::T_DISCARD | blk::T_WRITE_ZEROES))
            .then(|| (read_sector(r), r.u32(), r.u32()));
        let nseg = r.u8() % 5;
        let data = (0..nseg)
            .map(|_| {
                let len = seg_len(r);
                let b = r.u8();
                Seg {
                    len,
                    write: match b & 3 {
                        1 => Some(false),
                        2 => Some(true),
                        _ => None,
                    },
                    addr: (b & 4 != 0).then(|| addr(r)),
                }
            })
            .collect();
        Request {
            kind,
            sector,
            split_header,
            header_addr,
            segment,
            data,
            status,
            indirect: flags & 1 != 0,
            indirect_table,
        }
    }

    /// Encodes the request for [`Request::decode`].
    pub fn encode(&self, w: &mut Writer) {
        match KINDS.iter().position(|&k| k == self.kind) {
            Some(i) => {
                w.u8(i as u8);
            }
            None => {
                w.u8(6).u32(self.kind);
            }
        }
        put_sector(w, self.sector);
        let discardish = matches!(self.kind, blk::T_DISCARD | blk::T_WRITE_ZEROES);
        let status_bits = match self.status {
            StatusDesc::Separate => 0,
            StatusDesc::InLastData => 1,
            StatusDesc::Missing => 2,
            StatusDesc::ReadOnly => 3,
        };
        let flags = u8::from(self.indirect)
            | u8::from(self.split_header.is_some()) << 1
            | status_bits << 2
            | u8::from(self.header_addr.is_some()) << 4
            | u8::from(self.indirect_table.is_some()) << 5
            | u8::from(self.segment.is_some() && !discardish) << 6;
        w.u8(flags);
        if let Some(s) = self.split_header {
            w.u8(s);
        }
        if let Some(a) = self.header_addr {
            put_addr(w, a);
        }
        if let Some(a) = self.indirect_table {
            put_addr(w, a);
        }
        if self.segment.is_some() || discardish {
            let (s, n, f) = self.segment.unwrap_or((0, 0, 0));
            put_sector(w, s);
            w.u32(n).u32(f);
        }
        assert!(self.data.len() < 5);
        w.u8(self.data.len() as u8);
        for seg in &self.data {
            put_seg_len(w, seg.len);
            let dir = match seg.write {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            };
            w.u8(dir | u8::from(seg.addr.is_some()) << 2);
            if let Some(a) = seg.addr {
                put_addr(w, a);
            }
        }
    }
}

/// Encodes "publish this request" as a [`Driver::action`].
pub fn put_request_action(w: &mut Writer, req: &Request) {
    w.u8(op::REQUEST);
    req.encode(w);
}

/// Encodes a kick as a [`Driver::action`].
pub fn put_kick_action(w: &mut Writer) {
    w.u8(op::KICK);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding_round_trips() {
        let mut reqs = vec![
            Request::simple(blk::T_IN, 3, &[4096]),
            Request::simple(blk::T_OUT, 127, &[512, 0x1_0000, 77]),
            Request::simple(blk::T_FLUSH, 0, &[]),
            Request::simple(0xdead_beef, 1 << 40, &[]),
        ];
        let mut r = Request::simple(blk::T_DISCARD, 0, &[]);
        r.segment = Some((8, 16, 0));
        r.indirect = true;
        r.split_header = Some(7);
        r.status = StatusDesc::InLastData;
        r.header_addr = Some(0x7fff8);
        r.data.push(Seg { len: 9, write: Some(true), addr: Some(0x8_0000 - 4) });
        reqs.push(r);
        for req in reqs {
            let mut w = Writer::new();
            req.encode(&mut w);
            let bytes = w.finish();
            let mut rd = Reader::new(&bytes);
            assert_eq!(Request::decode(&mut rd), req);
            assert!(rd.is_empty());
        }
    }

    #[test]
    fn status_prefixes() {
        assert!(status_is_valid(0));
        assert!(status_is_valid(0xf));
        assert!(status_is_valid(0xb | status::FAILED));
        assert!(!status_is_valid(status::DRIVER));
        assert!(!status_is_valid(0x7));
    }
}
