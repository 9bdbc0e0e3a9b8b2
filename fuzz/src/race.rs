//! What the concurrent targets (`blk_race`, `net_race`) measure per
//! notification: the serving thread's CPU time, the bytes it moved through
//! read/write system calls, and the log records it made.

use std::cell::Cell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, Once, OnceLock};
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

/// Bytes this thread moved through read/write-family system calls:
/// `rchar + wchar` of `/proc/thread-self/io`, read through a descriptor
/// the thread keeps (each read at offset 0 makes the kernel generate the
/// file afresh), so a measure costs one `pread` instead of an open, reads
/// into a growing string and a close.
pub fn thread_io() -> u64 {
    thread_local! {
        static IO: File = File::open("/proc/thread-self/io").expect("/proc/thread-self/io");
    }
    let mut buf = [0u8; 1024];
    let mut len = 0;
    IO.with(|f| loop {
        let n = f.read_at(&mut buf[len..], len as u64).expect("/proc/thread-self/io");
        if n == 0 {
            break;
        }
        len += n;
        assert!(len < buf.len(), "/proc/thread-self/io longer than {} bytes", buf.len());
    });
    let io = std::str::from_utf8(&buf[..len]).expect("/proc/thread-self/io");
    let field = |name: &str| -> u64 {
        io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    field("rchar:") + field("wchar:")
}

/// One step of the hostile vCPU, repeated without pause during a race.
pub type Step = Box<dyn Fn() + Send>;

/// The hostile vCPU: one thread per process, parked between races (so it
/// touches nothing outside them), instead of a thread spawned per input.
struct Vcpu {
    /// The thread's id, for its CPU affinity.
    tid: libc::pid_t,
    /// The step of the race under way; `None` while parked.
    job: Mutex<Option<Step>>,
    /// Signalled when a race starts.
    start: Condvar,
    /// Set by the hostile thread once it has made the first step of the
    /// race under way.
    running: AtomicBool,
    /// Set by the serving side to end the race under way.
    stop: AtomicBool,
    /// Races finished by the hostile thread (it has stopped writing).
    done: Mutex<u64>,
    /// Signalled when `done` moves.
    finished: Condvar,
}

fn vcpu() -> &'static Vcpu {
    static VCPU: OnceLock<&'static Vcpu> = OnceLock::new();
    VCPU.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Vcpu>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("hostile-vcpu".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid_tx.send(unsafe { libc::gettid() }).unwrap();
                let v = rx.recv().unwrap();
                loop {
                    let step = {
                        let mut job = v.job.lock().unwrap();
                        loop {
                            if let Some(step) = job.take() {
                                break step;
                            }
                            job = v.start.wait(job).unwrap();
                        }
                    };
                    step();
                    v.running.store(true, Ordering::Release);
                    while !v.stop.load(Ordering::Acquire) {
                        step();
                        std::hint::spin_loop();
                    }
                    drop(step);
                    *v.done.lock().unwrap() += 1;
                    v.finished.notify_all();
                }
            })
            .expect("hostile vCPU thread");
        let v: &'static Vcpu = Box::leak(Box::new(Vcpu {
            tid: tid_rx.recv().unwrap(),
            job: Mutex::new(None),
            start: Condvar::new(),
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            done: Mutex::new(0),
            finished: Condvar::new(),
        }));
        tx.send(v).unwrap();
        v
    })
}

/// Keeps the hostile thread off the CPU this thread runs on (when there is
/// another one it may use), so that it is woken on another CPU and the two
/// really run at once, as a freshly spawned thread would on an idle CPU.
fn keep_apart(v: &Vcpu) {
    // SAFETY: sched_getcpu has no preconditions.
    let here = unsafe { libc::sched_getcpu() };
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity of this thread into a set of the right size.
    if here < 0 || unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return;
    }
    // SAFETY: CPU_ISSET/CPU_CLR/CPU_COUNT on a valid set.
    unsafe {
        if libc::CPU_ISSET(here as usize, &set) && libc::CPU_COUNT(&set) > 1 {
            libc::CPU_CLR(here as usize, &mut set);
        }
        libc::sched_setaffinity(v.tid, std::mem::size_of_val(&set), &set);
    }
}

/// Runs `serve` on this thread while the hostile vCPU thread repeats `step`
/// without pause; returns once `serve` has returned and the hostile thread
/// has stopped (as a scoped thread's join would). `serve` starts once the
/// hostile thread has made its first step, so every notification is raced
/// (a thread spawned per input often started only after the last one).
pub fn race<R>(step: Step, serve: impl FnOnce() -> R) -> R {
    let v = vcpu();
    keep_apart(v);
    let before = *v.done.lock().unwrap();
    v.stop.store(false, Ordering::Release);
    v.running.store(false, Ordering::Release);
    *v.job.lock().unwrap() = Some(step);
    v.start.notify_one();
    while !v.running.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    let out = serve();
    v.stop.store(true, Ordering::Release);
    let mut done = v.done.lock().unwrap();
    while *done == before {
        done = v.finished.wait(done).unwrap();
    }
    out
}
