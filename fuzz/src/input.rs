//! A forgiving little-endian byte reader over the fuzzer's input, and the
//! writer that produces the same encoding for seeds.
//!
//! Reads past the end yield zeros, so every input decodes to something and
//! a mutation that shortens an input only changes its tail.

/// Reads fixed-size little-endian values from the front of the input.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length byte followed by that many bytes.
    pub fn blob8(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }

    /// A little-endian u16 length followed by that many bytes.
    pub fn blob16(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.bytes(n)
    }
}

/// Writes the encoding [`Reader`] decodes.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    /// The encoded bytes.
    pub out: Vec<u8>,
}

impl Writer {
    /// An empty encoding.
    pub fn new() -> Self {
        Writer::default()
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// A length byte and the bytes (at most 255).
    pub fn blob8(&mut self, b: &[u8]) -> &mut Self {
        assert!(b.len() <= 255);
        self.u8(b.len() as u8).bytes(b)
    }

    /// A u16 length and the bytes (at most 65535).
    pub fn blob16(&mut self, b: &[u8]) -> &mut Self {
        assert!(b.len() <= 65535);
        self.u16(b.len() as u16).bytes(b)
    }

    /// The encoding.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_tail() {
        let data = Writer::new().u8(1).u16(0x0203).u32(0x0405_0607).u64(9).blob8(b"ab").finish();
        let mut r = Reader::new(&data);
        assert_eq!(r.u8(), 1);
        assert_eq!(r.u16(), 0x0203);
        assert_eq!(r.u32(), 0x0405_0607);
        assert_eq!(r.u64(), 9);
        assert_eq!(r.blob8(), b"ab");
        assert!(r.is_empty());
        assert_eq!(r.u64(), 0);
        let mut r = Reader::new(&[0xff]);
        assert_eq!(r.u32(), 0xff);
    }
}
