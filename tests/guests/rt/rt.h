/*
 * ember test-guest runtime: what every freestanding test guest links against.
 *
 * A guest is entered either through its PVH note (32-bit protected mode,
 * EBX = hvm_start_info) or at its ELF entry in 64-bit mode (RSI = Linux zero
 * page). entry.S brings both to 64-bit mode with the runtime's own GDT and
 * identity-mapped 4 GiB, then rt_main() gathers the boot information into
 * `rt_boot` and calls the guest's main(). A guest reports through the serial
 * port and ends with rt_exit(code): `outb code, 0xf4` (ember --debug-exit;
 * QEMU isa-debug-exit turns it into (code << 1) | 1), then an i8042 reset.
 */
#ifndef EMBER_GUEST_RT_H
#define EMBER_GUEST_RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define BOOT_PVH 1
#define BOOT_LINUX64 2

#define E820_MAX 64
#define E820_RAM 1

struct e820 {
    u64 addr;
    u64 size;
    u32 type;
};

/* What the VMM handed over, whichever entry was used. */
struct boot_info {
    int kind;            /* BOOT_PVH or BOOT_LINUX64 */
    const char *cmdline; /* NUL-terminated, "" if none */
    struct e820 e820[E820_MAX];
    int e820_n;
    u64 initrd_addr, initrd_size; /* 0 if none */
    u64 initrd_addr_max;          /* linux64 only: header value, else 0 */
    u64 zero_page;                /* linux64: RSI at entry */
    u64 start_info;               /* PVH: EBX at entry */
    /* Machine state at entry, before the runtime changed anything. */
    u64 entry_cr0, entry_cr4, entry_efer, entry_rflags;
};

extern struct boot_info rt_boot;

/* The guest's own entry point, called on the boot CPU. */
int main(void);

/* Port and MMIO access. */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u8 mmio_read8(u64 a) { return *(volatile u8 *)a; }
static inline void mmio_write8(u64 a, u8 v) { *(volatile u8 *)a = v; }
static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)a; }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)a = v; }
static inline u64 rdmsr(u32 msr) { u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return ((u64)hi << 32) | lo; }
static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
/* Enable interrupts and halt until one arrives (atomic w.r.t. the wakeup). */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

/* Library. */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* Serial console (COM1). */
void rt_putc(char c);
void rt_puts(const char *s);
/* printf subset: %s %c %d %u %x with optional 'l', and %%. */
void rt_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Returns -1 if no byte is waiting. */
int rt_getc_nonblock(void);

/* Ends the guest with `code`. Never returns. */
void rt_exit(int code) __attribute__((noreturn));
/* Prints "FAIL: msg" and exits with `code`. */
void rt_fail(int code, const char *msg) __attribute__((noreturn));
#define CHECK(cond, code)                                                              \
    do {                                                                               \
        if (!(cond))                                                                   \
            rt_fail(code, #cond);                                                      \
    } while (0)

/* Command line "name=value" parameters. Returns a pointer to the value
 * (terminated by a space or NUL) or NULL; rt_param_len gives its length. */
const char *rt_param(const char *name);
size_t rt_param_len(const char *value);
/* Decimal or 0x-hex value of parameter `name`, or `dflt`. */
u64 rt_param_u64(const char *name, u64 dflt);
/* Whether parameter `name` equals `s`. */
bool rt_param_is(const char *name, const char *s);
/* Finds the next command-line word starting with `prefix` at or after `s`;
 * returns a pointer just past the prefix, or NULL. */
const char *rt_param_find_next(const char *s, const char *prefix);

/* CRC-32 (IEEE 802.3, as zlib). */
u32 rt_crc32(const void *data, size_t len);

/* Interrupts: vectors 32..47 and 0xff are routed to handlers. */
typedef void (*irq_handler)(int vector);
void rt_set_handler(int vector, irq_handler h);
/* Enables the local APIC (x2APIC when the CPU has it) and masks the 8259. */
void rt_apic_init(void);
bool rt_x2apic(void);
void rt_apic_eoi(void);
/* Sends an IPI (ICR low word `lo`) to APIC `dest`. */
void rt_apic_icr(u32 dest, u32 lo);
/* Routes IOAPIC pin `pin` to `vector` on APIC 0, edge-triggered, unmasked. */
void rt_ioapic_route(int pin, int vector);
/* This CPU's local APIC ID (after rt_apic_init). */
u32 rt_apic_id(void);

/* Identity-maps [addr, addr + len) with 2 MiB pages in the page tables in
 * use, for MMIO above 4 GiB (the first 4 GiB are always mapped). Below
 * 512 GiB, at most 4 GiB-aligned gigabytes in all; false if it cannot. */
bool rt_map_high(u64 addr, u64 len);

/* SMP: the trampoline's physical page and the AP entry hook. */
#define AP_TRAMPOLINE 0x10000
void rt_smp_prepare(void);
/* Called on each AP in 64-bit mode with its own stack. Default: halt. */
void ap_main(int index) __attribute__((weak));

/* Busy-wait roughly `n` loop iterations (emulated: ~1 M/s here). */
void rt_spin(u64 n);

#endif
