//! The CPUID each vCPU sees: what KVM supports, with this vCPU's APIC ID and
//! the VM's topology filled in, the TSC-deadline timer when KVM emulates
//! it, and no performance-monitoring unit (ember gives guests none: leaf
//! 0xA and AMD's counter extensions are cleared; [`PMU_MSR_RANGES`] lists
//! the counter MSRs a VMM should also deny, since AMD's legacy counters
//! have no CPUID bit). The hypervisor leaves (0x40000000…: the KVM
//! signature and paravirtual features) pass through exactly as KVM
//! reports them.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;
const LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;

const ECX_CX16: u32 = 1 << 13;
/// Perfmon and debug capability (IA32_PERF_CAPABILITIES).
const ECX_PDCM: u32 = 1 << 15;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_CMP_LEGACY: u32 = 1 << 1;
/// AMD core, northbridge and last-level-cache performance counters.
const EXT_ECX_PERFCTR: u32 = (1 << 23) | (1 << 24) | (1 << 28);

/// The performance-counter MSRs a guest without a PMU must not reach
/// (`(first, count)`): AMD's legacy counters (K7 event selects and
/// counters, 0xc0010000–0xc0010007), which Linux probes on any AMD CPU of
/// family 6 or later whatever CPUID says, and the core-extension ones
/// (0xc0010200–0xc001020b). Denied, a guest access raises #GP, which Linux
/// reads as "PMU not available due to virtualization"; allowed, KVM
/// without a PMU drops the write and logs it on every boot.
pub(crate) const PMU_MSR_RANGES: &[(u32, u32)] = &[(0xc001_0000, 8), (0xc001_0200, 12)];

/// Per-VM CPUID choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuidOptions {
    /// Number of vCPUs (one core each, one package).
    pub(crate) vcpus: u8,
    /// Hide CMPXCHG16B. Set on hosts whose KVM emulates guest code
    /// instruction by instruction (PVM) and lacks that instruction.
    pub hide_cx16: bool,
    /// KVM emulates the local APIC timer's TSC-deadline mode
    /// (`KVM_CAP_TSC_DEADLINE_TIMER`): advertise it (leaf 1 ECX bit 24).
    pub(crate) tsc_deadline: bool,
}

/// Bits needed to number `n` items.
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n as u32 - 1).leading_zeros()
    }
}

fn topology_entry(e: &mut kvm_cpuid_entry2, apic_id: u8, vcpus: u8) {
    e.edx = apic_id as u32;
    match e.index {
        // SMT level: one thread per core.
        0 => {
            e.eax = 0;
            e.ebx = 1;
            e.ecx = 1 << 8;
        }
        // Core level: every vCPU is a core of the one package.
        1 => {
            e.eax = id_bits(vcpus);
            e.ebx = vcpus as u32;
            e.ecx = 1 | (2 << 8);
        }
        n => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = n;
        }
    }
}

fn has(cpuid: &CpuId, function: u32, index: u32) -> bool {
    cpuid.as_slice().iter().any(|e| e.function == function && e.index == index)
}

/// Adds the topology subleaves KVM leaves out: it reports leaf 0xB (and
/// 0x1F) with subleaf 0 only ("no topology"), and a guest finds the core
/// level in subleaf 1 and the end of the list in subleaf 2.
fn add_topology_subleaves(cpuid: &mut CpuId) {
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if !has(cpuid, leaf, 0) {
            continue;
        }
        for index in 1..=2 {
            if has(cpuid, leaf, index) {
                continue;
            }
            let e = kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            if cpuid.push(e).is_err() {
                log::debug!("CPUID list full: no leaf {leaf:#x} subleaf {index}");
            }
        }
    }
}

/// Fills leaves KVM reports empty with the host's own values, as peers do:
/// the brand string (0x80000002–4, else Linux names the CPU from its
/// family, "AMD Hammer") and AMD's L1 cache and TLB leaf (0x80000005).
/// `host` runs CPUID on the host.
pub(crate) fn fill_from_host(cpuid: &mut CpuId, host: impl Fn(u32) -> [u32; 4]) {
    for e in cpuid.as_mut_slice() {
        if matches!(e.function, 0x8000_0002..=0x8000_0005) && (e.eax, e.ebx, e.ecx, e.edx) == (0, 0, 0, 0) {
            [e.eax, e.ebx, e.ecx, e.edx] = host(e.function);
        }
    }
}

/// CPUID on the host (for [`fill_from_host`]).
pub(crate) fn host_cpuid(leaf: u32) -> [u32; 4] {
    // SAFETY: CPUID exists on every x86_64 CPU and only reads registers.
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(leaf) };
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Returns the CPUID for the vCPU with `apic_id`, derived from KVM's
/// supported list.
pub(crate) fn for_vcpu(supported: &CpuId, apic_id: u8, opts: CpuidOptions) -> CpuId {
    let mut cpuid = supported.clone();
    add_topology_subleaves(&mut cpuid);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0xff) | (8 << 8) | ((opts.vcpus as u32) << 16) | ((apic_id as u32) << 24);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !ECX_PDCM;
                if opts.hide_cx16 {
                    e.ecx &= !ECX_CX16;
                }
                if opts.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if opts.vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                e.eax = (e.eax & 0x03ff_ffff) | (((opts.vcpus as u32).saturating_sub(1) & 0x3f) << 26);
            }
            LEAF_PERFMON | LEAF_AMD_PERFMON_V2 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => topology_entry(e, apic_id, opts.vcpus),
            LEAF_EXT_FEATURES => {
                if opts.vcpus > 1 {
                    e.ecx |= EXT_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT_ECX_CMP_LEGACY;
                }
                e.ecx &= !EXT_ECX_PERFCTR;
            }
            LEAF_EXT_SIZES => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(opts.vcpus) << 12) | (opts.vcpus as u32 - 1);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = apic_id as u32;
                e.ebx = apic_id as u32;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

/// Whether this host's KVM runs guest code by emulating it (PVM), which
/// lacks some instructions a VMM can hide (CMPXCHG16B).
pub(crate) fn host_emulates_guests() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ecx: ECX_CX16, ..Default::default() }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0),
            entry(1, 0),
            kvm_cpuid_entry2 { function: 0xa, eax: 0x0704_3002, ebx: 0x7f, edx: 0x603, ..Default::default() },
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            kvm_cpuid_entry2 { function: 0x4000_0000, ebx: 0x4b4d_564b, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x4000_0001, eax: 0x0100_7afb, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_0001, ecx: 0x1180_0001 | EXT_ECX_PERFCTR, ..Default::default() },
            entry(0x8000_0008, 0),
            kvm_cpuid_entry2 { function: 0x8000_0022, eax: 1, ebx: 6, ..Default::default() },
        ])
        .unwrap()
    }

    const OPTS: CpuidOptions = CpuidOptions { vcpus: 1, hide_cx16: false, tsc_deadline: false };

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_ids_and_topology() {
        let opts = CpuidOptions { vcpus: 4, hide_cx16: true, tsc_deadline: true };
        for id in 0..4u8 {
            let c = for_vcpu(&sample(), id, opts);
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, id as u32);
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_eq!(l1.ecx & ECX_CX16, 0);
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            let core = find(&c, 0xb, 1);
            assert_eq!((core.eax, core.ebx, core.edx), (2, 4, id as u32));
            assert_eq!(find(&c, 0xb, 2).ecx, 2);
            assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
        }
    }

    #[test]
    fn hypervisor_leaves_pass_through() {
        let c = for_vcpu(&sample(), 0, OPTS);
        assert_eq!(find(&c, 0x4000_0000, 0).ebx, 0x4b4d_564b);
        assert_eq!(find(&c, 0x4000_0001, 0).eax, 0x0100_7afb);
        assert_ne!(find(&c, 1, 0).ecx & ECX_CX16, 0);
    }

    #[test]
    fn tsc_deadline_follows_kvm() {
        let off = for_vcpu(&sample(), 0, OPTS);
        assert_eq!(find(&off, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        let on = for_vcpu(&sample(), 0, CpuidOptions { tsc_deadline: true, ..OPTS });
        assert_ne!(find(&on, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn no_pmu() {
        let c = for_vcpu(&sample(), 0, OPTS);
        let a = find(&c, 0xa, 0);
        assert_eq!((a.eax, a.ebx, a.ecx, a.edx), (0, 0, 0, 0));
        assert_eq!(find(&c, 1, 0).ecx & ECX_PDCM, 0);
        let ext = find(&c, 0x8000_0001, 0);
        assert_eq!(ext.ecx, 0x1180_0001 & !EXT_ECX_PERFCTR);
        assert_eq!((find(&c, 0x8000_0022, 0).eax, find(&c, 0x8000_0022, 0).ebx), (0, 0));
        // The legacy AMD counters: event selects 0xc0010000-3, counters -7.
        assert!(PMU_MSR_RANGES.iter().any(|&(b, n)| (b..b + n).contains(&0xc001_0007)));
    }

    #[test]
    fn topology_subleaves_are_added_when_kvm_leaves_them_out() {
        // KVM's own list: leaf 0xB with subleaf 0 only.
        let supported = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        for id in 0..3u8 {
            let c = for_vcpu(&supported, id, CpuidOptions { vcpus: 3, ..OPTS });
            let (smt, core, end) = (find(&c, 0xb, 0), find(&c, 0xb, 1), find(&c, 0xb, 2));
            assert_eq!((smt.ebx, smt.ecx, smt.edx), (1, 0x100, id as u32));
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, id as u32));
            assert_eq!((end.ebx, end.ecx & 0xff00), (0, 0), "level type 0 ends the list");
            assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
        // No leaf 0xB, nothing added.
        let c = for_vcpu(&CpuId::from_entries(&[entry(1, 0)]).unwrap(), 0, OPTS);
        assert_eq!(c.as_slice().len(), 1);
    }

    #[test]
    fn empty_brand_and_l1_cache_leaves_come_from_the_host() {
        let mut c = CpuId::from_entries(&[
            entry(0x8000_0002, 0),
            kvm_cpuid_entry2 { function: 0x8000_0005, eax: 7, ..Default::default() },
            entry(0x8000_0006, 0),
        ])
        .unwrap();
        for e in c.as_mut_slice() {
            e.ecx = 0;
        }
        fill_from_host(&mut c, |leaf| [leaf, 1, 2, 3]);
        let b = find(&c, 0x8000_0002, 0);
        assert_eq!([b.eax, b.ebx, b.ecx, b.edx], [0x8000_0002, 1, 2, 3]);
        // KVM's own values stay; other leaves are not touched.
        assert_eq!(find(&c, 0x8000_0005, 0).eax, 7);
        assert_eq!(find(&c, 0x8000_0006, 0).eax, 0);
        // The real host has a brand string.
        assert_ne!(host_cpuid(0x8000_0000)[0], 0);
    }

    #[test]
    fn id_bits_values() {
        assert_eq!([id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5), id_bits(254)], [0, 1, 2, 2, 3, 8]);
    }
}
