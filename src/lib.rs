//! ember: a small, fast virtual machine monitor on Linux KVM.
//!
//! Build a [`VmConfig`], turn it into a [`Vm`], start it and wait for its
//! [`VmExit`]:
//!
//! ```no_run
//! use ember::{SerialCapture, SerialConfig, Vm, VmConfig};
//! use std::time::Duration;
//!
//! let serial = SerialCapture::new();
//! let mut config = VmConfig::new("vmlinux");
//! config.cmdline = "console=ttyS0 earlyprintk=serial".into();
//! config.memory = 256 << 20;
//! config.serial = SerialConfig::Capture(serial.clone());
//! let vm = Vm::new(config)?.start()?;
//! if serial.wait_for("Linux version", Duration::from_secs(60)) {
//!     vm.handle().stop();
//! }
//! println!("{}", vm.wait());
//! # Ok::<(), ember::Error>(())
//! ```
//!
//! [`Smoke`] runs a kernel smoke test (boot, run one command or wait for
//! console patterns, give a verdict) the way `ember smoke` does.
//!
//! Errors are in [`error`]. The other modules are internal;
//! docs/architecture.md draws their graph, and every import runs down it
//! (tests/module_graph.rs checks).
#![deny(missing_docs)]

// Layers, bottom up (docs/architecture.md, "Module graph"): a module uses
// only modules of lower layers.
// 0: nothing from the crate.
mod code_pages;
mod cpio;
mod cpuid;
mod jail;
mod layout;
mod seccomp;
mod sync;
mod terminal;
// 1
mod bus;
mod exit;
mod irq_routing;
mod memory;
mod run_control;
mod serial_capture;
// 2
mod config;
mod event_loop;
// 3
mod boot;
// 4
mod machine;
pub mod snapshot;
// 5
pub mod error;
// 6
mod console;
mod vcpu;
// 7
mod device_manager;
// 8
mod vm;
// 9
pub mod api;
mod smoke;

pub use config::{
    BootProtocol, ConfigError, DiskConfig, NetConfig, SerialConfig, ShareConfig, SharedWriter, VirtioTransport,
    VmConfig,
};
pub use cpio::{CpioError, CpioWriter};
pub use ember_devices::legacy::I8042Error;
pub use ember_devices::virtio::net::NetStats;
pub use error::Error;
pub use exit::VmExit;
pub use jail::Jail;
pub use run_control::PauseError;
pub use seccomp::SeccompMode;
pub use serial_capture::SerialCapture;
pub use smoke::{Expectation, Modules, RootPlan, Smoke, SmokeError, SmokeReport, SmokeShare, Verdict};
pub use vm::{RunningVm, Vm, VmHandle, VmPrelude};

/// Restores the terminal (if a [`Vm`] put it in raw mode) before the
/// process dies of SIGTERM, SIGINT, SIGHUP or SIGQUIT, or panics. For
/// binaries; a library embedding ember keeps its own signal policy.
pub fn restore_terminal_on_fatal_signals() {
    terminal::restore_on_fatal_signals();
}

/// Internals the fuzz targets (`fuzz/`) drive directly. Built only with the
/// `fuzzing` feature; not part of the supported API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::boot::image;
    pub use crate::boot::{load_kernel, place_initrd, Entry, InitrdPlacement, LoadedKernel};
    pub use crate::bus::Bus;
    pub use crate::cpio::{parse as parse_cpio, CpioEntry, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};
    /// The machine layout (guest-physical addresses and ports).
    pub mod layout {
        pub use crate::layout::*;
    }
    pub use crate::machine::{write_cmdline, write_pvh_info, write_zero_page};
    pub use crate::memory::{GuestRam, RamLayout};
    pub use crate::smoke::{build_initramfs, init_script};
    /// The snapshot state file's parser.
    pub use crate::snapshot::fuzzing as snapshot;
    /// The API's HTTP connection, controller and resources, and a fake VM.
    pub mod api {
        pub use crate::api::internals::*;
    }
}
