/*
 * blk: a virtio-blk driver written from the virtio 1.x spec (5.2), run
 * against the first block device on the command line.
 *
 * Parameters: sectors=N (expected capacity), s0_crc=0xC (CRC-32 of sector 0
 * as the test wrote it), id=STRING (expected GET_ID), ro=1 (the disk must be
 * read-only: writes must fail), irq=1 (wait for interrupts instead of
 * polling; MSI-X, a vector per queue, on virtio-pci), event_idx=1
 * (negotiate VIRTIO_RING_F_EVENT_IDX), nth=N (use the N-th block device,
 * 0-based), hang_after=1 (halt after the checks instead of exiting, so the
 * host can inspect the running VMM), transport=pci (the device is on PCI
 * bus 0; pci_mem= and pci_mem64= place its BARs, see virtio/pci.h).
 *
 * Writes (read-write disks): 8 sectors at sector 1 (one descriptor), at
 * capacity/2 (two descriptors), and the last 8 sectors; byte at offset o is
 * pat(o) = (o / 512) * 31 + (o % 512) * 7 + 0x5a. DISCARD of sectors
 * 64..80 and WRITE_ZEROES of 96..104 (after writing the pattern there).
 * Then: flush, read everything back, GET_ID, reads past the end (IOERR),
 * an unknown request type (UNSUPP). Prints "BLK OK" and exits 0; 80..89 say
 * which step failed.
 */
#include "virtio.h"
#include "blk.h"

#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14




struct seg {
    u64 sector;
    u32 num_sectors;
    u32 flags;
};

static struct vdev dev;
static struct vq q;
static struct blk_req *hdr;
static u8 *status;
static u8 *buf;     /* 8 sectors */
static struct seg *segs;

static u8 pat(u64 off) { return (u8)((off >> 9) * 31 + (off & 511) * 7 + 0x5a); }

/* One request: header, optional data buffers, status. Returns the status
 * byte, or 0xff if the device never completed it. */
static int request(u32 type, u64 sector, const struct vbuf *data, int ndata, u32 *used_len)
{
    struct vbuf b[6];
    int n = 0;
    hdr->type = type;
    hdr->reserved = 0;
    hdr->sector = sector;
    *status = 0xee;
    b[n++] = (struct vbuf){(u64)hdr, sizeof(*hdr), false};
    for (int i = 0; i < ndata; i++)
        b[n++] = data[i];
    b[n++] = (struct vbuf){(u64)status, 1, true};
    i64 len = vq_request(&dev, &q, b, n);
    if (len < 0)
        return 0xff;
    if (used_len)
        *used_len = (u32)len;
    return *status;
}

static int rw(u32 type, u64 sector, u32 nsect)
{
    struct vbuf d = {(u64)buf, nsect * 512, type == T_IN};
    u32 len = 0;
    int st = request(type, sector, &d, 1, &len);
    /* Used length: bytes the device wrote (data for IN) plus the status. */
    if (st == S_OK && len != (type == T_IN ? nsect * 512 + 1 : 1)) {
        rt_printf("blk: used length %u for type %u\n", len, type);
        return 0xfe;
    }
    return st;
}

static void fill(u64 sector, u32 nsect)
{
    for (u32 i = 0; i < nsect * 512; i++)
        buf[i] = pat(sector * 512 + i);
}

static bool check(u64 sector, u32 nsect, bool zero)
{
    for (u32 i = 0; i < nsect * 512; i++)
        if (buf[i] != (zero ? 0 : pat(sector * 512 + i))) {
            rt_printf("blk: mismatch at sector %lu byte %u: %x\n", sector + i / 512, i % 512, buf[i]);
            return false;
        }
    return true;
}

int main(void)
{
    bool ro = rt_param_is("ro", "1");
    CHECK(vio_find(VIRTIO_ID_BLOCK, (int)rt_param_u64("nth", 0), &dev), 80);
    dev.irq_mode = rt_param_is("irq", "1");
    u64 wanted = BIT(VIRTIO_BLK_F_SEG_MAX) | BIT(VIRTIO_BLK_F_BLK_SIZE) | BIT(VIRTIO_BLK_F_FLUSH) |
                 BIT(VIRTIO_BLK_F_RO) | BIT(VIRTIO_BLK_F_DISCARD) | BIT(VIRTIO_BLK_F_WRITE_ZEROES);
    if (rt_param_is("event_idx", "1"))
        wanted |= BIT(VIRTIO_F_EVENT_IDX);
    CHECK(vio_negotiate(&dev, wanted), 80);
    CHECK(vio_queue(&dev, &q, 0, 0), 80);
    hdr = vio_alloc(sizeof(*hdr), 16);
    status = vio_alloc(1, 1);
    buf = vio_alloc(8 * 512, 4096);
    segs = vio_alloc(sizeof(*segs), 16);
    vio_driver_ok(&dev);

    /* Config space (5.2.4). */
    u64 cap = vio_cfg64(&dev, 0);
    rt_printf("blk: capacity %lu sectors, seg_max %u, blk_size %u, ro %u\n", cap, vio_cfg32(&dev, 12),
              vio_cfg32(&dev, 20), (u32)((dev.features >> VIRTIO_BLK_F_RO) & 1));
    CHECK(cap == rt_param_u64("sectors", cap) && cap >= 128, 81);
    if (dev.features & BIT(VIRTIO_BLK_F_BLK_SIZE))
        CHECK(vio_cfg32(&dev, 20) == 512, 81);
    if (dev.features & BIT(VIRTIO_BLK_F_SEG_MAX))
        CHECK(vio_cfg32(&dev, 12) >= 2, 81);
    CHECK(!!(dev.features & BIT(VIRTIO_BLK_F_RO)) == ro, 81);
    /* Byte-wise reads of the capacity agree with the 64-bit read. */
    u64 bytewise = 0;
    for (int i = 7; i >= 0; i--)
        bytewise = (bytewise << 8) | vio_cfg8(&dev, (u32)i);
    CHECK(bytewise == cap, 81);

    /* Sector 0, as the test wrote it. */
    CHECK(rw(T_IN, 0, 1) == S_OK, 82);
    if (rt_param("s0_crc"))
        CHECK(rt_crc32(buf, 512) == (u32)rt_param_u64("s0_crc", 0), 82);

    if (ro) {
        fill(1, 8);
        CHECK(rw(T_OUT, 1, 8) == S_IOERR, 83);
        CHECK(rw(T_IN, 1, 1) == S_OK, 83);
    } else {
        u64 at[3] = {1, cap / 2, cap - 8};
        for (int r = 0; r < 3; r++) {
            fill(at[r], 8);
            if (r == 1) {
                /* Two data descriptors in one request. */
                struct vbuf d[2] = {{(u64)buf, 512, false}, {(u64)buf + 512, 7 * 512, false}};
                u32 len = 0;
                CHECK(request(T_OUT, at[r], d, 2, &len) == S_OK && len == 1, 83);
            } else {
                CHECK(rw(T_OUT, at[r], 8) == S_OK, 83);
            }
        }
        if (dev.features & BIT(VIRTIO_BLK_F_FLUSH))
            CHECK(request(T_FLUSH, 0, NULL, 0, NULL) == S_OK, 84);
        for (int r = 0; r < 3; r++) {
            memset(buf, 0, 8 * 512);
            CHECK(rw(T_IN, at[r], 8) == S_OK, 85);
            CHECK(check(at[r], 8, false), 85);
        }
        if (dev.features & BIT(VIRTIO_BLK_F_DISCARD)) {
            *segs = (struct seg){64, 16, 0};
            struct vbuf d = {(u64)segs, sizeof(*segs), false};
            CHECK(request(T_DISCARD, 0, &d, 1, NULL) == S_OK, 86);
            for (u64 s = 64; s < 80; s += 8) {
                CHECK(rw(T_IN, s, 8) == S_OK, 86);
                CHECK(check(s, 8, true), 86);
            }
        } else {
            rt_puts("blk: DISCARD not offered\n");
        }
        if (dev.features & BIT(VIRTIO_BLK_F_WRITE_ZEROES)) {
            fill(96, 8);
            CHECK(rw(T_OUT, 96, 8) == S_OK, 87);
            *segs = (struct seg){96, 8, 0};
            struct vbuf d = {(u64)segs, sizeof(*segs), false};
            CHECK(request(T_WRITE_ZEROES, 0, &d, 1, NULL) == S_OK, 87);
            CHECK(rw(T_IN, 96, 8) == S_OK, 87);
            CHECK(check(96, 8, true), 87);
        } else {
            rt_puts("blk: WRITE_ZEROES not offered\n");
        }
        if (dev.features & BIT(VIRTIO_BLK_F_FLUSH))
            CHECK(request(T_FLUSH, 0, NULL, 0, NULL) == S_OK, 84);
    }

    /* GET_ID: 20 bytes, NUL-padded. */
    memset(buf, 0, 32);
    struct vbuf idb = {(u64)buf, 20, true};
    int st = request(T_GET_ID, 0, &idb, 1, NULL);
    buf[20] = 0;
    rt_printf("blk: id=[%s] (status %u)\n", (char *)buf, st);
    const char *want = rt_param("id");
    if (want)
        CHECK(st == S_OK && rt_param_len(want) == strlen((char *)buf) && !strncmp(want, (char *)buf, rt_param_len(want)), 88);

    /* Past the end: a whole request beyond, and one straddling the end. */
    CHECK(rw(T_IN, cap, 1) == S_IOERR, 89);
    CHECK(rw(T_IN, cap - 1, 2) == S_IOERR, 89);
    CHECK(rw(T_IN, ~0ul - 1, 1) == S_IOERR, 89);
    /* An unknown request type. */
    CHECK(request(99, 0, NULL, 0, NULL) == S_UNSUPP, 89);

    if (dev.pci && dev.irq_mode) {
        /* MSI-X: every interrupt came on the queue's vector (entry 1), none
         * on the configuration vector (entry 0). */
        rt_printf("blk: MSI-X interrupts: config %u, queue %u\n", dev.vec_irqs[0], dev.vec_irqs[1]);
        CHECK(dev.vec_irqs[0] == 0 && dev.vec_irqs[1] == dev.irqs, 89);
    }
    rt_printf("BLK OK irqs=%u\n", dev.irqs);
    if (dev.irq_mode)
        CHECK(dev.irqs > 0, 89);
    if (rt_param_is("hang_after", "1")) {
        /* Stay up so the host can inspect ember (tests/hardening.rs). */
        rt_puts("BLK HANG\n");
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    return 0;
}
