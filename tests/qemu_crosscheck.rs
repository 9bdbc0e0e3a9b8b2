//! The same test guests under QEMU (TCG): an independent implementation of
//! the PVH entry, the e820 map, the initrd and SMP (microvm), and of PCI
//! and the virtio-pci transport with MSI-X (q35), so a guest check that
//! passes on both agrees with more than ember.

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

// ---- virtio-pci on QEMU's q35 (the same guests as under ember's PCI) ----

const PCI_SECTORS: u64 = 8192;

/// A scratch image of `PCI_SECTORS` sectors of pseudo-random bytes.
fn pci_image(name: &str, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let d = scratch(name);
    let p = d.join("disk.img");
    let data = pattern((PCI_SECTORS * 512) as usize, seed);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

/// `-drive`/`-device` arguments for a modern-only virtio-blk-pci disk.
fn blk_pci(p: &std::path::Path, id: &str, serial: &str) -> [String; 4] {
    [
        "-drive".into(),
        format!("file={},if=none,id={id},format=raw,discard=unmap", p.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={id},disable-legacy=on,serial={serial}"),
    ]
}

fn pci_blk_case(tag: &str, extra_cmdline: &str) {
    if !qemu_available() {
        return;
    }
    let (p, orig) = pci_image(tag, 13);
    let cmdline =
        format!("transport=pci sectors={PCI_SECTORS} s0_crc={:#x} id=q35-disk {extra_cmdline}", crc32(&orig[..512]));
    let dev = blk_pci(&p, "d0", "q35-disk");
    let o = run_qemu_q35("blk", &cmdline, &dev.iter().map(String::as_str).collect::<Vec<_>>(), T);
    assert_eq!(qemu_guest_code(&o), 0, "{}", o.stdout);
    assert!(o.stdout.contains("BLK OK"), "{}", o.stdout);
    assert!(o.stdout.contains("virtio-pci: 00:"), "found through PCI: {}", o.stdout);
    assert_image(&p, &expected_after_blk(&orig));
    if extra_cmdline.contains("irq=1") {
        assert!(o.stdout.contains("blk: MSI-X interrupts: config 0, queue "), "{}", o.stdout);
    }
}

/// blk.c through virtio-pci with an MSI-X vector per queue and EVENT_IDX;
/// the host checks the image byte for byte.
#[test]
fn pci_blk_msix_under_qemu_q35() {
    pci_blk_case("q35-blk", "irq=1 event_idx=1");
}

/// The same, polling, with the 64-bit BARs placed above 4 GiB.
#[test]
fn pci_blk_bars_above_4g_under_qemu_q35() {
    pci_blk_case("q35-blk64", "pci_mem64=0x800000000");
}

/// net.c through virtio-pci with MSI-X on a TAP in a namespace: ping and
/// the UDP echo client.
#[test]
fn pci_net_under_qemu_q35() {
    if !qemu_available() {
        return;
    }
    let Some(ns) = NetNs::new("nq35", "10.0.5.1") else { return };
    let g = guest("net");
    let mut args = ns.prefix();
    args.push("qemu-system-x86_64".into());
    args.extend(q35_args(&g, "transport=pci irq=1 guest_ip=10.0.5.2"));
    args.extend(
        [
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
            "-device",
            "virtio-net-pci,netdev=n0,mac=02:00:00:00:05:02,disable-legacy=on,romfile=",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut vm = Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(vm.wait_for("net: ready", T), "{}\n{}", vm.stdout(), vm.stderr());
    assert!(vm.stdout().contains("net: mac 02:00:00:00:05:02"), "{}", vm.stdout());
    assert!(vm.stdout().contains("irq 1"), "MSI-X mode: {}", vm.stdout());
    let ping = ns.exec(&["ping", "-c", "3", "-W", "10", "10.0.5.2"]);
    assert!(ping.status.success(), "{}\n{}", String::from_utf8_lossy(&ping.stdout), vm.stdout());
    let udp = ns.exec(&["python3", "-c", UDP_CLIENT, "10.0.5.2"]);
    let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
    assert!(udp_out.starts_with("OK sent=1003"), "{udp_out}{}", String::from_utf8_lossy(&udp.stderr));
    let st = vm.child.wait().unwrap();
    assert_eq!(st.code(), Some(1), "isa-debug-exit status for guest code 0: {}", vm.stdout());
}

/// pci_hostile.c, every case, with two disks (the second for
/// bar_overlap); ECAM at q35's 0xb0000000 for the cross-dword write.
#[test]
fn pci_hostile_under_qemu_q35() {
    if !qemu_available() {
        return;
    }
    let (p0, orig0) = pci_image("q35-hostile0", 21);
    let (p1, orig1) = pci_image("q35-hostile1", 22);
    let mut dev: Vec<String> = blk_pci(&p0, "d0", "h0").into();
    dev.extend(blk_pci(&p1, "d1", "h1"));
    let dev: Vec<&str> = dev.iter().map(String::as_str).collect();
    for case in ["msix_oob", "notify_missing", "bar_ram", "bar_overlap", "cfg_odd"] {
        let cmdline = format!(
            "transport=pci case={case} s0_crc={:#x} s1_crc={:#x} ecam=0xb0000000",
            crc32(&orig0[..512]),
            crc32(&orig1[..512])
        );
        let o = run_qemu_q35("pci_hostile", &cmdline, &dev, T);
        assert_eq!(qemu_guest_code(&o), 0, "case {case}: {}", o.stdout);
        assert!(o.stdout.contains("HOSTILE OK"), "case {case}: {}", o.stdout);
    }
    // Nothing but reads went to the disks.
    assert_image(&p0, &orig0);
    assert_image(&p1, &orig1);
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
