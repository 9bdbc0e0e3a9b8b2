/*
 * pci_hostile: one hostile thing a driver can do to a virtio-blk device on
 * the PCI transport, chosen by case=NAME (transport=pci is implied). The
 * device must ignore it or answer it within the spec, and keep working:
 * every case ends with a reset, a fresh set-up and a good read of sector 0
 * (CRC-32 from s0_crc=).
 *
 * Cases:
 *   msix_oob        (MSI-X on) writes past the MSI-X table, of odd widths
 *                   into an entry, and to the read-only PBA; the entries
 *                   are then rewritten as they were: they must read back,
 *                   nothing may be pending, and the next request must
 *                   interrupt on its queue's vector.
 *   notify_missing  notifications for queues that do not exist (and a
 *                   wrong value at queue 0's address), and set-up writes for
 *                   a selected queue that does not exist: queue 0 must keep
 *                   its configuration and keep working.
 *   bar_ram         the BAR holding the common configuration moved (with
 *                   decoding on) over guest RAM, to 0 and to all-ones: the
 *                   RAM stays RAM (a write where device_status would be does
 *                   not reset the device), and once the BAR is back the
 *                   running device serves a request without a new set-up.
 *   bar_overlap     the second block device's BAR moved over the first's,
 *                   then back: both devices then work (s1_crc= for the
 *                   second disk's sector 0).
 *   cfg_odd         byte and word configuration reads agree with dword
 *                   reads; writes to read-only header fields change
 *                   nothing; narrow CONFIG_ADDRESS writes leave it intact;
 *                   an unaligned CONFIG_DATA read; with ecam=ADDR a write
 *                   across a dword boundary through ECAM; a BAR sized with
 *                   decoding on, then restored.
 *
 * Exit 0 if the device behaved; 100 unknown case or missing device; 101
 * the device accepted the bad input; 102 no answer; 103 the device did not
 * recover.
 */
#include "virtio.h"
#include "pci.h"
#include "blk.h"

static struct vdev dev;
static struct vq q;
static struct blk_req *hdr;
static u8 *status;
static u8 *buf;

/* RAM the BAR is moved over: naturally aligned for BARs up to 64 KiB. */
static u8 ramwin[0x10000] __attribute__((aligned(0x10000)));

static void setup(struct vdev *d, struct vq *vq)
{
    CHECK(vio_negotiate(d, 0), 103);
    CHECK(vio_queue(d, vq, 0, 32), 103);
    vio_driver_ok(d);
}

/* Reads sector 0 of `d` and checks it against `crc_param`; `code` on
 * failure. */
static void read_sector0(struct vdev *d, struct vq *vq, const char *crc_param, int code)
{
    hdr->type = T_IN;
    hdr->reserved = 0;
    hdr->sector = 0;
    *status = 0xee;
    memset(buf, 0, 512);
    struct vbuf b[3] = {{(u64)hdr, 16, false}, {(u64)buf, 512, true}, {(u64)status, 1, true}};
    i64 len = vq_request(d, vq, b, 3);
    if (len != 513 || *status != S_OK)
        rt_printf("hostile: read of sector 0 answered %d, status %u\n", (int)len, *status);
    CHECK(len != -1, code == 103 ? 103 : 102);
    CHECK(len == 513 && *status == S_OK, code);
    if (rt_param(crc_param))
        CHECK(rt_crc32(buf, 512) == (u32)rt_param_u64(crc_param, 0), code);
}

/* The BAR of `d` that holds its common configuration. */
static int common_bar(const struct vdev *d)
{
    for (int i = 0; i < 6; i++) {
        const struct pci_bar *b = &d->func->bar[i];
        if (b->size && d->common >= b->addr && d->common < b->addr + b->size)
            return i;
    }
    rt_fail(100, "no BAR holds the common configuration");
}

/* Whether [a, a + n) touches a virtio structure of `dev` other than the
 * MSI-X table (where hostile table writes must not land). */
static bool hits_structure(u64 a, u64 n)
{
    u64 s[4][2] = {{dev.common, 0x40}, {dev.isr, 4}, {dev.devcfg, 0x100}, {dev.notify, 0x1000}};
    for (int i = 0; i < 4; i++)
        if (a < s[i][0] + s[i][1] && s[i][0] < a + n)
            return true;
    return a < dev.msix_pba + 8 && dev.msix_pba < a + n;
}

static void msix_oob(void)
{
    dev.irq_mode = true;
    setup(&dev, &q);
    CHECK(dev.msix_cap, 100);
    read_sector0(&dev, &q, "s0_crc", 103);
    u64 t = dev.msix_table;
    u16 n = dev.msix_n;
    u32 saved[8][4];
    CHECK(n <= 8, 100);
    for (u16 e = 0; e < n; e++)
        for (int k = 0; k < 4; k++)
            saved[e][k] = mmio_read32(t + 16ul * e + 4ul * k);
    /* Past the last entry, and at the far end of a 4 KiB table region. */
    u64 past[2] = {t + 16ul * n, t + 0xff0};
    for (int i = 0; i < 2; i++) {
        if (hits_structure(past[i], 16))
            continue;
        mmio_write32(past[i], 0xfee00000u);
        mmio_write32(past[i] + 8, 0x33);
        mmio_write32(past[i] + 12, 0);
    }
    /* Odd widths into entry 0 (the configuration vector). */
    mmio_write8(t + 8, 0x99);
    mmio_write16(t + 10, 0x1234);
    mmio_write8(t + 13, 0xff);
    mmio_write16(t + 1, 0xffff);
    /* The PBA is read-only. */
    mmio_write32(dev.msix_pba, 0xffffffffu);
    mmio_write32(dev.msix_pba + 4, 0xffffffffu);
    /* Rewrite the entries as they were (aligned dwords). */
    for (u16 e = 0; e < n; e++)
        for (int k = 0; k < 4; k++)
            mmio_write32(t + 16ul * e + 4ul * k, saved[e][k]);
    for (u16 e = 0; e < n; e++)
        for (int k = 0; k < 4; k++)
            CHECK(mmio_read32(t + 16ul * e + 4ul * k) == saved[e][k], 101);
    u32 pba = mmio_read32(dev.msix_pba);
    rt_printf("hostile: PBA after the writes: 0x%x\n", pba);
    CHECK(pba == 0, 101);
    u32 before = dev.vec_irqs[1];
    read_sector0(&dev, &q, "s0_crc", 101);
    CHECK(dev.vec_irqs[1] > before, 101);
}

static void notify_missing(void)
{
    setup(&dev, &q);
    u64 c = dev.common;
    u16 nq = mmio_read16(c + VPCI_NUM_QUEUES);
    for (u32 k = 0; k < 4; k++) {
        u64 off = (u64)(nq + k) * dev.notify_mult;
        if (off + 2 <= 0x1000)
            mmio_write16(dev.notify + off, (u16)(nq + k));
    }
    mmio_write16(q.notify, 99);
    /* Set-up writes for a queue that does not exist. */
    mmio_write16(c + VPCI_Q_SELECT, 99);
    mmio_write16(c + VPCI_Q_SIZE, 4);
    mmio_write32(c + VPCI_Q_DESC, 0x1000);
    mmio_write16(c + VPCI_Q_MSIX, 0);
    mmio_write16(c + VPCI_Q_ENABLE, 1);
    mmio_write16(c + VPCI_Q_SELECT, 0);
    rt_printf("hostile: queue 0: size %u enable %u desc 0x%x\n", mmio_read16(c + VPCI_Q_SIZE),
              mmio_read16(c + VPCI_Q_ENABLE), mmio_read32(c + VPCI_Q_DESC));
    CHECK(mmio_read16(c + VPCI_Q_SIZE) == 32 && mmio_read16(c + VPCI_Q_ENABLE) == 1, 101);
    CHECK(mmio_read32(c + VPCI_Q_DESC) == (u32)(u64)q.desc, 101);
    CHECK(vio_status(&dev) & VIRTIO_STATUS_DRIVER_OK, 101);
    read_sector0(&dev, &q, "s0_crc", 101);
}

static void bar_ram(void)
{
    setup(&dev, &q);
    read_sector0(&dev, &q, "s0_crc", 103);
    struct pci_func *f = dev.func;
    int i = common_bar(&dev);
    u64 orig = f->bar[i].addr, size = f->bar[i].size;
    CHECK(size <= sizeof(ramwin), 100);
    u64 st = dev.common - orig + VPCI_STATUS;
    memset(ramwin, 0x5a, sizeof(ramwin));
    mb();
    pci_set_bar(f, i, (u64)ramwin);
    volatile u8 *ram = ramwin;
    rt_printf("hostile: BAR %d moved over RAM at 0x%lx; byte at the status offset: 0x%x\n", i, (u64)ramwin, ram[st]);
    CHECK(ram[st] == 0x5a && ram[0] == 0x5a, 101);
    ram[st] = 0; /* a device reset, were the BAR decoded here */
    CHECK(ram[st] == 0, 101);
    pci_set_bar(f, i, 0);
    pci_set_bar(f, i, ~0ul);
    pci_set_bar(f, i, orig);
    u8 s = vio_status(&dev);
    rt_printf("hostile: BAR back at 0x%lx, status 0x%x\n", orig, s);
    CHECK(s & VIRTIO_STATUS_DRIVER_OK, 101);
    read_sector0(&dev, &q, "s0_crc", 101);
}

static void bar_overlap(void)
{
    static struct vdev d2;
    static struct vq q2;
    CHECK(vio_find(VIRTIO_ID_BLOCK, 1, &d2), 100);
    setup(&dev, &q);
    setup(&d2, &q2);
    read_sector0(&dev, &q, "s0_crc", 103);
    read_sector0(&d2, &q2, "s1_crc", 103);
    int i1 = common_bar(&dev), i2 = common_bar(&d2);
    u64 a1 = dev.func->bar[i1].addr, a2 = d2.func->bar[i2].addr;
    rt_printf("hostile: moving BAR %d of 00:%u.0 from 0x%lx over 0x%lx\n", i2, d2.func->dev, a2, a1);
    pci_set_bar(d2.func, i2, a1);
    pci_set_bar(d2.func, i2, a2);
    read_sector0(&dev, &q, "s0_crc", 101);
    read_sector0(&d2, &q2, "s1_crc", 101);
    CHECK(vio_status(&d2) & VIRTIO_STATUS_DRIVER_OK, 101);
}

static void cfg_odd(void)
{
    setup(&dev, &q);
    struct pci_func *f = dev.func;
    u8 d = f->dev, fn = f->fn;
    /* Narrow and unaligned reads agree with dword reads. */
    for (u16 reg = 0; reg < 0x100; reg += 4) {
        u32 dw = pci_read32(d, fn, reg);
        for (u16 b = 0; b < 4; b++)
            CHECK(pci_read8(d, fn, (u16)(reg + b)) == (u8)(dw >> (8 * b)), 101);
        CHECK(pci_read16(d, fn, reg) == (u16)dw && pci_read16(d, fn, (u16)(reg + 2)) == (u16)(dw >> 16), 101);
    }
    /* An unaligned word in CONFIG_DATA: chipsets differ (QEMU's ignores it,
     * ember serves bytes 1-2); either way nothing may break. */
    outl(0xcf8, 0x80000000u | (u32)d << 11 | (u32)fn << 8);
    rt_printf("hostile: inw(0xcfd) = 0x%x\n", inw(0xcfd));
    /* Read-only header fields. */
    u32 id = pci_read32(d, fn, PCI_VENDOR), cls = pci_read32(d, fn, PCI_REVISION);
    u32 sub = pci_read32(d, fn, PCI_SUBSYS_VENDOR);
    u8 hdr_type = pci_read8(d, fn, PCI_HEADER_TYPE), cap = pci_read8(d, fn, PCI_CAP_PTR);
    u8 pin = pci_read8(d, fn, PCI_INT_PIN);
    pci_write32(d, fn, PCI_VENDOR, 0);
    pci_write16(d, fn, PCI_DEVICE, 0x1234);
    pci_write32(d, fn, PCI_REVISION, 0xffffffffu);
    pci_write8(d, fn, PCI_HEADER_TYPE, 0x81);
    pci_write32(d, fn, PCI_SUBSYS_VENDOR, 0);
    pci_write8(d, fn, PCI_CAP_PTR, 0x80);
    pci_write8(d, fn, PCI_INT_PIN, 4);
    pci_write16(d, fn, PCI_STATUS, 0xffff);
    CHECK(pci_read32(d, fn, PCI_VENDOR) == id && pci_read32(d, fn, PCI_REVISION) == cls, 101);
    CHECK(pci_read32(d, fn, PCI_SUBSYS_VENDOR) == sub && pci_read8(d, fn, PCI_HEADER_TYPE) == hdr_type, 101);
    CHECK(pci_read8(d, fn, PCI_CAP_PTR) == cap && pci_read8(d, fn, PCI_INT_PIN) == pin, 101);
    CHECK(pci_read16(d, fn, PCI_STATUS) & PCI_STATUS_CAPS, 101);
    /* Narrow CONFIG_ADDRESS writes are not CONFIG_ADDRESS (0xCFB as Linux's
     * probe writes it; 0xCF9 is a reset register on some chipsets). */
    u32 a = 0x80000000u | (u32)d << 11;
    outl(0xcf8, a);
    outb(0xcfb, 0x01);
    outw(0xcfa, 0x1234);
    CHECK(inl(0xcf8) == a, 101);
    CHECK(inl(0xcfc) == id, 101);
    /* Through ECAM: a 2-byte write across a dword (device ID high byte,
     * read-only, and the command register's low byte). */
    u64 ecam = rt_param_u64("ecam", 0);
    if (ecam) {
        u64 fa = ecam + ((u64)d << 15) + ((u64)fn << 12);
        u16 cmd = pci_read16(d, fn, PCI_COMMAND);
        mmio_write16(fa + 3, (u16)((cmd & 0xff) << 8));
        rt_printf("hostile: after the ECAM write: id 0x%x command 0x%x\n", mmio_read32(fa), mmio_read16(fa + 4));
        CHECK(mmio_read32(fa) == id && pci_read32(d, fn, PCI_VENDOR) == id, 101);
        CHECK((pci_read16(d, fn, PCI_COMMAND) & 6) == 6, 101);
    }
    /* Sizing the common configuration's BAR with decoding on, then back. */
    int i = common_bar(&dev);
    u16 reg = (u16)(PCI_BAR0 + 4 * i);
    u32 lo = pci_read32(d, fn, reg);
    pci_write32(d, fn, reg, 0xffffffffu);
    u32 mask = pci_read32(d, fn, reg);
    pci_write32(d, fn, reg, lo);
    rt_printf("hostile: BAR %d sizes as 0x%x\n", i, mask);
    CHECK((mask & 0xf) == (lo & 0xf) && (~(mask & ~0xfu) + 1) <= f->bar[i].size, 101);
    CHECK(vio_status(&dev) & VIRTIO_STATUS_DRIVER_OK, 101);
    read_sector0(&dev, &q, "s0_crc", 101);
}

int main(void)
{
    const char *c = rt_param("case");
    CHECK(c != NULL, 100);
    CHECK(rt_param_is("transport", "pci"), 100);
    CHECK(vio_find(VIRTIO_ID_BLOCK, 0, &dev), 100);
    hdr = vio_alloc(sizeof(*hdr), 16);
    status = vio_alloc(1, 1);
    buf = vio_alloc(4096, 4096);
    rt_printf("hostile: case %s\n", c);
#define IS(name) rt_param_is("case", name)
    if (IS("msix_oob"))
        msix_oob();
    else if (IS("notify_missing"))
        notify_missing();
    else if (IS("bar_ram"))
        bar_ram();
    else if (IS("bar_overlap"))
        bar_overlap();
    else if (IS("cfg_odd"))
        cfg_odd();
    else
        return 100;
    /* Recovery: reset, a fresh set-up, a good read. */
    vio_reset(&dev);
    setup(&dev, &q);
    read_sector0(&dev, &q, "s0_crc", 103);
    rt_puts("hostile: device recovered, sector 0 intact\n");
    rt_puts("HOSTILE OK\n");
    return 0;
}
