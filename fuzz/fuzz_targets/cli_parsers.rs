//! Everything a user types: the `ember` binary's value parsers
//! (src/bin/ember/parse.rs) and clap command line (src/bin/ember/args.rs),
//! both compiled into this target by path, and the smoke test's `/init`
//! quoting of the command after `--`.
//!
//! The input, as (lossy) UTF-8, goes whole to `parse_size`,
//! `parse_duration`, `parse_mac`, `parse_disk`, `parse_net`,
//! `parse_serial` and `parse_boot`; split at NUL bytes it is the argv of
//! `ember` (`Cli::try_parse_from`) and the command of `ember smoke -- ...`
//! (`init_script`).
//!
//! Invariants: no panic, and
//! * `parse_size` accepts exactly `<digits>[k|m|g|t][b|ib]` / `<digits>b`
//!   (ASCII case-insensitive, surrounding whitespace allowed) whose value
//!   fits in a u64, and returns digits × unit (MiB without a unit);
//! * `parse_duration` results are at most 10^9 s;
//! * `parse_mac` (ember's one MAC grammar, in
//!   `ember_devices::virtio::net`) accepts exactly six `:`-separated pairs
//!   of hex digits (any case) and reads its canonical form back;
//! * a disk / NIC / serial spec that parses has the
//!   documented limits and survives a format-and-parse round trip;
//! * a command line clap accepts yields a configuration `validate()` can
//!   judge (no panic either way);
//! * the `/init` script quotes every argument so that a POSIX shell reads
//!   back exactly the original arguments.
//!
//! With `EMBER_FUZZ_STRICT=1` sizes must also be > 0 (`parse_size("0")` is
//! `Ok(0)` today, see README.md).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use ember::{BootProtocol, SerialConfig};
use ember_devices::virtio::net::parse_mac;
use libfuzzer_sys::fuzz_target;

// The binary's own modules, as `crate::args` and `crate::parse`.
#[allow(dead_code)]
#[path = "../../src/bin/ember/args.rs"]
mod args;
#[allow(dead_code)]
#[path = "../../src/bin/ember/parse.rs"]
mod parse;

use args::{Cli, Command};
use parse::{parse_boot, parse_disk, parse_duration, parse_net, parse_serial, parse_size};

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("EMBER_FUZZ_STRICT").is_some_and(|v| v != "0"))
}

/// The value `s` denotes as a size, by the documented grammar.
fn expected_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for b in t[..digits].bytes() {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    let suffix = t[digits..].to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "b" => 0,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Reads the words of a POSIX shell command line that uses only single
/// quotes, backslash escapes and spaces (what `init_script` may emit).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    cur.push(q);
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn check_init_script(args: &[String]) {
    let script = ember::fuzzing::init_script(args);
    // The command is the line after `cd /` and the start marker, up to
    // the `rc=$?` line that follows it.
    let echo = script.find("\ncd /\necho ").expect("start marker line") + "\ncd /\n".len();
    let start = echo + script[echo..].find('\n').expect("marker end") + 1;
    let end = script.rfind("\nrc=$?\n").expect("rc line");
    assert!(start <= end, "{script:?}");
    let words = shell_words(&script[start..end]);
    assert_eq!(words, args, "init_script quoting of {args:?}:\n{script}");
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    // Sizes.
    let size = parse_size(s);
    assert_eq!(size.as_ref().ok().copied(), expected_size(s), "parse_size({s:?}) = {size:?}");
    if let Ok(v) = size {
        assert_eq!(parse_size(&format!("{v}b")), Ok(v));
        assert_eq!(parse_size(&format!(" {v}B ")), Ok(v));
        if strict() {
            assert!(v > 0, "parse_size({s:?}) = 0");
        }
    }

    // Durations.
    if let Ok(d) = parse_duration(s) {
        assert!(d <= Duration::from_secs(1_000_000_001), "parse_duration({s:?}) = {d:?}");
    }

    // MAC addresses: exactly six pairs of hex digits separated by `:`.
    if let Some(m) = parse_mac(s) {
        let canon = format_mac(&m);
        assert!(s.eq_ignore_ascii_case(&canon), "parse_mac({s:?}) = {canon}");
        assert_eq!(ember_devices::virtio::net::format_mac(&m), canon);
        assert_eq!(parse_mac(&canon.to_ascii_uppercase()), Some(m));
    }

    // Device options.
    if let Ok(d) = parse_disk(s) {
        let path = d.path.to_str().expect("path from a str");
        assert!(!path.is_empty());
        assert!(d.id.as_ref().is_none_or(|id| id.len() <= 20), "{d:?}");
        let mut again = format!("path={path},readonly={}", if d.read_only { "on" } else { "off" });
        if let Some(id) = &d.id {
            again.push_str(&format!(",id={id}"));
        }
        assert_eq!(parse_disk(&again).as_ref(), Ok(&d), "{again:?}");
    }
    if let Ok(n) = parse_net(s) {
        assert!((1..16).contains(&n.tap.len()), "{n:?}");
        let mut again = format!("tap={}", n.tap);
        if let Some(m) = &n.mac {
            again.push_str(&format!(",mac={}", format_mac(m)));
        }
        assert_eq!(parse_net(&again).as_ref(), Ok(&n), "{again:?}");
    }
    if let Ok(SerialConfig::File(p)) = parse_serial(s) {
        assert!(!p.as_os_str().is_empty());
    }
    if let Ok(b) = parse_boot(s) {
        let name = match b {
            BootProtocol::Auto => "auto",
            BootProtocol::Linux64 => "linux64",
            BootProtocol::Pvh => "pvh",
        };
        assert_eq!(parse_boot(name), Ok(b));
    }

    // The command line, split at NULs.
    let args: Vec<String> = s.split('\0').map(str::to_string).collect();
    match Cli::try_parse_from(std::iter::once("ember".to_string()).chain(args.iter().cloned())) {
        Ok(Cli { command: Command::Run(run) }) => {
            // Exactly one of --kernel and --config-file.
            assert!(run.kernel.is_some() != run.config_file.is_some());
            let cfg = run.to_config();
            let _ = cfg.validate();
            assert_eq!(cfg.memory, run.memory);
            if strict() {
                assert!(run.memory > 0);
            }
        }
        Ok(Cli { command: Command::Smoke(smoke) }) => {
            let sm = smoke.to_smoke();
            let _ = sm.kernel_cmdline();
            check_init_script(&smoke.command);
        }
        Ok(Cli { command: Command::Serve(serve) }) => {
            // Parsing must not panic; the flags are used as they are.
            let _ = (serve.api_sock, serve.config_file, serve.shutdown_timeout);
        }
        Ok(Cli { command: Command::Restore(restore) }) => {
            // The files are the snapshot's; the rest is host-side.
            let rc = restore.to_restore_config();
            assert_eq!((rc.files.state, rc.files.memory), (restore.snapshot.clone(), restore.mem_file.clone()));
            assert_eq!(rc.jail.is_some(), restore.hardening.user.is_some());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    check_init_script(&args);
});
