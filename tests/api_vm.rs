//! `ember serve` with a real guest, end to end: the `ember` binary, its API
//! socket and KVM. The `count` guest is configured and started through
//! the API; `PATCH /vm` pauses it (no output) and resumes it (the count
//! goes on with no gap or repeat); every pre-boot resource is refused
//! after start with Firecracker's status and a `fault_message`; SIGTERM
//! stops the VM and removes the socket. `--config-file` starts the VM at
//! once and the API serves it running.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Pre-boot resources, each with a good body: after start every one is
/// refused with 400 and a fault_message.
fn pre_boot_requests(kernel: &str, disk: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#.into()),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#.into()),
        ("PUT", "/boot-source", format!(r#"{{"kernel_image_path": "{kernel}"}}"#)),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": false, "is_read_only": true}}"#
            ),
        ),
        ("PUT", "/network-interfaces/eth0", r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#.into()),
        ("PUT", "/logger", r#"{"level": "Info"}"#.into()),
        ("PUT", "/serial", r#"{}"#.into()),
    ]
}

#[test]
fn configure_start_pause_resume_refuse_and_stop_a_guest_through_the_api() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("count");
    let dir = scratch("api-vm");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let sock = dir.join("api.sock");
    let mut ember = serve(&sock, &["--log-level", "info", "--shutdown-timeout", "2s"]);
    let (k, d) = (kernel.to_str().unwrap(), disk.to_str().unwrap());

    assert_eq!(state(&sock), "Not started");
    let (st, body) = call(&sock, "GET", "/version", None);
    assert_eq!(st, 200, "{body}");
    assert!(json(&body)["firecracker_version"].is_string(), "{body}");
    // Bad bodies are refused before start, and change nothing.
    let (st, body) = call(&sock, "PUT", "/machine-config", Some(r#"{"vcpu_count": "two", "mem_size_mib": 32}"#));
    assert_eq!(st, 400, "{body}");
    assert!(json(&body)["fault_message"].as_str().unwrap().contains("\"two\""), "{body}");
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(st, 400, "start with no boot source: {body}");
    assert_eq!(state(&sock), "Not started");
    // A start that fails in the VMM (not a kernel) is a 400 naming why;
    // the API stays "Not started" and can be configured again.
    let junk = dir.join("not-a-kernel");
    std::fs::write(&junk, b"hello").unwrap();
    let junk_boot = format!(r#"{{"kernel_image_path": "{}"}}"#, junk.display());
    assert_eq!(call(&sock, "PUT", "/boot-source", Some(&junk_boot)).0, 204);
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(st, 400, "{body}");
    assert!(json(&body)["fault_message"].as_str().unwrap().contains("not-a-kernel"), "{body}");
    assert_eq!(state(&sock), "Not started");

    let boot = format!(r#"{{"kernel_image_path": "{k}", "boot_args": "spin=20000"}}"#);
    for (m, p, b) in [
        ("PUT", "/boot-source", boot.as_str()),
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 32}"#),
        ("PUT", "/logger", r#"{"level": "Info", "show_level": true}"#),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let (st, body) = call(&sock, m, p, Some(b));
        assert_eq!(st, 204, "{m} {p}: {body}\n{}", ember.stderr());
        assert!(body.is_empty());
    }
    assert_eq!(state(&sock), "Running");
    let (st, body) = call(&sock, "GET", "/machine-config", None);
    assert_eq!((st, json(&body)["vcpu_count"].as_u64()), (200, Some(2)), "{body}");
    wait_stdout_count(&mut ember, 3);

    for round in 0..2 {
        let (st, body) = call(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
        assert_eq!(st, 204, "pause: {body}");
        assert_eq!(state(&sock), "Paused");
        std::thread::sleep(Duration::from_millis(300)); // what was in the pipe arrives
        let frozen = ember.stdout();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ember.stdout(), frozen, "round {round}: the guest printed while paused");
        let (st, body) = call(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
        assert_eq!(st, 204, "resume: {body}");
        assert_eq!(state(&sock), "Running");
        let last = assert_counts_consecutive(&counts(&frozen));
        wait_stdout_count(&mut ember, last + 3);
    }
    let (st, body) = call(&sock, "PATCH", "/vm", Some(r#"{"state": "Frozen"}"#));
    assert_eq!(st, 400, "{body}");

    // After start: every pre-boot resource refused, with Firecracker's 400
    // and a fault_message naming the request; the VM runs on.
    for (m, p, b) in pre_boot_requests(k, d) {
        let (st, body) = call(&sock, m, p, Some(&b));
        assert_eq!(st, 400, "{m} {p} after start: {body}");
        let fault = json(&body)["fault_message"].as_str().unwrap_or_default().to_string();
        assert!(fault.contains(p) && fault.contains("after starting"), "{m} {p}: {fault}");
    }
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(st, 400, "second InstanceStart: {body}");
    assert!(json(&body)["fault_message"].is_string());
    assert_eq!(state(&sock), "Running");
    let seen = counts(&ember.stdout()).len() as u64;
    wait_stdout_count(&mut ember, seen + 2);

    // SIGTERM: Ctrl+Alt+Del, which this guest ignores (it has no keyboard
    // driver), so the VM is stopped after --shutdown-timeout (2 s); ember
    // exits and the socket is gone.
    let status = ember.stop().expect("ember ended");
    assert!(status.success(), "{status:?}: {}", ember.stderr());
    assert!(ember.stderr().contains("did not shut down within 2s: stopping it"), "{}", ember.stderr());
    assert!(!sock.exists(), "the socket is removed");
    assert_counts_consecutive(&counts(&ember.stdout()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_file_starts_the_vm_and_the_api_serves_it_running() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("count");
    let dir = scratch("api-vm-config");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "boot-source": {{"kernel_image_path": "{}", "boot_args": "spin=20000 max=1000000"}},
  "drives": [],
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32, "ember": {{"debug_exit": true}}}},
  "network-interfaces": []
}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let sock = dir.join("api.sock");
    let log = dir.join("ember.log");
    let mut ember = serve(
        &sock,
        &[
            "--config-file",
            config.to_str().unwrap(),
            "--shutdown-timeout",
            "0",
            "--log-level",
            "info",
            "--log-path",
            log.to_str().unwrap(),
        ],
    );
    assert_eq!(state(&sock), "Running");
    wait_stdout_count(&mut ember, 2);
    let (st, body) = call(&sock, "GET", "/vm/config", None);
    assert_eq!(st, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["boot-source"]["kernel_image_path"].as_str(), Some(kernel.to_str().unwrap()), "{body}");
    assert_eq!(v["machine-config"]["mem_size_mib"].as_u64(), Some(32), "{body}");
    let (st, _) = call(&sock, "PUT", "/boot-source", Some(r#"{"kernel_image_path": "/k"}"#));
    assert_eq!(st, 400);
    let (st, _) = call(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(st, 204);
    assert_eq!(state(&sock), "Paused");
    // A paused VM stops on SIGTERM too.
    let status = ember.stop().expect("ember ended");
    assert!(status.success(), "{status:?}: {}", ember.stderr());
    assert!(!sock.exists());
    // --log-path: ember's messages went to the file, not stderr.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("kernel command line") && logged.contains("VM ended"), "{logged}");
    assert!(!ember.stderr().contains("kernel command line"), "{}", ember.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_files_and_sockets_are_usage_errors_naming_the_value() {
    let dir = scratch("api-vm-errors");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}"#,
    )
    .unwrap();
    for args in [
        vec!["run", "--config-file", config.to_str().unwrap()],
        vec!["serve", "--api-sock", dir.join("s").to_str().unwrap(), "--config-file", config.to_str().unwrap()],
    ] {
        let o = run_ember(&args, None, Duration::from_secs(30));
        assert_eq!(o.code(), 2, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains("machine-config") && o.stderr.contains("vcpu_count"), "{}", o.stderr);
    }
    assert!(!dir.join("s").exists(), "no socket for a bad config file");
    // A socket path that exists already is an error naming it.
    let taken = dir.join("taken.sock");
    std::fs::write(&taken, b"").unwrap();
    let o = run_ember(&["serve", "--api-sock", taken.to_str().unwrap()], None, Duration::from_secs(30));
    assert_eq!(o.code(), 1, "{}", o.stderr);
    assert!(o.stderr.contains(taken.to_str().unwrap()), "{}", o.stderr);
    // --config-file and the flags that describe a VM exclude each other.
    let o = run_ember(&["run", "--config-file", "/x.json", "--kernel", "/k"], None, Duration::from_secs(30));
    assert_eq!(o.code(), 2, "{}", o.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ember_run_boots_a_firecracker_config_file() {
    if !kvm_available() {
        return;
    }
    let kernel = guest("count");
    let dir = scratch("api-run-config");
    let config: PathBuf = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "spin=2000 max=5"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32, "smt": false, "ember": {{"serial": "stdio", "debug_exit": true}}}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let o = run_ember(&["run", "--config-file", config.to_str().unwrap()], None, Duration::from_secs(120));
    assert_eq!(o.code(), 0, "{}", o.stderr);
    assert_eq!(counts(&o.stdout), [1, 2, 3, 4, 5], "{}", o.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The keyboard guest started through the API (it drives the i8042 as
/// Linux does, then waits for the eight bytes of Ctrl+Alt+Del and exits 0).
fn keyboard_vm(tag: &str, extra: &[&str]) -> (Spawned, PathBuf, PathBuf) {
    let kernel = guest("keyboard");
    let dir = scratch(tag);
    let sock = dir.join("api.sock");
    let mut ember = serve(&sock, extra);
    for (m, p, b) in [
        ("PUT", "/boot-source", format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display())),
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 32, "ember": {"debug_exit": true}}"#.into()),
    ] {
        assert_eq!(call(&sock, m, p, Some(&b)).0, 204, "{m} {p}");
    }
    // Before start there is no keyboard to press keys on.
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#));
    assert_eq!(st, 400, "{body}");
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#));
    assert_eq!(st, 204, "{body}");
    assert!(ember.wait_for("KBD READY", Duration::from_secs(60)), "{}\n{}", ember.stdout(), ember.stderr());
    (ember, sock, dir)
}

fn wait_exit(ember: &mut Spawned, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = ember.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "ember serve still runs: {}\n{}", ember.stdout(), ember.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn send_ctrl_alt_del_presses_the_keys_on_the_guest_keyboard() {
    if !kvm_available() {
        return;
    }
    let (mut ember, sock, dir) = keyboard_vm("api-vm-cad", &[]);
    let (st, body) = call(&sock, "PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#));
    assert_eq!(st, 204, "{body}");
    // The guest saw the eight scan codes and exited 0: so does ember.
    let st = wait_exit(&mut ember, Duration::from_secs(60));
    assert!(ember.stdout().contains("KBD OK"), "{}", ember.stdout());
    assert_eq!(st.code(), Some(0), "{}", ember.stderr());
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_presses_ctrl_alt_del_and_the_guest_shuts_down_before_the_timeout() {
    if !kvm_available() {
        return;
    }
    let (mut ember, sock, dir) = keyboard_vm("api-vm-term", &["--shutdown-timeout", "60s", "--log-level", "info"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(ember.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let st = wait_exit(&mut ember, Duration::from_secs(50));
    // Ended by the guest (KBD OK, status 0) well before the 60 s timeout.
    assert!(ember.stdout().contains("KBD OK"), "{}\n{}", ember.stdout(), ember.stderr());
    assert_eq!(st.code(), Some(0), "{}", ember.stderr());
    assert!(ember.stderr().contains("Ctrl+Alt+Del sent"), "{}", ember.stderr());
    eprintln!("SIGTERM to exit: {:?}", t.elapsed());
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
