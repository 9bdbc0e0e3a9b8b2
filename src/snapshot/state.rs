//! What a state file holds (the JSON payload of [`super::file`]): the
//! machine's shape, the host CPU it ran on, each vCPU's registers, the
//! in-kernel irqchip, PIT and clock, and the devices' states. Every type
//! refuses unknown fields; [`VmState::check`] then refuses what parses but
//! cannot be this machine's state.

use std::path::PathBuf;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use serde::{Deserialize, Serialize};

use super::devices::DeviceStates;
use super::SnapshotError;

/// The most MSRs one vCPU's state may carry (KVM saves a few hundred).
pub(crate) const MAX_MSRS: usize = 1024;

/// The host CPU a snapshot was taken on: restoring on another model could
/// give the guest a CPUID it cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModel {
    /// CPUID leaf 0's vendor string (`GenuineIntel`, `AuthenticAMD`).
    pub vendor: String,
    /// Family, as leaf 1 encodes it (base + extended).
    pub family: u32,
    /// Model (with the extended model bits).
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

impl CpuModel {
    /// The model of the CPU this process runs on.
    pub(crate) fn host(cpuid: impl Fn(u32) -> [u32; 4]) -> Self {
        let l0 = cpuid(0);
        let mut vendor = Vec::with_capacity(12);
        for r in [l0[1], l0[3], l0[2]] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        let eax = cpuid(1)[0];
        let base_family = (eax >> 8) & 0xf;
        let family = if base_family == 0xf { base_family + ((eax >> 20) & 0xff) } else { base_family };
        let model = if base_family == 0x6 || base_family == 0xf {
            ((eax >> 4) & 0xf) | (((eax >> 16) & 0xf) << 4)
        } else {
            (eax >> 4) & 0xf
        };
        CpuModel { vendor: String::from_utf8_lossy(&vendor).into_owned(), family, model, stepping: eax & 0xf }
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} family {:#x} model {:#x} stepping {}", self.vendor, self.family, self.model, self.stepping)
    }
}

/// A disk as the snapshot's VM had it: restored on the same file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedDisk {
    /// The image (or block device).
    pub path: PathBuf,
    /// Served read-only.
    pub read_only: bool,
    /// The serial the guest reads (`VIRTIO_BLK_T_GET_ID`).
    pub id: Option<String>,
    /// `pci` or `mmio`.
    pub transport: String,
}

/// A NIC as the snapshot's VM had it: restored on the same TAP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedNet {
    /// The TAP device's name.
    pub tap: String,
    /// The MAC the guest saw.
    pub mac: [u8; 6],
    /// `pci` or `mmio`.
    pub transport: String,
}

/// The shape of the machine: what a new ember builds before it puts the
/// saved state in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Guest RAM in bytes (the memory file's length).
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The debug-exit port at 0xf4.
    pub debug_exit: bool,
    /// UARTs after COM1.
    pub extra_serials: u8,
    /// Disks, in guest order.
    pub disks: Vec<SavedDisk>,
    /// NICs, in guest order.
    pub nets: Vec<SavedNet>,
    /// The kernel command line the guest booted with (for the record).
    pub cmdline: String,
}

/// One vCPU's state, everything `KVM_GET_*` gives.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// Its CPUID (`KVM_GET_CPUID2`).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE state: `struct kvm_fpu`'s bytes (kvm-bindings gives it no
    /// serde form), restored before `xsave`.
    pub fpu: Vec<u8>,
    /// The XSAVE area, when KVM has `KVM_CAP_XSAVE`.
    pub xsave: Option<kvm_xsave>,
    /// XCR0, when KVM has `KVM_CAP_XCRS`.
    pub xcrs: Option<kvm_xcrs>,
    /// Every MSR KVM let ember read (its index list), the TSC and kvmclock
    /// ones included.
    pub msrs: Vec<kvm_msr_entry>,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub events: kvm_vcpu_events,
    /// DR0–DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// The guest TSC's frequency in kHz, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

/// `fpu`'s bytes.
pub(crate) fn fpu_bytes(fpu: &kvm_fpu) -> Vec<u8> {
    let n = std::mem::size_of::<kvm_fpu>();
    // SAFETY: kvm_fpu is a plain C struct of integer fields with no
    // padding; reading its n bytes through a byte pointer is sound.
    unsafe { std::slice::from_raw_parts(fpu as *const kvm_fpu as *const u8, n) }.to_vec()
}

/// The `kvm_fpu` whose bytes are `b`, if `b` has its size.
pub(crate) fn fpu_from_bytes(b: &[u8]) -> Option<kvm_fpu> {
    let mut fpu = kvm_fpu::default();
    let n = std::mem::size_of::<kvm_fpu>();
    if b.len() != n {
        return None;
    }
    // SAFETY: `fpu` is n bytes of plain integers, any bit pattern of which
    // is valid; `b` has exactly n bytes and does not overlap it.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut fpu as *mut kvm_fpu as *mut u8, n) };
    Some(fpu)
}

/// The whole saved state of a paused VM but its memory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// The ember that wrote it (`CARGO_PKG_VERSION`), for the record.
    pub ember_version: String,
    /// The host CPU it ran on.
    pub cpu: CpuModel,
    /// The machine's shape.
    pub machine: Machine,
    /// vCPU 0, 1, …
    pub vcpus: Vec<VcpuState>,
    /// The master PIC (`KVM_GET_IRQCHIP`, chip 0).
    pub pic_master: kvm_irqchip,
    /// The slave PIC (chip 1).
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock's base.
    pub clock: kvm_clock_data,
    /// The devices.
    pub devices: DeviceStates,
}

impl VmState {
    /// Refuses a state that parsed but cannot belong to the machine it
    /// describes (counts, chip ids, sizes), naming the bad value.
    pub(crate) fn check(&self) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::Inconsistent(what));
        let m = &self.machine;
        if self.vcpus.len() != usize::from(m.vcpus) || m.vcpus == 0 {
            return bad(format!("{} vCPU states for a machine of {} vCPUs", self.vcpus.len(), m.vcpus));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if v.cpuid.is_empty() || v.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
                return bad(format!("vCPU {i} has {} CPUID entries (1 to {KVM_MAX_CPUID_ENTRIES})", v.cpuid.len()));
            }
            if fpu_from_bytes(&v.fpu).is_none() {
                return bad(format!(
                    "vCPU {i}'s FPU state is {} bytes ({})",
                    v.fpu.len(),
                    std::mem::size_of::<kvm_fpu>()
                ));
            }
            if v.msrs.len() > MAX_MSRS {
                return bad(format!("vCPU {i} has {} MSRs (at most {MAX_MSRS})", v.msrs.len()));
            }
        }
        for (chip, want) in [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != want {
                return bad(format!("irqchip {} where chip {want} belongs", chip.chip_id));
            }
        }
        if m.extra_serials > 3 {
            return bad(format!("{} extra UARTs (at most 3)", m.extra_serials));
        }
        for d in &m.disks {
            if crate::config::VirtioTransport::from_name(&d.transport).is_none() {
                return bad(format!("disk {} on transport {:?}", d.path.display(), d.transport));
            }
        }
        for n in &m.nets {
            if crate::config::VirtioTransport::from_name(&n.transport).is_none() {
                return bad(format!("NIC on {} on transport {:?}", n.tap, n.transport));
            }
        }
        self.devices.check(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_decodes_leaf_1() {
        // "AuthenticAMD", family 0x19 model 0x21 stepping 2 (Zen 3).
        let amd = |leaf| match leaf {
            0 => [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            1 => [0x00a2_0f12, 0, 0, 0],
            _ => [0; 4],
        };
        let m = CpuModel::host(amd);
        assert_eq!(m, CpuModel { vendor: "AuthenticAMD".into(), family: 0x19, model: 0x21, stepping: 2 });
        assert_eq!(m.to_string(), "AuthenticAMD family 0x19 model 0x21 stepping 2");
        // Intel family 6 model 0x55 stepping 4 (Skylake-SP).
        let intel = |leaf| match leaf {
            1 => [0x0005_0654, 0, 0, 0],
            _ => [0; 4],
        };
        let m = CpuModel::host(intel);
        assert_eq!((m.family, m.model, m.stepping), (6, 0x55, 4));
    }
}
