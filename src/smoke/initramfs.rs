//! The initramfs `ember smoke` writes for command mode (cpio newc): a
//! static busybox with its applet links, `/dev/console`, and an `/init`
//! that mounts proc, sysfs and devtmpfs, runs the command, prints its exit
//! status between markers on the console and reboots.
//!
//! The markers carry a per-run nonce (`.ember-nonce` in the archive):
//! `/init` reads it into an unexported shell variable and deletes the file
//! before the command runs, so the command cannot print a marker ember
//! believes (short of reading `/init`'s memory as root: the console is the
//! only channel, and the command shares it). Busybox is never run on the
//! host: the archive links a core set of applets and `/init` has busybox
//! install the rest in the guest.

use std::path::{Path, PathBuf};

use super::{SmokeError, BEGIN_MARKER, BUSYBOX_CANDIDATES, EXIT_MARKER, NONCE_FILE};
use crate::cpio::{CpioError, CpioWriter};

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/init` script that runs `command`: it prints
/// `{BEGIN_MARKER}<nonce>===` before and `{EXIT_MARKER}<nonce>=<status>===`
/// after the command, with the nonce read from `/.ember-nonce` (deleted
/// before the command runs).
pub fn init_script(command: &[String]) -> String {
    let cmd: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/busybox sh\n\
         # Written by ember smoke: mount the usual file systems, run the command,\n\
         # report its status between markers, reboot (reboot=k ends the VM).\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         /bin/busybox --install -s 2>/dev/null\n\
         read -r ember_nonce < /{NONCE_FILE}\n\
         /bin/busybox rm -f /{NONCE_FILE}\n\
         export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb\n\
         cd /\n\
         echo \"{BEGIN_MARKER}$ember_nonce===\"\n\
         {}\n\
         rc=$?\n\
         echo \"{EXIT_MARKER}$ember_nonce=$rc===\"\n\
         /bin/busybox sync\n\
         /bin/busybox reboot -f\n\
         /bin/busybox sleep 5\n",
        cmd.join(" ")
    )
}

/// Lays out ember's initramfs: directories, `/dev/console`, busybox, its
/// applet links (paths like `bin/ls`), and `/init`.
#[cfg(any(test, feature = "fuzzing"))]
pub fn build_initramfs(busybox: &[u8], applets: &[String], init: &str) -> Result<Vec<u8>, CpioError> {
    build_archive(busybox, applets, init, None)
}

/// [`build_initramfs`], with the run's marker nonce in `/.ember-nonce`.
pub(super) fn build_archive(
    busybox: &[u8],
    applets: &[String],
    init: &str,
    nonce: Option<&str>,
) -> Result<Vec<u8>, CpioError> {
    let mut w = CpioWriter::new();
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt"] {
        w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for a in applets {
        let a = a.trim_start_matches('/');
        let parent_ok = match a.rsplit_once('/') {
            Some((dir, _)) => w.contains(dir),
            None => true,
        };
        if a.is_empty() || a == "bin/busybox" || !parent_ok || w.contains(a) {
            continue;
        }
        w.symlink(a, "/bin/busybox")?;
    }
    w.file("init", 0o755, init.as_bytes())?;
    if let Some(n) = nonce {
        w.file(NONCE_FILE, 0o400, format!("{n}\n").as_bytes())?;
    }
    Ok(w.finish())
}

/// The applet links the archive holds: a core set, so that `/init` and a
/// plain command work even if busybox cannot install its links; `/init`
/// runs `busybox --install -s` in the guest for the rest. Busybox is never
/// executed on the host: `--busybox` may name any file.
pub(super) fn applets() -> Vec<String> {
    [
        "bin/sh",
        "bin/ash",
        "bin/ls",
        "bin/cat",
        "bin/echo",
        "bin/mount",
        "bin/umount",
        "bin/uname",
        "bin/sleep",
        "bin/rm",
        "bin/mkdir",
        "bin/dmesg",
        "sbin/reboot",
        "sbin/poweroff",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Finds a static busybox: the given path, else Debian's busybox-static.
pub(super) fn find_busybox(given: Option<&Path>) -> Result<PathBuf, SmokeError> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => BUSYBOX_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let mut why = Vec::new();
    for c in &candidates {
        match std::fs::read(c) {
            Ok(bytes) => match is_static_elf(&bytes) {
                Some(true) => return Ok(c.clone()),
                Some(false) => why.push(format!("{} is dynamically linked", c.display())),
                None => why.push(format!("{} is not an ELF executable", c.display())),
            },
            Err(e) => why.push(format!("{}: {e}", c.display())),
        }
    }
    Err(SmokeError::Busybox(format!(
        "no static busybox for the initramfs ({}); install Debian's busybox-static (apt-get install busybox-static) or give the path of a static busybox",
        why.join("; ")
    )))
}

/// `Some(true)` for an ELF without an interpreter, `Some(false)` with one,
/// `None` if not ELF.
fn is_static_elf(b: &[u8]) -> Option<bool> {
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(b.get(32..40)?.try_into().ok()?) as usize;
    let (phentsize, phnum) = (u16_at(54)? as usize, u16_at(56)? as usize);
    for i in 0..phnum {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let t = u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?);
        if t == 3 {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse, S_IFCHR, S_IFLNK, S_IFREG};

    #[test]
    fn init_script_quotes_the_command() {
        let s = init_script(&["sh".into(), "-c".into(), "echo 'hi'; exit 7".into()]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("'sh' '-c' 'echo '\\''hi'\\''; exit 7'\n"), "{s}");
        assert!(s.contains(&format!("echo \"{BEGIN_MARKER}$ember_nonce===\"")));
        assert!(s.contains(&format!("echo \"{EXIT_MARKER}$ember_nonce=$rc===\"")));
        // The nonce file is gone before the command runs.
        let rm = s.find(&format!("rm -f /{NONCE_FILE}")).unwrap();
        assert!(rm < s.find("'sh' '-c'").unwrap());
        assert!(s.contains("reboot -f"));
    }

    #[test]
    fn initramfs_layout() {
        let applets = vec!["bin/sh".to_string(), "usr/bin/awk".into(), "bin/busybox".into(), "nodir/x".into()];
        let a = build_initramfs(b"BB", &applets, "#!/bin/busybox sh\n").unwrap();
        let e = parse(&a).unwrap();
        let find = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(find("bin/busybox").data, b"BB");
        assert_eq!(find("init").mode, S_IFREG | 0o755);
        assert_eq!(find("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(find("usr/bin/awk").data, b"/bin/busybox");
        assert!(!e.iter().any(|x| x.name == "nodir/x"));
        assert_eq!(e.iter().filter(|x| x.name == "bin/busybox").count(), 1);
    }

    #[test]
    fn static_elf_detection() {
        assert_eq!(is_static_elf(b"#!/bin/sh"), None);
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(is_static_elf(&me), Some(false)); // the test binary is dynamic
    }

    #[test]
    fn missing_busybox_says_how_to_get_one() {
        let e = find_busybox(Some(Path::new("/nonexistent/busybox"))).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/busybox") && e.contains("busybox-static"), "{e}");
    }
}
