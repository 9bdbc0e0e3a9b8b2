//! COM1: an 8250 UART on vm-superio's model.
//!
//! Output goes to any writer. Input is pushed in by the VMM's event loop with
//! [`SerialDevice::enqueue_input`]; when the guest has drained the receive
//! FIFO the device signals `input_ready` so the loop can read more.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::interrupt::IrqLine;
use crate::snapshot::RestoreError;

/// Where the UART's output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Raises the UART's interrupt line.
struct IrqTrigger(Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    /// Never fails: a failure is logged, so a register access or a
    /// restore is never cut short by the line.
    fn trigger(&self) -> io::Result<()> {
        if let Err(e) = self.0.trigger() {
            log::warn!("serial: cannot raise the interrupt: {e}");
        }
        Ok(())
    }
}

/// Tells the input side that the receive FIFO has room again.
#[derive(Clone)]
struct InputEvents(Option<Arc<EventFd>>);

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(e) = &self.0 {
            let _ = e.write(1);
        }
    }
}

/// Writes into the real output, remembering the first failure so it is
/// logged once rather than on every byte.
struct Output {
    out: SerialOutput,
    failed: bool,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.failed {
            if let Err(e) = self.out.write_all(buf).and_then(|_| self.out.flush()) {
                log::warn!("serial output failed, dropping further output: {e}");
                self.failed = true;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Uart = Serial<IrqTrigger, InputEvents, Output>;

/// The COM1 UART (8 registers at offsets 0..8).
pub struct SerialDevice {
    uart: Uart,
    /// The interrupt line and input event, kept to rebuild the UART on
    /// restore.
    irq: Arc<dyn IrqLine>,
    events: InputEvents,
}

/// The saved state of the UART: its registers and the receive FIFO's
/// unread bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Bytes the receive FIFO holds.
const FIFO_SIZE: usize = 64;
/// IER bits of a 16550A.
const IER_VALID: u8 = 0x0f;
/// IIR values the model produces: none pending, THR empty, data available,
/// or both.
const IIR_VALID: [u8; 4] = [0x01, 0x02, 0x04, 0x06];
/// LSR: data ready.
const LSR_DATA_READY: u8 = 0x01;
/// LSR: transmitter holding register and transmitter empty (always, in
/// this model).
const LSR_TX_EMPTY: u8 = 0x60;

fn serial_bad(field: &'static str, value: u64, why: &'static str) -> RestoreError {
    RestoreError::Value { device: "serial", field, value, why }
}

impl SerialDevice {
    /// Creates the UART. `irq` is its interrupt line (IRQ 4 on a PC);
    /// `input_ready`, if given, is written when the guest empties the
    /// receive FIFO.
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOutput, input_ready: Option<EventFd>) -> Self {
        let events = InputEvents(input_ready.map(Arc::new));
        SerialDevice {
            uart: Serial::with_events(IrqTrigger(irq.clone()), events.clone(), Output { out, failed: false }),
            irq,
            events,
        }
    }

    /// The registers and the unread input.
    pub fn save_state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Puts saved registers and input back, keeping the output and the
    /// lines; raises the interrupt again if one was pending and enabled.
    /// Refuses values the UART cannot hold (the bad value in the error)
    /// and then changes nothing.
    pub fn restore_state(&mut self, state: &SerialState) -> Result<(), RestoreError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(serial_bad("receive FIFO length", state.in_buffer.len() as u64, "more than 64 bytes"));
        }
        if state.interrupt_enable & !IER_VALID != 0 {
            return Err(serial_bad("IER", state.interrupt_enable.into(), "bits a 16550A does not have"));
        }
        if !IIR_VALID.contains(&state.interrupt_identification) {
            return Err(serial_bad("IIR", state.interrupt_identification.into(), "not a value the UART produces"));
        }
        let ready = if state.in_buffer.is_empty() { 0 } else { LSR_DATA_READY };
        if state.line_status != LSR_TX_EMPTY | ready {
            return Err(serial_bad("LSR", state.line_status.into(), "does not match the receive FIFO"));
        }
        let saved = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let placeholder = Output { out: Box::new(io::sink()), failed: false };
        let old = std::mem::replace(
            &mut self.uart,
            Serial::with_events(IrqTrigger(self.irq.clone()), self.events.clone(), placeholder),
        );
        let out = old.into_writer();
        // The FIFO length is checked above and the trigger never fails, so
        // this cannot fail; if it did, the output would be lost.
        match Serial::from_state(&saved, IrqTrigger(self.irq.clone()), self.events.clone(), out) {
            Ok(uart) => self.uart = uart,
            Err(e) => log::error!("serial: state not restored, output lost: {e:?}"),
        }
        Ok(())
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues bytes for the guest to read; returns how many fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset < 8 {
            if let Some(b) = data.first_mut() {
                *b = self.uart.read(offset as u8);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (true, Some(&v)) = (offset < 8, data.first()) {
            if let Err(e) = self.uart.write(offset as u8, v) {
                log::warn!("serial register write at offset {offset} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingIrq;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_input() {
        let irq = Arc::new(CountingIrq::default());
        let buf = Buf::default();
        let ready = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.clone(), Box::new(buf.clone()), Some(ready.try_clone().unwrap()));
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi");

        // Enable the receive interrupt, then queue input.
        s.write(1, &[1]);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert!(irq.count() >= 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut c = [0u8];
        s.read(0, &mut c);
        assert_eq!(c[0], b'a');
        s.read(0, &mut c);
        assert_eq!(c[0], b'b');
        assert_eq!(ready.read().unwrap(), 1, "input_ready signalled once the FIFO drained");

        // The FIFO holds 64 bytes; the rest is refused, not lost silently.
        let big = [b'x'; 100];
        assert_eq!(s.enqueue_input(&big), 64);
        assert_eq!(s.enqueue_input(&big), 0);
        assert_eq!(s.input_capacity(), 0);

        // Odd accesses are harmless.
        let mut w = [0u8; 4];
        s.read(9, &mut w);
        s.write(12, &[1, 2, 3, 4]);
        s.write(0, &[]);
    }

    #[test]
    fn failing_output_does_not_break_the_guest() {
        /// A writer that always fails, counting the attempts.
        struct Broken(Arc<std::sync::atomic::AtomicUsize>);
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        /// What the guest sees while it writes three bytes with the
        /// transmitter-empty interrupt on: LSR and IIR after each byte, the
        /// interrupts raised, then a byte of input read back.
        fn guest_view(out: SerialOutput) -> (Vec<(u8, u8)>, u64, u8) {
            let irq = Arc::new(CountingIrq::default());
            let mut s = SerialDevice::new(irq.clone(), out, None);
            s.write(1, &[0x02]);
            let mut regs = Vec::new();
            for _ in 0..3 {
                s.write(0, b"x");
                let (mut lsr, mut iir) = ([0u8], [0u8]);
                s.read(5, &mut lsr);
                s.read(2, &mut iir);
                regs.push((lsr[0], iir[0]));
            }
            assert_eq!(s.enqueue_input(b"y"), 1);
            let mut c = [0u8];
            s.read(0, &mut c);
            (regs, irq.count(), c[0])
        }
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let broken = guest_view(Box::new(Broken(attempts.clone())));
        let working = guest_view(Box::new(Buf::default()));
        // The guest cannot tell: same registers, interrupts and input.
        assert_eq!(broken, working);
        // A polling driver does not hang: the transmitter reads empty.
        assert!(broken.0.iter().all(|(lsr, _)| lsr & 0x60 == 0x60), "{:?}", broken.0);
        assert_eq!(broken.2, b'y');
        // The failure is remembered: one attempt, not one per byte.
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn save_restore_round_trip_keeps_input_and_reraises_the_interrupt() {
        let irq = Arc::new(CountingIrq::default());
        let mut s = SerialDevice::new(irq.clone(), Box::new(Buf::default()), None);
        s.write(3, &[0x83]); // DLAB on
        s.write(0, &[0x01]);
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]);
        s.write(1, &[0x01]); // receive interrupt on
        assert_eq!(s.enqueue_input(b"xyz"), 3);
        let saved = s.save_state();
        assert_eq!(saved.in_buffer, b"xyz");

        let irq2 = Arc::new(CountingIrq::default());
        let out = Buf::default();
        let mut fresh = SerialDevice::new(irq2.clone(), Box::new(out.clone()), None);
        fresh.restore_state(&saved).unwrap();
        assert_eq!(fresh.save_state(), saved);
        assert_eq!(irq2.count(), 1, "the pending receive interrupt is raised again");
        let mut c = [0u8];
        fresh.read(0, &mut c);
        assert_eq!(c[0], b'x');
        // The output still goes to the device's writer.
        fresh.write(0, b"!");
        assert_eq!(&*out.0.lock().unwrap(), b"!");
    }

    #[test]
    fn corrupt_serial_states_are_refused_and_change_nothing() {
        let s = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(Buf::default()), None);
        let good = s.save_state();
        type Corrupt = fn(&mut SerialState);
        let cases: [(Corrupt, &str); 4] = [
            (|st| st.in_buffer = vec![0; 65], "0x41"),
            (|st| st.interrupt_enable = 0x10, "IER 0x10"),
            (|st| st.interrupt_identification = 0x08, "IIR 0x8"),
            (|st| st.line_status = 0x61, "LSR 0x61"),
        ];
        for (corrupt, what) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let mut fresh = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(Buf::default()), None);
            let before = fresh.save_state();
            let e = fresh.restore_state(&bad).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
            assert_eq!(fresh.save_state(), before);
        }
    }
}
