//! virtio-blk through ember's virtio-mmio transport (`transport=mmio`; the
//! PCI transport is in virtio_pci.rs), driven by the test
//! guests' own driver (tests/guests/virtio, blk.c), by hostile variants of
//! it (blk_hostile.c), and cross-checked under QEMU's microvm machine. The
//! host side checks the image file byte for byte afterwards.

mod common;

use std::path::PathBuf;
use std::process::Command;
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

fn blk_run(name: &str, extra_cmdline: &str, disk_opts: &str) {
    if !kvm_available() {
        return;
    }
    let (p, orig) = image(name, 11);
    let disk = format!("path={}{disk_opts},transport=mmio", p.display());
    let cmdline = format!("sectors={SECTORS} s0_crc={:#x} {extra_cmdline}", crc32(&orig[..512]));
    let o = run_guest("blk", &["--memory", "128M", "--disk", &disk], &cmdline, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("BLK OK"), "{}", o.stdout);
    let ro = disk_opts.contains("readonly=on");
    assert_image(&p, &if ro { orig } else { expected_after_blk(&orig) });
}

#[test]
fn blk_polling() {
    blk_run("blk-poll", "id=disk-poll", ",id=disk-poll");
}

#[test]
fn blk_interrupt_driven() {
    blk_run("blk-irq", "irq=1", "");
}

#[test]
fn blk_interrupt_driven_with_event_idx() {
    blk_run("blk-evidx", "irq=1 event_idx=1", "");
}

#[test]
fn blk_read_only_disk() {
    blk_run("blk-ro", "ro=1", ",readonly=on");
}

#[test]
fn blk_default_id_is_the_file_name() {
    // The GET_ID answer without id=: the image's file name.
    blk_run("blk-defid", "id=disk.img", "");
}

#[test]
fn two_disks_in_order() {
    if !kvm_available() {
        return;
    }
    let (a, a0) = image("blk-two-a", 1);
    let (b, b0) = image("blk-two-b", 2);
    let da = format!("path={},id=first,transport=mmio", a.display());
    let db = format!("path={},id=second,readonly=on,transport=mmio", b.display());
    for (nth, id, crc, ro) in [(0, "first", crc32(&a0[..512]), 0), (1, "second", crc32(&b0[..512]), 1)] {
        std::fs::write(&a, &a0).unwrap();
        let cmdline = format!("nth={nth} id={id} s0_crc={crc:#x} ro={ro}");
        let o = run_guest("blk", &["--disk", &da, "--disk", &db], &cmdline, T);
        assert_code(&o, 0);
        // The devices are in --disk order in the MMIO window.
        assert!(
            o.stdout.contains(&format!("at 0x{:x} irq {}", 0xd000_0000u64 + nth * 0x1000, 5 + nth)),
            "{}",
            o.stdout
        );
    }
    assert_image(&b, &b0);
}

fn hostile(case: &str, readonly: bool) {
    if !kvm_available() {
        return;
    }
    let (p, orig) = image(&format!("hostile-{case}"), 5);
    let disk = format!("path={}{},transport=mmio", p.display(), if readonly { ",readonly=on" } else { "" });
    let cmdline = format!("case={case} s0_crc={:#x}", crc32(&orig[..512]));
    let o = run_guest("blk_hostile", &["--memory", "128M", "--disk", &disk], &cmdline, T);
    assert_code(&o, 0);
    assert!(o.stdout.contains("HOSTILE OK"), "{}", o.stdout);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    assert_image(&p, &orig);
}

#[test]
fn hostile_descriptor_loop() {
    hostile("loop", false);
}
#[test]
fn hostile_chain_without_status() {
    hostile("no_status", false);
}
#[test]
fn hostile_short_header() {
    hostile("short_header", false);
}
#[test]
fn hostile_buffer_outside_ram() {
    hostile("outside_ram", false);
}
#[test]
fn hostile_huge_length() {
    hostile("huge_len", false);
}
#[test]
fn hostile_writable_buffer_for_out() {
    hostile("writable_out", false);
}
#[test]
fn hostile_write_on_read_only_disk() {
    hostile("ro_write", true);
}
#[test]
fn hostile_queue_size_not_power_of_two() {
    hostile("bad_qsize", false);
}
#[test]
fn hostile_queue_ready_before_addresses() {
    hostile("ready_early", false);
}
#[test]
fn hostile_reset_mid_io() {
    hostile("reset_mid_io", false);
}
#[test]
fn hostile_features_not_offered() {
    hostile("bad_features", false);
}

fn disk_error(disk: &str, needle: &str) {
    let g = guest("hello");
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--disk", disk], None, T);
    assert_code(&o, 2);
    assert!(o.stderr.contains(needle), "{disk}: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

#[test]
fn bad_disks_are_refused_before_the_guest_starts() {
    let d = scratch("bad-disks");
    disk_error("path=/nonexistent/disk.img", "/nonexistent/disk.img");
    disk_error(&format!("path={}", d.display()), "is a directory");
    let odd = d.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    disk_error(&format!("path={}", odd.display()), "not a multiple of 512");
    disk_error("path=/x.img,readonly=maybe", "readonly");
    disk_error("readonly=on", "path=IMG is required");
    // A file that cannot be opened for writing (immutable: even root can't).
    let imm = d.join("immutable.img");
    std::fs::write(&imm, vec![0u8; 4096]).unwrap();
    if Command::new("chattr").arg("+i").arg(&imm).status().map(|s| s.success()).unwrap_or(false) {
        disk_error(&format!("path={}", imm.display()), "readonly=on");
        let _ = Command::new("chattr").arg("-i").arg(&imm).status();
    } else {
        eprintln!("note: chattr +i unavailable here; the read-only-file case is covered by unit tests");
    }
}

#[test]
fn blk_under_qemu() {
    if !qemu_available() {
        return;
    }
    let (p, orig) = image("blk-qemu", 11);
    let cmdline = format!("sectors={SECTORS} s0_crc={:#x} id=qemu-disk", crc32(&orig[..512]));
    let drive = format!("file={},if=none,id=d0,format=raw,discard=unmap", p.display());
    let o = run_qemu("blk", &cmdline, &["-drive", &drive, "-device", "virtio-blk-device,drive=d0,serial=qemu-disk"], T);
    assert_eq!(qemu_guest_code(&o), 0, "{}", o.stdout);
    assert!(o.stdout.contains("BLK OK"));
    assert_image(&p, &expected_after_blk(&orig));
}

/// Drives ember on a pty while the `blk_storm` guest floods its disk:
/// once the storm runs, types `ping` and times the echo, then Ctrl-A x and
/// times the exit. Prints what it saw.
const STORM_DRIVER: &str = r#"
import os, pty, sys, time, select
ember, kernel, disk, table, transport = sys.argv[1:6]
pid, fd = pty.fork()
if pid == 0:
    os.execv(ember, [ember, "run", "--kernel", kernel, "--memory", "64M", "--disk",
                     "path=" + disk + ",transport=" + transport, "--cmdline", "table=" + table + " transport=" + transport])
out = b""
def pump(until, deadline):
    global out
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.01)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return False
            if not data:
                return False
            out += data
            if until(out):
                return True
    return False
ok = pump(lambda o: o.count(b"STORM rounds=") >= 2, time.time() + 120)
print("STORMING", ok)
mark = len(out)
t0 = time.time()
os.write(fd, b"ping")
echo = pump(lambda o: b"ping" in o[mark:], time.time() + 30)
print("ECHO", echo, round(time.time() - t0, 3))
t0 = time.time()
os.write(fd, b"\x01x")
exited = None
while time.time() < t0 + 30:
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        exited = time.time() - t0
        break
    pump(lambda o: False, time.time() + 0.005)
if exited is None:
    os.kill(pid, 9); os.waitpid(pid, 0)
print("EXIT", exited is not None, round(exited or 0, 3), os.waitstatus_to_exitcode(st) if exited is not None else -1)
print("ROUNDS", out.count(b"STORM rounds="))
"#;

/// Issue 16, findings 3 and 1 end to end: a guest keeps the disk queue
/// full of the largest aliasing reads (each ~16 MiB copied into 64 KiB),
/// or of indirect tables longer than the queue (refused, every one a
/// malformed chain); the console still echoes and Ctrl-A x still exits.
/// Before the pass budget one notification held the event loop for as
/// long as the copying took. The times are printed, not asserted (the
/// issue's target is 1 s; see the report).
#[test]
fn console_and_ctrl_a_x_answer_while_the_disk_is_flooded() {
    if !kvm_available() {
        return;
    }
    let d = scratch("storm");
    let img = d.join("disk.img");
    // Sparse, and large enough for the 64 MiB requests 1,024-entry tables
    // made before they were refused.
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let g = guest("blk_storm");
    // Both transports: each continues a pass that stopped on its budget
    // through the queue's eventfd (transport.rs).
    for (table, transport) in [("256", "mmio"), ("1024", "mmio"), ("256", "pci")] {
        let (ember, g, img) = (ember(), g.to_str().unwrap(), img.to_str().unwrap());
        let o = Command::new("python3")
            .args(["-c", STORM_DRIVER, ember.to_str().unwrap(), g, img, table, transport])
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        eprintln!("table={table} transport={transport}:\n{text}{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{text}");
        let line =
            |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("{k}: {text}")).to_string();
        assert!(line("STORMING").ends_with("True"), "the storm never ran: {text}");
        assert!(line("ECHO").starts_with("ECHO True"), "the console did not answer: {text}");
        assert!(line("EXIT").starts_with("EXIT True"), "Ctrl-A x did not end ember: {text}");
        assert!(line("EXIT").ends_with(" 0"), "{text}");
    }
}
