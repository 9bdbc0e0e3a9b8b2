//! An in-memory serial sink a caller can wait on.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{lock, wait_timeout};

#[derive(Default)]
struct Inner {
    bytes: Vec<u8>,
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

    /// Everything captured so far, lossily decoded as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Everything captured so far, as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
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
    /// none) and whether the capture is closed.
    pub fn wait_beyond(&self, seen: usize, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        let (mutex, cv) = &*self.inner;
        let mut g = lock(mutex);
        loop {
            let now = Instant::now();
            if g.bytes.len() > seen || g.closed || now >= deadline {
                let new = g.bytes.get(seen..).map(<[u8]>::to_vec).unwrap_or_default();
                return (new, g.closed);
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
        self.lock().bytes.extend_from_slice(buf);
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
