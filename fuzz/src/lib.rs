//! Shared pieces of ember's fuzz targets.
//!
//! * [`input`]: the byte reader every target decodes its input with (and
//!   the matching writer the seed generator uses), so that the committed
//!   seeds are produced by code rather than by hand.
//! * [`guest`]: guest memory with guard pages around every region, reset
//!   between runs with `MADV_DONTNEED`.
//! * [`image`]: the disk images behind the virtio-blk targets (memfd).
//! * [`virtio`]: the virtio-mmio register map, a minimal driver (device
//!   initialisation, split rings) and the virtio-blk request builder.
//! * [`net`]: virtio-net's socket-pair backend, the host's end of it and
//!   the driver operations of `net_tx` and `net_race`.
//! * [`pci`]: bus 0 with a virtio-pci function wired as a VMM would, and
//!   the virtio-pci driver steps.
//! * [`p9`]: the `p9_server` target's request encoding.
//! * [`race`]: the per-notification measures of the concurrent targets.
//! * [`seeds`]: the seed corpus, written by `examples/gen_seeds.rs`.
//!
//! Nothing here links libFuzzer; only the targets in `fuzz_targets/` do.

pub mod guest;
pub mod image;
pub mod input;
pub mod net;
pub mod p9;
pub mod pci;
pub mod race;
pub mod seeds;
pub mod virtio;
