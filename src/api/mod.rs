//! A Firecracker-compatible control plane: HTTP/1.1 over a Unix socket with
//! Firecracker's resources and JSON bodies (docs/api-socket.md lists every
//! endpoint and each difference), and Firecracker's `--config-file` format,
//! both turned into a [`VmConfig`](crate::config::VmConfig) by the same checks.
//!
//! [`ApiServer`] binds the socket and serves it on a thread of its own
//! (with its own seccomp filter), driving the VM through [`VmControl`]:
//! the `ember serve` command implements it over a [`Vm`](crate::Vm) and
//! its [`VmHandle`](crate::VmHandle). [`parse_config_file`] reads
//! Firecracker's config file through the API's checks.
//!
//! ```no_run
//! use ember::api::{ApiServer, ControlError, Limits, LoggerSettings, ServeOptions, VmControl, VmState};
//! use ember::{SeccompMode, VmConfig};
//!
//! /// A VM that only says what it would do.
//! struct Printer(VmState);
//!
//! impl VmControl for Printer {
//!     fn start(&mut self, config: VmConfig) -> Result<(), ControlError> {
//!         println!("would boot {}", config.kernel.display());
//!         self.0 = VmState::Running;
//!         Ok(())
//!     }
//!     fn pause(&mut self) -> Result<(), ControlError> {
//!         Ok(self.0 = VmState::Paused)
//!     }
//!     fn resume(&mut self) -> Result<(), ControlError> {
//!         Ok(self.0 = VmState::Running)
//!     }
//!     fn ctrl_alt_del(&mut self) -> Result<(), ControlError> {
//!         Err(ControlError::new("no keyboard"))
//!     }
//!     fn state(&self) -> VmState {
//!         self.0
//!     }
//!     fn configure_logger(&mut self, _: &LoggerSettings) -> Result<(), ControlError> {
//!         Ok(())
//!     }
//! }
//!
//! let server = ApiServer::bind("/tmp/ember.sock".as_ref(), Limits::default())?;
//! let options = ServeOptions { id: "vm0".into(), seccomp: SeccompMode::Kill, started: None };
//! let api = server.spawn(Printer(VmState::NotStarted), options)?;
//! // ... clients talk to /tmp/ember.sock ...
//! api.stop();
//! # Ok::<(), ember::api::ServerError>(())
//! ```
//!
//! Inside, from the wire inwards: the server loop (`poll(2)`, bounded by
//! [`Limits`]), the HTTP connection (bytes in, bytes out, no I/O), the
//! controller (routes, status codes, the pre-boot / running / paused state
//! machine) and the resources (the pre-boot configuration and its checks,
//! shared with the config file).

mod control;
mod http;
mod model;
mod resources;
mod router;
mod server;

pub use control::{ControlError, LoggerSettings, VmControl, VmState};
pub use http::Limits;
pub use resources::{parse_config_file, BadRequest, ConfigFile};
pub use router::DEFAULT_INSTANCE_ID;
pub use server::{ApiServer, ApiThread, ServeOptions, ServerError, ShutdownHandle};

/// The internals the fuzz target drives (through `ember::fuzzing::api`).
#[cfg(feature = "fuzzing")]
pub(crate) mod internals {
    pub use super::control::{FakeCall, FakeVm};
    pub use super::http::{write_response, Connection, Request, Response};
    pub use super::resources::{parse_config_file_with, HostChecks, Resources};
    pub use super::router::Controller;

    use super::{ApiServer, ServerError, ShutdownHandle, VmControl};
    use crate::seccomp::SeccompMode;

    /// Serves `controller` on the `ember-api` thread (under its seccomp
    /// filter, `mode`) and hands the controller back when the server stops.
    pub fn spawn_controller<V: VmControl + 'static>(
        server: ApiServer,
        controller: Controller<V>,
        mode: SeccompMode,
    ) -> Result<(std::thread::JoinHandle<Controller<V>>, ShutdownHandle), ServerError> {
        server.spawn_controller(controller, mode, |c| c)
    }
}

#[cfg(test)]
mod tests;
