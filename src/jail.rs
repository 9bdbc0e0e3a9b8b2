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
    /// A capability set was not empty after the drop.
    #[error("dropping privileges: capabilities left after the drop ({0})")]
    CapsLeft(String),
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
            // The bounding set needs CAP_SETPCAP: emptied while still root.
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) < 0 {
                    break; // past the kernel's last capability
                }
                step(format!("prctl(PR_CAPBSET_DROP, {cap})"), libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0))?;
            }
            step(
                "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0),
            )?;
            step(format!("setresgid({})", self.gid), libc::setresgid(self.gid, self.gid, self.gid))?;
            step(format!("setresuid({})", self.uid), libc::setresuid(self.uid, self.uid, self.uid))?;
            step("prctl(PR_SET_NO_NEW_PRIVS)", libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if self.uid != 0 && (libc::getuid() == 0 || libc::geteuid() == 0) {
                return Err(JailError::NotDropped(libc::getuid()));
            }
        }
        // setresuid away from root empties the permitted and effective
        // sets, not the inheritable one: all three are set to nothing.
        let mut caps = [CapData::default(); 2];
        let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        // SAFETY: capset reads a v3 header and two data structs.
        step("capset(0)", unsafe { libc::syscall(libc::SYS_capset, &mut header, caps.as_ptr()) } as libc::c_int)?;
        // SAFETY: capget writes two data structs for a v3 header.
        step("capget", unsafe { libc::syscall(libc::SYS_capget, &mut header, caps.as_mut_ptr()) } as libc::c_int)?;
        // SAFETY: reads the ambient set of capability 0.. (no memory).
        let ambient =
            (0..64).any(|c| unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, c, 0, 0) } > 0);
        // SAFETY: as above, for the bounding set.
        let bounding = (0..64).any(|c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, c, 0, 0, 0) } > 0);
        if caps.iter().any(|c| c.effective | c.permitted | c.inheritable != 0) || ambient || bounding {
            return Err(JailError::CapsLeft(format!("{caps:?}, ambient {ambient}, bounding {bounding}")));
        }
        log::info!("privileges dropped to uid {} gid {}", self.uid, self.gid);
        Ok(())
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (one 32-bit half of each set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
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
