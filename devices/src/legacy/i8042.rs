//! The i8042 keyboard controller, as far as a microVM needs it: the reset
//! line (`reboot=k`), on vm-superio's model.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::{ExitLine, GuestExitRequest};
use crate::bus::BusDevice;

/// Turns vm-superio's reset trigger into an exit request.
struct ResetTrigger(Arc<dyn ExitLine>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request_exit(GuestExitRequest::Reset);
        Ok(())
    }
}

/// The i8042 at ports 0x60..=0x64 (offset 0 is the data port, offset 4 the
/// status/command port). Command 0xFE on offset 4 resets the machine.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// Creates the device; `exit` is pulled on a reset command.
    pub fn new(exit: Arc<dyn ExitLine>) -> Self {
        I8042 { dev: I8042Device::new(ResetTrigger(exit)) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 | 4 => self.dev.read(offset as u8),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0 | 4, Some(&v)) = (offset, data.first()) {
            let _ = self.dev.write(offset as u8, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::RecordingExit;

    #[test]
    fn reset_command_requests_reset() {
        let rec = Arc::new(RecordingExit::default());
        let mut d = I8042::new(rec.clone());
        d.write(4, &[0x20]);
        d.write(0, &[0xfe]);
        assert!(rec.0.lock().unwrap().is_empty());
        d.write(4, &[0xfe]);
        assert_eq!(*rec.0.lock().unwrap(), vec![GuestExitRequest::Reset]);
        let mut b = [0u8; 1];
        d.read(2, &mut b);
        assert_eq!(b, [0xff]);
        d.read(0, &mut b);
        d.write(9, &[0xfe]);
        assert_eq!(rec.0.lock().unwrap().len(), 1);
    }
}
