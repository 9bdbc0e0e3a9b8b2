//! ember as a library: configure, boot, wait for console output, stop from
//! another thread, and read the exit status, with no CLI involved.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ember::{BootProtocol, SerialCapture, SerialConfig, Vm, VmConfig, VmExit, VmPrelude};

#[test]
fn capture_wait_and_stop() {
    if !kvm_available() {
        return;
    }
    let console = SerialCapture::new();
    let mut config = VmConfig::new(guest("hang"));
    config.memory = 64 << 20;
    config.serial = SerialConfig::Capture(console.clone());
    let vm = Vm::new(config).expect("build VM").start().expect("start VM");
    assert!(console.wait_for("HANG", Duration::from_secs(30)), "console: {:?}", console.text());
    // The guest is halted with interrupts off: only the handle ends it.
    assert_eq!(vm.wait_timeout(Duration::from_millis(200)), None);
    let handle = vm.handle();
    std::thread::spawn(move || handle.stop()).join().unwrap();
    let exit = vm.wait();
    assert_eq!(exit, VmExit::Stopped);
    assert_eq!(exit.status(), 0);
}

/// The boot-state guest (2 vCPUs, 128 MiB, the 64-bit Linux entry), which
/// checks its entry state, memory map and CPUs, printing to `console`.
fn boot_state_config(console: &SerialCapture) -> VmConfig {
    let mut config = VmConfig::new(guest("boot_state"));
    config.memory = 128 << 20;
    config.vcpus = 2;
    config.boot = BootProtocol::Linux64;
    config.debug_exit = true;
    config.cmdline = "expect_entry=linux64 mem_mib=128 e820_exact=1 ncpus=2".into();
    config.serial = SerialConfig::Capture(console.clone());
    config
}

#[test]
fn debug_exit_and_cmdline_through_the_api() {
    if !kvm_available() {
        return;
    }
    let console = SerialCapture::new();
    let config = boot_state_config(&console);
    let vm = Vm::new(config).unwrap();
    assert_eq!(vm.cmdline(), "expect_entry=linux64 mem_mib=128 e820_exact=1 ncpus=2 pci=noearly");
    assert!(!vm.uses_pvh());
    let exit = vm.run().unwrap();
    assert_eq!(exit, VmExit::DebugExit(0), "console: {}", console.text());
    assert!(console.text().contains("BOOT-STATE OK"));
}

/// A `VmPrelude` made before the configuration is known (as `ember serve`
/// does while a client configures) gives the same machine: the boot-state
/// guest checks its entry state, memory map and both vCPUs' CPUID topology.
#[test]
fn a_prelude_made_ahead_builds_the_same_vm() {
    if !kvm_available() {
        return;
    }
    let prelude = VmPrelude::new().expect("KVM and an empty VM");
    let console = SerialCapture::new();
    let config = boot_state_config(&console);
    let exit = Vm::new_with(config, prelude).unwrap().run().unwrap();
    assert_eq!(exit, VmExit::DebugExit(0), "console: {}", console.text());
    assert!(console.text().contains("BOOT-STATE OK"));

    // A bad configuration is refused as it is without a prelude.
    let mut config = VmConfig::new(guest("hello"));
    config.vcpus = 0;
    let err = Vm::new_with(config, VmPrelude::new().unwrap()).err().expect("must fail");
    assert!(err.is_usage(), "{err}");
}

#[test]
fn serial_into_a_writer() {
    if !kvm_available() {
        return;
    }
    let buf: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let mut config = VmConfig::new(guest("hello"));
    config.memory = 32 << 20;
    config.debug_exit = true;
    config.cmdline = "code=3".into();
    config.serial = SerialConfig::Writer(buf.clone());
    let exit = Vm::new(config).unwrap().run().unwrap();
    assert_eq!(exit.status(), 3);
    assert_eq!(String::from_utf8_lossy(&buf.lock().unwrap()), "Hello from ember guest\r\n");
}

#[test]
fn crash_is_an_exit_value_not_a_panic() {
    if !kvm_available() {
        return;
    }
    let mut config = VmConfig::new(guest("triple_fault"));
    config.memory = 32 << 20;
    config.serial = SerialConfig::None;
    let exit = Vm::new(config).unwrap().run().unwrap();
    assert!(matches!(exit, VmExit::TripleFault { vcpu: 0, .. }), "{exit:?}");
    assert!(exit.is_crash());
    assert_eq!(exit.status(), 1);
}

#[test]
fn invalid_config_is_rejected_before_anything_runs() {
    let mut config = VmConfig::new("/nonexistent/kernel");
    config.vcpus = 0;
    let err = Vm::new(config).err().expect("must fail");
    assert!(err.is_usage(), "{err}");
}

#[test]
fn ctrl_alt_del_reaches_the_guest_keyboard() {
    if !kvm_available() {
        return;
    }
    let console = SerialCapture::new();
    let mut config = VmConfig::new(guest("keyboard"));
    config.memory = 64 << 20;
    config.debug_exit = true;
    config.serial = SerialConfig::Capture(console.clone());
    let vm = Vm::new(config).expect("build VM").start().expect("start VM");
    let handle = vm.handle();
    assert!(console.wait_for("KBD READY", Duration::from_secs(60)), "console: {}", console.text());
    // From another thread, as an API server would.
    std::thread::spawn(move || handle.send_ctrl_alt_del()).join().unwrap().expect("send Ctrl+Alt+Del");
    let exit = vm.wait_timeout(Duration::from_secs(60));
    assert_eq!(exit, Some(VmExit::DebugExit(0)), "console: {}", console.text());
    assert!(console.text().contains("KBD OK"), "console: {}", console.text());
    assert_eq!(vm.wait(), VmExit::DebugExit(0));
}
