//! The boot core proven with freestanding test guests (tests/guests):
//! both entry paths, the memory map, CPUID, the initrd, SMP start-up,
//! serial input, the exit paths, and the serial sinks.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn boot_state(boot: &str, memory_mib: u64, cpus: u32, extra_cmdline: &str) {
    if !kvm_available() {
        return;
    }
    let cmdline =
        format!("expect_entry={boot} mem_mib={memory_mib} e820_exact=1 expect_kvm_sig=1 ncpus={cpus} {extra_cmdline}")
            .trim()
            .to_string();
    let mem = format!("{memory_mib}M");
    let cpus_s = cpus.to_string();
    let o = run_guest("boot_state", &["--boot", boot, "--memory", &mem, "--cpus", &cpus_s], &cmdline, T);
    assert_code(&o, 0);
    // The guest sees exactly the command line ember was given, and the
    // `pci=noearly` ember adds for its PCI root.
    assert!(o.stdout.contains(&format!("cmdline=[{cmdline} pci=noearly]")), "{}", o.stdout);
    assert!(o.stdout.contains("BOOT-STATE OK"), "{}", o.stdout);
}

#[test]
fn boot_state_pvh() {
    boot_state("pvh", 256, 1, "");
}

#[test]
fn boot_state_linux64() {
    boot_state("linux64", 256, 1, "");
}

#[test]
fn boot_state_auto_prefers_pvh() {
    if !kvm_available() {
        return;
    }
    let o = run_guest("boot_state", &[], "expect_entry=pvh", T);
    assert_code(&o, 0);
}

#[test]
fn boot_state_memory_split_around_the_hole() {
    // 4 GiB and 5 GiB reach past the 32-bit MMIO hole at 3 GiB: the rest of
    // RAM moves above 4 GiB, and the e820 map says so.
    boot_state("linux64", 4096, 2, "");
    boot_state("pvh", 5120, 2, "");
}

#[test]
fn boot_state_small_memory() {
    boot_state("pvh", 16, 1, "");
}

fn initrd_case(boot: &str) {
    if !kvm_available() {
        return;
    }
    let d = scratch(&format!("initrd-{boot}"));
    let data = pattern(70_001, 7);
    let p = d.join("initrd.bin");
    std::fs::write(&p, &data).unwrap();
    let cmdline = format!("expect_entry={boot} initrd_size={} initrd_crc={:#x}", data.len(), crc32(&data));
    let o = run_guest("boot_state", &["--boot", boot, "--initrd", p.to_str().unwrap()], &cmdline, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("BOOT-STATE OK"), "{}", o.stdout);
}

#[test]
fn initrd_pvh() {
    initrd_case("pvh");
}

#[test]
fn initrd_linux64() {
    initrd_case("linux64");
}

#[test]
fn smp_two_cpus() {
    if !kvm_available() {
        return;
    }
    let o = run_guest("smp", &["--cpus", "2"], "ncpus=2", T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("SMP OK: 2 CPUs"), "{}", o.stdout);
}

#[test]
fn smp_four_cpus_on_two_cores() {
    if !kvm_available() {
        return;
    }
    let o = run_guest("smp", &["--cpus", "4"], "ncpus=4", T);
    assert_code(&o, 0);
    for id in 1..4 {
        assert!(o.stdout.contains(&format!("AP {id} up: apic id {id} (leaf 1), {id} (leaf 0xb)")), "{}", o.stdout);
    }
}

fn echo_case(irq: bool) {
    if !kvm_available() {
        return;
    }
    let g = guest("serial_echo");
    let cmdline = if irq { "irq=1" } else { "irq=0" };
    let text = b"Hello, ember! 0123456789 \xe2\x9c\x93 end";
    let mut input = text.to_vec();
    input.push(b'q');
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--debug-exit", "--cmdline", cmdline], Some(&input), T);
    assert_code(&o, 0);
    let want = String::from_utf8_lossy(text);
    assert!(o.stdout.contains(&format!("ECHO READY\r\n{want}")), "{:?}", o.stdout);
    assert!(o.stdout.contains(&format!("ECHO DONE bytes={}", text.len())), "{}", o.stdout);
}

#[test]
fn serial_input_polled() {
    echo_case(false);
}

#[test]
fn serial_input_interrupt_driven() {
    echo_case(true);
}

#[test]
fn debug_exit_status_is_the_byte_written() {
    if !kvm_available() {
        return;
    }
    for code in [0, 7, 200] {
        let o = run_guest("hello", &[], &format!("code={code}"), T);
        assert_code(&o, code);
        assert!(o.stdout.starts_with("Hello from ember guest"), "{}", o.stdout);
    }
}

#[test]
fn i8042_reset_ends_with_status_zero() {
    if !kvm_available() {
        return;
    }
    // Without --debug-exit the guest's write to 0xf4 goes nowhere (logged
    // once) and its fallback, the i8042 reset, ends ember with 0.
    let g = guest("hello");
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--cmdline", "code=9"], None, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("Hello from ember guest"));
}

#[test]
fn triple_fault_is_reported_as_a_crash() {
    if !kvm_available() {
        return;
    }
    let o = run_guest("triple_fault", &[], "", T);
    assert_code(&o, 1);
    assert!(o.stdout.contains("TRIPLE FAULT NEXT"));
    let e = &o.stderr;
    assert!(e.contains("vCPU 0") && e.contains("triple fault") && e.contains("RIP 0x"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn serial_to_file_and_none() {
    if !kvm_available() {
        return;
    }
    let d = scratch("serial-file");
    let f = d.join("console.log");
    let spec = format!("file={}", f.display());
    let o = run_guest("hello", &["--serial", &spec], "", T);
    assert_code(&o, 0);
    assert!(!o.stdout.contains("Hello"), "{}", o.stdout);
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.starts_with("Hello from ember guest\r\n"), "{text:?}");

    let o = run_guest("hello", &["--serial", "none"], "", T);
    assert_code(&o, 0);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
}

#[test]
fn default_command_line() {
    if !kvm_available() {
        return;
    }
    let g = guest("boot_state");
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--debug-exit"], None, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("cmdline=[console=ttyS0 reboot=k panic=1 pci=noearly]"), "{}", o.stdout);
}
