//! The VM's one event loop: epoll over device eventfds, the TAP fds and
//! stdin, on a thread of its own, until the VM's exit signal fires.
//!
//! Between two passes the loop reads the VM's [`RunControl`]: on a pause
//! it parks, so no queue or backend is served while the VM is paused.
//! What arrives meanwhile (a queue notification, a frame on the TAP)
//! stays readable in epoll, level-triggered, and is served after resume.
//!
//! The loop can also run one errand some time after it starts
//! ([`EventLoop::with_errand`]): work that must not compete with the
//! guest's first instructions for the host's cores (giving back the code
//! pages, `code_pages`).

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::run_control::{RunControl, RunRequest};

/// Anything the loop serves.
pub(crate) type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Ends the loop when the VM's exit eventfd fires.
struct ExitWatcher {
    evt: EventFd,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop cannot watch the exit eventfd: {e:?}");
            self.done.store(true, Ordering::SeqCst);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.evt.as_raw_fd() {
            self.done.store(true, Ordering::SeqCst);
        }
    }
}

/// Wakes the loop when the VMM has a request for it (a pause): the
/// eventfd's count is consumed, the request is read between passes.
struct WakeWatcher {
    evt: EventFd,
}

impl MutEventSubscriber for WakeWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop cannot watch its wake-up eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
    }
}

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll or eventfd setup failed.
    #[error("event loop setup failed: {0:?}")]
    Setup(event_manager::Error),
    /// Duplicating the exit eventfd failed.
    #[error("event loop setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Work the loop does once, a while after it starts.
type Errand = (Duration, Box<dyn FnOnce() + Send>);

/// A loop ready to run on its own thread.
pub(crate) struct EventLoop {
    manager: EventManager<Subscriber>,
    done: Arc<AtomicBool>,
    control: Arc<RunControl>,
    errand: Option<Errand>,
}

impl EventLoop {
    /// A loop that ends once `exit_evt` (the VM's exit eventfd) is readable,
    /// and reads `control` whenever `wake_evt` is written.
    pub(crate) fn new(
        exit_evt: &EventFd,
        wake_evt: &EventFd,
        control: Arc<RunControl>,
        subscribers: Vec<Subscriber>,
    ) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Setup)?;
        let done = Arc::new(AtomicBool::new(false));
        let watcher = ExitWatcher { evt: exit_evt.try_clone()?, done: done.clone() };
        manager.add_subscriber(Arc::new(Mutex::new(watcher)));
        manager.add_subscriber(Arc::new(Mutex::new(WakeWatcher { evt: wake_evt.try_clone()? })));
        for s in subscribers {
            manager.add_subscriber(s);
        }
        Ok(EventLoop { manager, done, control, errand: None })
    }

    /// Runs `f` on the loop's thread once, at its first pass at least
    /// `after` past the start of [`EventLoop::run`] (at the latest, `after`
    /// plus one pass: the loop's wait times out then).
    pub(crate) fn with_errand(mut self, after: Duration, f: impl FnOnce() + Send + 'static) -> Self {
        self.errand = Some((after, Box::new(f)));
        self
    }

    /// Serves events until the exit eventfd fires or the VMM asks the loop
    /// to stop; parks while the VM is paused.
    pub(crate) fn run(mut self) {
        let mut errand = self.errand.take().map(|(after, f)| (Instant::now() + after, f));
        while !self.done.load(Ordering::SeqCst) {
            let timeout = match &errand {
                // Rounded up, so the wait does not end just short of it.
                Some((at, _)) => at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000) as i32,
                None => -1,
            };
            if let Err(e) = self.manager.run_with_timeout(timeout) {
                log::error!("event loop failed: {e:?}");
                break;
            }
            if errand.as_ref().is_some_and(|(at, _)| Instant::now() >= *at) {
                if let Some((_, f)) = errand.take() {
                    f();
                }
            }
            match self.control.request() {
                RunRequest::Run => {}
                RunRequest::Pause => {
                    // Errands are the vCPUs' (snapshots): park again
                    // until resumed or stopped.
                    let mut r = RunRequest::Pause;
                    while r == RunRequest::Pause {
                        r = self.control.park(self.control.errands());
                    }
                    if r == RunRequest::Stop {
                        break;
                    }
                }
                RunRequest::Stop => break,
            }
        }
        self.control.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A device stand-in: counts what its eventfd delivered.
    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicU64>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }

        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            if let Ok(n) = self.evt.read() {
                self.seen.fetch_add(n, Ordering::SeqCst);
            }
        }
    }

    fn eventfd() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    fn wait_until(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// The errand runs once, not before its time, with no event to wake
    /// the loop; events meanwhile are served as usual.
    #[test]
    fn the_errand_runs_once_after_its_delay() {
        let (exit, wake, notify) = (eventfd(), eventfd(), eventfd());
        let seen = Arc::new(AtomicU64::new(0));
        let device: Subscriber = Arc::new(Mutex::new(Counter { evt: notify.try_clone().unwrap(), seen: seen.clone() }));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let r = ran.clone();
        let start = Instant::now();
        let ev = EventLoop::new(&exit, &wake, Arc::new(RunControl::new(1)), vec![device])
            .unwrap()
            .with_errand(Duration::from_millis(150), move || r.lock().unwrap().push(start.elapsed()));
        let t = std::thread::spawn(move || ev.run());
        notify.write(1).unwrap();
        assert!(wait_until(|| seen.load(Ordering::SeqCst) == 1));
        assert!(wait_until(|| !ran.lock().unwrap().is_empty()), "the errand never ran");
        notify.write(1).unwrap();
        assert!(wait_until(|| seen.load(Ordering::SeqCst) == 2));
        exit.write(1).unwrap();
        t.join().unwrap();
        let ran = ran.lock().unwrap();
        assert_eq!(ran.len(), 1);
        assert!(ran[0] >= Duration::from_millis(150), "ran after {:?}", ran[0]);
    }

    #[test]
    fn a_paused_loop_serves_nothing_and_serves_everything_after_resume() {
        let (exit, wake, notify) = (eventfd(), eventfd(), eventfd());
        let seen = Arc::new(AtomicU64::new(0));
        let control = Arc::new(RunControl::new(1));
        let device: Subscriber = Arc::new(Mutex::new(Counter { evt: notify.try_clone().unwrap(), seen: seen.clone() }));
        let ev = EventLoop::new(&exit, &wake, control.clone(), vec![device]).unwrap();
        let t = std::thread::spawn(move || ev.run());

        notify.write(1).unwrap();
        assert!(wait_until(|| seen.load(Ordering::SeqCst) == 1));
        control.pause(&|| wake.write(1).unwrap(), Duration::from_secs(10)).unwrap();
        // Notifications while paused wait in epoll.
        for _ in 0..5 {
            notify.write(1).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the loop served a queue while paused");
        control.resume().unwrap();
        assert!(wait_until(|| seen.load(Ordering::SeqCst) == 6), "seen {}", seen.load(Ordering::SeqCst));

        // The exit eventfd ends the loop; so does a stop while paused.
        exit.write(1).unwrap();
        t.join().unwrap();
        let exit2 = eventfd();
        let control = Arc::new(RunControl::new(1));
        let ev = EventLoop::new(&exit2, &wake, control.clone(), vec![]).unwrap();
        let t = std::thread::spawn(move || ev.run());
        control.pause(&|| wake.write(1).unwrap(), Duration::from_secs(10)).unwrap();
        control.stop();
        t.join().unwrap();
    }
}
