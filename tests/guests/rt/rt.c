/* ember test-guest runtime: boot information, serial, exit, interrupts,
 * APIC and SMP helpers. See rt.h. */
#include "rt.h"

struct boot_info rt_boot;

extern u64 rt_boot_kind, rt_boot_start_info, rt_boot_zero_page, rt_boot_cr0, rt_boot_cr4,
    rt_boot_efer, rt_boot_rflags;
extern const u64 rt_isr_table[48];
extern const u64 rt_isr_spurious;
extern const u8 ap_tramp_start[], ap_tramp_end[];
extern volatile u64 rt_pd[2048];

/* ---- library ---- */

void *memset(void *d, int c, size_t n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p < *q ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a < (u8)*b ? -1 : 1;
        if (!*a)
            return 0;
    }
    return 0;
}

void rt_spin(u64 n)
{
    for (volatile u64 i = 0; i < n; i++)
        ;
}

/* ---- serial (8250 at 0x3f8) ---- */

#define COM1 0x3f8

void rt_putc(char c)
{
    if (c == '\n')
        rt_putc('\r');
    /* Wait for the transmit holding register (bounded: a missing UART must
     * not hang the guest). */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, (u8)c);
}

void rt_puts(const char *s)
{
    while (*s)
        rt_putc(*s++);
}

int rt_getc_nonblock(void)
{
    if (inb(COM1 + 5) & 1)
        return inb(COM1);
    return -1;
}

static void put_u64(u64 v, unsigned base, int width)
{
    char buf[24];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width)
        buf[n++] = '0';
    while (n)
        rt_putc(buf[--n]);
}

void rt_printf(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            rt_putc(*fmt);
            continue;
        }
        fmt++;
        int width = 0;
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        int l = 0;
        while (*fmt == 'l') {
            l = 1;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            rt_puts(s ? s : "(null)");
            break;
        }
        case 'c':
            rt_putc((char)__builtin_va_arg(ap, int));
            break;
        case 'd': {
            i64 v = l ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
            if (v < 0) {
                rt_putc('-');
                v = -v;
            }
            put_u64((u64)v, 10, width);
            break;
        }
        case 'u':
            put_u64(l ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 10, width);
            break;
        case 'x':
            put_u64(l ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 16, width);
            break;
        case '%':
            rt_putc('%');
            break;
        default:
            rt_putc('?');
            break;
        }
    }
    __builtin_va_end(ap);
}

/* ---- exit ---- */

void rt_exit(int code)
{
    outb(0xf4, (u8)code); /* ember --debug-exit / QEMU isa-debug-exit */
    outb(0x64, 0xfe);     /* else: i8042 reset */
    for (;;)
        __asm__ volatile("cli; hlt");
}

void rt_fail(int code, const char *msg)
{
    rt_printf("FAIL: %s\n", msg);
    rt_exit(code);
}

/* ---- command line ---- */

const char *rt_param(const char *name)
{
    size_t n = strlen(name);
    const char *s = rt_boot.cmdline;
    while (*s) {
        while (*s == ' ')
            s++;
        if (!strncmp(s, name, n) && s[n] == '=')
            return s + n + 1;
        while (*s && *s != ' ')
            s++;
    }
    return NULL;
}

const char *rt_param_find_next(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    while (*s) {
        while (*s == ' ')
            s++;
        if (!strncmp(s, prefix, n))
            return s + n;
        while (*s && *s != ' ')
            s++;
    }
    return NULL;
}

size_t rt_param_len(const char *v)
{
    size_t n = 0;
    while (v[n] && v[n] != ' ')
        n++;
    return n;
}

u64 rt_param_u64(const char *name, u64 dflt)
{
    const char *v = rt_param(name);
    if (!v)
        return dflt;
    u64 r = 0;
    if (v[0] == '0' && v[1] == 'x') {
        for (v += 2; *v && *v != ' '; v++) {
            char c = *v;
            unsigned d = c >= 'a' ? (unsigned)(c - 'a' + 10) : c >= 'A' ? (unsigned)(c - 'A' + 10) : (unsigned)(c - '0');
            r = r * 16 + d;
        }
    } else {
        for (; *v >= '0' && *v <= '9'; v++)
            r = r * 10 + (u64)(*v - '0');
    }
    return r;
}

bool rt_param_is(const char *name, const char *s)
{
    const char *v = rt_param(name);
    return v && rt_param_len(v) == strlen(s) && !strncmp(v, s, strlen(s));
}

/* ---- CRC-32 ---- */

u32 rt_crc32(const void *data, size_t len)
{
    static u32 table[256];
    static bool ready;
    if (!ready) {
        for (u32 i = 0; i < 256; i++) {
            u32 c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = true;
    }
    const u8 *p = data;
    u32 crc = ~0u;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- interrupts ---- */

struct idt_entry {
    u16 off0, sel;
    u8 ist, attr;
    u16 off1;
    u32 off2, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static irq_handler handlers[256];

struct frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, err, rip, cs, rflags, rsp, ss;
};

static void idt_set(int v, u64 addr)
{
    idt[v].off0 = (u16)addr;
    idt[v].sel = 0x08;
    idt[v].ist = 0;
    idt[v].attr = 0x8e;
    idt[v].off1 = (u16)(addr >> 16);
    idt[v].off2 = (u32)(addr >> 32);
    idt[v].zero = 0;
}

static void idt_load(void)
{
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) d = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
}

static void idt_init(void)
{
    for (int v = 0; v < 48; v++)
        idt_set(v, rt_isr_table[v]);
    idt_set(255, rt_isr_spurious);
    idt_load();
}

void rt_set_handler(int vector, irq_handler h) { handlers[vector & 0xff] = h; }

void rt_isr(struct frame *f)
{
    if (f->vector < 32) {
        u64 cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        /* Demand mapping of the first 4 GiB (PVH entry, see entry.S). */
        if (f->vector == 14 && !(f->err & 1) && cr2 < (4ul << 30) && !rt_pd[cr2 >> 21]) {
            rt_pd[cr2 >> 21] = (cr2 & ~0x1ffffful) | 0x83;
            return;
        }
        rt_printf("EXCEPTION vector=%lu err=0x%lx rip=0x%lx cr2=0x%lx\n", f->vector, f->err, f->rip, cr2);
        rt_exit(99);
    }
    if (handlers[f->vector])
        handlers[f->vector]((int)f->vector);
    if (f->vector != 255)
        rt_apic_eoi();
}

/* ---- local APIC and IOAPIC ---- */

#define MSR_APIC_BASE 0x1b
#define XAPIC_BASE 0xfee00000ul
#define IOAPIC_BASE 0xfec00000ul

static bool x2apic;

bool rt_x2apic(void) { return x2apic; }

static void apic_write(u32 reg, u64 v)
{
    if (x2apic)
        wrmsr(0x800 + (reg >> 4), v);
    else
        mmio_write32(XAPIC_BASE + reg, (u32)v);
}

void rt_apic_init(void)
{
    u32 a, b, c, d;
    /* Mask both 8259s: their vectors would land on exception vectors. */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    cpuid(1, 0, &a, &b, &c, &d);
    x2apic = (c >> 21) & 1;
    u64 base = rdmsr(MSR_APIC_BASE) | (1ul << 11);
    if (x2apic)
        base |= 1ul << 10;
    wrmsr(MSR_APIC_BASE, base);
    apic_write(0x80, 0);     /* TPR: accept everything */
    apic_write(0xf0, 0x1ff); /* SVR: enabled, spurious vector 0xff */
}

void rt_apic_eoi(void) { apic_write(0xb0, 0); }

void rt_apic_icr(u32 dest, u32 lo)
{
    if (x2apic) {
        wrmsr(0x830, ((u64)dest << 32) | lo);
    } else {
        mmio_write32(XAPIC_BASE + 0x310, dest << 24);
        mmio_write32(XAPIC_BASE + 0x300, lo);
    }
}

void rt_ioapic_route(int pin, int vector)
{
    mmio_write32(IOAPIC_BASE, 0x10 + 2 * pin + 1);
    mmio_write32(IOAPIC_BASE + 0x10, 0); /* destination APIC 0 */
    mmio_write32(IOAPIC_BASE, 0x10 + 2 * pin);
    mmio_write32(IOAPIC_BASE + 0x10, (u32)vector); /* fixed, physical, edge, high, unmasked */
}

u32 rt_apic_id(void)
{
    if (x2apic)
        return (u32)rdmsr(0x802);
    return mmio_read32(XAPIC_BASE + 0x20) >> 24;
}

/* ---- mappings above 4 GiB ---- */

static u64 hi_pd[4][512] __attribute__((aligned(4096)));
static int hi_pd_used;

bool rt_map_high(u64 addr, u64 len)
{
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    const u64 frame = 0x000ffffffffff000ul;
    volatile u64 *pml4 = (volatile u64 *)(cr3 & frame);
    if (!(pml4[0] & 1))
        return false;
    volatile u64 *pdpt = (volatile u64 *)(pml4[0] & frame);
    for (u64 a = addr & ~0x1ffffful; a < addr + len; a += 0x200000) {
        if (a >> 39)
            return false;
        u64 i = (a >> 30) & 511;
        if (!(pdpt[i] & 1)) {
            if (hi_pd_used == 4)
                return false;
            u64 *pd = hi_pd[hi_pd_used++];
            memset(pd, 0, 4096);
            pdpt[i] = (u64)pd | 3;
        }
        if (pdpt[i] & 0x80)
            continue; /* already a 1 GiB page */
        volatile u64 *pd = (volatile u64 *)(pdpt[i] & frame);
        pd[(a >> 21) & 511] = a | 0x83;
    }
    __asm__ volatile("mov %0, %%cr3" ::"r"(cr3) : "memory");
    return true;
}

/* ---- SMP ---- */

void rt_smp_prepare(void)
{
    memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, (size_t)(ap_tramp_end - ap_tramp_start));
}

void rt_ap_main(int index)
{
    idt_load();
    if (ap_main)
        ap_main(index);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- boot information ---- */

static void e820_add(u64 addr, u64 size, u32 type)
{
    if (rt_boot.e820_n < E820_MAX) {
        struct e820 *e = &rt_boot.e820[rt_boot.e820_n++];
        e->addr = addr;
        e->size = size;
        e->type = type;
    }
}

static void boot_info_pvh(void)
{
    const u8 *si = (const u8 *)rt_boot.start_info;
    if (*(const u32 *)si != 0x336ec578)
        rt_fail(98, "PVH start_info magic");
    u32 version = *(const u32 *)(si + 4);
    u32 nr_modules = *(const u32 *)(si + 12);
    u64 modlist = *(const u64 *)(si + 16);
    u64 cmdline = *(const u64 *)(si + 24);
    rt_boot.cmdline = cmdline ? (const char *)cmdline : "";
    if (nr_modules && modlist) {
        rt_boot.initrd_addr = *(const u64 *)modlist;
        rt_boot.initrd_size = *(const u64 *)(modlist + 8);
    }
    if (version >= 1) {
        u64 map = *(const u64 *)(si + 40);
        u32 n = *(const u32 *)(si + 48);
        for (u32 i = 0; i < n; i++) {
            const u8 *e = (const u8 *)(map + 24ul * i);
            e820_add(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
        }
    }
}

static void boot_info_linux64(void)
{
    const u8 *zp = (const u8 *)rt_boot.zero_page;
    if (memcmp(zp + 0x202, "HdrS", 4))
        rt_fail(98, "zero page setup header magic");
    u64 cmdline = *(const u32 *)(zp + 0x228) | ((u64) * (const u32 *)(zp + 0x0c8) << 32);
    rt_boot.cmdline = cmdline ? (const char *)cmdline : "";
    rt_boot.initrd_addr = *(const u32 *)(zp + 0x218) | ((u64) * (const u32 *)(zp + 0x0c0) << 32);
    rt_boot.initrd_size = *(const u32 *)(zp + 0x21c) | ((u64) * (const u32 *)(zp + 0x0c4) << 32);
    rt_boot.initrd_addr_max = *(const u32 *)(zp + 0x22c);
    u8 n = zp[0x1e8];
    for (u32 i = 0; i < n; i++) {
        const u8 *e = zp + 0x2d0 + 20 * i;
        e820_add(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
    }
}

void rt_main(void)
{
    rt_boot.kind = (int)rt_boot_kind;
    rt_boot.start_info = rt_boot_start_info;
    rt_boot.zero_page = rt_boot_zero_page;
    rt_boot.entry_cr0 = rt_boot_cr0;
    rt_boot.entry_cr4 = rt_boot_cr4;
    rt_boot.entry_efer = rt_boot_efer;
    rt_boot.entry_rflags = rt_boot_rflags;
    idt_init();
    if (rt_boot.kind == BOOT_PVH)
        boot_info_pvh();
    else
        boot_info_linux64();
    rt_exit(main());
}
