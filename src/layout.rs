//! The machine ember builds: every guest-physical address, I/O port and
//! interrupt line, in one place at the bottom of the module graph (it
//! imports nothing from the crate).
//!
//! `docs/boot.md` draws this map and lists the ports; a unit test here
//! checks the two agree.
//!
//! ```text
//! 0x0000_0000 ..0x0000_0500   real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500 ..0x0000_0530   boot GDT (6 entries)
//! 0x0000_0530 ..0x0000_0538   boot IDT (empty, limit 0)
//! 0x0000_6000 ..0x0000_7000   PVH hvm_start_info, module list and memory map
//! 0x0000_7000 ..0x0000_8000   Linux zero page (struct boot_params)
//! 0x0000_8000 ..0x0000_9000   boot stack (RSP starts at 0x8ff0)
//! 0x0000_9000 ..0x0000_f000   identity page tables: PML4, PDPT, 4 PDs (4 GiB, 2 MiB pages)
//! 0x0002_0000 ..0x0003_0000   kernel command line (NUL-terminated)
//! 0x0009_fc00 ..0x000a_0000   MP table (in the EBDA, where Linux scans for it)
//! 0x000e_0000 ..0x000f_0000   ACPI: RSDP at the start, then the tables
//! 0x000f_0000 ..0x0010_0000   MP table with more than 37 vCPUs (BIOS area)
//! 0x0010_0000 ..              kernel, then the initrd at the top of low RAM
//! 0xc000_0000 ..0x1_0000_0000 32-bit MMIO hole (no RAM):
//!     0xc000_0000 ..0xd000_0000   PCI 32-bit BAR window (the PCI root every VM has)
//!     0xd000_0000 ..          virtio-mmio devices, 4 KiB apart, IRQ 5 upwards
//!     0xe000_0000 ..0xe010_0000   PCI ECAM for bus 0 (reserved in the e820 map)
//!     0xfec0_0000             IOAPIC (in-kernel)
//!     0xfee0_0000             local APICs (in-kernel)
//!     0xfffb_c000             EPT identity map page (KVM)
//!     0xfffb_d000 ..+3 pages  TSS (KVM)
//! 0x1_0000_0000 ..            RAM beyond 3 GiB continues here
//! max(4 GiB, end of RAM) rounded up to 1 GiB: the PCI 64-bit BAR window (64 GiB)
//! ```

use ember_devices::pci::bus::{CONFIG_IO_LEN, CONFIG_IO_PORT, DEVICES_PER_BUS, ECAM_BUS0_SIZE};
use ember_devices::virtio::mmio::MMIO_SIZE;

// ---- Low memory: boot structures -------------------------------------

/// Where the boot GDT is written.
pub const GDT_START: u64 = 0x500;
/// Where the (empty) boot IDT lives.
pub const IDT_START: u64 = 0x530;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Most PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the identity map.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories (2 MiB pages) of the identity map.
pub const PDE_START: u64 = 0xb000;
/// How much the boot identity map covers: the first 4 GiB.
pub const IDENTITY_MAP_SIZE: u64 = 4 << 30;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Room reserved for the command line, including its NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the EBDA, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional memory (start of the VGA/ROM hole).
pub const LOW_RAM_END: u64 = 0xa0000;
/// The 64 KiB BIOS area, where Linux also scans for the MP table: used
/// when the table does not fit in the EBDA (more than 37 vCPUs).
pub const BIOS_AREA_START: u64 = 0xf0000;
/// Size of the BIOS area.
pub const BIOS_AREA_SIZE: u64 = 0x10000;
/// The ACPI RSDP, at the start of the range Linux scans for it
/// (0xe0000..0x100000) and also given in the zero page and PVH start info.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// The other ACPI tables (XSDT, FADT, MADT, DSDT, MCFG), one after another.
pub const ACPI_TABLES_START: u64 = 0xe_0040;
/// End of the ACPI area (the MP table's BIOS-area place follows).
pub const ACPI_END: u64 = BIOS_AREA_START;
/// Start of high memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
// ---- RAM and the 32-bit MMIO hole -------------------------------------

/// Start of the 32-bit MMIO hole; guest RAM stops here and resumes at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
/// 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
// ---- Inside the MMIO hole ----------------------------------------------

/// The PCI root's 32-bit BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit BAR window (up to 0xcfff_ffff).
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
/// PCI Express enhanced configuration space (ECAM) of bus 0, reserved in
/// the e820 map.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// Size of the ECAM window: one bus (32 devices, 8 functions, 4 KiB each).
pub const PCI_ECAM_SIZE: u64 = ECAM_BUS0_SIZE;
/// Size of the PCI root's 64-bit BAR window ([`pci_mmio64_start`]).
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// First virtio-mmio device. Each gets one transport window of
/// [`MMIO_SIZE`] (the transport's property, from ember-devices).
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IRQ (IOAPIC pin / GSI) of the first virtio-mmio device.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IRQ usable for virtio-mmio devices (the IOAPIC has 24 pins).
pub const VIRTIO_IRQ_LAST: u32 = IOAPIC_PINS - 1;
/// IOAPIC base (served in the kernel).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base (served in the kernel).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's EPT identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's three-page TSS area (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_START: u64 = 0xfffb_d000;

/// Start of the PCI 64-bit BAR window for a VM whose RAM ends at
/// `ram_end`: max(4 GiB, `ram_end`) rounded up to 1 GiB.
pub const fn pci_mmio64_start(ram_end: u64) -> u64 {
    let base = if ram_end > FIRST_ADDR_PAST_32BITS { ram_end } else { FIRST_ADDR_PAST_32BITS };
    base.next_multiple_of(1 << 30)
}

/// How many virtio-mmio devices fit: one IRQ each from
/// [`VIRTIO_IRQ_BASE`] to [`VIRTIO_IRQ_LAST`].
pub const fn max_virtio_devices() -> usize {
    (VIRTIO_IRQ_LAST - VIRTIO_IRQ_BASE + 1) as usize
}

/// How many PCI devices fit: device numbers 1 to 31 of bus 0 (the host
/// bridge is 0).
pub const fn max_pci_devices() -> usize {
    DEVICES_PER_BUS - 1
}

/// Address and IRQ of virtio-mmio device number `index`.
pub const fn virtio_slot(index: usize) -> (u64, u32) {
    (VIRTIO_MMIO_START + index as u64 * MMIO_SIZE, VIRTIO_IRQ_BASE + index as u32)
}

// ---- Interrupt routing ---------------------------------------------------

/// Pins of the in-kernel IOAPIC; GSI *n* below this is IOAPIC pin *n*
/// (and, below 16, also PIC input *n*).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI of the MSI routes (one per MSI-X vector of the PCI devices),
/// right above the IOAPIC pins.
pub const MSI_GSI_BASE: u32 = IOAPIC_PINS;
/// One past the last GSI KVM routes (`KVM_MAX_IRQ_ROUTES`).
pub const GSI_END: u32 = 4096;

// ---- I/O ports and legacy interrupt lines --------------------------------

/// COM1, an 8250 UART: eight registers from here.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of COM1 registers.
pub const COM1_PORT_LEN: u64 = 8;
/// IRQ (IOAPIC pin) of the COM1 UART.
pub const SERIAL_IRQ: u32 = 4;
/// The UARTs after COM1 that a VM may have (`VmConfig::extra_serials`),
/// as (first port, IRQ), in Linux's ttyS1, ttyS2, ttyS3 order: the PC's
/// COM2, COM3 and COM4. COM3 shares IRQ 4 with COM1 and COM4 IRQ 3 with
/// COM2, as on a PC; Linux's 8250 driver serves ports sharing a line.
pub const EXTRA_COM_PORTS: [(u64, u32); 3] = [(0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];
/// The i8042 controller: data at 0x60, command/status at 0x64 (its reset
/// command ends the VM).
pub const I8042_PORT: u64 = 0x60;
/// Ports from [`I8042_PORT`] the i8042 answers (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;
/// The i8042's command/status port (also the ACPI reset register: a write
/// of 0xfe resets the machine).
pub const I8042_COMMAND_PORT: u64 = I8042_PORT + 4;
/// IRQ of the i8042's keyboard port.
pub const I8042_KBD_IRQ: u32 = 1;
/// IRQ of the i8042's auxiliary (mouse) port.
pub const I8042_AUX_IRQ: u32 = 12;
/// The ACPI sleep control register (FADT `SLEEP_CONTROL_REG`): S5 written
/// here powers the machine off.
pub const ACPI_SLEEP_CONTROL_PORT: u64 = 0x600;
/// The ACPI sleep status register (FADT `SLEEP_STATUS_REG`).
pub const ACPI_SLEEP_STATUS_PORT: u64 = 0x601;
/// The PCI configuration mechanism #1: `CONFIG_ADDRESS` at 0xcf8,
/// `CONFIG_DATA` at 0xcfc (the PCI root's).
pub const PCI_CONFIG_PORT: u64 = CONFIG_IO_PORT;
/// Ports from [`PCI_CONFIG_PORT`] (0xcf8..=0xcff).
pub const PCI_CONFIG_PORT_LEN: u64 = CONFIG_IO_LEN;
/// The CMOS RTC: index at 0x70, data at 0x71.
pub const CMOS_PORT: u64 = 0x70;
/// Ports of the CMOS RTC.
pub const CMOS_PORT_LEN: u64 = 2;
/// The debug-exit device (`VmConfig::debug_exit`): a guest's `outb N` here ends the
/// VM with status N.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// Ports the debug-exit device answers (0xf4..=0xf7).
pub const DEBUG_EXIT_PORT_LEN: u64 = 4;
/// Test-only (feature `seccomp-probe`): a write of 0x5e here makes the vCPU
/// thread call sysinfo(2), outside the seccomp allow-list.
#[cfg(feature = "seccomp-probe")]
pub const SECCOMP_PROBE_PORT: u64 = 0x5ec;

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/boot.md's memory-map table must agree with these constants.
    #[test]
    fn docs_table_matches_constants() {
        let doc = include_str!("../docs/boot.md");
        let consts: &[(&str, u64)] = &[
            ("GDT_START", GDT_START),
            ("IDT_START", IDT_START),
            ("PVH_INFO_START", PVH_INFO_START),
            ("PVH_MODLIST_START", PVH_MODLIST_START),
            ("PVH_MEMMAP_START", PVH_MEMMAP_START),
            ("ZERO_PAGE_START", ZERO_PAGE_START),
            ("BOOT_STACK_POINTER", BOOT_STACK_POINTER),
            ("PML4_START", PML4_START),
            ("PDPTE_START", PDPTE_START),
            ("PDE_START", PDE_START),
            ("CMDLINE_START", CMDLINE_START),
            ("EBDA_START", EBDA_START),
            ("BIOS_AREA_START", BIOS_AREA_START),
            ("ACPI_RSDP_START", ACPI_RSDP_START),
            ("ACPI_TABLES_START", ACPI_TABLES_START),
            ("LOW_RAM_END", LOW_RAM_END),
            ("HIMEM_START", HIMEM_START),
            ("MMIO32_START", MMIO32_START),
            ("PCI_MMIO32_START", PCI_MMIO32_START),
            ("VIRTIO_MMIO_START", VIRTIO_MMIO_START),
            ("PCI_ECAM_START", PCI_ECAM_START),
            ("IOAPIC_START", IOAPIC_START),
            ("APIC_START", APIC_START),
            ("KVM_IDENTITY_MAP_START", KVM_IDENTITY_MAP_START),
            ("KVM_TSS_START", KVM_TSS_START),
            ("FIRST_ADDR_PAST_32BITS", FIRST_ADDR_PAST_32BITS),
            ("COM1_PORT", COM1_PORT),
            ("COM2_PORT", EXTRA_COM_PORTS[0].0),
            ("COM3_PORT", EXTRA_COM_PORTS[1].0),
            ("COM4_PORT", EXTRA_COM_PORTS[2].0),
            ("I8042_PORT", I8042_PORT),
            ("CMOS_PORT", CMOS_PORT),
            ("PCI_CONFIG_PORT", PCI_CONFIG_PORT),
            ("DEBUG_EXIT_PORT", DEBUG_EXIT_PORT),
            ("ACPI_SLEEP_CONTROL_PORT", ACPI_SLEEP_CONTROL_PORT),
        ];
        for (name, value) in consts {
            let row = doc
                .lines()
                .find(|l| l.starts_with("| `0x") && l.contains(&format!("`{name}`")))
                .unwrap_or_else(|| panic!("docs/boot.md has no row for {name}"));
            let addr = row.split('`').nth(1).unwrap();
            let parsed = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
            assert_eq!(parsed, *value, "docs/boot.md says {name} = {addr}, layout.rs says {value:#x}");
        }
    }

    // The low-memory regions do not overlap (checked at compile time).
    const _: () = assert!(GDT_START + 48 <= IDT_START);
    const _: () = assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= ZERO_PAGE_START);
    const _: () = assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    const _: () = assert!(PDE_START + 4 * 4096 <= CMDLINE_START);
    const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    const _: () = assert!(LOW_RAM_END <= ACPI_RSDP_START && ACPI_RSDP_START + 36 <= ACPI_TABLES_START);
    const _: () = assert!(ACPI_TABLES_START < ACPI_END && ACPI_END <= BIOS_AREA_START);
    // The PCI windows sit in the MMIO hole, clear of the virtio-mmio devices
    // and the IOAPIC; MSI routes start above the IOAPIC pins.
    const _: () = assert!(PCI_MMIO32_START >= MMIO32_START && PCI_MMIO32_START + PCI_MMIO32_SIZE <= VIRTIO_MMIO_START);
    const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_START);
    const _: () = assert!(VIRTIO_IRQ_LAST < IOAPIC_PINS && MSI_GSI_BASE >= IOAPIC_PINS);

    #[test]
    fn virtio_window_fits_below_the_ioapic() {
        let (last, irq) = virtio_slot(max_virtio_devices() - 1);
        assert!(last + MMIO_SIZE <= IOAPIC_START);
        assert!(last + MMIO_SIZE <= PCI_ECAM_START);
        assert_eq!(irq, VIRTIO_IRQ_LAST);
    }

    #[test]
    fn pci_64bit_window_starts_past_ram_on_a_gib() {
        assert_eq!(pci_mmio64_start(256 << 20), 4 << 30);
        assert_eq!(pci_mmio64_start(4 << 30), 4 << 30);
        assert_eq!(pci_mmio64_start((5 << 30) + 1), 6 << 30);
        assert_eq!(pci_mmio64_start(6 << 30), 6 << 30);
    }
}
