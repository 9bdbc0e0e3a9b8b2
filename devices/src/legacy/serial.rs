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

/// Where the UART's output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Raises the UART's interrupt line.
struct IrqTrigger(Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Tells the input side that the receive FIFO has room again.
struct InputEvents(Option<EventFd>);

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

/// The COM1 UART (8 registers at offsets 0..8).
pub struct SerialDevice {
    uart: Serial<IrqTrigger, InputEvents, Output>,
}

impl SerialDevice {
    /// Creates the UART. `irq` is its interrupt line (IRQ 4 on a PC);
    /// `input_ready`, if given, is written when the guest empties the
    /// receive FIFO.
    pub fn new(irq: Arc<dyn IrqLine>, out: SerialOutput, input_ready: Option<EventFd>) -> Self {
        SerialDevice {
            uart: Serial::with_events(IrqTrigger(irq), InputEvents(input_ready), Output { out, failed: false }),
        }
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
}
