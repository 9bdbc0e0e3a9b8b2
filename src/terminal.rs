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

/// The signals that end ember, handled by the thread that started the VM.
const TERMINATION_SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Blocks SIGTERM, SIGINT, SIGHUP and SIGQUIT on the calling thread, so the
/// kernel delivers them to the thread that started the VM (or the
/// embedding program's own) and never to a vCPU or the event loop: one
/// thread handles them, whatever the others are doing.
pub(crate) fn block_termination_signals() {
    // SAFETY: builds a signal set on the stack and changes this thread's
    // mask; no memory is shared.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for sig in TERMINATION_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Restores the terminal before the process dies of SIGTERM, SIGINT,
/// SIGHUP or SIGQUIT, or panics. For binaries; a library embedding ember
/// keeps its own signal policy.
pub(crate) fn restore_on_fatal_signals() {
    for sig in TERMINATION_SIGNALS {
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

    /// Issue 16 item 10: SIGTERM/SIGINT could land on any thread (a vCPU
    /// in KVM_RUN, the event loop); ember's threads now block them.
    #[test]
    fn vm_threads_block_termination_signals() {
        let blocked = std::thread::spawn(|| {
            block_termination_signals();
            let mut cur = MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: reads this thread's mask into a valid set.
            unsafe {
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), cur.as_mut_ptr());
                TERMINATION_SIGNALS.map(|s| libc::sigismember(cur.as_ptr(), s) == 1)
            }
        })
        .join()
        .unwrap();
        assert_eq!(blocked, [true; 4]);
        // The vCPU and event-loop threads call it first thing.
        let vm = include_str!("vm.rs");
        assert_eq!(vm.matches("crate::terminal::block_termination_signals();").count(), 2);
    }

    fn nix_pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }
}
