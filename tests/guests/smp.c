/*
 * smp: wakes every application processor with INIT/SIPI and sees each run.
 *
 * Parameters: ncpus=N (default 2). Each AP runs the real-mode trampoline,
 * enters long mode, and records its APIC IDs (CPUID leaf 1 and leaf 0xB).
 * Prints "SMP OK: N CPUs" and exits 0; 60 an AP never arrived, 61 an AP
 * reported the wrong APIC ID, 62 too many CPUs for the runtime.
 * The IPIs go through the x2APIC when the CPU has one: on PVM hosts the
 * xAPIC MMIO ICR does not start APs (../shared/KVM-HERE.md).
 */
#include "rt.h"

#define MAX_CPUS 16

static volatile u32 arrived;
static volatile u32 apic_id_leaf1[MAX_CPUS];
static volatile u32 apic_id_leafb[MAX_CPUS];

void ap_main(int index)
{
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    apic_id_leaf1[index] = b >> 24;
    cpuid(0xb, 0, &a, &b, &c, &d);
    apic_id_leafb[index] = d;
    __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
}

static bool wait_arrived(u32 want, u64 spins)
{
    for (u64 i = 0; i < spins; i++) {
        if (arrived >= want)
            return true;
        cpu_relax();
    }
    return arrived >= want;
}

int main(void)
{
    u32 n = (u32)rt_param_u64("ncpus", 2);
    CHECK(n >= 1 && n <= MAX_CPUS, 62);
    rt_apic_init();
    rt_smp_prepare();
    rt_printf("smp: starting %u APs through the %s\n", n - 1, rt_x2apic() ? "x2APIC" : "xAPIC");
    for (u32 id = 1; id < n; id++) {
        u32 before = arrived;
        rt_apic_icr(id, 0xc500); /* INIT, level, assert */
        rt_apic_icr(id, 0x8500); /* INIT, level, de-assert */
        rt_spin(1000);
        u32 sipi = 0x0600 | (AP_TRAMPOLINE >> 12);
        rt_apic_icr(id, sipi);
        if (!wait_arrived(before + 1, 200000)) {
            rt_apic_icr(id, sipi); /* the spec's second SIPI */
            if (!wait_arrived(before + 1, 2000000)) {
                rt_printf("smp: AP %u never arrived\n", id);
                return 60;
            }
        }
        rt_printf("smp: AP %u up: apic id %u (leaf 1), %u (leaf 0xb)\n", id, apic_id_leaf1[id - 1],
                  apic_id_leafb[id - 1]);
        CHECK(apic_id_leaf1[id - 1] == id, 61);
        CHECK(apic_id_leafb[id - 1] == id, 61);
    }
    rt_printf("SMP OK: %u CPUs\n", n);
    return 0;
}
