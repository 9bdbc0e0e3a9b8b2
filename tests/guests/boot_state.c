/*
 * boot_state: checks what the VMM handed over at entry.
 *
 * Parameters (kernel command line):
 *   expect_entry=pvh|linux64  which entry the VMM must have used
 *   mem_mib=N                 configured memory; the e820 RAM must cover it
 *   e820_exact=1              the map must be exactly ember's layout
 *                             (docs/boot.md); without it, only the totals
 *   expect_kvm_sig=1          CPUID 0x40000000 must read "KVMKVMKVM"
 *   ncpus=N                   CPUID leaf 1 must report N logical CPUs
 *   initrd_size=N initrd_crc=0xC   the initrd must be there, intact
 * Prints "cmdline=[...]" and the e820 map, then "BOOT-STATE OK".
 * Exit status: 0 pass; 10..59 the check that failed (see CHECK lines).
 */
#include "rt.h"

#define CR0_PE 1ul
#define CR0_PG (1ul << 31)
#define CR4_PAE (1ul << 5)
#define EFER_LME (1ul << 8)
#define EFER_LMA (1ul << 10)
#define RFLAGS_IF (1ul << 9)

static void check_entry(void)
{
    const struct boot_info *b = &rt_boot;
    rt_printf("entry=%s cr0=0x%lx cr4=0x%lx efer=0x%lx rflags=0x%lx\n",
              b->kind == BOOT_PVH ? "pvh" : "linux64", b->entry_cr0, b->entry_cr4, b->entry_efer,
              b->entry_rflags);
    if (rt_param("expect_entry"))
        CHECK(rt_param_is("expect_entry", b->kind == BOOT_PVH ? "pvh" : "linux64"), 10);
    CHECK(!(b->entry_rflags & RFLAGS_IF), 11);
    CHECK(b->entry_cr0 & CR0_PE, 12);
    if (b->kind == BOOT_PVH) {
        /* PVH: 32-bit protected mode, paging off. */
        CHECK(!(b->entry_cr0 & CR0_PG), 13);
        CHECK(!(b->entry_efer & EFER_LMA), 14);
    } else {
        /* Linux 64-bit boot protocol: long mode with paging. */
        CHECK(b->entry_cr0 & CR0_PG, 15);
        CHECK(b->entry_cr4 & CR4_PAE, 16);
        CHECK((b->entry_efer & (EFER_LME | EFER_LMA)) == (EFER_LME | EFER_LMA), 17);
    }
}

static void check_memory(void)
{
    const struct boot_info *b = &rt_boot;
    u64 mem = rt_param_u64("mem_mib", 0) << 20;
    u64 ram = 0, top = 0;
    for (int i = 0; i < b->e820_n; i++) {
        const struct e820 *e = &b->e820[i];
        rt_printf("e820: [0x%lx-0x%lx) type %u\n", e->addr, e->addr + e->size, e->type);
        if (e->size == 0) {
            /* QEMU 7.2's PVH map ends with an empty entry; ember's has none. */
            CHECK(!rt_param_is("e820_exact", "1"), 20);
            continue;
        }
        if (i > 0 && b->e820[i - 1].size)
            CHECK(e->addr >= b->e820[i - 1].addr + b->e820[i - 1].size, 21); /* sorted, disjoint */
        if (e->type == E820_RAM) {
            ram += e->size;
            if (e->addr + e->size > top)
                top = e->addr + e->size;
            /* The RAM is really there: write and read back its last word
             * (the runtime maps the first 4 GiB). */
            if (e->addr + e->size <= (4ul << 30)) {
                volatile u64 *p = (volatile u64 *)(e->addr + e->size - 8);
                u64 old = *p;
                *p = 0x5a5aa5a5deadbeeful ^ e->addr;
                CHECK(*p == (0x5a5aa5a5deadbeeful ^ e->addr), 22);
                *p = old;
            }
        }
    }
    rt_printf("e820: %u entries, RAM 0x%lx bytes, top 0x%lx\n", b->e820_n, ram, top);
    CHECK(b->e820_n > 0, 23);
    if (!mem)
        return;
    const u64 hole_start = 0xc0000000ul, four_g = 1ul << 32;
    u64 low = mem < hole_start ? mem : hole_start;
    u64 high = mem > hole_start ? mem - hole_start : 0;
    CHECK(top == (high ? four_g + high : low), 24);
    /* Everything but the legacy hole below 1 MiB is RAM. */
    CHECK(ram <= mem && ram >= mem - 0x100000, 25);
    if (rt_param_is("e820_exact", "1")) {
        /* ember's map: RAM [0, EBDA), reserved EBDA..640K, RAM [1M, low),
         * the PCI root's ECAM reserved [0xe0000000, +1M), RAM [4G, 4G + high). */
        CHECK(b->e820_n == (high ? 5 : 4), 26);
        CHECK(b->e820[0].addr == 0 && b->e820[0].size == 0x9fc00 && b->e820[0].type == E820_RAM, 27);
        CHECK(b->e820[1].addr == 0x9fc00 && b->e820[1].size == 0x400 && b->e820[1].type != E820_RAM, 28);
        CHECK(b->e820[2].addr == 0x100000 && b->e820[2].size == low - 0x100000 && b->e820[2].type == E820_RAM, 29);
        CHECK(b->e820[3].addr == 0xe0000000ul && b->e820[3].size == 0x100000 && b->e820[3].type != E820_RAM, 31);
        if (high)
            CHECK(b->e820[4].addr == four_g && b->e820[4].size == high && b->e820[4].type == E820_RAM, 30);
    }
}

static void check_cpuid(void)
{
    u32 a, bx, c, d;
    cpuid(1, 0, &a, &bx, &c, &d);
    CHECK(c & (1u << 31), 40); /* running under a hypervisor */
    CHECK((bx >> 24) == 0, 41); /* the boot CPU has APIC ID 0 */
    u64 n = rt_param_u64("ncpus", 0);
    if (n) {
        rt_printf("cpuid: %u logical CPUs, apic id %u\n", (bx >> 16) & 0xff, bx >> 24);
        CHECK(((bx >> 16) & 0xff) == n, 42);
    }
    u32 sig[3];
    cpuid(0x40000000, 0, &a, &sig[0], &sig[1], &sig[2]);
    char s[13];
    memcpy(s, sig, 12);
    s[12] = 0;
    for (int i = 0; i < 12; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            s[i] = '.';
    rt_printf("cpuid: hypervisor signature \"%s\", max leaf 0x%x\n", s, a);
    if (rt_param_is("expect_kvm_sig", "1"))
        CHECK(!memcmp(sig, "KVMKVMKVM\0\0\0", 12), 43);
}

static void check_initrd(void)
{
    const struct boot_info *b = &rt_boot;
    const char *want = rt_param("initrd_size");
    rt_printf("initrd: addr 0x%lx size 0x%lx\n", b->initrd_addr, b->initrd_size);
    if (!want) {
        CHECK(b->initrd_size == 0, 50);
        return;
    }
    CHECK(b->initrd_addr != 0, 51);
    CHECK(b->initrd_size == rt_param_u64("initrd_size", 0), 52);
    CHECK((b->initrd_addr & 0xfff) == 0, 53);
    bool in_ram = false;
    for (int i = 0; i < b->e820_n; i++) {
        const struct e820 *e = &b->e820[i];
        if (e->type == E820_RAM && b->initrd_addr >= e->addr && b->initrd_addr + b->initrd_size <= e->addr + e->size)
            in_ram = true;
    }
    CHECK(in_ram, 54);
    if (b->kind == BOOT_LINUX64 && b->initrd_addr_max)
        CHECK(b->initrd_addr + b->initrd_size - 1 <= b->initrd_addr_max, 55);
    u32 crc = rt_crc32((const void *)b->initrd_addr, b->initrd_size);
    rt_printf("initrd: crc32 0x%x\n", crc);
    CHECK(crc == (u32)rt_param_u64("initrd_crc", 0), 56);
}

int main(void)
{
    rt_printf("cmdline=[%s]\n", rt_boot.cmdline);
    check_entry();
    check_memory();
    check_cpuid();
    check_initrd();
    rt_puts("BOOT-STATE OK\n");
    return 0;
}
