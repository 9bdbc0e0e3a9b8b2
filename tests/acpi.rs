//! ember's ACPI tables as a guest finds them: dumped from guest memory
//! after `Vm::new` and disassembled with iasl (Debian's acpica-tools), and
//! walked by the `acpi` test guest under ember (RSDP through the zero page,
//! the PVH start info and the BIOS-area scan; every checksum and length;
//! a local APIC per vCPU, the IOAPIC, the hardware-reduced FADT, the DSDT).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use ember::{DiskConfig, SerialConfig, VirtioTransport, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const T: Duration = Duration::from_secs(60);
const RSDP: u64 = 0xe0000;

/// Whether iasl can run. Without it the test prints a skip line, unless
/// EMBER_REQUIRE_IASL=1 (set by .ci/run), where it fails.
fn iasl_available() -> bool {
    match Command::new("iasl").arg("-v").output() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("EMBER_REQUIRE_IASL").as_deref() == Ok("1") {
                panic!("EMBER_REQUIRE_IASL=1 but iasl cannot run ({e}): scripts/setup installs acpica-tools");
            }
            eprintln!("skipped: iasl not installed ({e}; apt-get install acpica-tools)");
            false
        }
    }
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// A table at `addr`, with its length and checksum checked.
fn table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let head = read(mem, addr, 36);
    let len = u32::from_le_bytes(head[4..8].try_into().unwrap()) as usize;
    assert!((36..0x10000).contains(&len), "table at {addr:#x}: length {len}");
    let t = read(mem, addr, len);
    assert_eq!(sum(&t), 0, "checksum of {} at {addr:#x}", String::from_utf8_lossy(&t[..4]));
    t
}

/// Every table reachable from the RSDP: (signature, bytes).
fn dump(mem: &GuestMemoryMmap) -> Vec<(String, Vec<u8>)> {
    let rsdp = read(mem, RSDP, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!((sum(&rsdp[..20]), sum(&rsdp), rsdp[15]), (0, 0, 2));
    let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
    let xsdt = table(mem, xsdt_addr);
    let mut out = vec![("XSDT".to_string(), xsdt.clone())];
    for e in xsdt[36..].chunks(8) {
        let t = table(mem, u64::from_le_bytes(e.try_into().unwrap()));
        if &t[..4] == b"FACP" {
            let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
            out.push(("DSDT".to_string(), table(mem, dsdt)));
        }
        out.push((String::from_utf8_lossy(&t[..4]).into_owned(), t));
    }
    out
}

/// Disassembles `table` with iasl in `dir`; returns the .dsl text, failing
/// on any error or warning iasl reports.
fn disassemble(dir: &Path, name: &str, table: &[u8]) -> String {
    let bin = dir.join(format!("{name}.dat"));
    std::fs::write(&bin, table).unwrap();
    let o = Command::new("iasl").arg("-d").arg(&bin).current_dir(dir).output().expect("run iasl");
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "iasl -d {name}:\n{log}");
    for bad in ["Error", "Warning", "Invalid", "failure"] {
        assert!(!log.contains(bad), "iasl -d {name} reports {bad:?}:\n{log}");
    }
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
    for bad in ["**** Unknown", "Invalid", "Error"] {
        assert!(!dsl.contains(bad), "{name}.dsl has {bad:?}:\n{dsl}");
    }
    dsl
}

#[test]
fn tables_in_guest_memory_disassemble_cleanly() {
    if !kvm_available() || !iasl_available() {
        return;
    }
    let dir = scratch("acpi-iasl");
    let mut config = VmConfig::new(guest("hello"));
    config.memory = 64 << 20;
    config.vcpus = 4;
    config.serial = SerialConfig::None;
    // Two disks on virtio-mmio (in the DSDT each), one on PCI (the DSDT's
    // host bridge and the MCFG).
    for (i, transport) in [VirtioTransport::Mmio, VirtioTransport::Mmio, VirtioTransport::Pci].into_iter().enumerate() {
        let img = dir.join(format!("disk{i}.img"));
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        config.disks.push(DiskConfig { transport, ..DiskConfig::new(img) });
    }
    let vm = Vm::new(config).expect("build VM");
    assert!(!vm.cmdline().contains("pci=off") && vm.cmdline().contains("pci=noearly"), "{}", vm.cmdline());
    let tables = dump(vm.memory());
    let sigs: Vec<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["XSDT", "DSDT", "FACP", "APIC", "MCFG"]);
    for (sig, t) in &tables {
        let dsl = disassemble(&dir, sig, t);
        match sig.as_str() {
            "DSDT" => {
                for want in [
                    "Device (COM1)",
                    "Device (PS2K)",
                    "Device (PS2M)",
                    "Device (RTC)",
                    "Device (VR00)",
                    "Device (VR01)",
                    "Name (_S5,",
                    "EisaId (\"PNP0501\")",
                    "EisaId (\"PNP0303\")",
                    "0xD0001000",
                    "Device (PCI0)",
                    "Device (MBRD)",
                    "EisaId (\"PNP0C02\")",
                    "Memory32Fixed (ReadWrite,\n                    0xE0000000,         // Address Base\n                    0x00100000,         // Address Length",
                    "EisaId (\"PNP0A08\")",
                    "EisaId (\"PNP0A03\")",
                    // _CRS: the 32-bit window and the 64-bit one (4 GiB
                    // to 68 GiB for 64 MiB of RAM).
                    "0xC0000000,         // Range Minimum",
                    "0xCFFFFFFF,         // Range Maximum",
                    "0x0000000100000000, // Range Minimum",
                    "0x00000010FFFFFFFF, // Range Maximum",
                ] {
                    assert!(dsl.contains(want), "DSDT has no {want:?}:\n{dsl}");
                }
                assert_eq!(dsl.matches("\"LNRO0005\"").count(), 2, "{dsl}");
                assert!(!dsl.contains("VR02"), "{dsl}");
            }
            "MCFG" => {
                for want in ["Base Address : 00000000E0000000", "Start Bus Number : 00", "End Bus Number : 00"] {
                    assert!(dsl.contains(want), "MCFG has no {want:?}:\n{dsl}");
                }
            }
            "APIC" => {
                assert_eq!(dsl.matches("Subtable Type : 00 [Processor Local APIC]").count(), 4, "{dsl}");
                assert_eq!(dsl.matches("Subtable Type : 01 [I/O APIC]").count(), 1, "{dsl}");
            }
            "FACP" => {
                let hw_reduced = dsl.lines().find(|l| l.contains("Hardware Reduced")).unwrap_or_default();
                assert!(hw_reduced.trim_end().ends_with(": 1"), "{dsl}");
            }
            _ => {}
        }
    }
}

fn acpi_guest(boot: &str, cpus: u32, extra_cmdline: &str) {
    if !kvm_available() {
        return;
    }
    let cmdline = format!("expect_entry={boot} ncpus={cpus} {extra_cmdline}");
    let o = run_guest("acpi", &["--boot", boot, "--cpus", &cpus.to_string()], cmdline.trim(), T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("ACPI OK"), "{}", o.stdout);
    assert!(o.stdout.contains(&format!("madt: {cpus} local APICs")), "{}", o.stdout);
}

#[test]
fn acpi_guest_pvh_one_vcpu() {
    acpi_guest("pvh", 1, "");
}

#[test]
fn acpi_guest_linux64_four_vcpus() {
    // The guest does not start the APs, so four vCPUs run on any host.
    acpi_guest("linux64", 4, "");
}

#[test]
fn acpi_guest_pvh_four_vcpus_and_virtio_devices() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("acpi-guest-disks");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={},transport=mmio", img.display());
    let o =
        run_guest("acpi", &["--boot", "pvh", "--cpus", "4", "--disk", &disk], "expect_entry=pvh ncpus=4 nvirtio=1", T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("dsdt: 1 LNRO0005"), "{}", o.stdout);
}
