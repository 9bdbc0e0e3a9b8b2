//! The API socket: one thread, `poll(2)` over a shutdown eventfd, the
//! listening Unix socket and at most `Limits::max_connections` client
//! connections, all non-blocking. Each connection's bytes go through a
//! [`Connection`]; each complete request goes to the [`Controller`].
//!
//! The thread installs its own seccomp filter ([`ThreadKind::Api`]) before
//! it serves anything, and removes the socket file when it stops, through
//! a descriptor of the socket's directory opened at bind time (so this
//! works after a chroot).

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::api::control::VmControl;
use crate::api::http::{busy_response, Connection, Limits};
use crate::api::resources::{ConfigFile, HostChecks};
use crate::api::router::Controller;
use crate::seccomp::{self, SeccompError, SeccompMode, ThreadKind};

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created at this path (it exists already, or
    /// its directory is missing or not writable).
    #[error("cannot listen on the API socket {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A host resource (eventfd, thread, the socket's owner) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The API thread's seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Stops a running server from any thread.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<EventFd>);

impl ShutdownHandle {
    /// Asks the server loop to return (open connections are closed, the
    /// socket file removed).
    pub fn shutdown(&self) {
        let _ = self.0.write(1);
    }
}

/// How [`ApiServer::spawn`] serves a VM.
#[derive(Debug)]
pub struct ServeOptions {
    /// The instance id `GET /` reports (Firecracker's `--id`).
    pub id: String,
    /// The API thread's seccomp filter (its own allow-list).
    pub seccomp: SeccompMode,
    /// The configuration the VM was already started from (`ember serve
    /// --config-file`); `None`: the API configures and starts it.
    pub started: Option<ConfigFile>,
}

/// The running API thread.
pub struct ApiThread {
    thread: JoinHandle<()>,
    shutdown: ShutdownHandle,
}

impl ApiThread {
    /// A handle that stops the server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Stops the server and waits for its thread to end; the socket file
    /// is removed.
    pub fn stop(self) {
        self.shutdown.shutdown();
        let _ = self.thread.join();
    }
}

struct Client {
    stream: UnixStream,
    conn: Connection,
    /// When the request at the head of the input started arriving.
    request_start: Option<Instant>,
    last_active: Instant,
}

/// An API server bound to its socket, ready to run.
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// The socket's directory and name in it, to remove the socket file
    /// wherever the process has moved its root since.
    dir: OwnedFd,
    name: CString,
    limits: Limits,
    shutdown: Arc<EventFd>,
}

impl ApiServer {
    /// Creates the socket at `path` (which must not exist: a stale socket
    /// is an error naming it, as in Firecracker), mode 0600, and listens.
    /// Clients can connect as soon as this returns; they are answered once
    /// the server runs.
    pub fn bind(path: &Path, limits: Limits) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind { path: path.to_path_buf(), source };
        let name = path.file_name().ok_or_else(|| bind_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let name = CString::new(name.as_bytes()).map_err(|_| bind_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(d) => CString::new(d.as_os_str().as_bytes()),
            None => CString::new("."),
        }
        .map_err(|_| bind_err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(bind_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
            dir,
            name,
            limits,
            shutdown: Arc::new(
                EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .map_err(io_err("creating the API shutdown eventfd"))?,
            ),
        };
        // From here on, dropping `server` removes the socket file.
        server.listener.set_nonblocking(true).map_err(bind_err)?;
        // SAFETY: `dir` and `name` are valid; the call only changes the mode.
        if unsafe { libc::fchmodat(server.dir.as_raw_fd(), server.name.as_ptr(), 0o600, 0) } != 0 {
            return Err(bind_err(io::Error::last_os_error()));
        }
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the socket file to `uid`:`gid` (the user a VM drops to with
    /// `--user`), so that the process can still remove it at the end; that
    /// user can then also connect.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), ServerError> {
        // SAFETY: `dir` and `name` are valid; the call only changes the owner.
        let r =
            unsafe { libc::fchownat(self.dir.as_raw_fd(), self.name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
        if r != 0 {
            return Err(io_err(format!("giving the API socket {} to {uid}:{gid}", self.path.display()))(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Serves `vm` on a thread of its own (`ember-api`) until the returned
    /// [`ApiThread`] is stopped. Returns once the thread has installed its
    /// seccomp filter.
    pub fn spawn<V: VmControl + 'static>(self, vm: V, options: ServeOptions) -> Result<ApiThread, ServerError> {
        self.spawn_while(vm, options, || ()).map(|(t, ())| t)
    }

    /// [`ApiServer::spawn`], running `meanwhile` on this thread while the
    /// new one installs its seccomp filter (`ember serve` makes its
    /// [`crate::VmPrelude`] then); returns its result with the thread.
    pub fn spawn_while<V: VmControl + 'static, T>(
        self,
        vm: V,
        options: ServeOptions,
        meanwhile: impl FnOnce() -> T,
    ) -> Result<(ApiThread, T), ServerError> {
        let controller = match options.started {
            Some(config) => Controller::started(vm, options.id, config),
            None => Controller::new(vm, options.id, HostChecks::Now),
        };
        let (thread, shutdown, t) = self.spawn_controller_while(controller, options.seccomp, drop, meanwhile)?;
        Ok((ApiThread { thread, shutdown }, t))
    }

    /// Runs `controller` on the `ember-api` thread, which installs the
    /// `seccomp` filter first; returns the thread, which ends with
    /// `finish(controller)`, once the filter is in place.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn spawn_controller<V: VmControl + 'static, R: Send + 'static>(
        self,
        controller: Controller<V>,
        seccomp: SeccompMode,
        finish: fn(Controller<V>) -> R,
    ) -> Result<(JoinHandle<R>, ShutdownHandle), ServerError> {
        self.spawn_controller_while(controller, seccomp, finish, || ()).map(|(j, s, ())| (j, s))
    }

    /// [`ApiServer::spawn_controller`], running `meanwhile` here while the
    /// thread installs its filter.
    fn spawn_controller_while<V: VmControl + 'static, R: Send + 'static, T>(
        self,
        controller: Controller<V>,
        seccomp: SeccompMode,
        finish: fn(Controller<V>) -> R,
        meanwhile: impl FnOnce() -> T,
    ) -> Result<(JoinHandle<R>, ShutdownHandle, T), ServerError> {
        let bpf = seccomp::filter(ThreadKind::Api, seccomp, false)?;
        let shutdown = self.shutdown_handle();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ember-api".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let mut controller = controller;
                if let Some(bpf) = &bpf {
                    if let Err(e) = seccomp::install(ThreadKind::Api, bpf) {
                        let _ = ready_tx.send(Err(e));
                        return finish(controller);
                    }
                }
                let _ = ready_tx.send(Ok(()));
                self.run(&mut controller);
                finish(controller)
            })
            .map_err(io_err("spawning the API thread"))?;
        let t = meanwhile();
        match ready_rx.recv() {
            Ok(Ok(())) => Ok((thread, shutdown, t)),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e.into())
            }
            Err(_) => {
                let _ = thread.join();
                Err(io_err("starting the API thread")(io::Error::other("the thread ended before serving")))
            }
        }
    }

    /// A handle that stops [`ApiServer::run`].
    pub(crate) fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves requests until [`ShutdownHandle::shutdown`].
    pub(crate) fn run<V: VmControl>(self, controller: &mut Controller<V>) {
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
            let stream = match accept_nonblocking(&self.listener) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: leave the rest in the backlog.
                    log::warn!("API server: accept failed: {e}");
                    return;
                }
            };
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
        // SAFETY: `dir` and `name` are valid; removes the socket's entry.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            log::warn!("API socket {} not removed: {e}", self.path.display());
        }
    }
}

/// Accepts one connection, non-blocking and close-on-exec from the start
/// (no `ioctl(FIONBIO)`: the API thread's filter allows no ioctl).
fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    // SAFETY: accept4 on a listening socket we own; no address is asked for.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new connected socket owned by nothing else.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
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
