//! A third-party Firecracker client drives ember's API socket, unmodified:
//! firecracker-python (PyPI, pinned) through configure → start → pause →
//! resume → stop (Ctrl-Alt-Del), against the server with a fake VM. The
//! client's requests are recorded and checked.
//!
//! The client is installed once into `target/pyenv-firecracker` (a
//! virtualenv, from PyPI) when it is not there yet; that needs `python3`
//! with `venv` and network access to PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use ember::api::{ApiServer, Limits};
use ember::fuzzing::api::{spawn_controller, Controller, FakeCall, FakeVm, HostChecks};
use ember::SeccompMode;

/// The pinned client version.
const CLIENT: &str = "firecracker-python==0.0.5";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, created on first use.
fn client_python() -> PathBuf {
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
