//! A virtio-blk request, parsed once: from a descriptor chain to a typed
//! [`Request`] whose byte range is checked against the image, or to the
//! status the device answers without touching the file.
//!
//! The device-readable descriptors form one byte stream (the 16-byte
//! header, then `OUT` data or a discard/write-zeroes segment), the
//! device-writable ones another (`IN` or `GET_ID` data, then the status
//! byte, which is the last byte of the last descriptor). Nothing here does
//! I/O on the image: [`super::handler`] executes what [`parse`] accepts.

use virtio_bindings::bindings::virtio_blk::*;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use crate::virtio::chain::{ChainWalker, RawDesc};
use crate::virtio::host_view::HostView;

pub(super) const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: u64 = 16;
/// Descriptors one request may use: a driver may not build a chain longer
/// than the queue (virtio 1.2 §2.7.5.3.1); `seg_max` data segments plus
/// the header and the status byte fit.
pub(super) const MAX_DESCS: usize = super::QUEUE_SIZE as usize;
pub(super) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Bounded so that the write-zeroes fallback (writing actual zeroes) keeps
/// the event loop responsive.
pub(super) const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;

/// One descriptor of a request chain, as read from guest memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct Desc {
    pub(super) addr: GuestAddress,
    pub(super) len: u32,
    pub(super) write: bool,
}

impl From<RawDesc> for Desc {
    fn from(d: RawDesc) -> Self {
        Desc { addr: d.addr, len: d.len, write: d.is_write_only() }
    }
}

/// Calls `f` for each guest range of bytes `[skip, skip + take)` of the
/// byte stream formed by `descs`. Stops and returns `false` when `f` does.
pub(super) fn for_each_range(
    descs: &[Desc],
    mut skip: u64,
    mut take: u64,
    mut f: impl FnMut(GuestAddress, usize) -> bool,
) -> bool {
    for d in descs {
        if take == 0 {
            break;
        }
        let len = u64::from(d.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        let Some(addr) = d.addr.checked_add(skip) else {
            return false;
        };
        if !f(addr, n as usize) {
            return false;
        }
        skip = 0;
        take -= n;
    }
    take == 0
}

/// Reads `buf.len()` bytes at `skip` of the byte stream formed by `descs`.
fn read_stream(view: &HostView, descs: &[Desc], skip: u64, buf: &mut [u8]) -> bool {
    let mut pos = 0;
    for_each_range(descs, skip, buf.len() as u64, |addr, len| {
        let dst = &mut buf[pos..pos + len];
        pos += len;
        match view.ptr(addr, len as u64) {
            Some(p) => {
                // SAFETY: `len` bytes of guest memory (kept mapped by the
                // view) into a local buffer; they cannot overlap.
                unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), len) };
                true
            }
            // Spanning two regions, or outside guest memory.
            None => view.read_slice(dst, addr).is_ok(),
        }
    })
}

/// Reads the 16-byte request header: one volatile read in the usual case
/// of a header descriptor of its own.
fn read_header(view: &HostView, rd: &[Desc]) -> Option<[u8; 16]> {
    if let Some(d) = rd.first().filter(|d| u64::from(d.len) >= HEADER_LEN) {
        if let Some(h) = view.read_bytes::<16>(d.addr) {
            return Some(h);
        }
    }
    let mut h = [0u8; 16];
    read_stream(view, rd, 0, &mut h).then_some(h)
}

/// The outcome of one request: the status byte, the bytes written into
/// device-writable data buffers (the status byte not included) and the
/// bytes the host moved for it (for the pass budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Completion {
    pub(super) status: u8,
    pub(super) written: u32,
    pub(super) moved: u64,
}

impl Completion {
    pub(super) const fn ok(written: u32) -> Self {
        Completion { status: VIRTIO_BLK_S_OK as u8, written, moved: 0 }
    }
    pub(super) const fn ioerr(written: u32) -> Self {
        Completion { status: VIRTIO_BLK_S_IOERR as u8, written, moved: 0 }
    }
    pub(super) const fn unsupp() -> Self {
        Completion { status: VIRTIO_BLK_S_UNSUPP as u8, written: 0, moved: 0 }
    }
    /// The same outcome, for which the host moved `bytes`.
    pub(super) const fn moving(self, bytes: u64) -> Self {
        Completion { moved: bytes, ..self }
    }
}

/// What a well-formed request asks of the disk, with its byte range inside
/// the image (checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request {
    /// Read `len` bytes at `offset` into the device-writable data buffers.
    In { offset: u64, len: u64 },
    /// Write the `len` bytes after the header at `offset`.
    Out { offset: u64, len: u64 },
    /// Make written data durable.
    Flush,
    /// Answer the serial, `len` bytes of it.
    GetId { len: u64 },
    /// Deallocate `len` bytes at `offset` (a hint).
    Discard { offset: u64, len: u64 },
    /// Zero `len` bytes at `offset`, deallocating them if `unmap`.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// A request answered without I/O: the completion and, for a malformed
/// chain, what to log about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) completion: Completion,
    pub(super) malformed: Option<&'static str>,
}

impl Refused {
    const fn malformed(why: &'static str) -> Self {
        Refused { completion: Completion::ioerr(0), malformed: Some(why) }
    }
    const fn ioerr() -> Self {
        Refused { completion: Completion::ioerr(0), malformed: None }
    }
    const fn answer(completion: Completion) -> Self {
        Refused { completion, malformed: None }
    }
}

/// A chain gathered into descriptors, split by direction.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chain<'d> {
    /// The device-readable descriptors (header first).
    pub(super) readable: &'d [Desc],
    /// The device-writable descriptors (the status byte last).
    pub(super) writable: &'d [Desc],
    /// Bytes of the readable descriptors (header included).
    readable_len: u64,
    /// Bytes of the writable descriptors before the status byte.
    writable_data: u64,
}

impl Chain<'_> {
    /// Bytes of device-readable data after the header.
    fn readable_data(&self) -> u64 {
        self.readable_len.saturating_sub(HEADER_LEN)
    }
}

/// What [`gather`] found.
pub(super) enum Gathered {
    /// No device-writable status byte in guest memory: the chain can only
    /// be returned with a used length of 0.
    NoStatus,
    /// A chain the device cannot serve: answer `IOERR` at `status`.
    Malformed { status: GuestAddress, why: &'static str },
    /// The descriptors are in `descs`, readable ones first.
    Ok { status: GuestAddress },
}

/// Walks a chain into `descs` (cleared first, at most [`MAX_DESCS`]
/// kept) and finds its status byte: the last byte of the last descriptor,
/// which must be device-writable and inside guest memory.
pub(super) fn gather(view: &HostView, chain: ChainWalker<'_>, descs: &mut Vec<Desc>) -> Gathered {
    descs.clear();
    let mut last: Option<Desc> = None;
    let mut too_long = false;
    let mut misordered = false;
    let mut seen_writable = false;
    for d in chain {
        let d = Desc::from(d);
        if d.write {
            seen_writable = true;
        } else if seen_writable {
            misordered = true;
        }
        if descs.len() < MAX_DESCS {
            descs.push(d);
        } else {
            too_long = true;
        }
        last = Some(d);
    }
    let status = match last {
        Some(d) if d.write && d.len > 0 => {
            d.addr.checked_add(u64::from(d.len) - 1).filter(|a| view.ptr(*a, 1).is_some())
        }
        _ => None,
    };
    match status {
        None => Gathered::NoStatus,
        Some(status) if too_long => Gathered::Malformed { status, why: "too many descriptors" },
        Some(status) if misordered => {
            Gathered::Malformed { status, why: "device-readable descriptor after a writable one" }
        }
        Some(status) => Gathered::Ok { status },
    }
}

/// Splits gathered descriptors (readable ones first, then at least the
/// status byte) into a [`Chain`].
pub(super) fn split(descs: &[Desc]) -> Chain<'_> {
    let (mut nread, mut readable_len, mut writable_len) = (0, 0u64, 0u64);
    for d in descs {
        if d.write {
            writable_len += u64::from(d.len);
        } else {
            nread += 1;
            readable_len += u64::from(d.len);
        }
    }
    let (readable, writable) = descs.split_at(nread);
    // At least the status byte, checked by `gather`.
    Chain { readable, writable, readable_len, writable_data: writable_len.saturating_sub(1) }
}

/// The image a request is checked against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Image {
    /// Size in bytes (a multiple of 512).
    pub(super) size: u64,
    pub(super) readonly: bool,
}

impl Image {
    /// The byte offset of `len` bytes at `sector`, if they lie inside the
    /// image.
    fn bounds(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.size).then_some(offset)
    }

    /// An `IN`/`OUT` transfer of `len` bytes at `sector`: whole sectors
    /// inside the image.
    fn data(&self, sector: u64, len: u64) -> Option<u64> {
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        self.bounds(sector, len)
    }
}

/// Parses the request of `chain` against `image`.
pub(super) fn parse(view: &HostView, chain: &Chain<'_>, image: Image) -> Result<Request, Refused> {
    let hdr = match read_header(view, chain.readable) {
        Some(h) if chain.readable_len >= HEADER_LEN => h,
        _ => return Err(Refused::malformed("request header short or outside guest memory")),
    };
    let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
    let (rd_data, wr_len) = (chain.readable_data(), chain.writable_data);

    match req_type {
        VIRTIO_BLK_T_IN => {
            if rd_data != 0 {
                return Err(Refused::malformed("IN request with device-readable data"));
            }
            let offset = image.data(sector, wr_len).ok_or(Refused::ioerr())?;
            Ok(Request::In { offset, len: wr_len })
        }
        VIRTIO_BLK_T_OUT => {
            if wr_len != 0 {
                return Err(Refused::malformed("OUT request with a device-writable data buffer"));
            }
            if image.readonly {
                return Err(Refused::ioerr());
            }
            let offset = image.data(sector, rd_data).ok_or(Refused::ioerr())?;
            Ok(Request::Out { offset, len: rd_data })
        }
        VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(Request::GetId { len: wr_len.min(ID_BYTES as u64) }),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => parse_segment(view, chain, image, req_type),
        _ => Err(Refused::answer(Completion::unsupp())),
    }
}

/// The one segment of a discard or write-zeroes request
/// (`max_discard_seg` = `max_write_zeroes_seg` = 1).
fn parse_segment(view: &HostView, chain: &Chain<'_>, image: Image, req_type: u32) -> Result<Request, Refused> {
    if chain.writable_data != 0 || chain.readable_data() != SEGMENT_LEN {
        // One segment and no device-writable data.
        return Err(Refused::malformed("discard/write-zeroes request with a bad segment list"));
    }
    if image.readonly {
        return Err(Refused::ioerr());
    }
    let mut seg = [0u8; SEGMENT_LEN as usize];
    if !read_stream(view, chain.readable, HEADER_LEN, &mut seg) {
        return Err(Refused::malformed("discard/write-zeroes segment outside guest memory"));
    }
    let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
    let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
    let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    let discard = req_type == VIRTIO_BLK_T_DISCARD;
    if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (discard && unmap) {
        return Err(Refused::answer(Completion::unsupp()));
    }
    let max = if discard { MAX_DISCARD_SECTORS } else { MAX_WRITE_ZEROES_SECTORS };
    if num > max {
        return Err(Refused::ioerr());
    }
    let len = u64::from(num) << SECTOR_SHIFT;
    let offset = image.bounds(sector, len).ok_or(Refused::ioerr())?;
    if len == 0 {
        return Err(Refused::answer(Completion::ok(0)));
    }
    Ok(if discard { Request::Discard { offset, len } } else { Request::WriteZeroes { offset, len, unmap } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::*;

    const IMAGE: Image = Image { size: 1 << 20, readonly: false };

    fn desc(addr: u64, len: u32, write: bool) -> Desc {
        Desc { addr: GuestAddress(addr), len, write }
    }

    fn header(mem: &crate::GuestMemoryMmap, at: u64, req_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    #[test]
    fn requests_are_typed_and_bounded() {
        let mem = guest_mem();
        let view = HostView::new(&mem);
        let hdr = desc(DATA_BASE, 16, false);
        let status = desc(DATA_BASE + 0x100, 1, true);
        let parse_with = |descs: &[Desc], image: Image| {
            let chain = split(descs);
            parse(&view, &chain, image)
        };

        header(&mem, DATA_BASE, VIRTIO_BLK_T_IN, 2);
        let data = desc(DATA_BASE + 0x1000, 1024, true);
        assert_eq!(parse_with(&[hdr, data, status], IMAGE), Ok(Request::In { offset: 1024, len: 1024 }));
        // Past the end of the image: IOERR, nothing to log.
        assert_eq!(
            parse_with(&[hdr, data, status], Image { size: 2048, ..IMAGE }),
            Ok(Request::In { offset: 1024, len: 1024 })
        );
        assert_eq!(parse_with(&[hdr, data, status], Image { size: 1536, ..IMAGE }), Err(Refused::ioerr()));
        // Not whole sectors.
        let odd = desc(DATA_BASE + 0x1000, 100, true);
        assert_eq!(parse_with(&[hdr, odd, status], IMAGE), Err(Refused::ioerr()));

        header(&mem, DATA_BASE, VIRTIO_BLK_T_OUT, 0);
        let out = desc(DATA_BASE + 0x1000, 512, false);
        assert_eq!(parse_with(&[hdr, out, status], IMAGE), Ok(Request::Out { offset: 0, len: 512 }));
        assert_eq!(parse_with(&[hdr, out, status], Image { readonly: true, ..IMAGE }), Err(Refused::ioerr()));
        let e = parse_with(&[hdr, data, status], IMAGE).unwrap_err();
        assert!(e.malformed.is_some(), "OUT with device-writable data is malformed");

        header(&mem, DATA_BASE, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(parse_with(&[hdr, data, status], IMAGE), Ok(Request::GetId { len: ID_BYTES as u64 }));

        header(&mem, DATA_BASE, VIRTIO_BLK_T_SCSI_CMD, 0);
        assert_eq!(parse_with(&[hdr, status], IMAGE), Err(Refused::answer(Completion::unsupp())));

        let short = desc(DATA_BASE, 8, false);
        assert!(parse_with(&[short, status], IMAGE).unwrap_err().malformed.is_some());
    }

    #[test]
    fn segments_are_checked() {
        let mem = guest_mem();
        let view = HostView::new(&mem);
        let status = GuestAddress(DATA_BASE + 0x100);
        let descs = [desc(DATA_BASE, 32, false), desc(status.0, 1, true)];
        let seg = |sector: u64, num: u32, flags: u32| {
            let mut s = [0u8; 16];
            s[0..8].copy_from_slice(&sector.to_le_bytes());
            s[8..12].copy_from_slice(&num.to_le_bytes());
            s[12..16].copy_from_slice(&flags.to_le_bytes());
            mem.write_slice(&s, GuestAddress(DATA_BASE + 16)).unwrap();
        };
        let parse_now = |image| parse(&view, &split(&descs), image);
        header(&mem, DATA_BASE, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        seg(1, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(parse_now(IMAGE), Ok(Request::WriteZeroes { offset: 512, len: 1024, unmap: true }));
        seg(1, 0, 0);
        assert_eq!(parse_now(IMAGE), Err(Refused::answer(Completion::ok(0))));
        header(&mem, DATA_BASE, VIRTIO_BLK_T_DISCARD, 0);
        seg(1, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(parse_now(IMAGE), Err(Refused::answer(Completion::unsupp())));
        seg(1, MAX_DISCARD_SECTORS + 1, 0);
        assert_eq!(parse_now(IMAGE), Err(Refused::ioerr()));
        seg(1, 2, 0);
        assert_eq!(parse_now(IMAGE), Ok(Request::Discard { offset: 512, len: 1024 }));
    }
}
