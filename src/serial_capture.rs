//! An in-memory serial sink a caller can wait on.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{lock, wait_timeout};

#[derive(Default)]
struct Inner {
    /// The output kept: the stream from offset `cut` on.
    bytes: Vec<u8>,
    /// Bytes dropped from the front (see [`SerialCapture::with_limit`]).
    cut: usize,
    /// Keep at least the last this many bytes; `None`: everything.
    limit: Option<usize>,
    closed: bool,
}

/// Collects everything the guest writes to COM1 and lets other threads wait
/// for a given text to appear. Cheap to clone: clones share the buffer.
#[derive(Clone, Default)]
pub struct SerialCapture {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

impl SerialCapture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// A capture that keeps only the last `limit` bytes (at least; it holds
    /// at most twice that), for a guest that writes without end. Offsets
    /// ([`wait_beyond`](Self::wait_beyond)) count the whole stream.
    pub fn with_limit(limit: usize) -> Self {
        let c = Self::default();
        c.lock().limit = Some(limit);
        c
    }

    /// Everything captured so far (what is kept of it), lossily decoded as
    /// UTF-8; says first how much was cut.
    pub fn text(&self) -> String {
        let g = self.lock();
        let text = String::from_utf8_lossy(&g.bytes);
        match g.cut {
            0 => text.into_owned(),
            n => format!("[ember: the first {n} bytes of console output were cut]\n{text}"),
        }
    }

    /// Everything captured so far (what is kept of it), as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// How many bytes were dropped from the front of the output.
    pub fn cut(&self) -> usize {
        self.lock().cut
    }

    /// Waits until `needle` has appeared in the output, the capture is closed
    /// (the VM ended), or `timeout` passes. Returns whether it appeared.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let (mutex, cv) = &*self.inner;
        let mut g = lock(mutex);
        loop {
            if contains(&g.bytes, needle) {
                return true;
            }
            let now = Instant::now();
            if g.closed || now >= deadline {
                return false;
            }
            g = wait_timeout(cv, g, deadline - now);
        }
    }

    /// Waits until more than `seen` bytes have been captured, the capture is
    /// closed, or `timeout` passes. Returns the bytes past `seen` (possibly
    /// none; with a [limit](Self::with_limit), only those still kept) and
    /// whether the capture is closed.
    pub fn wait_beyond(&self, seen: usize, timeout: Duration) -> (Vec<u8>, bool) {
        let (new, _, closed) = self.wait_next(seen, timeout);
        (new, closed)
    }

    /// [`wait_beyond`](Self::wait_beyond), with the stream offset just past
    /// the bytes returned (the next `seen`; more than `seen` plus their
    /// length when bytes in between were cut).
    pub(crate) fn wait_next(&self, seen: usize, timeout: Duration) -> (Vec<u8>, usize, bool) {
        let deadline = Instant::now() + timeout;
        let (mutex, cv) = &*self.inner;
        let mut g = lock(mutex);
        loop {
            let now = Instant::now();
            let end = g.cut + g.bytes.len();
            if end > seen || g.closed || now >= deadline {
                let from = seen.saturating_sub(g.cut);
                let new = g.bytes.get(from..).map(<[u8]>::to_vec).unwrap_or_default();
                return (new, end.max(seen), g.closed);
            }
            g = wait_timeout(cv, g, deadline - now);
        }
    }

    /// Marks the capture as finished: waiters stop waiting.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.inner.1.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner.0)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

impl Write for SerialCapture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.lock();
        g.bytes.extend_from_slice(buf);
        if let Some(limit) = g.limit {
            // Trim to the limit once twice that is held: amortised O(1) per
            // byte.
            if g.bytes.len() > limit.saturating_mul(2).max(1) {
                let drop = g.bytes.len() - limit;
                g.bytes.drain(..drop);
                g.cut += drop;
            }
        }
        drop(g);
        self.inner.1.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_text_from_another_thread() {
        let cap = SerialCapture::new();
        let mut w = cap.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.write_all(b"hello wor").unwrap();
            w.write_all(b"ld\n").unwrap();
        });
        assert!(cap.wait_for("world", Duration::from_secs(5)));
        t.join().unwrap();
        assert_eq!(cap.text(), "hello world\n");
        assert!(!cap.wait_for("absent", Duration::from_millis(10)));
    }

    /// Issue 16 item 4: `ember smoke` kept the whole console for the whole
    /// timeout; a capped capture keeps the last bytes and says so.
    #[test]
    fn a_limited_capture_keeps_the_tail() {
        let cap = SerialCapture::with_limit(1 << 20);
        let mut w = cap.clone();
        let mut seen = 0;
        for i in 0..40u8 {
            w.write_all(&vec![b'a' + i % 26; 256 << 10]).unwrap();
            assert!(cap.bytes().len() <= 2 << 20);
            let (new, next, _) = cap.wait_next(seen, Duration::ZERO);
            assert!(!new.is_empty() && next > seen);
            seen = next;
        }
        assert_eq!(seen, 40 * (256 << 10));
        let kept = cap.bytes();
        assert!(kept.len() >= 1 << 20 && kept.len() <= 2 << 20);
        assert_eq!(*kept.last().unwrap(), b'a' + 39 % 26);
        assert_eq!(cap.cut() + kept.len(), 40 * (256 << 10));
        assert!(cap.text().starts_with("[ember: the first "), "says it was cut");
        // Unlimited captures keep everything, as before.
        let all = SerialCapture::new();
        all.clone().write_all(&[b'x'; 3 << 20]).unwrap();
        assert_eq!((all.bytes().len(), all.cut()), (3 << 20, 0));
    }

    #[test]
    fn close_wakes_waiters() {
        let cap = SerialCapture::new();
        let c2 = cap.clone();
        let t = std::thread::spawn(move || c2.wait_for("never", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        cap.close();
        assert!(!t.join().unwrap());
    }
}
