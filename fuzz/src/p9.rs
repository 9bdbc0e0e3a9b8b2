//! The `p9_server` target's input encoding: 9P2000.L requests built from a
//! compact description (so the fuzzer reaches deep into sessions with
//! valid fids and names) or taken raw, and the scratch directory the
//! server shares.
//!
//! ```text
//! config: u8     bit 0 read-only share; bits 1-2 reply room (64 B, 4 KiB,
//!                the request's msize, 11 B)
//! requests until the input ends (at most MAX_REQUESTS):
//!   kind: u8     kind % (KINDS + 1) == KINDS: a raw message (blob16, sent
//!                as is); otherwise request KINDS[kind % KINDS] whose fields
//!                come from the input: fids are u8 (0..=255), names a u8
//!                index into NAMES (an index past the table reads a blob8
//!                as the name), numbers their wire width.
//! ```

use ember_devices::virtio::p9::wire::{msg, Encoder, NOFID};

use crate::input::{Reader, Writer};

/// Requests per input.
pub const MAX_REQUESTS: usize = 128;

/// Names the fuzzer picks from: the fixture's entries, the hostile ones
/// and a few to create.
pub const NAMES: &[&[u8]] = &[
    b"file",
    b"sub",
    b"inner",
    b"abs",
    b"rel",
    b"dirlink",
    b"slash",
    b"..",
    b".",
    b"",
    b"new",
    b"new2",
    b"a/b",
    b"../outside",
    b"/etc/passwd",
    b"outside",
    b"canary",
    b"passwd",
    b"etc",
    b"fifo",
];

/// The request types the description can build.
pub const KINDS: &[u8] = &[
    msg::TVERSION,
    msg::TATTACH,
    msg::TWALK,
    msg::TLOPEN,
    msg::TREAD,
    msg::TWRITE,
    msg::TCLUNK,
    msg::TLCREATE,
    msg::TSYMLINK,
    msg::TMKNOD,
    msg::TMKDIR,
    msg::TLINK,
    msg::TRENAMEAT,
    msg::TRENAME,
    msg::TUNLINKAT,
    msg::TREMOVE,
    msg::TREADDIR,
    msg::TGETATTR,
    msg::TSETATTR,
    msg::TREADLINK,
    msg::TSTATFS,
    msg::TFSYNC,
    msg::TXATTRWALK,
    msg::TXATTRCREATE,
    msg::TLOCK,
    msg::TGETLOCK,
    msg::TFLUSH,
    msg::TAUTH,
];

fn name<'a>(r: &mut Reader<'a>) -> &'a [u8] {
    let i = usize::from(r.u8());
    match NAMES.get(i) {
        Some(n) => n,
        None => r.blob8(),
    }
}

fn fid(r: &mut Reader<'_>) -> u32 {
    u32::from(r.u8())
}

/// Builds the next request from `r` into `out`.
pub fn build(r: &mut Reader<'_>, out: &mut Vec<u8>, tag: u16) {
    let kind = usize::from(r.u8()) % (KINDS.len() + 1);
    if kind == KINDS.len() {
        out.clear();
        out.extend_from_slice(r.blob16());
        return;
    }
    let ty = KINDS[kind];
    let mut e = Encoder::new(out, ty, tag);
    match ty {
        msg::TVERSION => {
            let msize = r.u32();
            let v = if r.u8() & 1 == 0 { &b"9P2000.L"[..] } else { name(r) };
            e.u32(msize).str(v);
        }
        msg::TATTACH => {
            let afid = if r.u8() & 1 == 0 { NOFID } else { fid(r) };
            e.u32(fid(r)).u32(afid).str(b"root").str(name(r)).u32(r.u32());
        }
        msg::TWALK => {
            e.u32(fid(r)).u32(fid(r));
            let n = r.u8() % 18;
            e.u16(u16::from(n));
            for _ in 0..n {
                e.str(name(r));
            }
        }
        msg::TLOPEN => {
            e.u32(fid(r)).u32(r.u32());
        }
        msg::TREAD | msg::TREADDIR => {
            e.u32(fid(r)).u64(r.u64()).u32(r.u32());
        }
        msg::TWRITE => {
            e.u32(fid(r)).u64(r.u64());
            let data = r.blob16();
            // The count may lie.
            let count = if r.u8() & 1 == 0 { data.len() as u32 } else { r.u32() };
            e.u32(count).bytes(data);
        }
        msg::TCLUNK | msg::TREMOVE | msg::TREADLINK | msg::TSTATFS => {
            e.u32(fid(r));
        }
        msg::TLCREATE => {
            e.u32(fid(r)).str(name(r)).u32(r.u32()).u32(r.u32()).u32(r.u32());
        }
        msg::TSYMLINK => {
            e.u32(fid(r)).str(name(r)).str(name(r)).u32(r.u32());
        }
        msg::TMKNOD => {
            e.u32(fid(r)).str(name(r)).u32(r.u32()).u32(r.u32()).u32(r.u32()).u32(r.u32());
        }
        msg::TMKDIR => {
            e.u32(fid(r)).str(name(r)).u32(r.u32()).u32(r.u32());
        }
        msg::TLINK => {
            e.u32(fid(r)).u32(fid(r)).str(name(r));
        }
        msg::TRENAMEAT => {
            e.u32(fid(r)).str(name(r)).u32(fid(r)).str(name(r));
        }
        msg::TRENAME => {
            e.u32(fid(r)).u32(fid(r)).str(name(r));
        }
        msg::TUNLINKAT => {
            e.u32(fid(r)).str(name(r)).u32(r.u32());
        }
        msg::TGETATTR => {
            e.u32(fid(r)).u64(r.u64());
        }
        msg::TSETATTR => {
            e.u32(fid(r)).u32(r.u32()).u32(r.u32()).u32(r.u32()).u32(r.u32());
            e.u64(r.u64() & 0xffff_ffff).u64(r.u64()).u64(r.u64()).u64(r.u64()).u64(r.u64());
        }
        msg::TFSYNC => {
            e.u32(fid(r)).u32(r.u32());
        }
        msg::TXATTRWALK => {
            e.u32(fid(r)).u32(fid(r)).str(name(r));
        }
        msg::TXATTRCREATE => {
            e.u32(fid(r)).str(name(r)).u64(r.u64()).u32(r.u32());
        }
        msg::TLOCK => {
            e.u32(fid(r)).u8(r.u8()).u32(r.u32()).u64(r.u64()).u64(r.u64()).u32(r.u32()).str(name(r));
        }
        msg::TGETLOCK => {
            e.u32(fid(r)).u8(r.u8()).u64(r.u64()).u64(r.u64()).u32(r.u32()).str(name(r));
        }
        msg::TFLUSH => {
            e.u16(r.u16());
        }
        _ => {
            e.u32(fid(r)).u32(fid(r)).str(name(r)).str(name(r)).u32(r.u32());
        }
    }
    // Sometimes cut the message short (its size field still says all).
    let cut = r.u8();
    e.finish();
    if cut >= 0xf0 {
        let keep = out.len().saturating_sub(usize::from(cut & 0xf) + 1);
        out.truncate(keep);
    }
}

/// Index of `ty` in [`KINDS`], for the seeds.
pub fn kind(ty: u8) -> u8 {
    KINDS.iter().position(|&k| k == ty).expect("a known kind") as u8
}

/// Index of `n` in [`NAMES`], for the seeds.
pub fn name_ix(n: &[u8]) -> u8 {
    NAMES.iter().position(|&k| k == n).expect("a known name") as u8
}

/// Seed helpers: a request description in the target's encoding.
pub struct Session(pub Writer);

impl Session {
    /// A read-write (or read-only) share with room class `room`.
    pub fn new(readonly: bool, room: u8) -> Self {
        let mut w = Writer::new();
        w.u8(u8::from(readonly) | (room << 1));
        Session(w)
    }

    fn k(&mut self, ty: u8) -> &mut Writer {
        self.0.u8(kind(ty));
        &mut self.0
    }

    fn end(&mut self) -> &mut Self {
        self.0.u8(0);
        self
    }

    /// Tversion.
    pub fn version(&mut self, msize: u32) -> &mut Self {
        self.k(msg::TVERSION).u32(msize).u8(0);
        self.end()
    }

    /// Tattach of `fid`.
    pub fn attach(&mut self, fid: u8) -> &mut Self {
        self.k(msg::TATTACH).u8(0).u8(fid).u8(name_ix(b"")).u32(0);
        self.end()
    }

    /// Twalk.
    pub fn walk(&mut self, fid: u8, newfid: u8, names: &[&[u8]]) -> &mut Self {
        let w = self.k(msg::TWALK);
        w.u8(fid).u8(newfid).u8(names.len() as u8);
        for n in names {
            w.u8(name_ix(n));
        }
        self.end()
    }

    /// Tlopen.
    pub fn lopen(&mut self, fid: u8, flags: u32) -> &mut Self {
        self.k(msg::TLOPEN).u8(fid).u32(flags);
        self.end()
    }

    /// Tread or Treaddir.
    pub fn read(&mut self, ty: u8, fid: u8, offset: u64, count: u32) -> &mut Self {
        self.k(ty).u8(fid).u64(offset).u32(count);
        self.end()
    }

    /// Twrite.
    pub fn write(&mut self, fid: u8, offset: u64, data: &[u8]) -> &mut Self {
        self.k(msg::TWRITE).u8(fid).u64(offset).blob16(data).u8(0);
        self.end()
    }

    /// Tlcreate.
    pub fn lcreate(&mut self, fid: u8, name: &[u8], flags: u32, mode: u32) -> &mut Self {
        self.k(msg::TLCREATE).u8(fid).u8(name_ix(name)).u32(flags).u32(mode).u32(0);
        self.end()
    }

    /// Tsymlink.
    pub fn symlink(&mut self, fid: u8, name: &[u8], target: &[u8]) -> &mut Self {
        self.k(msg::TSYMLINK).u8(fid).u8(name_ix(name)).u8(name_ix(target)).u32(0);
        self.end()
    }

    /// Tmknod.
    pub fn mknod(&mut self, fid: u8, name: &[u8], mode: u32, major: u32, minor: u32) -> &mut Self {
        self.k(msg::TMKNOD).u8(fid).u8(name_ix(name)).u32(mode).u32(major).u32(minor).u32(0);
        self.end()
    }

    /// Tlink.
    pub fn link(&mut self, dfid: u8, fid: u8, name: &[u8]) -> &mut Self {
        self.k(msg::TLINK).u8(dfid).u8(fid).u8(name_ix(name));
        self.end()
    }

    /// Trenameat.
    pub fn renameat(&mut self, od: u8, on: &[u8], nd: u8, nn: &[u8]) -> &mut Self {
        self.k(msg::TRENAMEAT).u8(od).u8(name_ix(on)).u8(nd).u8(name_ix(nn));
        self.end()
    }

    /// Tclunk.
    pub fn clunk(&mut self, fid: u8) -> &mut Self {
        self.k(msg::TCLUNK).u8(fid);
        self.end()
    }

    /// Any single-fid request (Tgetattr, Treadlink, Tstatfs, Tremove).
    pub fn on_fid(&mut self, ty: u8, fid: u8) -> &mut Self {
        let w = self.k(ty);
        w.u8(fid);
        if ty == msg::TGETATTR {
            w.u64(0x7ff);
        }
        self.end()
    }

    /// A raw message.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.u8(KINDS.len() as u8).blob16(bytes);
        self
    }

    /// The encoded input.
    pub fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }
}
