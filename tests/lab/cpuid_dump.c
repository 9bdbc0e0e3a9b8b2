/* The CPUID a guest sees, leaf by leaf (the real-KVM lab's
 * debian_cpuid_beside_qemu step, built static in L1 and run as a guest's
 * user space under ember and under QEMU -cpu host).
 *
 * One line per leaf and sub-leaf:
 *   CPUID 0000000d.01 eax=00000005 ebx=00000000 ecx=00000000 edx=00000000
 * for the basic leaves up to leaf 0's EAX, the hypervisor leaves up to
 * 0x40000000's EAX (when leaf 1 says there is a hypervisor) and the
 * extended leaves up to 0x80000000's EAX. Leaves with sub-leaves are
 * dumped to a fixed count each (sub_leaves()), so two dumps line up.
 */
#include <cpuid.h>
#include <stdio.h>

static unsigned sub_leaves(unsigned leaf)
{
	switch (leaf) {
	case 0x4: case 0x8000001d: return 8;   /* cache parameters */
	case 0x7: return 2;                     /* structured extended features */
	case 0xb: case 0x1f: return 4;          /* topology levels */
	case 0xd: return 64;                    /* XSAVE components */
	case 0xf: case 0x10: case 0x12: case 0x14: case 0x17: case 0x18:
	case 0x1d: case 0x80000020: return 4;
	default: return 1;
	}
}

static void dump(unsigned first, unsigned last)
{
	for (unsigned leaf = first; leaf <= last && leaf - first < 0x100; leaf++) {
		for (unsigned sub = 0; sub < sub_leaves(leaf); sub++) {
			unsigned a, b, c, d;
			__cpuid_count(leaf, sub, a, b, c, d);
			printf("CPUID %08x.%02x eax=%08x ebx=%08x ecx=%08x edx=%08x\n", leaf, sub, a, b, c, d);
		}
	}
}

int main(void)
{
	unsigned a, b, c, d;
	__cpuid_count(0, 0, a, b, c, d);
	dump(0, a);
	__cpuid_count(1, 0, a, b, c, d);
	if (c & (1u << 31)) {
		__cpuid_count(0x40000000, 0, a, b, c, d);
		dump(0x40000000, a < 0x40000000 ? 0x40000000 : a);
	}
	__cpuid_count(0x80000000, 0, a, b, c, d);
	dump(0x80000000, a);
	return 0;
}
