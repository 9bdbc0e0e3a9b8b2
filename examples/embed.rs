//! Embedding ember: boot a kernel, wait for a line on its console, stop it.
//!
//! ```text
//! cargo run --release --example embed -- target/guests/hello.elf "Hello from ember guest"
//! cargo run --release --example embed -- vmlinux "Linux version" "earlyprintk=serial console=ttyS0 noxsave"
//! ```

use std::time::{Duration, Instant};

use ember::{SerialCapture, SerialConfig, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(kernel), Some(wanted)) = (args.next(), args.next()) else {
        eprintln!("usage: embed KERNEL TEXT [CMDLINE]");
        std::process::exit(2);
    };
    let console = SerialCapture::new();
    let mut config = VmConfig::new(kernel);
    if let Some(c) = args.next() {
        config.cmdline = c;
    }
    config.memory = 256 << 20;
    config.serial = SerialConfig::Capture(console.clone());

    let start = Instant::now();
    let vm = Vm::new(config)?.start()?;
    let found = console.wait_for(&wanted, Duration::from_secs(300));
    if found {
        println!("saw {wanted:?} after {:.3} s", start.elapsed().as_secs_f64());
        vm.handle().stop();
    }
    let exit = vm.wait();
    println!("VM ended: {exit}");
    print!("--- console ---\n{}", console.text());
    std::process::exit(if found { 0 } else { 1 });
}
