/*
 * acpi: finds and checks the VMM's ACPI tables the way an OS does.
 *
 * The RSDP is found three ways, which must agree: the boot protocol's
 * pointer (zero page acpi_rsdp_addr for the Linux 64-bit entry, PVH
 * start_info rsdp_paddr), and the scan of the BIOS area 0xE0000-0xFFFFF on
 * 16-byte boundaries. Then the XSDT is walked: every table's length and
 * checksum, the FADT (hardware-reduced flag, its DSDT), the MADT (one
 * enabled local APIC or x2APIC entry per vCPU with APIC IDs 0..n-1, one
 * IOAPIC at 0xfec00000 with GSI base 0).
 *
 * Parameters: ncpus=N (the MADT must list N CPUs), nvirtio=K (the DSDT
 * must name K "LNRO0005" devices; default 0), expect_entry=pvh|linux64.
 * Prints "madt: N local APICs", "dsdt: K LNRO0005" and "ACPI OK", exit 0;
 * 10..59 the check that failed (CHECK lines).
 */
#include "rt.h"

#define BIOS_AREA 0xe0000ul
#define BIOS_AREA_END 0x100000ul
#define ZP_ACPI_RSDP 0x70
#define PVH_RSDP 32
#define FADT_FLAGS 112
#define FADT_X_DSDT 140
#define FADT_HW_REDUCED (1u << 20)

static u32 rd32(const u8 *p) { return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u64 rd64(const u8 *p) { return rd32(p) | (u64)rd32(p + 4) << 32; }

static u8 sum(const u8 *p, u32 len)
{
    u8 s = 0;
    while (len--)
        s += *p++;
    return s;
}

static bool valid_rsdp(const u8 *p)
{
    return !memcmp(p, "RSD PTR ", 8) && sum(p, 20) == 0 && p[15] >= 2 && rd32(p + 20) == 36 && sum(p, 36) == 0;
}

/* A table's header checked: a plausible length and a zero checksum. */
static const u8 *sdt(u64 addr, const char *want)
{
    const u8 *t = (const u8 *)addr;
    u32 len = rd32(t + 4);
    rt_printf("table %c%c%c%c at 0x%lx, %u bytes, revision %u, oem \"%c%c%c%c%c%c\"\n", t[0], t[1], t[2], t[3],
              addr, len, t[8], t[10], t[11], t[12], t[13], t[14], t[15]);
    CHECK(addr >= 0x1000 && addr < (4ul << 30), 20);
    CHECK(len >= 36 && len < 0x10000, 21);
    CHECK(sum(t, len) == 0, 22);
    if (want)
        CHECK(!memcmp(t, want, 4), 23);
    return t;
}

static u64 find_rsdp(void)
{
    u64 via_boot;
    if (rt_boot.kind == BOOT_PVH)
        via_boot = rd64((const u8 *)rt_boot.start_info + PVH_RSDP);
    else
        via_boot = rd64((const u8 *)rt_boot.zero_page + ZP_ACPI_RSDP);
    u64 via_scan = 0;
    for (u64 a = BIOS_AREA; a < BIOS_AREA_END; a += 16)
        if (valid_rsdp((const u8 *)a)) {
            via_scan = a;
            break;
        }
    rt_printf("rsdp: 0x%lx from the %s, 0x%lx from the BIOS-area scan\n", via_boot,
              rt_boot.kind == BOOT_PVH ? "PVH start info" : "zero page", via_scan);
    CHECK(via_boot != 0, 10);
    CHECK(via_scan != 0, 11);
    CHECK(via_boot == via_scan, 12);
    CHECK(valid_rsdp((const u8 *)via_boot), 13);
    return via_boot;
}

static u32 count_str(const u8 *p, u32 len, const char *s)
{
    u32 n = 0, k = (u32)strlen(s);
    for (u32 i = 0; i + k <= len; i++)
        if (!memcmp(p + i, s, k))
            n++;
    return n;
}

static void check_madt(const u8 *m, u32 ncpus)
{
    u32 len = rd32(m + 4), lapics = 0, ioapics = 0;
    u32 seen = 0; /* bit per APIC ID below 32 */
    CHECK(rd32(m + 36) == 0xfee00000u, 30);
    for (u32 off = 44; off < len;) {
        const u8 *e = m + off;
        CHECK(e[1] >= 2 && off + e[1] <= len, 31);
        if (e[0] == 0 && (rd32(e + 4) & 1)) { /* processor local APIC, enabled */
            lapics++;
            if (e[3] < 32)
                seen |= 1u << e[3];
        } else if (e[0] == 9 && (rd32(e + 8) & 1)) { /* processor local x2APIC */
            lapics++;
            if (rd32(e + 4) < 32)
                seen |= 1u << rd32(e + 4);
        } else if (e[0] == 1) { /* IOAPIC */
            ioapics++;
            CHECK(rd32(e + 4) == 0xfec00000u, 32);
            CHECK(rd32(e + 8) == 0, 33);
        }
        off += e[1];
    }
    rt_printf("madt: %u local APICs, %u IOAPIC\n", lapics, ioapics);
    CHECK(ioapics == 1, 34);
    if (ncpus) {
        CHECK(lapics == ncpus, 35);
        if (ncpus <= 32)
            CHECK(seen == (ncpus == 32 ? ~0u : (1u << ncpus) - 1), 36);
    }
}

int main(void)
{
    if (rt_param("expect_entry"))
        CHECK(rt_param_is("expect_entry", rt_boot.kind == BOOT_PVH ? "pvh" : "linux64"), 14);
    const u8 *rsdp = (const u8 *)find_rsdp();
    const u8 *xsdt = sdt(rd64(rsdp + 24), "XSDT");
    u32 n = (rd32(xsdt + 4) - 36) / 8;
    bool fadt = false, madt = false;
    for (u32 i = 0; i < n; i++) {
        const u8 *t = sdt(rd64(xsdt + 36 + 8 * i), NULL);
        if (!memcmp(t, "FACP", 4)) {
            fadt = true;
            CHECK(rd32(t + 4) >= 276, 40);
            CHECK(rd32(t + FADT_FLAGS) & FADT_HW_REDUCED, 41);
            const u8 *dsdt = sdt(rd64(t + FADT_X_DSDT), "DSDT");
            u32 nv = count_str(dsdt, rd32(dsdt + 4), "LNRO0005");
            rt_printf("dsdt: %u LNRO0005 devices\n", nv);
            CHECK(nv == rt_param_u64("nvirtio", 0), 42);
            CHECK(count_str(dsdt, rd32(dsdt + 4), "_S5_") == 1, 43);
        } else if (!memcmp(t, "APIC", 4)) {
            madt = true;
            check_madt(t, (u32)rt_param_u64("ncpus", 0));
        }
    }
    CHECK(fadt, 44);
    CHECK(madt, 45);
    rt_puts("ACPI OK\n");
    return 0;
}
