//! `ember serve`: Firecracker's API on a Unix socket for one VM.
//!
//! Two threads share the work. The API thread (`ember-api`, under its own
//! seccomp filter that opens nothing) parses requests and drives the VM
//! through [`ServedVm`], an [`ember::api::VmControl`]. What needs files or
//! `/dev/kvm` — building and starting the VM on `InstanceStart`, opening a
//! log file — it hands to this (main) thread through a [`Mailbox`], which
//! does it and answers. Once the VM runs, the main thread waits for it to
//! end or for SIGTERM/SIGINT (through a signalfd: the signals are blocked
//! in every thread), which presses Ctrl+Alt+Del and stops the VM after
//! `--shutdown-timeout`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ember::api::{
    parse_config_file, ApiServer, ControlError, Limits, LoggerSettings, ServeOptions, VmControl, VmState,
};
use ember::snapshot::{RestoreConfig, SnapshotFiles};
use ember::{RunningVm, SerialConfig, Vm, VmConfig, VmHandle, VmPrelude};
use vmm_sys_util::eventfd::EventFd;

use crate::args::ServeArgs;
use crate::logger;

/// What the API thread asks of the main thread, with where to answer.
enum Job {
    /// Build and start this VM.
    Start(Box<VmConfig>, SyncSender<Result<VmHandle, String>>),
    /// Open this log file (and apply the settings).
    Logger(LoggerSettings, SyncSender<Result<(), String>>),
    /// Restore this snapshot and start the VM (paused unless the flag).
    Restore(Box<RestoreConfig>, bool, SyncSender<Result<VmHandle, String>>),
}

/// The API thread's side of the main thread's job queue.
struct Mailbox {
    jobs: Sender<Job>,
    wake: Arc<EventFd>,
}

impl Mailbox {
    fn ask<T>(&self, job: impl FnOnce(SyncSender<T>) -> Job) -> Result<T, ControlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs.send(job(tx)).map_err(|_| ControlError::new("ember is shutting down"))?;
        let _ = self.wake.write(1);
        rx.recv().map_err(|_| ControlError::new("ember is shutting down"))
    }
}

/// The VM as the API drives it.
struct ServedVm {
    mailbox: Mailbox,
    seccomp: ember::SeccompMode,
    handle: OnceLock<VmHandle>,
    /// With `--config-file`, the API thread is spawned before the VM starts
    /// (the main thread cannot spawn threads once the VM runs under its
    /// seccomp filter): the handle arrives here, and the first request
    /// that needs it waits for it.
    pending: Mutex<Option<Receiver<VmHandle>>>,
}

impl ServedVm {
    fn current(&self) -> Option<&VmHandle> {
        if let Some(rx) = lock(&self.pending).take() {
            if let Ok(h) = rx.recv() {
                let _ = self.handle.set(h);
            }
        }
        self.handle.get()
    }

    fn handle(&self) -> Result<&VmHandle, ControlError> {
        self.current().ok_or_else(|| ControlError::new("the VM has not started"))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmControl for ServedVm {
    fn start(&mut self, mut config: VmConfig) -> Result<(), ControlError> {
        config.seccomp = self.seccomp;
        config.drop_code_pages = true;
        let handle = self.mailbox.ask(|tx| Job::Start(Box::new(config), tx))?.map_err(ControlError)?;
        let _ = self.handle.set(handle);
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ControlError> {
        self.handle()?.pause().map_err(|e| ControlError::new(format!("cannot pause the VM: {e}")))
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        self.handle()?.resume().map_err(|e| ControlError::new(format!("cannot resume the VM: {e}")))
    }

    fn ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        press_ctrl_alt_del(self.handle()?).map_err(ControlError)
    }

    fn state(&self) -> VmState {
        match self.current() {
            None => VmState::NotStarted,
            Some(h) if h.is_paused() => VmState::Paused,
            Some(_) => VmState::Running,
        }
    }

    fn snapshot(&mut self, files: &SnapshotFiles) -> Result<(), ControlError> {
        let info = self.handle()?.snapshot(files).map_err(|e| ControlError::new(e.to_string()))?;
        log::info!(
            "snapshot {} + {}: {} bytes of state, {} of {} bytes of memory written, in {:?}",
            files.state.display(),
            files.memory.display(),
            info.state_bytes,
            info.memory_written,
            info.memory_bytes,
            info.took
        );
        Ok(())
    }

    fn load_snapshot(
        &mut self,
        files: SnapshotFiles,
        resume: bool,
        serial: Option<SerialConfig>,
    ) -> Result<(), ControlError> {
        let mut rc = RestoreConfig::new(files);
        rc.seccomp = self.seccomp;
        rc.drop_code_pages = true;
        if let Some(s) = serial {
            rc.serial = s;
        }
        let handle = self.mailbox.ask(|tx| Job::Restore(Box::new(rc), resume, tx))?.map_err(ControlError)?;
        let _ = self.handle.set(handle);
        Ok(())
    }

    fn configure_logger(&mut self, settings: &LoggerSettings) -> Result<(), ControlError> {
        if settings.log_path.is_some() {
            self.mailbox.ask(|tx| Job::Logger(settings.clone(), tx))?.map_err(ControlError)?;
        } else if let Some(level) = settings.level {
            log::set_max_level(level);
        }
        Ok(())
    }
}

/// Presses Ctrl+Alt+Del on the guest's i8042 keyboard (a Linux guest
/// reboots, which ends an ember VM, or tells its init).
fn press_ctrl_alt_del(handle: &VmHandle) -> Result<(), String> {
    handle.send_ctrl_alt_del().map_err(|e| format!("cannot press Ctrl+Alt+Del: {e}"))
}

/// SIGTERM and SIGINT, blocked in this thread (and so in every thread
/// spawned after), read from a signalfd.
fn block_stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; the calls only edit it and this thread's mask.
    let r = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: `set` is a valid signal set; the result is checked.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until one of `fds` is readable (or `timeout` passes); returns
/// which are.
fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: `p` is a valid array of pollfd of the given length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r <= 0 {
        return vec![false; fds.len()];
    }
    p.iter().map(|p| p.revents != 0).collect()
}

/// Drains the signalfd; whether a signal was there.
fn take_signal(fd: &OwnedFd) -> bool {
    let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
    let mut got = false;
    // SAFETY: reads into a buffer of the right size from our signalfd.
    while unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } == info.len() as isize {
        got = true;
    }
    got
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ember serve: error: {message}");
    ExitCode::from(crate::EXIT_FAILURE)
}

/// `ember serve`.
pub fn serve(args: ServeArgs) -> ExitCode {
    logger::init(args.log_level);
    if let Some(p) = &args.log_path {
        let settings = LoggerSettings {
            log_path: Some(p.clone()),
            level: None,
            show_level: true,
            show_log_origin: false,
            module: None,
        };
        if let Err(e) = apply_logger(&settings) {
            return fail(e);
        }
    }
    ember::restore_terminal_on_fatal_signals();
    let signals = match block_stop_signals() {
        Ok(s) => s,
        Err(e) => return fail(format!("blocking SIGTERM and SIGINT: {e}")),
    };
    // With --config-file, the file is read and checked first: a bad
    // file fails before the socket exists, as Firecracker does.
    let mut started = None;
    if let Some(path) = &args.config_file {
        let file = match std::fs::read(path).map_err(|e| e.to_string()).and_then(|json| {
            let file = parse_config_file(&json).map_err(|e| e.to_string())?;
            let config = file.vm_config().map_err(|e| e.to_string())?;
            Ok((file, config))
        }) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ember serve: error: config file {}: {e}", path.display());
                return ExitCode::from(crate::EXIT_USAGE);
            }
        };
        started = Some(file);
    }
    let server = match ApiServer::bind(&args.api_sock, Limits::default()) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let wake = match EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) {
        Ok(w) => Arc::new(w),
        Err(e) => return fail(format!("creating an eventfd: {e}")),
    };
    let (jobs_tx, jobs) = mpsc::channel();
    let mut served = ServedVm {
        mailbox: Mailbox { jobs: jobs_tx, wake: wake.clone() },
        seccomp: args.seccomp,
        handle: OnceLock::new(),
        pending: Mutex::new(None),
    };

    // The VM from the config file: the API thread first (no thread can be
    // spawned once the VM's filters are on), then the VM, whose handle the
    // API thread waits for.
    let mut options = ServeOptions { id: args.id.clone(), seccomp: args.seccomp, started: None };
    let mut from_file = None;
    if let Some((file, mut config)) = started {
        if let Some(l) = file.logger() {
            if let Err(e) = apply_logger(l) {
                return fail(e);
            }
        }
        config.seccomp = args.seccomp;
        let (tx, rx) = mpsc::channel();
        served.pending = Mutex::new(Some(rx));
        from_file = Some((config, tx));
        options.started = Some(file);
    }
    // KVM's part of the VM that needs no configuration (`VmPrelude`) is
    // made while the API thread installs its filter, so neither the config
    // file's VM nor `InstanceStart` waits for it; if it fails, the VM's
    // build tries again and reports the error.
    let (api, mut prelude) = match server.spawn_while(served, options, || {
        VmPrelude::new()
            .map_err(|e| log::debug!("creating the VM ahead of its configuration: {e} (tried again then)"))
            .ok()
    }) {
        Ok(ap) => ap,
        Err(e) => return fail(e),
    };
    let mut running = None;
    if let Some((config, tx)) = from_file {
        match start_vm(config, prelude.take()) {
            Ok(vm) => {
                let _ = tx.send(vm.handle());
                running = Some(vm);
            }
            Err(e) => {
                drop(tx);
                api.stop();
                return fail(e);
            }
        }
    }
    let vm = match running {
        Some(vm) => vm,
        None => match serve_until_started(&jobs, &wake, &signals, prelude) {
            Some(vm) => vm,
            None => {
                api.stop();
                return ExitCode::SUCCESS;
            }
        },
    };
    run_until_exit(&vm, &signals, args.shutdown_timeout);
    let exit = vm.wait();
    api.stop();
    crate::report(&exit);
    ExitCode::from(exit.status() as u8)
}

fn start_vm(config: VmConfig, prelude: Option<VmPrelude>) -> Result<RunningVm, String> {
    let vm = match prelude {
        Some(p) => Vm::new_with(config, p),
        None => Vm::new(config),
    };
    vm.and_then(Vm::start).map_err(|e| e.to_string())
}

pub(crate) fn apply_logger(settings: &LoggerSettings) -> Result<(), String> {
    if let Some(p) = &settings.log_path {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .map_err(|e| format!("cannot open the log file {}: {e}", p.display()))?;
        logger::log_to(f);
    }
    if let Some(level) = settings.level {
        log::set_max_level(level);
    }
    Ok(())
}

/// Does the API thread's jobs until a VM has started (returned) or a stop
/// signal arrives (`None`). The first VM built starts from `prelude` (the
/// VM made ahead, [`VmPrelude`]) when there is one.
fn serve_until_started(
    jobs: &Receiver<Job>,
    wake: &EventFd,
    signals: &OwnedFd,
    mut prelude: Option<VmPrelude>,
) -> Option<RunningVm> {
    loop {
        let ready = wait_readable(&[signals.as_raw_fd(), wake.as_raw_fd()], None);
        if ready[0] && take_signal(signals) {
            log::info!("stop signal before InstanceStart");
            return None;
        }
        let _ = wake.read();
        while let Ok(job) = jobs.try_recv() {
            match job {
                Job::Start(config, reply) => match start_vm(*config, prelude.take()) {
                    Ok(vm) => {
                        let _ = reply.send(Ok(vm.handle()));
                        return Some(vm);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Job::Logger(settings, reply) => {
                    let _ = reply.send(apply_logger(&settings));
                }
                Job::Restore(rc, resume, reply) => {
                    let vm = match prelude.take() {
                        Some(p) => Vm::restore_with(*rc, p),
                        None => Vm::restore(*rc),
                    };
                    let vm = vm.and_then(|vm| if resume { vm.start() } else { vm.start_paused() });
                    match vm {
                        Ok(vm) => {
                            let _ = reply.send(Ok(vm.handle()));
                            return Some(vm);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}

/// Waits for the VM to end; a stop signal presses Ctrl+Alt+Del (after
/// resuming a paused VM) and stops the VM after `timeout`.
fn run_until_exit(vm: &RunningVm, signals: &OwnedFd, timeout: Duration) {
    let handle = vm.handle();
    loop {
        let ready = wait_readable(&[signals.as_raw_fd(), vm.exit_fd().as_raw_fd()], None);
        if ready[1] {
            return;
        }
        if ready[0] && take_signal(signals) {
            break;
        }
    }
    let _ = handle.resume();
    if !timeout.is_zero() {
        match press_ctrl_alt_del(&handle) {
            Ok(()) => {
                log::info!("stop signal: Ctrl+Alt+Del sent; waiting up to {timeout:?}");
                if vm.wait_timeout(timeout).is_some() {
                    return;
                }
                log::warn!("the guest did not shut down within {timeout:?}: stopping it");
            }
            Err(e) => log::info!("stop signal: {e}; stopping the VM"),
        }
    }
    handle.stop();
}
