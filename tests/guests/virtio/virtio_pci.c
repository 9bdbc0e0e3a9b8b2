/* The virtio-pci modern transport for test guests (virtio 1.x 4.1):
 * finding a device on bus 0, placing its BARs, reading its capabilities,
 * and MSI-X. The register accesses of the common configuration are in
 * virtio.c beside their virtio-mmio counterparts. */
#include "virtio.h"
#include "pci.h"

#define VIRTIO_PCI_VENDOR 0x1af4
#define VIRTIO_PCI_MODERN_BASE 0x1040

/* One capability's structure address: BAR base + offset, with a length
 * check against the BAR. */
static bool cap_addr(const struct pci_func *f, u8 at, u64 *out, u32 min_len)
{
    u8 bar = pci_read8(f->dev, f->fn, (u16)(at + 4));
    u32 off = pci_read32(f->dev, f->fn, (u16)(at + 8));
    u32 len = pci_read32(f->dev, f->fn, (u16)(at + 12));
    if (bar > 5 || !f->bar[bar].size || (u64)off + len > f->bar[bar].size || len < min_len) {
        rt_printf("virtio-pci: capability at 0x%x: bar %u offset 0x%x length 0x%x is unusable\n", at, bar, off, len);
        return false;
    }
    *out = f->bar[bar].addr + off;
    return true;
}

bool vpci_find(u32 device_id, int nth, struct vdev *d)
{
    struct pci_func *funcs;
    int n = pci_scan(&funcs);
    struct pci_func *f = NULL;
    for (int i = 0; i < n; i++) {
        if (funcs[i].vendor == VIRTIO_PCI_VENDOR && funcs[i].device == VIRTIO_PCI_MODERN_BASE + device_id &&
            nth-- == 0) {
            f = &funcs[i];
            break;
        }
    }
    if (!f)
        return false;
    memset(d, 0, sizeof(*d));
    d->pci = true;
    d->func = f;
    d->device_id = device_id;
    if (pci_read8(f->dev, f->fn, PCI_REVISION) < 1)
        rt_puts("virtio-pci: revision 0: a transitional device\n");
    if (!pci_place_bars(f))
        return false;
    /* 4.1.4: the first capability of each type the driver can use. */
    bool have[6] = {false};
    for (u8 at = pci_find_cap(f, PCI_CAP_VENDOR, 0); at; at = pci_find_cap(f, PCI_CAP_VENDOR, at)) {
        u8 type = pci_read8(f->dev, f->fn, (u16)(at + 3));
        if (type < 1 || type > 5 || have[type])
            continue;
        bool ok = true;
        switch (type) {
        case VPCI_CAP_COMMON:
            ok = cap_addr(f, at, &d->common, 0x38);
            break;
        case VPCI_CAP_NOTIFY:
            ok = cap_addr(f, at, &d->notify, 2);
            d->notify_mult = pci_read32(f->dev, f->fn, (u16)(at + 16));
            break;
        case VPCI_CAP_ISR:
            ok = cap_addr(f, at, &d->isr, 1);
            break;
        case VPCI_CAP_DEVICE:
            ok = cap_addr(f, at, &d->devcfg, 0);
            break;
        case VPCI_CAP_PCI_CFG:
            d->pci_cfg_cap = at;
            break;
        }
        have[type] = ok;
    }
    if (!have[VPCI_CAP_COMMON] || !have[VPCI_CAP_NOTIFY] || !have[VPCI_CAP_ISR] || !have[VPCI_CAP_DEVICE]) {
        rt_puts("virtio-pci: a required capability is missing\n");
        return false;
    }
    if (!d->pci_cfg_cap)
        rt_puts("virtio-pci: no VIRTIO_PCI_CAP_PCI_CFG capability (4.1.4.9 requires one)\n");
    u8 m = pci_find_cap(f, PCI_CAP_MSIX, 0);
    if (m) {
        d->msix_cap = m;
        d->msix_n = (u16)((pci_read16(f->dev, f->fn, (u16)(m + 2)) & 0x7ff) + 1);
        u32 t = pci_read32(f->dev, f->fn, (u16)(m + 4));
        u32 p = pci_read32(f->dev, f->fn, (u16)(m + 8));
        d->msix_table = f->bar[t & 7].addr + (t & ~7u);
        d->msix_pba = f->bar[p & 7].addr + (p & ~7u);
    }
    rt_printf("virtio-pci: 00:%u.%u id %x: common 0x%lx notify 0x%lx x%u isr 0x%lx device 0x%lx, %u MSI-X vectors\n",
              f->dev, f->fn, f->device, d->common, d->notify, d->notify_mult, d->isr, d->devcfg, d->msix_n);
    return true;
}

/* CPU vectors 32..47 (the runtime's) go to the device and entry that own
 * them. */
static struct vdev *vec_dev[16];
static u16 vec_entry[16];
static int next_vec = 32;

static void on_msix(int vector)
{
    struct vdev *d = vec_dev[vector - 32];
    if (!d)
        return;
    u16 e = vec_entry[vector - 32];
    if (e < sizeof(d->vec_irqs) / sizeof(d->vec_irqs[0]))
        d->vec_irqs[e]++;
    d->irqs++;
}

u16 vpci_msix_vector(struct vdev *d, u16 entry)
{
    static bool apic;
    if (!d->msix_cap || entry >= d->msix_n)
        rt_fail(90, "virtio-pci: no such MSI-X entry");
    if (next_vec > 47)
        rt_fail(90, "virtio-pci: out of CPU vectors");
    if (!apic) {
        rt_apic_init();
        apic = true;
    }
    struct pci_func *f = d->func;
    u16 ctl = pci_read16(f->dev, f->fn, (u16)(d->msix_cap + 2));
    if (!(ctl & 0x8000) || (ctl & 0x4000)) {
        /* Enable with the function masked, program, then unmask. */
        pci_write16(f->dev, f->fn, (u16)(d->msix_cap + 2), 0xc000);
        pci_write16(f->dev, f->fn, (u16)(d->msix_cap + 2), 0x8000);
    }
    int v = next_vec++;
    vec_dev[v - 32] = d;
    vec_entry[v - 32] = entry;
    rt_set_handler(v, on_msix);
    u64 e = d->msix_table + 16ul * entry;
    /* Message address: the local APIC of this CPU; data: fixed delivery,
     * edge, the vector. */
    mmio_write32(e, 0xfee00000u | rt_apic_id() << 12);
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, (u32)v);
    mmio_write32(e + 12, 0);
    return entry;
}
