//! Conformance of the controller (routes, bodies, status codes, the state
//! machine) with a fake VM, checked against Firecracker's OpenAPI
//! description: 204 with no body for a change, 200 with JSON for a read,
//! 400 (405 for a wrong method) with a `fault_message` for anything refused.

use serde_json::{json, Value};

use super::control::{FakeCall, FakeVm};
use super::http::Request;
use super::resources::{parse_config_file_with as parse_config_file, HostChecks};
use super::router::Controller;

fn ctl() -> Controller<FakeVm> {
    Controller::new(FakeVm::new(), "test-vm", HostChecks::Never)
}

/// Sends one request; returns the status and the JSON body (Null for none).
fn call(c: &mut Controller<FakeVm>, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let r = c.handle(&Request { method, path, body: body.map(str::as_bytes) });
    let v = match &r.body {
        Some(b) => serde_json::from_str(b).unwrap_or_else(|e| panic!("{method} {path}: body {b:?} is not JSON: {e}")),
        None => Value::Null,
    };
    match r.status {
        204 => assert!(r.body.is_none(), "{method} {path}: 204 with a body"),
        200 => assert!(v.is_object(), "{method} {path}: 200 without a JSON object"),
        _ => {
            let m = v.get("fault_message").and_then(Value::as_str);
            assert!(m.is_some_and(|m| !m.is_empty()), "{method} {path}: {} without fault_message: {v}", r.status);
        }
    }
    (r.status, v)
}

fn fault(v: &Value) -> &str {
    v["fault_message"].as_str().unwrap()
}

/// Expects 400 whose message contains `needle`.
fn refused(c: &mut Controller<FakeVm>, method: &str, path: &str, body: &str, needle: &str) {
    let (s, v) = call(c, method, path, Some(body));
    assert_eq!(s, 400, "{method} {path} {body}: {v}");
    assert!(fault(&v).contains(needle), "{method} {path} {body}: {:?} lacks {needle:?}", fault(&v));
}

fn ok(c: &mut Controller<FakeVm>, method: &str, path: &str, body: &str) {
    let (s, v) = call(c, method, path, Some(body));
    assert_eq!(s, 204, "{method} {path} {body}: {v}");
}

fn configured() -> Controller<FakeVm> {
    let mut c = ctl();
    ok(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#);
    c
}

fn start(c: &mut Controller<FakeVm>) {
    ok(c, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
}

#[test]
fn instance_info_and_version() {
    let mut c = ctl();
    let (s, v) = call(&mut c, "GET", "/", None);
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"id": "test-vm", "state": "Not started", "vmm_version": env!("CARGO_PKG_VERSION"), "app_name": "ember"})
    );
    let (s, v) = call(&mut c, "GET", "/version", None);
    assert_eq!(s, 200);
    assert_eq!(v, json!({"firecracker_version": env!("CARGO_PKG_VERSION")}));
}

#[test]
fn machine_config_defaults_and_put() {
    let mut c = ctl();
    let (s, v) = call(&mut c, "GET", "/machine-config", None);
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"})
    );
    ok(&mut c, "PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#);
    ok(
        &mut c,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 4, "mem_size_mib": 512, "smt": false, "track_dirty_pages": false, "huge_pages": "None", "cpu_template": "None"}"#,
    );
    let (_, v) = call(&mut c, "GET", "/machine-config", None);
    assert_eq!((v["vcpu_count"].as_u64(), v["mem_size_mib"].as_u64()), (Some(4), Some(512)));
}

#[test]
fn machine_config_refusals_name_the_value() {
    let mut c = ctl();
    let m = "/machine-config";
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 0, "mem_size_mib": 128}"#, "vcpu_count 0");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 255, "mem_size_mib": 128}"#, "vcpu_count 255");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 0}"#, "mem_size_mib 0");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 1}"#, "mem_size_mib 1");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 2000000}"#, "mem_size_mib 2000000");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}"#, "smt");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}"#, "track_dirty");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#, "\"2M\"");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "Transparent"}"#, "Transparent");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#, "1G");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}"#, "T2");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "mem_size_mib": 128, "color": "red"}"#, "color");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": "2", "mem_size_mib": 128}"#, "invalid type");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": -1, "mem_size_mib": 128}"#, "-1");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1.5, "mem_size_mib": 128}"#, "1.5");
    refused(&mut c, "PUT", m, r#"{"mem_size_mib": 128}"#, "vcpu_count");
    refused(&mut c, "PUT", m, r#"{"vcpu_count": 1, "#, "invalid JSON");
    refused(&mut c, "PUT", m, r#"[1, 2]"#, "invalid");
    // Nothing was applied.
    let (_, v) = call(&mut c, "GET", m, None);
    assert_eq!((v["vcpu_count"].as_u64(), v["mem_size_mib"].as_u64()), (Some(1), Some(128)));
}

#[test]
fn machine_config_patch() {
    let mut c = ctl();
    ok(&mut c, "PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#);
    let (_, v) = call(&mut c, "GET", "/machine-config", None);
    assert_eq!((v["vcpu_count"].as_u64(), v["mem_size_mib"].as_u64()), (Some(1), Some(64)));
    refused(&mut c, "PATCH", "/machine-config", "{}", "empty PATCH");
    refused(&mut c, "PATCH", "/machine-config", r#"{"vcpu_count": 0}"#, "vcpu_count 0");
}

#[test]
fn boot_source() {
    let mut c = ctl();
    ok(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k", "initrd_path": null}"#);
    ok(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet"}"#);
    refused(&mut c, "PUT", "/boot-source", r#"{"initrd_path": "/i"}"#, "kernel_image_path");
    refused(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k", "kernel": "/k"}"#, "kernel");
    refused(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": ""}"#, "kernel_image_path is empty");
    refused(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k", "boot_args": "a\u0000b"}"#, "NUL");
}

#[test]
fn boot_source_paths_are_checked_on_the_host() {
    let mut c = Controller::new(FakeVm::new(), "x", HostChecks::Now);
    refused(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#, "/nonexistent/vmlinux");
    refused(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/"}"#, "not a regular file");
    let exe = std::env::current_exe().unwrap();
    ok(&mut c, "PUT", "/boot-source", &json!({"kernel_image_path": exe}).to_string());
    refused(
        &mut c,
        "PUT",
        "/drives/d",
        r#"{"drive_id": "d", "path_on_host": "/nonexistent.img", "is_root_device": false}"#,
        "/nonexistent.img",
    );
}

#[test]
fn drives() {
    let mut c = configured();
    let d = |id: &str, path: &str, root: bool| {
        json!({"drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false}).to_string()
    };
    ok(&mut c, "PUT", "/drives/data", &d("data", "/data.img", false));
    ok(&mut c, "PUT", "/drives/rootfs", &d("rootfs", "/root.img", true));
    // Firecracker clients send every field, most of them null.
    ok(
        &mut c,
        "PUT",
        "/drives/scratch",
        r#"{"drive_id": "scratch", "partuuid": null, "is_root_device": false, "cache_type": "Writeback",
            "is_read_only": true, "path_on_host": "/s.img", "io_engine": "Sync", "rate_limiter": null, "socket": null}"#,
    );
    refused(&mut c, "PUT", "/drives/other", &d("rootfs2", "/x.img", false), "differs");
    refused(&mut c, "PUT", "/drives/second", &d("second", "/x.img", true), "already is");
    refused(&mut c, "PUT", "/drives/bad-id", &d("bad-id", "/x.img", false), "bad-id");
    refused(&mut c, "PUT", "/drives", &d("x", "/x.img", false), "empty");
    refused(&mut c, "PUT", "/drives/x", r#"{"drive_id": "x", "is_root_device": false}"#, "path_on_host");
    refused(&mut c, "PUT", "/drives/x", r#"{"drive_id": "x", "path_on_host": "/x"}"#, "is_root_device");
    refused(
        &mut c,
        "PUT",
        "/drives/x",
        r#"{"drive_id": "x", "path_on_host": "/x", "is_root_device": false, "io_engine": "Async"}"#,
        "Async",
    );
    refused(
        &mut c,
        "PUT",
        "/drives/x",
        r#"{"drive_id": "x", "path_on_host": "/x", "is_root_device": false,
            "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100}}}"#,
        "rate_limiter",
    );
    refused(&mut c, "PUT", "/drives/x", r#"{"drive_id": "x", "socket": "/s", "is_root_device": false}"#, "socket");
    refused(
        &mut c,
        "PUT",
        "/drives/x",
        r#"{"drive_id": "x", "path_on_host": "/x", "is_root_device": false, "cache_type": "Fast"}"#,
        "Fast",
    );
    refused(
        &mut c,
        "PUT",
        "/drives/x",
        r#"{"drive_id": "x", "path_on_host": "/x", "is_root_device": "yes"}"#,
        "invalid type",
    );
    // Replacing the root device keeps one root; the root is /dev/vda.
    ok(&mut c, "PUT", "/drives/rootfs", &d("rootfs", "/root2.img", true));
    start(&mut c);
    let FakeCall::Start { disks, cmdline, .. } = &c.vm().calls[0] else { panic!("{:?}", c.vm().calls) };
    let disks: Vec<_> = disks.iter().map(|p| p.to_str().unwrap()).collect();
    assert_eq!(disks, ["/root2.img", "/data.img", "/s.img"]);
    assert_eq!(cmdline, "console=ttyS0 root=/dev/vda rw");
}

#[test]
fn root_device_options() {
    let mut c = configured();
    ok(
        &mut c,
        "PUT",
        "/drives/r",
        r#"{"drive_id": "r", "path_on_host": "/r", "is_root_device": true, "is_read_only": true, "partuuid": "0eaa91a0-01"}"#,
    );
    refused(
        &mut c,
        "PUT",
        "/drives/q",
        r#"{"drive_id": "q", "path_on_host": "/r", "is_root_device": false, "partuuid": "x y"}"#,
        "partuuid",
    );
    start(&mut c);
    let FakeCall::Start { cmdline, .. } = &c.vm().calls[0] else { panic!() };
    assert_eq!(cmdline, "console=ttyS0 root=PARTUUID=0eaa91a0-01 ro");
}

#[test]
fn network_interfaces() {
    let mut c = configured();
    ok(&mut c, "PUT", "/network-interfaces/eth0", r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#);
    ok(
        &mut c,
        "PUT",
        "/network-interfaces/eth1",
        r#"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "06:00:AC:10:00:02",
            "rx_rate_limiter": null, "tx_rate_limiter": null}"#,
    );
    let n = "/network-interfaces/eth2";
    refused(&mut c, "PUT", n, r#"{"iface_id": "eth3", "host_dev_name": "tap2"}"#, "differs");
    refused(&mut c, "PUT", n, r#"{"iface_id": "eth2", "host_dev_name": "tap1"}"#, "tap1");
    refused(
        &mut c,
        "PUT",
        n,
        r#"{"iface_id": "eth2", "host_dev_name": "tap2", "guest_mac": "06:00:ac:10:00:02"}"#,
        "already used",
    );
    refused(
        &mut c,
        "PUT",
        n,
        r#"{"iface_id": "eth2", "host_dev_name": "tap2", "guest_mac": "06:00:ac:10:00"}"#,
        "06:00:ac:10:00",
    );
    refused(&mut c, "PUT", n, r#"{"iface_id": "eth2", "host_dev_name": "averyveryverylongtapname"}"#, "averyvery");
    refused(&mut c, "PUT", n, r#"{"iface_id": "eth2", "host_dev_name": "tap2", "mtu": 1400}"#, "mtu");
    refused(
        &mut c,
        "PUT",
        n,
        r#"{"iface_id": "eth2", "host_dev_name": "tap2", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        "rate limiters",
    );
    refused(&mut c, "PUT", n, r#"{"iface_id": "eth2"}"#, "host_dev_name");
    // Replacing eth0 with the same tap is fine.
    ok(
        &mut c,
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:09"}"#,
    );
    start(&mut c);
    let FakeCall::Start { nets, .. } = &c.vm().calls[0] else { panic!() };
    assert_eq!(nets, &["tap0", "tap1"]);
}

#[test]
fn too_many_devices() {
    let mut c = configured();
    let max = crate::layout::max_virtio_devices();
    for i in 0..max {
        ok(
            &mut c,
            "PUT",
            &format!("/drives/d{i}"),
            &json!({"drive_id": format!("d{i}"), "path_on_host": "/x", "is_root_device": false}).to_string(),
        );
    }
    refused(
        &mut c,
        "PUT",
        "/drives/more",
        r#"{"drive_id": "more", "path_on_host": "/x", "is_root_device": false}"#,
        "too many devices",
    );
    refused(
        &mut c,
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id": "n", "host_dev_name": "tap0"}"#,
        "too many devices",
    );
    // Replacing an existing one still works.
    ok(&mut c, "PUT", "/drives/d0", r#"{"drive_id": "d0", "path_on_host": "/y", "is_root_device": true}"#);
}

#[test]
fn logger() {
    let mut c = ctl();
    ok(&mut c, "PUT", "/logger", r#"{"log_path": "/tmp/fc.log", "level": "warning", "show_level": true}"#);
    ok(&mut c, "PUT", "/logger", r#"{"level": "Debug", "show_log_origin": true, "module": "ember::api"}"#);
    refused(&mut c, "PUT", "/logger", r#"{"level": "Loud"}"#, "Loud");
    refused(&mut c, "PUT", "/logger", r#"{"log_file": "/x"}"#, "log_file");
    let calls = &c.vm().calls;
    assert_eq!(calls.len(), 2);
    let FakeCall::Logger(l) = &calls[0] else { panic!() };
    assert_eq!(l.level, Some(log::LevelFilter::Warn));
    assert_eq!(l.log_path.as_deref(), Some(std::path::Path::new("/tmp/fc.log")));
    assert!(l.show_level && !l.show_log_origin);
    let FakeCall::Logger(l) = &calls[1] else { panic!() };
    assert_eq!(l.module.as_deref(), Some("ember::api"));
}

#[test]
fn actions_and_the_state_machine() {
    let mut c = ctl();
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#, "boot source");
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#, "before starting");
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#, "before starting");
    refused(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#, "not started");
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "Reboot"}"#, "Reboot");
    refused(&mut c, "PUT", "/actions", r#"{}"#, "action_type");
    ok(&mut c, "PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#);
    start(&mut c);
    assert_eq!(call(&mut c, "GET", "/", None).1["state"], "Running");
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#, "already started");
    ok(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(call(&mut c, "GET", "/", None).1["state"], "Paused");
    ok(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    ok(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(call(&mut c, "GET", "/", None).1["state"], "Running");
    refused(&mut c, "PATCH", "/vm", r#"{"state": "Stopped"}"#, "Stopped");
    refused(&mut c, "PATCH", "/vm", r#"{"state": "Paused", "now": true}"#, "now");
    ok(&mut c, "PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    ok(&mut c, "PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let calls: Vec<_> = c.vm().calls.iter().skip(1).cloned().collect();
    assert_eq!(
        calls,
        [FakeCall::Pause, FakeCall::Pause, FakeCall::Resume, FakeCall::CtrlAltDel, FakeCall::FlushMetrics]
    );
    let FakeCall::Start { cmdline, memory, vcpus, .. } = &c.vm().calls[0] else { panic!() };
    assert_eq!((cmdline.as_str(), *memory, *vcpus), (crate::config::VmConfig::DEFAULT_CMDLINE, 128 << 20, 1));
}

#[test]
fn pre_boot_resources_are_refused_after_start() {
    let mut c = configured();
    start(&mut c);
    for (method, path, body) in [
        ("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128}"#),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#),
        ("PUT", "/boot-source", r#"{"kernel_image_path": "/k"}"#),
        ("PUT", "/drives/d", r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#),
        ("PUT", "/network-interfaces/n", r#"{"iface_id": "n", "host_dev_name": "tap0"}"#),
        ("PUT", "/logger", r#"{"level": "Info"}"#),
        ("PUT", "/serial", r#"{"serial_out_path": "/tmp/s"}"#),
    ] {
        refused(&mut c, method, path, body, "after starting");
    }
    // Reads still work.
    assert_eq!(call(&mut c, "GET", "/machine-config", None).0, 200);
    assert_eq!(call(&mut c, "GET", "/vm/config", None).0, 200);
}

#[test]
fn a_failed_start_can_be_retried() {
    let mut c = configured();
    c.vm_mut().fail_start = Some("KVM is not available".into());
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#, "KVM is not available");
    assert_eq!(call(&mut c, "GET", "/", None).1["state"], "Not started");
    ok(&mut c, "PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#);
    start(&mut c);
    assert_eq!(call(&mut c, "GET", "/", None).1["state"], "Running");
}

#[test]
fn methods_paths_and_bodies() {
    let mut c = ctl();
    let r = c.handle(&Request { method: "POST", path: "/actions", body: Some(b"{}") });
    assert_eq!((r.status, r.allow), (405, Some("PUT")));
    let r = c.handle(&Request { method: "DELETE", path: "/machine-config", body: None });
    assert_eq!((r.status, r.allow), (405, Some("GET, PUT, PATCH")));
    let r = c.handle(&Request { method: "GET", path: "/drives/x", body: None });
    assert_eq!((r.status, r.allow), (405, Some("PUT")));
    let (s, v) = call(&mut c, "GET", "/nothing-here", None);
    assert_eq!(s, 400);
    assert!(fault(&v).contains("GET /nothing-here"));
    let (s, v) = call(&mut c, "PUT", "/vsock", Some("{}"));
    assert_eq!(s, 400);
    assert!(fault(&v).contains("not supported by ember"));
    let (s, _) = call(&mut c, "PUT", "/drives/a/b", Some("{}"));
    assert_eq!(s, 400);
    let (s, v) = call(&mut c, "GET", "/", Some("{}"));
    assert_eq!(s, 400);
    assert!(fault(&v).contains("cannot have a body"));
    let (s, v) = call(&mut c, "PUT", "/machine-config", None);
    assert_eq!(s, 400);
    assert!(fault(&v).contains("empty PUT"));
    assert_eq!(call(&mut c, "GET", "/machine-config/", None).0, 200);
}

#[test]
fn serial_and_ember_extensions() {
    let mut c = configured();
    ok(&mut c, "PUT", "/serial", r#"{"serial_out_path": "/tmp/serial.out"}"#);
    refused(&mut c, "PUT", "/serial", r#"{"rate_limiter": {"size": 1, "refill_time": 1}}"#, "rate_limiter");
    ok(
        &mut c,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64,
            "ember": {"debug_exit": true, "boot_protocol": "pvh", "transport": "mmio"}}"#,
    );
    let m = "/machine-config";
    refused(&mut c, "PATCH", m, r#"{"ember": {"transport": "isa"}}"#, "`isa`");
    refused(&mut c, "PATCH", m, r#"{"ember": {"serial": "tcp"}}"#, "`tcp`");
    // seccomp is the server's command line's, never a client's to turn off.
    refused(&mut c, "PATCH", m, r#"{"ember": {"seccomp": "off"}}"#, "seccomp");
    refused(&mut c, "PATCH", m, r#"{"ember": {"serial": {"file": ""}}}"#, "not a path");
    refused(&mut c, "PATCH", m, r#"{"ember": {"boot_protocol": "bios"}}"#, "`bios`");
    refused(&mut c, "PATCH", m, r#"{"ember": {"gpu": true}}"#, "gpu");
    let (_, v) = call(&mut c, "GET", m, None);
    assert_eq!(
        v["ember"],
        json!({"serial": {"file": "/tmp/serial.out"}, "debug_exit": true, "boot_protocol": "pvh", "transport": "mmio"})
    );
    let cfg = c.resources().to_vm_config().unwrap();
    assert!(cfg.debug_exit);
    assert_eq!(cfg.boot, crate::config::BootProtocol::Pvh);
    // The library's default: `ember serve` sets its own (`--seccomp`).
    assert_eq!(cfg.seccomp, crate::seccomp::SeccompMode::Off);
    assert!(
        matches!(&cfg.serial, crate::config::SerialConfig::File(p) if p == std::path::Path::new("/tmp/serial.out"))
    );
    ok(&mut c, "PATCH", m, r#"{"ember": {"serial": "none"}}"#);
    assert!(matches!(c.resources().to_vm_config().unwrap().serial, crate::config::SerialConfig::None));
}

/// A config file in the shape of Firecracker's documented example
/// (every resource present, the unused ones null), written for ember.
const EXAMPLE_CONFIG: &str = r#"{
  "boot-source": {
    "kernel_image_path": "/images/vmlinux",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    {
      "drive_id": "rootfs",
      "partuuid": null,
      "is_root_device": true,
      "cache_type": "Unsafe",
      "is_read_only": false,
      "path_on_host": "/images/rootfs.ext4",
      "io_engine": "Sync",
      "rate_limiter": null,
      "socket": null
    }
  ],
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 1024,
    "smt": false,
    "track_dirty_pages": false,
    "huge_pages": "None"
  },
  "cpu-config": null,
  "balloon": null,
  "network-interfaces": [],
  "vsock": null,
  "logger": null,
  "metrics": null,
  "mmds-config": null,
  "entropy": null,
  "pmem": [],
  "memory-hotplug": null
}"#;

#[test]
fn config_file_example() {
    let f = parse_config_file(EXAMPLE_CONFIG.as_bytes(), HostChecks::Never).unwrap();
    assert!(f.logger().is_none());
    let c = f.vm_config().unwrap();
    assert_eq!(c.kernel, std::path::Path::new("/images/vmlinux"));
    assert_eq!(c.initrd, None);
    assert_eq!((c.vcpus, c.memory), (2, 1024 << 20));
    assert_eq!(c.cmdline, "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw");
    assert_eq!(c.disks.len(), 1);
    assert_eq!(c.disks[0].path, std::path::Path::new("/images/rootfs.ext4"));
    assert!(!c.disks[0].read_only);
    assert!(c.nets.is_empty());
    // What the file cannot say is the library's default; `ember` sets it.
    assert_eq!(c.seccomp, crate::seccomp::SeccompMode::Off);
}

#[test]
fn config_file_with_everything_ember_has() {
    let json = r#"{
      "boot-source": {"kernel_image_path": "/k", "initrd_path": "/initrd.cpio"},
      "drives": [
        {"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false, "is_read_only": true},
        {"drive_id": "root", "path_on_host": "/r.img", "is_root_device": true}
      ],
      "machine-config": {"vcpu_count": 3, "mem_size_mib": 96, "ember": {"serial": "none", "debug_exit": true}},
      "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap7", "guest_mac": "02:00:00:00:00:07"}],
      "logger": {"level": "Info", "log_path": "/tmp/ember.log"}
    }"#;
    let f = parse_config_file(json.as_bytes(), HostChecks::Never).unwrap();
    assert_eq!(f.logger().unwrap().level, Some(log::LevelFilter::Info));
    let c = f.vm_config().unwrap();
    assert_eq!(c.initrd.as_deref(), Some(std::path::Path::new("/initrd.cpio")));
    assert_eq!(c.cmdline, format!("{} root=/dev/vda rw", crate::config::VmConfig::DEFAULT_CMDLINE));
    let disks: Vec<_> = c.disks.iter().map(|d| (d.path.to_str().unwrap(), d.read_only)).collect();
    assert_eq!(disks, [("/r.img", false), ("/d.img", true)]);
    assert_eq!(c.nets[0].tap, "tap7");
    assert_eq!(c.nets[0].mac, Some([2, 0, 0, 0, 0, 7]));
    assert!(c.debug_exit);
    assert!(matches!(c.serial, crate::config::SerialConfig::None));
}

#[test]
fn config_file_refusals() {
    let base = |extra: &str| format!(r#"{{"boot-source": {{"kernel_image_path": "/k"}}{extra}}}"#);
    for (json, needle) in [
        (r#"{"drives": []}"#.to_string(), "boot-source"),
        (base(r#", "vsock": {"guest_cid": 3, "uds_path": "/v"}"#), "\"vsock\" is not supported"),
        (base(r#", "pmem": [{"id": "p"}]"#), "\"pmem\" is not supported"),
        (base(r#", "frobnicate": 1"#), "frobnicate"),
        (base(r#", "machine-config": {"vcpu_count": 99999, "mem_size_mib": 128}"#), "machine-config: vcpu_count 99999"),
        (
            base(
                r#", "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": true},
                               {"drive_id": "b", "path_on_host": "/b", "is_root_device": true}]"#,
            ),
            "drives[1]: drive \"b\" cannot be a root device",
        ),
        (base(r#", "network-interfaces": [{"iface_id": "e-0", "host_dev_name": "tap0"}]"#), "network-interfaces[0]"),
        (base(r#", "logger": {"level": "chatty"}"#), "logger: level"),
        ("not json".to_string(), "invalid config file"),
    ] {
        let e = parse_config_file(json.as_bytes(), HostChecks::Never).unwrap_err();
        assert!(e.0.contains(needle), "{json}: {:?} lacks {needle:?}", e.0);
    }
}

#[test]
fn vm_config_output_is_a_config_file_for_the_same_vm() {
    let mut c = configured();
    ok(&mut c, "PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 300, "ember": {"debug_exit": true}}"#);
    ok(
        &mut c,
        "PUT",
        "/drives/b",
        r#"{"drive_id": "b", "path_on_host": "/b", "is_root_device": false, "is_read_only": true}"#,
    );
    ok(
        &mut c,
        "PUT",
        "/drives/a",
        r#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": true, "partuuid": "ab-1"}"#,
    );
    ok(
        &mut c,
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id": "n", "host_dev_name": "tap3", "guest_mac": "02:00:00:00:00:03"}"#,
    );
    let (s, v) = call(&mut c, "GET", "/vm/config", None);
    assert_eq!(s, 200);
    assert_eq!(v["drives"][0]["drive_id"], "a");
    let again = parse_config_file(v.to_string().as_bytes(), HostChecks::Never).unwrap().vm_config().unwrap();
    let direct = c.resources().to_vm_config().unwrap();
    assert_eq!(format!("{again:?}"), format!("{direct:?}"));
}

const CREATE: &str = r#"{"snapshot_path": "/s/state", "mem_file_path": "/s/mem"}"#;
const LOAD: &str =
    r#"{"snapshot_path": "/s/state", "mem_backend": {"backend_path": "/s/mem", "backend_type": "File"}}"#;

#[test]
fn snapshot_create_needs_a_started_paused_vm_and_a_full_snapshot() {
    let mut c = configured();
    refused(&mut c, "PUT", "/snapshot/create", CREATE, "not started");
    start(&mut c);
    refused(&mut c, "PUT", "/snapshot/create", CREATE, "not paused");
    ok(&mut c, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    refused(&mut c, "PUT", "/snapshot/create", &CREATE.replace('}', r#", "snapshot_type": "Diff"}"#), "Diff");
    refused(&mut c, "PUT", "/snapshot/create", r#"{"snapshot_path": "", "mem_file_path": "/m"}"#, "snapshot_path");
    refused(&mut c, "PUT", "/snapshot/create", r#"{"snapshot_path": "/s"}"#, "mem_file_path");
    refused(&mut c, "PUT", "/snapshot/create", &CREATE.replace('}', r#", "version": "1.0.0"}"#), "version");
    ok(&mut c, "PUT", "/snapshot/create", &CREATE.replace('}', r#", "snapshot_type": "Full"}"#));
    assert_eq!(c.vm().calls.last(), Some(&FakeCall::Snapshot("/s/state".into(), "/s/mem".into())));
    let (s, _) = call(&mut c, "GET", "/snapshot/create", None);
    assert_eq!(s, 405);
}

#[test]
fn snapshot_load_is_for_a_fresh_instance_and_one_memory_backend() {
    // Refused once the machine is configured (Firecracker's rule).
    let mut c = configured();
    refused(&mut c, "PUT", "/snapshot/load", LOAD, "before configuring");
    let mut c = ctl();
    // The logger and the serial console may be set first.
    ok(&mut c, "PUT", "/logger", r#"{"level": "Info"}"#);
    ok(&mut c, "PUT", "/serial", r#"{"serial_out_path": "/tmp/console.log"}"#);
    for (body, needle) in [
        (LOAD.replace("File", "Uffd"), "Uffd"),
        (LOAD.replace("}}", r#"}, "mem_file_path": "/s/mem"}"#), "exactly one"),
        (r#"{"snapshot_path": "/s/state"}"#.to_string(), "exactly one"),
        (LOAD.replace("}}", r#"}, "track_dirty_pages": true}"#), "dirty"),
        (LOAD.replace("}}", r#"}, "enable_diff_snapshots": true}"#), "dirty"),
        (LOAD.replace("}}", r#"}, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}"#), "network"),
        (LOAD.replace("}}", r#"}, "clock_realtime": true}"#), "clock_realtime"),
        (LOAD.replace("}}", r#"}, "resume": true}"#), "unknown field"),
    ] {
        refused(&mut c, "PUT", "/snapshot/load", &body, needle);
    }
    assert_eq!(c.state().as_str(), "Not started");
    ok(&mut c, "PUT", "/snapshot/load", LOAD);
    assert_eq!(c.vm().calls.last(), Some(&FakeCall::LoadSnapshot("/s/state".into(), "/s/mem".into(), false)));
    assert_eq!(c.state().as_str(), "Paused");
    // Started now: no second load, no InstanceStart, no pre-boot resource.
    refused(&mut c, "PUT", "/snapshot/load", LOAD, "before the microVM is started");
    refused(&mut c, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#, "already started");
    refused(&mut c, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#, "after starting");
    ok(&mut c, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(c.state().as_str(), "Running");

    // The deprecated mem_file_path form, resumed at once.
    let mut c = ctl();
    ok(&mut c, "PUT", "/snapshot/load", r#"{"snapshot_path": "/a", "mem_file_path": "/b", "resume_vm": true}"#);
    assert_eq!(c.vm().calls.last(), Some(&FakeCall::LoadSnapshot("/a".into(), "/b".into(), true)));
    assert_eq!(c.state().as_str(), "Running");
}
