//! Kernel modules for `ember smoke --modules`: the release string read from
//! the kernel image, the module tree that matches it, and the modules the
//! guest needs to reach its devices (virtio transport, block, net, 9p,
//! overlay) with their dependencies from `modules.dep`, in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::SmokeError;

/// What `ember smoke` loads when the kernel has it as a module (kmod
/// names): the virtio-mmio transport (and virtio-pci, harmless where there
/// is no PCI), disks, NICs, the 9P file system over virtio and overlayfs
/// for the root share's writable layer. Built-in or absent ones are
/// skipped.
pub const WANTED: &[&str] = &["virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "9pnet_virtio", "9p", "overlay"];

/// The largest kernel image read to find its release.
const MAX_IMAGE: u64 = 512 << 20;

/// One module to put in the initramfs: its kmod name and host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// kmod name (`-` written `_`).
    pub name: String,
    /// The `.ko` file on the host.
    pub path: PathBuf,
}

/// The release string (`uname -r`) of a kernel image: from a bzImage's
/// setup header (`kernel_version`), else the `Linux version X` banner of
/// an ELF vmlinux or any uncompressed image.
pub fn kernel_release(image: &[u8]) -> Option<String> {
    // bzImage: "HdrS" at 0x202, the version string's offset minus 0x200 at
    // 0x20e (boot protocol 2.00+).
    if image.get(0x202..0x206) == Some(b"HdrS") {
        let off = u16::from_le_bytes(image.get(0x20e..0x210)?.try_into().ok()?) as usize;
        if off != 0 {
            let s = image.get(off + 0x200..)?;
            let end = s.iter().take(256).position(|&b| b == 0 || b == b' ')?;
            return std::str::from_utf8(&s[..end]).ok().filter(|r| !r.is_empty()).map(str::to_string);
        }
    }
    let banner = b"Linux version ";
    let i = image.windows(banner.len()).position(|w| w == banner)?;
    let s = &image[i + banner.len()..];
    let end = s.iter().take(256).position(|&b| b == 0 || b == b' ')?;
    std::str::from_utf8(&s[..end]).ok().filter(|r| !r.is_empty()).map(str::to_string)
}

/// Reads the release of the kernel image at `path`.
pub fn kernel_release_of(path: &Path) -> Result<Option<String>, SmokeError> {
    let read = |source| SmokeError::Read { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_IMAGE {
        return Ok(None);
    }
    Ok(kernel_release(&std::fs::read(path).map_err(read)?))
}

/// The directory holding `modules.dep` for `release`: `dir` itself, or
/// `dir/lib/modules/RELEASE` (a package's unpacked tree), or
/// `dir/RELEASE`.
pub fn module_dir(dir: &Path, release: Option<&str>) -> Option<PathBuf> {
    let mut candidates = vec![dir.to_path_buf()];
    if let Some(r) = release {
        candidates.push(dir.join("lib/modules").join(r));
        candidates.push(dir.join(r));
    }
    candidates.into_iter().find(|d| d.join("modules.dep").is_file())
}

fn kmod_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules of `wanted` found in `modules_dep` (the file's text) and
/// everything they depend on, each once, dependencies first.
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Vec<(String, String)> {
    // name -> (relative path, its dependencies' names)
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, rest)) = line.split_once(':') else { continue };
        let m = m.trim();
        if m.is_empty() {
            continue;
        }
        deps.insert(kmod_name(m), (m.to_string(), rest.split_whitespace().map(kmod_name).collect()));
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    // Iterative post-order walk (modules.dep has no cycles; `seen` bounds
    // the work anyway).
    for w in wanted {
        let mut stack = vec![(w.replace('-', "_"), false)];
        while let Some((name, expanded)) = stack.pop() {
            if expanded {
                if let Some((path, _)) = deps.get(&name) {
                    order.push((name, path.clone()));
                }
                continue;
            }
            if !seen.insert(name.clone()) {
                continue;
            }
            let Some((_, d)) = deps.get(&name) else { continue };
            stack.push((name.clone(), true));
            // modules.dep lists a module's dependencies so that the last
            // one loads first: pushed in order, it is popped first.
            for dep in d {
                if !seen.contains(dep) {
                    stack.push((dep.clone(), false));
                }
            }
        }
    }
    order
}

/// The modules to load from the tree at `dir` (holding `modules.dep`).
pub fn needed_modules(dir: &Path) -> Result<Vec<Module>, SmokeError> {
    let dep = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep).map_err(|source| SmokeError::Read { path: dep.clone(), source })?;
    let mut out = Vec::new();
    for (name, rel) in load_order(&text, WANTED) {
        let path = dir.join(&rel);
        if !rel.ends_with(".ko") {
            return Err(SmokeError::Modules(format!(
                "{} is compressed; the initramfs's busybox insmod loads plain .ko files (unpack the tree first)",
                path.display()
            )));
        }
        out.push(Module { name, path });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/netfs/netfs.ko:\n\
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
kernel/fs/overlayfs/overlay.ko:\n\
kernel/fs/9p/9p.ko: kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n\
kernel/net/9p/9pnet.ko:\n\
kernel/drivers/virtio/virtio.ko:\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let order: Vec<String> = load_order(DEP, WANTED).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "fscache",
                "9p",
                "overlay"
            ]
        );
        let pos = |n: &str| order.iter().position(|o| o == n).unwrap();
        for (m, d) in [("9p", "fscache"), ("fscache", "netfs"), ("9p", "9pnet"), ("virtio_mmio", "virtio")] {
            assert!(pos(d) < pos(m), "{d} before {m}: {order:?}");
        }
        assert!(!order.contains(&"ext4".to_string()));
        // Built-in (absent from modules.dep): nothing to load.
        assert!(load_order("", WANTED).is_empty());
        assert_eq!(load_order("a/b/9p-x.ko.xz:\n", &["9p_x"]), [("9p_x".to_string(), "a/b/9p-x.ko.xz".to_string())]);
    }

    #[test]
    fn release_from_a_bzimage_header_and_a_banner() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x600u16.to_le_bytes());
        let v = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x800..0x800 + v.len()].copy_from_slice(v);
        assert_eq!(kernel_release(&img).as_deref(), Some("6.1.0-57-amd64"));
        let elf = b"\x7fELF....Linux version 6.1.192-ember (root@h) #1\0".to_vec();
        assert_eq!(kernel_release(&elf).as_deref(), Some("6.1.192-ember"));
        assert_eq!(kernel_release(b"nothing here"), None);
    }

    #[test]
    fn module_dir_finds_the_tree() {
        let d = std::env::temp_dir().join(format!("ember-moddir-{}", std::process::id()));
        let tree = d.join("lib/modules/6.1.0-x");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("modules.dep"), DEP).unwrap();
        assert_eq!(module_dir(&d, Some("6.1.0-x")), Some(tree.clone()));
        assert_eq!(module_dir(&tree, None), Some(tree.clone()));
        assert_eq!(module_dir(&d, Some("other")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
