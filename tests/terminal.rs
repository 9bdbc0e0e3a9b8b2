//! The console on a real terminal (a pseudo-terminal here): raw mode while
//! the guest runs, Ctrl-A x quits like QEMU, Ctrl-A Ctrl-A sends a Ctrl-A,
//! and the terminal's settings are restored on exit.

mod common;

use common::*;

/// Runs ember on a pty with python3's pty module: types `keys` once the
/// guest says ECHO READY, then reports ember's exit status, whether the
/// pty's termios after exit equal those before, and the output.
const DRIVER: &str = r#"
import os, pty, sys, termios, time, select
ember, kernel, keys = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
then = bytes.fromhex(sys.argv[4]) if len(sys.argv) > 4 else b""
pid, fd = pty.fork()
if pid == 0:
    os.execv(ember, [ember, "run", "--kernel", kernel, "--debug-exit", "--cmdline", "stop=Q"])
before = termios.tcgetattr(fd)
out = b""
deadline = time.time() + 60
sent = False
raw_seen = False
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    if not sent and b"ECHO READY" in out:
        raw_seen = not (termios.tcgetattr(fd)[3] & termios.ICANON)
        os.write(fd, keys)
        sent = True
    if sent and then and out.endswith(keys[-3:]):
        os.write(fd, then)
        then = b""
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        break
else:
    os.kill(pid, 9); p, st = os.waitpid(pid, 0)
if not p:
    p, st = os.waitpid(pid, 0)
after = termios.tcgetattr(fd)
print("STATUS", os.waitstatus_to_exitcode(st))
print("RAW", raw_seen)
print("RESTORED", before == after)
print("OUT", out.hex())
"#;

fn drive(keys: &[u8], then: &[u8]) -> (i32, bool, bool, Vec<u8>) {
    let g = guest("serial_echo");
    let hex = |k: &[u8]| -> String { k.iter().map(|b| format!("{b:02x}")).collect() };
    let o = std::process::Command::new("python3")
        .args(["-c", DRIVER, ember().to_str().unwrap(), g.to_str().unwrap(), &hex(keys), &hex(then)])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("{k}: {text}")).trim();
    let out: Vec<u8> =
        (0..get("OUT ").len() / 2).map(|i| u8::from_str_radix(&get("OUT ")[2 * i..2 * i + 2], 16).unwrap()).collect();
    (get("STATUS ").parse().unwrap(), get("RAW ") == "True", get("RESTORED ") == "True", out)
}

#[test]
fn ctrl_a_x_quits_and_restores_the_terminal() {
    if !kvm_available() {
        return;
    }
    // "abc" first (echoed by the guest), then Ctrl-A x.
    let (status, raw, restored, out) = drive(b"abc", b"\x01x");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{text}");
    assert!(raw, "the terminal was not in raw mode while the guest ran");
    assert!(restored, "the terminal settings were not restored");
    assert!(text.contains("abc"), "bytes before the escape reach the guest: {text:?}");
    assert!(!text.contains("ECHO DONE"), "the guest should not have finished: {text:?}");
}

#[test]
fn ctrl_a_ctrl_a_sends_one_ctrl_a() {
    if !kvm_available() {
        return;
    }
    // Ctrl-A Ctrl-A reaches the guest as one byte 0x01; 'Q' ends the guest.
    let (status, _, restored, out) = drive(b"a\x01\x01bQ", b"");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{text:?}");
    assert!(restored);
    assert!(text.contains("ECHO DONE bytes=3"), "{text:?}");
    assert!(out.windows(3).any(|w| w == b"a\x01b"), "{text:?}");
}
