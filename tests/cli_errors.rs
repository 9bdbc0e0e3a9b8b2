//! Bad user input: every case gets a one-line error naming the bad value,
//! exit status 2 for usage errors, and never a panic or backtrace.

mod common;

use common::*;
use std::time::Duration;

fn check_usage_error(args: &[&str], needle: &str) {
    let o = run_ember(args, None, Duration::from_secs(30));
    assert_eq!(o.code(), 2, "{args:?}: {o:#?}");
    assert!(o.stderr.contains(needle), "{args:?}: stderr lacks {needle:?}:\n{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{args:?} panicked:\n{}", o.stderr);
    assert!(!o.stderr.contains("RUST_BACKTRACE"), "{args:?}:\n{}", o.stderr);
}

#[test]
fn missing_kernel() {
    check_usage_error(&["run", "--kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
}

#[test]
fn kernel_is_a_directory() {
    check_usage_error(&["run", "--kernel", "/tmp"], "/tmp");
}

#[test]
fn not_a_kernel() {
    let d = scratch("notkernel");
    let p = d.join("script.sh");
    std::fs::write(&p, "#!/bin/sh\necho hello\n").unwrap();
    check_usage_error(&["run", "--kernel", p.to_str().unwrap()], "is not a kernel image");
}

#[test]
fn truncated_elf() {
    if !kvm_available() {
        return;
    }
    let g = std::fs::read(guest("hello")).unwrap();
    let d = scratch("trunc");
    let p = d.join("trunc.elf");
    std::fs::write(&p, &g[..g.len() / 2]).unwrap();
    check_usage_error(&["run", "--kernel", p.to_str().unwrap()], "truncated");
}

#[test]
fn cmdline_too_long() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello");
    let long = "x".repeat(3000);
    // The length is the whole command line: the 3000 bytes given plus what
    // ember appends (`pci=noearly` for its PCI root).
    check_usage_error(
        &["run", "--kernel", g.to_str().unwrap(), "--cmdline", &long],
        "bytes, the kernel accepts at most 2047",
    );
}

#[test]
fn memory_too_small_for_initrd() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello");
    let d = scratch("bigrd");
    let rd = d.join("initrd");
    std::fs::write(&rd, vec![0u8; 3 << 20]).unwrap();
    check_usage_error(
        &["run", "--kernel", g.to_str().unwrap(), "--memory", "4M", "--initrd", rd.to_str().unwrap()],
        "too small",
    );
}

#[test]
fn missing_initrd() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello");
    check_usage_error(&["run", "--kernel", g.to_str().unwrap(), "--initrd", "/nonexistent/rd"], "/nonexistent/rd");
}

#[test]
fn bad_sizes_and_counts() {
    check_usage_error(&["run", "--kernel", "/k", "--memory", "12Q"], "12Q");
    check_usage_error(&["run", "--kernel", "/k", "--memory", "1M"], "1048576");
    check_usage_error(&["run", "--kernel", "/k", "--cpus", "0"], "0");
    check_usage_error(&["run", "--kernel", "/k", "--cpus", "300"], "300");
    check_usage_error(&["run", "--kernel", "/k", "--serial", "tcp:1234"], "tcp:1234");
    check_usage_error(&["run", "--kernel", "/k", "--boot", "uefi"], "uefi");
    check_usage_error(&["run", "--kernel", "/k", "--frobnicate"], "--frobnicate");
    check_usage_error(&["run", "--kernel", "/k", "--disk", "readonly=on"], "path=IMG is required");
}

#[test]
fn help_explains_every_flag() {
    let o = run_ember(&["run", "--help"], None, Duration::from_secs(10));
    assert_eq!(o.code(), 0);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--cpus",
        "--serial",
        "--debug-exit",
        "--log-level",
        "--disk",
        "--net",
        "--boot",
    ] {
        assert!(o.stdout.contains(flag), "help lacks {flag}:\n{}", o.stdout);
    }
}
