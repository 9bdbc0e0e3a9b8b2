//! The console: where COM1's output goes ([`serial_output`]) and stdin into
//! COM1 ([`ConsoleInput`]), with QEMU's Ctrl-A escapes on a terminal.
//!
//! Input never outruns the UART: when its 64-byte FIFO is full the rest is
//! held back and stdin is taken off the event loop until the guest has read
//! the FIFO empty, so nothing typed or piped is dropped.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use ember_devices::legacy::{SerialDevice, SerialOutput};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{SerialConfig, SharedWriter};
use crate::error::Error;
use crate::exit::{ExitSignal, VmExit};
use crate::sync::lock;

/// Where COM1's output goes for `serial`, and whether stdin feeds its input
/// (only for [`SerialConfig::Stdio`]).
pub(crate) fn serial_output(serial: &SerialConfig) -> Result<(SerialOutput, bool), Error> {
    Ok(match serial {
        SerialConfig::Stdio => (Box::new(Stdout), true),
        SerialConfig::File(p) => {
            let f = File::create(p).map_err(|source| Error::SerialFile { path: p.clone(), source })?;
            (Box::new(f), false)
        }
        SerialConfig::Capture(c) => (Box::new(c.clone()), false),
        SerialConfig::Writer(w) => (Box::new(Shared(w.clone())), false),
        SerialConfig::None => (Box::new(Sink), false),
    })
}

/// Writes to stdout with no buffering in between.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: writes from a valid buffer to fd 1.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Forwards to a writer shared with the caller.
struct Shared(SharedWriter);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0).flush()
    }
}

/// Discards everything.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const CTRL_A: u8 = 0x01;

/// What the escape filter made of the input.
#[derive(Debug, PartialEq, Eq)]
enum Filtered {
    /// Bytes for the guest.
    Bytes(Vec<u8>),
    /// The user asked to quit (Ctrl-A x); bytes before it still go in.
    Quit(Vec<u8>),
}

/// QEMU-style escapes: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, and
/// Ctrl-A followed by anything else is dropped.
#[derive(Default)]
struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    fn filter(&mut self, input: &[u8]) -> Filtered {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return Filtered::Quit(out),
                    CTRL_A => out.push(CTRL_A),
                    _ => {}
                }
            } else if b == CTRL_A {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        Filtered::Bytes(out)
    }
}

/// Reads stdin (or any fd) into the UART.
pub(crate) struct ConsoleInput {
    input: RawFd,
    escapes: Option<EscapeFilter>,
    serial: Arc<Mutex<SerialDevice>>,
    input_ready: EventFd,
    exit: Arc<ExitSignal>,
    pending: Vec<u8>,
    listening: bool,
    eof: bool,
}

impl ConsoleInput {
    /// Feeds `input` into `serial`. `escapes` turns on Ctrl-A handling (for
    /// a terminal). `input_ready` must be the eventfd the UART signals when
    /// its receive FIFO empties.
    pub(crate) fn new(
        input: RawFd,
        escapes: bool,
        serial: Arc<Mutex<SerialDevice>>,
        input_ready: EventFd,
        exit: Arc<ExitSignal>,
    ) -> Self {
        ConsoleInput {
            input,
            escapes: escapes.then(EscapeFilter::default),
            serial,
            input_ready,
            exit,
            pending: Vec::new(),
            listening: false,
            eof: false,
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = lock(&self.serial).enqueue_input(&self.pending);
        self.pending.drain(..n);
    }

    fn set_listening(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.listening {
            return;
        }
        let ev = Events::new_raw(self.input, EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.listening = on,
            Err(e) => {
                log::debug!("console input fd {} not pollable ({e:?}); input disabled", self.input);
                self.eof = true;
                self.listening = false;
            }
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: fd is owned by the process for its lifetime (stdin).
        let mut f = std::mem::ManuallyDrop::new(unsafe {
            <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(self.input)
        });
        match f.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                self.set_listening(ops, false);
            }
            Ok(n) => {
                let filtered = match &mut self.escapes {
                    Some(esc) => esc.filter(&buf[..n]),
                    None => Filtered::Bytes(buf[..n].to_vec()),
                };
                match filtered {
                    Filtered::Bytes(b) => self.pending.extend_from_slice(&b),
                    Filtered::Quit(b) => {
                        self.pending.extend_from_slice(&b);
                        self.flush_pending();
                        self.exit.request(VmExit::ConsoleQuit);
                        return;
                    }
                }
                self.flush_pending();
                if !self.pending.is_empty() {
                    self.set_listening(ops, false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("console input failed, disabling it: {e}");
                self.eof = true;
                self.set_listening(ops, false);
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_ready, EventSet::IN)) {
            log::warn!("console input disabled: {e:?}");
            return;
        }
        self.set_listening(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_ready.as_raw_fd() {
            let _ = self.input_ready.read();
            self.flush_pending();
            if self.pending.is_empty() && !self.eof {
                self.set_listening(ops, true);
            }
        } else if events.fd() == self.input {
            if events.event_set().contains(EventSet::IN) {
                self.read_input(ops);
            } else if events.event_set().intersects(EventSet::HANG_UP | EventSet::ERROR) {
                self.eof = true;
                self.set_listening(ops, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"abc"), Filtered::Bytes(b"abc".to_vec()));
        assert_eq!(f.filter(b"a\x01\x01b"), Filtered::Bytes(b"a\x01b".to_vec()));
        assert_eq!(f.filter(b"a\x01"), Filtered::Bytes(b"a".to_vec()));
        assert_eq!(f.filter(b"xyz"), Filtered::Quit(vec![]));
        assert_eq!(f.filter(b"q\x01cq"), Filtered::Bytes(b"qq".to_vec()));
        assert_eq!(f.filter(b"hi\x01X"), Filtered::Quit(b"hi".to_vec()));
    }
}
