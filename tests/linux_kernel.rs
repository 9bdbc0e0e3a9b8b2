//! The project's Linux test kernel (built from Debian's linux-source-6.1 by
//! scripts/build-test-kernel) under ember: Linux's own boot code, SMP
//! bring-up, virtio-mmio, virtio-blk and virtio-net drivers against ember's
//! devices. Under emulation each boot takes about a minute; the tests run in
//! parallel (cargo's test threads) and print each boot's time to /init.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ember::{BootProtocol, SerialCapture, SerialConfig, Vm, VmConfig, VmExit};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const RUN_INIT: &str = "Run /init as init process";

/// A booted test kernel: its console and the running VM.
struct Booted {
    console: SerialCapture,
    vm: ember::RunningVm,
    cmdline: String,
    pvh: bool,
    start: Instant,
}

fn boot(name: &str, mut config: VmConfig, extra_cmdline: &str) -> Option<Booted> {
    if !kvm_available() {
        return None;
    }
    config.kernel = test_kernel();
    config.cmdline = format!("console=ttyS0 reboot=k panic=-1 {} {extra_cmdline}", linux_emulation_flags());
    let console = SerialCapture::new();
    config.serial = SerialConfig::Capture(console.clone());
    let vm = Vm::new(config).expect("build VM");
    let cmdline = vm.cmdline().to_string();
    let pvh = vm.uses_pvh();
    eprintln!("{name}: booting with: {cmdline}");
    let start = Instant::now();
    let vm = vm.start().expect("start VM");
    Some(Booted { console, vm, cmdline, pvh, start })
}

impl Booted {
    fn wait_for(&self, what: &str, name: &str) {
        let ok = self.console.wait_for(what, BOOT_TIMEOUT);
        let text = self.console.text();
        assert!(ok, "{name}: {what:?} did not appear within {BOOT_TIMEOUT:?}:\n{text}");
        eprintln!("{name}: {what:?} after {:.1} s", self.start.elapsed().as_secs_f64());
    }

    fn stop(self) -> (VmExit, String) {
        self.vm.handle().stop();
        let exit = self.vm.wait();
        (exit, self.console.text())
    }
}

fn check_common(name: &str, text: &str, cmdline: &str, memory: u64, pvh: bool) {
    assert!(!text.contains("Kernel panic"), "{name}: panic:\n{text}");
    let lines = console_lines(text);
    assert!(
        lines.iter().any(|l| l.ends_with(&format!("Command line: {cmdline}"))),
        "{name}: the kernel's command line is not exactly ember's ({cmdline}):\n{text}"
    );
    let e820: Vec<String> = lines.iter().filter_map(|l| l.find("BIOS-e820:").map(|i| l[i..].to_string())).collect();
    assert_eq!(e820, expected_linux_e820(memory, pvh), "{name}:\n{text}");
}

fn initramfs_boot(name: &str, boot_proto: BootProtocol, cpus: u8) {
    let mut config = VmConfig::new("");
    config.memory = 128 << 20;
    config.vcpus = cpus;
    config.boot = boot_proto;
    config.initrd_bytes = Some(Arc::new(init_cpio()));
    let Some(b) = boot(name, config, "rdinit=/init") else { return };
    b.wait_for(RUN_INIT, name);
    let cmdline = b.cmdline.clone();
    let pvh = b.pvh;
    let (exit, text) = b.stop();
    assert_eq!(exit, VmExit::Stopped, "{name}: {text}");
    check_common(name, &text, &cmdline, 128 << 20, pvh);
    if cpus > 1 {
        assert!(text.contains(&format!("Brought up 1 node, {cpus} CPUs")), "{name}:\n{text}");
    }
}

#[test]
fn linux_boots_to_init_through_the_elf_entry() {
    initramfs_boot("elf-entry", BootProtocol::Linux64, 1);
}

#[test]
fn linux_boots_to_init_through_the_pvh_entry() {
    initramfs_boot("pvh-entry", BootProtocol::Pvh, 1);
}

/// SMP: with the x2APIC and the MP table, Linux starts the second vCPU
/// (../shared/LINUX-UNDER-EMULATION.md: the xAPIC path hangs here).
#[test]
fn linux_brings_up_two_vcpus() {
    initramfs_boot("smp-2", BootProtocol::Auto, 2);
}

/// `ember smoke` in expect mode on the test kernel.
#[test]
fn smoke_expect_mode_on_the_test_kernel() {
    if !kvm_available() {
        return;
    }
    let d = scratch("linux-smoke");
    let initrd = d.join("init.cpio");
    std::fs::write(&initrd, init_cpio()).unwrap();
    let k = test_kernel();
    let extra = format!("{} rdinit=/init", linux_emulation_flags());
    let args = |expect: &str, timeout: &str| -> Vec<String> {
        [
            "smoke", "--kernel", k.to_str().unwrap(), "--memory", "128M", "--initrd", initrd.to_str().unwrap(),
            "--cmdline", &extra, "--expect", expect, "--timeout", timeout,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(RUN_INIT, "400s");
    let o = run_ember(&a.iter().map(String::as_str).collect::<Vec<_>>(), None, Duration::from_secs(460));
    assert_code(&o, 0);
    eprintln!("smoke: {}", o.stderr.lines().last().unwrap_or(""));
    let a = args("a line the kernel never prints", "20s");
    let o = run_ember(&a.iter().map(String::as_str).collect::<Vec<_>>(), None, Duration::from_secs(120));
    assert_code(&o, 124);
    assert!(o.elapsed >= Duration::from_secs(20) && o.elapsed < Duration::from_secs(60), "{:?}", o.elapsed);
}
