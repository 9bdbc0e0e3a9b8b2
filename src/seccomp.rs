//! seccomp filters: one allow-list per thread kind, built with rust-vmm's
//! `seccompiler`, installed by each thread before the guest runs its first
//! instruction (see docs/security.md for how the lists were derived).
//!
//! * **vCPU threads** run `KVM_RUN`, dispatch port/MMIO exits to devices
//!   (which may write the serial output, signal eventfds, and set TAP
//!   offloads when a driver acknowledges features), and exit.
//! * **the VMM threads** — the event loop and the thread that started the
//!   VM (`main` for the CLI) — serve device queues (disk and TAP I/O),
//!   serial input, wait for the exit, restore the terminal, and tear down.
//!
//! A call outside the list: with [`SeccompMode::Kill`] the thread gets
//! SIGSYS (`SECCOMP_RET_TRAP`); ember's handler prints the system call
//! number on stderr and the process dies of SIGSYS. With
//! [`SeccompMode::Log`] the kernel logs the call (`SECCOMP_RET_LOG`, see
//! `dmesg`/audit) and lets it run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// What happens to a system call outside the allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter (the library default).
    #[default]
    Off,
    /// The process dies of SIGSYS, after a line on stderr naming the call.
    Kill,
    /// The kernel logs the call and lets it run.
    Log,
}

/// The thread kinds that get their own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// The event loop and the thread that started the VM.
    Vmm,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler rejected the rules (a bug in the lists).
    #[error("building the {kind:?} seccomp filter: {source}")]
    Build {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// Compiling to BPF failed.
    #[error("compiling the {kind:?} seccomp filter: {source}")]
    Compile {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter on a {kind:?} thread: {source}")]
    Install {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
}

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVM: u64 = 0xae;

/// `KVM_RUN`.
pub(crate) const KVM_RUN: u64 = ioc(IOC_NONE, KVM, 0x80, 0);
/// `KVM_GET_REGS` (crash reports read RIP).
pub(crate) const KVM_GET_REGS: u64 = ioc(IOC_READ, KVM, 0x81, 144);
/// `KVM_GET_SREGS`.
pub(crate) const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVM, 0x83, 312);
/// `TUNSETOFFLOAD` (a driver acknowledged offload features).
pub(crate) const TUNSETOFFLOAD: u64 = ioc(IOC_WRITE, b'T' as u64, 208, 4);
/// `TCGETS`/`TCSETS*`: restoring the terminal.
const TERMIOS: [u64; 4] = [0x5401, 0x5402, 0x5403, 0x5404];

/// System calls every thread of ember makes after its filter is in place:
/// memory management for Rust's allocator, locks and condition variables,
/// thread exit, the kick signal, writes of the console and logs.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_rseq,
];

/// The VMM threads' additions: epoll, disk I/O, TAP I/O, waiting and
/// joining threads, the terminal.
const VMM: &[i64] = &[
    libc::SYS_read,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_sched_getaffinity,
];

fn rules_for(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        rules.insert(nr, vec![]);
    }
    let ioctl_eq = |req: u64| -> Result<SeccompRule, seccompiler::BackendError> {
        SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)?])
    };
    // Every thread: fcntl(fd, F_GETFD), which Rust's fd drop makes in debug
    // builds to check the fd is open; no other fcntl is made after start
    // (O_NONBLOCK and locks are set while devices are built).
    rules.insert(libc::SYS_fcntl, vec![ioctl_eq(libc::F_GETFD as u64)?]);
    // No executable memory after start: the allocator maps and protects
    // read/write (and PROT_NONE guard pages) only.
    let no_exec = || -> Result<SeccompRule, seccompiler::BackendError> {
        let exec = libc::PROT_EXEC as u64;
        SeccompRule::new(vec![SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(exec), 0)?])
    };
    rules.insert(libc::SYS_mmap, vec![no_exec()?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()?]);
    // Signals only within ember (the vCPU kick, raising a fatal signal on
    // itself): tgkill's first argument is ember's own pid.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, pid)?])?],
    );
    // No thread may take over SIGSYS: a handler of its own would turn the
    // kill into a message and carry on. (ember's handler is installed
    // before the first filter.)
    rules.insert(
        libc::SYS_rt_sigaction,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::SIGSYS as u64,
        )?])?],
    );
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu => vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, TUNSETOFFLOAD],
        ThreadKind::Vmm => {
            for &nr in VMM {
                rules.insert(nr, vec![]);
            }
            let mut v = TERMIOS.to_vec();
            v.push(TUNSETOFFLOAD);
            v
        }
    };
    rules.insert(libc::SYS_ioctl, ioctls.into_iter().map(ioctl_eq).collect::<Result<_, _>>()?);
    Ok(rules)
}

/// Builds the BPF program for `kind` under `mode` (`None` when off).
pub(crate) fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Kill => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let rules = rules_for(kind).map_err(|source| SeccompError::Build { kind, source })?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|source| SeccompError::Build { kind, source })?;
    let bpf: BpfProgram = f.try_into().map_err(|source| SeccompError::Compile { kind, source })?;
    Ok(Some(bpf))
}

/// Installs `bpf` on the calling thread (and sets `no_new_privs`).
pub(crate) fn install(kind: ThreadKind, bpf: &BpfProgram) -> Result<(), SeccompError> {
    install_sigsys_handler();
    seccompiler::apply_filter(bpf).map_err(|source| SeccompError::Install { kind, source })
}

/// The filters of one VM's threads and the gate they pass together: with
/// filters on, no vCPU enters the guest until every thread (the one that
/// starts the VM included) has its filter, so no unfiltered thread runs
/// beside guest code.
pub(crate) struct ThreadFilters {
    vcpu: Option<BpfProgram>,
    vmm: Option<BpfProgram>,
    /// Waited at by every thread once its filter is installed.
    gate: Option<Barrier>,
}

impl ThreadFilters {
    /// Builds the filters for `mode`, with a gate for `threads` threads
    /// (every vCPU thread, the event loop and the starting thread).
    pub(crate) fn new(mode: SeccompMode, threads: usize) -> Result<Arc<Self>, SeccompError> {
        let vcpu = filter(ThreadKind::Vcpu, mode)?;
        let vmm = filter(ThreadKind::Vmm, mode)?;
        let gate = vmm.as_ref().map(|_| Barrier::new(threads));
        Ok(Arc::new(ThreadFilters { vcpu, vmm, gate }))
    }

    /// Installs the filter of `kind` on the calling thread, then waits at
    /// the gate for the others. A filter the kernel refused is reported
    /// after the wait, so no other thread is left waiting for this one.
    pub(crate) fn enter(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let bpf = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Vmm => &self.vmm,
        };
        let (Some(bpf), Some(gate)) = (bpf, &self.gate) else {
            return Ok(());
        };
        let r = install(kind, bpf);
        gate.wait();
        r
    }

    /// Passes the gate on behalf of `n` threads that will never start (a
    /// vCPU thread that could not be spawned), so the others go on.
    pub(crate) fn stand_in(self: &Arc<Self>, n: usize) {
        if self.gate.is_none() {
            return;
        }
        for _ in 0..n {
            let me = self.clone();
            std::thread::spawn(move || {
                if let Some(g) = &me.gate {
                    g.wait();
                }
            });
        }
    }
}

/// Prints the blocked call and lets SIGSYS kill the process. Only
/// async-signal-safe work: raw writes of a stack buffer.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // for SIGSYS from seccomp, _sigsys.si_syscall is at offset 24 of the
    // union (after si_signo/si_errno/si_code and padding, then call_addr).
    let nr = unsafe { *((info as *const u8).add(16 + 8) as *const i32) };
    let mut buf = [0u8; 96];
    let mut n = 0;
    for &b in b"ember: seccomp: blocked system call " {
        buf[n] = b;
        n += 1;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = nr.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    for &b in b" (docs/security.md); killing ember\n" {
        buf[n] = b;
        n += 1;
    }
    // SAFETY: write(2) of a stack buffer; then ask for SIGSYS's default
    // action. The filter refuses that call (no thread may change SIGSYS),
    // and a trap while SIGSYS is blocked (as it is inside its handler)
    // makes the kernel deliver SIGSYS with its default action: the process
    // dies of SIGSYS. Should it not, re-raise, and exit as a shell would
    // report a death by SIGSYS.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &dfl, std::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), libc::SIGSYS);
        libc::_exit(128 + libc::SIGSYS);
    }
}

fn install_sigsys_handler() {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: installs a handler that only does async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
    }

    #[test]
    fn filters_build() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                let bpf = filter(kind, mode).unwrap().unwrap();
                assert!(bpf.len() > 20, "{kind:?} {mode:?}");
            }
            assert!(filter(kind, SeccompMode::Off).unwrap().is_none());
        }
    }

    #[test]
    fn vcpu_list_is_narrower() {
        let v = rules_for(ThreadKind::Vcpu).unwrap();
        let m = rules_for(ThreadKind::Vmm).unwrap();
        assert!(!v.contains_key(&libc::SYS_pwrite64));
        assert!(m.contains_key(&libc::SYS_pwrite64));
        assert!(!v.contains_key(&libc::SYS_openat) && !m.contains_key(&libc::SYS_openat));
        assert!(!v.contains_key(&libc::SYS_execve) && !m.contains_key(&libc::SYS_execve));
        assert!(!m.contains_key(&libc::SYS_socket));
        // Issue 16 item 7: no read on vCPU threads; no prctl; fcntl,
        // mmap, mprotect, tgkill and rt_sigaction only with arguments.
        assert!(!v.contains_key(&libc::SYS_read) && m.contains_key(&libc::SYS_read));
        for r in [&v, &m] {
            assert!(!r.contains_key(&libc::SYS_prctl) && !r.contains_key(&libc::SYS_tkill));
            for nr in [libc::SYS_fcntl, libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_tgkill, libc::SYS_rt_sigaction] {
                assert_eq!(r[&nr].len(), 1, "{nr} has one argument rule");
            }
        }
    }

    /// The argument rules at work, on a thread of this test under `log`
    /// would prove nothing (log lets calls through): under a filter whose
    /// mismatch action is an errno, the refused forms fail and the allowed
    /// ones pass.
    #[test]
    fn argument_rules_refuse_exec_foreign_signals_and_sigsys() {
        let rules = rules_for(ThreadKind::Vmm).unwrap();
        let f = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .unwrap();
        let bpf: BpfProgram = f.try_into().unwrap();
        let r = std::thread::spawn(move || {
            seccompiler::apply_filter(&bpf).unwrap();
            // SAFETY: anonymous mappings and protection changes of them;
            // signal 0 to pid 1 only checks it exists; sigaction reads
            // `sa`; none of it touches memory in use.
            unsafe {
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                let p = libc::mmap(std::ptr::null_mut(), 4096, rw, flags, -1, 0);
                let x = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_EXEC, flags, -1, 0);
                let mprot_rx = libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC);
                let mprot_r = libc::mprotect(p, 4096, libc::PROT_READ);
                let own = libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), 0);
                let other = libc::syscall(libc::SYS_tgkill, 1, 1, 0);
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_IGN;
                let sigsys = libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
                let sigusr2 = libc::sigaction(libc::SIGUSR2, std::ptr::null(), &mut sa);
                (p != libc::MAP_FAILED, x == libc::MAP_FAILED, mprot_rx, mprot_r, own, other, sigsys, sigusr2)
            }
        })
        .join()
        .unwrap();
        assert_eq!(r, (true, true, -1, 0, 0, -1, -1, 0));
    }

    /// A filtered thread that makes a forbidden call under `log` keeps
    /// running (the call succeeds); the kill path is tested end to end in
    /// tests/hardening.rs (it ends the process).
    #[test]
    fn log_mode_lets_the_call_through() {
        let bpf = filter(ThreadKind::Vcpu, SeccompMode::Log).unwrap().unwrap();
        let r = std::thread::spawn(move || {
            install(ThreadKind::Vcpu, &bpf).unwrap();
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() }
        })
        .join()
        .unwrap();
        assert!(r > 0);
    }
}
