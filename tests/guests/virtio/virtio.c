/* virtio-mmio + split virtqueue driver for test guests (see virtio.h). */
#include "virtio.h"

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

void vio_reset(struct vdev *d)
{
    vio_write(d, VIRTIO_MMIO_STATUS, 0);
    /* 4.2.3.1: the driver waits for Status to read back 0. */
    for (int i = 0; i < 1000000 && vio_read(d, VIRTIO_MMIO_STATUS); i++)
        cpu_relax();
}

bool vio_negotiate(struct vdev *d, u64 wanted)
{
    if (vio_read(d, VIRTIO_MMIO_VERSION) != 2) {
        rt_printf("virtio: %lx is not a version 2 (modern) transport\n", d->base);
        return false;
    }
    vio_reset(d);
    vio_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    vio_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    vio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    u64 offered = vio_read(d, VIRTIO_MMIO_DEVICE_FEATURES);
    vio_write(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    offered |= (u64)vio_read(d, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
    if (!(offered & BIT(VIRTIO_F_VERSION_1))) {
        rt_puts("virtio: device does not offer VIRTIO_F_VERSION_1\n");
        return false;
    }
    d->features = offered & (wanted | BIT(VIRTIO_F_VERSION_1));
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->features);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    vio_write(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(d->features >> 32));
    vio_write(d, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(vio_read(d, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        rt_puts("virtio: device refused FEATURES_OK\n");
        return false;
    }
    rt_printf("virtio: device %u at 0x%lx irq %u: offered 0x%lx, negotiated 0x%lx\n", d->device_id, d->base, d->irq,
              offered, d->features);
    return true;
}

bool vio_queue(struct vdev *d, struct vq *q, int idx, u16 size)
{
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
    if (d->irq_mode) {
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
    vio_write(d, VIRTIO_MMIO_STATUS,
              VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
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
    vio_write(d, VIRTIO_MMIO_QUEUE_NOTIFY, (u32)q->index);
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

u8 vio_cfg8(const struct vdev *d, u32 off) { return mmio_read8(d->base + VIRTIO_MMIO_CONFIG + off); }
u16 vio_cfg16(const struct vdev *d, u32 off) { return *(volatile u16 *)(d->base + VIRTIO_MMIO_CONFIG + off); }
u32 vio_cfg32(const struct vdev *d, u32 off) { return mmio_read32(d->base + VIRTIO_MMIO_CONFIG + off); }
u64 vio_cfg64(const struct vdev *d, u32 off)
{
    /* 4.2.2.2: read with the generation counter around 64-bit fields. */
    u32 gen, lo, hi;
    do {
        gen = vio_read(d, VIRTIO_MMIO_CONFIG_GENERATION);
        lo = vio_cfg32(d, off);
        hi = vio_cfg32(d, off + 4);
    } while (gen != vio_read(d, VIRTIO_MMIO_CONFIG_GENERATION));
    return ((u64)hi << 32) | lo;
}
