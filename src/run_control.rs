//! What the VMM asks of the threads that run a VM (every vCPU thread and
//! the event loop): run, pause, or stop. Each member thread reads the
//! request between two pieces of work (a vCPU before every entry into the
//! guest, the event loop between two passes); on a pause it *parks*,
//! blocked outside `KVM_RUN` and outside every device, until it is resumed
//! or stopped. [`RunControl::pause`] returns only once every member has
//! parked, so when it succeeds no guest instruction runs and no virtqueue
//! or backend is served.
//!
//! Waking a member that is blocked elsewhere (a vCPU inside `KVM_RUN`, the
//! event loop in `epoll_wait`) is the caller's part: `pause` calls the
//! `kick` it is given until every member has parked.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::{lock, wait, wait_timeout};

/// What a member thread is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunRequest {
    /// Go on.
    Run,
    /// Park until resumed or stopped ([`RunControl::park`]).
    Pause,
    /// Return: the VM is ending.
    Stop,
}

impl RunRequest {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => RunRequest::Run,
            1 => RunRequest::Pause,
            _ => RunRequest::Stop,
        }
    }
}

/// Why a pause did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// The VM has ended (or is ending): there is nothing to pause or resume.
    #[error("the VM has ended")]
    Ended,
    /// Some threads did not park in time (a vCPU blocked in a device, e.g.
    /// writing the console to a full pipe); the VM was left running.
    #[error("only {parked} of {members} VM threads stopped within {waited:?}; the VM keeps running")]
    Timeout {
        /// Threads that had parked.
        parked: usize,
        /// Threads of the VM.
        members: usize,
        /// How long the pause waited.
        waited: Duration,
    },
}

#[derive(Debug)]
struct State {
    /// Member threads still running their loop.
    members: usize,
    /// Members parked now.
    parked: usize,
}

/// The shared request and the parking place of one VM's threads.
#[derive(Debug)]
pub(crate) struct RunControl {
    /// The request, readable without the lock (vCPUs read it before every
    /// guest entry). Changed only under `state`'s lock.
    request: AtomicU8,
    state: Mutex<State>,
    /// Members wait here while parked; `pause` waits here for them.
    cv: Condvar,
    /// One pause or resume at a time.
    transition: Mutex<()>,
    /// Counts errands sent to the parked members ([`RunControl::send_errand`]):
    /// a parked member wakes when it changes, does its part, and parks
    /// again.
    errands: AtomicU64,
}

impl RunControl {
    /// A control for `members` threads, asking them to run.
    pub(crate) fn new(members: usize) -> Self {
        RunControl {
            request: AtomicU8::new(RunRequest::Run as u8),
            state: Mutex::new(State { members, parked: 0 }),
            cv: Condvar::new(),
            transition: Mutex::new(()),
            errands: AtomicU64::new(0),
        }
    }

    /// A control for `members` threads, asking them to park at once (a VM
    /// that starts paused).
    pub(crate) fn paused(members: usize) -> Self {
        let c = RunControl::new(members);
        c.set(RunRequest::Pause);
        c
    }

    /// How many errands have been sent: a member that saw a different
    /// count last has one to do.
    pub(crate) fn errands(&self) -> u64 {
        self.errands.load(Ordering::SeqCst)
    }

    /// Wakes every parked member for an errand (they see
    /// [`RunControl::errands`] change, do their part and park again). Only
    /// while paused: fails with [`PauseError::Ended`] once the VM ends, and
    /// is refused (`false`) when the VM is not paused.
    pub(crate) fn send_errand(&self) -> Result<bool, PauseError> {
        let s = lock(&self.state);
        match self.request() {
            RunRequest::Stop => Err(PauseError::Ended),
            RunRequest::Pause if s.parked == s.members => {
                self.errands.fetch_add(1, Ordering::SeqCst);
                self.cv.notify_all();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// What is asked now.
    pub(crate) fn request(&self) -> RunRequest {
        RunRequest::from_u8(self.request.load(Ordering::SeqCst))
    }

    fn set(&self, r: RunRequest) {
        self.request.store(r as u8, Ordering::SeqCst);
    }

    /// Called by a member that saw [`RunRequest::Pause`]: blocks until the
    /// request is no longer `Pause` or an errand arrives (the errand count
    /// differs from `seen`), and returns the request.
    pub(crate) fn park(&self, seen: u64) -> RunRequest {
        let mut s = lock(&self.state);
        s.parked += 1;
        self.cv.notify_all();
        while self.request() == RunRequest::Pause && self.errands() == seen {
            s = wait(&self.cv, s);
        }
        s.parked -= 1;
        self.request()
    }

    /// Called by a member thread when it leaves its loop for good.
    pub(crate) fn leave(&self) {
        let mut s = lock(&self.state);
        s.members = s.members.saturating_sub(1);
        self.cv.notify_all();
    }

    /// Asks every member to return from its loop (and wakes the parked).
    pub(crate) fn stop(&self) {
        let _s = lock(&self.state);
        self.set(RunRequest::Stop);
        self.cv.notify_all();
    }

    /// Whether the members are asked to stay parked.
    pub(crate) fn is_paused(&self) -> bool {
        self.request() == RunRequest::Pause
    }

    /// Asks every member to park and returns once all have. `kick` wakes
    /// members blocked elsewhere; it is called at once and then every
    /// `kick_every` until they have parked. After `timeout` the pause is
    /// undone. Pausing a paused VM succeeds at once.
    pub(crate) fn pause(&self, kick: &dyn Fn(), timeout: Duration) -> Result<(), PauseError> {
        const KICK_EVERY: Duration = Duration::from_millis(20);
        let _t = lock(&self.transition);
        let start = Instant::now();
        let mut s = lock(&self.state);
        match self.request() {
            RunRequest::Stop => return Err(PauseError::Ended),
            RunRequest::Pause if s.parked == s.members => return Ok(()),
            _ => self.set(RunRequest::Pause),
        }
        loop {
            drop(s);
            kick();
            s = lock(&self.state);
            let next_kick = Instant::now() + KICK_EVERY;
            while s.parked < s.members && self.request() == RunRequest::Pause && Instant::now() < next_kick {
                s = wait_timeout(&self.cv, s, next_kick.saturating_duration_since(Instant::now()));
            }
            if self.request() == RunRequest::Stop {
                return Err(PauseError::Ended);
            }
            if s.parked == s.members {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                self.set(RunRequest::Run);
                self.cv.notify_all();
                return Err(PauseError::Timeout { parked: s.parked, members: s.members, waited });
            }
        }
    }

    /// Lets the parked members run again. Resuming a running VM succeeds.
    pub(crate) fn resume(&self) -> Result<(), PauseError> {
        let _t = lock(&self.transition);
        let _s = lock(&self.state);
        match self.request() {
            RunRequest::Stop => Err(PauseError::Ended),
            RunRequest::Run => Ok(()),
            RunRequest::Pause => {
                self.set(RunRequest::Run);
                self.cv.notify_all();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Members that count their work and park when asked.
    fn members(n: usize, c: &Arc<RunControl>, work: &Arc<AtomicU64>) -> Vec<std::thread::JoinHandle<()>> {
        (0..n)
            .map(|_| {
                let (c, work) = (c.clone(), work.clone());
                std::thread::spawn(move || loop {
                    match c.request() {
                        RunRequest::Run => {
                            work.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                        }
                        RunRequest::Pause => {
                            if c.park(c.errands()) == RunRequest::Stop {
                                c.leave();
                                return;
                            }
                        }
                        RunRequest::Stop => {
                            c.leave();
                            return;
                        }
                    }
                })
            })
            .collect()
    }

    #[test]
    fn pause_returns_once_every_member_is_parked_and_no_work_is_done_until_resume() {
        let c = Arc::new(RunControl::new(3));
        let work = Arc::new(AtomicU64::new(0));
        let threads = members(3, &c, &work);
        let kicks = AtomicU64::new(0);
        for _ in 0..20 {
            c.pause(&|| _ = kicks.fetch_add(1, Ordering::SeqCst), Duration::from_secs(10)).unwrap();
            assert!(c.is_paused());
            let frozen = work.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(work.load(Ordering::SeqCst), frozen, "a parked member did work");
            // A second pause is a no-op.
            c.pause(&|| {}, Duration::from_secs(1)).unwrap();
            c.resume().unwrap();
            assert!(!c.is_paused());
            let deadline = Instant::now() + Duration::from_secs(10);
            while work.load(Ordering::SeqCst) == frozen && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert!(work.load(Ordering::SeqCst) > frozen, "no work after resume");
        }
        assert!(kicks.load(Ordering::SeqCst) >= 20);
        c.resume().unwrap(); // resuming a running VM is fine
        c.stop();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.pause(&|| {}, Duration::from_secs(1)), Err(PauseError::Ended));
        assert_eq!(c.resume(), Err(PauseError::Ended));
    }

    #[test]
    fn stop_releases_parked_members() {
        let c = Arc::new(RunControl::new(2));
        let work = Arc::new(AtomicU64::new(0));
        let threads = members(2, &c, &work);
        c.pause(&|| {}, Duration::from_secs(10)).unwrap();
        c.stop();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(lock(&c.state).members, 0);
    }

    #[test]
    fn a_member_that_never_parks_times_the_pause_out_and_the_vm_runs_on() {
        // Two members, only one of which exists: the pause cannot complete.
        let c = Arc::new(RunControl::new(2));
        let work = Arc::new(AtomicU64::new(0));
        let threads = members(1, &c, &work);
        let e = c.pause(&|| {}, Duration::from_millis(60)).unwrap_err();
        assert!(matches!(e, PauseError::Timeout { parked: 1, members: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("1 of 2"), "{e}");
        assert!(!c.is_paused());
        c.stop();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn members_that_leave_no_longer_count() {
        let c = Arc::new(RunControl::new(2));
        c.leave();
        let work = Arc::new(AtomicU64::new(0));
        let threads = members(1, &c, &work);
        c.pause(&|| {}, Duration::from_secs(10)).unwrap();
        c.stop();
        for t in threads {
            t.join().unwrap();
        }
    }
}
