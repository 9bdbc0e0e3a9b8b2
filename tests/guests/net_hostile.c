/*
 * net_hostile: one malformed thing a hostile driver can do to a virtio-net
 * device's transmit path, chosen by case=NAME. The device must answer it
 * (return the chain in the used ring, or mark itself DEVICE_NEEDS_RESET)
 * without sending it, and must keep working: every case ends with a reset,
 * a fresh set-up, and one good UDP datagram ("ember-net-hostile OK CASE")
 * from guest_ip= to peer_ip=:peer_port=, to peer_mac= if given, else to
 * the broadcast address, so the host can see the device still works.
 *
 * Cases:
 *   short_hdr          a chain of 8 bytes: shorter than the virtio-net header
 *   oversized          17 descriptors of 4 KiB on one buffer: 68 KiB > 64 KiB + header
 *   outside_ram        header in RAM, frame body at an address past the end of RAM
 *   writable_tx        a valid frame followed by a device-writable descriptor
 *   reset_mid_traffic  transmit chains and receive buffers in flight, then a reset
 *
 * The malformed frames are otherwise valid UDP datagrams to peer_port + 2
 * (payload "ember-net-hostile BAD CASE"): if one ever reached the host, a
 * listener there would see it. Frames in flight at the reset go to
 * peer_port + 1.
 *
 * Exit 0 if the device behaved; 100 unknown case or missing parameter;
 * 101 the device returned the bad chain with a non-zero length; 102 no
 * answer; 103 the device did not recover.
 */
#include "virtio.h"
#include "inet.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_NET_F_MAC 5
#define HDR_LEN 12
#define NRX 8
#define RX_LEN 2048

static struct vdev dev;
static struct vq rxq, txq;
static u8 mac[6];
static u8 my_ip[4], peer_ip[4], peer_mac[6];
static u16 peer_port;
static u8 *frame; /* 2 KiB */
static u8 *big;   /* 4 KiB */
static u8 *rxbufs;


static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool parse_mac(const char *s, u8 out[6])
{
    for (int i = 0; i < 6; i++) {
        int h = hexval(s[0]), l = hexval(s[1]);
        if (h < 0 || l < 0)
            return false;
        out[i] = (u8)(h * 16 + l);
        s += 2;
        if (i < 5 && *s++ != ':')
            return false;
    }
    return true;
}



/* Writes the virtio-net header and a UDP datagram with `msg` (and the case
 * name) to `port` at `p`; returns the length, header included. */
static u32 build_udp(u8 *p, u16 port, const char *msg, const char *cs)
{
    memset(p, 0, HDR_LEN);
    u8 *eth = p + HDR_LEN;
    memcpy(eth, peer_mac, 6);
    memcpy(eth + 6, mac, 6);
    put16(eth + 12, 0x0800);
    u8 *ip = eth + 14, *udp = ip + 20, *data = udp + 8;
    u32 n = 0;
    for (const char *s = msg; *s; s++)
        data[n++] = (u8)*s;
    data[n++] = ' ';
    for (const char *s = cs; *s && *s != ' '; s++)
        data[n++] = (u8)*s;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(20 + 8 + n));
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, my_ip, 4);
    memcpy(ip + 16, peer_ip, 4);
    put16(ip + 10, csum(ip, 20));
    put16(udp, 5555);
    put16(udp + 2, port);
    put16(udp + 4, (u16)(8 + n));
    put16(udp + 6, 0); /* no checksum */
    return HDR_LEN + 14 + 20 + 8 + n;
}

static void desc(struct vq *q, int i, u64 addr, u32 len, u16 flags, u16 next)
{
    q->desc[i].addr = addr;
    q->desc[i].len = len;
    q->desc[i].flags = flags;
    q->desc[i].next = next;
}

static void publish(struct vq *q, u16 head)
{
    q->avail[2 + (q->avail_idx % q->size)] = head;
    mb();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    mb();
}

/* Publishes transmit chain `head` (descriptors already written) and waits
 * for its used entry or NEEDS_RESET. Returns the used length, -2 for
 * NEEDS_RESET, -1 for no answer. */
static i64 submit_tx(u16 head)
{
    publish(&txq, head);
    vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    for (u64 i = 0; i < 20000000; i++) {
        if (txq.used[1] != txq.last_used) {
            volatile u32 *e = (volatile u32 *)(txq.used + 2);
            u32 len = e[2 * (txq.last_used % txq.size) + 1];
            txq.last_used++;
            return len;
        }
        if (vio_read(&dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
            return -2;
        cpu_relax();
    }
    return -1;
}

static bool setup(void)
{
    if (!vio_negotiate(&dev, BIT(VIRTIO_NET_F_MAC)))
        return false;
    if (!vio_queue(&dev, &rxq, 0, 16) || !vio_queue(&dev, &txq, 1, 32))
        return false;
    for (int i = 0; i < 6; i++)
        mac[i] = vio_cfg8(&dev, (u32)i);
    vio_driver_ok(&dev);
    for (int i = 0; i < NRX; i++) {
        desc(&rxq, i, (u64)(rxbufs + i * RX_LEN), RX_LEN, VRING_DESC_F_WRITE, 0);
        publish(&rxq, (u16)i);
    }
    vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    return true;
}

/* The answer to a malformed chain: its used entry (length 0) or
 * NEEDS_RESET. */
static void expect_dropped(i64 r)
{
    rt_printf("hostile: answered with %d, status 0x%x\n", (int)r, vio_read(&dev, VIRTIO_MMIO_STATUS));
    CHECK(r != -1, 102);
    CHECK(r == 0 || r == -2, 101);
}

/* End of guest RAM, from the memory map. */
static u64 ram_top(void)
{
    u64 top = 0;
    for (int i = 0; i < rt_boot.e820_n; i++)
        if (rt_boot.e820[i].type == E820_RAM && rt_boot.e820[i].addr + rt_boot.e820[i].size > top)
            top = rt_boot.e820[i].addr + rt_boot.e820[i].size;
    return top;
}

int main(void)
{
    CHECK(vio_find(VIRTIO_ID_NET, 0, &dev), 103);
    const char *c = rt_param("case");
    CHECK(c != NULL, 100);
    CHECK(parse_ip(rt_param("guest_ip"), my_ip), 100);
    CHECK(parse_ip(rt_param("peer_ip"), peer_ip), 100);
    peer_port = (u16)rt_param_u64("peer_port", 9999);
    memset(peer_mac, 0xff, 6);
    if (rt_param("peer_mac"))
        CHECK(parse_mac(rt_param("peer_mac"), peer_mac), 100);
    frame = vio_alloc(2048, 4096);
    big = vio_alloc(4096, 4096);
    rxbufs = vio_alloc(NRX * RX_LEN, 4096);
    rt_printf("hostile: case %s\n", c);
    CHECK(setup(), 103);
#define IS(name) rt_param_is("case", name)

    u16 bad_port = (u16)(peer_port + 2);
    if (IS("short_hdr")) {
        build_udp(frame, bad_port, "ember-net-hostile BAD", c);
        desc(&txq, 0, (u64)frame, 8, 0, 0);
        expect_dropped(submit_tx(0));
    } else if (IS("oversized")) {
        /* 17 x 4 KiB = 69632 bytes, all on the same buffer. */
        build_udp(big, bad_port, "ember-net-hostile BAD", c);
        for (int i = 0; i < 17; i++)
            desc(&txq, i, (u64)big, 4096, i < 16 ? VRING_DESC_F_NEXT : 0, (u16)(i + 1));
        expect_dropped(submit_tx(0));
    } else if (IS("outside_ram")) {
        u32 len = build_udp(frame, bad_port, "ember-net-hostile BAD", c);
        u64 outside = ram_top() + 0x10000000ul;
        rt_printf("hostile: RAM ends at 0x%lx, frame body at 0x%lx\n", ram_top(), outside);
        desc(&txq, 0, (u64)frame, HDR_LEN + 14, VRING_DESC_F_NEXT, 1);
        desc(&txq, 1, outside, len - HDR_LEN - 14, 0, 0);
        expect_dropped(submit_tx(0));
    } else if (IS("writable_tx")) {
        u32 len = build_udp(frame, bad_port, "ember-net-hostile BAD", c);
        desc(&txq, 0, (u64)frame, len, VRING_DESC_F_NEXT, 1);
        desc(&txq, 1, (u64)frame + 1024, 64, VRING_DESC_F_WRITE, 0);
        expect_dropped(submit_tx(0));
    } else if (IS("reset_mid_traffic")) {
        /* Eight good frames queued at once, receive buffers posted, and
         * a reset before anything completes. */
        static u8 bufs[8][128] __attribute__((aligned(64)));
        for (int i = 0; i < 8; i++) {
            u32 len = build_udp(bufs[i], (u16)(peer_port + 1), "ember-net-hostile in-flight", c);
            desc(&txq, i, (u64)bufs[i], len, 0, 0);
            txq.avail[2 + (txq.avail_idx % txq.size)] = (u16)i;
            txq.avail_idx++;
        }
        mb();
        txq.avail[1] = txq.avail_idx;
        mb();
        vio_write(&dev, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        vio_write(&dev, VIRTIO_MMIO_STATUS, 0);
    } else {
        return 100;
    }

    /* Recovery: reset, set up again, one good datagram to the peer. */
    vio_reset(&dev);
    CHECK(setup(), 103);
    u32 len = build_udp(frame, peer_port, "ember-net-hostile OK", c);
    desc(&txq, 0, (u64)frame, len, 0, 0);
    i64 r = submit_tx(0);
    rt_printf("hostile: good datagram answered with %d\n", (int)r);
    CHECK(r == 0, 103);
    rt_puts("HOSTILE OK\n");
    return 0;
}
