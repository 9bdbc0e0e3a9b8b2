//! One vCPU: its initial state, and the thread that runs it and turns its
//! exits into bus accesses or a reason for the VM to end (what each exit
//! means is decided in [`exits`]).

mod exits;
mod state;

use std::cell::Cell;
use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_run, CpuId, Msrs};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};

use crate::boot::{cpu_state, Entry};
use crate::bus::Bus;
use crate::error::{kvm_err, Error};
use crate::exit::{ExitSignal, VmExit};
use crate::run_control::{RunControl, RunRequest};
use exits::{handle_exit, Crash, ExitAction};
pub(crate) use state::{SaveContext, StateSlots};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// A created, configured vCPU that has not started running.
pub(crate) struct Vcpu {
    fd: VcpuFd,
    id: u8,
}

fn set_lapic_lvt(lapic: &mut kvm_bindings::kvm_lapic_state, reg: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = lapic.regs[reg + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *x as _;
    }
}

/// Denies the guest every MSR in `ranges` (`(first, count)`, at most 16
/// ranges): a guest access raises #GP instead of reaching KVM's own
/// handling. VM-wide; ember's own `KVM_SET_MSRS` is not filtered.
pub(crate) fn deny_msrs(vm: &VmFd, ranges: &[(u32, u32)]) -> Result<(), Error> {
    // One bitmap of zeros (deny) long enough for the largest range.
    let longest = ranges.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let bitmap = vec![0u8; longest.div_ceil(8) as usize];
    let filter: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .map(|&(base, msr_count)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base,
            msr_count,
            bitmap: &bitmap,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter).map_err(kvm_err(None, "KVM_X86_SET_MSR_FILTER"))
}

impl Vcpu {
    /// Creates vCPU `id` and gives it what every vCPU needs: CPUID, boot
    /// MSRs, an initialised FPU and LINT0/LINT1 wired as on a PC.
    pub(crate) fn new(vm: &VmFd, id: u8, cpuid: &CpuId) -> Result<Self, Error> {
        let fd = vm.create_vcpu(id as u64).map_err(kvm_err(Some(id), "KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid).map_err(kvm_err(Some(id), "KVM_SET_CPUID2"))?;

        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_MISC_ENABLE, 1),          // fast string operations
            (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
        ]
        .iter()
        .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
        .collect();
        let msrs = Msrs::from_entries(&entries).expect("a handful of MSRs fits");
        let set = fd.set_msrs(&msrs).map_err(kvm_err(Some(id), "KVM_SET_MSRS"))?;
        if set != entries.len() {
            log::debug!(
                "vCPU {id}: KVM took {set} of {} boot MSRs (stopped at {:#x})",
                entries.len(),
                entries[set].index
            );
        }

        let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        fd.set_fpu(&fpu).map_err(kvm_err(Some(id), "KVM_SET_FPU"))?;

        let mut lapic = fd.get_lapic().map_err(kvm_err(Some(id), "KVM_GET_LAPIC"))?;
        set_lapic_lvt(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lapic_lvt(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic).map_err(kvm_err(Some(id), "KVM_SET_LAPIC"))?;
        Ok(Vcpu { fd, id })
    }

    /// Puts the boot vCPU at the kernel's entry. Application processors are
    /// left in their reset state: with the in-kernel LAPIC they wait for
    /// INIT/SIPI from the guest.
    pub(crate) fn set_boot_entry(&self, entry: Entry) -> Result<(), Error> {
        let id = self.id;
        let mut sregs = self.fd.get_sregs().map_err(kvm_err(Some(id), "KVM_GET_SREGS"))?;
        let regs = match entry {
            Entry::Linux64(rip) => {
                cpu_state::linux64_sregs(&mut sregs);
                cpu_state::linux64_regs(rip)
            }
            Entry::Pvh(rip) => {
                cpu_state::pvh_sregs(&mut sregs);
                cpu_state::pvh_regs(rip)
            }
        };
        self.fd.set_sregs(&sregs).map_err(kvm_err(Some(id), "KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs).map_err(kvm_err(Some(id), "KVM_SET_REGS"))?;
        Ok(())
    }

    /// This vCPU's index (and APIC ID).
    pub(crate) fn id(&self) -> u8 {
        self.id
    }

    /// Creates vCPU `id` for a restore: only what `restore_state` does not
    /// overwrite is set here (nothing but the vCPU itself).
    pub(crate) fn create_bare(vm: &VmFd, id: u8) -> Result<Self, Error> {
        let fd = vm.create_vcpu(id as u64).map_err(kvm_err(Some(id), "KVM_CREATE_VCPU"))?;
        Ok(Vcpu { fd, id })
    }
}

thread_local! {
    /// The running vCPU's `kvm_run`, so the kick signal handler can set
    /// `immediate_exit` on the thread it interrupted.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
pub(crate) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only touches a thread-local pointer set before KVM_RUN: async-signal safe.
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: p points at this thread's mapped kvm_run while it is set.
        unsafe { (*p).immediate_exit = 1 };
    }
}

/// Installs the kick signal handler (idempotent).
pub(crate) fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno())
        })
        .map_err(std::io::Error::from_raw_os_error)
}

/// What a vCPU thread needs while it runs.
pub(crate) struct VcpuRunner {
    vcpu: Vcpu,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    control: Arc<RunControl>,
    /// Where this vCPU hands in its state when a snapshot's errand comes.
    slots: Arc<StateSlots>,
    /// The errand count this thread has done up to.
    errands_seen: u64,
}

impl VcpuRunner {
    /// Binds a vCPU to the buses it dispatches to, the VM's exit signal and
    /// the VMM's requests (run, pause, stop: read before every entry into
    /// the guest; the VMM kicks the thread out of `KVM_RUN` with
    /// [`kick_signal`] so that it sees a new request at once).
    pub(crate) fn new(
        vcpu: Vcpu,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
        control: Arc<RunControl>,
        slots: Arc<StateSlots>,
    ) -> Self {
        let errands_seen = control.errands();
        VcpuRunner { vcpu, pio, mmio, exit, control, slots, errands_seen }
    }

    fn rip(&self) -> u64 {
        self.vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Ends the VM for `exit`; every vCPU thread then stops.
    fn end(&self, exit: VmExit) {
        self.exit.request(exit);
        self.control.stop();
    }

    /// KVM's suberror and data words of an internal-error exit.
    fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let run = self.vcpu.fd.get_kvm_run();
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR (the caller got
        // that exit), so `internal` is the active union field.
        let ie = unsafe { run.__bindgen_anon_1.internal };
        let n = (ie.ndata as usize).min(ie.data.len());
        (ie.suberror, ie.data[..n].to_vec())
    }

    /// Handles a port-I/O exit straight from `kvm_run`, so string
    /// instructions (`rep outsb`) are split into their single accesses.
    fn handle_io(&mut self) {
        let run = self.vcpu.fd.get_kvm_run();
        // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the active union field.
        let io = unsafe { run.__bindgen_anon_1.io };
        let (size, count) = (io.size as usize, io.count as usize);
        let base = run as *mut kvm_run as *mut u8;
        // SAFETY: KVM places size*count data bytes at data_offset inside the
        // kvm_run mapping (at least one page).
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), size * count) };
        if size == 0 {
            return;
        }
        for chunk in data.chunks_exact_mut(size) {
            if io.direction as u32 == kvm_bindings::KVM_EXIT_IO_IN {
                self.pio.read(io.port as u64, chunk);
            } else {
                self.pio.write(io.port as u64, chunk);
            }
        }
    }

    /// Lets KVM finish the instruction of the last port or MMIO exit (an
    /// `in`'s value goes to RAX, RIP moves past it) without running the
    /// guest: `KVM_RUN` with `immediate_exit` set, which KVM's API
    /// documentation names for this. Until then the vCPU's registers are
    /// not the guest's state, and a snapshot of them would replay or lose
    /// the access.
    fn complete_pending_io(&mut self) {
        self.vcpu.fd.set_kvm_immediate_exit(1);
        match self.vcpu.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => log::warn!("vCPU {}: completing pending I/O before a snapshot: {e}", self.vcpu.id),
            Ok(exit) => log::warn!("vCPU {}: KVM_RUN with immediate_exit returned {exit:?}", self.vcpu.id),
        }
        self.vcpu.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the vCPU until the VM ends. A pause request parks the thread
    /// here, outside `KVM_RUN` (so the vCPU's state is still, and its
    /// ioctls from other threads do not wait for a guest exit).
    pub(crate) fn run(mut self) {
        let id = self.vcpu.id;
        KVM_RUN.with(|c| c.set(self.vcpu.fd.get_kvm_run() as *mut kvm_run));
        loop {
            // What the VMM asks, before every entry into the guest.
            match self.control.request() {
                _ if self.exit.is_set() => break,
                RunRequest::Run => {}
                RunRequest::Pause => {
                    // An errand while parked: hand in this vCPU's state.
                    let errands = self.control.errands();
                    if errands != self.errands_seen {
                        self.errands_seen = errands;
                        self.complete_pending_io();
                        self.slots.hand_in(&self.vcpu);
                    }
                    self.control.park(self.errands_seen);
                    continue;
                }
                RunRequest::Stop => break,
            }
            match handle_exit(id, self.vcpu.fd.run()) {
                ExitAction::Resume => {}
                ExitAction::Ignore(what) => log::warn!("{what}"),
                ExitAction::PortIo => self.handle_io(),
                ExitAction::MmioRead(addr, data) => self.mmio.read(addr, data),
                ExitAction::MmioWrite(addr, data) => self.mmio.write(addr, data),
                ExitAction::Kicked => self.vcpu.fd.set_kvm_immediate_exit(0),
                ExitAction::End(exit) => self.end(exit),
                ExitAction::Crash(crash) => {
                    let rip = self.rip();
                    let internal = (crash == Crash::InternalError).then(|| self.internal_error());
                    self.end(crash.into_exit(id, rip, internal));
                }
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
        self.control.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_bits() {
        let mut l = kvm_bindings::kvm_lapic_state::default();
        l.regs[APIC_LVT0] = 0x10_u8 as _;
        l.regs[APIC_LVT0 + 2] = 0x01 as _; // mask bit 16
        set_lapic_lvt(&mut l, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(l.regs[APIC_LVT0] as u8, 0x10);
        assert_eq!(l.regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(l.regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
