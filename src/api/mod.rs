//! A Firecracker-compatible control plane: HTTP/1.1 over a Unix socket with
//! Firecracker's resources and JSON bodies (docs/api-socket.md lists every
//! endpoint and each difference), and Firecracker's `--config-file` format,
//! both turned into a [`VmConfig`](crate::VmConfig) by the same code.
//!
//! The pieces, from the wire inwards:
//! * [`ApiServer`]: the socket and its one thread (`poll(2)`, bounded by
//!   [`Limits`]);
//! * [`Connection`]: HTTP framing, bytes in and bytes out, no I/O;
//! * [`Controller`]: routes, status codes, the pre-boot / running / paused
//!   state machine;
//! * [`Resources`]: the pre-boot configuration and its checks, shared with
//!   [`parse_config_file`];
//! * [`VmControl`]: what the API asks of a VM (start, pause, resume,
//!   Ctrl-Alt-Del), implemented over ember's VM, or by [`FakeVm`] in tests.
//!
//! ```no_run
//! use ember::api::{ApiServer, Controller, FakeVm, HostChecks, Limits};
//!
//! let server = ApiServer::bind("/tmp/ember.sock".as_ref(), Limits::default())?;
//! let stop = server.shutdown_handle();
//! let thread = server.spawn(Controller::new(FakeVm::new(), "vm0", HostChecks::Now))?;
//! // ... clients talk to /tmp/ember.sock ...
//! stop.shutdown();
//! let controller = thread.join().unwrap();
//! println!("{:?}", controller.vm().calls);
//! # Ok::<(), ember::api::ServerError>(())
//! ```

mod control;
mod http;
pub mod model;
mod resources;
mod router;
mod server;

pub use control::{ControlError, FakeCall, FakeVm, LoggerSettings, VmControl, VmState};
pub use http::{write_response, Connection, Limits, Request, Response};
pub use resources::{
    check_id, parse_config_file, BadRequest, ConfigFileContents, HostChecks, Resources, DEFAULT_MEM_SIZE_MIB,
};
pub use router::{Controller, DEFAULT_INSTANCE_ID};
pub use server::{ApiServer, ServerError, ShutdownHandle};

#[cfg(test)]
mod tests;
