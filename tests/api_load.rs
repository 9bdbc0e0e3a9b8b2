//! The API under load while guests do I/O: two `ember serve` VMs, one
//! keeping virtio-blk busy (blk_soak.c: write, flush, read back, check)
//! and one echoing a steady UDP stream on virtio-net (net.c), each
//! configured and started through its API socket. 16 concurrent clients
//! then make 1,000 API calls to each (reads, refused pre-boot changes, bad
//! bodies, FlushMetrics, pause/resume pairs) on keep-alive connections:
//! every call gets exactly its expected answer (nothing lost), each
//! process's RSS stays flat, and the guests' I/O checks out to the last
//! byte afterwards. Then hostile clients (a huge body, a slow head, more
//! connections than the limit) each get a clear 4xx/503, and the guest's
//! I/O goes on through it all.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// API calls per VM.
const CALLS: usize = 1000;
/// Concurrent clients.
const CLIENTS: usize = 16;

/// A keep-alive HTTP/1.1 client on the API socket.
struct Client {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(sock: &Path) -> Client {
        let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// One request; the status and body of its answer. Panics if the
    /// connection ends without one (a lost call).
    fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
        } else {
            req.push_str("\r\n");
        }
        self.s.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: send: {e}"));
        self.answer().unwrap_or_else(|| panic!("{method} {path}: the connection closed without an answer"))
    }

    fn answer(&mut self) -> Option<(u16, String)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
                let status = r.code.unwrap();
                if self.buf.len() >= n + len {
                    let body = String::from_utf8(self.buf[n..n + len].to_vec()).unwrap();
                    self.buf.drain(..n + len);
                    return Some((status, body));
                }
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// (RSS in KiB, open fds) of a process.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

fn wait_socket(sock: &Path, vm: &mut Spawned) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline && vm.child.try_wait().unwrap().is_none(), "no socket: {}", vm.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The file exists from bind(2); connections are accepted from listen(2).
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "the socket never accepted a connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Configures and starts a VM through its API.
fn configure(sock: &Path, requests: &[(&str, &str, String)]) {
    let mut c = Client::connect(sock);
    for (m, p, b) in requests {
        let (st, body) = c.call(m, p, Some(b));
        assert_eq!(st, 204, "{m} {p} {b}: {body}");
    }
}

/// One client's share of the load on one VM: `n` calls, each checked.
/// Returns how many were answered as expected (all of them, or it panics).
fn load(sock: &Path, client: usize, n: usize) -> usize {
    let mut c = Client::connect(sock);
    let mut done = 0;
    let mut i = 0;
    while done < n {
        let k = (client + i) % 8;
        i += 1;
        let (st, body, want) = match k {
            0 => {
                let (st, b) = c.call("GET", "/", None);
                (st, b, 200)
            }
            1 => {
                let (st, b) = c.call("GET", "/machine-config", None);
                (st, b, 200)
            }
            2 => {
                let (st, b) = c.call("GET", "/vm/config", None);
                (st, b, 200)
            }
            3 => {
                let (st, b) = c.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#));
                assert!(b.contains("fault_message"), "{b}");
                (st, b, 400)
            }
            4 => {
                let (st, b) = c.call("PATCH", "/vm", Some(r#"{"state": "Sleeping"}"#));
                (st, b, 400)
            }
            5 => {
                let (st, b) = c.call("PUT", "/actions", Some(r#"{"action_type": "FlushMetrics"}"#));
                (st, b, 204)
            }
            6 if done + 1 < n => {
                // A pause and its resume, back to back on this connection.
                let (st, b) = c.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
                assert_eq!(st, 204, "pause: {b}");
                done += 1;
                let (st, b) = c.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
                (st, b, 204)
            }
            _ => {
                let (st, b) = c.call("GET", "/version", None);
                (st, b, 200)
            }
        };
        assert_eq!(st, want, "client {client} call {done}: {body}");
        done += 1;
    }
    done
}

const UDP_CLIENT: &str = r#"
import socket, sys, os, time
ip, stopfile = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(60)
s.connect((ip, 7))
pending = {}
seq = sent = ok = 0
while not os.path.exists(stopfile) or pending:
    while not os.path.exists(stopfile) and len(pending) < 8:
        p = seq.to_bytes(4, 'big') + os.urandom(32 + seq % 1400)
        pending[seq] = p; s.send(p); seq += 1; sent += 1
    got = s.recv(65536)
    k = int.from_bytes(got[:4], 'big')
    if pending.pop(k, None) != got:
        print("MISMATCH at", k, flush=True); sys.exit(1)
    ok += 1
    if ok % 50 == 0:
        print("ECHOED", ok, flush=True)
s.send(b"EMBER-QUIT")
s.recv(100)
print("NETLOAD sent=%d ok=%d" % (sent, ok), flush=True)
"#;

fn echoed(out: &str) -> u64 {
    out.lines().filter_map(|l| l.strip_prefix("ECHOED ")?.trim().parse().ok()).max().unwrap_or(0)
}

fn soak_iters(out: &str) -> u64 {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("SOAK iters=")?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn a_thousand_calls_from_16_clients_while_guests_do_disk_and_net_io() {
    if !kvm_available() {
        return;
    }
    let Some(ns) = NetNs::new("apiload", "10.0.5.1") else { return };
    let dir = scratch("api-load");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let (blk_sock, net_sock) = (dir.join("blk.sock"), dir.join("net.sock"));
    let stop_udp = dir.join("stop-udp");

    // The disk VM: its stdin (the guest's console input) is a pipe the
    // test writes 'q' to at the end.
    let e = ember();
    let (blk_stdout, blk_stderr) = (dir.join("blk.out"), dir.join("blk.err"));
    let mut blk = Command::new(&e)
        .args(["serve", "--api-sock", blk_sock.to_str().unwrap(), "--log-level", "info"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&blk_stdout).unwrap())
        .stderr(std::fs::File::create(&blk_stderr).unwrap())
        .spawn()
        .unwrap();
    let mut blk_in = blk.stdin.take().unwrap();
    let blk_out = || std::fs::read_to_string(&blk_stdout).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&blk_sock).is_err() {
        assert!(Instant::now() < deadline, "no socket for the disk VM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let g = guest("blk_soak");
    configure(
        &blk_sock,
        &[
            (
                "PUT",
                "/boot-source",
                format!(r#"{{"kernel_image_path": "{}", "boot_args": "irq=1 report=8"}}"#, g.display()),
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "ember": {"debug_exit": true, "transport": "mmio"}}"#.into(),
            ),
            (
                "PUT",
                "/drives/scratch",
                format!(
                    r#"{{"drive_id": "scratch", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
                    img.display()
                ),
            ),
            ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#.into()),
        ],
    );

    // The network VM, in the namespace with its TAP.
    let mut args = ns.prefix();
    for a in [e.to_str().unwrap(), "serve", "--api-sock", net_sock.to_str().unwrap(), "--log-level", "info"] {
        args.push(a.into());
    }
    let mut net = Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_socket(&net_sock, &mut net);
    let g = guest("net");
    configure(
        &net_sock,
        &[
            (
                "PUT",
                "/boot-source",
                format!(r#"{{"kernel_image_path": "{}", "boot_args": "guest_ip=10.0.5.2 irq=1"}}"#, g.display()),
            ),
            (
                "PUT",
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "ember": {"debug_exit": true, "transport": "mmio"}}"#.into(),
            ),
            (
                "PUT",
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:05:02"}"#.into(),
            ),
            ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#.into()),
        ],
    );
    assert!(net.wait_for("net: mac", Duration::from_secs(60)), "{}", net.stdout());
    let udp = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", UDP_CLIENT, "10.0.5.2", stop_udp.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while soak_iters(&blk_out()) < 16 {
        assert!(Instant::now() < deadline, "the disk guest makes no progress: {}", blk_out());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Warm-up (the first pauses and connections allocate what they keep).
    for sock in [&blk_sock, &net_sock] {
        load(sock, 6, 40);
    }
    let (blk_pid, net_pid) = (blk.id(), net.child.id());
    let before = [footprint(blk_pid), footprint(net_pid)];
    let iters0 = soak_iters(&blk_out());

    let t = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let socks: [PathBuf; 2] = [blk_sock.clone(), net_sock.clone()];
            std::thread::spawn(move || {
                // 1,000 per VM, split over the clients.
                let share = CALLS / CLIENTS + usize::from(client < CALLS % CLIENTS);
                socks.iter().map(|s| load(s, client, share)).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut answered = [0usize; 2];
    for th in threads {
        let per_vm = th.join().expect("a load client failed");
        answered[0] += per_vm[0];
        answered[1] += per_vm[1];
    }
    let took = t.elapsed();
    assert_eq!(answered, [CALLS, CALLS], "calls answered as expected, per VM");
    let after = [footprint(blk_pid), footprint(net_pid)];
    eprintln!(
        "api load: {} calls in {:.2} s from {CLIENTS} clients; RSS/fds before {before:?} after {after:?}",
        2 * CALLS,
        took.as_secs_f64()
    );
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(a.0 <= b.0 + 1024, "RSS grew {} -> {} KiB", b.0, a.0);
        // The server closes a connection when it sees its end, on its next pass.
        let pid = [blk_pid, net_pid][i];
        let deadline = Instant::now() + Duration::from_secs(10);
        // (`before` may still count the warm-up's last connection.)
        while footprint(pid).1 > b.1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(footprint(pid).1 <= b.1, "open fds grew: {} -> {}", b.1, footprint(pid).1);
    }
    let mut c = Client::connect(&blk_sock);
    let (_, info) = c.call("GET", "/", None);
    assert!(info.contains("\"Running\""), "{info}");
    drop(c);

    // Hostile clients against the disk VM while it works.
    hostile(&blk_sock);
    let iters1 = soak_iters(&blk_out());
    let deadline = Instant::now() + Duration::from_secs(120);
    while soak_iters(&blk_out()) < iters1 + 16 {
        assert!(Instant::now() < deadline, "the disk guest stopped after the hostile clients");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "api load: disk guest iterations {iters0} at the start of the load, {iters1} after it and the hostile clients"
    );

    // The end: the guests' own checks and the host's.
    std::fs::write(&stop_udp, b"").unwrap();
    let o = finish(udp, Duration::from_secs(120));
    assert!(o.stdout.contains("NETLOAD"), "UDP client: {}{}", o.stdout, o.stderr);
    assert!(echoed(&o.stdout) > 0, "{}", o.stdout);
    let st = net.child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}\n{}", net.stdout(), net.stderr());
    let stats = net.stderr().lines().find(|l| l.contains("NetStats")).unwrap_or("").to_string();
    for k in ["rx_dropped: 0", "tx_dropped: 0", "rx_malformed: 0", "tx_malformed: 0"] {
        assert!(stats.contains(k), "{stats}");
    }
    blk_in.write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let st = loop {
        if let Some(st) = blk.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = blk.kill();
            panic!("the disk VM did not end after 'q': {}", blk_out());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = blk_out();
    assert_eq!(st.code(), Some(0), "{out}\n{}", std::fs::read_to_string(&blk_stderr).unwrap_or_default());
    let done = out.lines().find(|l| l.starts_with("SOAK DONE")).unwrap_or_else(|| panic!("{out}"));
    eprintln!("api load: {done}; net: {} {stats}", o.stdout.trim());
    assert!(!blk_sock.exists() && !net_sock.exists(), "sockets removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A huge body, a slow head and more connections than the limit: each
/// gets a clear 4xx (or 503), and the API still answers after.
fn hostile(sock: &Path) {
    // A body over the limit is refused from its Content-Length alone.
    let mut c = Client::connect(sock);
    c.s.write_all(
        b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    .unwrap();
    let (st, body) = c.answer().expect("an answer to a huge body");
    assert_eq!(st, 413, "{body}");
    drop(c);
    // A head that never ends: 408 after the request timeout (5 s).
    let mut slow = Client::connect(sock);
    slow.s.write_all(b"GET / HTTP/1.1\r\nHost: loc").unwrap();
    // Meanwhile: 40 connections at once; the ones over the limit get 503.
    let mut many: Vec<UnixStream> = (0..40).map(|_| UnixStream::connect(sock).unwrap()).collect();
    let mut busy = 0;
    let mut served = 0;
    for s in &mut many {
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(n) if n > 0 => {
                assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 503"), "{:?}", &b[..n]);
                busy += 1;
            }
            _ => served += 1,
        }
    }
    assert!(busy > 0 && served > 0, "busy {busy}, kept {served}");
    drop(many);
    let t = Instant::now();
    let (st, body) = slow.answer().expect("the slow client is answered");
    assert_eq!(st, 408, "{body}");
    assert!(t.elapsed() < Duration::from_secs(30));
    // The API answers again.
    let mut c = Client::connect(sock);
    let (st, body) = c.call("GET", "/", None);
    assert_eq!(st, 200, "{body}");
    eprintln!("api load: hostile clients: 413 for a 100 MB body, 408 for a slow head, {busy} of 40 connections 503");
}
