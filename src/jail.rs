//! Dropping privileges once everything ember needs is open: optionally
//! `chroot` into an (empty) directory, then drop supplementary groups and
//! switch to an unprivileged uid/gid, with `no_new_privs` set.
//!
//! By the time [`Jail::enter`] runs, `/dev/kvm`, the VM and vCPU fds, guest
//! memory, disk images, TAP devices and the serial output file are open;
//! the VM needs nothing else from the file system or from root.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Whom to become and where to be confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jail {
    /// The uid to switch to.
    pub uid: u32,
    /// The gid to switch to.
    pub gid: u32,
    /// A directory to chroot into first.
    pub chroot: Option<PathBuf>,
}

/// Errors dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A step failed (typically: not running as root).
    #[error("dropping privileges: {step} failed: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// Why.
        source: std::io::Error,
    },
    /// The switch did not stick.
    #[error("dropping privileges: still running as uid {0} after setresuid")]
    NotDropped(u32),
}

fn step(what: impl Into<String>, r: libc::c_int) -> Result<(), JailError> {
    if r == 0 {
        Ok(())
    } else {
        Err(JailError::Step { step: what.into(), source: std::io::Error::last_os_error() })
    }
}

impl Jail {
    /// Enters the jail. Call before any other thread exists, so every
    /// thread has the new credentials.
    pub(crate) fn enter(&self) -> Result<(), JailError> {
        if let Some(dir) = &self.chroot {
            chroot(dir)?;
        }
        // SAFETY: plain credential syscalls with valid arguments.
        unsafe {
            step("setgroups(0)", libc::setgroups(0, std::ptr::null()))?;
            step(format!("setresgid({})", self.gid), libc::setresgid(self.gid, self.gid, self.gid))?;
            step(format!("setresuid({})", self.uid), libc::setresuid(self.uid, self.uid, self.uid))?;
            step("prctl(PR_SET_NO_NEW_PRIVS)", libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if self.uid != 0 && (libc::getuid() == 0 || libc::geteuid() == 0) {
                return Err(JailError::NotDropped(libc::getuid()));
            }
        }
        log::info!("privileges dropped to uid {} gid {}", self.uid, self.gid);
        Ok(())
    }
}

fn chroot(dir: &Path) -> Result<(), JailError> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| JailError::Step {
        step: format!("chroot {}", dir.display()),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: valid NUL-terminated paths.
    unsafe {
        step(format!("chdir {}", dir.display()), libc::chdir(c.as_ptr()))?;
        step(format!("chroot {}", dir.display()), libc::chroot(c".".as_ptr()))?;
        step("chdir /", libc::chdir(c"/".as_ptr()))?;
    }
    Ok(())
}
