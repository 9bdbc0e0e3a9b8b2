/*
 * net_storm: finding 1 of issue 16, end to end. The receive queue holds
 * only malformed chains (descriptor 0, device-readable), and this vCPU
 * keeps the available index a full ring ahead of the used index, for as
 * long as it runs, while the host sends frames into the TAP. Before the
 * pass budget, one receive pass lasted as long as the refilling: the event
 * loop (disk, console input, Ctrl-A x) starved. Echoes what arrives on
 * COM1 meanwhile.
 *
 * Prints "NETSTORM READY" once the ring is full, "NETSTORM taken=N" every
 * 4,096 chains the device took. Never exits on its own.
 */
#include "virtio.h"

#define VIRTIO_ID_NET 1
#define QSIZE 64

static struct vdev dev;
static struct vq rxq, txq;

int main(void)
{
    CHECK(vio_find(VIRTIO_ID_NET, 0, &dev), 103);
    CHECK(vio_negotiate(&dev, 0), 103);
    CHECK(vio_queue(&dev, &rxq, 0, QSIZE), 103);
    CHECK(vio_queue(&dev, &txq, 1, QSIZE), 103);
    u8 *buf = vio_alloc(2048, 64);
    rxq.desc[0].addr = (u64)buf;
    rxq.desc[0].len = 2048;
    rxq.desc[0].flags = 0; /* device-readable: malformed for receive */
    rxq.desc[0].next = 0;
    for (u16 i = 0; i < rxq.size; i++)
        rxq.avail[2 + i] = 0;
    vio_driver_ok(&dev);
    rxq.avail_idx = rxq.size;
    mb();
    rxq.avail[1] = rxq.avail_idx;
    vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    rt_puts("NETSTORM READY\n");
    u16 seen = 0;
    u32 reports = 0;
    for (;;) {
        u16 used = rxq.used[1];
        u16 want = (u16)(used + rxq.size);
        if (want != rxq.avail_idx) {
            rxq.avail_idx = want;
            mb();
            rxq.avail[1] = want;
            vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        }
        if ((u16)(used - seen) >= 4096) {
            seen = used;
            rt_printf("NETSTORM taken=%u\n", ++reports * 4096);
        }
        int c;
        while ((c = rt_getc_nonblock()) >= 0)
            outb(0x3f8, (u8)c);
        cpu_relax();
    }
}
