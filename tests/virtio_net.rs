//! virtio-net on a TAP in a network namespace, driven by the net test
//! guest's own driver (tests/guests/net.c: ARP, ICMP echo, UDP echo), by
//! hostile variants (net_hostile.c), and cross-checked under QEMU microvm.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(180);
const HOST_IP: &str = "10.0.3.1";
const GUEST_IP: &str = "10.0.3.2";

/// Listens on the host side: 9999 gets the guest's recovery datagram; the
/// malformed frames carry datagrams to 10001 (peer_port + 2), which must
/// never arrive (ember drops them instead of passing them on).
const LISTENER: &str = r#"
import socket, select, time
ok = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ok.bind(('10.0.3.1', 9999))
bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); bad.bind(('10.0.3.1', 10001))
deadline = time.time() + 120
got = False
while time.time() < deadline:
    r, _, _ = select.select([ok, bad], [], [], 1)
    if bad in r:
        d, a = bad.recvfrom(65536); print('LEAK', len(d), flush=True)
    if ok in r:
        d, a = ok.recvfrom(65536); print('GOT', len(d), a[0], flush=True); got = True
        deadline = min(deadline, time.time() + 2)
"#;

fn net_case(tag: &str, cmdline_extra: &str) {
    if !kvm_available() {
        return;
    }
    let Some(ns) = NetNs::new(tag, HOST_IP) else { return };
    let mac = "02:00:00:00:03:02";
    let cmdline = format!("guest_ip={GUEST_IP} {cmdline_extra}");
    let mut vm = ns.spawn_ember("net", mac, &cmdline);
    assert!(vm.wait_for("net: mac", T), "{}\n{}", vm.stdout(), vm.stderr());
    assert!(vm.stdout().contains(&format!("net: mac {mac}")), "the guest read another MAC: {}", vm.stdout());

    let ping = ns.exec(&["ping", "-c", "5", "-i", "0.2", "-W", "10", GUEST_IP]);
    let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
    assert!(ping.status.success(), "ping: {ping_out}\n{}", vm.stdout());
    assert!(ping_out.contains("5 received"), "{ping_out}");

    let udp = ns.exec(&["python3", "-c", UDP_CLIENT, GUEST_IP]);
    let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
    assert!(
        udp.status.success() && udp_out.starts_with("OK sent=1003"),
        "{udp_out}{}\n{}",
        String::from_utf8_lossy(&udp.stderr),
        vm.stdout()
    );
    assert!(udp_out.contains("BYE"), "{udp_out}");

    let st = vm.child.wait().unwrap();
    let err = vm.stderr();
    assert_eq!(st.code(), Some(0), "{}\n{err}", vm.stdout());
    // The device's counters at exit: nothing dropped, nothing malformed.
    let stats = err.lines().find(|l| l.contains("net0 (tap0): NetStats")).unwrap_or_else(|| panic!("{err}"));
    eprintln!("{tag}: {stats}");
    for k in ["rx_dropped: 0", "rx_malformed: 0", "tx_dropped: 0", "tx_malformed: 0"] {
        assert!(stats.contains(k), "{stats}");
    }
}

#[test]
fn net_ping_and_udp_echo_polling() {
    net_case("net-poll", "");
}

#[test]
fn net_ping_and_udp_echo_interrupts_mrg_rxbuf() {
    net_case("net-irq", "irq=1 mrg=1");
}

fn hostile(case: &str) {
    if !kvm_available() {
        return;
    }
    let Some(ns) = NetNs::new(&format!("nh{}", case.len()), HOST_IP) else { return };
    // Capture what reaches the host side of the TAP while the guest runs.
    let cap = ns.exec(&["true"]); // namespace is ready
    assert!(cap.status.success());
    let listener = Spawned::new("ip", &["netns", "exec", &ns.name, "python3", "-c", LISTENER]);
    std::thread::sleep(Duration::from_millis(300));
    let cmdline = format!("case={case} guest_ip={GUEST_IP} peer_ip={HOST_IP} peer_port=9999");
    let o = {
        let args = ns.ember_args("net_hostile", "02:00:00:00:03:09", &cmdline);
        let child = std::process::Command::new("ip")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        finish(child, T)
    };
    assert_code(&o, 0);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let mut listener = listener;
    assert!(
        listener.wait_for("GOT", Duration::from_secs(30)),
        "the device sent nothing after recovering: {}\n{}",
        o.stdout,
        o.stderr
    );
    let stats = o.stderr.lines().find(|l| l.contains("NetStats")).unwrap_or("").to_string();
    eprintln!("hostile {case}: {stats}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!listener.stdout().contains("LEAK"), "a malformed frame reached the host: {}", listener.stdout());
}

#[test]
fn net_hostile_truncated_header() {
    hostile("short_hdr");
}
#[test]
fn net_hostile_oversized_frame() {
    hostile("oversized");
}
#[test]
fn net_hostile_chain_outside_ram() {
    hostile("outside_ram");
}
#[test]
fn net_hostile_writable_tx_descriptor() {
    hostile("writable_tx");
}
#[test]
fn net_hostile_reset_mid_traffic() {
    hostile("reset_mid_traffic");
}

#[test]
fn bad_taps_are_refused_before_the_guest_starts() {
    let g = guest("hello");
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--net", "tap=ember-no-such0"], None, T);
    assert_code(&o, 2);
    assert!(o.stderr.contains("ember-no-such0"), "{}", o.stderr);
    let o = run_ember(&["run", "--kernel", g.to_str().unwrap(), "--net", "tap=x,mac=01:00:00:00:00:01"], None, T);
    assert_code(&o, 2);
    assert!(o.stderr.contains("01:00:00:00:00:01"), "{}", o.stderr);
}

#[test]
fn net_under_qemu() {
    if !qemu_available() {
        return;
    }
    let Some(ns) = NetNs::new("nq", HOST_IP) else { return };
    let g = guest("net");
    let mut args = ns.prefix();
    args.extend(
        [
            "qemu-system-x86_64",
            "-M",
            "microvm",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-m",
            "128M",
            "-global",
            "virtio-mmio.force-legacy=false",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
            g.to_str().unwrap(),
            "-append",
            &format!("guest_ip={GUEST_IP}"),
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
            "-device",
            "virtio-net-device,netdev=n0,mac=02:00:00:00:03:07",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut vm = Spawned::new("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(vm.wait_for("net: mac 02:00:00:00:03:07", T), "{}\n{}", vm.stdout(), vm.stderr());
    let ping = ns.exec(&["ping", "-c", "3", "-W", "10", GUEST_IP]);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let udp = ns.exec(&["python3", "-c", UDP_CLIENT, GUEST_IP]);
    let udp_out = String::from_utf8_lossy(&udp.stdout).into_owned();
    assert!(udp_out.starts_with("OK sent=1003"), "{udp_out}{}", String::from_utf8_lossy(&udp.stderr));
    let st = vm.child.wait().unwrap();
    assert_eq!(st.code(), Some(1), "QEMU's isa-debug-exit status for guest code 0");
    // (0 << 1) | 1
}

/// Runs the `ip netns exec … ember run` command line given after the
/// script's first argument on a pty; once the guest's storm runs (and
/// frames flow from the namespace into the TAP, sent by the caller), types
/// `ping` and waits for the echo, then Ctrl-A x and waits for the exit.
const STORM_DRIVER: &str = r#"
import os, pty, sys, time, select
ready = sys.argv[1].encode()
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out = b""
def pump(until, deadline):
    global out
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.01)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return False
            if not data:
                return False
            out += data
            if until(out):
                return True
    return False
# ember's log lines share the pty and may split the guest's line: any
# sign of the storm will do.
ok = pump(lambda o: ready in o or b"taken=" in o, time.time() + 120)
time.sleep(2)
pump(lambda o: False, time.time() + 0.1)
print("STORMING", ok)
mark = len(out)
t0 = time.time()
os.write(fd, b"ping")
echo = pump(lambda o: b"ping" in o[mark:], time.time() + 30)
print("ECHO", echo, round(time.time() - t0, 3))
t0 = time.time()
os.write(fd, b"\x01x")
exited = None
while time.time() < t0 + 30:
    p, st = os.waitpid(pid, os.WNOHANG)
    if p:
        exited = time.time() - t0
        break
    pump(lambda o: False, time.time() + 0.005)
if exited is None:
    os.kill(pid, 9); os.waitpid(pid, 0)
print("EXIT", exited is not None, round(exited or 0, 3))
print("TAKEN", out.count(b"NETSTORM taken="))
"#;

/// Sends broadcast frames into the namespace's TAP until killed.
const FRAME_SENDER: &str = r#"
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("tap0", 0))
frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x03\x01" + b"\x88\xb5" + bytes(100)
while True:
    try:
        s.send(frame)
    except OSError:
        pass
    time.sleep(0.001)
"#;

/// Issue 16, finding 1 end to end: a guest keeps its receive ring full of
/// malformed chains (refilling and kicking as fast as it can) while frames
/// wait on the TAP; the console and Ctrl-A x must still answer. Times are
/// printed, not asserted. Under PVM's emulation the vCPU refills more
/// slowly than the device drains, so passes end between refills even
/// without the pass budget: here this is a smoke test of the scenario, and
/// the regression test for the finding is the device unit test with a
/// native thread as the vCPU
/// (`rx_pass_is_bounded_while_a_vcpu_keeps_publishing_malformed_chains`).
#[test]
fn console_and_ctrl_a_x_answer_while_the_receive_ring_refills_itself() {
    if !kvm_available() {
        return;
    }
    let Some(ns) = NetNs::new("rxstorm", HOST_IP) else { return };
    let mut args = vec!["ip".to_string()];
    args.extend(ns.ember_args("net_storm", "02:00:00:00:03:0a", "x=1"));
    let mut sender = std::process::Command::new("ip")
        .args(ns.prefix())
        .args(["python3", "-c", FRAME_SENDER])
        .spawn()
        .expect("frame sender");
    let o = std::process::Command::new("python3")
        .args(["-c", STORM_DRIVER, "NETSTORM READY"])
        .args(&args)
        .output()
        .expect("python3");
    let _ = sender.kill();
    let _ = sender.wait();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or_else(|| panic!("{k}: {text}")).to_string();
    assert!(line("STORMING").ends_with("True"), "the storm never ran: {text}");
    assert!(line("ECHO").starts_with("ECHO True"), "the console did not answer: {text}");
    assert!(line("EXIT").starts_with("EXIT True"), "Ctrl-A x did not end ember: {text}");
}
