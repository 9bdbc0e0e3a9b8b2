//! The debug-exit port: a guest's `outb N, 0xf4` ends the VM with status N.

use std::sync::Arc;

use super::{ExitLine, GuestExitRequest};
use crate::bus::BusDevice;

/// The debug-exit device. Any write, of any width, ends the VM with the low
/// byte of the value as the exit status (QEMU's isa-debug-exit instead exits
/// with `(N << 1) | 1`). Reads return all-ones.
pub struct DebugExit {
    exit: Arc<dyn ExitLine>,
}

impl DebugExit {
    /// Creates the device; `exit` is pulled on a write.
    pub fn new(exit: Arc<dyn ExitLine>) -> Self {
        DebugExit { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.exit.request_exit(GuestExitRequest::DebugExit(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::RecordingExit;

    #[test]
    fn write_requests_exit_with_low_byte() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = DebugExit::new(rec.clone());
        d.write(0, &[7]);
        d.write(0, &[0x2a, 0x01, 0, 0]);
        d.write(0, &[]);
        let mut b = [0u8; 2];
        d.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::DebugExit(7), GuestExitRequest::DebugExit(0x2a)]);
    }
}
