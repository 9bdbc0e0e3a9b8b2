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
/// `KVM_IOEVENTFD` (a PCI BAR with notification addresses moved).
pub(crate) const KVM_IOEVENTFD: u64 = ioc(IOC_WRITE, KVM, 0x79, 64);
/// `KVM_SET_GSI_ROUTING` (a PCI function's MSI-X vector got a new message).
pub(crate) const KVM_SET_GSI_ROUTING: u64 = ioc(IOC_WRITE, KVM, 0x6a, 8);
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
    libc::SYS_read,
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
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_sched_getaffinity,
    libc::SYS_prctl,
];

/// The rules of `kind`; with `pci` (the VM has a PCI root) the vCPU threads
/// may also move ioeventfds and replace the GSI routing table, which the
/// guest's BAR moves and MSI-X table writes do from the vCPU thread.
fn rules_for(kind: ThreadKind, pci: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in COMMON {
        rules.insert(nr, vec![]);
    }
    let ioctl_eq = |req: u64| -> Result<SeccompRule, seccompiler::BackendError> {
        SeccompRule::new(vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)?])
    };
    // Every thread: fcntl(fd, F_GETFD), which Rust's fd drop makes in debug
    // builds to check the fd is open. The VMM threads get all of fcntl below.
    rules.insert(libc::SYS_fcntl, vec![ioctl_eq(libc::F_GETFD as u64)?]);
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu if pci => {
            vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, TUNSETOFFLOAD, KVM_IOEVENTFD, KVM_SET_GSI_ROUTING]
        }
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

/// Builds the BPF program for `kind` under `mode` (`None` when off), for a
/// VM with a PCI root when `pci`.
pub(crate) fn filter(kind: ThreadKind, mode: SeccompMode, pci: bool) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Kill => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let rules = rules_for(kind, pci).map_err(|source| SeccompError::Build { kind, source })?;
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
    /// (every vCPU thread, the event loop and the starting thread), for a
    /// VM with a PCI root when `pci`.
    pub(crate) fn new(mode: SeccompMode, threads: usize, pci: bool) -> Result<Arc<Self>, SeccompError> {
        let vcpu = filter(ThreadKind::Vcpu, mode, pci)?;
        let vmm = filter(ThreadKind::Vmm, mode, pci)?;
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
    // SAFETY: write(2) of a stack buffer; then restore the default action
    // and re-raise: SIGSYS is blocked inside its handler, so it is
    // delivered (and kills the process) when the handler returns.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &dfl, std::ptr::null_mut());
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), libc::SIGSYS);
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
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    }

    #[test]
    fn filters_build() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Vmm] {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                let bpf = filter(kind, mode, false).unwrap().unwrap();
                assert!(bpf.len() > 20, "{kind:?} {mode:?}");
            }
            assert!(filter(kind, SeccompMode::Off, true).unwrap().is_none());
        }
    }

    #[test]
    fn vcpu_list_is_narrower() {
        let v = rules_for(ThreadKind::Vcpu, false).unwrap();
        let m = rules_for(ThreadKind::Vmm, false).unwrap();
        assert!(!v.contains_key(&libc::SYS_pwrite64));
        assert!(m.contains_key(&libc::SYS_pwrite64));
        assert!(!v.contains_key(&libc::SYS_openat) && !m.contains_key(&libc::SYS_openat));
        assert!(!v.contains_key(&libc::SYS_execve) && !m.contains_key(&libc::SYS_execve));
        assert!(!m.contains_key(&libc::SYS_socket));
    }

    #[test]
    fn only_a_pci_vm_lets_vcpus_route_interrupts() {
        let ioctl_rules = |pci| rules_for(ThreadKind::Vcpu, pci).unwrap()[&libc::SYS_ioctl].len();
        assert_eq!(ioctl_rules(true), ioctl_rules(false) + 2);
        let vmm = |pci| rules_for(ThreadKind::Vmm, pci).unwrap()[&libc::SYS_ioctl].len();
        assert_eq!(vmm(true), vmm(false), "the event loop never moves BARs or routes");
    }

    /// A filtered thread that makes a forbidden call under `log` keeps
    /// running (the call succeeds); the kill path is tested end to end in
    /// tests/hardening.rs (it ends the process).
    #[test]
    fn log_mode_lets_the_call_through() {
        let bpf = filter(ThreadKind::Vcpu, SeccompMode::Log, false).unwrap().unwrap();
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
