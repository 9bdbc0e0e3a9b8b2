//! Raw mode for the console's terminal, restored on every way out.
//!
//! Restoration happens when the [`RawTerminal`] guard drops (normal exits,
//! errors, unwinding panics) and, for a process that calls
//! [`restore_on_fatal_signals`], from SIGTERM/SIGINT/SIGHUP/SIGQUIT handlers
//! and a panic hook.

use std::io;
use std::mem::MaybeUninit;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The settings to put back, readable from a signal handler.
struct Saved {
    set: AtomicBool,
    fd: std::sync::atomic::AtomicI32,
    termios: std::cell::UnsafeCell<MaybeUninit<libc::termios>>,
}

// SAFETY: `termios` is written once before `set` is published (Release) and
// only read after `set` is observed (Acquire).
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved {
    set: AtomicBool::new(false),
    fd: std::sync::atomic::AtomicI32::new(-1),
    termios: std::cell::UnsafeCell::new(MaybeUninit::uninit()),
};

/// Puts the saved settings back, if any. Async-signal safe.
pub(crate) fn restore() {
    if SAVED.set.swap(false, Ordering::AcqRel) {
        // SAFETY: set was true, so termios was initialised; tcsetattr is
        // async-signal safe.
        unsafe {
            libc::tcsetattr(SAVED.fd.load(Ordering::Acquire), libc::TCSANOW, (*SAVED.termios.get()).as_ptr());
        }
    }
}

/// A terminal in raw mode; dropping it restores the previous mode.
pub(crate) struct RawTerminal {
    _private: (),
}

impl RawTerminal {
    /// Puts `fd` in raw mode if it is a terminal; `Ok(None)` if it is not.
    pub(crate) fn enter(fd: RawFd) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: t is a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so t is initialised.
        let orig = unsafe { t.assume_init() };
        if !SAVED.set.load(Ordering::Acquire) {
            // SAFETY: not set, so nobody reads termios concurrently.
            unsafe { (*SAVED.termios.get()).write(orig) };
            SAVED.fd.store(fd, Ordering::Release);
            SAVED.set.store(true, Ordering::Release);
        }
        let mut raw = orig;
        // SAFETY: raw is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd is a terminal; raw is valid.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            let e = io::Error::last_os_error();
            restore();
            return Err(e);
        }
        Ok(Some(RawTerminal { _private: () }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    restore();
    // SAFETY: resetting to the default action and re-raising is the standard
    // way to die "of" the signal after cleaning up.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Restores the terminal before the process dies of SIGTERM, SIGINT,
/// SIGHUP or SIGQUIT, or panics. For binaries; a library embedding ember
/// keeps its own signal policy.
pub(crate) fn restore_on_fatal_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe { libc::signal(sig, on_fatal_signal as *const () as libc::sighandler_t) };
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        prev(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_terminal_is_left_alone() {
        let (r, _w) = nix_pipe();
        assert!(RawTerminal::enter(r).unwrap().is_none());
        restore(); // nothing saved: a no-op
    }

    fn nix_pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }
}
