//! The same test guests under QEMU's microvm machine (TCG): an independent
//! implementation of the PVH entry, the e820 map, the initrd and SMP, so a
//! guest check that passes on both agrees with more than ember.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

#[test]
fn boot_state_pvh_under_qemu() {
    if !qemu_available() {
        return;
    }
    let d = scratch("qemu-initrd");
    let data = pattern(30_000, 3);
    let p = d.join("initrd.bin");
    std::fs::write(&p, &data).unwrap();
    let cmdline = format!("expect_entry=pvh mem_mib=128 initrd_size={} initrd_crc={:#x}", data.len(), crc32(&data));
    let o = run_qemu("boot_state", &cmdline, &["-initrd", p.to_str().unwrap()], T);
    assert_eq!(qemu_guest_code(&o), 0, "{}", o.stdout);
    assert!(o.stdout.contains(&format!("cmdline=[{cmdline}]")), "{}", o.stdout);
    assert!(o.stdout.contains("BOOT-STATE OK"));
}

#[test]
fn smp_under_qemu() {
    if !qemu_available() {
        return;
    }
    let o = run_qemu("smp", "ncpus=2", &["-smp", "2"], T);
    assert_eq!(qemu_guest_code(&o), 0, "{}", o.stdout);
    assert!(o.stdout.contains("SMP OK: 2 CPUs"));
}

#[test]
fn hello_under_qemu() {
    if !qemu_available() {
        return;
    }
    let o = run_qemu("hello", "code=5", &[], T);
    assert_eq!(qemu_guest_code(&o), 5, "{}", o.stdout);
}
