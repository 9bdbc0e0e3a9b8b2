//! Shared support for ember's integration tests: building test guests,
//! running the `ember` binary with a deadline, and the KVM gate.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where built guests go.
pub fn guest_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    target.join("guests")
}

/// Whether a test that needs /dev/kvm can run. Without KVM it prints a
/// skip line and returns false, unless EMBER_REQUIRE_KVM=1, where it fails.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("EMBER_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("EMBER_REQUIRE_KVM=1 but /dev/kvm cannot be opened: {e}");
            }
            eprintln!("skipped: /dev/kvm not usable ({e})");
            false
        }
    }
}

/// Whether the host has hardware virtualisation (vmx/svm), as opposed to an
/// emulating KVM such as PVM.
pub fn hardware_kvm() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx" || f == "svm")))
        .unwrap_or(false)
}

/// Builds test guest `name` (e.g. "boot_state") from tests/guests with the
/// system gcc and returns the ELF's path. Concurrent callers (test threads
/// and test binaries) serialise on a lock file.
pub fn guest(name: &str) -> PathBuf {
    let out = guest_dir();
    std::fs::create_dir_all(&out).unwrap();
    let lock = File::create(out.join(".build.lock")).unwrap();
    // SAFETY: flock on a valid fd.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let target = format!("{name}.elf");
    let r = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(repo().join("tests/guests"))
        .arg(format!("O={}", out.display()))
        .arg(&target)
        .output()
        .expect("run make (is make installed?)");
    // SAFETY: unlock the fd we locked.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
    assert!(
        r.status.success(),
        "building guest {name} failed:\n{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let p = out.join(target);
    assert!(p.exists(), "make did not produce {}", p.display());
    p
}

/// The ember binary under test.
pub fn ember() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ember"))
}

/// What a finished run printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status (None if killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code, panicking with the output if there is none.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("process did not exit normally: {self:#?}"),
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Waits for `child` up to `deadline`, killing it after.
pub fn finish(mut child: Child, deadline: Duration) -> Outcome {
    let start = Instant::now();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the drain threads see EOF.
    std::thread::sleep(Duration::from_millis(50));
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    Outcome { status, stdout, stderr, elapsed: start.elapsed() }
}

/// Runs `ember` with `args` and stdin from `input` (empty: /dev/null),
/// killing it after `deadline`.
pub fn run_ember(args: &[&str], input: Option<&[u8]>, deadline: Duration) -> Outcome {
    let mut cmd = Command::new(ember());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn ember");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
            // Keep stdin open until the VM ends, like a terminal would.
            std::thread::sleep(Duration::from_secs(600));
        });
    }
    finish(child, deadline)
}

/// Runs a test guest under ember with `--debug-exit` and returns the outcome.
pub fn run_guest(guest_name: &str, extra: &[&str], cmdline: &str, deadline: Duration) -> Outcome {
    let g = guest(guest_name);
    let mut args = vec!["run", "--kernel", g.to_str().unwrap(), "--debug-exit", "--cmdline", cmdline];
    args.extend_from_slice(extra);
    run_ember(&args, None, deadline)
}

/// CRC-32 (IEEE 802.3), as zlib and the guests compute it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A scratch directory unique to this test process and `name`. They are
/// kept after the run (for a failure's post-mortem); the first call of a
/// process removes those of test processes that are gone.
pub fn scratch(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(sweep_scratch);
    let d = std::env::temp_dir().join(format!("ember-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes the scratch directories of test processes no longer running.
fn sweep_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ember-test-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A directory for the virtio-9p test guest (tests/guests/p9.c) to share:
/// a 100,003-byte file (several reads at its msize, the last one short),
/// and a symbolic link `out` to a directory outside holding a canary.
pub struct P9Share {
    /// The shared directory.
    pub share: PathBuf,
    data: Vec<u8>,
    outside: PathBuf,
}

impl P9Share {
    /// The directory under a scratch directory named `name`.
    pub fn new(name: &str) -> P9Share {
        let d = scratch(name);
        let (share, outside) = (d.join("share"), d.join("outside"));
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), b"outside the share\n").unwrap();
        std::os::unix::fs::symlink(&outside, share.join("out")).unwrap();
        let data = pattern(100_003, 9);
        std::fs::write(share.join("data.bin"), &data).unwrap();
        P9Share { share, data, outside }
    }

    /// The guest's command line when the share's tag is `tag`.
    pub fn guest_cmdline(&self, tag: &str) -> String {
        format!("tag={tag} file=data.bin len={} crc={:#x} link=out", self.data.len(), crc32(&self.data))
    }

    /// The guest read the file's exact bytes and passed every step, and
    /// nothing outside the share changed.
    pub fn check(&self, console: &str) {
        assert!(console.contains("p9: read 100003 bytes"), "{console}");
        assert!(console.contains("P9 OK"), "{console}");
        assert_eq!(std::fs::read(self.outside.join("passwd")).unwrap(), b"outside the share\n");
    }
}

/// Whether `path` exists as a file.
pub fn exists(path: &Path) -> bool {
    path.is_file()
}

/// Whether `qemu-system-x86_64` is installed. Without it a cross-check test
/// prints a skip line and returns false, unless EMBER_REQUIRE_QEMU=1 (set
/// by `.ci/run`, which installs QEMU), where it fails.
pub fn qemu_available() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("EMBER_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("EMBER_REQUIRE_QEMU=1 but qemu-system-x86_64 is not installed (scripts/setup installs it)");
        }
        eprintln!("skipped: qemu-system-x86_64 not installed");
    }
    ok
}

/// Runs a test guest under `qemu-system-x86_64 -M microvm` (TCG, PVH entry)
/// with isa-debug-exit at 0xf4 and modern virtio-mmio transports.
pub fn run_qemu(guest_name: &str, cmdline: &str, extra: &[&str], deadline: Duration) -> Outcome {
    let g = guest(guest_name);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-m", "128M"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-kernel")
        .arg(&g)
        .args(["-append", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    finish(cmd.spawn().expect("spawn qemu-system-x86_64"), deadline)
}

/// The guest's exit code from a QEMU run: isa-debug-exit ends QEMU with
/// `(code << 1) | 1`.
pub fn qemu_guest_code(o: &Outcome) -> i32 {
    let c = o.code();
    assert_eq!(c & 1, 1, "QEMU did not end through isa-debug-exit: {o:#?}");
    c >> 1
}

/// Asserts a guest run ended with `code`, showing everything if not.
pub fn assert_code(o: &Outcome, code: i32) {
    let got = o.status.and_then(|s| s.code());
    assert_eq!(got, Some(code), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
}

/// Runs a `scripts/` helper that prints `key=value` lines and returns them.
/// A failing script fails the test: fetching is part of what is tested.
pub fn script_outputs(script: &str, args: &[&str]) -> Vec<(String, String)> {
    let r = Command::new(repo().join("scripts").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(r.status.success(), "scripts/{script} failed: {}", String::from_utf8_lossy(&r.stdout));
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// Debian's stock kernel: (vmlinuz, vmlinux, has a PVH note), fetched by
/// scripts/fetch-debian-kernel into the cache outside the repo (once).
pub fn debian_kernel() -> (PathBuf, PathBuf, bool) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let kv = script_outputs("fetch-debian-kernel", &[]);
    let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    (
        PathBuf::from(get("vmlinuz").expect("vmlinuz= line")),
        PathBuf::from(get("vmlinux").expect("vmlinux= line")),
        get("pvh").as_deref() == Some("yes"),
    )
}

/// The e820 lines Linux prints ("BIOS-e820: [mem A-B] type") for ember's
/// memory map with `mem` bytes of RAM (docs/boot.md), with the ECAM of
/// the PCI root every VM has (bus 0, 1 MiB at 0xe0000000) reserved in
/// address order. Through the PVH entry Linux itself reserves the ISA range
/// 640 KiB–1 MiB (arch/x86/platform/pvh/enlighten.c), which merges with
/// ember's reserved EBDA entry.
pub fn expected_linux_e820(mem: u64, pvh: bool) -> Vec<String> {
    let hole = 0xc000_0000u64;
    let low = mem.min(hole);
    let mut v = vec![
        (0u64, 0x9fc00u64, "usable"),
        (0x9fc00, if pvh { 0x10_0000 } else { 0xa0000 }, "reserved"),
        (0x10_0000, low, "usable"),
        (0xe000_0000, 0xe010_0000, "reserved"),
    ];
    if mem > hole {
        v.push((1 << 32, (1 << 32) + mem - hole, "usable"));
    }
    v.into_iter().map(|(a, b, t)| format!("BIOS-e820: [mem {a:#018x}-{:#018x}] {t}", b - 1)).collect()
}

/// Kernel command-line flags a Linux guest needs on hosts where guest code
/// is emulated (PVM), with why. The guest's CPUID shows most of the host's
/// features whatever the VMM sets, so features the emulator cannot execute
/// are turned off on the kernel's side (../shared/LINUX-UNDER-EMULATION.md).
pub fn linux_emulation_flags() -> String {
    [
        "noxsave",    // xsave/xrstor are not emulated: FPU state via fxsave
        "nofsgsbase", // rd/wrfsbase are not emulated
        // Each was found by the emulator stopping on it: clac/stac (SMAP),
        // popcnt, rdpid, BMI/AVX/FMA encodings, movbe, cache-line flushes,
        // rdseed/rdrand, adx.
        "clearcpuid=smap,popcnt,rdpid,bmi1,bmi2,avx,avx2,fma,movbe,clflushopt,clwb,rdseed,rdrand,adx",
        "lpj=1000000", // skip delay-loop calibration: millions of emulated instructions
    ]
    .join(" ")
}

fn last_line_of(script: &str) -> PathBuf {
    let r = Command::new(repo().join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(r.status.success(), "scripts/{script} failed");
    let out = String::from_utf8_lossy(&r.stdout);
    let p = PathBuf::from(out.lines().last().expect("a path on the last line").trim());
    assert!(p.is_file(), "scripts/{script} printed {}, which is not a file", p.display());
    p
}

/// The project's Linux test kernel (scripts/build-test-kernel: cached, or
/// built once, serialised across test processes by the script's lock).
pub fn test_kernel() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    last_line_of("build-test-kernel")
}

/// The no-syscall /init for the test kernel (scripts/build-test-init).
pub fn test_init() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    last_line_of("build-test-init")
}

/// An initramfs holding only /dev/console and the no-syscall /init.
pub fn init_cpio() -> Vec<u8> {
    let mut w = ember::CpioWriter::new();
    w.dir("dev", 0o755).unwrap();
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.file("init", 0o755, &std::fs::read(test_init()).unwrap()).unwrap();
    w.finish()
}

/// The console lines of a Linux boot, without the trailing `\r`.
pub fn console_lines(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()
}

/// A child process whose output is collected while it runs, so a test can
/// wait for a line and then act (ping the guest, stop it).
pub struct Spawned {
    /// The child.
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    /// When it was started.
    pub start: Instant,
}

impl Spawned {
    /// Starts `program args` with stdin from /dev/null.
    pub fn new(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Spawned {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        Spawned { child, out, err, start: Instant::now() }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `needle` (true), the child exits or
    /// `timeout` passes (false).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return true;
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self.stdout().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the child (SIGTERM, then SIGKILL) and returns its status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..50 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace with a TAP device in it, removed on drop. The host
/// side of the TAP gets `host_ip/24`.
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    /// TAP name inside it.
    pub tap: String,
}

impl NetNs {
    /// Creates namespace `ember-<tag>-<pid>` with TAP `tap0` at `host_ip`.
    /// Returns None (after a skip line) when not root, unless
    /// EMBER_REQUIRE_KVM=1, where it fails.
    pub fn new(tag: &str, host_ip: &str) -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var("EMBER_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("network namespace tests need root");
            }
            eprintln!("skipped: network namespace tests need root");
            return None;
        }
        let name = format!("ember-{tag}-{}", std::process::id());
        let ns = NetNs { name: name.clone(), tap: "tap0".into() };
        let run = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip (iproute2)");
            assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        run(&["netns", "add", &name]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        run(&["-n", &name, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        run(&["-n", &name, "addr", "add", &format!("{host_ip}/24"), "dev", "tap0"]);
        run(&["-n", &name, "link", "set", "tap0", "up"]);
        Some(ns)
    }

    /// Runs `args` inside the namespace and returns its output.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().expect("ip netns exec")
    }

    /// `ip netns exec NAME` as an argument prefix.
    pub fn prefix(&self) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.name.clone()]
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Builds an ext2 image with scripts/mkext2 holding `files` (name, host path).
pub fn mkext2(out: &Path, size_mib: u32, files: &[(&str, &Path)]) {
    let mut args = vec![out.display().to_string(), size_mib.to_string()];
    for (n, p) in files {
        args.push(format!("{n}={}", p.display()));
    }
    let o = Command::new(repo().join("scripts/mkext2")).args(&args).output().expect("scripts/mkext2");
    assert!(o.status.success(), "mkext2: {}", String::from_utf8_lossy(&o.stderr));
}

/// The ext2 superblock's mount count (s_mnt_count, at byte 1024 + 52).
pub fn ext2_mount_count(img: &Path) -> u16 {
    let d = std::fs::read(img).unwrap();
    u16::from_le_bytes([d[1024 + 52], d[1024 + 53]])
}

impl NetNs {
    /// The arguments of `ip` that run `ember run` inside the namespace on
    /// test guest `guest_name` with a NIC on the namespace's TAP (`mac`),
    /// --debug-exit, 64 MiB, info logging (the NIC counters are printed at
    /// exit) and `cmdline`.
    pub fn ember_args(&self, guest_name: &str, mac: &str, cmdline: &str) -> Vec<String> {
        let g = guest(guest_name);
        let e = ember();
        // The guest drives the transport its command line names, so the
        // NIC is put on that one.
        let transport = if cmdline.contains("transport=pci") { "pci" } else { "mmio" };
        let net = format!("tap={},mac={mac},transport={transport}", self.tap);
        let mut args = self.prefix();
        for a in [
            e.to_str().unwrap(),
            "run",
            "--kernel",
            g.to_str().unwrap(),
            "--debug-exit",
            "--memory",
            "64M",
            "--net",
            &net,
            "--cmdline",
            cmdline,
            "--log-level",
            "info",
        ] {
            args.push(a.to_string());
        }
        args
    }

    /// Starts [`NetNs::ember_args`]'s `ember run` in the background.
    pub fn spawn_ember(&self, guest_name: &str, mac: &str, cmdline: &str) -> Spawned {
        let args = self.ember_args(guest_name, mac, cmdline);
        Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// What `blk.c` leaves on a read-write disk of `orig` (its header comment):
/// three pattern writes, a discarded range and a write-zeroed range.
pub fn expected_after_blk(orig: &[u8]) -> Vec<u8> {
    let mut e = orig.to_vec();
    let cap = (orig.len() / 512) as u64;
    let pat = |o: u64| ((o >> 9) * 31 + (o & 511) * 7 + 0x5a) as u8;
    for s in [1, cap / 2, cap - 8] {
        for o in s * 512..(s + 8) * 512 {
            e[o as usize] = pat(o);
        }
    }
    for (s, n) in [(64u64, 16u64), (96, 8)] {
        e[(s * 512) as usize..((s + n) * 512) as usize].fill(0);
    }
    e
}

/// Asserts the image at `path` holds exactly `want`.
pub fn assert_image(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap();
    assert_eq!(got.len(), want.len(), "the image changed size");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("image differs first at byte {i} (sector {}): {:#x} != {:#x}", i / 512, got[i], want[i]);
    }
}

/// UDP client run inside a namespace against the net test guest: echoes
/// of 1, 100 and 1472 bytes, then 1,000 datagrams with at most 16 in
/// flight; every reply must be byte-identical. Then "EMBER-QUIT". Prints
/// "OK sent=N" or the first failure.
pub const UDP_CLIENT: &str = r#"
import socket, sys, os
ip, port = sys.argv[1], 7
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(30)
s.connect((ip, port))
def check(payload):
    s.send(payload)
    got = s.recv(65536)
    if got != payload:
        print("MISMATCH len", len(payload), len(got)); sys.exit(1)
for n in (1, 100, 1472):
    check(os.urandom(n))
sent = 3
pending = {}
seq = 0
recv = 0
while recv < 1000:
    while seq < 1000 and len(pending) < 16:
        p = seq.to_bytes(4, 'big') + os.urandom(60 + seq % 900)
        pending[seq] = p; s.send(p); seq += 1
    got = s.recv(65536)
    k = int.from_bytes(got[:4], 'big')
    if pending.pop(k, None) != got:
        print("MISMATCH in burst at", k); sys.exit(1)
    recv += 1
s.send(b"EMBER-QUIT")
bye = s.recv(100)
print("OK sent=%d bye=%r" % (sent + 1000, bye))
"#;

/// Runs a test guest under `qemu-system-x86_64 -M q35` (TCG, PVH entry
/// through SeaBIOS's loader): PCI with ECAM at 0xb0000000, isa-debug-exit
/// at 0xf4; `extra` adds the devices.
pub fn run_qemu_q35(guest_name: &str, cmdline: &str, extra: &[&str], deadline: Duration) -> Outcome {
    let g = guest(guest_name);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(q35_args(&g, cmdline)).args(extra).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    finish(cmd.spawn().expect("spawn qemu-system-x86_64"), deadline)
}

/// The arguments of a q35 run of the guest ELF `g` (without devices).
pub fn q35_args(g: &Path, cmdline: &str) -> Vec<String> {
    [
        "-M",
        "q35",
        "-accel",
        "tcg",
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-m",
        "128M",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-kernel",
        g.to_str().unwrap(),
        "-append",
        cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The numbers of the `count N` lines the `count` guest printed, in order.
/// A line cut by a pause is whole again once its end arrives.
pub fn counts(text: &str) -> Vec<u64> {
    text.lines().filter_map(|l| l.trim().strip_prefix("count ")?.parse().ok()).collect()
}

/// Checks that `counts` is 1, 2, 3, ... with no gap or repeat, and returns
/// the last number.
pub fn assert_counts_consecutive(counts: &[u64]) -> u64 {
    for (i, &n) in counts.iter().enumerate() {
        assert_eq!(
            n,
            i as u64 + 1,
            "the count jumps or repeats at line {}: {:?}",
            i + 1,
            &counts[i.saturating_sub(3)..]
        );
    }
    counts.last().copied().unwrap_or(0)
}

// `ember serve`'s API from the tests: a client, and the server started.

/// One request on its own connection; returns the status and the body.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head end in {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status in {head:?}"));
    (status, body.to_string())
}

/// `body` parsed as JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?} is not JSON: {e}"))
}

/// Waits until `ember`'s stdout shows the count guest's `count n` line.
pub fn wait_stdout_count(ember: &mut Spawned, n: u64) {
    assert!(
        ember.wait_for(&format!("count {n}\r\n"), Duration::from_secs(120)),
        "no count {n}: {}\n{}",
        ember.stdout(),
        ember.stderr()
    );
}

/// `GET /`'s `state`.
pub fn state(sock: &Path) -> String {
    let (st, body) = call(sock, "GET", "/", None);
    assert_eq!(st, 200, "{body}");
    json(&body)["state"].as_str().unwrap().to_string()
}

/// Waits for the socket file to appear.
pub fn wait_socket(sock: &Path, ember: &mut Spawned) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket; stderr: {}", ember.stderr());
        assert!(ember.child.try_wait().unwrap().is_none(), "ember serve ended: {}", ember.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The file exists from bind(2); connections are accepted from listen(2).
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "the socket never accepted a connection");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ember serve` on `sock` with `extra` flags, once it accepts.
pub fn serve(sock: &Path, extra: &[&str]) -> Spawned {
    let mut args = vec!["serve", "--api-sock", sock.to_str().unwrap(), "--id", "api-vm-test"];
    args.extend_from_slice(extra);
    let mut e = Spawned::new(ember(), &args);
    wait_socket(sock, &mut e);
    e
}
