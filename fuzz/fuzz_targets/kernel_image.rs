//! Kernel images: arbitrary bytes as the `--kernel` file.
//!
//! Input: a selector byte, then the image.
//!
//! ```text
//! selector bits 0-1  boot protocol: auto, linux64, pvh, auto
//!          bit 2     after a successful load, also write the boot
//!                    structures: command line, initrd placement, zero
//!                    page, PVH start info
//!          bits 3-5  initrd size (none, 1, 4 KiB, 1 MiB, 60 MiB, 64 MiB,
//!                    4 GiB, u64::MAX)
//!          bits 6-7  command line length (0, 255, 2047, 4096)
//! ```
//!
//! The image is written to a memfd and loaded by path with
//! `load_kernel` (ember's boot loader, through the `fuzzing` feature) into
//! 64 MiB of guest memory; it is also inspected with `image::inspect`. This covers ember's image
//! recognition (ELF, bzImage) and linux-loader's ELF (with the PVH note)
//! and bzImage loaders as ember drives them.
//!
//! Invariants: no panic; `load_kernel` succeeds only on images `inspect`
//! accepts, and only within guest memory; the entry matches the protocol
//! asked for; a placed initrd is page-aligned, above the kernel and below
//! both the end of low RAM and the kernel's `initrd_addr_max`; a written
//! command line fits the kernel's limit.
#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use ember::fuzzing::{self as boot, image, layout, Entry, GuestRam, RamLayout};
use ember::BootProtocol;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;

const MEM_SIZE: u64 = 64 << 20;
const RAM: RamLayout = RamLayout::new(MEM_SIZE);

struct Ctx {
    mem: GuestMemoryMmap,
    file: File,
    path: PathBuf,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let mem = GuestRam::create(RAM).expect("guest memory").memory().clone();
        let (file, path) = ember_fuzz::image::scratch_file("kernel");
        Ctx { mem, file, path }
    })
}

const INITRD_SIZES: [u64; 8] = [0, 1, 4096, 1 << 20, 60 << 20, 64 << 20, 4 << 30, u64::MAX];
const CMDLINE_LENS: [usize; 4] = [0, 255, 2047, 4096];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, img)) = data.split_first() else {
        return;
    };
    let c = ctx();
    c.file.set_len(0).expect("truncate");
    c.file.write_all_at(img, 0).expect("write image");

    let boot = [BootProtocol::Auto, BootProtocol::Linux64, BootProtocol::Pvh, BootProtocol::Auto][usize::from(sel & 3)];

    let mut f = File::open(&c.path).expect("open image");
    let info = image::inspect(&c.path, &mut f);

    let Ok(k) = boot::load_kernel(&c.mem, RAM, &c.path, boot) else {
        return;
    };
    let info = info.expect("load_kernel accepted an image inspect refused");
    assert!(info.load_end <= MEM_SIZE, "loaded past guest memory: {info:?}");
    match (boot, k.entry) {
        (BootProtocol::Pvh, Entry::Pvh(_)) | (BootProtocol::Linux64, Entry::Linux64(_)) => {}
        (BootProtocol::Auto, _) => {}
        (b, e) => panic!("asked for {b:?}, got entry {e:?}"),
    }

    if sel & 4 == 0 {
        return;
    }
    let cmdline = "c".repeat(CMDLINE_LENS[usize::from(sel >> 6)]);
    if boot::write_cmdline(&c.mem, &k, &cmdline).is_ok() {
        assert!(cmdline.len() <= k.cmdline_max, "command line over the kernel's limit accepted");
        assert!(cmdline.len() < layout::CMDLINE_MAX_SIZE);
    }
    let size = INITRD_SIZES[usize::from((sel >> 3) & 7)];
    let initrd = if size == 0 {
        None
    } else {
        match boot::place_initrd(RAM, &k, size) {
            Ok(p) => {
                assert_eq!(p.size, size);
                assert_eq!(p.addr % 4096, 0, "{p:?}");
                assert!(p.addr >= k.kernel_end.max(layout::HIMEM_START), "{p:?} {k:?}");
                let end = p.addr.checked_add(p.size).expect("initrd end overflows");
                assert!(end <= RAM.low_end(), "{p:?}");
                assert!(end <= k.initrd_addr_max.saturating_add(1), "{p:?} {k:?}");
                Some(p)
            }
            Err(_) => None,
        }
    };
    let _ = boot::write_zero_page(&c.mem, RAM, None, &k, initrd, layout::ACPI_RSDP_START);
    let _ = boot::write_pvh_info(&c.mem, RAM, None, initrd, layout::ACPI_RSDP_START);
});
