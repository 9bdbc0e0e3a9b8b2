//! A vCPU's whole state, read for a snapshot and written back on restore,
//! and the slots through which parked vCPU threads hand theirs in.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use super::Vcpu;
use crate::snapshot::state::{fpu_bytes, fpu_from_bytes};
use crate::snapshot::{SnapshotError, VcpuState};
use crate::sync::{lock, wait_timeout};

/// What reading a vCPU's state needs to know about KVM, found once per VM.
#[derive(Clone, Debug, Default)]
pub(crate) struct SaveContext {
    /// The MSRs to save (`KVM_GET_MSR_INDEX_LIST`).
    msrs: Vec<u32>,
    /// `KVM_CAP_XSAVE`.
    xsave: bool,
    /// `KVM_CAP_XCRS`.
    xcrs: bool,
}

impl SaveContext {
    /// Asks `kvm`.
    pub(crate) fn new(kvm: &Kvm) -> Self {
        let msrs = kvm.get_msr_index_list().map(|l| l.as_slice().to_vec()).unwrap_or_default();
        SaveContext { msrs, xsave: kvm.check_extension(Cap::Xsave), xcrs: kvm.check_extension(Cap::Xcrs) }
    }
}

fn verr(vcpu: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Vcpu { vcpu, what, source }
}

/// Reads every MSR of `list` KVM lets user space read: `KVM_GET_MSRS`
/// stops at the first it refuses, which is left out.
fn read_msrs(fd: &VcpuFd, id: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> =
            rest.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::Inconsistent("MSR list".into()))?;
        let n = fd.get_msrs(&mut msrs).map_err(verr(id, "KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < rest.len() {
            log::debug!("vCPU {id}: MSR {:#x} cannot be read; not saved", rest[n]);
        }
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

impl Vcpu {
    /// Reads this vCPU's state (it must be out of `KVM_RUN`).
    pub(crate) fn save_state(&self, ctx: &SaveContext) -> Result<VcpuState, SnapshotError> {
        let (fd, id) = (&self.fd, self.id);
        let cpuid =
            fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(verr(id, "KVM_GET_CPUID2"))?.as_slice().to_vec();
        Ok(VcpuState {
            cpuid,
            regs: fd.get_regs().map_err(verr(id, "KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(verr(id, "KVM_GET_SREGS"))?,
            fpu: fpu_bytes(&fd.get_fpu().map_err(verr(id, "KVM_GET_FPU"))?),
            xsave: if ctx.xsave { Some(fd.get_xsave().map_err(verr(id, "KVM_GET_XSAVE"))?) } else { None },
            xcrs: if ctx.xcrs { Some(fd.get_xcrs().map_err(verr(id, "KVM_GET_XCRS"))?) } else { None },
            msrs: read_msrs(fd, id, &ctx.msrs)?,
            lapic: fd.get_lapic().map_err(verr(id, "KVM_GET_LAPIC"))?,
            mp_state: fd.get_mp_state().map_err(verr(id, "KVM_GET_MP_STATE"))?,
            events: fd.get_vcpu_events().map_err(verr(id, "KVM_GET_VCPU_EVENTS"))?,
            debug_regs: fd.get_debug_regs().map_err(verr(id, "KVM_GET_DEBUGREGS"))?,
            tsc_khz: fd.get_tsc_khz().ok(),
        })
    }

    /// Puts `s` into this freshly created vCPU, in the order KVM needs:
    /// CPUID and the TSC frequency first, the special registers (APIC
    /// base, EFER) before the local APIC and the MSRs, the pending events
    /// last.
    pub(crate) fn restore_state(&self, s: &VcpuState) -> Result<(), SnapshotError> {
        let (fd, id) = (&self.fd, self.id);
        let cpuid = CpuId::from_entries(&s.cpuid)
            .map_err(|_| SnapshotError::Inconsistent(format!("vCPU {id}: {} CPUID entries", s.cpuid.len())))?;
        fd.set_cpuid2(&cpuid).map_err(verr(id, "KVM_SET_CPUID2"))?;
        if let Some(khz) = s.tsc_khz {
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(verr(id, "KVM_SET_TSC_KHZ"))?;
            }
        }
        fd.set_mp_state(s.mp_state).map_err(verr(id, "KVM_SET_MP_STATE"))?;
        fd.set_regs(&s.regs).map_err(verr(id, "KVM_SET_REGS"))?;
        fd.set_sregs(&s.sregs).map_err(verr(id, "KVM_SET_SREGS"))?;
        let fpu = fpu_from_bytes(&s.fpu)
            .ok_or_else(|| SnapshotError::Inconsistent(format!("vCPU {id}: FPU state of {} bytes", s.fpu.len())))?;
        fd.set_fpu(&fpu).map_err(verr(id, "KVM_SET_FPU"))?;
        if let Some(x) = &s.xsave {
            // SAFETY: `x` is a whole kvm_xsave (4 KiB) as KVM_GET_XSAVE
            // gave it; KVM reads exactly that much.
            unsafe { fd.set_xsave(x) }.map_err(verr(id, "KVM_SET_XSAVE"))?;
        }
        if let Some(x) = &s.xcrs {
            fd.set_xcrs(x).map_err(verr(id, "KVM_SET_XCRS"))?;
        }
        fd.set_debug_regs(&s.debug_regs).map_err(verr(id, "KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&s.lapic).map_err(verr(id, "KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&s.msrs)
            .map_err(|_| SnapshotError::Inconsistent(format!("vCPU {id}: {} MSRs", s.msrs.len())))?;
        let set = fd.set_msrs(&msrs).map_err(verr(id, "KVM_SET_MSRS"))?;
        if set < s.msrs.len() {
            return Err(SnapshotError::Inconsistent(format!(
                "vCPU {id}: KVM refused MSR {:#x} = {:#x}",
                s.msrs[set].index, s.msrs[set].data
            )));
        }
        fd.set_vcpu_events(&s.events).map_err(verr(id, "KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

/// Where the parked vCPU threads hand in their state for a snapshot.
pub(crate) struct StateSlots {
    ctx: SaveContext,
    slots: Mutex<Vec<Option<Result<VcpuState, SnapshotError>>>>,
    cv: Condvar,
}

impl StateSlots {
    /// Slots for `count` vCPUs.
    pub(crate) fn new(ctx: SaveContext, count: usize) -> Self {
        StateSlots { ctx, slots: Mutex::new((0..count).map(|_| None).collect()), cv: Condvar::new() }
    }

    /// Empties every slot before an errand.
    pub(crate) fn clear(&self) {
        lock(&self.slots).iter_mut().for_each(|s| *s = None);
    }

    /// Called on vCPU `vcpu`'s thread: reads its state into its slot.
    pub(crate) fn hand_in(&self, vcpu: &Vcpu) {
        let state = vcpu.save_state(&self.ctx);
        if let Some(slot) = lock(&self.slots).get_mut(usize::from(vcpu.id)) {
            *slot = Some(state);
        }
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for every slot and takes them, in vCPU order.
    pub(crate) fn collect(&self, timeout: Duration) -> Result<Vec<VcpuState>, SnapshotError> {
        let deadline = Instant::now() + timeout;
        let mut slots = lock(&self.slots);
        while let Some(missing) = slots.iter().position(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                return Err(SnapshotError::VcpuTimeout { vcpu: missing as u8, waited: timeout });
            }
            slots = wait_timeout(&self.cv, slots, deadline - now);
        }
        slots.iter_mut().map(|s| s.take().expect("every slot is filled")).collect()
    }
}
