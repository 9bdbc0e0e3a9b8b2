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

/// The virtio-9p test guest against QEMU's virtio-9p-device (its own
/// 9P2000.L server, `security_model=none`): the same spec-written client
/// reads a file's exact bytes, `..` stays at the root and a walk through a
/// symbolic link pointing out of the share stops at the link. The same
/// guest runs under ember in tests/virtio_p9.rs.
#[test]
fn p9_under_qemu() {
    if !qemu_available() {
        return;
    }
    let f = P9Share::new("qemu-p9");
    let cmdline = f.guest_cmdline("hostshare");
    let fsdev = format!("local,id=fs0,path={},security_model=none", f.share.display());
    let o =
        run_qemu("p9", &cmdline, &["-fsdev", &fsdev, "-device", "virtio-9p-device,fsdev=fs0,mount_tag=hostshare"], T);
    assert_eq!(qemu_guest_code(&o), 0, "{}", o.stdout);
    f.check(&o.stdout);
}
