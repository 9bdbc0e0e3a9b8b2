/*
 * A small virtio 1.x driver for test guests: the virtio-mmio transport
 * (version 2 register layout), the virtio-pci modern transport with MSI-X,
 * and split virtqueues, written from the virtio 1.x specification
 * (sections 2, 4.1, 4.2).
 *
 * With transport=pci on the command line, devices are found on PCI bus 0
 * (pci.h) and driven through their capabilities; in irq mode every queue
 * and the configuration get an MSI-X vector of their own. Otherwise
 * devices are found from the `virtio_mmio.device=<size>@<addr>:<irq>`
 * entries on the kernel command line, which ember writes and QEMU's
 * microvm machine adds too.
 */
#ifndef EMBER_GUEST_VIRTIO_H
#define EMBER_GUEST_VIRTIO_H
#include "rt.h"

/* virtio-mmio registers (4.2.2). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

/* Device status bits (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* Feature bits. */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define BIT(n) (1ul << (n))

/* Descriptor flags (2.7.5). */
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct vring_used_elem {
    u32 id;
    u32 len;
};

/* A split virtqueue as the driver sees it. */
struct vq {
    int index;
    u16 size;
    volatile struct vring_desc *desc;
    volatile u16 *avail; /* flags, idx, ring[size], used_event */
    volatile u16 *used;  /* flags, idx, then elems; avail_event after */
    u16 avail_idx;       /* next avail ring slot (free-running) */
    u16 last_used;       /* used entries consumed (free-running) */
    bool event_idx;
    u64 notify;          /* virtio-pci: this queue's notification address */
};

/* virtio-pci common configuration (4.1.4.3). */
#define VPCI_DFSELECT 0x00
#define VPCI_DF 0x04
#define VPCI_GFSELECT 0x08
#define VPCI_GF 0x0c
#define VPCI_MSIX_CONFIG 0x10
#define VPCI_NUM_QUEUES 0x12
#define VPCI_STATUS 0x14
#define VPCI_CFG_GENERATION 0x15
#define VPCI_Q_SELECT 0x16
#define VPCI_Q_SIZE 0x18
#define VPCI_Q_MSIX 0x1a
#define VPCI_Q_ENABLE 0x1c
#define VPCI_Q_NOTIFY_OFF 0x1e
#define VPCI_Q_DESC 0x20
#define VPCI_Q_DRIVER 0x28
#define VPCI_Q_DEVICE 0x30
#define VPCI_NO_VECTOR 0xffff
/* virtio PCI capability types (4.1.4). */
#define VPCI_CAP_COMMON 1
#define VPCI_CAP_NOTIFY 2
#define VPCI_CAP_ISR 3
#define VPCI_CAP_DEVICE 4
#define VPCI_CAP_PCI_CFG 5

struct pci_func;

struct vdev {
    u64 base;
    u32 irq;
    u32 device_id;
    u64 features;       /* negotiated */
    bool irq_mode;      /* wait for interrupts instead of polling */
    volatile u32 irqs;  /* interrupts seen */
    u32 irqs_seen;      /* interrupts consumed by vq_wait */
    /* virtio-pci */
    bool pci;
    struct pci_func *func;
    u64 common, isr, devcfg, notify; /* structure addresses from the capabilities */
    u32 notify_mult;
    u8 pci_cfg_cap;          /* VIRTIO_PCI_CAP_PCI_CFG offset in config space */
    u8 msix_cap;             /* MSI-X capability offset (0: none) */
    u16 msix_n;              /* vectors in the table */
    u64 msix_table, msix_pba;
    volatile u32 vec_irqs[8]; /* interrupts per MSI-X entry */
};

/* One buffer of a request: guest-physical address, length, device-writable. */
struct vbuf {
    u64 addr;
    u32 len;
    bool write;
};

static inline u32 vio_read(const struct vdev *d, u32 reg) { return mmio_read32(d->base + reg); }
static inline void vio_write(const struct vdev *d, u32 reg, u32 v) { mmio_write32(d->base + reg, v); }

/* Finds the `nth` (0-based) device with `device_id`: on PCI bus 0 with
 * transport=pci (placing its BARs and reading its capabilities), else
 * among the command line's virtio_mmio.device= entries. Returns false if
 * there is none. */
bool vio_find(u32 device_id, int nth, struct vdev *d);
/* The virtio-pci part of vio_find. */
bool vpci_find(u32 device_id, int nth, struct vdev *d);
/* Device status, and writing it, on either transport. */
u8 vio_status(const struct vdev *d);
void vio_set_status(const struct vdev *d, u8 status);
/* Notifies queue `q` (the driver's kick). */
void vio_notify(const struct vdev *d, const struct vq *q);
/* virtio-pci: programs MSI-X entry `entry` of `d` to a fresh CPU vector on
 * this CPU and unmasks it (enabling MSI-X first). Returns the entry. */
u16 vpci_msix_vector(struct vdev *d, u16 entry);
/* Reset, ACKNOWLEDGE, DRIVER, negotiate `wanted` (VERSION_1 is required),
 * FEATURES_OK. Returns false (and prints why) if the device refuses. */
bool vio_negotiate(struct vdev *d, u64 wanted);
/* Sets up queue `idx` with `size` entries (0: the device maximum, capped at
 * 64) from a static pool. Returns false if the device does not accept it. */
bool vio_queue(struct vdev *d, struct vq *q, int idx, u16 size);
/* DRIVER_OK. In irq mode also routes the device's IOAPIC pin (MMIO). */
void vio_driver_ok(struct vdev *d);
void vio_reset(struct vdev *d);
/* Adds a chain of `n` buffers starting at descriptor 0 (one request in
 * flight at a time) and notifies. Returns the head descriptor. */
u16 vq_add(struct vdev *d, struct vq *q, const struct vbuf *bufs, int n);
/* Waits for the next used entry; false on timeout (polling mode). */
bool vq_wait(struct vdev *d, struct vq *q, struct vring_used_elem *out);
/* vq_add + vq_wait. Returns the used length, or -1 on timeout. */
i64 vq_request(struct vdev *d, struct vq *q, const struct vbuf *bufs, int n);
/* Bump allocator over a static pool (queue rings and request buffers). */
void *vio_alloc(size_t size, size_t align);
/* Config space access at any width. */
u8 vio_cfg8(const struct vdev *d, u32 off);
u16 vio_cfg16(const struct vdev *d, u32 off);
u32 vio_cfg32(const struct vdev *d, u32 off);
u64 vio_cfg64(const struct vdev *d, u32 off);

#endif
