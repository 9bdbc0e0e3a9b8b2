//! Ctrl+Alt+Del from the host: boot a kernel, wait for a line on its
//! console, press Ctrl+Alt+Del on its i8042 keyboard and report how the VM
//! ended (a Linux guest with the i8042/atkbd drivers reboots: `Reset`).
//!
//! ```text
//! cargo run --release --example ctrl_alt_del -- vmlinux initrd.cpio "login:" "console=ttyS0 reboot=k"
//! ```
//! Exits with the VM's exit status (0 after a reset), 1 if the line never
//! appeared or the VM did not end within two minutes of the keys.

use std::time::{Duration, Instant};

use ember::{SerialCapture, SerialConfig, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(kernel), Some(initrd), Some(wanted)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: ctrl_alt_del KERNEL INITRD TEXT [CMDLINE]");
        std::process::exit(2);
    };
    let console = SerialCapture::new();
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd.into());
    if let Some(c) = args.next() {
        config.cmdline = c;
    }
    config.memory = 256 << 20;
    config.serial = SerialConfig::Capture(console.clone());

    let start = Instant::now();
    let vm = Vm::new(config)?.start()?;
    let handle = vm.handle();
    if !console.wait_for(&wanted, Duration::from_secs(300)) {
        handle.stop();
        println!("{wanted:?} never appeared; VM ended: {}", vm.wait());
        print!("--- console ---\n{}", console.text());
        std::process::exit(1);
    }
    println!("saw {wanted:?} after {:.3} s; pressing Ctrl+Alt+Del", start.elapsed().as_secs_f64());
    // The guest may still be setting up its keyboard: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = handle.send_ctrl_alt_del() {
        if Instant::now() > deadline {
            println!("cannot send Ctrl+Alt+Del: {e}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = vm.wait_timeout(Duration::from_secs(120));
    if ended.is_none() {
        println!("the VM did not end within 120 s of the keys");
        handle.stop();
    }
    let exit = vm.wait();
    println!("VM ended: {exit} after {:.3} s", start.elapsed().as_secs_f64());
    print!("--- console ---\n{}", console.text());
    std::process::exit(if ended.is_some() { exit.status() } else { 1 });
}
