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

/// The `/init` script that runs `command` in the initramfs, its output on
/// the console (see [`init_script_for`] for the markers).
#[cfg(any(test, feature = "fuzzing"))]
pub fn init_script(command: &[String]) -> String {
    init_script_for(&InitPlan { command, ..InitPlan::default() })
}

/// Where a shared directory is mounted in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestMount {
    /// The mount tag.
    pub tag: String,
    /// Where in the guest (absolute).
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The host's root as the guest's root (`--root-share`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootPlan {
    /// The root share's mount tag.
    pub tag: String,
    /// The command's working directory.
    pub cwd: String,
    /// The command's whole environment.
    pub env: Vec<(String, String)>,
    /// The command's user and group.
    pub uid: u32,
    /// The command's group.
    pub gid: u32,
}

/// What `/init` does besides running the command.
#[derive(Clone, Debug, Default)]
pub struct InitPlan<'a> {
    /// The command.
    pub command: &'a [String],
    /// Modules (kmod names) to insmod from `/lib/modules/ember/`, in order.
    pub modules: Vec<String>,
    /// Shared directories to mount (under the root share, when there is one).
    pub mounts: Vec<GuestMount>,
    /// Run the command in the host's root instead of the initramfs.
    pub root: Option<RootPlan>,
    /// The command's stdout on ttyS1 and stderr on ttyS2 (ember's COM2 and
    /// COM3) when the kernel has them, else on the console.
    pub separate_output: bool,
}

/// Where the root share is assembled in the initramfs.
const NEW_ROOT: &str = "/ember/root";
/// The 9P mount options (Linux's virtio transport takes at most 500 KiB).
const P9_OPTS: &str = "trans=virtio,version=9p2000.L,msize=512000";

fn mount_share(out: &mut String, m: &GuestMount, under: &str) {
    let dir = sh_quote(&format!("{under}{}", m.path));
    let ro = if m.read_only { ",ro" } else { "" };
    out.push_str(&format!(
        "/bin/busybox mkdir -p {dir}; /bin/busybox mount -t 9p -o {P9_OPTS}{ro} {} {dir} || echo 'ember: cannot mount share {} at {}'\n",
        sh_quote(&m.tag),
        m.tag.replace('\'', ""),
        m.path.replace('\'', "")
    ));
}

/// The `/init` script for `plan`: it prints `{BEGIN_MARKER}<nonce>===`
/// before and `{EXIT_MARKER}<nonce>=<status>===` after the command, with
/// the nonce read from `/.ember-nonce` (deleted before anything else runs).
pub fn init_script_for(plan: &InitPlan<'_>) -> String {
    let mut s = format!(
        "#!/bin/busybox sh\n\
         # Written by ember smoke: mount the usual file systems, run the command,\n\
         # report its status between markers, reboot (reboot=k ends the VM).\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         /bin/busybox --install -s 2>/dev/null\n\
         read -r ember_nonce < /{NONCE_FILE}\n\
         /bin/busybox rm -f /{NONCE_FILE}\n\
         export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb\n",
    );
    if !plan.modules.is_empty() {
        // virtio_mmio takes its devices as module parameters when the
        // kernel has VIRTIO_MMIO_CMDLINE_DEVICES; they are on the command
        // line as virtio_mmio.device=..., which only built-in code reads.
        s.push_str(
            "mmio=''\n\
             for w in $(/bin/busybox cat /proc/cmdline); do case $w in virtio_mmio.device=*) mmio=\"$mmio ${w#virtio_mmio.}\";; esac; done\n\
             for m in $(/bin/busybox cat /lib/modules/ember/order); do\n\
             \x20 if [ \"$m\" = virtio_mmio ] && [ -n \"$mmio\" ]; then /bin/busybox insmod /lib/modules/ember/$m.ko $mmio 2>/dev/null && continue; fi\n\
             \x20 /bin/busybox insmod /lib/modules/ember/$m.ko || echo \"ember: insmod $m failed\"\n\
             done\n",
        );
    }
    let mut command: Vec<String> = plan.command.iter().map(|a| sh_quote(a)).collect();
    if let Some(root) = &plan.root {
        let tag = sh_quote(&root.tag);
        s.push_str(&format!(
            "/bin/busybox mkdir -p /ember/lower /ember/rw {NEW_ROOT}\n\
             /bin/busybox mount -t 9p -o {P9_OPTS},ro,cache=loose {tag} /ember/lower || echo 'ember: cannot mount the root share'\n\
             /bin/busybox mount -t tmpfs -o mode=0755 tmpfs /ember/rw\n\
             /bin/busybox mkdir -p /ember/rw/upper /ember/rw/work\n\
             if ! /bin/busybox mount -t overlay -o lowerdir=/ember/lower,upperdir=/ember/rw/upper,workdir=/ember/rw/work overlay {NEW_ROOT} 2>/dev/null; then\n\
             \x20 echo 'ember: no overlayfs: the root is read-only, with tmpfs on /run /var/tmp /root'\n\
             \x20 /bin/busybox mount --bind /ember/lower {NEW_ROOT}\n\
             \x20 for d in /run /var/tmp /root; do /bin/busybox mount -t tmpfs tmpfs {NEW_ROOT}$d 2>/dev/null; done\n\
             fi\n\
             /bin/busybox mount -t proc proc {NEW_ROOT}/proc\n\
             /bin/busybox mount -t sysfs sysfs {NEW_ROOT}/sys\n\
             /bin/busybox mount -t devtmpfs devtmpfs {NEW_ROOT}/dev\n\
             /bin/busybox mkdir -p {NEW_ROOT}/run/ember\n\
             /bin/busybox cp /bin/busybox {NEW_ROOT}/run/ember/busybox\n"
        ));
        for m in &plan.mounts {
            mount_share(&mut s, m, NEW_ROOT);
        }
        // chroot, then (as the caller's user) a clean environment, the
        // caller's directory and the command.
        let bb = "/run/ember/busybox";
        let mut run = vec!["/bin/busybox".to_string(), "chroot".into(), NEW_ROOT.into(), bb.into()];
        if root.uid != 0 || root.gid != 0 {
            run.extend([
                "setpriv".to_string(),
                format!("--reuid={}", root.uid),
                format!("--regid={}", root.gid),
                "--clear-groups".into(),
                bb.into(),
            ]);
        }
        run.extend(["env".to_string(), "-i".into()]);
        run.extend(root.env.iter().map(|(k, v)| sh_quote(&format!("{k}={v}"))));
        run.extend([
            bb.to_string(),
            "sh".into(),
            "-c".into(),
            sh_quote("cd \"$0\" || exit 125; exec \"$@\""),
            sh_quote(&root.cwd),
        ]);
        run.append(&mut command);
        command = run;
    } else {
        for m in &plan.mounts {
            mount_share(&mut s, m, "");
        }
    }
    if plan.separate_output {
        // raw: no \n -> \r\n; opening a port the kernel has no UART for fails.
        s.push_str(
            "out=/dev/console; err=/dev/console\n\
             if e=$(/bin/busybox stty -F /dev/ttyS1 raw -echo 2>&1); then out=/dev/ttyS1; else echo \"ember: ttyS1: $e: the command's stdout goes to the console\"; fi\n\
             if e=$(/bin/busybox stty -F /dev/ttyS2 raw -echo 2>&1); then err=/dev/ttyS2; else echo \"ember: ttyS2: $e: the command's stderr goes to the console\"; fi\n",
        );
    }
    s.push_str(&format!("cd /\necho \"{BEGIN_MARKER}$ember_nonce===\"\n"));
    if plan.separate_output {
        s.push_str("exec 3>&1 4>&2 >\"$out\" 2>\"$err\"\n");
    }
    s.push_str(&command.join(" "));
    s.push_str("\nrc=$?\n");
    if plan.separate_output {
        // Closing the ports waits for their output to drain.
        s.push_str("exec >&3 2>&4 3>&- 4>&-\n");
    }
    s.push_str(&format!(
        "echo \"{EXIT_MARKER}$ember_nonce=$rc===\"\n\
         /bin/busybox sync\n\
         /bin/busybox reboot -f\n\
         /bin/busybox sleep 5\n"
    ));
    s
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

/// A cpio archive with `modules` as `/lib/modules/ember/NAME.ko` and their
/// load order in `/lib/modules/ember/order` (appended to ember's archive).
pub fn modules_archive(modules: &[(String, Vec<u8>)]) -> Result<Vec<u8>, CpioError> {
    let mut w = CpioWriter::new();
    for d in ["lib", "lib/modules", "lib/modules/ember"] {
        w.dir(d, 0o755)?;
    }
    let mut order = String::new();
    for (name, bytes) in modules {
        w.file(&format!("lib/modules/ember/{name}.ko"), 0o644, bytes)?;
        order.push_str(name);
        order.push('\n');
    }
    w.file("lib/modules/ember/order", 0o644, order.as_bytes())?;
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
    fn root_share_script() {
        let cmd = vec!["./prog".to_string(), "a b".into()];
        let root = RootPlan {
            tag: "ember-root".into(),
            cwd: "/home/u/it's".into(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("HOME".into(), "/home/u".into())],
            uid: 1000,
            gid: 100,
        };
        let plan = InitPlan {
            command: &cmd,
            modules: vec!["virtio_ring".into(), "9p".into()],
            mounts: vec![GuestMount { tag: "out".into(), path: "/mnt/out".into(), read_only: true }],
            root: Some(root.clone()),
            separate_output: true,
        };
        let s = init_script_for(&plan);
        // Modules before any mount of a share; the root before the other share.
        let pos = |n: &str| s.find(n).unwrap_or_else(|| panic!("no {n:?} in\n{s}"));
        assert!(pos("insmod") < pos("-t 9p"), "{s}");
        assert!(pos("'ember-root' /ember/lower") < pos("'out' '/ember/root/mnt/out'"), "{s}");
        assert!(s.contains(",ro 'out'") && s.contains(",ro,cache=loose 'ember-root'"), "{s}");
        assert!(s.contains("lowerdir=/ember/lower,upperdir=/ember/rw/upper"), "{s}");
        let line = s.lines().find(|l| l.starts_with("/bin/busybox chroot")).unwrap();
        assert_eq!(
            line,
            "/bin/busybox chroot /ember/root /run/ember/busybox setpriv --reuid=1000 --regid=100 --clear-groups \
             /run/ember/busybox env -i 'PATH=/usr/bin:/bin' 'HOME=/home/u' /run/ember/busybox sh -c \
             'cd \"$0\" || exit 125; exec \"$@\"' '/home/u/it'\\''s' './prog' 'a b'"
        );
        assert!(pos("exec 3>&1 4>&2 >\"$out\" 2>\"$err\"") < pos("/bin/busybox chroot"));
        assert!(pos("rc=$?") < pos("exec >&3 2>&4") && pos("exec >&3 2>&4") < pos(EXIT_MARKER));
        // As root: no setpriv; without a root share: mounts at the path itself.
        let plan = InitPlan { root: Some(RootPlan { uid: 0, gid: 0, ..root }), ..plan };
        assert!(!init_script_for(&plan).contains("setpriv"));
        let plan = InitPlan { root: None, modules: vec![], separate_output: false, ..plan };
        let s = init_script_for(&plan);
        assert!(s.contains(",ro 'out' '/mnt/out'") && !s.contains("insmod") && !s.contains("ttyS1"), "{s}");
    }

    #[test]
    fn modules_go_in_their_own_archive() {
        let a = modules_archive(&[("virtio".into(), b"V".to_vec()), ("9p".into(), b"P".to_vec())]).unwrap();
        let e = parse(&a).unwrap();
        let find = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("lib/modules/ember/9p.ko").data, b"P");
        assert_eq!(find("lib/modules/ember/order").data, b"virtio\n9p\n");
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
