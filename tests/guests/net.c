/*
 * net: a virtio-net driver written from the virtio 1.x spec (5.1), run
 * against the first network device: a tiny host that answers ARP requests
 * for its address, ICMP echo requests, and echoes UDP datagrams back to
 * their sender, until a UDP datagram with payload "EMBER-QUIT" arrives; it
 * answers that one with "BYE", prints "net: rx N tx M" and exits 0.
 *
 * Parameters: guest_ip=A.B.C.D (required), mrg=1 (negotiate
 * VIRTIO_NET_F_MRG_RXBUF), irq=1 (wait for interrupts instead of polling;
 * on virtio-mmio this needs the device's IRQ from the command line, on
 * virtio-pci it uses MSI-X), transport=pci (the device is on PCI bus 0).
 *
 * Buffers: NBUF 2 KiB buffers, all posted on the receive queue at start.
 * Replies are built in place in the receive buffer and sent from it (no
 * copies: the guest may run emulated); once the transmit completes, the
 * buffer goes back to the receive queue. Frames that need no answer go
 * back at once.
 *
 * Exit codes: 0 after EMBER-QUIT; 70 no device / negotiation failed; 71 no
 * or bad guest_ip; 72 the device never completed a transmit.
 */
#include "virtio.h"
#include "inet.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define VIRTIO_NET_F_STATUS 16

#define NBUF 16
#define BUF_LEN 2048
#define HDR_LEN 12

static struct vdev dev;
static struct vq rxq, txq;
static u8 *bufs;             /* NBUF * BUF_LEN */
static u16 tx_buf[NBUF];     /* transmit descriptor -> buffer */
static u16 tx_free[NBUF];    /* free transmit descriptors */
static int tx_nfree;
static u8 mac[6];
static u8 my_ip[4];
static u64 n_rx, n_tx;
static bool quit;

static u8 *buf(u16 b) { return bufs + (u64)b * BUF_LEN; }




static void hex2(u8 v, char *o)
{
    static const char h[] = "0123456789abcdef";
    o[0] = h[v >> 4];
    o[1] = h[v & 15];
}

/* Puts buffer `b` on the receive queue (descriptor b is buffer b). */
static void rx_post(u16 b)
{
    rxq.avail[2 + (rxq.avail_idx % rxq.size)] = b;
    mb();
    rxq.avail_idx++;
    rxq.avail[1] = rxq.avail_idx;
}

static void notify(struct vq *q)
{
    mb();
    vio_notify(&dev, q);
}

/* Takes the next used entry of `q`, if any. */
static bool used_next(struct vq *q, u32 *id, u32 *len)
{
    if (q->used[1] == q->last_used)
        return false;
    mb();
    volatile u32 *e = (volatile u32 *)(q->used + 2);
    u16 slot = q->last_used % q->size;
    *id = e[2 * slot];
    *len = e[2 * slot + 1];
    q->last_used++;
    return true;
}

/* Transmit completions: their buffers go back to the receive queue. */
static int tx_reap(void)
{
    u32 id, len;
    int n = 0;
    while (used_next(&txq, &id, &len)) {
        if (id >= NBUF)
            rt_fail(72, "transmit completion for an unknown descriptor");
        rx_post(tx_buf[id]);
        tx_free[tx_nfree++] = (u16)id;
        n++;
    }
    return n;
}

/* Sends the Ethernet frame of `len` bytes in buffer `b` (after its
 * header), which returns to the receive queue when the device is done. */
static void tx_send(u16 b, u32 len)
{
    for (u64 spins = 0; !tx_nfree; spins++) {
        if (tx_reap()) {
            notify(&rxq);
            break;
        }
        if (spins > 100000000)
            rt_fail(72, "no transmit completion");
        cpu_relax();
    }
    u16 d = tx_free[--tx_nfree];
    u8 *p = buf(b);
    memset(p, 0, HDR_LEN);
    tx_buf[d] = b;
    txq.desc[d].addr = (u64)p;
    txq.desc[d].len = HDR_LEN + len;
    txq.desc[d].flags = 0;
    txq.desc[d].next = 0;
    txq.avail[2 + (txq.avail_idx % txq.size)] = d;
    mb();
    txq.avail_idx++;
    txq.avail[1] = txq.avail_idx;
    notify(&txq);
    n_tx++;
}

/* Turns the Ethernet header around: back to the sender, from us. */
static void eth_reply(u8 *eth)
{
    memcpy(eth, eth + 6, 6);
    memcpy(eth + 6, mac, 6);
}

/* Handles one received Ethernet frame in buffer `b`; returns whether the
 * buffer went out as a reply (else the caller re-posts it). */
static bool handle(u16 b, u32 len)
{
    u8 *eth = buf(b) + HDR_LEN;
    if (len < 14)
        return false;
    bool bcast = eth[0] == 0xff && eth[1] == 0xff && eth[2] == 0xff && eth[3] == 0xff && eth[4] == 0xff &&
                 eth[5] == 0xff;
    if (!bcast && memcmp(eth, mac, 6))
        return false;
    u16 type = get16(eth + 12);
    u8 *p = eth + 14;
    len -= 14;

    if (type == 0x0806) {
        /* ARP request for our address (RFC 826). */
        if (len < 28 || get16(p) != 1 || get16(p + 2) != 0x0800 || p[4] != 6 || p[5] != 4 || get16(p + 6) != 1 ||
            memcmp(p + 24, my_ip, 4))
            return false;
        put16(p + 6, 2);
        memcpy(p + 18, p + 8, 10); /* target = requester */
        memcpy(p + 8, mac, 6);
        memcpy(p + 14, my_ip, 4);
        eth_reply(eth);
        tx_send(b, 14 + 28);
        return true;
    }
    if (type != 0x0800 || len < 20)
        return false;
    u32 ihl = (u32)(p[0] & 15) * 4;
    u32 tot = get16(p + 2);
    if ((p[0] >> 4) != 4 || ihl < 20 || tot < ihl || tot > len || memcmp(p + 16, my_ip, 4))
        return false;
    if ((get16(p + 6) & 0x3fff) != 0)
        return false; /* fragments: not for this host */
    u8 *l4 = p + ihl;
    u32 l4len = tot - ihl;

    if (p[9] == 1) {
        /* ICMP echo request -> echo reply. */
        if (l4len < 8 || l4[0] != 8)
            return false;
        l4[0] = 0;
        put16(l4 + 2, 0);
        put16(l4 + 2, csum(l4, l4len));
    } else if (p[9] == 17) {
        if (l4len < 8 || get16(l4 + 4) < 8 || get16(l4 + 4) > l4len)
            return false;
        u32 plen = get16(l4 + 4) - 8u;
        u8 *data = l4 + 8;
        u8 port[2];
        memcpy(port, l4, 2);
        memcpy(l4, l4 + 2, 2);
        memcpy(l4 + 2, port, 2);
        if (plen == 10 && !memcmp(data, "EMBER-QUIT", 10)) {
            memcpy(data, "BYE", 3);
            put16(l4 + 4, 8 + 3);
            put16(l4 + 6, 0); /* no checksum */
            tot = ihl + 8 + 3;
            put16(p + 2, (u16)tot);
            quit = true;
        }
        /* Otherwise the datagram goes back as it came: swapping the
         * addresses and the ports keeps its checksum valid. */
    } else {
        return false;
    }
    /* IP header: back to the sender. */
    u8 a[4];
    memcpy(a, p + 12, 4);
    memcpy(p + 12, p + 16, 4);
    memcpy(p + 16, a, 4);
    p[8] = 64;
    put16(p + 10, 0);
    put16(p + 10, csum(p, ihl));
    eth_reply(eth);
    tx_send(b, 14 + tot);
    return true;
}

/* Serves every used receive entry; returns how many there were. */
static int rx_poll(void)
{
    u32 id, len;
    int n = 0;
    while (used_next(&rxq, &id, &len)) {
        n++;
        if (id >= NBUF)
            rt_fail(72, "receive completion for an unknown descriptor");
        /* num_buffers is only meaningful with MRG_RXBUF. */
        u16 nbufs = 1;
        if ((dev.features & BIT(VIRTIO_NET_F_MRG_RXBUF)) && len >= HDR_LEN)
            nbufs = (u16)(buf((u16)id)[10] | (buf((u16)id)[11] << 8));
        n_rx++;
        if (nbufs > 1) {
            /* A merged frame (larger than our buffers): not expected at
             * this MTU; drop it and give all its buffers back. */
            rx_post((u16)id);
            for (u16 i = 1; i < nbufs; i++) {
                while (!used_next(&rxq, &id, &len))
                    cpu_relax();
                rx_post((u16)id);
            }
            continue;
        }
        if (len < HDR_LEN || !handle((u16)id, len - HDR_LEN))
            rx_post((u16)id);
    }
    if (n)
        notify(&rxq);
    return n;
}

int main(void)
{
    CHECK(vio_find(VIRTIO_ID_NET, 0, &dev), 70);
    if (!parse_ip(rt_param("guest_ip"), my_ip))
        rt_fail(71, "guest_ip=A.B.C.D is required");
    /* MMIO needs the IRQ from the command line; PCI uses MSI-X. */
    bool irq_known = dev.irq != 0 || dev.pci;
    dev.irq_mode = rt_param_is("irq", "1") && irq_known;
    if (rt_param_is("irq", "1") && !irq_known)
        rt_puts("net: device IRQ unknown, polling\n");
    u64 wanted = BIT(VIRTIO_NET_F_MAC) | BIT(VIRTIO_NET_F_STATUS);
    if (rt_param_is("mrg", "1"))
        wanted |= BIT(VIRTIO_NET_F_MRG_RXBUF);
    CHECK(vio_negotiate(&dev, wanted), 70);
    CHECK(dev.features & BIT(VIRTIO_NET_F_MAC), 70);
    CHECK(vio_queue(&dev, &rxq, 0, NBUF), 70);
    CHECK(vio_queue(&dev, &txq, 1, NBUF), 70);
    bufs = vio_alloc((u64)NBUF * BUF_LEN, 4096);

    /* Config space (5.1.4): mac, then status. */
    char m[18];
    for (int i = 0; i < 6; i++) {
        mac[i] = vio_cfg8(&dev, (u32)i);
        hex2(mac[i], m + 3 * i);
        m[3 * i + 2] = i < 5 ? ':' : 0;
    }
    u16 status = (dev.features & BIT(VIRTIO_NET_F_STATUS)) ? vio_cfg16(&dev, 6) : 1;
    rt_printf("net: mac %s link %s ip %u.%u.%u.%u mrg %u irq %u\n", m, (status & 1) ? "up" : "down", my_ip[0],
              my_ip[1], my_ip[2], my_ip[3], (u32)!!(dev.features & BIT(VIRTIO_NET_F_MRG_RXBUF)),
              (u32)dev.irq_mode);

    /* Receive descriptor b is buffer b, for good. */
    for (u16 b = 0; b < NBUF; b++) {
        rxq.desc[b].addr = (u64)buf(b);
        rxq.desc[b].len = BUF_LEN;
        rxq.desc[b].flags = VRING_DESC_F_WRITE;
        rxq.desc[b].next = 0;
        tx_free[tx_nfree++] = b;
    }
    vio_driver_ok(&dev);
    for (u16 b = 0; b < NBUF; b++)
        rx_post(b);
    notify(&rxq);
    rt_puts("net: ready\n");

    while (!quit) {
        int work = rx_poll();
        if (tx_reap()) {
            notify(&rxq);
            work++;
        }
        if (work || quit)
            continue;
        if (dev.irq_mode) {
            /* Interrupts are off here: a completion that lands between the
             * check and the halt still wakes it. */
            if (rxq.used[1] == rxq.last_used && txq.used[1] == txq.last_used)
                sti_hlt();
        } else {
            cpu_relax();
        }
    }
    /* Let the BYE go out before leaving. */
    for (u64 spins = 0; tx_nfree < NBUF; spins++) {
        tx_reap();
        if (spins > 100000000)
            rt_fail(72, "the last transmit never completed");
        cpu_relax();
    }
    rt_printf("net: rx %lu tx %lu\n", n_rx, n_tx);
    return 0;
}
