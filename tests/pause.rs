//! Pause and resume through the library's `VmHandle`: the `count` guest
//! prints an increasing counter; while the VM is paused no line appears,
//! and after resume the count goes on with no gap or repeat. (The API's
//! `PATCH /vm` goes through the same calls: tests/api_vm.rs.)

mod common;

use std::time::Duration;

use common::*;
use ember::{PauseError, SerialCapture, SerialConfig, Vm, VmConfig, VmExit};

fn count_vm(vcpus: u8) -> (ember::RunningVm, SerialCapture) {
    let console = SerialCapture::new();
    let mut config = VmConfig::new(guest("count"));
    config.memory = 32 << 20;
    config.vcpus = vcpus;
    config.cmdline = "spin=20000".into();
    config.serial = SerialConfig::Capture(console.clone());
    (Vm::new(config).expect("build VM").start().expect("start VM"), console)
}

/// Waits until the guest has printed `count n`.
fn wait_count(console: &SerialCapture, n: u64) {
    assert!(console.wait_for(&format!("count {n}\r\n"), Duration::from_secs(120)), "console: {:?}", console.text());
}

#[test]
fn a_paused_guest_prints_nothing_and_counts_on_after_resume() {
    if !kvm_available() {
        return;
    }
    // Two vCPUs: the second waits for INIT/SIPI inside KVM_RUN and must be
    // kicked out and parked too.
    let (vm, console) = count_vm(2);
    let handle = vm.handle();
    wait_count(&console, 3);
    for round in 0..3 {
        handle.pause().expect("pause");
        assert!(handle.is_paused());
        let frozen = console.text();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(console.text(), frozen, "round {round}: the guest printed while paused");
        handle.pause().expect("pausing a paused VM is fine");
        handle.resume().expect("resume");
        assert!(!handle.is_paused());
        let last = assert_counts_consecutive(&counts(&frozen));
        wait_count(&console, last + 3);
    }
    handle.resume().expect("resuming a running VM is fine");
    handle.stop();
    assert_eq!(vm.wait(), VmExit::Stopped);
    let last = assert_counts_consecutive(&counts(&console.text()));
    assert!(last >= 12, "{last}");
    assert_eq!(handle.pause(), Err(PauseError::Ended));
    assert_eq!(handle.resume(), Err(PauseError::Ended));
}

#[test]
fn quick_pause_resume_cycles_lose_and_repeat_nothing() {
    if !kvm_available() {
        return;
    }
    let (vm, console) = count_vm(1);
    let handle = vm.handle();
    wait_count(&console, 2);
    for _ in 0..50 {
        handle.pause().expect("pause");
        handle.resume().expect("resume");
    }
    let seen = counts(&console.text()).len() as u64;
    wait_count(&console, seen + 3);
    // A paused VM stops when asked, and its threads all end.
    handle.pause().expect("pause");
    handle.stop();
    assert_eq!(vm.wait(), VmExit::Stopped);
    assert_counts_consecutive(&counts(&console.text()));
}
