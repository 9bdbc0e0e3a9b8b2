//! Writes the seed corpus: `corpus/<target>/<name>` for every seed of
//! `ember_fuzz::seeds`.
//!
//! ```text
//! make -C tests/guests O=/tmp/fg hello.elf
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds -- [/tmp/fg/hello.elf]
//! ```
//!
//! The optional argument is a built test guest, added to the
//! `kernel_image` seeds when it is smaller than 64 KiB.

use std::path::Path;

use ember_fuzz::seeds;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let hello = match std::env::args_os().nth(1) {
        Some(p) => {
            let b = std::fs::read(&p)?;
            (b.len() < 64 << 10).then_some(b)
        }
        None => None,
    };
    let targets = [
        ("blk_request", seeds::blk_request()),
        ("mmio_registers", seeds::mmio_registers()),
        ("pci_registers", seeds::pci_registers()),
        ("net_tx", seeds::net_tx()),
        ("net_race", seeds::net_race()),
        ("kernel_image", seeds::kernel_image(hello.as_deref())),
        ("cli_parsers", seeds::cli_parsers()),
        ("cpio_roundtrip", seeds::cpio_roundtrip()),
        ("legacy_pio", seeds::legacy_pio()),
        ("p9_server", seeds::p9_server()),
        ("api_http", seeds::api_http()),
        ("snapshot_state", seeds::snapshot_state()),
    ];
    for (target, list) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in list {
            std::fs::write(dir.join(name), &bytes)?;
            println!("{target}/{name}: {} bytes", bytes.len());
        }
    }
    Ok(())
}
