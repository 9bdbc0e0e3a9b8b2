//! virtio-blk and virtio-net through ember's PCI root and virtio-pci
//! transport (`transport=pci`, the default), driven by the same test guests
//! that tests/qemu_crosscheck.rs runs under QEMU's q35: bus 0 enumerated
//! through 0xCF8/0xCFC, BARs sized and placed by the guest (in the 32-bit
//! window, or above 4 GiB in the 64-bit one), the capability list walked,
//! an MSI-X vector per queue (irqfd per vector, KVM GSI routes set from the
//! vCPU thread under the default seccomp filter), notifications on
//! ioeventfds that follow the BAR; and pci_hostile.c's cases. The host
//! checks the images byte for byte afterwards.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);
const SECTORS: u64 = 8192; // 4 MiB

/// A scratch image of `SECTORS` sectors of pseudo-random bytes.
fn image(name: &str, seed: u64) -> (PathBuf, Vec<u8>) {
    let d = scratch(name);
    let p = d.join("disk.img");
    let data = pattern((SECTORS * 512) as usize, seed);
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

fn pci_blk_case(tag: &str, extra_cmdline: &str, disk_opts: &str) -> Outcome {
    let (p, orig) = image(tag, 13);
    let disk = format!("path={}{disk_opts}", p.display());
    let cmdline =
        format!("transport=pci sectors={SECTORS} s0_crc={:#x} id=pci-disk {extra_cmdline}", crc32(&orig[..512]));
    let o = run_guest("blk", &["--memory", "128M", "--disk", &disk], &cmdline, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("BLK OK"), "{}", o.stdout);
    assert!(o.stdout.contains("virtio-pci: 00:1.0 id 1042"), "found on PCI bus 0 as 00:01.0: {}", o.stdout);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    assert_image(&p, &expected_after_blk(&orig));
    o
}

/// blk.c with an MSI-X vector per queue and EVENT_IDX, `transport=pci`
/// spelled out.
#[test]
fn pci_blk_msix() {
    if !kvm_available() {
        return;
    }
    let o = pci_blk_case("pci-blk", "irq=1 event_idx=1", ",id=pci-disk,transport=pci");
    assert!(o.stdout.contains("blk: MSI-X interrupts: config 0, queue "), "{}", o.stdout);
    // BAR 0 placed by the guest in ember's 32-bit window.
    assert!(o.stdout.contains("BAR 0: 8000 bytes at 0xc0000000 (64-bit)"), "{}", o.stdout);
}

/// The same, polling, on the default transport, with the 64-bit BAR moved
/// by the guest to the start of ember's 64-bit window (4 GiB for 128 MiB).
#[test]
fn pci_blk_bar_above_4g_by_default() {
    if !kvm_available() {
        return;
    }
    let o = pci_blk_case("pci-blk64", "pci_mem64=0x100000000", ",id=pci-disk");
    assert!(o.stdout.contains("common 0x100000000"), "{}", o.stdout);
}

/// One disk on each transport in one VM: the MMIO one keeps its slot and
/// command-line parameter, the PCI one is found on the bus.
#[test]
fn pci_and_mmio_disks_side_by_side() {
    if !kvm_available() {
        return;
    }
    let (a, a0) = image("pci-mixed-a", 1);
    let (b, b0) = image("pci-mixed-b", 2);
    let da = format!("path={},id=on-mmio,transport=mmio,readonly=on", a.display());
    let db = format!("path={},id=on-pci,readonly=on", b.display());
    let mmio = format!("id=on-mmio ro=1 s0_crc={:#x}", crc32(&a0[..512]));
    let o = run_guest("blk", &["--disk", &da, "--disk", &db, "--log-level", "info"], &mmio, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("at 0xd0000000 irq 5"), "{}", o.stdout);
    assert!(o.stderr.contains("virtio_mmio.device=4K@0xd0000000:5"), "{}", o.stderr);
    assert!(!o.stderr.contains("0xd0001000"), "the PCI disk takes no MMIO slot: {}", o.stderr);
    let pci = format!("transport=pci id=on-pci ro=1 s0_crc={:#x}", crc32(&b0[..512]));
    let o = run_guest("blk", &["--disk", &da, "--disk", &db], &pci, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("virtio-pci: 00:1.0 id 1042"), "{}", o.stdout);
    assert_image(&a, &a0);
    assert_image(&b, &b0);
}

/// net.c with MSI-X on a TAP in a namespace: ping and the UDP echo client,
/// as under QEMU q35.
#[test]
fn pci_net_msix_ping_and_udp_echo() {
    if !kvm_available() {
        return;
    }
    let Some(ns) = NetNs::new("npci", "10.0.6.1") else { return };
    let mac = "02:00:00:00:06:02";
    let mut vm = ns.spawn_ember("net", mac, "transport=pci irq=1 guest_ip=10.0.6.2");
    assert!(vm.wait_for("net: ready", T), "{}\n{}", vm.stdout(), vm.stderr());
    assert!(vm.stdout().contains(&format!("net: mac {mac}")), "{}", vm.stdout());
    assert!(vm.stdout().contains("virtio-pci: 00:1.0 id 1041"), "{}", vm.stdout());
    let ping = ns.exec(&["ping", "-c", "3", "-W", "10", "10.0.6.2"]);
    assert!(ping.status.success(), "{}\n{}", String::from_utf8_lossy(&ping.stdout), vm.stdout());
    let udp = ns.exec(&["python3", "-c", UDP_CLIENT, "10.0.6.2"]);
    let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
    assert!(udp_out.starts_with("OK sent=1003"), "{udp_out}{}", String::from_utf8_lossy(&udp.stderr));
    let st = vm.child.wait().unwrap();
    let err = vm.stderr();
    assert_eq!(st.code(), Some(0), "{}\n{err}", vm.stdout());
    let stats = err.lines().find(|l| l.contains("net0 (tap0): NetStats")).unwrap_or_else(|| panic!("{err}"));
    for k in ["rx_dropped: 0", "rx_malformed: 0", "tx_dropped: 0", "tx_malformed: 0"] {
        assert!(stats.contains(k), "{stats}");
    }
}

/// pci_hostile.c, every case, with two disks (the second for bar_overlap)
/// and ember's ECAM for the cross-dword write: the guest checks that the
/// device recovers and sector 0 reads back intact; ember keeps running,
/// logs no panic, and nothing but reads reached the images.
#[test]
fn pci_hostile_cases() {
    if !kvm_available() {
        return;
    }
    let (p0, orig0) = image("pci-hostile0", 21);
    let (p1, orig1) = image("pci-hostile1", 22);
    let d0 = format!("path={}", p0.display());
    let d1 = format!("path={}", p1.display());
    for case in ["msix_oob", "notify_missing", "bar_ram", "bar_overlap", "cfg_odd"] {
        let cmdline = format!(
            "transport=pci case={case} s0_crc={:#x} s1_crc={:#x} ecam=0xe0000000",
            crc32(&orig0[..512]),
            crc32(&orig1[..512])
        );
        let o = run_guest("pci_hostile", &["--memory", "128M", "--disk", &d0, "--disk", &d1], &cmdline, T);
        assert_code(&o, 0);
        assert!(o.stdout.contains("HOSTILE OK"), "case {case}: {}", o.stdout);
        assert!(!o.stderr.contains("panicked"), "case {case}: {}", o.stderr);
    }
    assert_image(&p0, &orig0);
    assert_image(&p1, &orig1);
}

/// Device counts are per transport, and the errors name the transport and
/// the value.
#[test]
fn bad_transports_are_refused_before_the_guest_starts() {
    let g = guest("hello");
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--disk", "path=/x.img,transport=isa"], None, T);
    assert_code(&o, 2);
    assert!(o.stderr.contains("transport 'isa' is not pci or mmio"), "{}", o.stderr);
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--net", "tap=t0,transport=virtio"], None, T);
    assert_code(&o, 2);
    assert!(o.stderr.contains("transport 'virtio' is not pci or mmio"), "{}", o.stderr);
}
