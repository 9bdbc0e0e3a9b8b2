//! What the process-level benches share: the `ember` binary and test
//! guests, spawning, the API socket's client, output waits, figures.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `ember` binary cargo built for this bench.
pub fn ember() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ember"))
}

/// Builds test guest `name` (tests/guests) and returns its ELF.
pub fn guest(name: &str) -> PathBuf {
    let out = repo().join("target/guests");
    let st = Command::new("make")
        .args(["-s", "-C"])
        .arg(repo().join("tests/guests"))
        .arg(format!("O={}", out.display()))
        .arg(format!("{name}.elf"))
        .status()
        .expect("make");
    assert!(st.success(), "building guest {name}");
    out.join(format!("{name}.elf"))
}

/// `ember args`, stdout piped, stdin and stderr discarded.
pub fn spawn(args: &[&str]) -> Child {
    Command::new(ember())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ember")
}

/// Kills and reaps `child`.
pub fn end(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `child`'s stdout until `needle` has appeared.
pub fn wait_for_output(child: &mut Child, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut b = [0u8; 256];
    let out = child.stdout.as_mut().unwrap();
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = out.read(&mut b).unwrap();
        assert!(n > 0, "ember exited early");
        seen.extend_from_slice(&b[..n]);
    }
}

/// The middle value.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `d` in milliseconds, three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One request on a keep-alive connection; the status.
pub fn call(s: &mut UnixStream, method: &str, path: &str, body: &str) -> u16 {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    round_trip(s, req.as_bytes(), &mut Vec::new())
}

/// Sends the raw request `req` on a keep-alive connection and reads its
/// whole response into `buf`; the status.
pub fn round_trip(s: &mut UnixStream, req: &[u8], buf: &mut Vec<u8>) -> u16 {
    s.write_all(req).unwrap();
    buf.clear();
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(h)) = r.parse(buf) {
            let len = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap());
            if buf.len() >= h + len {
                return r.code.unwrap();
            }
        }
    }
}

/// Waits for API sockets to appear in one directory without timer
/// wake-ups: an inotify watch on the directory, made once and kept (an
/// inotify instance's close waits for an SRCU grace period, several
/// milliseconds here, which would land inside the measured boot).
pub struct SocketWatch {
    fd: std::os::fd::OwnedFd,
}

impl SocketWatch {
    /// A watch for names created in (or moved into) `dir`.
    pub fn new(dir: &Path) -> SocketWatch {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: inotify_init1 has no preconditions; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(fd >= 0, "inotify_init1: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cdir.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO) };
        assert!(wd >= 0, "inotify_add_watch {}: {}", dir.display(), std::io::Error::last_os_error());
        SocketWatch { fd }
    }

    fn drain(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a local buffer from our non-blocking fd.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }

    /// Connects to `path` (in the watched directory) once it accepts:
    /// sleeps on the watch while it does not exist, yields while it exists
    /// but does not accept yet (bound, not yet listening). Events from
    /// before the call are only a reason to try once more. Panics 10 s
    /// after `since`.
    pub fn connect(&self, path: &Path, since: Instant) -> UnixStream {
        use std::os::fd::AsRawFd;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return s,
                Err(e) if since.elapsed() >= Duration::from_secs(10) => {
                    panic!("the API socket never became ready: {e}")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    self.drain();
                }
                Err(_) => std::thread::yield_now(),
            }
        }
    }
}

/// Connects to the API socket at `path` as soon as it accepts, trying
/// every 20 µs.
pub fn connect_polled(path: &Path, since: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(_) if since.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_micros(20)),
            Err(e) => panic!("the API socket never became ready: {e}"),
        }
    }
}

/// /proc/meminfo as (field, KiB) pairs.
pub fn meminfo() -> Vec<(String, i64)> {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    m.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Field `k` of a [`meminfo`] read (0 if absent).
pub fn field(m: &[(String, i64)], k: &str) -> i64 {
    m.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or(0)
}
