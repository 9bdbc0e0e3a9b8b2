/*
 * PCI for test guests, written from the PCI Local Bus 3.0 specification:
 * configuration space through the legacy mechanism (CONFIG_ADDRESS at port
 * 0xCF8, CONFIG_DATA at 0xCFC), bus 0 enumeration with BAR sizing, BAR
 * placement in a window of the guest's choosing, and capability walking.
 *
 * The window comes from the command line: pci_mem=ADDR (default
 * 0xc0000000, 256 MiB) for 32-bit BARs, and pci_mem64=ADDR (optional) for
 * 64-bit BARs, which then lie above 4 GiB (mapped with rt_map_high).
 * Placement avoids every BAR other functions have now.
 */
#ifndef EMBER_GUEST_PCI_H
#define EMBER_GUEST_PCI_H
#include "rt.h"

#define PCI_VENDOR 0x00
#define PCI_DEVICE 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_CLASS 0x09
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_SUBSYS_VENDOR 0x2c
#define PCI_SUBSYS_ID 0x2e
#define PCI_CAP_PTR 0x34
#define PCI_INT_PIN 0x3d
#define PCI_CMD_MEM 0x2
#define PCI_CMD_MASTER 0x4
#define PCI_STATUS_CAPS 0x10
#define PCI_CAP_MSIX 0x11
#define PCI_CAP_VENDOR 0x09

struct pci_bar {
    u64 addr;
    u64 size; /* 0: not implemented (or an I/O BAR) */
    bool mem64;
};

struct pci_func {
    u8 dev, fn;
    u16 vendor, device;
    u32 class_code;
    struct pci_bar bar[6];
};

u32 pci_read32(u8 dev, u8 fn, u16 reg);
u16 pci_read16(u8 dev, u8 fn, u16 reg);
u8 pci_read8(u8 dev, u8 fn, u16 reg);
void pci_write32(u8 dev, u8 fn, u16 reg, u32 v);
void pci_write16(u8 dev, u8 fn, u16 reg, u16 v);
void pci_write8(u8 dev, u8 fn, u16 reg, u8 v);

/* Enumerates bus 0 (once; later calls return the same list), sizing every
 * memory BAR with decoding off. Returns the number of functions. */
int pci_scan(struct pci_func **out);
/* Programs memory BAR `i` of `f` to `addr` (decoding left as it is). */
void pci_set_bar(struct pci_func *f, int i, u64 addr);
/* Places every memory BAR of `f` in the window, away from every other
 * function's BARs, then turns on memory decoding and bus mastering.
 * Prints the placement. False if the window is full. */
bool pci_place_bars(struct pci_func *f);
/* The offset of the first capability `id` after offset `after` (0: from
 * the start of the list), or 0. */
u8 pci_find_cap(const struct pci_func *f, u8 id, u8 after);
#endif
