//! A minimal stderr logger: `ember: <level>: <message>`, one write per
//! line (a ten-line logger instead of env_logger keeps the binary small
//! and start-up fast; docs/architecture.md).

use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

struct StderrLogger;

/// Where lines go: stderr until [`log_to`] names a file.
static LOG_FD: AtomicI32 = AtomicI32::new(2);

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // One write per line so lines from threads do not interleave.
            let line = format!("ember: {}: {}\r\n", r.level().as_str().to_ascii_lowercase(), r.args());
            // SAFETY: writes from a valid buffer to stderr or the log file,
            // which stays open for the life of the process.
            unsafe { libc::write(LOG_FD.load(Ordering::Relaxed), line.as_ptr().cast(), line.len()) };
        }
    }

    fn flush(&self) {}
}

/// Sets up logging at `level`.
pub fn init(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Sends log lines to `file` (opened for appending) from now on.
pub fn log_to(file: std::fs::File) {
    // The descriptor is never closed: a line being written elsewhere may
    // still use the previous one.
    LOG_FD.store(file.into_raw_fd(), Ordering::Relaxed);
}
