//! Soak: a test-guest pair keeps virtio-blk (blk_soak.c: write, flush, read
//! back, check) and virtio-net (net.c: UDP echo under a steady stream from
//! the host) busy for EMBER_SOAK_SECS (default 120). ember's RSS and open
//! fd count must stay flat (RSS growth ≤ 1 MiB after warm-up, no fd
//! growth) and every byte must check out: in the guest, in the echoes, and
//! in the disk image afterwards.
//!
//! Not part of the default `cargo test` run (it takes minutes): `.ci/run`
//! runs it with `cargo test --test soak -- --ignored`.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const REGIONS: u64 = 64;
const REGION_BYTES: usize = 128 * 512;
const FIRST_SECTOR: u64 = 2048;

fn seed_word(seed: u64, k: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(k.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    x ^= x >> 31;
    x
}

/// Every region the guest wrote holds its seed and the seed's pattern.
fn check_image(img: &Path, iters: u64) {
    let d = std::fs::read(img).unwrap();
    assert_eq!(d.len(), 16 << 20, "the image changed size");
    for r in 0..REGIONS.min(iters) {
        let off = ((FIRST_SECTOR + r * 128) * 512) as usize;
        let region = &d[off..off + REGION_BYTES];
        let seed = u64::from_le_bytes(region[..8].try_into().unwrap());
        assert_eq!(seed % REGIONS, r, "region {r} holds seed {seed}");
        assert!(seed < iters, "region {r}: seed {seed} beyond {iters} iterations");
        // The last write of region r is the last iteration ≡ r (mod 64).
        let last = (iters - 1 - r) / REGIONS * REGIONS + r;
        assert_eq!(seed, last, "region {r}: an acknowledged write was lost");
        for k in 1..(REGION_BYTES / 8) as u64 {
            let w = u64::from_le_bytes(region[k as usize * 8..k as usize * 8 + 8].try_into().unwrap());
            assert_eq!(w, seed_word(seed, k), "region {r} word {k}");
        }
    }
}

/// (RSS in KiB, open fds) of a process.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

#[test]
#[ignore = "minutes long; run by .ci/run (cargo test --test soak -- --ignored)"]
fn soak_blk_and_net() {
    if !kvm_available() {
        return;
    }
    let secs: u64 = std::env::var("EMBER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let d = scratch("soak");
    let img = d.join("soak.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();

    // The disk VM: its stdin is a pipe the test writes 'q' to at the end.
    let g = guest("blk_soak");
    let disk = format!("path={},transport=mmio", img.display());
    let mut blk = std::process::Command::new(ember())
        .args(["run", "--kernel", g.to_str().unwrap(), "--debug-exit", "--memory", "64M", "--disk", &disk])
        .args(["--cmdline", "irq=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut blk_in = blk.stdin.take().unwrap();
    let pid = blk.id();

    // The network VM and its traffic.
    let mut net = net_soak::start(secs);

    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10.min(secs / 4)));
    let (rss0, fds0) = footprint(pid);
    let net0 = net.as_ref().map(|n| footprint(n.pid()));
    let mut samples = vec![(start.elapsed().as_secs(), rss0, fds0)];
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        let (rss, fds) = footprint(pid);
        samples.push((start.elapsed().as_secs(), rss, fds));
    }
    let (rss1, fds1) = footprint(pid);
    let net1 = net.as_ref().map(|n| footprint(n.pid()));
    blk_in.write_all(b"q").unwrap();
    let o = finish(blk, Duration::from_secs(60));
    let net_result = net.as_mut().map(|n| n.finish());

    eprintln!("soak: {secs} s; blk VM RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}");
    eprintln!("soak: samples (s, RSS KiB, fds): {samples:?}");
    if let (Some((r0, f0)), Some((r1, f1))) = (net0, net1) {
        eprintln!("soak: net VM RSS {r0} -> {r1} KiB, fds {f0} -> {f1}");
        assert!(r1 <= r0 + 1024, "net VM RSS grew {r0} -> {r1} KiB");
        assert_eq!(f0, f1, "net VM fd count changed");
    }
    assert_code(&o, 0);
    let done = o.stdout.lines().find(|l| l.starts_with("SOAK DONE")).unwrap_or_else(|| panic!("{}", o.stdout));
    eprintln!("soak: {done}");
    let iters: u64 = done.split("iters=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(iters > 0);
    assert!(rss1 <= rss0 + 1024, "blk VM RSS grew {rss0} -> {rss1} KiB");
    assert_eq!(fds0, fds1, "blk VM fd count changed");
    check_image(&img, iters);
    if let Some(r) = net_result {
        eprintln!("soak: net: {r}");
    }
}

mod net_soak {
    //! The network half: net.c echoing a steady windowed UDP stream from
    //! the host (every reply checked byte for byte) for the soak's length.
    use super::*;

    const CLIENT: &str = r#"
import socket, sys, os, time
ip, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(30)
s.connect((ip, 7))
pending = {}
seq = sent = ok = 0
end = time.time() + secs
while time.time() < end or pending:
    while time.time() < end and len(pending) < 8:
        p = seq.to_bytes(4, 'big') + os.urandom(32 + seq % 1400)
        pending[seq] = p; s.send(p); seq += 1; sent += 1
    got = s.recv(65536)
    k = int.from_bytes(got[:4], 'big')
    if pending.pop(k, None) != got:
        print("MISMATCH at", k, flush=True); sys.exit(1)
    ok += 1
s.send(b"EMBER-QUIT")
s.recv(100)
print("NETSOAK sent=%d ok=%d" % (sent, ok), flush=True)
"#;

    pub struct NetSoak {
        _ns: NetNs,
        vm: Spawned,
        client: Option<std::process::Child>,
    }

    impl NetSoak {
        pub fn pid(&self) -> u32 {
            self.vm.child.id()
        }

        /// Waits for the client and the VM; panics on any mismatch.
        pub fn finish(&mut self) -> String {
            let client = self.client.take().unwrap();
            let o = common::finish(client, Duration::from_secs(120));
            assert!(o.stdout.contains("NETSOAK"), "net soak client: {}{}", o.stdout, o.stderr);
            let st = self.vm.child.wait().unwrap();
            assert_eq!(st.code(), Some(0), "{}\n{}", self.vm.stdout(), self.vm.stderr());
            let stats = self.vm.stderr().lines().find(|l| l.contains("NetStats")).unwrap_or("").to_string();
            for k in ["rx_dropped: 0", "tx_dropped: 0", "rx_malformed: 0", "tx_malformed: 0"] {
                assert!(stats.contains(k), "{stats}");
            }
            format!("{} {}", o.stdout.trim(), stats)
        }
    }

    pub fn start(secs: u64) -> Option<NetSoak> {
        let ns = NetNs::new("soak", "10.0.4.1")?;
        let mut vm = ns.spawn_ember("net", "02:00:00:00:04:02", "guest_ip=10.0.4.2 irq=1");
        assert!(vm.wait_for("net: mac", Duration::from_secs(60)), "{}", vm.stdout());
        let client = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", CLIENT, "10.0.4.2", &(secs + 5).to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Some(NetSoak { _ns: ns, vm, client: Some(client) })
    }
}
