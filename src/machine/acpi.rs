//! The ACPI tables, for kernels built with ACPI: RSDP, XSDT, a FADT in
//! hardware-reduced mode, the MADT (one local APIC per vCPU, the IOAPIC,
//! the LINT1 NMI), the DSDT (COM1 and the extra UARTs, the i8042's two ports, the CMOS clock,
//! the virtio-mmio devices, the PCI host bridge when there is one and the
//! `_S5` sleep state) and, with a PCI root, the MCFG.
//!
//! Built with rust-vmm's `acpi_tables` (its RSDP, XSDT, FADT and MCFG
//! builders, its AML builder for the DSDT, and its generic `Sdt` for the
//! MADT, whose builder in the crate has no interrupt source override,
//! NMI or x2APIC structures). The RSDP goes at [`ACPI_RSDP_START`], in the
//! range Linux scans, and the machine description also gives its address
//! in the zero page (`acpi_rsdp_addr`) and the PVH start info
//! (`rsdp_paddr`); the other tables follow from [`ACPI_TABLES_START`].
//!
//! What the guest does with them (docs/boot.md): `poweroff` writes the
//! `_S5` sleep type to the FADT's sleep control register
//! ([`ACPI_SLEEP_CONTROL_PORT`]), which ends the VM; the FADT's reset
//! register is the i8042's command port with value 0xfe, the same reset
//! `reboot=k` uses. Kernels without ACPI ignore all of this and read the
//! MP table.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootError;
use crate::layout::*;

/// The OEM ID in every table's header.
const OEM_ID: [u8; 6] = *b"EMBER ";
/// The OEM revision of every table.
const OEM_REVISION: u32 = 1;
/// The sleep type (SLP_TYP) the `_S5` object gives and the sleep control
/// register answers with a power-off.
pub(crate) const S5_SLEEP_TYPE: u8 = 5;

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`).
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT flag: the machine also has dual 8259 PICs (KVM's).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_ENABLED: u32 = 1;

/// Table revisions: MADT as of ACPI 6.3 (the FADT says 6.5, from the crate),
/// DSDT 2 (64-bit integers).
const MADT_REVISION: u8 = 5;
const DSDT_REVISION: u8 = 2;

/// A virtio-mmio transport as the DSDT describes it (`LNRO0005`, which
/// Linux's `virtio_mmio` driver matches through ACPI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MmioDevice {
    /// Guest-physical address of the register window.
    pub(crate) base: u64,
    /// Size of the register window.
    pub(crate) size: u64,
    /// Its interrupt (IOAPIC pin), edge-triggered, active high.
    pub(crate) gsi: u32,
}

/// A PCI root (host bridge for bus 0): its configuration space and the
/// windows its devices' BARs are placed in. Public (its fields are not) because the memory-map writers the fuzz
/// targets call take one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRoot {
    /// ECAM base of bus 0.
    pub(crate) ecam_base: u64,
    /// ECAM size (1 MiB per bus).
    pub(crate) ecam_size: u64,
    /// 32-bit BAR window: start and size.
    pub(crate) mmio32: (u64, u64),
    /// 64-bit BAR window: start and size.
    pub(crate) mmio64: (u64, u64),
}

impl PciRoot {
    /// The PCI root of ember's layout for a VM whose RAM ends at `ram_end`
    /// (the device manager's, when a device is on PCI).
    pub(crate) fn for_layout(ram_end: u64) -> Self {
        PciRoot {
            ecam_base: PCI_ECAM_START,
            ecam_size: PCI_ECAM_SIZE,
            mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            mmio64: (pci_mmio64_start(ram_end), PCI_MMIO64_SIZE),
        }
    }

    /// The last bus number the ECAM window covers.
    fn last_bus(&self) -> u8 {
        ((self.ecam_size >> 20).clamp(1, 256) - 1) as u8
    }
}

/// What the tables describe beyond the vCPUs and the fixed PC devices
/// (COM1, the i8042, the CMOS clock): derived from the device manager's
/// list of placed devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Devices {
    /// The virtio-mmio transports, in guest order.
    pub(crate) virtio_mmio: Vec<MmioDevice>,
    /// The PCI root, when the VM has one (then the DSDT has a host bridge
    /// and there is an MCFG).
    pub(crate) pci: Option<PciRoot>,
    /// The UARTs after COM1 (`VmConfig::extra_serials`), as (first port,
    /// GSI): described like COM1 so that a kernel without legacy ISA
    /// interrupts (no IRQ 3 or 4 of its own) still gets them through PNP.
    pub(crate) extra_uarts: Vec<(u64, u32)>,
}

/// Built tables: the RSDP for [`ACPI_RSDP_START`] and every other table
/// laid out from [`ACPI_TABLES_START`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tables {
    /// The RSDP's 36 bytes.
    pub(crate) rsdp: Vec<u8>,
    /// The other tables, back to back (each 8-byte aligned).
    pub(crate) tables: Vec<u8>,
}

/// Appends `table` to `area` (which starts at [`ACPI_TABLES_START`]) on an
/// 8-byte boundary and returns its guest address.
fn place(area: &mut Vec<u8>, table: &[u8]) -> u64 {
    area.resize(area.len().next_multiple_of(8), 0);
    let addr = ACPI_TABLES_START + area.len() as u64;
    area.extend_from_slice(table);
    addr
}

fn aml_bytes(item: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    item.to_aml_bytes(&mut v);
    v
}

/// An extended interrupt descriptor for GSI `gsi`: consumer,
/// edge-triggered, active high, exclusive (how ember raises every line:
/// an irqfd pulse).
fn edge_irq(gsi: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, gsi)
}

/// A 16-bit decoded I/O range of `len` ports at `port`.
fn io(port: u64, len: u64) -> aml::IO {
    aml::IO::new(port as u16, port as u16, 1, len as u8)
}

/// The DSDT's AML: every device under `\_SB`, then `\_S5`.
fn dsdt_aml(devices: &Devices) -> Vec<u8> {
    let mut sb: Vec<Vec<u8>> = Vec::new();

    let (com1_io, com1_irq) = (io(COM1_PORT, COM1_PORT_LEN), edge_irq(SERIAL_IRQ));
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    sb.push(aml_bytes(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )));

    for (i, &(port, gsi)) in devices.extra_uarts.iter().enumerate() {
        let (uart_io, uart_irq) = (io(port, COM1_PORT_LEN), edge_irq(gsi));
        let crs = aml::ResourceTemplate::new(vec![&uart_io, &uart_irq]);
        let uid = i as u32 + 1;
        sb.push(aml_bytes(&aml::Device::new(
            aml::Path::new(&format!("COM{}", i + 2)),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )));
    }

    // The i8042's keyboard port (data and command/status registers) and
    // its auxiliary port, each with its interrupt.
    let (kbd_data, kbd_cmd, kbd_irq) = (io(I8042_PORT, 1), io(I8042_COMMAND_PORT, 1), edge_irq(I8042_KBD_IRQ));
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    sb.push(aml_bytes(&aml::Device::new(
        "PS2K".into(),
        vec![&aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")), &aml::Name::new("_CRS".into(), &kbd_crs)],
    )));
    let aux_irq = edge_irq(I8042_AUX_IRQ);
    let aux_crs = aml::ResourceTemplate::new(vec![&aux_irq]);
    sb.push(aml_bytes(&aml::Device::new(
        "PS2M".into(),
        vec![&aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0F13")), &aml::Name::new("_CRS".into(), &aux_crs)],
    )));

    // The CMOS clock, without an interrupt (ember's raises none): Linux's
    // rtc_cmos then runs without alarms instead of asking for IRQ 8.
    let rtc_io = io(CMOS_PORT, CMOS_PORT_LEN);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    sb.push(aml_bytes(&aml::Device::new(
        "RTC_".into(),
        vec![&aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00")), &aml::Name::new("_CRS".into(), &rtc_crs)],
    )));

    for (i, d) in devices.virtio_mmio.iter().enumerate() {
        let mem = aml::Memory32Fixed::new(true, d.base as u32, d.size as u32);
        let irq = edge_irq(d.gsi);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let uid = i as u32;
        sb.push(aml_bytes(&aml::Device::new(
            aml::Path::new(&format!("VR{i:02X}")),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )));
    }

    if let Some(pci) = &devices.pci {
        let bus = AddressSpace::<u16>::new_bus_number(0, u16::from(pci.last_bus()));
        let cf8 = io(0xcf8, 8);
        let (m32, m64) = (pci.mmio32, pci.mmio64);
        let mem32 = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            m32.0 as u32,
            (m32.0 + m32.1 - 1) as u32,
            None,
        );
        let mem64 =
            AddressSpace::<u64>::new_memory(AddressSpaceCacheable::NotCacheable, true, m64.0, m64.0 + m64.1 - 1, None);
        let crs = aml::ResourceTemplate::new(vec![&bus, &cf8, &mem32, &mem64]);
        sb.push(aml_bytes(&aml::Device::new(
            "PCI0".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                &aml::Name::new("_UID".into(), &0u8),
                &aml::Name::new("_SEG".into(), &0u8),
                &aml::Name::new("_BBN".into(), &0u8),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )));
        // The ECAM again as a motherboard resource: once ACPI is up, Linux
        // accepts an MCFG region that a PNP0C02 device reserves (else it
        // notes "not reserved in ACPI motherboard resources" and falls
        // back to the e820 map's reservation).
        let ecam = aml::Memory32Fixed::new(true, pci.ecam_base as u32, pci.ecam_size as u32);
        let ecam_crs = aml::ResourceTemplate::new(vec![&ecam]);
        sb.push(aml_bytes(&aml::Device::new(
            "MBRD".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
                &aml::Name::new("_UID".into(), &0u8),
                &aml::Name::new("_CRS".into(), &ecam_crs),
            ],
        )));
    }

    let mut out = aml::Scope::raw("\\_SB_".into(), sb.concat());
    // \_S5: the soft-off sleep state, SLP_TYPa = SLP_TYPb = S5_SLEEP_TYPE.
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &aml::ZERO, &aml::ZERO]);
    out.extend(aml_bytes(&aml::Name::new("_S5_".into(), &s5)));
    out
}

/// The MADT: a local APIC per vCPU (APIC IDs `0..vcpus`, the first the
/// boot CPU), the IOAPIC (ID `vcpus`, as in the MP table, GSIs from 0),
/// and LINT1 of every local APIC as the NMI input. ISA IRQs reach the
/// IOAPIC pin of the same number (KVM's default routing), which is what
/// ACPI assumes without interrupt source overrides, so there are none.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, MADT_REVISION, OEM_ID, *b"EMBRAPIC", OEM_REVISION);
    t.write_u32(36, APIC_START as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    let mut entries = Vec::with_capacity(8 * vcpus as usize + 18);
    for id in 0..vcpus {
        entries.extend_from_slice(&[MADT_LOCAL_APIC, 8, id, id]);
        entries.extend_from_slice(&MADT_ENABLED.to_le_bytes());
    }
    entries.extend_from_slice(&[MADT_IO_APIC, 12, vcpus, 0]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entries.extend_from_slice(&0u32.to_le_bytes());
    // Processor UID 0xff: all of them; flags 0: as the bus says; LINT1.
    entries.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    t.append_slice(&entries);
    t.as_slice().to_vec()
}

/// The FADT: hardware-reduced ACPI (no SCI, PM timer or fixed-feature
/// buttons), the DSDT at `dsdt`, the sleep control/status registers for
/// `_S5`, the reset register (the i8042's command port, 0xfe), and the
/// i8042 present, no VGA.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, *b"EMBRFACP", OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    f.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    f.reset_reg = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, I8042_COMMAND_PORT);
    f.reset_value = 0xfe;
    f.sleep_control_reg = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, ACPI_SLEEP_STATUS_PORT);
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"EMBERVMM").into();
    aml_bytes(&f.finalize())
}

/// Builds the tables for `vcpus` vCPUs and `devices`.
pub(crate) fn build(vcpus: u8, devices: &Devices) -> Result<Tables, BootError> {
    let mut area = Vec::new();
    let mut dsdt = Sdt::new(*b"DSDT", 36, DSDT_REVISION, OEM_ID, *b"EMBRDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(devices));
    let dsdt_addr = place(&mut area, dsdt.as_slice());
    let fadt_addr = place(&mut area, &fadt(dsdt_addr));
    let madt_addr = place(&mut area, &madt(vcpus));
    let mut xsdt = XSDT::new(OEM_ID, *b"EMBRXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(pci) = &devices.pci {
        let mut mcfg = MCFG::new(OEM_ID, *b"EMBRMCFG", OEM_REVISION);
        mcfg.add_ecam(pci.ecam_base, 0, 0, pci.last_bus());
        xsdt.add_entry(place(&mut area, &aml_bytes(&mcfg)));
    }
    let xsdt_addr = place(&mut area, &aml_bytes(&xsdt));
    if ACPI_TABLES_START + area.len() as u64 > ACPI_END {
        return Err(BootError::AcpiTooBig(area.len()));
    }
    Ok(Tables { rsdp: aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr)), tables: area })
}

/// Writes the tables for `vcpus` vCPUs and `devices` into guest memory and
/// returns the RSDP's address.
pub(crate) fn write(mem: &GuestMemoryMmap, vcpus: u8, devices: &Devices) -> Result<u64, BootError> {
    let t = build(vcpus, devices)?;
    mem.write_slice(&t.rsdp, GuestAddress(ACPI_RSDP_START))?;
    mem.write_slice(&t.tables, GuestAddress(ACPI_TABLES_START))?;
    Ok(ACPI_RSDP_START)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// The table at guest address `addr` in `t`, checked: its length and
    /// checksum.
    pub(crate) fn table(t: &Tables, addr: u64) -> &[u8] {
        let off = (addr - ACPI_TABLES_START) as usize;
        let len = u32_at(&t.tables, off + 4) as usize;
        let tab = &t.tables[off..off + len];
        assert_eq!(sum(tab), 0, "checksum of {}", String::from_utf8_lossy(&tab[..4]));
        tab
    }

    /// Every table the XSDT lists, by signature, with the DSDT.
    pub(crate) fn tables_by_signature(t: &Tables) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&t.rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[..20]), 0);
        assert_eq!(sum(&t.rsdp), 0);
        assert_eq!(u32_at(&t.rsdp, 20), 36);
        let xsdt = table(t, u64_at(&t.rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut out = vec![(*b"XSDT", xsdt.to_vec())];
        for e in xsdt[36..].chunks(8) {
            let tab = table(t, u64::from_le_bytes(e.try_into().unwrap()));
            if &tab[..4] == b"FACP" {
                let dsdt = table(t, u64_at(tab, 140));
                out.push((*b"DSDT", dsdt.to_vec()));
            }
            out.push((tab[..4].try_into().unwrap(), tab.to_vec()));
        }
        out
    }

    fn find<'a>(all: &'a [([u8; 4], Vec<u8>)], sig: &[u8; 4]) -> Option<&'a [u8]> {
        all.iter().find(|(s, _)| s == sig).map(|(_, t)| t.as_slice())
    }

    fn devices(n: usize, pci: bool) -> Devices {
        Devices {
            virtio_mmio: (0..n)
                .map(|i| {
                    let (base, gsi) = virtio_slot(i);
                    MmioDevice { base, size: 0x1000, gsi }
                })
                .collect(),
            pci: pci.then(|| PciRoot::for_layout(256 << 20)),
            extra_uarts: Vec::new(),
        }
    }

    /// The MADT's entries as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2 && off + len <= madt.len());
            out.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, madt.len());
        out
    }

    #[test]
    fn checksums_lengths_and_the_table_list() {
        for (n, pci) in [(0, false), (3, false), (max_virtio_devices(), true)] {
            let t = build(4, &devices(n, pci)).unwrap();
            let all = tables_by_signature(&t);
            let sigs: Vec<&[u8]> = all.iter().map(|(s, _)| &s[..]).collect();
            let mut want: Vec<&[u8]> = vec![b"XSDT", b"DSDT", b"FACP", b"APIC"];
            if pci {
                want.push(b"MCFG");
            }
            assert_eq!(sigs, want);
            assert!(t.tables.len() < 8192, "{} bytes", t.tables.len());
            // Written where the guest looks.
            let mem = crate::memory::test_memory(2 << 20);
            assert_eq!(write(&mem, 4, &devices(n, pci)).unwrap(), ACPI_RSDP_START);
            let mut rsdp = [0u8; 36];
            mem.read_slice(&mut rsdp, GuestAddress(ACPI_RSDP_START)).unwrap();
            assert_eq!(rsdp.to_vec(), t.rsdp);
        }
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu_the_ioapic_and_the_nmi() {
        for vcpus in [1u8, 2, 4, 254] {
            let t = build(vcpus, &Devices::default()).unwrap();
            let all = tables_by_signature(&t);
            let madt = find(&all, b"APIC").unwrap();
            assert_eq!(madt[8], MADT_REVISION);
            assert_eq!(u32_at(madt, 36), 0xfee0_0000);
            assert_eq!(u32_at(madt, 40), MADT_PCAT_COMPAT);
            let e = madt_entries(madt);
            let lapics: Vec<_> = e.iter().filter(|(k, _)| *k == MADT_LOCAL_APIC).collect();
            assert_eq!(lapics.len(), vcpus as usize);
            for (i, (_, b)) in lapics.iter().enumerate() {
                assert_eq!((b[2], b[3], u32_at(b, 4)), (i as u8, i as u8, MADT_ENABLED));
            }
            let ioapics: Vec<_> = e.iter().filter(|(k, _)| *k == MADT_IO_APIC).collect();
            assert_eq!(ioapics.len(), 1);
            let io = &ioapics[0].1;
            assert_eq!((io[2], u32_at(io, 4), u32_at(io, 8)), (vcpus, 0xfec0_0000, 0));
            let nmi: Vec<_> = e.iter().filter(|(k, _)| *k == MADT_LOCAL_APIC_NMI).collect();
            assert_eq!(nmi.len(), 1);
            assert_eq!(nmi[0].1, [4, 6, 0xff, 0, 0, 1]);
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = build(1, &Devices::default()).unwrap();
        let all = tables_by_signature(&t);
        let f = find(&all, b"FACP").unwrap();
        assert_eq!(f.len(), 276);
        assert_eq!((f[8], f[131]), (6, 5), "FADT 6.5");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), IAPC_8042 | IAPC_VGA_NOT_PRESENT);
        // No SCI, PM timer or PM1 blocks.
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 0);
        assert_eq!(u32_at(f, 76), 0);
        // Reset register: system I/O, 8 bits, the i8042's command port; 0xfe.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!((u64_at(f, 120), f[128]), (0x64, 0xfe));
        // Sleep control and status registers: system I/O ports.
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 248), ACPI_SLEEP_CONTROL_PORT);
        assert_eq!(&f[256..260], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 260), ACPI_SLEEP_STATUS_PORT);
        // The DSDT through X_DSDT.
        let dsdt = u64_at(f, 140);
        assert_eq!(&table(&t, dsdt)[..4], b"DSDT");
    }

    /// Whether `needle` occurs in `hay`.
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_describes_each_virtio_device_and_the_pc_devices() {
        let t = build(1, &devices(2, false)).unwrap();
        let all = tables_by_signature(&t);
        let dsdt = find(&all, b"DSDT").unwrap();
        let aml = &dsdt[36..];
        // Each transport: a device named VRnn with _HID "LNRO0005", its
        // window as a Memory32Fixed descriptor and its GSI as an extended
        // interrupt descriptor (consumer, edge, active high).
        for (i, (base, gsi)) in [(0xd000_0000u32, 5u32), (0xd000_1000, 6)].into_iter().enumerate() {
            assert!(contains(aml, format!("VR{i:02X}").as_bytes()));
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&base.to_le_bytes());
            mem.extend_from_slice(&0x1000u32.to_le_bytes());
            assert!(contains(aml, &mem), "memory descriptor of device {i}");
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend_from_slice(&gsi.to_le_bytes());
            assert!(contains(aml, &irq), "interrupt of device {i}");
        }
        assert!(!contains(aml, b"VR02"));
        assert_eq!(aml.windows(9).filter(|w| w == b"LNRO0005\0").count(), 2);
        // COM1: I/O 0x3f8, 8 ports, IRQ 4.
        assert!(contains(aml, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
        assert!(contains(aml, &[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]));
        // The i8042: data and command ports, IRQ 1 and 12.
        assert!(contains(aml, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]));
        assert!(contains(aml, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]));
        assert!(contains(aml, &[0x89, 6, 0, 0x03, 1, 1, 0, 0, 0]));
        assert!(contains(aml, &[0x89, 6, 0, 0x03, 1, 12, 0, 0, 0]));
        // EISA IDs: PNP0501, PNP0303, PNP0F13, PNP0B00 (compressed).
        for id in ["PNP0501", "PNP0303", "PNP0F13", "PNP0B00"] {
            assert!(contains(aml, &aml_bytes(&aml::EISAName::new(id))), "{id}");
        }
        // \_S5 = Package { 5, 5, 0, 0 }.
        assert!(contains(aml, &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 4, 0x0a, 5, 0x0a, 5, 0, 0]));
        // No PCI without a PCI root.
        assert!(!contains(aml, b"PCI0") && !contains(aml, b"MBRD"));
        assert!(find(&all, b"MCFG").is_none());
        assert!(!contains(aml, b"COM2"));
    }

    #[test]
    fn dsdt_describes_the_extra_uarts() {
        let mut d = devices(0, false);
        d.extra_uarts = vec![(0x2f8, 3), (0x3e8, 4)];
        let all = tables_by_signature(&build(1, &d).unwrap());
        let aml = &find(&all, b"DSDT").unwrap()[36..];
        for name in [&b"COM1"[..], b"COM2", b"COM3"] {
            assert!(contains(aml, name), "{name:?}");
        }
        assert!(!contains(aml, b"COM4"));
        assert!(contains(aml, &[0x47, 1, 0xf8, 2, 0xf8, 2, 1, 8]), "COM2's ports");
        assert!(contains(aml, &[0x89, 6, 0, 0x03, 1, 3, 0, 0, 0]), "COM2's interrupt");
        assert!(contains(aml, &[0x47, 1, 0xe8, 3, 0xe8, 3, 1, 8]), "COM3's ports");
        let hid = aml_bytes(&aml::EISAName::new("PNP0501"));
        assert_eq!(aml.windows(hid.len()).filter(|w| *w == &hid[..]).count(), 3);
    }

    #[test]
    fn pci_root_gives_a_host_bridge_and_an_mcfg() {
        let t = build(2, &devices(1, true)).unwrap();
        let all = tables_by_signature(&t);
        let aml = &find(&all, b"DSDT").unwrap()[36..];
        assert!(contains(aml, b"PCI0"));
        assert!(contains(aml, &aml_bytes(&aml::EISAName::new("PNP0A08"))));
        assert!(contains(aml, &aml_bytes(&aml::EISAName::new("PNP0A03"))));
        // Bus 0..=0, the 0xcf8 configuration ports, the 32-bit window
        // 0xc0000000..=0xcfffffff and the 64-bit one from 4 GiB, 64 GiB.
        assert!(contains(aml, &[0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
        assert!(contains(aml, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        let mut m32 = vec![0, 0, 0, 0];
        m32.extend_from_slice(&0xc000_0000u32.to_le_bytes());
        m32.extend_from_slice(&0xcfff_ffffu32.to_le_bytes());
        m32.extend_from_slice(&[0, 0, 0, 0]);
        m32.extend_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(contains(aml, &m32));
        let mut m64 = (4u64 << 30).to_le_bytes().to_vec();
        m64.extend_from_slice(&((68u64 << 30) - 1).to_le_bytes());
        assert!(contains(aml, &m64));
        // The ECAM as a PNP0C02 motherboard resource: Memory32Fixed,
        // read-write, 0xe0000000, 1 MiB.
        assert!(contains(aml, &aml_bytes(&aml::EISAName::new("PNP0C02"))));
        assert!(contains(aml, &[0x86, 9, 0, 1, 0, 0, 0, 0xe0, 0, 0, 0x10, 0]));
        let mcfg = find(&all, b"MCFG").unwrap();
        assert_eq!(mcfg.len(), 36 + 8 + 16);
        assert_eq!(u64_at(mcfg, 44), 0xe000_0000);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, buses 0..=0");
    }

    #[test]
    fn pci_root_64bit_window_follows_ram() {
        let p = PciRoot::for_layout(6 << 30);
        assert_eq!(p.mmio64, (6 << 30, 64 << 30));
        assert_eq!(p.last_bus(), 0);
    }
}
