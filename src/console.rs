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
        SerialConfig::Stdio => (Box::new(Stdout::new(1)), true),
        SerialConfig::File(p) => {
            let f = File::create(p).map_err(|source| Error::SerialFile { path: p.clone(), source })?;
            (Box::new(f), false)
        }
        SerialConfig::Capture(c) => (Box::new(c.clone()), false),
        SerialConfig::Writer(w) => (Box::new(Shared(w.clone())), false),
        SerialConfig::None => (Box::new(Sink), false),
    })
}

/// How long one console write waits for a reader that does not read
/// before stdout counts as stalled.
const STALL_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes to stdout with no buffering in between, and never blocks for
/// long: a vCPU writes the console while holding the serial lock, and a
/// reader that stopped reading (a pipe into a stopped process, a terminal
/// on XOFF) must not hold the vCPU, and with it the VM's shutdown, forever.
///
/// A pipe, FIFO or terminal is reopened non-blocking through
/// `/proc/self/fd` (a new open file description, so the shell's stays as
/// it was). A write that finds it full waits up to [`STALL_GRACE`]; then
/// stdout is stalled and output is dropped (counted, and reported when the
/// VM ends) until a write goes through again. Regular files never stall;
/// other kinds (a socket) are written blocking, as before.
struct Stdout {
    fd: RawFd,
    /// The non-blocking reopened description, when there is one.
    _file: Option<File>,
    stalled: bool,
    dropped: u64,
}

impl Stdout {
    fn new(fd: RawFd) -> Self {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let reopened = (|| {
            let path = format!("/proc/self/fd/{fd}");
            let kind = std::fs::metadata(&path).ok()?.file_type();
            if !(kind.is_fifo() || kind.is_char_device()) {
                return None;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(&path)
                .ok()
        })();
        match reopened {
            Some(f) => Stdout { fd: f.as_raw_fd(), _file: Some(f), stalled: false, dropped: 0 },
            None => Stdout { fd, _file: None, stalled: false, dropped: 0 },
        }
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        let mut waited = std::time::Duration::ZERO;
        while done < buf.len() {
            let rest = &buf[done..];
            // SAFETY: writes from a valid buffer to an fd this owns (or 1).
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n >= 0 {
                done += n as usize;
                self.stalled = false;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if !self.stalled && waited < STALL_GRACE => {
                    let step = std::time::Duration::from_millis(2);
                    std::thread::sleep(step);
                    waited += step;
                }
                io::ErrorKind::WouldBlock => {
                    self.stalled = true;
                    self.dropped += rest.len() as u64;
                    return Ok(buf.len());
                }
                _ if done > 0 => break,
                _ => return Err(e),
            }
        }
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        if self.dropped > 0 {
            log::warn!("console: {} bytes of guest output dropped: stdout was not being read", self.dropped);
        }
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

    /// Issue 16 item 10: a reader that stopped reading kept a vCPU in
    /// `write` forever (holding the serial lock, so shutdown waited too).
    /// The writes now return; what did not fit is counted as dropped, and
    /// output resumes once the reader reads again.
    #[test]
    fn a_stalled_stdout_reader_does_not_block_writes() {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = (fds[0], fds[1]);
        let mut out = Stdout::new(w);
        assert!(out._file.is_some(), "a pipe is reopened non-blocking");
        // Blocking as the shell left it.
        // SAFETY: F_GETFL on an fd this test owns.
        assert_eq!(unsafe { libc::fcntl(w, libc::F_GETFL) } & libc::O_NONBLOCK, 0);
        let chunk = [b'x'; 4096];
        for _ in 0..64 {
            // More than the pipe holds (64 KiB), with nobody reading.
            out.write_all(&chunk).unwrap();
        }
        assert!(out.stalled);
        let dropped = out.dropped;
        assert!(dropped > 0);
        // The reader comes back: output goes through again.
        let mut buf = vec![0u8; 1 << 20];
        // SAFETY: reads into a buffer of that length.
        let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0);
        out.write_all(b"again").unwrap();
        assert!(!out.stalled);
        assert_eq!(out.dropped, dropped);
        drop(out);
        // SAFETY: closing fds this test owns.
        unsafe {
            libc::close(w);
            libc::close(r);
        }
    }

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
