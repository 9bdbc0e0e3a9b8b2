//! The module graph of docs/architecture.md is the one in the code, and
//! every import runs down it.
//!
//! The "Module graph" table of docs/architecture.md puts each module of
//! `src/` (the library; the binary in `src/bin/` is above all of them) in a
//! layer. This test reads every `crate::…` path in `src/` (in `use`
//! statements, grouped or not, and inline in code; comments are skipped)
//! and fails when one names a module of the same or a higher layer, or
//! when a module is missing from the table. For the device crate it checks
//! the rule of the brief that a device never reaches into a transport: no
//! path from `virtio/block` or `virtio/net` names `mmio`, and nothing in
//! `legacy` names `virtio`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments.
fn code(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap().lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// The top-level modules named by every `crate::` path in `code`.
fn crate_refs(code: &str) -> Vec<String> {
    let mut refs = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `ember_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first name of each
            // top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        let name: String =
                            group[j..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        refs.push(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            refs.push(name);
        }
    }
    refs
}

/// Layer of each module, from docs/architecture.md's "Module graph" table:
/// rows `| N | `a`, `b` | … |`.
fn layers() -> BTreeMap<String, u32> {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let section = doc.split("## Module graph").nth(1).expect("docs/architecture.md has a Module graph section");
    let mut layers = BTreeMap::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(layer) = cols.get(1).and_then(|c| c.parse::<u32>().ok()) else { continue };
        for m in cols[2].split(',') {
            let m = m.trim().trim_matches('`');
            assert!(layers.insert(m.to_string(), layer).is_none(), "{m} is in the table twice");
        }
    }
    assert!(!layers.is_empty(), "the Module graph table has no rows");
    layers
}

#[test]
fn every_import_runs_down_the_documented_layers() {
    let layers = layers();
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        if first == "bin" || first == "lib.rs" {
            continue; // the binary and the crate root sit above every layer
        }
        let module = first.trim_end_matches(".rs").to_string();
        let from = *layers.get(&module).unwrap_or_else(|| panic!("module {module} is not in docs/architecture.md"));
        seen.insert(module.clone());
        for target in crate_refs(&code(f)) {
            if target == module {
                continue;
            }
            let to = *layers
                .get(&target)
                .unwrap_or_else(|| panic!("{}: crate::{target} is not in the table", rel.display()));
            if to >= from {
                upward.push(format!("{} (layer {from}) -> crate::{target} (layer {to})", rel.display()));
            }
        }
    }
    assert!(upward.is_empty(), "imports that run back up the module graph:\n{}", upward.join("\n"));
    let stale: Vec<_> = layers.keys().filter(|m| !seen.contains(*m)).collect();
    assert!(stale.is_empty(), "docs/architecture.md lists modules that do not exist: {stale:?}");
}

#[test]
fn devices_never_reach_into_a_transport() {
    let dev = repo().join("devices/src");
    let mut files = Vec::new();
    rust_files(&dev, &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&dev).unwrap().to_str().unwrap().to_string();
        let code = code(f);
        let is_device = rel.starts_with("virtio/block") || rel.starts_with("virtio/net");
        if is_device && code.contains("mmio::") {
            bad.push(format!("{rel} names the mmio transport"));
        }
        if rel.starts_with("legacy") && code.contains("virtio::") {
            bad.push(format!("{rel} names virtio"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_reference_reader_finds_grouped_and_inline_paths() {
    let refs = crate_refs("use crate::{a, b::c, d::{e, f}};\nlet x = crate::g::h(); my_crate::i;");
    assert_eq!(refs, ["a", "b", "d", "g"]);
}
