//! How a VM ends, and the one place the first reason to end is recorded.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ember_devices::legacy::{ExitLine, GuestExitRequest};
use vmm_sys_util::eventfd::EventFd;

use crate::sync::{lock, wait, wait_timeout};

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 reset, `reboot=k`, the ACPI reset
    /// register), or asked KVM for a reset or shutdown.
    Reset,
    /// The guest powered the machine off (ACPI sleep state S5: `poweroff`).
    PowerOff,
    /// The guest wrote this code to the debug-exit port.
    DebugExit(u8),
    /// A [`crate::VmHandle`] stopped the VM.
    Stopped,
    /// The user typed Ctrl-A x on the console.
    ConsoleQuit,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM could not run the guest's code (KVM_EXIT_INTERNAL_ERROR), e.g. an
    /// instruction its emulator lacks.
    InternalError {
        /// Which vCPU.
        vcpu: u8,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Its instruction pointer.
        rip: u64,
        /// KVM's extra data words.
        data: Vec<u64>,
    },
    /// KVM refused to enter the guest (KVM_EXIT_FAIL_ENTRY).
    FailEntry {
        /// Which vCPU.
        vcpu: u8,
        /// The hardware's reason code.
        reason: u64,
    },
    /// A vCPU hit an exit ember does not handle, or KVM_RUN failed.
    VcpuError {
        /// Which vCPU.
        vcpu: u8,
        /// What happened.
        message: String,
    },
    /// One of ember's own threads failed (the event loop, or a thread that
    /// could not install its seccomp filter or be spawned).
    VmmError {
        /// What happened, naming the thread.
        message: String,
    },
}

impl VmExit {
    /// The process exit status `ember run` uses for this exit: 0 for a clean
    /// end, N for a debug exit, 1 for a guest crash or VMM-side failure.
    pub fn status(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::PowerOff | VmExit::Stopped | VmExit::ConsoleQuit => 0,
            VmExit::DebugExit(n) => *n as i32,
            _ => 1,
        }
    }

    /// Whether the VM ended by failure (the guest crashed, or KVM or ember
    /// could not go on) as opposed to ending on purpose.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            VmExit::TripleFault { .. }
                | VmExit::InternalError { .. }
                | VmExit::FailEntry { .. }
                | VmExit::VcpuError { .. }
                | VmExit::VmmError { .. }
        )
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset the machine"),
            VmExit::PowerOff => write!(f, "guest powered the machine off"),
            VmExit::DebugExit(n) => write!(f, "guest wrote {n} to the debug-exit port"),
            VmExit::Stopped => write!(f, "stopped by the host"),
            VmExit::ConsoleQuit => write!(f, "quit from the console (Ctrl-A x)"),
            VmExit::TripleFault { vcpu, rip } => {
                write!(f, "vCPU {vcpu}: triple fault (KVM_EXIT_SHUTDOWN) at RIP {rip:#x}")
            }
            VmExit::InternalError { vcpu, suberror, rip, data } => {
                let what = if *suberror == 1 { " (emulation failure)" } else { "" };
                write!(f, "vCPU {vcpu}: KVM internal error, suberror {suberror}{what}, at RIP {rip:#x}")?;
                if !data.is_empty() {
                    write!(f, ", data")?;
                    for d in data {
                        write!(f, " {d:#x}")?;
                    }
                }
                Ok(())
            }
            VmExit::FailEntry { vcpu, reason } => {
                write!(f, "vCPU {vcpu}: KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY), reason {reason:#x}")
            }
            VmExit::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu}: {message}"),
            VmExit::VmmError { message } => write!(f, "ember failed: {message}"),
        }
    }
}

/// Records the first reason to end the VM and wakes whoever waits for it:
/// callers blocked in [`ExitSignal::wait_timeout`] and the event loop (through
/// [`ExitSignal::eventfd`]).
pub(crate) struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    cv: Condvar,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal with no exit recorded.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            cv: Condvar::new(),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Records `exit` unless an exit is already recorded. Returns whether
    /// this call was the first.
    pub(crate) fn request(&self, exit: VmExit) -> bool {
        let mut r = lock(&self.reason);
        if r.is_some() {
            return false;
        }
        log::debug!("VM exit requested: {exit}");
        *r = Some(exit);
        self.cv.notify_all();
        let _ = self.evt.write(1);
        true
    }

    /// The recorded exit, if any.
    pub(crate) fn get(&self) -> Option<VmExit> {
        lock(&self.reason).clone()
    }

    /// Whether an exit is recorded.
    pub(crate) fn is_set(&self) -> bool {
        // A lock poisoned by a panic counts as an exit: the VM must stop.
        self.reason.is_poisoned() || lock(&self.reason).is_some()
    }

    /// Blocks until an exit is recorded, or `timeout` passes.
    pub(crate) fn wait_timeout(&self, timeout: Option<Duration>) -> Option<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut r = lock(&self.reason);
        loop {
            if let Some(x) = r.as_ref() {
                return Some(x.clone());
            }
            r = match deadline {
                None => wait(&self.cv, r),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    wait_timeout(&self.cv, r, d - now)
                }
            };
        }
    }

    /// An eventfd that becomes readable once an exit is recorded.
    pub(crate) fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl ExitLine for ExitSignal {
    fn request_exit(&self, request: GuestExitRequest) {
        self.request(match request {
            GuestExitRequest::Reset => VmExit::Reset,
            GuestExitRequest::PowerOff => VmExit::PowerOff,
            GuestExitRequest::DebugExit(n) => VmExit::DebugExit(n),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_request_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_set());
        assert!(s.request(VmExit::DebugExit(3)));
        assert!(!s.request(VmExit::Reset));
        assert_eq!(s.get(), Some(VmExit::DebugExit(3)));
        assert_eq!(s.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn wait_wakes_on_request() {
        let s = Arc::new(ExitSignal::new().unwrap());
        assert_eq!(s.wait_timeout(Some(Duration::from_millis(5))), None);
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait_timeout(None));
        std::thread::sleep(Duration::from_millis(10));
        s.request_exit(GuestExitRequest::Reset);
        assert_eq!(t.join().unwrap(), Some(VmExit::Reset));
    }

    #[test]
    fn statuses() {
        assert_eq!(VmExit::Reset.status(), 0);
        assert_eq!(VmExit::PowerOff.status(), 0);
        assert!(!VmExit::PowerOff.is_crash());
        assert_eq!(VmExit::DebugExit(42).status(), 42);
        let tf = VmExit::TripleFault { vcpu: 1, rip: 0x1234 };
        assert_eq!(tf.status(), 1);
        assert!(tf.is_crash());
        assert_eq!(tf.to_string(), "vCPU 1: triple fault (KVM_EXIT_SHUTDOWN) at RIP 0x1234");
        let ie = VmExit::InternalError { vcpu: 0, suberror: 1, rip: 0xffff, data: vec![0xcc] };
        assert!(ie.to_string().contains("emulation failure"));
        assert!(ie.to_string().contains("0xcc"));
    }
}
