/* virtio-mmio + split virtqueue driver for test guests (see virtio.h); the
 * virtio-pci specifics are in virtio_pci.c. */
#include "virtio.h"
#include "pci.h"

static u8 pool[256 * 1024] __attribute__((aligned(4096)));
static size_t pool_used;

void *vio_alloc(size_t size, size_t align)
{
    pool_used = (pool_used + align - 1) & ~(align - 1);
    if (pool_used + size > sizeof(pool))
        rt_fail(90, "virtio pool exhausted");
    void *p = pool + pool_used;
    pool_used += size;
    memset(p, 0, size);
    return p;
}

static u64 parse_num(const char **s)
{
    const char *p = *s;
    u64 v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;;) {
            char c = *p;
            unsigned dgt;
            if (c >= '0' && c <= '9')
                dgt = (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                dgt = (unsigned)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                dgt = (unsigned)(c - 'A' + 10);
            else
                break;
            v = v * 16 + dgt;
            p++;
        }
    } else {
        while (*p >= '0' && *p <= '9')
            v = v * 10 + (u64)(*p++ - '0');
    }
    *s = p;
    return v;
}

bool vio_find(u32 device_id, int nth, struct vdev *d)
{
    if (rt_param_is("transport", "pci"))
        return vpci_find(device_id, nth, d);
    static const char key[] = "virtio_mmio.device=";
    const char *s = rt_boot.cmdline;
    while ((s = rt_param_find_next(s, key))) {
        /* <size>[K|M]@<base>:<irq> */
        parse_num(&s);
        if (*s == 'K' || *s == 'k' || *s == 'M' || *s == 'm')
            s++;
        if (*s++ != '@')
            continue;
        u64 base = parse_num(&s);
        if (*s++ != ':')
            continue;
        u32 irq = (u32)parse_num(&s);
        if (mmio_read32(base + VIRTIO_MMIO_MAGIC) != 0x74726976)
            continue;
        if (mmio_read32(base + VIRTIO_MMIO_DEVICE_ID) != device_id)
            continue;
        if (nth-- > 0)
            continue;
        memset(d, 0, sizeof(*d));
        d->base = base;
        d->irq = irq;
        d->device_id = device_id;
        return true;
    }
    if (rt_param_find_next(rt_boot.cmdline, key))
        return false;
    /* No entries (QEMU's microvm does not add them for a PVH kernel): probe
     * its transport window, 512 bytes apart from 0xfeb00000. The IRQ is
     * unknown here, so such devices are driven by polling. */
    for (u64 base = 0xfeb00000ul; base < 0xfeb00000ul + 32 * 0x200; base += 0x200) {
        if (mmio_read32(base + VIRTIO_MMIO_MAGIC) != 0x74726976 ||
            mmio_read32(base + VIRTIO_MMIO_DEVICE_ID) != device_id || nth-- > 0)
            continue;
        memset(d, 0, sizeof(*d));
        d->base = base;
        d->device_id = device_id;
        return true;
    }
    return false;
}

u8 vio_status(const struct vdev *d)
{
    return d->pci ? mmio_read8(d->common + VPCI_STATUS) : (u8)vio_read(d, VIRTIO_MMIO_STATUS);
}

void vio_set_status(const struct vdev *d, u8 status)
{
    if (d->pci)
        mmio_write8(d->common + VPCI_STATUS, status);
    else
        vio_write(d, VIRTIO_MMIO_STATUS, status);
}

void vio_notify(const struct vdev *d, const struct vq *q)
{
    if (d->pci)
        mmio_write16(q->notify, (u16)q->index);
    else
        vio_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, (u32)q->index);
}

void vio_reset(struct vdev *d)
{
    vio_set_status(d, 0);
    /* 4.1.4.3.2, 4.2.3.1: the driver waits for the status to read back 0. */
    for (int i = 0; i < 1000000 && vio_status(d); i++)
        cpu_relax();
}

/* Reads the offered features and writes the accepted ones (`sel` selects
 * the 32-bit page), on either transport. */
static u64 device_features(struct vdev *d)
{
    if (d->pci) {
        mmio_write32(d->common + VPCI_DFSELECT, 0);
        u64 f = mmio_read32(d->common + VPCI_DF);
        mmio_write32(d->common + VPCI_DFSELECT, 1);
        return f | (u64)mmio_read32(d->common + VPCI_DF) << 32;
    }
    vio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    u64 f = vio_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
    vio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    return f | (u64)vio_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
}

static void driver_features(struct vdev *d, u64 f)
{
    if (d->pci) {
        mmio_write32(d->common + VPCI_GFSELECT, 0);
        mmio_write32(d->common + VPCI_GF, (u32)f);
        mmio_write32(d->common + VPCI_GFSELECT, 1);
        mmio_write32(d->common + VPCI_GF, (u32)(f >> 32));
        return;
    }
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)f);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(f >> 32));
}

bool vio_negotiate(struct vdev *d, u64 wanted)
{
    if (!d->pci && vio_read(d, VIRTIO_MMIO_VERSION) != 2) {
        rt_printf("virtio: %lx is not a version 2 (modern) transport\n", d->base);
        return false;
    }
    vio_reset(d);
    vio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);
    vio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    u64 offered = device_features(d);
    if (!(offered & BIT(VIRTIO_F_VERSION_1))) {
        rt_puts("virtio: device does not offer VIRTIO_F_VERSION_1\n");
        return false;
    }
    d->features = offered & (wanted | BIT(VIRTIO_F_VERSION_1));
    driver_features(d, d->features);
    vio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(vio_status(d) & VIRTIO_STATUS_FEATURES_OK)) {
        rt_puts("virtio: device refused FEATURES_OK\n");
        return false;
    }
    if (d->pci && d->irq_mode) {
        /* Configuration changes on MSI-X entry 0 (queues: 1, 2, ...). */
        u16 e = vpci_msix_vector(d, 0);
        mmio_write16(d->common + VPCI_MSIX_CONFIG, e);
        if (mmio_read16(d->common + VPCI_MSIX_CONFIG) != e) {
            rt_puts("virtio: the device refused the configuration vector\n");
            return false;
        }
    }
    if (d->pci)
        rt_printf("virtio: device %u at pci 00:%u.0 (common 0x%lx): offered 0x%lx, negotiated 0x%lx\n", d->device_id,
                  d->func->dev, d->common, offered, d->features);
    else
        rt_printf("virtio: device %u at 0x%lx irq %u: offered 0x%lx, negotiated 0x%lx\n", d->device_id, d->base,
                  d->irq, offered, d->features);
    return true;
}

/* The virtio-pci half of vio_queue: the rings of `q` are allocated. */
static bool vpci_queue(struct vdev *d, struct vq *q)
{
    u64 c = d->common;
    mmio_write16(c + VPCI_Q_SIZE, q->size);
    /* 64-bit fields as two 32-bit halves, low first (4.1.3.1). */
    mmio_write32(c + VPCI_Q_DESC, (u32)(u64)q->desc);
    mmio_write32(c + VPCI_Q_DESC + 4, (u32)((u64)q->desc >> 32));
    mmio_write32(c + VPCI_Q_DRIVER, (u32)(u64)q->avail);
    mmio_write32(c + VPCI_Q_DRIVER + 4, (u32)((u64)q->avail >> 32));
    mmio_write32(c + VPCI_Q_DEVICE, (u32)(u64)q->used);
    mmio_write32(c + VPCI_Q_DEVICE + 4, (u32)((u64)q->used >> 32));
    q->notify = d->notify + (u64)mmio_read16(c + VPCI_Q_NOTIFY_OFF) * d->notify_mult;
    if (d->irq_mode) {
        u16 e = vpci_msix_vector(d, (u16)(q->index + 1));
        mmio_write16(c + VPCI_Q_MSIX, e);
        if (mmio_read16(c + VPCI_Q_MSIX) != e) {
            rt_printf("virtio: the device refused MSI-X entry %u for queue %d\n", e, q->index);
            return false;
        }
    }
    mmio_write16(c + VPCI_Q_ENABLE, 1);
    return mmio_read16(c + VPCI_Q_ENABLE) == 1;
}

bool vio_queue(struct vdev *d, struct vq *q, int idx, u16 size)
{
    if (d->pci) {
        mmio_write16(d->common + VPCI_Q_SELECT, (u16)idx);
        u32 max = mmio_read16(d->common + VPCI_Q_SIZE);
        if (!max || mmio_read16(d->common + VPCI_Q_ENABLE))
            return false;
        if (!size)
            size = (u16)(max < 64 ? max : 64);
        memset(q, 0, sizeof(*q));
        q->index = idx;
        q->size = size;
        q->desc = vio_alloc(16ul * size, 16);
        q->avail = vio_alloc(6 + 2ul * size, 2);
        q->used = vio_alloc(6 + 8ul * size, 4);
        q->event_idx = (d->features & BIT(VIRTIO_F_EVENT_IDX)) != 0;
        return vpci_queue(d, q);
    }
    vio_write(d, VIRTIO_MMIO_QUEUE_SEL, (u32)idx);
    if (vio_read(d, VIRTIO_MMIO_QUEUE_READY))
        return false;
    u32 max = vio_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (!max)
        return false;
    if (!size)
        size = (u16)(max < 64 ? max : 64);
    memset(q, 0, sizeof(*q));
    q->index = idx;
    q->size = size;
    q->desc = vio_alloc(16ul * size, 16);
    q->avail = vio_alloc(6 + 2ul * size, 2);
    q->used = vio_alloc(6 + 8ul * size, 4);
    q->event_idx = (d->features & BIT(VIRTIO_F_EVENT_IDX)) != 0;
    vio_write(d, VIRTIO_MMIO_QUEUE_NUM, size);
    vio_write(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(u64)q->desc);
    vio_write(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)((u64)q->desc >> 32));
    vio_write(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)(u64)q->avail);
    vio_write(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)((u64)q->avail >> 32));
    vio_write(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)(u64)q->used);
    vio_write(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)((u64)q->used >> 32));
    vio_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
    return vio_read(d, VIRTIO_MMIO_QUEUE_READY) == 1;
}

static struct vdev *irq_devs[16];

static void on_irq(int vector)
{
    struct vdev *d = irq_devs[vector - 32];
    if (!d)
        return;
    u32 st = vio_read(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    vio_write(d, VIRTIO_MMIO_INTERRUPT_ACK, st);
    d->irqs++;
}

void vio_driver_ok(struct vdev *d)
{
    if (d->irq_mode && !d->pci) {
        int vector = 32 + (int)(d->irq & 15);
        static bool apic;
        if (!apic) {
            rt_apic_init();
            apic = true;
        }
        irq_devs[vector - 32] = d;
        rt_set_handler(vector, on_irq);
        rt_ioapic_route((int)d->irq, vector);
    }
    vio_set_status(d, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
                          VIRTIO_STATUS_DRIVER_OK);
}

u16 vq_add(struct vdev *d, struct vq *q, const struct vbuf *bufs, int n)
{
    for (int i = 0; i < n; i++) {
        q->desc[i].addr = bufs[i].addr;
        q->desc[i].len = bufs[i].len;
        q->desc[i].flags = (u16)((bufs[i].write ? VRING_DESC_F_WRITE : 0) | (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        q->desc[i].next = (u16)(i + 1 < n ? i + 1 : 0);
    }
    q->avail[2 + (q->avail_idx % q->size)] = 0;
    if (q->event_idx)
        q->avail[2 + q->size] = q->last_used; /* used_event: interrupt on the next completion */
    mb();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    mb();
    /* With EVENT_IDX the device's avail_event may ask us not to notify; a
     * test driver notifies anyway unless told to honour it. */
    vio_notify(d, q);
    return 0;
}

bool vq_wait(struct vdev *d, struct vq *q, struct vring_used_elem *out)
{
    u64 spins = 0;
    /* In interrupt mode the used entry only counts once its interrupt has
     * arrived: a lost interrupt hangs the guest (and fails the test). */
    while (q->used[1] == q->last_used || (d->irq_mode && d->irqs == d->irqs_seen)) {
        if (d->irq_mode) {
            sti_hlt();
        } else {
            cpu_relax();
            if (++spins > 20000000)
                return false;
        }
    }
    d->irqs_seen = d->irqs;
    mb();
    volatile u32 *elems = (volatile u32 *)(q->used + 2);
    u16 slot = q->last_used % q->size;
    out->id = elems[2 * slot];
    out->len = elems[2 * slot + 1];
    q->last_used++;
    return true;
}

i64 vq_request(struct vdev *d, struct vq *q, const struct vbuf *bufs, int n)
{
    struct vring_used_elem e;
    vq_add(d, q, bufs, n);
    if (!vq_wait(d, q, &e))
        return -1;
    return e.len;
}

static u64 cfg_base(const struct vdev *d) { return d->pci ? d->devcfg : d->base + VIRTIO_MMIO_CONFIG; }
u8 vio_cfg8(const struct vdev *d, u32 off) { return mmio_read8(cfg_base(d) + off); }
u16 vio_cfg16(const struct vdev *d, u32 off) { return mmio_read16(cfg_base(d) + off); }
u32 vio_cfg32(const struct vdev *d, u32 off) { return mmio_read32(cfg_base(d) + off); }

static u32 generation(const struct vdev *d)
{
    return d->pci ? mmio_read8(d->common + VPCI_CFG_GENERATION) : vio_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
}

u64 vio_cfg64(const struct vdev *d, u32 off)
{
    /* 2.5.1, 4.2.2.2: read with the generation counter around fields wider
     * than 32 bits. */
    u32 gen, lo, hi;
    do {
        gen = generation(d);
        lo = vio_cfg32(d, off);
        hi = vio_cfg32(d, off + 4);
    } while (gen != generation(d));
    return ((u64)hi << 32) | lo;
}
