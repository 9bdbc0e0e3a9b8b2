//! The snapshot state file's reader (issue 19): what `ember restore` and
//! `PUT /snapshot/load` read before anything is built.
//!
//! Input: byte 0 chooses the mode; the rest is
//!
//! * byte 0 even: a **whole state file**, header and checksum as the
//!   fuzzer makes them (so the framing's checks are fuzzed);
//! * byte 0 odd: a **payload**, which the target frames with a valid header
//!   and checksum, so the JSON reader and the consistency checks behind
//!   the checksum are reached.
//!
//! Invariants: no panic; a state that is accepted serializes to JSON that,
//! framed again, is accepted and serializes to the same bytes (nothing is
//! lost or invented on the way); the accepted file with any one byte
//! flipped (bytes 1–4 of the input choose which, and the bit) is refused.
//! An accepted state's legacy devices (UARTs, i8042, CMOS) and PCI root
//! are then restored into freshly built ones, the device crate's checks of
//! hostile states: refused or accepted, never a panic.
#![no_main]

use ember::fuzzing::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 { rest.to_vec() } else { snapshot::encode(rest) };
    let Ok(json) = snapshot::parse(&file) else {
        return;
    };
    let again = snapshot::parse(&snapshot::encode(&json)).expect("a state ember wrote back is accepted");
    assert_eq!(again, json, "the round trip changed the state");
    let pick = rest.iter().take(4).fold(0usize, |a, &b| a.wrapping_mul(251).wrapping_add(usize::from(b)));
    let mut flipped = file.clone();
    let at = pick % flipped.len();
    flipped[at] ^= 1 << (pick % 8);
    assert!(snapshot::parse(&flipped).is_err(), "byte {at} flipped went unnoticed");
    let _ = snapshot::restore_fresh(&file);
});
