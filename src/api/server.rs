//! The API socket: one thread, `poll(2)` over a shutdown eventfd, the
//! listening Unix socket and at most `Limits::max_connections` client
//! connections, all non-blocking. Each connection's bytes go through a
//! [`Connection`]; each complete request goes to the [`Controller`].

use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::api::control::VmControl;
use crate::api::http::{busy_response, Connection, Limits};
use crate::api::router::Controller;

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created at this path.
    #[error("cannot listen on the API socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A host resource (eventfd, thread) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<EventFd>);

impl ShutdownHandle {
    /// Asks the server loop to return (open connections are closed).
    pub fn shutdown(&self) {
        let _ = self.0.write(1);
    }
}

struct Client {
    stream: UnixStream,
    conn: Connection,
    /// When the request at the head of the input started arriving (or,
    /// for a connection that has sent nothing yet, when it was accepted);
    /// `None` while idle between requests.
    request_start: Option<Instant>,
    last_active: Instant,
}

/// An API server bound to its socket, ready to run.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    limits: Limits,
    shutdown: Arc<EventFd>,
}

impl ApiServer {
    /// Creates the socket at `path` (which must not exist) and listens.
    pub fn bind(path: &Path, limits: Limits) -> Result<Self, ServerError> {
        let listener =
            UnixListener::bind(path).map_err(|source| ServerError::Bind { path: path.to_path_buf(), source })?;
        listener.set_nonblocking(true).map_err(|source| ServerError::Bind { path: path.to_path_buf(), source })?;
        let shutdown = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|source| ServerError::Io { what: "creating the API shutdown eventfd", source })?;
        Ok(ApiServer { listener, path: path.to_path_buf(), limits, shutdown: Arc::new(shutdown) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that stops [`ApiServer::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs the server on a thread of its own (`ember-api`), returning the
    /// controller when it stops.
    pub fn spawn<V: VmControl + 'static>(
        self,
        controller: Controller<V>,
    ) -> Result<JoinHandle<Controller<V>>, ServerError> {
        std::thread::Builder::new()
            .name("ember-api".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut controller = controller;
                self.run(&mut controller);
                controller
            })
            .map_err(|source| ServerError::Io { what: "spawning the API thread", source })
    }

    /// Serves requests until [`ShutdownHandle::shutdown`].
    pub fn run<V: VmControl>(self, controller: &mut Controller<V>) {
        let limits = self.limits;
        let mut clients: Vec<Client> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let now = Instant::now();
            fds.clear();
            fds.push(libc::pollfd { fd: self.shutdown.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            fds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            let mut timeout: Option<Duration> = None;
            for c in &clients {
                let mut events = 0;
                if c.conn.room(&limits) > 0 {
                    events |= libc::POLLIN;
                }
                if !c.conn.output().is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events, revents: 0 });
                let deadline = match c.request_start {
                    Some(s) => s + limits.request_timeout,
                    None => c.last_active + limits.idle_timeout,
                };
                let left = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t: Duration| t.min(left)));
            }
            let ms = timeout.map_or(-1, |t| t.as_millis().min(60_000) as i32 + 1);
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("API server: poll failed: {e}");
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            let now = Instant::now();
            // Connections first (their indices match `fds[2..]`), then new ones.
            for (i, c) in clients.iter_mut().enumerate() {
                let revents = fds[i + 2].revents;
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    read_client(c, &limits, &mut buf, now);
                }
                serve_client(c, &limits, controller, now);
                if revents & libc::POLLERR != 0 && c.conn.output().is_empty() {
                    c.conn.end_of_input();
                }
            }
            for c in clients.iter_mut() {
                if c.request_start.is_some_and(|s| now >= s + limits.request_timeout) {
                    if c.conn.has_partial_request() {
                        c.conn.time_out();
                        write_client(c, now);
                    } else {
                        // Connected and never sent a request: nothing to answer.
                        c.conn.end_of_input();
                    }
                    // Do not wait for a peer that does not read.
                    c.conn.consume_output(usize::MAX);
                } else if c.request_start.is_none() && now >= c.last_active + limits.idle_timeout {
                    c.conn.end_of_input();
                    c.conn.consume_output(usize::MAX);
                }
            }
            clients.retain(|c| !c.conn.is_finished());
            if fds[1].revents & libc::POLLIN != 0 {
                self.accept_all(&mut clients, &limits, now);
            }
        }
    }

    fn accept_all(&self, clients: &mut Vec<Client>, limits: &Limits, now: Instant) {
        // A bounded number per pass, so a flood cannot starve the others.
        for _ in 0..64 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: leave the rest in the backlog.
                    log::warn!("API server: accept failed: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if clients.len() >= limits.max_connections {
                // Make room by closing the least recently used idle
                // keep-alive connection (one that was answered and has
                // nothing pending); with none, the newcomer gets a 503.
                let idle = clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| {
                        c.conn.answered() > 0
                            && c.request_start.is_none()
                            && !c.conn.has_partial_request()
                            && c.conn.output().is_empty()
                    })
                    .min_by_key(|(_, c)| c.last_active)
                    .map(|(i, _)| i);
                match idle {
                    Some(i) => {
                        clients.swap_remove(i);
                    }
                    None => {
                        let _ = send_nosignal(&stream, &busy_response());
                        continue;
                    }
                }
            }
            // A new connection has `request_timeout` to send its first request.
            clients.push(Client { stream, conn: Connection::new(), request_start: Some(now), last_active: now });
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send_nosignal(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from a valid buffer on a socket we own; MSG_NOSIGNAL
    // turns a closed peer into EPIPE instead of SIGPIPE.
    let n = unsafe {
        libc::send(stream.as_raw_fd(), data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn read_client(c: &mut Client, limits: &Limits, buf: &mut [u8], now: Instant) {
    let room = c.conn.room(limits).min(buf.len());
    if room == 0 {
        return;
    }
    match (&c.stream).read(&mut buf[..room]) {
        Ok(0) => c.conn.end_of_input(),
        Ok(n) => {
            if !c.conn.has_partial_request() {
                c.request_start = Some(now);
            }
            c.conn.receive(&buf[..n], limits);
            c.last_active = now;
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
        Err(_) => {
            c.conn.end_of_input();
            c.conn.consume_output(usize::MAX);
        }
    }
}

fn serve_client<V: VmControl>(c: &mut Client, limits: &Limits, controller: &mut Controller<V>, now: Instant) {
    let before = c.conn.answered();
    c.conn.process(limits, &mut |req| controller.handle(req));
    if c.conn.answered() != before {
        // What is left in the input is a new request, which starts now.
        c.request_start = c.conn.has_partial_request().then_some(now);
        c.last_active = now;
    }
    write_client(c, now);
}

fn write_client(c: &mut Client, now: Instant) {
    while !c.conn.output().is_empty() {
        match send_nosignal(&c.stream, c.conn.output()) {
            Ok(0) => break,
            Ok(n) => {
                c.conn.consume_output(n);
                c.last_active = now;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                // The peer is gone: drop what it will never read.
                c.conn.end_of_input();
                c.conn.consume_output(usize::MAX);
                break;
            }
        }
    }
}
