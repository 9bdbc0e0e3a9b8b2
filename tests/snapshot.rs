//! Snapshots (issue 19, docs/snapshot.md): the `count` guest prints an
//! increasing counter; it is paused, written to a snapshot, stopped, and
//! restored into a new VM (in this process through the library, and in a
//! new `ember restore` process), where the count goes on with no gap and
//! no repeat. Bad snapshot files are refused with a clear error.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ember::snapshot::{MemoryBacking, RestoreConfig, SnapshotError, SnapshotFiles};
use ember::{SerialCapture, SerialConfig, Vm, VmConfig, VmExit};

fn count_config(vcpus: u8, console: &SerialCapture) -> VmConfig {
    let mut config = VmConfig::new(guest("count"));
    config.memory = 32 << 20;
    config.vcpus = vcpus;
    config.cmdline = "spin=20000".into();
    config.serial = SerialConfig::Capture(console.clone());
    config
}

/// Waits until the guest has printed `count n`.
fn wait_count(console: &SerialCapture, n: u64) {
    assert!(console.wait_for(&format!("count {n}\r\n"), Duration::from_secs(120)), "console: {:?}", console.text());
}

/// Boots the count guest, lets it count to 3, pauses it, snapshots it into
/// `dir` and stops it; returns its console text.
fn count_snapshot(vcpus: u8, dir: &Path) -> String {
    let console = SerialCapture::new();
    let vm = Vm::new(count_config(vcpus, &console)).expect("build").start().expect("start");
    let handle = vm.handle();
    wait_count(&console, 3);
    let files = SnapshotFiles::in_dir(dir);
    assert!(matches!(handle.snapshot(&files), Err(SnapshotError::NotPaused)), "a running VM was snapshotted");
    handle.pause().expect("pause");
    let before = console.text();
    let info = handle.snapshot(&files).expect("snapshot");
    assert_eq!(info.memory_bytes, 32 << 20);
    assert!(info.memory_written > 0 && info.memory_written < info.memory_bytes, "{info:?}");
    assert_eq!(std::fs::metadata(&files.memory).unwrap().len(), 32 << 20);
    // Still paused, and nothing was printed while the snapshot was taken.
    assert!(handle.is_paused());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(console.text(), before);
    handle.stop();
    assert_eq!(vm.wait(), VmExit::Stopped);
    before
}

fn restore_counting(dir: &Path, backing: MemoryBacking, before: &str) {
    let console = SerialCapture::new();
    let mut rc = RestoreConfig::new(SnapshotFiles::in_dir(dir));
    rc.backing = backing;
    rc.serial = SerialConfig::Capture(console.clone());
    let vm = Vm::restore(rc).expect("restore").start().expect("start");
    let last = assert_counts_consecutive(&counts(before));
    wait_count(&console, last + 5);
    vm.handle().stop();
    assert_eq!(vm.wait(), VmExit::Stopped);
    // The restored guest's first output continues the line and the count
    // where the snapshot stopped: no gap, no repeat.
    let all = format!("{before}{}", console.text());
    let after = assert_counts_consecutive(&counts(&all));
    assert!(after >= last + 5, "{all:?}");
}

#[test]
fn a_restored_guest_counts_on_without_gap_or_repeat() {
    if !kvm_available() {
        return;
    }
    for vcpus in [1, 2] {
        let dir = scratch(&format!("snap-count-{vcpus}"));
        let before = count_snapshot(vcpus, &dir);
        restore_counting(&dir, MemoryBacking::Lazy, &before);
        // The same snapshot twice, and with its memory copied in.
        restore_counting(&dir, MemoryBacking::Copy, &before);
    }
}

#[test]
fn bad_snapshot_files_are_refused_with_a_clear_error() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snap-bad");
    count_snapshot(1, &dir);
    let files = SnapshotFiles::in_dir(&dir);
    let state = std::fs::read(&files.state).unwrap();
    let restore = |state_bytes: &[u8], mem: Option<u64>| -> String {
        let d = scratch("snap-bad-variant");
        let f = SnapshotFiles::in_dir(&d);
        std::fs::write(&f.state, state_bytes).unwrap();
        std::fs::copy(&files.memory, &f.memory).unwrap();
        if let Some(len) = mem {
            std::fs::OpenOptions::new().write(true).open(&f.memory).unwrap().set_len(len).unwrap();
        }
        let mut rc = RestoreConfig::new(f);
        rc.serial = SerialConfig::None;
        match Vm::restore(rc) {
            Ok(_) => panic!("a bad snapshot was restored"),
            Err(e) => e.to_string(),
        }
    };
    let e = restore(&state[..state.len() / 2], None);
    assert!(e.contains("truncated"), "{e}");
    let mut v = state.clone();
    v[8] = 9;
    let e = restore(&v, None);
    assert!(e.contains("format version 9"), "{e}");
    for at in [30, state.len() / 2, state.len() - 2] {
        let mut f = state.clone();
        f[at] ^= 0x10;
        let e = restore(&f, None);
        assert!(e.contains("corrupt"), "byte {at}: {e}");
    }
    let e = restore(&state, Some(16 << 20));
    assert!(e.contains("16777216 bytes") && e.contains("33554432"), "{e}");
    let e = restore(b"not a snapshot at all, surely", None);
    assert!(e.contains("not an ember state file"), "{e}");
}

fn put(sock: &Path, path: &str, body: &str) -> (u16, String) {
    call(sock, "PUT", path, Some(body))
}

/// Pauses the VM behind `sock`, writes a snapshot to `dir` through the
/// API, and returns the console up to the pause.
fn api_snapshot(sock: &Path, ember: &mut Spawned, dir: &Path) -> String {
    let files = SnapshotFiles::in_dir(dir);
    let body =
        format!(r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#, files.state.display(), files.memory.display());
    // Not while it runs (Firecracker's rule too).
    let (st, b) = put(sock, "/snapshot/create", &body);
    assert_eq!(st, 400, "{b}");
    assert!(json(&b)["fault_message"].as_str().unwrap().contains("not paused"), "{b}");
    assert_eq!(call(sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    std::thread::sleep(Duration::from_millis(300)); // what was in the pipe arrives
    let frozen = ember.stdout();
    let diff = body.replace('}', r#", "snapshot_type": "Diff"}"#);
    let (st, b) = put(sock, "/snapshot/create", &diff);
    assert_eq!(st, 400, "{b}");
    assert!(json(&b)["fault_message"].as_str().unwrap().contains("Diff"), "{b}");
    let (st, b) = put(sock, "/snapshot/create", &body);
    assert_eq!(st, 204, "{b}\n{}", ember.stderr());
    assert_eq!(state(sock), "Paused");
    frozen
}

/// The count guest across three processes, seccomp on (the default): it is
/// started through `ember serve`'s API, paused and snapshotted; a second
/// `ember serve` loads the snapshot (`PUT /snapshot/load`, paused), resumes
/// it, and snapshots the restored VM again; `ember restore` carries on
/// from that second snapshot. The count never skips or repeats.
#[test]
fn snapshots_through_the_api_and_the_cli_chain_across_processes() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snap-api");
    let (first, second) = (dir.join("one"), dir.join("two"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();

    // 1. Boot through the API and snapshot.
    let sock = dir.join("a.sock");
    let mut a = serve(&sock, &["--log-level", "info"]);
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "spin=20000"}}"#, guest("count").display());
    for (p, b) in [
        ("/boot-source", boot.as_str()),
        ("/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 32}"#),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let (st, body) = put(&sock, p, b);
        assert_eq!(st, 204, "{p}: {body}\n{}", a.stderr());
    }
    wait_stdout_count(&mut a, 3);
    let mut console = api_snapshot(&sock, &mut a, &first);
    drop(a);

    // 2. Load it in a new process, paused; resume; snapshot again.
    let sock = dir.join("b.sock");
    let mut b = serve(&sock, &["--log-level", "info"]);
    let files = SnapshotFiles::in_dir(&first);
    let load = |extra: &str| {
        format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_path": "{}", "backend_type": "File"}}{extra}}}"#,
            files.state.display(),
            files.memory.display()
        )
    };
    // Refused: a Uffd backend, dirty tracking, both memory fields.
    for bad in [
        load("").replace("\"File\"", "\"Uffd\""),
        load(r#", "track_dirty_pages": true"#),
        load(&format!(r#", "mem_file_path": "{}""#, files.memory.display())),
    ] {
        let (st, body) = put(&sock, "/snapshot/load", &bad);
        assert_eq!(st, 400, "{bad}: {body}");
    }
    assert_eq!(state(&sock), "Not started");
    let (st, body) = put(&sock, "/snapshot/load", &load(""));
    assert_eq!(st, 204, "{body}\n{}", b.stderr());
    assert_eq!(state(&sock), "Paused");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.stdout(), "", "the loaded VM ran before it was resumed");
    let (st, body) = put(&sock, "/snapshot/load", &load(""));
    assert_eq!(st, 400, "a second load: {body}");
    assert_eq!(call(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0, 204);
    let last = assert_counts_consecutive(&counts(&console));
    wait_stdout_count(&mut b, last + 3);
    // Not over the memory file its RAM is mapped from.
    assert_eq!(call(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
    let own = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        second.join("state").display(),
        files.memory.display()
    );
    let (st, body) = put(&sock, "/snapshot/create", &own);
    assert_eq!(st, 400, "{body}");
    assert!(json(&body)["fault_message"].as_str().unwrap().contains("restored from"), "{body}");
    assert_eq!(std::fs::metadata(&files.memory).unwrap().len(), 32 << 20, "the backing file was changed");
    assert_eq!(call(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0, 204);
    console.push_str(&api_snapshot(&sock, &mut b, &second));
    drop(b);

    // 3. `ember restore` from the second snapshot.
    let files = SnapshotFiles::in_dir(&second);
    let args = ["restore", "--snapshot", files.state.to_str().unwrap(), "--mem-file", files.memory.to_str().unwrap()];
    let mut c = Spawned::new(ember(), &args);
    let last = assert_counts_consecutive(&counts(&console));
    wait_stdout_count(&mut c, last + 3);
    c.stop();
    console.push_str(&c.stdout());
    let end = assert_counts_consecutive(&counts(&console));
    assert!(end >= last + 3, "{console:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_refuses_missing_and_bad_snapshot_files() {
    let dir = scratch("snap-cli-bad");
    let state = dir.join("state");
    std::fs::write(&state, b"EMBERSNP\x01\0\0\0garbage").unwrap();
    let mem = dir.join("memory");
    std::fs::write(&mem, b"").unwrap();
    let o = run_ember(
        &["restore", "--snapshot", state.to_str().unwrap(), "--mem-file", mem.to_str().unwrap()],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(o.code(), 1, "{o:?}");
    assert!(o.stderr.contains("truncated"), "{}", o.stderr);
    let o = run_ember(
        &["restore", "--snapshot", "/nonexistent/state", "--mem-file", "/nonexistent/mem"],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(o.code(), 1, "{o:?}");
    assert!(o.stderr.contains("/nonexistent/state"), "{}", o.stderr);
    let o = run_ember(
        &["restore", "--snapshot", "s", "--mem-file", "m", "--memory-backing", "eager"],
        None,
        Duration::from_secs(30),
    );
    assert_eq!(o.code(), 2, "{o:?}");
    assert!(o.stderr.contains("'eager'"), "{}", o.stderr);
}

/// A guest that does nothing but port I/O (the count guest without its
/// spin: every instruction of note writes the UART or polls its status),
/// snapshotted and restored ten times in a chain, each time wherever it
/// happened to be: not one byte is repeated or lost across the chain (a
/// snapshot taken before KVM finished the last `out`/`in` would replay or
/// drop it).
#[test]
fn a_chain_of_restores_mid_port_io_repeats_and_loses_no_byte() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("snap-chain");
    let mut text = String::new();
    let mut console = SerialCapture::new();
    let mut config = count_config(1, &console);
    config.cmdline = "spin=0".into();
    let mut vm = Vm::new(config).expect("build").start().expect("start");
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(30 + 17 * round));
        let handle = vm.handle();
        handle.pause().expect("pause");
        let files = SnapshotFiles { state: dir.join(format!("s{round}")), memory: dir.join(format!("m{round}")) };
        let info = handle.snapshot(&files).expect("snapshot");
        // Sparse each time, the restored VMs' snapshots too (the old file's
        // data and the pages written since).
        assert!(info.memory_written < info.memory_bytes / 4, "round {round}: {info:?}");
        handle.stop();
        vm.wait();
        text.push_str(&console.text());
        console = SerialCapture::new();
        let mut rc = RestoreConfig::new(files);
        rc.serial = SerialConfig::Capture(console.clone());
        vm = Vm::restore(rc).expect("restore").start().expect("start");
    }
    std::thread::sleep(Duration::from_millis(100));
    vm.handle().stop();
    vm.wait();
    text.push_str(&console.text());
    let lines: Vec<&str> = text.split("\r\n").collect();
    // Every complete line is exactly the next count.
    for (i, l) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(*l, format!("count {}", i + 1), "line {} of the chain", i + 1);
    }
    assert!(lines.len() > 20, "{} lines", lines.len());
}

/// The words of blk_soak's region `r` as it writes them for iteration
/// `seed` (tests/guests/blk_soak.c, tests/soak.rs).
fn soak_word(seed: u64, k: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(k.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    x ^= x >> 31;
    x
}

/// The last `SOAK iters=N` a console shows.
fn soak_iters(text: &str) -> u64 {
    text.lines().rev().find_map(|l| l.trim().strip_prefix("SOAK iters=")?.parse().ok()).unwrap_or(0)
}

/// virtio-blk across a restore, on each transport: the blk_soak guest
/// (write a region, flush, read it back and compare, on and on, with
/// interrupts) is snapshotted mid-run and restored; it goes on writing and
/// verifying (a request lost, repeated or answered with stale queue
/// indices stops it or makes it print a mismatch), and afterwards every
/// region of the image holds exactly the pattern of one iteration.
#[test]
fn a_disk_keeps_working_across_a_restore() {
    if !kvm_available() {
        return;
    }
    for transport in [ember::VirtioTransport::Pci, ember::VirtioTransport::Mmio] {
        let dir = scratch(&format!("snap-blk-{}", transport.name()));
        let img = dir.join("soak.img");
        std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
        let console = SerialCapture::new();
        let mut config = VmConfig::new(guest("blk_soak"));
        config.memory = 64 << 20;
        config.cmdline =
            format!("irq=1 report=8{}", if transport == ember::VirtioTransport::Pci { " transport=pci" } else { "" });
        config.serial = SerialConfig::Capture(console.clone());
        let mut disk = ember::DiskConfig::new(&img);
        disk.transport = transport;
        config.disks.push(disk);
        let vm = Vm::new(config).expect("build").start().expect("start");
        assert!(console.wait_for("SOAK iters=16\r\n", Duration::from_secs(120)), "{}", console.text());
        let handle = vm.handle();
        handle.pause().expect("pause");
        let files = SnapshotFiles::in_dir(&dir);
        handle.snapshot(&files).expect("snapshot");
        handle.stop();
        vm.wait();
        let before = soak_iters(&console.text());

        let after = SerialCapture::new();
        let mut rc = RestoreConfig::new(files);
        rc.serial = SerialConfig::Capture(after.clone());
        let vm = Vm::restore(rc).expect("restore").start().expect("start");
        let want = before + 64;
        assert!(
            after.wait_for(&format!("SOAK iters={want}\r\n"), Duration::from_secs(120)),
            "{}: the restored guest stopped at {} (snapshot at {before})\n{}",
            transport.name(),
            soak_iters(&after.text()),
            after.text()
        );
        vm.handle().stop();
        vm.wait();
        assert!(!after.text().contains("MISMATCH"), "{}", after.text());
        // Every region holds one whole iteration's pattern.
        let d = std::fs::read(&img).unwrap();
        for r in 0..64u64 {
            let off = ((2048 + r * 128) * 512) as usize;
            let seed = u64::from_le_bytes(d[off..off + 8].try_into().unwrap());
            assert_eq!(seed % 64, r, "region {r}");
            for k in 1..(128 * 512 / 8) as u64 {
                let at = off + k as usize * 8;
                let w = u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
                assert_eq!(w, soak_word(seed, k), "{}: region {r} word {k}", transport.name());
            }
        }
    }
}

/// virtio-net across a restore, in two processes, on each transport: the
/// net guest answers pings through `ember serve` (started from a config
/// file), is paused, snapshotted and killed; `ember restore` carries it on
/// on the same TAP, where it answers pings and echoes 1,003 UDP datagrams,
/// then ends on EMBER-QUIT (exit 0) with nothing dropped or malformed.
#[test]
fn a_nic_keeps_working_across_a_restore() {
    if !kvm_available() {
        return;
    }
    for transport in ["pci", "mmio"] {
        let Some(ns) = NetNs::new(&format!("snap{transport}"), "10.0.3.1") else { return };
        let dir = scratch(&format!("snap-net-{transport}"));
        let sock = dir.join("api.sock");
        let extra = if transport == "pci" { " transport=pci" } else { "" };
        let config = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "guest_ip=10.0.3.2 irq=1{extra}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64,
                                    "ember": {{"debug_exit": true, "transport": "{transport}"}}}},
                "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "{}", "guest_mac": "02:00:00:00:03:02"}}]}}"#,
            guest("net").display(),
            ns.tap
        );
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, config).unwrap();
        let mut args = ns.prefix();
        let e = ember().display().to_string();
        args.extend(
            [e.as_str(), "serve", "--api-sock", sock.to_str().unwrap(), "--config-file", cfg.to_str().unwrap()]
                .map(String::from),
        );
        let mut a = Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(a.wait_for("net: mac", Duration::from_secs(120)), "{}\n{}", a.stdout(), a.stderr());
        let ping = ns.exec(&["ping", "-c", "2", "-W", "10", "10.0.3.2"]);
        assert!(ping.status.success(), "before: {}", String::from_utf8_lossy(&ping.stdout));
        assert_eq!(call(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0, 204);
        let files = SnapshotFiles::in_dir(&dir);
        let body = format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            files.state.display(),
            files.memory.display()
        );
        let (st, b) = call(&sock, "PUT", "/snapshot/create", Some(&body));
        assert_eq!(st, 204, "{b}\n{}", a.stderr());
        let _ = a.child.kill();
        let _ = a.child.wait();

        let mut args = ns.prefix();
        args.extend(
            [
                e.as_str(),
                "restore",
                "--snapshot",
                files.state.to_str().unwrap(),
                "--mem-file",
                files.memory.to_str().unwrap(),
                "--log-level",
                "info",
            ]
            .map(String::from),
        );
        let mut b = Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
        // Once the restored VM is built, its TAP is open (a frame sent to
        // a TAP nobody holds is dropped by the kernel).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !b.stderr().contains("restored from") {
            assert!(std::time::Instant::now() < deadline, "{}", b.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
        let ping = ns.exec(&["ping", "-c", "5", "-i", "0.2", "-W", "10", "10.0.3.2"]);
        let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
        assert!(ping_out.contains("5 received"), "{transport}: after the restore: {ping_out}\n{}", b.stderr());
        let udp = ns.exec(&["python3", "-c", UDP_CLIENT, "10.0.3.2"]);
        let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
        assert!(udp_out.starts_with("OK sent=1003") && udp_out.contains("BYE"), "{transport}: {udp_out}");
        let st = b.child.wait().unwrap();
        let err = b.stderr();
        assert_eq!(st.code(), Some(0), "{}\n{err}", b.stdout());
        let stats = err.lines().find(|l| l.contains("NetStats")).unwrap_or_else(|| panic!("{err}"));
        for k in ["rx_malformed: 0", "tx_dropped: 0", "tx_malformed: 0"] {
            assert!(stats.contains(k), "{transport}: {stats}");
        }
    }
}

/// The fuzz target's seeds (generated by code) are states ember accepts,
/// and a real snapshot's state goes through the same reader and device
/// restore the target drives.
#[test]
fn the_fuzz_seeds_and_a_real_state_pass_the_fuzzed_reader() {
    use ember::fuzzing::snapshot;
    for vcpus in [1, 2] {
        let file = snapshot::encode(&snapshot::sample_payload(vcpus, 3));
        let json = snapshot::parse(&file).expect("the sample parses");
        assert_eq!(snapshot::parse(&snapshot::encode(&json)).unwrap(), json);
        snapshot::restore_fresh(&file).expect("the sample's devices restore");
    }
    if !kvm_available() {
        return;
    }
    let dir = scratch("snap-fuzzed-reader");
    count_snapshot(1, &dir);
    let state = std::fs::read(SnapshotFiles::in_dir(&dir).state).unwrap();
    snapshot::parse(&state).expect("a real state parses");
    snapshot::restore_fresh(&state).expect("a real state's devices restore into fresh ones");
}
