//! virtio-9p through ember's device manager (`--share`), driven by the
//! spec-written test guest tests/guests/p9.c: the same guest, command line
//! and directory layout as its QEMU cross-check
//! (tests/qemu_crosscheck.rs::p9_under_qemu), so the client is proven
//! against QEMU's 9P server and ember's alike. ember runs with its default
//! seccomp filters (`kill`): the event loop serves the share under its
//! filter for shares. Then the share's user errors, each named.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

/// The guest reads a file's exact bytes through a read-only share on the
/// default transport (virtio-pci: the guest finds it on PCI bus 0 and
/// takes MSI-X), `..` stays at the root and a link out of the share stops
/// at the link.
#[test]
fn p9_under_ember() {
    if !kvm_available() {
        return;
    }
    let f = P9Share::new("p9-ember");
    let share = format!("{}:hostshare,ro", f.share.display());
    let cmdline = format!("{} transport=pci", f.guest_cmdline("hostshare"));
    let o = run_guest("p9", &["--memory", "128M", "--share", &share], &cmdline, T);
    assert_code(&o, 0);
    f.check(&o.stdout);
}

/// The same on virtio-mmio (`,transport=mmio`): the guest finds the share
/// through `virtio_mmio.device=` on its command line.
#[test]
fn p9_under_ember_mmio() {
    if !kvm_available() {
        return;
    }
    let f = P9Share::new("p9-ember-mmio");
    let share = format!("{}:hostshare,ro,transport=mmio", f.share.display());
    let o = run_guest("p9", &["--memory", "128M", "--share", &share], &f.guest_cmdline("hostshare"), T);
    assert_code(&o, 0);
    f.check(&o.stdout);
}

/// The share behind a disk and another share: placed by the device manager
/// after the disks, in `--share` order, each with its own tag and
/// transport; the guest finds its tag among the 9P devices of its
/// transport (the disk and its target on PCI, the other share on mmio, and
/// the other way round).
#[test]
fn p9_among_other_devices() {
    if !kvm_available() {
        return;
    }
    for (target, other) in [("pci", "mmio"), ("mmio", "pci")] {
        let f = P9Share::new(&format!("p9-ember-mixed-{target}"));
        let d = scratch(&format!("p9-ember-mixed-disk-{target}"));
        let img = d.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        let disk = format!("path={},transport={target}", img.display());
        let second_other = format!("{}:other,transport={target}", d.display());
        let other = format!("{}:another,transport={other}", d.display());
        let share = format!("{}:second,transport={target}", f.share.display());
        let mut cmdline = f.guest_cmdline("second");
        if target == "pci" {
            cmdline.push_str(" transport=pci");
        }
        let args =
            ["--memory", "128M", "--disk", &disk, "--share", &other, "--share", &second_other, "--share", &share];
        let o = run_guest("p9", &args, &cmdline, T);
        assert_code(&o, 0);
        f.check(&o.stdout);
    }
}

fn share_error(args: &[&str], needles: &[&str]) {
    let g = guest("hello");
    let mut all = vec!["run", "--kernel", g.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = run_ember(&all, None, T);
    assert_code(&o, 2);
    for n in needles {
        assert!(o.stderr.contains(n), "{args:?}: no {n:?} in {}", o.stderr);
    }
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

#[test]
fn bad_shares_are_refused_before_the_guest_starts() {
    let d = scratch("p9-bad-shares");
    let file = d.join("file");
    std::fs::write(&file, b"x").unwrap();
    let dir = d.to_str().unwrap();
    share_error(&["--share", "/nonexistent/dir"], &["/nonexistent/dir", "No such file"]);
    share_error(&["--share", file.to_str().unwrap()], &[file.to_str().unwrap(), "Not a directory"]);
    share_error(&["--share", &format!("{dir}:t"), "--share", &format!("{dir}:t,ro")], &["\"t\"", "used twice"]);
    share_error(&["--share", &format!("{dir}:/mnt")], &["ember smoke", "TAG"]);
    share_error(&["--share", &format!("{dir}:")], &["--share", "nothing after ':'"]);
    share_error(&["--share", ",ro"], &["host directory is missing"]);
}

fn smoke_error(args: &[&str], code: i32, needles: &[&str]) {
    let g = guest("hello");
    let mut all = vec!["smoke", "--kernel", g.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = run_ember(&all, None, T);
    assert_code(&o, code);
    for n in needles {
        assert!(o.stderr.contains(n), "{args:?}: no {n:?} in {}", o.stderr);
    }
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

/// `ember smoke`'s share, root-share and module flags: bad values are
/// named, before any guest runs (2: the flags; 125: ember could not set up).
#[test]
fn smoke_share_flags_are_checked() {
    let d = scratch("p9-smoke-flags");
    let dir = d.to_str().unwrap();
    smoke_error(&["--cwd", "/tmp", "--", "true"], 2, &["--root-share"]);
    smoke_error(&["--root-share", "--env", "1X=y", "--", "true"], 2, &["'1X=y'"]);
    smoke_error(&["--share", &format!("{dir}:"), "--", "true"], 2, &["nothing after ':'"]);
    smoke_error(&["--modules", "/nonexistent/mods", "--", "true"], 125, &["/nonexistent/mods", "modules.dep"]);
    smoke_error(&["--share", "/nonexistent/dir:/mnt/x", "--", "true"], 125, &["/nonexistent/dir"]);
    let log = d.join("no/such/dir/console.log");
    smoke_error(&["--console-log", log.to_str().unwrap(), "--", "true"], 125, &[log.to_str().unwrap()]);
}
