/*
 * blk_soak: keeps a virtio-blk disk busy until told to stop. Each
 * iteration i writes region r = i % 64 (64 KiB regions from sector 2048)
 * with a pattern seeded by i in two requests, flushes every 8th iteration,
 * reads the region back and checks every byte, then polls COM1: a 'q' from
 * the host ends the run with "SOAK DONE iters=N bytes=M" and exit 0. A
 * mismatch prints the place and exits 120. Every `report=` iterations
 * (default 256) it prints "SOAK iters=N". Each region starts with its seed (u64) so the host can
 * check the image afterwards. Interrupt-driven with irq=1.
 */
#include "virtio.h"
#include "blk.h"

#define REGIONS 64
#define REGION_SECTORS 128 /* 64 KiB */
#define FIRST_SECTOR 2048


static struct vdev dev;
static struct vq q;
static struct blk_req *hdr;
static u8 *status;
static u8 *buf, *rbuf;

static u64 seed_word(u64 seed, u64 k)
{
    u64 x = seed * 0x9e3779b97f4a7c15ul + k * 0xbf58476d1ce4e5b9ul;
    x ^= x >> 31;
    return x;
}

static int req(u32 type, u64 sector, u8 *data, u32 len)
{
    hdr->type = type;
    hdr->reserved = 0;
    hdr->sector = sector;
    *status = 0xee;
    struct vbuf b[3] = {{(u64)hdr, 16, false}, {(u64)data, len, type == 0}, {(u64)status, 1, true}};
    int n = 3;
    if (!data) {
        b[1] = b[2];
        n = 2;
    }
    if (vq_request(&dev, &q, b, n) < 0)
        return 0xff;
    return *status;
}

int main(void)
{
    CHECK(vio_find(2, 0, &dev), 121);
    dev.irq_mode = rt_param_is("irq", "1");
    CHECK(vio_negotiate(&dev, BIT(9) /* FLUSH */), 121);
    CHECK(vio_queue(&dev, &q, 0, 16), 121);
    hdr = vio_alloc(sizeof(*hdr), 16);
    status = vio_alloc(1, 1);
    buf = vio_alloc(REGION_SECTORS * 512, 4096);
    rbuf = vio_alloc(REGION_SECTORS * 512, 4096);
    vio_driver_ok(&dev);
    u64 every = rt_param_u64("report", 256);
    if (every == 0)
        every = 256;
    rt_puts("SOAK START\n");
    u64 bytes = 0;
    for (u64 i = 0;; i++) {
        u64 r = i % REGIONS;
        u64 sector = FIRST_SECTOR + r * REGION_SECTORS;
        u64 *w = (u64 *)buf;
        w[0] = i;
        for (u64 k = 1; k < REGION_SECTORS * 512 / 8; k++)
            w[k] = seed_word(i, k);
        const u32 half = REGION_SECTORS * 512 / 2;
        CHECK(req(1, sector, buf, half) == 0, 122);
        CHECK(req(1, sector + REGION_SECTORS / 2, buf + half, half) == 0, 122);
        if (i % 8 == 7)
            CHECK(req(4, 0, NULL, 0) == 0, 122);
        CHECK(req(0, sector, rbuf, REGION_SECTORS * 512) == 0, 122);
        u64 *rw = (u64 *)rbuf;
        for (u64 k = 0; k < REGION_SECTORS * 512 / 8; k++)
            if (rw[k] != w[k]) {
                rt_printf("SOAK MISMATCH iter %lu region %lu word %lu: %lx != %lx\n", i, r, k, rw[k], w[k]);
                return 120;
            }
        bytes += 2 * REGION_SECTORS * 512;
        if (i % every == every - 1)
            rt_printf("SOAK iters=%lu\n", i + 1);
        if (rt_getc_nonblock() == 'q') {
            CHECK(req(4, 0, NULL, 0) == 0, 122);
            rt_printf("SOAK DONE iters=%lu bytes=%lu\n", i + 1, bytes);
            return 0;
        }
    }
}
