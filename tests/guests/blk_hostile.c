/*
 * blk_hostile: one malformed or out-of-order thing a hostile driver can do
 * to a virtio-blk device, chosen by case=NAME. The device must answer it
 * with an error status (or refuse the register write, or mark itself
 * DEVICE_NEEDS_RESET), and must keep working: every case ends with a reset,
 * a fresh set-up and a good read of sector 0 (CRC-32 from s0_crc=). The
 * test then checks ember is still running and the image is untouched.
 *
 * Cases: loop, no_status, short_header, outside_ram, writable_out,
 * ro_write, bad_qsize, ready_early, reset_mid_io, bad_features, huge_len.
 * Exit 0 if the device behaved; 100 unknown case; 101 the device accepted
 * the bad input; 102 no answer; 103 the device did not recover.
 */
#include "virtio.h"
#include "blk.h"



static struct vdev dev;
static struct vq q;
static struct blk_req *hdr;
static u8 *status;
static u8 *buf;

static void setup(void)
{
    CHECK(vio_negotiate(&dev, 0), 103);
    CHECK(vio_queue(&dev, &q, 0, 32), 103);
    vio_driver_ok(&dev);
}

/* Publishes descriptor chain head 0 (descriptors already written) and waits
 * for a used entry or NEEDS_RESET. Returns the used length, -2 for
 * NEEDS_RESET, -1 for no answer. */
static i64 submit_raw(void)
{
    q.avail[2 + (q.avail_idx % q.size)] = 0;
    mb();
    q.avail_idx++;
    q.avail[1] = q.avail_idx;
    mb();
    vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    for (u64 i = 0; i < 5000000; i++) {
        if (q.used[1] != q.last_used) {
            volatile u32 *e = (volatile u32 *)(q.used + 2);
            u32 len = e[2 * (q.last_used % q.size) + 1];
            q.last_used++;
            return len;
        }
        if (vio_read(&dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
            return -2;
        cpu_relax();
    }
    return -1;
}

static void desc(int i, u64 addr, u32 len, u16 flags, u16 next)
{
    q.desc[i].addr = addr;
    q.desc[i].len = len;
    q.desc[i].flags = flags;
    q.desc[i].next = next;
}

/* A request whose answer must be IOERR (or NEEDS_RESET). */
static void expect_error(i64 r)
{
    rt_printf("hostile: used len %d, status %u\n", (int)r, *status);
    CHECK(r != -1, 102);
    CHECK(r == -2 || (r == 1 && *status == S_IOERR), 101);
}

static void recover_and_read(void)
{
    vio_reset(&dev);
    setup();
    hdr->type = T_IN;
    hdr->sector = 0;
    *status = 0xee;
    struct vbuf b[3] = {{(u64)hdr, 16, false}, {(u64)buf, 512, true}, {(u64)status, 1, true}};
    i64 len = vq_request(&dev, &q, b, 3);
    CHECK(len == 513 && *status == 0, 103);
    if (rt_param("s0_crc"))
        CHECK(rt_crc32(buf, 512) == (u32)rt_param_u64("s0_crc", 0), 103);
    rt_puts("hostile: device recovered, sector 0 intact\n");
}

int main(void)
{
    CHECK(vio_find(VIRTIO_ID_BLOCK, 0, &dev), 103);
    hdr = vio_alloc(sizeof(*hdr), 16);
    status = vio_alloc(1, 1);
    buf = vio_alloc(4096, 4096);
    const char *c = rt_param("case");
    CHECK(c != NULL, 100);
    rt_printf("hostile: case %s\n", c);
#define IS(name) rt_param_is("case", name)

    if (IS("bad_features")) {
        /* Ack a feature the device never offered: FEATURES_OK must not stick. */
        vio_reset(&dev);
        vio_write(&dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
        vio_write(&dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        vio_write(&dev, VIRTIO_MMIO_DRIVER_FEATURES, 1 | (1u << 18)); /* VERSION_1 + bit 50 */
        vio_write(&dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
        CHECK(!(vio_read(&dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK), 101);
        /* And without VERSION_1. */
        vio_reset(&dev);
        vio_write(&dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
        vio_write(&dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        vio_write(&dev, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        vio_write(&dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
        CHECK(!(vio_read(&dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK), 101);
    } else if (IS("bad_qsize") || IS("ready_early")) {
        vio_reset(&dev);
        CHECK(vio_negotiate(&dev, 0), 103);
        vio_write(&dev, VIRTIO_MMIO_QUEUE_SEL, 0);
        if (IS("bad_qsize")) {
            struct vq tmp;
            /* Set everything up properly except the size: 3 entries. */
            tmp.desc = vio_alloc(16 * 4, 16);
            tmp.avail = vio_alloc(16, 2);
            tmp.used = vio_alloc(64, 4);
            vio_write(&dev, VIRTIO_MMIO_QUEUE_NUM, 3);
            vio_write(&dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(u64)tmp.desc);
            vio_write(&dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)(u64)tmp.avail);
            vio_write(&dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)(u64)tmp.used);
        }
        /* ready_early: QueueReady before any address was set. */
        vio_write(&dev, VIRTIO_MMIO_QUEUE_READY, 1);
        u32 ready = vio_read(&dev, VIRTIO_MMIO_QUEUE_READY);
        u32 st = vio_read(&dev, VIRTIO_MMIO_STATUS);
        rt_printf("hostile: QueueReady reads %u, status 0x%x\n", ready, st);
        CHECK(ready == 0 || (st & VIRTIO_STATUS_NEEDS_RESET), 101);
    } else {
        setup();
        if (IS("loop")) {
            /* A descriptor chain that loops back on itself. */
            hdr->type = T_IN;
            hdr->sector = 0;
            desc(0, (u64)hdr, 16, VRING_DESC_F_NEXT, 1);
            desc(1, (u64)buf, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0);
            i64 r = submit_raw();
            rt_printf("hostile: loop answered with %d\n", (int)r);
            CHECK(r != -1, 102);
            /* Acceptable: NEEDS_RESET, a dropped chain, or IOERR in the
             * last byte of the chain's last device-writable buffer. */
            CHECK(r == -2 || r == 0 || (r == 1 && buf[511] == S_IOERR), 101);
        } else if (IS("no_status")) {
            /* Only a header: nowhere to put a status byte. */
            hdr->type = T_IN;
            hdr->sector = 0;
            desc(0, (u64)hdr, 16, 0, 0);
            i64 r = submit_raw();
            rt_printf("hostile: no-status chain answered with %d\n", (int)r);
            CHECK(r == 0 || r == -2, 101);
        } else if (IS("short_header")) {
            hdr->type = T_OUT;
            hdr->sector = 0;
            *status = 0xee;
            desc(0, (u64)hdr, 8, VRING_DESC_F_NEXT, 1);
            desc(1, (u64)buf, 512, VRING_DESC_F_NEXT, 2);
            desc(2, (u64)status, 1, VRING_DESC_F_WRITE, 0);
            expect_error(submit_raw());
        } else if (IS("outside_ram") || IS("huge_len")) {
            /* Data buffers outside guest RAM (1 GiB into a 128 MiB guest, or
             * a length running off the end), for a read and a write. */
            u64 addr = IS("huge_len") ? (u64)buf : 0x40000000ul;
            u32 len = IS("huge_len") ? 0xfffffe00u : 512;
            for (u32 t = T_IN; t <= T_OUT; t++) {
                hdr->type = t;
                hdr->sector = 0;
                *status = 0xee;
                desc(0, (u64)hdr, 16, VRING_DESC_F_NEXT, 1);
                desc(1, addr, len, (u16)(VRING_DESC_F_NEXT | (t == T_IN ? VRING_DESC_F_WRITE : 0)), 2);
                desc(2, (u64)status, 1, VRING_DESC_F_WRITE, 0);
                expect_error(submit_raw());
                if (vio_read(&dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
                    break;
            }
        } else if (IS("writable_out") || IS("ro_write")) {
            /* writable_out: an OUT whose data buffer is device-writable.
             * ro_write: a correct OUT on a read-only disk. */
            memset(buf, 0xa5, 512);
            hdr->type = T_OUT;
            hdr->sector = 0;
            *status = 0xee;
            desc(0, (u64)hdr, 16, VRING_DESC_F_NEXT, 1);
            desc(1, (u64)buf, 512, (u16)(VRING_DESC_F_NEXT | (IS("writable_out") ? VRING_DESC_F_WRITE : 0)), 2);
            desc(2, (u64)status, 1, VRING_DESC_F_WRITE, 0);
            expect_error(submit_raw());
        } else if (IS("reset_mid_io")) {
            /* Read sector 0, then queue a burst: writes of that same data
             * back to sector 0 and reads; reset without waiting for them. */
            hdr->type = T_IN;
            hdr->sector = 0;
            struct vbuf b[3] = {{(u64)hdr, 16, false}, {(u64)buf, 512, true}, {(u64)status, 1, true}};
            CHECK(vq_request(&dev, &q, b, 3) == 513, 103);
            static struct blk_req hdrs[8];
            static u8 sts[8];
            for (int i = 0; i < 8; i++) {
                hdrs[i].type = (i & 1) ? T_IN : T_OUT;
                hdrs[i].sector = 0;
                int d = 3 * i;
                desc(d, (u64)&hdrs[i], 16, VRING_DESC_F_NEXT, (u16)(d + 1));
                desc(d + 1, (u64)buf + ((i & 1) ? 1024 : 0), 512, (u16)(VRING_DESC_F_NEXT | ((i & 1) ? VRING_DESC_F_WRITE : 0)), (u16)(d + 2));
                desc(d + 2, (u64)&sts[i], 1, VRING_DESC_F_WRITE, 0);
                q.avail[2 + (q.avail_idx % q.size)] = (u16)d;
                q.avail_idx++;
            }
            mb();
            q.avail[1] = q.avail_idx;
            mb();
            vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
            vio_write(&dev, VIRTIO_MMIO_STATUS, 0);
        } else {
            return 100;
        }
    }
    recover_and_read();
    rt_puts("HOSTILE OK\n");
    return 0;
}
