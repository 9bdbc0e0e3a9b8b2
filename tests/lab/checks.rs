//! What a host-side check sees of a finished lab step, and the kernel-log
//! rule every L2 console is held to.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A finished step, as the host sees it.
pub struct StepRun {
    /// The step's name.
    pub name: String,
    /// The script's exit status in L1 (124: L1's timeout ended it).
    pub status: i32,
    /// The step's duration measured in L1.
    pub secs: f64,
    /// The step's duration measured here (begin to end marker).
    pub wall: Duration,
    /// How many processes it left running (L1 killed them).
    pub leftovers: usize,
    /// Its stdout and stderr.
    pub output: String,
    /// Its work directory (`$LAB_WORK`, the same path in L1).
    pub dir: PathBuf,
}

/// One L2 run recorded by `lab_l2 NAME` (tests/lab/lib.sh).
#[derive(Debug)]
pub struct L2Run {
    /// The VMM's exit status.
    pub status: i32,
    /// Its output: the guest's console and the VMM's own messages.
    pub console: String,
    /// Wall seconds in L1.
    pub secs: f64,
}

impl L2Run {
    /// The console's lines without `\r` and without the kernel's
    /// `[    1.234567] ` time stamps (see [`console_lines`]).
    pub fn lines(&self) -> Vec<String> {
        console_lines(&self.console)
    }

    /// Whether a console line (time stamp removed) equals `line`.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// The value of the first `KEY=VALUE` word in a console line that
    /// starts with `prefix` (e.g. "LAB-L2").
    pub fn field(&self, prefix: &str, key: &str) -> Option<String> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string)))
    }
}

impl StepRun {
    /// Reads what the step left in `work/out/NAME`.
    pub fn load(work: &Path, name: &str, status: i32, secs: f64, wall: Duration, leftovers: usize) -> StepRun {
        let dir = work.join("out").join(name);
        let output = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
        StepRun { name: name.to_string(), status, secs, wall, leftovers, output, dir }
    }

    /// The value of the last `KEY=VALUE` line of the output (`lab_kv`).
    pub fn kv(&self, key: &str) -> Option<String> {
        let p = format!("{key}=");
        self.output.lines().rev().find_map(|l| l.strip_prefix(&p).map(|v| v.trim_end().to_string()))
    }

    /// Like [`StepRun::kv`], failing the check when the key is missing.
    pub fn get(&self, key: &str) -> String {
        self.kv(key).unwrap_or_else(|| panic!("{}: the step printed no {key}= line", self.name))
    }

    /// A file in the step's work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The contents of a file in the work directory (failing the check if
    /// it is missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_else(|e| panic!("{}: cannot read {name} in its work directory: {e}", self.name))
    }

    /// The L2 run recorded as `lab_l2 NAME` (failing the check if the step
    /// did not make it).
    pub fn l2(&self, name: &str) -> L2Run {
        let status = self.read(&format!("{name}.status"));
        L2Run {
            status: status
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{}: {name}.status is not a number: {status:?}", self.name)),
            console: self.read(&format!("{name}.console")),
            secs: self.read(&format!("{name}.secs")).trim().parse().unwrap_or(f64::NAN),
        }
    }

    /// Every recorded L2 console: (run name, text), sorted by name.
    pub fn consoles(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let name = n.strip_suffix(".console")?.to_string();
                        Some((name, std::fs::read_to_string(e.path()).unwrap_or_default()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A console line without `\r` and the kernel's `[    1.234567] ` prefix.
pub fn strip_timestamp(line: &str) -> String {
    let l = line.trim_end_matches('\r');
    if let Some(rest) = l.strip_prefix('[') {
        if let Some(i) = rest.find("] ") {
            if rest[..i].trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return rest[i + 2..].to_string();
            }
        }
    }
    l.to_string()
}

/// Where a kernel time stamp (`[` spaces, digits and a dot, `] `) starts
/// inside `line` after its first byte.
fn midline_timestamps(line: &str) -> Vec<usize> {
    line.match_indices('[')
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .filter(|&i| {
            let rest = &line[i + 1..];
            rest.find("] ").is_some_and(|end| {
                let stamp = rest[..end].trim_start();
                stamp.contains('.') && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
            })
        })
        .collect()
}

/// A console's lines with the kernel's time stamps removed. The guest's
/// own output and the kernel's messages share the serial port, so a kernel
/// message can follow a line the guest had not ended yet
/// (`LAB-COUNT 16[   16.83] reboot: Restarting system`): such a line is
/// split where the time stamp starts, and each part is a line of its own.
pub fn console_lines(console: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in console.lines() {
        let l = raw.trim_end_matches('\r');
        let mut start = 0;
        for at in midline_timestamps(l) {
            out.push(strip_timestamp(&l[start..at]));
            start = at;
        }
        out.push(strip_timestamp(&l[start..]));
    }
    out
}

/// What makes a kernel log unclean: a warning, a bug or an oops, and the
/// signs of a machine the stock kernel finds wanting (issue 14): ACPI
/// tables it rejects, PCI probed without a way to reach it, an i8042 that
/// does not answer its controller commands.
pub const BAD_PATTERNS: &[&str] =
    &["WARNING:", "BUG:", "Call Trace", "Oops", "ACPI BIOS Error", "ACPI Error", "PCI: Fatal", "Can't read CTR"];

/// The one warning the lab itself causes (docs/testing.md): TCG's CPUID
/// leaf 0xD reports an XSAVE area size that does not match the sum of its
/// components, so the stock kernel's consistency check warns, in the same
/// L1 under Firecracker too.
pub const ALLOWED_WARNING: &str = "XSAVE consistency problem: size 2696 != kernel_size 576";
/// The function the allowed warning comes from (its WARNING: line names it).
pub const ALLOWED_WARNING_AT: &str = "fpu__init_system_xstate";

/// What Linux 6.1 prints whenever it boots with `pci=off` on x86
/// (arch/x86/pci/init.c: `pci=off` clears every configuration access
/// method, and `pci_arch_init` then finds none). It fails the clean-log
/// rule like any other [`BAD_PATTERNS`] line: ember gives every VM a PCI
/// root and never passes `pci=off` (docs/boot.md).
pub const PCI_OFF_LINE: &str = "PCI: Fatal: No config space access function found";

/// The lines of a kernel log that break the clean-log rule: any line with
/// one of [`BAD_PATTERNS`], outside the one allowed warning block (from its
/// `cut here` line, or the message itself, to its `end trace` line; the
/// message must match [`ALLOWED_WARNING`] exactly and the block's
/// `WARNING:` line must name [`ALLOWED_WARNING_AT`]).
pub fn kernel_log_problems(console: &str) -> Vec<String> {
    let lines = console_lines(console);
    let mut allowed = vec![false; lines.len()];
    for (i, l) in lines.iter().enumerate() {
        if l != ALLOWED_WARNING {
            continue;
        }
        let start = if i > 0 && lines[i - 1].contains("[ cut here ]") { i - 1 } else { i };
        let Some(end) = (i..lines.len()).find(|&j| lines[j].starts_with("---[ end trace")) else { continue };
        let warning_ok = lines[i..end].iter().any(|l| l.starts_with("WARNING:") && l.contains(ALLOWED_WARNING_AT));
        if warning_ok {
            allowed[start..=end].iter_mut().for_each(|a| *a = true);
        }
    }
    lines
        .iter()
        .zip(&allowed)
        .filter(|(l, ok)| !**ok && BAD_PATTERNS.iter().any(|p| l.contains(p)))
        .map(|(l, _)| l.clone())
        .collect()
}

/// Checks of the checker itself, run at every start of the lab (a broken
/// checker must not pass steps).
pub fn self_test() {
    let warn = "[    0.000000] ------------[ cut here ]------------\n\
        [    0.000000] XSAVE consistency problem: size 2696 != kernel_size 576\n\
        [    0.000000] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:681 fpu__init_system_xstate+0x4b6/0x7a0\n\
        [    0.000000] Call Trace:\n\
        [    0.000000]  <TASK>\n\
        [    0.000000] ---[ end trace 0000000000000000 ]---\n";
    assert!(kernel_log_problems(warn).is_empty(), "{:?}", kernel_log_problems(warn));
    let other = warn.replace("2696", "2697");
    assert_eq!(kernel_log_problems(&other).len(), 2, "{other}");
    let elsewhere = warn.replace("fpu__init_system_xstate", "something_else");
    assert_eq!(kernel_log_problems(&elsewhere).len(), 2);
    let second = format!("{warn}[    1.0] BUG: kernel NULL pointer dereference\n[    1.1] Oops: 0000 [#1]\n");
    assert_eq!(kernel_log_problems(&second), ["BUG: kernel NULL pointer dereference", "Oops: 0000 [#1]"]);
    for line in [
        "ACPI BIOS Error (bug): A valid RSDP was not found (20220331/tbxfroot-210)",
        "ACPI Error: AE_NOT_FOUND, While resolving a named reference package element (20220331/dspkginit-438)",
        PCI_OFF_LINE,
        "i8042: Can't read CTR while initializing i8042",
    ] {
        let log = format!("{warn}[    2.0] {line}\n");
        assert_eq!(kernel_log_problems(&log), [line], "{log}");
    }
    // Not even under a `pci=off` of the user's.
    let pci_off = format!("[    0.0] Command line: console=ttyS0 pci=off\n{warn}[    2.0] {PCI_OFF_LINE}\n");
    assert_eq!(kernel_log_problems(&pci_off), [PCI_OFF_LINE]);
    assert_eq!(strip_timestamp("[   12.5] x y\r"), "x y");
    assert_eq!(strip_timestamp("[x] y"), "[x] y");
    // A kernel message after a line the guest had not ended.
    assert_eq!(
        console_lines("LAB-COUNT 16[   16.831830] reboot: Restarting system\r\n[ 1.0] a [#1] b\n"),
        ["LAB-COUNT 16", "reboot: Restarting system", "a [#1] b"]
    );
    assert_eq!(console_lines("x [2.5] y\n"), ["x ", "y"]);
    assert_eq!(kernel_log_problems("LAB 1[    3.0] BUG: z\n"), ["BUG: z"]);
}
