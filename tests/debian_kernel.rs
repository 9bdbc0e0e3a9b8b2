//! Debian's stock kernel (linux-image-*-amd64, fetched with apt-get download
//! by scripts/fetch-debian-kernel) under ember: the banner, ember's exact
//! command line, an e820 map matching --memory, and ember's ACPI tables as
//! the kernel lists them (RSDP, XSDT, FACP, DSDT, APIC) and uses them (the
//! MADT for the CPUs, in hardware-reduced mode), through the ELF entry
//! (Linux 64-bit boot protocol, RSDP from the zero page) and through its
//! PVH note (RSDP from the start info). Under emulation the kernel gets
//! this far in ~40 s and dies later in int3_selftest (see
//! ../shared/KVM-HERE.md), so the test stops it through the library handle
//! once the MADT is parsed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ember::{BootProtocol, SerialCapture, SerialConfig, Vm, VmConfig, VmExit};

/// Flags the emulating host needs: `noxsave` because the emulator lacks
/// xsave/xrstor, `earlyprintk=serial` so output starts before the console.
const CMDLINE: &str = "earlyprintk=serial console=ttyS0 noxsave reboot=k panic=1";
const MEM: u64 = 256 << 20;
/// What Linux prints once it takes the CPUs from ember's MADT.
const MADT_USED: &str = "ACPI: Using ACPI (MADT) for SMP configuration information";

fn boot(boot: BootProtocol) {
    if !kvm_available() {
        return;
    }
    let (_vmlinuz, vmlinux, pvh) = debian_kernel();
    if boot == BootProtocol::Pvh {
        assert!(pvh, "Debian's vmlinux is expected to carry a PVH note (CONFIG_PVH=y)");
    }
    let console = SerialCapture::new();
    let mut config = VmConfig::new(&vmlinux);
    config.cmdline = CMDLINE.into();
    config.memory = MEM;
    config.boot = boot;
    config.serial = SerialConfig::Capture(console.clone());
    let start = Instant::now();
    let vm = Vm::new(config).expect("build VM");
    assert_eq!(vm.uses_pvh(), boot == BootProtocol::Pvh);
    let cmdline = vm.cmdline().to_string();
    let vm = vm.start().expect("start VM");
    let t = Duration::from_secs(300);
    let ok = console.wait_for("Linux version", t) && console.wait_for("BIOS-e820", t);
    let e820_at = start.elapsed();
    // The kernel parses the MADT after it has listed the tables.
    let madt = ok && console.wait_for(MADT_USED, Duration::from_secs(240));
    let elapsed = start.elapsed();
    vm.handle().stop();
    let exit = vm.wait();
    let text = console.text();
    eprintln!(
        "{boot:?}: e820 map printed after {:.1} s, MADT used after {:.1} s; exit {exit}",
        e820_at.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    assert!(ok, "no banner/e820 map within the deadline:\n{text}");
    assert!(madt, "the kernel did not use the MADT ({MADT_USED:?}) within the deadline:\n{text}");
    assert_eq!(exit, VmExit::Stopped, "{text}");
    assert!(text.contains("Linux version 6."), "{text}");
    assert_eq!(cmdline, format!("{CMDLINE} pci=noearly"));
    assert!(
        text.lines().any(|l| l.trim_end_matches('\r').ends_with(&format!("Command line: {cmdline}"))),
        "the kernel's command line is not exactly ember's:\n{text}"
    );
    // The tables as the kernel lists them: where ember put them, each
    // with ember's OEM ID (a bad checksum or length would be reported).
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    for (sig, oem) in [
        ("RSDP 0x00000000000E0000 000024 (v02 EMBER )", ""),
        ("XSDT 0x", "EMBER  EMBRXSDT"),
        ("FACP 0x", "EMBER  EMBRFACP"),
        ("DSDT 0x", "EMBER  EMBRDSDT"),
        ("APIC 0x", "EMBER  EMBRAPIC"),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(&format!("ACPI: {sig}")) && l.contains(oem)),
            "no \"ACPI: {sig}\" line with {oem:?}:\n{text}"
        );
    }
    // The MP table is still found (Linux scans for it), but not used.
    for bad in ["ACPI BIOS Error", "ACPI Error", "ACPI Warning", "Intel MultiProcessor Specification"] {
        assert!(!lines.iter().any(|l| l.contains(bad)), "{bad:?} in:\n{text}");
    }
    let e820: Vec<String> =
        text.lines().filter_map(|l| l.find("BIOS-e820:").map(|i| l[i..].trim_end_matches('\r').to_string())).collect();
    assert_eq!(e820, expected_linux_e820(MEM, boot == BootProtocol::Pvh), "\n{text}");
}

#[test]
fn debian_vmlinux_elf_entry() {
    boot(BootProtocol::Linux64);
}

#[test]
fn debian_vmlinux_pvh_entry() {
    boot(BootProtocol::Pvh);
}
