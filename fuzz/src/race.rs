//! What the concurrent targets (`blk_race`, `net_race`) measure per
//! notification: the serving thread's CPU time, the bytes it moved through
//! read/write system calls, and the log records it made.

use std::cell::Cell;
use std::sync::Once;
use std::time::Duration;

/// CPU time one notification may take.
pub const MAX_KICK_CPU: Duration = Duration::from_millis(50);
/// Slack for the two reads of /proc/thread-self/io around a notification.
pub const PROC_IO_SLACK: u64 = 4096;

thread_local! {
    static LOG_RECORDS: Cell<usize> = const { Cell::new(0) };
}

/// Counts the log records of each thread.
struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        LOG_RECORDS.with(|n| n.set(n.get() + 1));
    }
    fn flush(&self) {}
}

/// Installs the counting logger (once per process) at every level.
pub fn count_logs() {
    static LOGGER: Once = Once::new();
    LOGGER.call_once(|| {
        let _ = log::set_logger(&CountingLogger);
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Log records this thread made so far (with [`count_logs`] installed).
pub fn log_records() -> usize {
    LOG_RECORDS.with(Cell::get)
}

/// This thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Bytes this thread moved through read/write-family system calls.
pub fn thread_io() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    let field = |name: &str| -> u64 {
        io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    field("rchar:") + field("wchar:")
}
