//! seccomp filters: one allow-list per thread kind, made into a BPF
//! program by [`program`] (a binary search on the call number; rust-vmm's
//! `seccompiler` installs it), installed by each thread before the guest
//! runs its first instruction (see docs/security.md for how the lists were
//! derived).
//!
//! * **vCPU threads** run `KVM_RUN`, dispatch port/MMIO exits to devices
//!   (which may write the serial output, signal eventfds, and set TAP
//!   offloads when a driver acknowledges features), and exit.
//! * **the VMM threads** — the event loop and the thread that started the
//!   VM (`main` for the CLI) — serve device queues (disk and TAP I/O),
//!   serial input, wait for the exit, restore the terminal, and tear down.
//! * **the event loop**, when the VM has shared directories, also serves
//!   the 9P file servers: the `*at` calls on descriptors it holds
//!   ([`SHARE`]). Without shares its filter is the VMM threads'.
//! * **the API thread** (`ember serve`) serves HTTP on its Unix socket and
//!   drives the VM through a `VmHandle`; it installs its filter before its
//!   first request, long before the VM starts, and opens nothing.
//!
//! A call outside the list: with [`SeccompMode::Kill`] the thread gets
//! SIGSYS (`SECCOMP_RET_TRAP`); ember's handler prints the system call
//! number on stderr and the process dies of SIGSYS. With
//! [`SeccompMode::Log`] the kernel logs the call (`SECCOMP_RET_LOG`, see
//! `dmesg`/audit) and lets it run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use seccompiler::{BpfProgram, SeccompAction};

mod program;
pub use program::ProgramError;
use program::{ArgCheck, ArgOp, Rules};

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
    /// The event loop: [`ThreadKind::Vmm`]'s list, and the file server's
    /// calls when the VM has shared directories.
    Events,
    /// The API socket's thread (`ember serve`).
    Api,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The list could not be made into a program (a bug in the lists).
    #[error("compiling the {kind:?} seccomp filter: {source}")]
    Compile {
        /// Which filter.
        kind: ThreadKind,
        /// Why.
        source: ProgramError,
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
const fn size<T>() -> u64 {
    std::mem::size_of::<T>() as u64
}

/// The vCPU ioctls that read its state for a snapshot (on the vCPU's own
/// thread, while parked): `KVM_GET_CPUID2`, `_FPU`, `_XSAVE`, `_XCRS`,
/// `_MSRS`, `_LAPIC`, `_MP_STATE`, `_VCPU_EVENTS`, `_DEBUGREGS`,
/// `_TSC_KHZ`. They only read.
pub(crate) const VCPU_STATE_READS: [u64; 10] = [
    ioc(IOC_READ | IOC_WRITE, KVM, 0x91, size::<kvm_bindings::kvm_cpuid2>()),
    ioc(IOC_READ, KVM, 0x8c, size::<kvm_bindings::kvm_fpu>()),
    ioc(IOC_READ, KVM, 0xa4, size::<kvm_bindings::kvm_xsave>()),
    ioc(IOC_READ, KVM, 0xa6, size::<kvm_bindings::kvm_xcrs>()),
    ioc(IOC_READ | IOC_WRITE, KVM, 0x88, size::<kvm_bindings::kvm_msrs>()),
    ioc(IOC_READ, KVM, 0x8e, size::<kvm_bindings::kvm_lapic_state>()),
    ioc(IOC_READ, KVM, 0x98, size::<kvm_bindings::kvm_mp_state>()),
    ioc(IOC_READ, KVM, 0x9f, size::<kvm_bindings::kvm_vcpu_events>()),
    ioc(IOC_READ, KVM, 0xa1, size::<kvm_bindings::kvm_debugregs>()),
    ioc(IOC_NONE, KVM, 0xa3, 0),
];

/// The VM ioctls a snapshot reads the in-kernel devices with:
/// `KVM_GET_IRQCHIP`, `KVM_GET_PIT2`, `KVM_GET_CLOCK`.
pub(crate) const VM_STATE_READS: [u64; 3] = [
    ioc(IOC_READ | IOC_WRITE, KVM, 0x62, size::<kvm_bindings::kvm_irqchip>()),
    ioc(IOC_READ, KVM, 0x9f, size::<kvm_bindings::kvm_pit_state2>()),
    ioc(IOC_READ, KVM, 0x7c, size::<kvm_bindings::kvm_clock_data>()),
];

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

/// The event loop's additions when it serves shared directories (virtio-9p,
/// ember_devices::virtio::p9): every call takes a descriptor the server
/// holds (`openat2` confined with `RESOLVE_BENEATH`, the `*at` calls on a
/// single name, `openat` only below the server's own `/proc/self/fd`).
/// `renameat2` beside `renameat` because glibc versions differ in which
/// one `renameat(3)` makes.
pub(crate) const SHARE: &[i64] = &[
    libc::SYS_openat2,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_fchownat,
    libc::SYS_fchmodat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
];

/// The API thread's additions: its socket (poll, accept, receive, send),
/// the checks of paths named in requests (stat and access(2): nothing is
/// opened), removing the socket file at the end, and the credential calls
/// glibc replays on every thread when the VM drops privileges (`--user`:
/// `setresuid` and friends reach each thread through a signal, so the API
/// thread, started before the VM, makes them too; they cannot raise
/// privileges after the drop).
const API: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_unlinkat,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    // Snapshots (`PUT /snapshot/create`): the two files are created,
    // sized, written and synced; guest RAM's residency is read from
    // /proc/self/pagemap, opened before the VM started; a restored VM's
    // old memory file is copied where the guest did not write (its data
    // found with lseek's SEEK_DATA/SEEK_HOLE).
    libc::SYS_openat,
    libc::SYS_ftruncate,
    libc::SYS_pwrite64,
    libc::SYS_pread64,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_copy_file_range,
];

/// The rules of `kind`; with `pci` (a device is on PCI) the vCPU threads
/// may also move ioeventfds and replace the GSI routing table, which the
/// guest's BAR moves and MSI-X table writes do from the vCPU thread.
fn rules_for(kind: ThreadKind, pci: bool) -> Rules {
    let mut rules = Rules::new();
    for &nr in COMMON {
        rules.insert(nr, vec![]);
    }
    let ioctl_eq = |req: u64| vec![ArgCheck::eq(1, req)];
    // Every thread: fcntl(fd, F_GETFD), which Rust's fd drop makes in debug
    // builds to check the fd is open; no other fcntl is made after start
    // (O_NONBLOCK and locks are set while devices are built).
    rules.insert(libc::SYS_fcntl, vec![ioctl_eq(libc::F_GETFD as u64)]);
    // No executable memory after start: the allocator maps and protects
    // read/write (and PROT_NONE guard pages) only.
    let no_exec = || vec![ArgCheck { arg: 2, op: ArgOp::MaskedEq { mask: libc::PROT_EXEC as u32, value: 0 } }];
    rules.insert(libc::SYS_mmap, vec![no_exec()]);
    rules.insert(libc::SYS_mprotect, vec![no_exec()]);
    // Signals only within ember (the vCPU kick, raising a fatal signal on
    // itself): tgkill's first argument is ember's own pid.
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    rules.insert(libc::SYS_tgkill, vec![vec![ArgCheck::eq(0, pid)]]);
    // No thread may take over SIGSYS: a handler of its own would turn the
    // kill into a message and carry on. (ember's handler is installed
    // before the first filter.)
    rules.insert(libc::SYS_rt_sigaction, vec![vec![ArgCheck { arg: 0, op: ArgOp::Ne(libc::SIGSYS as u32) }]]);
    let ioctls: Vec<u64> = match kind {
        ThreadKind::Vcpu => {
            let mut v = vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, TUNSETOFFLOAD];
            if pci {
                v.extend([KVM_IOEVENTFD, KVM_SET_GSI_ROUTING]);
            }
            v.extend(VCPU_STATE_READS);
            v
        }
        ThreadKind::Vmm | ThreadKind::Events => {
            for &nr in VMM {
                rules.insert(nr, vec![]);
            }
            if kind == ThreadKind::Events {
                for &nr in SHARE {
                    rules.insert(nr, vec![]);
                }
                // The file server duplicates descriptors it holds (a walk
                // or an attach to the same file: `OwnedFd::try_clone`).
                rules.entry(libc::SYS_fcntl).or_default().push(ioctl_eq(libc::F_DUPFD_CLOEXEC as u64));
            }
            let mut v = TERMIOS.to_vec();
            v.push(TUNSETOFFLOAD);
            v
        }
        ThreadKind::Api => {
            for &nr in API {
                rules.insert(nr, vec![]);
            }
            // read(2), which every thread had before issue 16 took it off
            // the vCPU threads.
            rules.insert(libc::SYS_read, vec![]);
            // Only the snapshot's reads of the in-kernel devices.
            VM_STATE_READS.to_vec()
        }
    };
    rules.insert(libc::SYS_ioctl, ioctls.into_iter().map(ioctl_eq).collect());
    rules
}

/// Builds the BPF program for `kind` under `mode` (`None` when off), for a
/// VM with devices on PCI when `pci`.
pub(crate) fn filter(kind: ThreadKind, mode: SeccompMode, pci: bool) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Kill => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    compile(kind, mismatch, pci).map(Some)
}

/// The BPF program for `kind` (for a VM with devices on PCI when `pci`),
/// `mismatch` for calls outside its list.
fn compile(kind: ThreadKind, mismatch: SeccompAction, pci: bool) -> Result<BpfProgram, SeccompError> {
    program::compile(&rules_for(kind, pci), mismatch.into(), SeccompAction::Allow.into())
        .map_err(|source| SeccompError::Compile { kind, source })
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
    /// The event loop's: `vmm`'s, with the file server's calls when the
    /// VM has shared directories.
    events: Option<BpfProgram>,
    /// Waited at by every thread once its filter is installed.
    gate: Option<Barrier>,
}

impl ThreadFilters {
    /// Builds the filters for `mode`, with a gate for `threads` threads
    /// (every vCPU thread, the event loop and the starting thread), for a
    /// VM with devices on PCI when `pci`; the event loop's allows the file
    /// server's calls if `shares`.
    pub(crate) fn new(mode: SeccompMode, threads: usize, pci: bool, shares: bool) -> Result<Arc<Self>, SeccompError> {
        let vcpu = filter(ThreadKind::Vcpu, mode, pci)?;
        let vmm = filter(ThreadKind::Vmm, mode, pci)?;
        let events = if shares { filter(ThreadKind::Events, mode, pci)? } else { vmm.clone() };
        let gate = vmm.as_ref().map(|_| Barrier::new(threads));
        Ok(Arc::new(ThreadFilters { vcpu, vmm, events, gate }))
    }

    /// Installs the filter of `kind` on the calling thread, then waits at
    /// the gate for the others. A filter the kernel refused is reported
    /// after the wait, so no other thread is left waiting for this one.
    pub(crate) fn enter(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let bpf = match kind {
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Events => &self.events,
            // Not a VM thread: it installs its own filter ([`install`]).
            ThreadKind::Api => return Ok(()),
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
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        // The values in linux/kvm.h's _IO* macros, as strace prints them.
        assert_eq!(
            VCPU_STATE_READS,
            [
                0xc008_ae91,
                0x81a0_ae8c,
                0x9000_aea4,
                0x8188_aea6,
                0xc008_ae88,
                0x8400_ae8e,
                0x8004_ae98,
                0x8040_ae9f,
                0x8080_aea1,
                0xaea3
            ]
        );
        assert_eq!(VM_STATE_READS, [0xc208_ae62, 0x8070_ae9f, 0x8030_ae7c]);
    }

    #[test]
    fn filters_build() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Vmm, ThreadKind::Events, ThreadKind::Api] {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                let bpf = filter(kind, mode, false).unwrap().unwrap();
                assert!(bpf.len() > 20, "{kind:?} {mode:?}");
            }
            assert!(filter(kind, SeccompMode::Off, true).unwrap().is_none());
        }
    }

    /// ember's own lists, every kind with and without PCI: the search
    /// program decides every call (numbers 0..1024 and far ones; each
    /// argument at the values the rules name and next to them) exactly as
    /// seccompiler's program of the same list does.
    #[test]
    fn every_list_decides_like_seccompiler() {
        for kind in [ThreadKind::Vcpu, ThreadKind::Vmm, ThreadKind::Events, ThreadKind::Api] {
            for pci in [false, true] {
                let cases = program::tests::assert_same_decisions(&rules_for(kind, pci));
                assert!(cases > 20_000, "{kind:?} {cases}");
            }
        }
    }

    #[test]
    fn vcpu_list_is_narrower() {
        let v = rules_for(ThreadKind::Vcpu, false);
        let m = rules_for(ThreadKind::Vmm, false);
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
        let e = rules_for(ThreadKind::Events, false);
        assert_eq!(e[&libc::SYS_fcntl].len(), 2, "F_GETFD, and F_DUPFD_CLOEXEC for the file server");
        assert!(SHARE.iter().all(|nr| e.contains_key(nr) && !m.contains_key(nr) && !v.contains_key(nr)));
        assert!(m.keys().all(|nr| e.contains_key(nr)));
        assert!(!e.contains_key(&libc::SYS_execve) && !e.contains_key(&libc::SYS_socket));
        assert!(!e.contains_key(&libc::SYS_open) && !e.contains_key(&libc::SYS_chdir));
    }

    /// A 9P session that makes the server use every host call it has
    /// (create, write, read, list, stat, set attributes, link, rename,
    /// remove, sync, statfs); returns (request type, errno) of every
    /// request answered with an error.
    fn p9_session(server: &mut ember_devices::virtio::p9::Server) -> Vec<(u8, i32)> {
        use ember_devices::virtio::p9::wire::{msg, Encoder};
        let mut errors = Vec::new();
        let mut reply = vec![0u8; 65536];
        let mut send = |ty: u8, f: &dyn Fn(&mut Encoder<'_>)| {
            let mut req = Vec::new();
            let mut e = Encoder::new(&mut req, ty, 1);
            f(&mut e);
            e.finish();
            let n = server.handle(&req, &mut reply[..]);
            if n >= 11 && reply[4] == msg::RLERROR {
                errors.push((ty, i32::from_le_bytes(reply[7..11].try_into().unwrap())));
            }
        };
        send(msg::TVERSION, &|e| {
            e.u32(65536).str(b"9P2000.L");
        });
        send(msg::TATTACH, &|e| {
            e.u32(0).u32(u32::MAX).str(b"t").str(b"").u32(0);
        });
        // fid 1: sub/ ; fid 2: a new file in it, written and read back.
        send(msg::TWALK, &|e| {
            e.u32(0).u32(1).u16(1).str(b"sub");
        });
        send(msg::TWALK, &|e| {
            e.u32(1).u32(2).u16(0);
        });
        send(msg::TLCREATE, &|e| {
            e.u32(2).str(b"new").u32(libc::O_RDWR as u32).u32(0o644).u32(0);
        });
        send(msg::TWRITE, &|e| {
            e.u32(2).u64(0).u32(3).u8(b'a').u8(b'b').u8(b'c');
        });
        send(msg::TREAD, &|e| {
            e.u32(2).u64(0).u32(100);
        });
        send(msg::TFSYNC, &|e| {
            e.u32(2).u32(0);
        });
        send(msg::TFSYNC, &|e| {
            e.u32(2).u32(1);
        });
        send(msg::TGETATTR, &|e| {
            e.u32(2).u64(0x3fff);
        });
        // mode, size, times set by the client.
        send(msg::TSETATTR, &|e| {
            e.u32(2).u32(0x1 | 0x8 | 0x10 | 0x20 | 0x80 | 0x100).u32(0o600).u32(0).u32(0).u64(1);
            e.u64(1).u64(0).u64(2).u64(0);
        });
        send(msg::TSETATTR, &|e| {
            e.u32(2).u32(0x2 | 0x4).u32(0).u32(u32::MAX).u32(u32::MAX).u64(0);
            e.u64(0).u64(0).u64(0).u64(0);
        });
        send(msg::TCLUNK, &|e| {
            e.u32(2);
        });
        send(msg::TMKDIR, &|e| {
            e.u32(1).str(b"d").u32(0o755).u32(0);
        });
        send(msg::TSYMLINK, &|e| {
            e.u32(1).str(b"l").str(b"new").u32(0);
        });
        send(msg::TMKNOD, &|e| {
            e.u32(1).str(b"fifo").u32(libc::S_IFIFO | 0o644).u32(0).u32(0).u32(0);
        });
        send(msg::TWALK, &|e| {
            e.u32(1).u32(3).u16(1).str(b"l");
        });
        send(msg::TREADLINK, &|e| {
            e.u32(3);
        });
        send(msg::TWALK, &|e| {
            e.u32(1).u32(4).u16(1).str(b"new");
        });
        send(msg::TLINK, &|e| {
            e.u32(1).u32(4).str(b"hard");
        });
        send(msg::TRENAMEAT, &|e| {
            e.u32(1).str(b"hard").u32(1).str(b"hard2");
        });
        send(msg::TRENAME, &|e| {
            e.u32(4).u32(1).str(b"new2");
        });
        send(msg::TLOPEN, &|e| {
            e.u32(1).u32(libc::O_RDONLY as u32);
        });
        send(msg::TREADDIR, &|e| {
            e.u32(1).u64(0).u32(4096);
        });
        send(msg::TSTATFS, &|e| {
            e.u32(0);
        });
        send(msg::TWALK, &|e| {
            e.u32(0).u32(5).u16(1).str(b"sub");
        });
        for name in [&b"hard2"[..], b"l", b"fifo", b"missing"] {
            send(msg::TUNLINKAT, &|e| {
                e.u32(5).str(name).u32(0);
            });
        }
        send(msg::TUNLINKAT, &|e| {
            e.u32(1).str(b"d").u32(libc::AT_REMOVEDIR as u32);
        });
        send(msg::TREMOVE, &|e| {
            e.u32(4);
        });
        errors
    }

    /// Every request of a 9P session, served by ember's file server on a
    /// thread under the event loop's filter for shares (mismatches answered
    /// with an errno nothing else returns): none of them reaches a call
    /// outside the list. The same session under the filter without shares
    /// does (the test would catch a server that needs nothing).
    #[test]
    fn the_share_filter_lets_the_file_server_work() {
        const MARK: i32 = 4000; // not a Linux errno
        let dir = std::env::temp_dir().join(format!("ember-seccomp-share-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file"), b"hello").unwrap();
        let session = |kind: ThreadKind| {
            let bpf = compile(kind, SeccompAction::Errno(MARK as u32), false).unwrap();
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut server = ember_devices::virtio::p9::Server::new(&dir, false).unwrap();
                seccompiler::apply_filter(&bpf).unwrap();
                p9_session(&mut server)
            })
            .join()
            .unwrap()
        };
        let errors = session(ThreadKind::Events);
        assert_eq!(errors.len(), 1, "only the unlink of a missing name fails: {errors:?}");
        assert!(errors.iter().all(|&(_, e)| e != MARK), "calls outside the list: {errors:?}");
        let errors = session(ThreadKind::Vmm);
        assert!(errors.iter().any(|&(_, e)| e == MARK), "the session needs nothing beyond the VMM list? {errors:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_pci_vm_lets_vcpus_route_interrupts() {
        let ioctl_rules = |pci| rules_for(ThreadKind::Vcpu, pci)[&libc::SYS_ioctl].len();
        assert_eq!(ioctl_rules(true), ioctl_rules(false) + 2);
        let vmm = |pci| rules_for(ThreadKind::Vmm, pci)[&libc::SYS_ioctl].len();
        assert_eq!(vmm(true), vmm(false), "the event loop never moves BARs or routes");
    }

    /// The argument rules at work, on a thread of this test under `log`
    /// would prove nothing (log lets calls through): under a filter whose
    /// mismatch action is an errno, the refused forms fail and the allowed
    /// ones pass.
    #[test]
    fn argument_rules_refuse_exec_foreign_signals_and_sigsys() {
        let bpf = compile(ThreadKind::Vmm, SeccompAction::Errno(libc::EPERM as u32), false).unwrap();
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

    #[test]
    fn the_api_thread_opens_files_for_snapshots_and_only_reads_vm_state() {
        let a = rules_for(ThreadKind::Api, false);
        for nr in [libc::SYS_open, libc::SYS_socket, libc::SYS_execve, libc::SYS_clone, libc::SYS_epoll_wait] {
            assert!(!a.contains_key(&nr), "{nr}");
        }
        assert!(a.contains_key(&libc::SYS_accept4) && a.contains_key(&libc::SYS_poll));
        // A snapshot's files.
        assert!(a.contains_key(&libc::SYS_openat) && a.contains_key(&libc::SYS_pwrite64));
        // ioctl: exactly the three reads of the in-kernel devices.
        assert_eq!(a[&libc::SYS_ioctl].len(), VM_STATE_READS.len());
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
