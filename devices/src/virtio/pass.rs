//! What one pass over a queue may do before it hands the event loop back.
//!
//! A driver notification (or a readable backend fd) makes a device serve a
//! queue on the event-loop thread, which also serves every other device,
//! the console input and the exit request. A hostile driver can make one
//! pass arbitrarily long: chains that keep coming (a vCPU moving
//! `avail.idx` while the device works), requests whose buffers alias the
//! same guest pages (1 GiB read into 16 MiB of RAM), full rings of the
//! largest requests. So every pass is bounded three ways, whichever comes
//! first:
//!
//! * [`MAX_PASS_CHAINS`] chains taken off the available ring (good or
//!   malformed);
//! * [`MAX_PASS_BYTES`] bytes moved between the host (disk image, TAP) and
//!   guest memory — checked before each chain, so a pass moves less than
//!   `MAX_PASS_BYTES` plus one chain's worth;
//! * [`MAX_PASS_TIME`] on the coarse monotonic clock (~10 ns per reading,
//!   against ~80 ns for a precise one on the PVM hosts ember is developed
//!   on): a pass stops once the clock moved *more* than that, so it lasts
//!   at least `MAX_PASS_TIME` of real time before it stops on time, and at
//!   most that plus one clock tick (1-4 ms) and one chain.
//!
//! A pass that stops on its budget with work left tells the transport
//! ([`VirtioDevice::take_unfinished`](super::VirtioDevice::take_unfinished)),
//! which signals the queue's own notification eventfd: the event loop
//! serves whatever else is ready and then comes back to the queue. Nothing
//! is dropped and no driver notification is needed.

#[cfg(test)]
use std::cell::Cell;
use std::time::Duration;

/// Chains one pass may take off the available ring.
pub const MAX_PASS_CHAINS: u32 = 256;
/// Bytes one pass may move before it stops taking chains.
pub const MAX_PASS_BYTES: u64 = 16 << 20;
/// Time one pass may run before it stops taking chains (coarse clock).
pub const MAX_PASS_TIME: Duration = Duration::from_millis(4);

/// The coarse monotonic clock in nanoseconds.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; the coarse
    // monotonic clock exists on every Linux since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The time budget in nanoseconds.
#[cfg(not(test))]
fn time_budget_ns() -> u64 {
    MAX_PASS_TIME.as_nanos() as u64
}

#[cfg(test)]
thread_local! {
    /// Unit tests of other behaviour must not stop a pass because a loaded
    /// machine preempted the test: no time budget unless a test sets one.
    static TIME_BUDGET_NS: Cell<u64> = const { Cell::new(u64::MAX) };
}

#[cfg(test)]
fn time_budget_ns() -> u64 {
    TIME_BUDGET_NS.with(Cell::get)
}

/// Sets the time budget of passes on this thread (unit tests only).
#[cfg(test)]
fn set_time_budget(d: Duration) {
    TIME_BUDGET_NS.with(|t| t.set(d.as_nanos() as u64));
}

/// The budget of one pass: chains taken, bytes moved, time spent.
#[derive(Debug)]
pub(crate) struct PassBudget {
    start_ns: u64,
    chains: u32,
    bytes: u64,
}

impl PassBudget {
    /// A fresh budget; the clock starts now.
    pub(crate) fn start() -> Self {
        PassBudget { start_ns: coarse_now_ns(), chains: 0, bytes: 0 }
    }

    /// Counts one chain taken off the ring that made the host move `bytes`.
    #[inline]
    pub(crate) fn charge(&mut self, bytes: u64) {
        self.chains += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Whether the pass must stop before taking another chain.
    #[inline]
    pub(crate) fn spent(&self) -> bool {
        self.chains >= MAX_PASS_CHAINS
            || self.bytes >= MAX_PASS_BYTES
            || coarse_now_ns().saturating_sub(self.start_ns) > time_budget_ns()
    }

    /// Chains taken so far.
    #[cfg(test)]
    pub(crate) fn chains(&self) -> u32 {
        self.chains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_on_chains_or_bytes() {
        // Whether time ran out depends on the machine; chains and bytes
        // end a pass whatever the clock says.
        let mut b = PassBudget::start();
        for _ in 0..MAX_PASS_CHAINS {
            b.charge(0);
        }
        assert!(b.spent());
        assert_eq!(b.chains(), MAX_PASS_CHAINS);

        let mut b = PassBudget::start();
        b.charge(MAX_PASS_BYTES - 1);
        b.charge(1);
        assert!(b.spent());
    }

    #[test]
    fn ends_by_time() {
        set_time_budget(MAX_PASS_TIME);
        let long_ago = coarse_now_ns().saturating_sub(MAX_PASS_TIME.as_nanos() as u64 + 1);
        assert!(PassBudget { start_ns: long_ago, chains: 0, bytes: 0 }.spent());
        // A clock that has not moved more than the budget does not end it.
        let b = PassBudget { start_ns: u64::MAX, chains: 0, bytes: 0 };
        assert!(!b.spent());
    }
}
