//! A TAP network interface, the host side of virtio-net.
//!
//! [`Tap::open`] attaches to an interface that already exists (created
//! beforehand with `ip tuntap add dev NAME mode tap`, typically by an
//! administrator who then hands it to an unprivileged VMM with `user=`). It
//! never creates one: `TUNSETIFF` on an unknown name would silently create a
//! new, non-persistent interface that vanishes with the VMM, so the name is
//! looked up first and the attached interface is checked to be persistent.
//!
//! The file descriptor is non-blocking and set up for virtio-net:
//!
//! * `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: Ethernet frames, no packet
//!   information prefix, each frame preceded by a virtio-net header;
//! * `TUNSETVNETHDRSZ` 12: the header is `virtio_net_hdr_v1` (with
//!   `num_buffers`), the layout virtio 1.x uses on both queues;
//! * `TUNSETOFFLOAD`: the offloads the guest accepts on receive, set by
//!   [`Tap::set_offload`] from the negotiated feature bits (none until
//!   then, so the kernel hands over only complete, checksummed frames).
//!
//! One read returns one frame and one write sends one frame.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetBackend;
use crate::virtio::IoVecs;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};

/// Length of the virtio-net header on every frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name, without the terminating NUL (`IFNAMSIZ - 1`).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as used by the tun ioctls: the name and the flags word.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    // The rest of the 40-byte union.
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: flags as libc::c_short, _pad: [0; 22] };
        // The name was checked to be at most MAX_NAME_LEN bytes.
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
}

/// Why a TAP interface could not be attached or configured. Every variant
/// names the interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error("tap interface name {name:?} is invalid (1 to {MAX_NAME_LEN} bytes, no '/', ':' or whitespace)")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// No interface of that name exists (in this network namespace).
    #[error("tap interface {name} does not exist; create it first (ip tuntap add dev {name} mode tap)")]
    NotFound {
        /// The interface name.
        name: String,
    },
    /// The interface exists but is not a TAP device (a TUN device, or not a
    /// tun/tap interface at all), or its flags conflict with ours.
    #[error("interface {name} is not a TAP device (ip tuntap add dev {name} mode tap)")]
    NotTap {
        /// The interface name.
        name: String,
    },
    /// Another process (or another device) is attached to the interface.
    #[error("tap interface {name} is busy: another process is attached to it")]
    Busy {
        /// The interface name.
        name: String,
    },
    /// The caller may not open `/dev/net/tun` or attach to this interface.
    #[error(
        "no permission to attach tap interface {name}: {source} (needs CAP_NET_ADMIN, or the interface's owner/group)"
    )]
    PermissionDenied {
        /// The interface name.
        name: String,
        /// The error from the kernel.
        source: io::Error,
    },
    /// Any other failure of an operation on the interface.
    #[error("tap interface {name}: {op} failed: {source}")]
    Io {
        /// The interface name.
        name: String,
        /// The operation that failed.
        op: &'static str,
        /// The error from the kernel.
        source: io::Error,
    },
}

/// An open, attached TAP interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Whether `name` is acceptable to the kernel as an interface name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// The index of interface `name` in the calling thread's network namespace,
/// or `None` if there is no such interface.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The `TUNSETOFFLOAD` flags for the virtio-net features a driver accepted:
/// what the guest can take on its receive queue.
pub fn offload_flags(features: u64) -> libc::c_uint {
    let has = |bit: u32| features & (1u64 << bit) != 0;
    let mut flags = 0;
    // Segmentation offloads need partial checksums (the kernel refuses
    // TSO without CSUM, and so does the virtio spec).
    if has(VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(VIRTIO_NET_F_GUEST_ECN) && (has(VIRTIO_NET_F_GUEST_TSO4) || has(VIRTIO_NET_F_GUEST_TSO6)) {
            flags |= libc::TUN_F_TSO_ECN;
        }
        if has(VIRTIO_NET_F_GUEST_UFO) {
            flags |= libc::TUN_F_UFO;
        }
    }
    flags
}

impl Tap {
    /// Attaches to the existing TAP interface `name` (in the calling
    /// thread's network namespace).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let owned = || name.to_owned();
        if !valid_name(name) {
            return Err(TapError::InvalidName { name: owned() });
        }
        if if_index(name).is_none() {
            return Err(TapError::NotFound { name: owned() });
        }
        let io_err = |op, source: io::Error| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied { name: owned(), source },
            Some(libc::EBUSY) => TapError::Busy { name: owned() },
            _ => TapError::Io { name: owned(), op, source },
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io_err("opening /dev/net/tun", e))?;
        let tap = Tap { fd: OwnedFd::from(file), name: owned() };

        let base = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if let Err(e) = tap.set_iff(base) {
            match e.raw_os_error() {
                // A multi-queue interface must be attached as one; anything
                // else that conflicts is not a TAP we can use.
                Some(libc::EINVAL) => {
                    if let Err(e) = tap.set_iff(base | libc::IFF_MULTI_QUEUE) {
                        return Err(match e.raw_os_error() {
                            Some(libc::EINVAL) => TapError::NotTap { name: owned() },
                            _ => io_err("TUNSETIFF", e),
                        });
                    }
                }
                _ => return Err(io_err("TUNSETIFF", e)),
            }
        }
        // The interface may have disappeared between the lookup and the
        // attach, in which case the kernel just created a fresh,
        // non-persistent one; dropping the fd destroys it again.
        let flags = tap.get_iff().map_err(|e| io_err("TUNGETIFF", e))?;
        if flags & libc::IFF_PERSIST == 0 {
            return Err(TapError::NotFound { name: owned() });
        }
        if flags & libc::IFF_TAP == 0 {
            return Err(TapError::NotTap { name: owned() });
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        let r = unsafe { libc::ioctl(tap.raw(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if r < 0 {
            return Err(io_err("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        tap.set_offload_flags(0)?;
        Ok(tap)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn set_iff(&self, flags: libc::c_int) -> io::Result<()> {
        let mut req = IfReq::new(&self.name, flags);
        // SAFETY: TUNSETIFF reads and writes a struct ifreq.
        let r = unsafe { libc::ioctl(self.raw(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn get_iff(&self) -> io::Result<libc::c_int> {
        let mut req = IfReq::new("", 0);
        // SAFETY: TUNGETIFF writes a struct ifreq.
        let r = unsafe { libc::ioctl(self.raw(), libc::TUNGETIFF, &mut req) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // The flags word is an unsigned short in the kernel's view.
        Ok(libc::c_int::from(req.flags as u16))
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the receive offloads (`TUN_F_*` flags) the reader of this
    /// interface accepts.
    pub fn set_offload_flags(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        let r = unsafe { libc::ioctl(self.raw(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if r < 0 {
            return Err(TapError::Io {
                name: self.name.clone(),
                op: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sets the receive offloads matching the virtio-net `features` a driver
    /// accepted (see [`offload_flags`]).
    pub fn set_offload(&self, features: u64) -> Result<(), TapError> {
        self.set_offload_flags(offload_flags(features))
    }

    /// Reads one frame (virtio-net header and Ethernet frame) into `buf`.
    /// `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Reads one frame scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let cnt = libc::c_int::try_from(bufs.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: IoSliceMut is ABI-compatible with struct iovec and each
        // describes writable memory.
        let n = unsafe { libc::readv(self.raw(), bufs.as_ptr().cast(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (virtio-net header and Ethernet frame).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is readable for its length.
        let n = unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let cnt = libc::c_int::try_from(bufs.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: IoSlice is ABI-compatible with struct iovec and each
        // describes memory readable for the call; the kernel only reads it.
        let n = unsafe { libc::writev(self.raw(), bufs.as_ptr().cast(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The production backend of virtio-net.
impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&mut self, frame: &IoVecs<'_>) -> io::Result<usize> {
        frame.write_to(self.as_fd())
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn set_offload(&mut self, features: u64) -> io::Result<()> {
        Tap::set_offload(self, features).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn is_root() -> bool {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::geteuid() == 0 }
    }

    /// A persistent TAP created with `ip`, owned by root (uid 0), deleted
    /// on drop. The owner matters: a TAP without one may be attached by
    /// anyone who can open `/dev/net/tun`, which udev makes 0666 on many
    /// hosts; one with an owner only by it or by `CAP_NET_ADMIN`.
    struct TestTap(String);

    impl TestTap {
        fn create() -> Option<TestTap> {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!("emt{}x{}", std::process::id() % 100_000, N.fetch_add(1, Ordering::SeqCst));
            let ok = Command::new("ip")
                .args(["tuntap", "add", "dev", &name, "mode", "tap", "user", "0"])
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(TestTap(name))
        }
    }

    impl Drop for TestTap {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", "dev", &self.0]).status();
        }
    }

    /// Creates a TAP when running as root with `ip` and `/dev/net/tun`.
    fn root_tap(test: &str) -> Option<TestTap> {
        if !is_root() {
            println!("skipping {test}: needs root to create a TAP interface");
            return None;
        }
        let t = TestTap::create();
        if t.is_none() {
            println!("skipping {test}: `ip tuntap add` failed");
        }
        t
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(Tap::open(bad), Err(TapError::InvalidName { .. })));
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("abcdefghijklmno"));
    }

    #[test]
    fn missing_interface_is_refused_by_name() {
        let e = Tap::open("ember-no-such").unwrap_err();
        assert!(matches!(e, TapError::NotFound { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("ember-no-such") && !msg.contains('\n'), "{msg}");
        // Nothing was created by the attempt.
        assert!(if_index("ember-no-such").is_none());
    }

    #[test]
    fn offload_flags_follow_guest_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |a, b| a | (1u64 << b));
        assert_eq!(offload_flags(0), 0);
        // TSO without checksum offload is not something the kernel takes.
        assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
        assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])), libc::TUN_F_CSUM);
        assert_eq!(
            offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6])),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(
            offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_UFO])),
            libc::TUN_F_CSUM | libc::TUN_F_UFO
        );
    }

    #[test]
    fn non_tap_interface_is_refused() {
        if !is_root() {
            println!("skipping non_tap_interface_is_refused: needs root");
            return;
        }
        // The loopback interface exists everywhere and is no TAP.
        let e = Tap::open("lo").unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
        assert!(e.to_string().contains("lo"));
    }

    #[test]
    fn attach_configure_and_exchange_frames() {
        let Some(t) = root_tap("attach_configure_and_exchange_frames") else {
            return;
        };
        let tap = Tap::open(&t.0).unwrap();
        assert_eq!(tap.name(), t.0);
        // A second attach to a single-queue TAP is refused as busy.
        let e = Tap::open(&t.0).unwrap_err();
        assert!(matches!(e, TapError::Busy { .. }), "{e}");
        assert!(e.to_string().contains(&t.0));

        let all =
            (1u64 << VIRTIO_NET_F_GUEST_CSUM) | (1u64 << VIRTIO_NET_F_GUEST_TSO4) | (1u64 << VIRTIO_NET_F_GUEST_TSO6);
        tap.set_offload(all).unwrap();
        tap.set_offload(0).unwrap();

        // Nothing queued: the fd does not block.
        let mut buf = [0u8; 2048];
        let e = tap.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        // Writing to an interface that is down fails; once up, a frame
        // (header + broadcast Ethernet frame) is accepted whole.
        let up = Command::new("ip").args(["link", "set", &t.0, "up"]).status().unwrap();
        assert!(up.success());
        let mut frame = vec![0u8; VNET_HDR_LEN + 60];
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].fill(0xff);
        frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x88, 0xb5]);
        let (a, b) = frame.split_at(VNET_HDR_LEN);
        assert_eq!(tap.writev(&[IoSlice::new(a), IoSlice::new(b)]).unwrap(), frame.len());
        assert_eq!(tap.write(&frame).unwrap(), frame.len());
    }

    #[test]
    fn deleted_interface_is_refused() {
        let Some(t) = root_tap("deleted_interface_is_refused") else {
            return;
        };
        let name = t.0.clone();
        drop(t);
        let e = Tap::open(&name).unwrap_err();
        assert!(matches!(e, TapError::NotFound { .. }), "{e}");
        assert!(if_index(&name).is_none(), "nothing was created");
    }

    #[test]
    fn multi_queue_tap_is_attached_and_tun_is_refused() {
        let Some(t) = root_tap("multi_queue_tap_is_attached_and_tun_is_refused") else {
            return;
        };
        let mq = format!("{}m", t.0);
        let tun = format!("{}t", t.0);
        let add = |name: &str, extra: &[&str]| {
            let mut args = vec!["tuntap", "add", "dev", name];
            args.extend_from_slice(extra);
            Command::new("ip").args(&args).status().unwrap().success()
        };
        let del = |name: &str| {
            let _ = Command::new("ip").args(["link", "del", "dev", name]).status();
        };
        assert!(add(&mq, &["mode", "tap", "multi_queue"]));
        assert!(add(&tun, &["mode", "tun"]));
        let r_mq = Tap::open(&mq).map(|_| ());
        let r_tun = Tap::open(&tun).map(|_| ());
        del(&mq);
        del(&tun);
        r_mq.unwrap();
        let e = r_tun.unwrap_err();
        assert!(matches!(e, TapError::NotTap { .. }), "{e}");
    }

    #[test]
    fn missing_permission_is_reported_by_name() {
        let Some(t) = root_tap("missing_permission_is_reported_by_name") else {
            return;
        };
        let name = t.0.clone();
        // A thread of its own drops to an unprivileged effective uid (the
        // raw system call changes only the calling thread) and back.
        let r = std::thread::spawn(move || {
            // SAFETY: changes this thread's credentials only; the saved uid
            // stays 0 so they can be restored.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, -1i32, 65534i32, -1i32) };
            assert_eq!(r, 0);
            let res = Tap::open(&name).map(|_| ());
            // SAFETY: as above.
            unsafe { libc::syscall(libc::SYS_setresuid, -1i32, 0i32, -1i32) };
            res
        })
        .join()
        .unwrap();
        let e = r.unwrap_err();
        assert!(matches!(e, TapError::PermissionDenied { .. }), "{e}");
        assert!(e.to_string().contains(&t.0));
    }
}
