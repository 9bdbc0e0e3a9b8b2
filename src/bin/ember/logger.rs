//! A minimal stderr logger: `ember: <level>: <message>`, one write per
//! line (a ten-line logger instead of env_logger keeps the binary small
//! and start-up fast; docs/architecture.md).

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // One write per line so lines from threads do not interleave.
            let line = format!("ember: {}: {}\r\n", r.level().as_str().to_ascii_lowercase(), r.args());
            // SAFETY: writes from a valid buffer to fd 2.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
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
