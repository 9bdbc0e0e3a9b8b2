/*
 * blk_storm: finding 3 of issue 16, end to end. Keeps a virtio-blk queue
 * full of the largest reads a driver may send, every data descriptor of
 * each aliasing one 64 KiB buffer (254 segments of 64 KiB through an
 * indirect table: ~16 MiB copied per request into 64 KiB of guest RAM),
 * republishing each request as soon as it completes, while echoing what
 * arrives on COM1. The host's event loop must keep serving the console
 * (and Ctrl-A x) while it serves the disk.
 *
 * Parameters: table=N (entries per indirect table: 256 is the largest
 * allowed, more is refused by the device and completes with used length 0),
 * transport=pci (the disk is on PCI bus 0).
 * Prints "STORM READY" once the first requests are published, echoes every
 * byte received, prints "STORM rounds=N" every 64 completions. Never exits
 * on its own.
 */
#include "virtio.h"
#include "blk.h"

#define QSIZE 64
#define SEG (64u << 10)
/* Guest-physical scratch above the image: tables, headers, the buffer. */
#define TABLES 0x1000000ul  /* 16 MiB: QSIZE tables */
#define ALIAS 0x2000000ul   /* 32 MiB: the one 64 KiB buffer */
#define META 0x2100000ul    /* headers and status bytes */

static struct vdev dev;
static struct vq q;

static void publish(u16 head)
{
    q.avail[2 + (q.avail_idx % q.size)] = head;
    mb();
    q.avail_idx++;
    q.avail[1] = q.avail_idx;
}

int main(void)
{
    u32 entries = (u32)rt_param_u64("table", 256);
    CHECK(entries >= 3 && entries <= 1024, 100);
    CHECK(vio_find(VIRTIO_ID_BLOCK, 0, &dev), 103);
    CHECK(vio_negotiate(&dev, BIT(VIRTIO_F_INDIRECT_DESC)), 103);
    CHECK(vio_queue(&dev, &q, 0, QSIZE), 103);
    vio_driver_ok(&dev);
    for (u16 h = 0; h < q.size; h++) {
        struct blk_req *hdr = (struct blk_req *)(META + 32ul * h);
        hdr->type = T_IN;
        hdr->reserved = 0;
        hdr->sector = 0;
        volatile struct vring_desc *t = (volatile struct vring_desc *)(TABLES + (u64)h * 16 * 1024);
        for (u32 i = 0; i < entries; i++) {
            bool last = i + 1 == entries;
            t[i].addr = i == 0 ? (u64)hdr : last ? (u64)hdr + 16 : ALIAS;
            t[i].len = i == 0 ? 16 : last ? 1 : SEG;
            t[i].flags = (u16)((i == 0 ? 0 : VRING_DESC_F_WRITE) | (last ? 0 : VRING_DESC_F_NEXT));
            t[i].next = (u16)(i + 1);
        }
        q.desc[h].addr = (u64)t;
        q.desc[h].len = 16 * entries;
        q.desc[h].flags = VRING_DESC_F_INDIRECT;
        q.desc[h].next = 0;
        publish(h);
    }
    vio_notify(&dev, &q);
    rt_puts("STORM READY\n");
    u64 done = 0;
    for (;;) {
        while (q.used[1] != q.last_used) {
            volatile u32 *e = (volatile u32 *)(q.used + 2);
            u16 head = (u16)e[2 * (q.last_used % q.size)];
            q.last_used++;
            publish(head);
            if (++done % 64 == 0)
                rt_printf("STORM rounds=%u\n", (u32)(done / 64));
        }
        vio_notify(&dev, &q);
        int c;
        while ((c = rt_getc_nonblock()) >= 0)
            outb(0x3f8, (u8)c);
        cpu_relax();
    }
}
