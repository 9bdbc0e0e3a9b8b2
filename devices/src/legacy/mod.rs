//! Legacy PC devices: the 8250 UART, the i8042 PS/2 controller with its
//! keyboard, the debug-exit port, a CMOS real-time clock, the ACPI sleep
//! registers, and quiet stand-ins for probed ports.

mod acpi_sleep;
mod cmos;
mod debug_exit;
mod i8042;
mod quiet;
mod serial;

pub use acpi_sleep::AcpiSleep;
pub use cmos::{Cmos, CmosState};
pub use debug_exit::DebugExit;
pub use i8042::{I8042Error, I8042Snapshot, I8042State, OutputSource, I8042, I8042_QUEUE_LEN};
pub use quiet::{QuietPorts, QUIET_PORT_RANGES};
pub use serial::{SerialDevice, SerialOutput, SerialState};

/// Why a device asks the VMM to end the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExitRequest {
    /// The guest reset the machine (i8042 command 0xFE).
    Reset,
    /// The guest powered the machine off (ACPI sleep state S5).
    PowerOff,
    /// The guest wrote this code to the debug-exit port.
    DebugExit(u8),
}

/// The line a device pulls to end the VM. The VMM implements it; the device
/// knows nothing else about the VMM.
pub trait ExitLine: Send + Sync {
    /// Asks for the VM to end. The first request wins.
    fn request_exit(&self, request: GuestExitRequest);
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::sync::Mutex;

    /// Records exit requests.
    #[derive(Default)]
    pub struct RecordingExit(pub Mutex<Vec<GuestExitRequest>>);

    impl ExitLine for RecordingExit {
        fn request_exit(&self, request: GuestExitRequest) {
            self.0.lock().unwrap().push(request);
        }
    }
}
