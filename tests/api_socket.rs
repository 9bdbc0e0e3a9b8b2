//! The API server over a real Unix socket, with raw HTTP: a whole
//! configure → start → pause → resume → Ctrl-Alt-Del session, keep-alive
//! and pipelining, and hostile clients (garbage, huge bodies, chunked
//! bodies, slowloris-style partial heads, 100 concurrent connections,
//! clients that vanish or never read). No VM: the server drives a
//! [`FakeVm`], whose recorded calls are checked at the end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember::api::{ApiServer, Limits, ShutdownHandle};
use ember::fuzzing::api::{spawn_controller, Controller, FakeCall, FakeVm, HostChecks};
use ember::SeccompMode;

struct Server {
    path: PathBuf,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<Controller<FakeVm>>>,
}

fn socket_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "ember-api-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_file(&p);
    p
}

impl Server {
    fn start(limits: Limits) -> Server {
        let path = socket_path();
        let server = ApiServer::bind(&path, limits).expect("bind");
        // The API thread's own seccomp filter is on: everything below is
        // served within its allow-list.
        let controller = Controller::new(FakeVm::new(), "sock-test", HostChecks::Never);
        let (thread, stop) = spawn_controller(server, controller, SeccompMode::Kill).expect("spawn");
        Server { path, stop, thread: Some(thread) }
    }

    fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s, buf: Vec::new() }
    }

    /// Stops the server; returns the fake VM's calls.
    fn finish(mut self) -> Vec<FakeCall> {
        self.stop.shutdown();
        let c = self.thread.take().unwrap().join().expect("the API thread panicked");
        assert!(!self.path.exists(), "the socket file is removed when the server stops");
        c.vm().calls.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn fault(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).expect("fault body is JSON");
        v["fault_message"].as_str().expect("fault_message").to_string()
    }
}

struct Client {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).expect("send");
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        self.send(req.as_bytes());
        self.response().expect("a response")
    }

    /// The next response, or None when the server closed the connection.
    fn response(&mut self) -> Option<Resp> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= n + len {
                    let body = String::from_utf8(self.buf[n..n + len].to_vec()).unwrap();
                    self.buf.drain(..n + len);
                    return Some(Resp { status, headers, body });
                }
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "connection closed inside a response: {:?}", self.buf);
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading a response: {e}"),
            }
        }
    }

    /// Expects the server to close the connection with nothing more sent.
    fn expect_closed(&mut self) {
        assert!(self.response().is_none(), "expected the server to close the connection");
    }
}

#[test]
fn a_whole_session_on_one_keep_alive_connection() {
    let srv = Server::start(Limits::default());
    let mut c = srv.connect();
    let r = c.request("GET", "/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert!(r.body.contains("\"state\":\"Not started\""), "{}", r.body);
    for (method, path, body) in [
        ("PUT", "/logger", r#"{"level": "Info", "show_level": true}"#),
        ("PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
        ("PUT", "/boot-source", r#"{"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}"#),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/rootfs.ext4", "is_root_device": true, "is_read_only": false}"#,
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#,
        ),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
    ] {
        let r = c.request(method, path, Some(body));
        assert_eq!(r.status, 204, "{method} {path}: {r:?}");
        assert!(r.body.is_empty() && r.header("Content-Length").is_none(), "204 has no body: {r:?}");
    }
    assert!(c.request("GET", "/", None).body.contains("\"state\":\"Paused\""));
    let r = c.request("PUT", "/machine-config", Some(r#"{"vcpu_count": 1, "mem_size_mib": 128}"#));
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("after starting"), "{}", r.fault());
    assert_eq!(c.request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).status, 204);
    assert!(c.request("GET", "/", None).body.contains("\"state\":\"Running\""));
    let r = c.request("GET", "/machine-config", None);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["mem_size_mib"], 256);
    assert_eq!(c.request("PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#)).status, 204);
    let r = c.request("POST", "/actions", Some("{}"));
    assert_eq!((r.status, r.header("Allow")), (405, Some("PUT")));
    drop(c);
    let calls = srv.finish();
    assert!(matches!(&calls[0], FakeCall::Logger(_)), "{calls:?}");
    let FakeCall::Start { vcpus, memory, disks, nets, cmdline, .. } = &calls[1] else { panic!("{calls:?}") };
    assert_eq!((*vcpus, *memory), (2, 256 << 20));
    assert_eq!(disks, &[PathBuf::from("/rootfs.ext4")]);
    assert_eq!(nets, &["tap0"]);
    assert_eq!(cmdline, "console=ttyS0 root=/dev/vda rw");
    assert_eq!(&calls[2..], [FakeCall::Pause, FakeCall::Resume, FakeCall::CtrlAltDel]);
}

#[test]
fn pipelined_requests_and_split_writes() {
    let srv = Server::start(Limits::default());
    let mut c = srv.connect();
    let body = r#"{"vcpu_count": 3, "mem_size_mib": 64}"#;
    let all = format!(
        "GET /version HTTP/1.1\r\n\r\nPUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /machine-config HTTP/1.1\r\n\r\n",
        body.len()
    );
    c.send(all.as_bytes());
    assert_eq!(c.response().unwrap().status, 200);
    assert_eq!(c.response().unwrap().status, 204);
    let r = c.response().unwrap();
    assert!(r.body.contains("\"vcpu_count\":3"), "{}", r.body);
    // The same request one byte at a time.
    let req = format!("PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    for b in req.as_bytes() {
        c.send(&[*b]);
    }
    assert_eq!(c.response().unwrap().status, 204);
    // Expect: 100-continue.
    c.send(
        format!("PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    assert_eq!(c.response().unwrap().status, 100);
    c.send(body.as_bytes());
    assert_eq!(c.response().unwrap().status, 204);
    // Connection: close is honoured.
    c.send(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    c.expect_closed();
}

#[test]
fn hostile_requests_get_a_clear_4xx_and_the_server_goes_on() {
    let srv = Server::start(Limits::default());
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 400),
        (b"PUT /machine-config HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n".to_vec(), 413),
        (b"PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(), 411),
        (b"PUT /machine-config HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), 400),
        (b"PUT /machine-config HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n".to_vec(), 400),
        ([b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 20000]].concat(), 431),
    ];
    for (req, status) in cases {
        let mut c = srv.connect();
        c.send(&req);
        let r = c.response().unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(&req)));
        assert_eq!(r.status, status, "{:?}: {r:?}", String::from_utf8_lossy(&req[..req.len().min(80)]));
        assert!(!r.fault().is_empty());
        assert_eq!(r.header("Connection"), Some("close"));
        c.expect_closed();
    }
    // A body over the limit that is actually sent: refused, not buffered.
    let mut c = srv.connect();
    let big = vec![b' '; 200 << 10];
    c.send(format!("PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes());
    let _ = c.s.write_all(&big); // the server may close before it is all sent
    assert_eq!(c.response().unwrap().status, 413);
    // JSON-level refusals keep the connection open.
    let mut c = srv.connect();
    let r = c.request("PUT", "/machine-config", Some("{\"vcpu_count\": 1, \"mem_size_mib\": 128, \"x\": 1}"));
    assert_eq!(r.status, 400);
    assert!(r.fault().contains('x'));
    let r = c.request("PUT", "/machine-config", Some("\u{feff}{garbage"));
    assert_eq!(r.status, 400);
    assert_eq!(c.request("GET", "/nowhere", None).status, 400);
    assert_eq!(c.request("GET", "/", None).status, 200);
    srv.finish();
}

#[test]
fn stalled_clients_do_not_hold_the_server() {
    let srv = Server::start(Limits::default());
    // Slowloris: a head that never ends; a body that never completes.
    let mut slow = srv.connect();
    slow.send(b"GET / HTTP/1.1\r\nX-A: b\r\n");
    let mut slow_body = srv.connect();
    slow_body.send(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu");
    // Others are served while both are still waiting (5 s request timeout).
    let mut quick = srv.connect();
    assert_eq!(quick.request("GET", "/", None).status, 200);
    assert_eq!(quick.request("GET", "/version", None).status, 200);
    for c in [&mut slow, &mut slow_body] {
        c.s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let r = c.s.read(&mut b);
        assert!(matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{r:?}");
    }
    srv.finish();
}

#[test]
fn slow_clients_time_out() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let srv = Server::start(limits);
    let mut slow = srv.connect();
    slow.send(b"GET / HTTP/1.1\r\n");
    let mut slow_body = srv.connect();
    slow_body.send(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu");
    slow.send(b"X-A: b\r\n");
    let r = slow.response().expect("a 408");
    assert_eq!(r.status, 408);
    assert!(!r.fault().is_empty());
    slow.expect_closed();
    assert_eq!(slow_body.response().expect("a 408").status, 408);
    slow_body.expect_closed();
    // A connection that never sends anything is closed without an answer.
    let mut mute = srv.connect();
    mute.expect_closed();
    // An idle keep-alive connection is closed (silently) after idle_timeout.
    let mut idle = srv.connect();
    assert_eq!(idle.request("GET", "/", None).status, 200);
    idle.expect_closed();
    srv.finish();
}

#[test]
fn a_hundred_concurrent_connections() {
    let srv = Server::start(Limits::default());
    let max = Limits::default().max_connections;
    // 100 clients connect at once, each then asks for its machine config.
    let mut clients: Vec<Client> = (0..100).map(|_| srv.connect()).collect();
    for c in &mut clients {
        // A refused connection may be closed already (its 503 is still
        // there to read).
        let _ = c.s.write_all(b"GET /machine-config HTTP/1.1\r\n\r\n");
    }
    let (mut ok, mut busy, mut closed) = (0, 0, 0);
    for c in &mut clients {
        match c.response() {
            Some(r) if r.status == 200 => ok += 1,
            Some(r) if r.status == 503 => {
                assert!(r.fault().contains("too many"));
                busy += 1;
            }
            Some(r) => panic!("unexpected {r:?}"),
            None => closed += 1,
        }
    }
    // None is closed without an answer: every connection that is not
    // served gets its 503.
    assert_eq!((ok + busy, closed), (100, 0), "{ok} ok, {busy} busy, {closed} closed");
    assert!(ok >= max, "at least {max} served: {ok} ok, {busy} busy");
    drop(clients);
    // 100 threads, each connecting, asking and disconnecting, at once: all
    // are answered (200, or 503 when the table is full of busy ones).
    let path = srv.path.clone();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut c = Client { s, buf: Vec::new() };
                let body = format!("{{\"vcpu_count\": {}, \"mem_size_mib\": 128}}", i % 8 + 1);
                let req = format!("PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = c.s.write_all(req.as_bytes());
                match c.response().map(|r| r.status) {
                    Some(204) => true,
                    Some(503) => false,
                    s => panic!("{s:?}: every connection gets an answer"),
                }
            })
        })
        .collect();
    let served = threads.into_iter().map(|t| t.join().unwrap()).filter(|&b| b).count();
    assert!(served > 0);
    // Still healthy.
    assert_eq!(srv.connect().request("GET", "/", None).status, 200);
    // Idle keep-alive connections (answered, nothing pending) make room
    // for new ones: the oldest is closed.
    let mut idle: Vec<Client> = (0..max).map(|_| srv.connect()).collect();
    for c in &mut idle {
        assert_eq!(c.request("GET", "/", None).status, 200);
    }
    let mut newcomer = srv.connect();
    assert_eq!(newcomer.request("GET", "/", None).status, 200);
    idle[0].expect_closed();
    assert_eq!(idle[max - 1].request("GET", "/", None).status, 200);
    srv.finish();
}

#[test]
fn clients_that_vanish_or_never_read() {
    let srv = Server::start(Limits::default());
    // Half a request, then gone.
    let mut c = srv.connect();
    c.send(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"vc");
    drop(c);
    // Thousands of pipelined requests from a client that never reads: the
    // server stops reading it (bounded output) and serves others.
    let mut flood = srv.connect();
    flood.s.set_nonblocking(true).unwrap();
    let req = b"GET /machine-config HTTP/1.1\r\n\r\n".repeat(20_000);
    let mut sent = 0;
    let t = Instant::now();
    while sent < req.len() && t.elapsed() < Duration::from_secs(2) {
        match flood.s.write(&req[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(sent < req.len(), "the server stopped taking input from a client that does not read");
    assert_eq!(srv.connect().request("GET", "/", None).status, 200);
    drop(flood);
    assert_eq!(srv.connect().request("GET", "/version", None).status, 200);
    srv.finish();
}
