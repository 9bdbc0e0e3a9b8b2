/* PCI configuration access, bus 0 enumeration and BAR placement (pci.h). */
#include "pci.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA 0xcfc

static void cfg_select(u8 dev, u8 fn, u16 reg)
{
    outl(CONFIG_ADDRESS, 0x80000000u | (u32)dev << 11 | (u32)fn << 8 | (reg & 0xfc));
}

u32 pci_read32(u8 dev, u8 fn, u16 reg)
{
    cfg_select(dev, fn, reg);
    return inl(CONFIG_DATA);
}

u16 pci_read16(u8 dev, u8 fn, u16 reg)
{
    cfg_select(dev, fn, reg);
    return inw((u16)(CONFIG_DATA + (reg & 2)));
}

u8 pci_read8(u8 dev, u8 fn, u16 reg)
{
    cfg_select(dev, fn, reg);
    return inb((u16)(CONFIG_DATA + (reg & 3)));
}

void pci_write32(u8 dev, u8 fn, u16 reg, u32 v)
{
    cfg_select(dev, fn, reg);
    outl(CONFIG_DATA, v);
}

void pci_write16(u8 dev, u8 fn, u16 reg, u16 v)
{
    cfg_select(dev, fn, reg);
    outw((u16)(CONFIG_DATA + (reg & 2)), v);
}

void pci_write8(u8 dev, u8 fn, u16 reg, u8 v)
{
    cfg_select(dev, fn, reg);
    outb((u16)(CONFIG_DATA + (reg & 3)), v);
}

#define MAX_FUNCS 32
static struct pci_func funcs[MAX_FUNCS];
static int nfuncs = -1;

/* Sizes BAR i of f by writing all-ones with decoding off, then restores
 * it. Returns how many registers the BAR takes (2 for 64-bit). */
static int size_bar(struct pci_func *f, int i)
{
    u16 reg = (u16)(PCI_BAR0 + 4 * i);
    u32 lo = pci_read32(f->dev, f->fn, reg);
    struct pci_bar *b = &f->bar[i];
    b->size = 0;
    if (lo & 1)
        return 1; /* I/O space: not used here */
    b->mem64 = (lo & 6) == 4;
    u32 hi = b->mem64 && i < 5 ? pci_read32(f->dev, f->fn, (u16)(reg + 4)) : 0;
    pci_write32(f->dev, f->fn, reg, 0xffffffffu);
    u64 mask = pci_read32(f->dev, f->fn, reg) & ~0xfull;
    if (b->mem64 && i < 5) {
        pci_write32(f->dev, f->fn, (u16)(reg + 4), 0xffffffffu);
        mask |= (u64)pci_read32(f->dev, f->fn, (u16)(reg + 4)) << 32;
        pci_write32(f->dev, f->fn, (u16)(reg + 4), hi);
    } else if (mask) {
        mask |= 0xffffffff00000000ull;
    }
    pci_write32(f->dev, f->fn, reg, lo);
    b->addr = ((u64)hi << 32 | lo) & ~0xfull;
    b->size = mask ? ~mask + 1 : 0;
    return b->mem64 ? 2 : 1;
}

static void scan_func(u8 dev, u8 fn)
{
    if (nfuncs >= MAX_FUNCS)
        return;
    struct pci_func *f = &funcs[nfuncs++];
    memset(f, 0, sizeof(*f));
    f->dev = dev;
    f->fn = fn;
    f->vendor = pci_read16(dev, fn, PCI_VENDOR);
    f->device = pci_read16(dev, fn, PCI_DEVICE);
    f->class_code = pci_read32(dev, fn, PCI_REVISION) >> 8;
    if ((pci_read8(dev, fn, PCI_HEADER_TYPE) & 0x7f) != 0)
        return; /* bridges: no BARs of interest */
    u16 cmd = pci_read16(dev, fn, PCI_COMMAND);
    pci_write16(dev, fn, PCI_COMMAND, (u16)(cmd & ~3));
    for (int i = 0; i < 6;)
        i += size_bar(f, i);
    pci_write16(dev, fn, PCI_COMMAND, cmd);
}

int pci_scan(struct pci_func **out)
{
    if (nfuncs < 0) {
        nfuncs = 0;
        for (u8 dev = 0; dev < 32; dev++) {
            if (pci_read16(dev, 0, PCI_VENDOR) == 0xffff)
                continue;
            bool multi = pci_read8(dev, 0, PCI_HEADER_TYPE) & 0x80;
            for (u8 fn = 0; fn < (multi ? 8 : 1); fn++)
                if (pci_read16(dev, fn, PCI_VENDOR) != 0xffff)
                    scan_func(dev, fn);
        }
    }
    *out = funcs;
    return nfuncs;
}

void pci_set_bar(struct pci_func *f, int i, u64 addr)
{
    u16 reg = (u16)(PCI_BAR0 + 4 * i);
    pci_write32(f->dev, f->fn, reg, (u32)addr);
    if (f->bar[i].mem64)
        pci_write32(f->dev, f->fn, (u16)(reg + 4), (u32)(addr >> 32));
    f->bar[i].addr = addr;
}

/* Whether [a, a + size) overlaps a BAR of a function other than `self`. */
static const struct pci_bar *busy(const struct pci_func *self, u64 a, u64 size)
{
    for (int k = 0; k < nfuncs; k++) {
        if (&funcs[k] == self)
            continue;
        for (int i = 0; i < 6; i++) {
            const struct pci_bar *b = &funcs[k].bar[i];
            if (b->size && b->addr && a < b->addr + b->size && b->addr < a + size)
                return b;
        }
    }
    return NULL;
}

static u64 next32, end32, next64;

bool pci_place_bars(struct pci_func *f)
{
    if (!end32) {
        next32 = rt_param_u64("pci_mem", 0xc0000000ul);
        end32 = next32 + rt_param_u64("pci_mem_size", 0x10000000ul);
        next64 = rt_param_u64("pci_mem64", 0);
    }
    u16 cmd = pci_read16(f->dev, f->fn, PCI_COMMAND);
    pci_write16(f->dev, f->fn, PCI_COMMAND, (u16)(cmd & ~PCI_CMD_MEM));
    for (int i = 0; i < 6; i++) {
        struct pci_bar *b = &f->bar[i];
        if (!b->size)
            continue;
        bool high = b->mem64 && next64;
        u64 *next = high ? &next64 : &next32;
        u64 a = (*next + b->size - 1) & ~(b->size - 1);
        const struct pci_bar *o;
        while ((o = busy(f, a, b->size)))
            a = (o->addr + o->size + b->size - 1) & ~(b->size - 1);
        if (!high && a + b->size > end32) {
            rt_printf("pci: no room for BAR %d of %u.%u (%lx bytes)\n", i, f->dev, f->fn, b->size);
            return false;
        }
        if (high && !rt_map_high(a, b->size)) {
            rt_printf("pci: cannot map %lx above 4 GiB\n", a);
            return false;
        }
        pci_set_bar(f, i, a);
        *next = a + b->size;
        rt_printf("pci: 00:%u.%u BAR %d: %lx bytes at 0x%lx%s\n", f->dev, f->fn, i, b->size, a,
                  b->mem64 ? " (64-bit)" : "");
    }
    pci_write16(f->dev, f->fn, PCI_COMMAND, (u16)(cmd | PCI_CMD_MEM | PCI_CMD_MASTER));
    return true;
}

u8 pci_find_cap(const struct pci_func *f, u8 id, u8 after)
{
    if (!(pci_read16(f->dev, f->fn, PCI_STATUS) & PCI_STATUS_CAPS))
        return 0;
    u8 at = after ? pci_read8(f->dev, f->fn, (u16)(after + 1)) : pci_read8(f->dev, f->fn, PCI_CAP_PTR);
    for (int n = 0; at && n < 48; n++) {
        at &= 0xfc;
        if (pci_read8(f->dev, f->fn, at) == id)
            return at;
        at = pci_read8(f->dev, f->fn, (u16)(at + 1));
    }
    return 0;
}
