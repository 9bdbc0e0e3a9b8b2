//! A third-party Firecracker client drives ember's API socket, unmodified:
//! firecracker-python (PyPI, pinned) through configure → start → pause →
//! resume → stop (Ctrl-Alt-Del), against the server with a fake VM. The
//! client's requests are recorded and checked.
//!
//! The client is installed once into `target/pyenv-firecracker` (a
//! virtualenv, from PyPI) when it is not there yet; that needs `python3`
//! with `venv` and network access to PyPI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ember::api::{ApiServer, Limits};
use ember::fuzzing::api::{spawn_controller, Controller, FakeCall, FakeVm, HostChecks};
use ember::SeccompMode;

/// The pinned client version.
const CLIENT: &str = "firecracker-python==0.0.5";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, created on first use. The tests of this file
/// run in parallel: one installs, the others wait for it.
fn client_python() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = repo().join("target/pyenv-firecracker");
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == CLIENT) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 is needed");
    assert!(st.success(), "python3 -m venv {} failed (Debian: apt-get install python3-venv)", venv.display());
    let st = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", CLIENT])
        .status()
        .expect("pip");
    assert!(st.success(), "pip install {CLIENT} failed (PyPI must be reachable)");
    std::fs::write(&marker, CLIENT).unwrap();
    python
}

#[test]
fn firecracker_python_drives_the_api() {
    let python = client_python();
    let data = std::env::temp_dir().join(format!("ember-api-client-{}", std::process::id()));
    let id = "vm0";
    std::fs::create_dir_all(data.join(id)).unwrap();
    let sock = data.join(id).join("firecracker.socket");
    let _ = std::fs::remove_file(&sock);
    let server = ApiServer::bind(&sock, Limits::default()).unwrap();
    let (thread, stop) =
        spawn_controller(server, Controller::new(FakeVm::new(), id, HostChecks::Never), SeccompMode::Kill).unwrap();

    let out = Command::new(&python)
        .arg(repo().join("tests/api/firecracker_python_client.py"))
        .arg(&data)
        .arg(id)
        .args(["/images/vmlinux", "/images/rootfs.ext4"])
        .env("HOME", &data) // the library writes nothing else; keep it in the scratch dir
        .output()
        .unwrap();
    stop.shutdown();
    let controller = thread.join().expect("API thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&data);
    assert!(out.status.success() && stdout.contains("DONE"), "client failed:\n{stdout}\n{stderr}");

    // What the client sent, as the server answered it.
    let exchanges: Vec<serde_json::Value> =
        stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(String, String, u64)> = exchanges
        .iter()
        .map(|e| {
            (e["method"].as_str().unwrap().into(), e["path"].as_str().unwrap().into(), e["status"].as_u64().unwrap())
        })
        .collect();
    let want: Vec<(&str, &str, u64)> = vec![
        ("GET", "/", 200),
        ("GET", "/version", 200),
        ("PUT", "/boot-source", 204),
        ("PUT", "/drives/rootfs", 204),
        ("PUT", "/machine-config", 204),
        ("PUT", "/network-interfaces/eth0", 204),
        ("GET", "/machine-config", 200),
        ("PUT", "/machine-config", 400),
        ("PUT", "/actions", 204),
    ];
    let got: Vec<(&str, &str, u64)> = seen.iter().map(|(m, p, s)| (m.as_str(), p.as_str(), *s)).collect();
    assert_eq!(&got[..want.len()], &want[..], "{stdout}");
    // The manager's calls were made on their own sessions (not hooked);
    // the last hooked exchange is the Ctrl-Alt-Del.
    assert_eq!(got.last(), Some(&("PUT", "/actions", 204)));
    println!("firecracker-python sent:\n{stdout}");

    let calls = &controller.vm().calls;
    let FakeCall::Start { kernel, vcpus, memory, disks, nets, cmdline } = &calls[0] else { panic!("{calls:?}") };
    assert_eq!(kernel, Path::new("/images/vmlinux"));
    assert_eq!((*vcpus, *memory), (2, 256 << 20));
    assert_eq!(disks, &[PathBuf::from("/images/rootfs.ext4")]);
    assert_eq!(nets, &["tap0"]);
    assert!(cmdline.ends_with(" root=/dev/vda rw"), "{cmdline}");
    assert_eq!(&calls[1..], [FakeCall::Pause, FakeCall::Resume, FakeCall::CtrlAltDel]);
}

/// The same client, unmodified, against `ember serve` with a real VM: the
/// `keyboard` guest (it drives the i8042 as Linux does and exits 0 once
/// Ctrl+Alt+Del arrives) with the client's drive and its NIC on `tap0` in
/// a network namespace. The client configures and starts it, pauses and
/// resumes it through its VMM manager, and stops it with SendCtrlAltDel:
/// the guest sees the keys and exits, and so does `ember serve`.
#[test]
fn firecracker_python_drives_ember_serve_with_a_real_guest() {
    if !common::kvm_available() {
        return;
    }
    let Some(ns) = common::NetNs::new("apipy", "172.16.0.1") else { return };
    let python = client_python();
    let data = common::scratch("api-client-vm");
    let id = "vm0";
    std::fs::create_dir_all(data.join(id)).unwrap();
    let sock = data.join(id).join("firecracker.socket");
    let rootfs = data.join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let kernel = common::guest("keyboard");
    let e = common::ember();
    let mut args = ns.prefix();
    for a in [e.to_str().unwrap(), "serve", "--api-sock", sock.to_str().unwrap(), "--id", id, "--log-level", "info"] {
        args.push(a.to_string());
    }
    let mut vmm = common::Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = Instant::now();
    // The file exists from bind(2); connections are accepted from listen(2).
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "no socket: {}", vmm.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(&python)
        .arg(repo().join("tests/api/firecracker_python_client.py"))
        .arg(&data)
        .arg(id)
        .arg(&kernel)
        .arg(&rootfs)
        .env("HOME", &data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("DONE"), "client failed:\n{stdout}\n{stderr}\n{}", vmm.stderr());
    // The keys reached the guest, which exited 0: so did ember serve.
    let t = Instant::now();
    let status = loop {
        if let Some(s) = vmm.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "ember serve still runs: {}\n{}", vmm.stdout(), vmm.stderr());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(vmm.stdout().contains("KBD OK"), "{}\n{}", vmm.stdout(), vmm.stderr());
    assert_eq!(status.code(), Some(0), "{}", vmm.stderr());
    assert!(!sock.exists(), "the socket is removed");
    let _ = std::fs::remove_dir_all(&data);
}
