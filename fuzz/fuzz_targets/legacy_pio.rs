//! The port I/O space of the PC a guest sees: ember's `Bus` with the
//! legacy devices where ember's VM puts them (COM1 8250 UART at 0x3f8, the
//! i8042 at 0x60-0x64, the CMOS RTC at 0x70-0x71, the debug-exit port at
//! 0xf4, the ACPI sleep registers at 0x600-0x601, the quiet stand-ins on
//! `QUIET_PORT_RANGES`), under arbitrary port accesses and host-side serial
//! input and Ctrl+Alt+Del.
//!
//! Input: operations until the input ends, each an opcode byte (modulo 4):
//!
//! ```text
//! 0  write:  port u16, width u8 (modulo 4: 1, 2, 4, 1), value u32
//! 1  read:   port u16, width u8
//! 2  input:  u8 length, bytes queued as serial input from the host
//!           (a length of 0 sends Ctrl+Alt+Del to the i8042 instead)
//! 3  write8: u8 index into the ports of the real devices, value u8
//! ```
//!
//! Invariants: no panic; a debug-exit request happens exactly on a write
//! to 0xf4-0xf7, with the low byte of the value; a reset request only on
//! an i8042 pulse command with the reset bit low (an even value 0xf0-0xfe
//! to port 0x64) or an output-port value with the reset bit low (port
//! 0x60); a power-off only on a write of SLP_TYP 5 with SLP_EN to 0x600;
//! unclaimed and quiet ports, and the debug-exit port, read as all-ones;
//! the RTC index port reads back the index written (without the NMI bit);
//! the UART emits at most one byte per write, and only for a write to its
//! data register; serial input takes no more than offered; the i8042's
//! queues stay bounded.
#![no_main]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use ember::fuzzing::Bus;
use ember_devices::bus::BusDevice;
use ember_devices::interrupt::CountingIrq;
use ember_devices::legacy::{
    AcpiSleep, Cmos, DebugExit, ExitLine, GuestExitRequest, QuietPorts, SerialDevice, I8042, I8042_QUEUE_LEN,
    QUIET_PORT_RANGES,
};
use ember_fuzz::input::Reader;
use libfuzzer_sys::fuzz_target;

const COM1: u16 = 0x3f8;
const I8042_BASE: u16 = 0x60;
const CMOS: u16 = 0x70;
const DEBUG_EXIT: u16 = 0xf4;
const ACPI_SLEEP: u16 = 0x600;
const MAX_OPS: usize = 4096;
/// Ports of the real devices, for opcode 3.
const DEVICE_PORTS: [u16; 16] =
    [0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x60, 0x64, 0x70, 0x71, 0xf4, 0xf7, 0x600, 0x601];

#[derive(Default)]
struct Exits(Mutex<Vec<GuestExitRequest>>);

impl ExitLine for Exits {
    fn request_exit(&self, request: GuestExitRequest) {
        self.0.lock().unwrap().push(request);
    }
}

#[derive(Clone, Default)]
struct Output(Arc<Mutex<usize>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        *self.0.lock().unwrap() += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_quiet(port: u16) -> bool {
    QUIET_PORT_RANGES.iter().any(|&(b, l)| port >= b && port - b < l)
}

fn claimed(port: u16) -> bool {
    (COM1..COM1 + 8).contains(&port)
        || (I8042_BASE..I8042_BASE + 5).contains(&port)
        || (CMOS..CMOS + 2).contains(&port)
        || (DEBUG_EXIT..DEBUG_EXIT + 4).contains(&port)
        || (ACPI_SLEEP..ACPI_SLEEP + 2).contains(&port)
}

fuzz_target!(|data: &[u8]| {
    let exits = Arc::new(Exits::default());
    let out = Output::default();
    let serial = Arc::new(Mutex::new(SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(out.clone()), None)));
    let mut bus = Bus::new("port I/O");
    bus.insert(u64::from(COM1), 8, serial.clone()).unwrap();
    let i8042 = Arc::new(Mutex::new(I8042::new(
        exits.clone(),
        Arc::new(CountingIrq::default()),
        Arc::new(CountingIrq::default()),
    )));
    bus.insert(u64::from(I8042_BASE), 5, i8042.clone()).unwrap();
    bus.insert(u64::from(ACPI_SLEEP), 2, Arc::new(Mutex::new(AcpiSleep::new(exits.clone(), 5)))).unwrap();
    bus.insert(u64::from(CMOS), 2, Arc::new(Mutex::new(Cmos::new()))).unwrap();
    bus.insert(u64::from(DEBUG_EXIT), 4, Arc::new(Mutex::new(DebugExit::new(exits.clone())))).unwrap();
    let quiet: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(QuietPorts));
    for &(base, len) in QUIET_PORT_RANGES {
        bus.insert(u64::from(base), u64::from(len), quiet.clone()).unwrap();
    }

    let mut cmos_index = 0u8;
    let mut r = Reader::new(data);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 4;
        let (port, width) = match op {
            0 | 1 => (r.u16(), [1usize, 2, 4, 1][usize::from(r.u8() % 4)]),
            3 => (DEVICE_PORTS[usize::from(r.u8()) % DEVICE_PORTS.len()], 1),
            _ => {
                let bytes = r.blob8();
                if bytes.is_empty() {
                    let _ = i8042.lock().unwrap().send_ctrl_alt_del();
                    let st = i8042.lock().unwrap().state().clone();
                    assert!(st.keyboard_queue.len() <= I8042_QUEUE_LEN);
                    continue;
                }
                let mut s = serial.lock().unwrap();
                let room = s.input_capacity();
                let n = s.enqueue_input(bytes);
                assert!(n <= bytes.len() && n <= room, "took {n} of {} bytes, room {room}", bytes.len());
                continue;
            }
        };
        if op == 1 {
            let mut buf = [0x5au8; 4];
            bus.read(u64::from(port), &mut buf[..width]);
            let got = &buf[..width];
            if !claimed(port) || is_quiet(port) || (DEBUG_EXIT..DEBUG_EXIT + 4).contains(&port) {
                // (The ACPI sleep registers read 0: they are claimed.)
                assert!(got.iter().all(|&b| b == 0xff), "read of port {port:#x}: {got:x?}");
            }
            if port == CMOS {
                assert_eq!(got[0], cmos_index, "RTC index port");
            }
            continue;
        }
        let value = if op == 3 { u32::from(r.u8()) } else { r.u32() };
        let bytes = value.to_le_bytes();
        let before_exits = exits.0.lock().unwrap().len();
        let before_out = *out.0.lock().unwrap();
        bus.write(u64::from(port), &bytes[..width]);
        if port == CMOS {
            cmos_index = bytes[0] & 0x7f;
        }
        let new: Vec<_> = exits.0.lock().unwrap()[before_exits..].to_vec();
        if (DEBUG_EXIT..DEBUG_EXIT + 4).contains(&port) {
            assert_eq!(new, [GuestExitRequest::DebugExit(bytes[0])], "write {value:#x} to {port:#x}");
        } else {
            for req in &new {
                match req {
                    GuestExitRequest::Reset => {
                        let pulse = port == 0x64 && bytes[0] >= 0xf0 && bytes[0] & 1 == 0;
                        let outport = port == 0x60 && bytes[0] & 1 == 0;
                        assert!(pulse || outport, "reset on write {value:#x} to {port:#x}");
                    }
                    GuestExitRequest::PowerOff => {
                        assert!(port == ACPI_SLEEP && bytes[0] & 0x3c == 0x34, "power-off on {value:#x} to {port:#x}")
                    }
                    other => panic!("{other:?} on write {value:#x} to {port:#x}"),
                }
            }
            let st = i8042.lock().unwrap().state().clone();
            assert!(st.controller_queue.len() <= I8042_QUEUE_LEN && st.keyboard_queue.len() <= I8042_QUEUE_LEN);
        }
        let emitted = *out.0.lock().unwrap() - before_out;
        assert!(emitted <= 1, "{emitted} bytes out for one write");
        assert!(emitted == 0 || port == COM1, "serial output on a write to {port:#x}");
    }
});
