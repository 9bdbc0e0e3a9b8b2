//! The boundary between the API and a VM: the [`VmControl`] trait the API
//! drives, the states it reports, and (for tests and fuzzing) a `FakeVm`
//! that records calls without a VM.

use std::fmt;
use std::path::PathBuf;

use crate::config::{SerialConfig, VmConfig};
use crate::snapshot::SnapshotFiles;

/// The microVM's state as `GET /` reports it (Firecracker's `InstanceInfo.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Configured or not, but `InstanceStart` has not succeeded yet.
    NotStarted,
    /// The vCPUs run.
    Running,
    /// The vCPUs are parked (`PATCH /vm {"state": "Paused"}`).
    Paused,
}

impl VmState {
    /// The string Firecracker's API uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a VM action failed; the API answers 400 with this message as the
/// `fault_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError(pub String);

impl ControlError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ControlError(message.into())
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ControlError {}

/// The logger as `PUT /logger` configures it (Firecracker's `Logger`),
/// validated: what an implementation of [`VmControl::configure_logger`]
/// applies to ember's own log output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggerSettings {
    /// A file or named pipe to append log lines to (`None`: keep stderr).
    pub log_path: Option<PathBuf>,
    /// The most verbose level written (`None`: leave the level as it is).
    pub level: Option<log::LevelFilter>,
    /// Whether each line shows its level.
    pub show_level: bool,
    /// Whether each line shows the file and line it comes from.
    pub show_log_origin: bool,
    /// Only messages from modules whose path starts with this are written.
    pub module: Option<String>,
}

/// What the API asks of a VM. Every method is called from the API thread,
/// one request at a time.
///
/// `start` is called at most once successfully (on `InstanceStart`, with a
/// configuration that passed [`VmConfig::validate`]); `pause`, `resume`,
/// `ctrl_alt_del` and `flush_metrics` only after it succeeded;
/// `configure_logger` only before it.
pub trait VmControl: Send {
    /// Builds and starts the VM. On an error nothing is left running and
    /// the API stays in the "Not started" state (the user may fix the
    /// configuration and try again).
    fn start(&mut self, config: VmConfig) -> Result<(), ControlError>;
    /// Takes every vCPU out of the guest and parks it, with the device
    /// queues quiesced. Pausing a paused VM succeeds.
    fn pause(&mut self) -> Result<(), ControlError>;
    /// Lets parked vCPUs run again. Resuming a running VM succeeds.
    fn resume(&mut self) -> Result<(), ControlError>;
    /// Presses Ctrl-Alt-Del on the guest's keyboard controller (a Linux
    /// guest then reboots, which ends an ember VM).
    fn ctrl_alt_del(&mut self) -> Result<(), ControlError>;
    /// Whether the started VM runs or is paused.
    fn state(&self) -> VmState;
    /// Applies a logger configuration (before start).
    fn configure_logger(&mut self, settings: &LoggerSettings) -> Result<(), ControlError>;
    /// Writes the paused VM to `files` (`PUT /snapshot/create`). The
    /// default refuses: a control without snapshots answers 400.
    fn snapshot(&mut self, files: &SnapshotFiles) -> Result<(), ControlError> {
        let _ = files;
        Err(ControlError::new("snapshots are not supported here"))
    }
    /// Builds the VM from the snapshot in `files` and starts it, paused
    /// unless `resume` (`PUT /snapshot/load`, instead of `InstanceStart`);
    /// COM1 goes to `serial` when given. Like `start`, nothing is left
    /// running on an error. The default refuses.
    fn load_snapshot(
        &mut self,
        files: SnapshotFiles,
        resume: bool,
        serial: Option<SerialConfig>,
    ) -> Result<(), ControlError> {
        let _ = (files, resume, serial);
        Err(ControlError::new("snapshots are not supported here"))
    }
    /// Writes pending metrics (`FlushMetrics`); ember has no metrics sink
    /// yet, so the default does nothing and succeeds, as Firecracker does
    /// without one.
    fn flush_metrics(&mut self) -> Result<(), ControlError> {
        Ok(())
    }
}

/// One call a [`FakeVm`] received.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeCall {
    /// `start`, with the configuration's essentials.
    Start {
        /// The kernel path.
        kernel: PathBuf,
        /// Guest memory in bytes.
        memory: u64,
        /// vCPUs.
        vcpus: u8,
        /// The kernel command line.
        cmdline: String,
        /// Disk paths in `/dev/vda`, `/dev/vdb`… order.
        disks: Vec<PathBuf>,
        /// TAP names.
        nets: Vec<String>,
    },
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `ctrl_alt_del`.
    CtrlAltDel,
    /// `configure_logger`.
    Logger(LoggerSettings),
    /// `flush_metrics`.
    FlushMetrics,
    /// `snapshot`, with the state and memory file paths.
    Snapshot(PathBuf, PathBuf),
    /// `load_snapshot`, with the state and memory file paths and `resume`.
    LoadSnapshot(PathBuf, PathBuf, bool),
}

#[cfg(any(test, feature = "fuzzing"))]
/// A [`VmControl`] with no VM behind it: it records every call and keeps
/// the running/paused state, so the API can be tested and fuzzed without
/// KVM. `fail_start` makes the next `start` fail (to test that path).
#[derive(Debug, Default)]
pub struct FakeVm {
    /// Every call, in order.
    pub calls: Vec<FakeCall>,
    /// Started and not stopped.
    pub started: bool,
    /// Paused (only meaningful when started).
    pub paused: bool,
    /// When set, the next `start` fails with this message.
    pub fail_start: Option<String>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl FakeVm {
    /// A fake that has not started.
    pub fn new() -> Self {
        FakeVm::default()
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl VmControl for FakeVm {
    fn start(&mut self, config: VmConfig) -> Result<(), ControlError> {
        if let Some(m) = self.fail_start.take() {
            return Err(ControlError(m));
        }
        if self.started {
            return Err(ControlError::new("the fake VM was started twice"));
        }
        self.calls.push(FakeCall::Start {
            kernel: config.kernel.clone(),
            memory: config.memory,
            vcpus: config.vcpus,
            cmdline: config.cmdline.clone(),
            disks: config.disks.iter().map(|d| d.path.clone()).collect(),
            nets: config.nets.iter().map(|n| n.tap.clone()).collect(),
        });
        self.started = true;
        Ok(())
    }

    fn pause(&mut self) -> Result<(), ControlError> {
        self.calls.push(FakeCall::Pause);
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        self.calls.push(FakeCall::Resume);
        self.paused = false;
        Ok(())
    }

    fn ctrl_alt_del(&mut self) -> Result<(), ControlError> {
        self.calls.push(FakeCall::CtrlAltDel);
        Ok(())
    }

    fn state(&self) -> VmState {
        match (self.started, self.paused) {
            (false, _) => VmState::NotStarted,
            (true, false) => VmState::Running,
            (true, true) => VmState::Paused,
        }
    }

    fn configure_logger(&mut self, settings: &LoggerSettings) -> Result<(), ControlError> {
        self.calls.push(FakeCall::Logger(settings.clone()));
        Ok(())
    }

    fn flush_metrics(&mut self) -> Result<(), ControlError> {
        self.calls.push(FakeCall::FlushMetrics);
        Ok(())
    }

    fn snapshot(&mut self, files: &SnapshotFiles) -> Result<(), ControlError> {
        if !self.paused {
            return Err(ControlError::new("the VM is not paused"));
        }
        self.calls.push(FakeCall::Snapshot(files.state.clone(), files.memory.clone()));
        Ok(())
    }

    fn load_snapshot(
        &mut self,
        files: SnapshotFiles,
        resume: bool,
        _serial: Option<SerialConfig>,
    ) -> Result<(), ControlError> {
        if let Some(m) = self.fail_start.take() {
            return Err(ControlError(m));
        }
        self.calls.push(FakeCall::LoadSnapshot(files.state, files.memory, resume));
        self.started = true;
        self.paused = !resume;
        Ok(())
    }
}
