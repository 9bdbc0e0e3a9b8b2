//! The state file's framing: a fixed header (magic, format version,
//! payload length, CRC-32 of the payload) and the payload, the VM's state
//! as JSON. [`encode`] and [`decode`] are pure; a flipped, missing or extra
//! byte anywhere is refused by [`decode`] before the payload is parsed.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "EMBERSNP"
//!      8     4  format version, little-endian (FORMAT_VERSION)
//!     12     4  CRC-32 (IEEE) of the payload, little-endian
//!     16     8  payload length in bytes, little-endian
//!     24     …  payload: UTF-8 JSON
//! ```

use super::SnapshotError;

/// The first eight bytes of every state file.
pub(crate) const MAGIC: &[u8; 8] = b"EMBERSNP";
/// The state file format this ember writes and the only one it reads
/// (docs/snapshot.md: any change to the payload's meaning bumps it).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Header bytes before the payload.
pub(crate) const HEADER_LEN: usize = 24;
/// The largest payload ember reads (a 254-vCPU VM's state is ~10 MiB of
/// JSON; anything larger is not a state file ember wrote).
pub(crate) const MAX_PAYLOAD: u64 = 64 << 20;

/// The file for `payload`.
pub(crate) fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of `file`, once its header and checksum hold.
pub(crate) fn decode(file: &[u8]) -> Result<&[u8], SnapshotError> {
    if file.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated { len: file.len() as u64, expected: HEADER_LEN as u64 });
    }
    if &file[..8] != MAGIC {
        return Err(SnapshotError::NotAStateFile);
    }
    let word = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version, supported: FORMAT_VERSION });
    }
    let crc = word(12);
    let len = u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(SnapshotError::TooLarge { len, max: MAX_PAYLOAD });
    }
    let expected = HEADER_LEN as u64 + len;
    if (file.len() as u64) < expected {
        return Err(SnapshotError::Truncated { len: file.len() as u64, expected });
    }
    if (file.len() as u64) > expected {
        return Err(SnapshotError::TrailingBytes { len: file.len() as u64, expected });
    }
    let payload = &file[HEADER_LEN..];
    let found = crc32fast::hash(payload);
    if found != crc {
        return Err(SnapshotError::Checksum { stored: crc, computed: found });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = encode(b"{\"a\":1}");
        assert_eq!(f.len(), HEADER_LEN + 7);
        assert_eq!(decode(&f).unwrap(), b"{\"a\":1}");
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let f = encode(b"{\"vcpus\":[1,2,3]}");
        for byte in 0..f.len() {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(decode(&g).is_err(), "byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncated_extended_and_foreign_files_are_refused() {
        let f = encode(b"payload");
        for n in 0..f.len() {
            let e = decode(&f[..n]).unwrap_err();
            assert!(matches!(e, SnapshotError::Truncated { .. }), "{n}: {e}");
        }
        let mut g = f.clone();
        g.push(0);
        assert!(matches!(decode(&g), Err(SnapshotError::TrailingBytes { .. })));
        assert!(matches!(
            decode(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(SnapshotError::NotAStateFile)
        ));
        let mut v = f.clone();
        v[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = decode(&v).unwrap_err();
        assert_eq!(e.to_string(), "the state file has format version 2; this ember reads version 1 only");
        let mut big = f;
        big[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&big), Err(SnapshotError::TooLarge { .. })));
    }
}
