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
#![deny(missing_docs)]

pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod console;
pub mod cpio;
pub mod cpuid;
mod device_manager;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod jail;
pub mod layout;
mod machine;
pub mod memory;
pub mod seccomp;
pub mod serial_capture;
pub mod smoke;
mod sync;
pub mod terminal;
pub mod vcpu;
pub mod vm;

pub use config::{BootProtocol, DiskConfig, NetConfig, SerialConfig, VmConfig};
pub use error::Error;
pub use exit::VmExit;
pub use serial_capture::SerialCapture;
pub use smoke::{Smoke, SmokeReport};
pub use vm::{RunningVm, Vm, VmHandle};

/// Internals the fuzz targets (`fuzz/`) drive directly. Built only with the
/// `fuzzing` feature; not part of the supported API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::boot::image;
    pub use crate::boot::{load_kernel, place_initrd, Entry, InitrdPlacement, LoadedKernel};
    pub use crate::machine::{write_cmdline, write_pvh_info, write_zero_page};
    pub use crate::memory::{GuestRam, RamLayout};
}
