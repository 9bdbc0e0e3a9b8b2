//! Giving back the process's code pages once the VM runs.
//!
//! Start-up runs most of ember's code once: argument parsing, the kernel
//! loader, the ACPI tables, device and seccomp set-up. With the kernel's
//! fault-around (64 KiB of page cache mapped per fault), nearly the whole
//! `.text` of the static binary ends up mapped in the process, ~1.9 MiB of
//! its RSS for as long as the VM lives (and of a dynamic build, most of
//! libc's), although an idle VM then runs only its vCPU loop and event
//! loop. [`CodePages::release`] (on the event loop, 100 ms after start)
//! unmaps those pages from the process with
//! `MADV_DONTNEED`. Nothing is lost: they are clean pages of their files,
//! they stay in the page cache (shared with every other process that maps
//! them), and the code that runs afterwards maps its pages back on first
//! touch (minor faults, no I/O). The host's memory hardly changes; the
//! process's RSS does (docs/performance.md).
//!
//! Only file mappings that are private, not writable and hold no private
//! (copied) page are released: for those, `MADV_DONTNEED` can only drop
//! pages identical to the file. The RELRO area (relocated at start-up,
//! then made read-only) holds private pages and is left alone, and so is
//! everything while a debugger is attached (its breakpoints live in
//! private copies of code pages).

use std::fs::File;
use std::io::Read;

/// `/proc/self/smaps` and `/proc/self/status`, opened while `/proc` is in
/// reach (before a chroot and the seccomp filters) and read when the pages
/// are given back: by the event loop, 100 ms after the VM started (off the
/// path to its first instruction), so the mappings are read as they are
/// then.
#[derive(Debug)]
pub(crate) struct CodePages {
    smaps: File,
    status: File,
}

impl CodePages {
    /// Opens the two files; `None` when `/proc` cannot be read.
    pub(crate) fn open() -> Option<CodePages> {
        Some(CodePages { smaps: File::open("/proc/self/smaps").ok()?, status: File::open("/proc/self/status").ok()? })
    }

    /// Finds the releasable mappings now and unmaps their pages from this
    /// process (they come back on touch); nothing while a debugger is
    /// attached. Returns the bytes the mappings span. Makes no system call
    /// but `read` and `madvise`: it runs under the event loop's seccomp
    /// filter.
    pub(crate) fn release(mut self) -> usize {
        let mut traced = false;
        for_each_line(&mut self.status, |l| traced |= tracer_line(l));
        if traced {
            return 0;
        }
        let mut scan = Scan::default();
        for_each_line(&mut self.smaps, |l| scan.line(l));
        let ranges = scan.out;
        let span = ranges.iter().map(|(start, end)| end - start).sum::<usize>();
        log::debug!("releasing {} KiB of code pages", span >> 10);
        for (start, end) in ranges {
            // SAFETY: [start, end) is a whole private file mapping that is
            // neither writable nor holds a private page (checked in
            // `Scan::line`), so MADV_DONTNEED only drops clean file-backed
            // pages, which the kernel maps again from the same file on the
            // next access. No Rust reference can observe the difference.
            let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
            if r != 0 {
                log::debug!("madvise(MADV_DONTNEED) on {start:#x}-{end:#x}: {}", std::io::Error::last_os_error());
            }
        }
        span
    }
}

/// Calls `each` with every line of `f` from its start, through one 4 KiB
/// buffer on the stack: the file is never held whole, so reading it
/// leaves nothing behind in the heap of the thread that does it (a
/// `String` of smaps, ~60 KiB, stayed resident in the event loop's malloc
/// arena: +60 KiB of anonymous memory per VM). Only `read` calls
/// (`read_to_string` would `statx` the file, which the filter refuses).
/// A line longer than the buffer is skipped; a read error ends the file.
fn for_each_line(f: &mut File, mut each: impl FnMut(&str)) {
    let mut buf = [0u8; 4096];
    let (mut len, mut skipping) = (0usize, false);
    loop {
        let n = match f.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        len += n;
        let mut start = 0;
        while let Some(nl) = buf[start..len].iter().position(|&b| b == b'\n') {
            if !skipping {
                each(&String::from_utf8_lossy(&buf[start..start + nl]));
            }
            skipping = false;
            start += nl + 1;
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            // No newline in a full buffer: drop the line.
            skipping = true;
            len = 0;
        }
    }
    if len > 0 && !skipping {
        each(&String::from_utf8_lossy(&buf[..len]));
    }
}

/// A `TracerPid:` line naming a tracer.
fn tracer_line(l: &str) -> bool {
    l.strip_prefix("TracerPid:").is_some_and(|pid| pid.trim() != "0")
}

/// Picks, line by line from smaps, the mappings that map a file
/// privately, are not writable, and have `Anonymous: 0 kB` (no private
/// copy of any page).
#[derive(Default)]
struct Scan {
    /// The current mapping if it is a candidate, until its `Anonymous:`
    /// line.
    current: Option<(usize, usize)>,
    out: Vec<(usize, usize)>,
}

impl Scan {
    fn line(&mut self, line: &str) {
        if let Some(range) = mapping_header(line) {
            self.current = range;
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if let Some(r) = self.current.take() {
                if v.trim() == "0 kB" {
                    self.out.push(r);
                }
            }
        }
    }
}

/// The ranges of `smaps` that [`Scan`] picks.
#[cfg(test)]
fn releasable(smaps: &str) -> Vec<(usize, usize)> {
    let mut scan = Scan::default();
    smaps.lines().for_each(|l| scan.line(l));
    scan.out
}

/// For a mapping's header line (`start-end perms offset dev inode path`):
/// `Some(Some(range))` for a candidate, `Some(None)` for any other mapping;
/// `None` for a field line.
fn mapping_header(line: &str) -> Option<Option<(usize, usize)>> {
    let mut fields = line.split_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let (start, end) = range.split_once('-')?;
    let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    if perms.len() != 4 {
        return None;
    }
    let path = fields.nth(3).unwrap_or("");
    // A file's path is absolute; `[vdso]`, `[stack]` and anonymous
    // mappings have none.
    let candidate = path.starts_with('/') && perms.starts_with('r') && !perms.contains('w') && perms.ends_with('p');
    Some(candidate.then_some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smaps() -> String {
        [
            "55550000-55560000 r--p 00000000 08:01 42 /usr/bin/ember",
            "Size:                 64 kB",
            "Rss:                  64 kB",
            "Anonymous:             0 kB",
            "55560000-55760000 r-xp 00010000 08:01 42 /usr/bin/ember",
            "Size:               2048 kB",
            "Anonymous:             0 kB",
            // RELRO: relocated, then read-only: private pages.
            "55760000-55770000 r--p 00210000 08:01 42 /usr/bin/ember",
            "Anonymous:            40 kB",
            "55770000-55780000 rw-p 00220000 08:01 42 /usr/bin/ember",
            "Anonymous:             8 kB",
            // A shared library's code.
            "7f000000-7f010000 r-xp 00000000 08:01 7 /usr/lib/libc.so.6",
            "Anonymous:             0 kB",
            // A shared file mapping.
            "7f010000-7f020000 r--s 00000000 08:01 9 /var/tmp/shared",
            "Anonymous:             0 kB",
            // Anonymous and special mappings.
            "7f100000-7f200000 rw-p 00000000 00:00 0",
            "Anonymous:          1024 kB",
            "7f200000-7f201000 r--p 00000000 00:00 0",
            "Anonymous:             0 kB",
            "7ffe0000-7ffe2000 r-xp 00000000 00:00 0                  [vdso]",
            "Anonymous:             0 kB",
        ]
        .join("\n")
    }

    #[test]
    fn only_clean_read_only_private_file_mappings() {
        assert_eq!(
            releasable(&smaps()),
            vec![(0x5555_0000, 0x5556_0000), (0x5556_0000, 0x5576_0000), (0x7f00_0000, 0x7f01_0000)]
        );
    }

    #[test]
    fn field_lines_and_writable_or_shared_mappings_are_not_candidates() {
        assert_eq!(mapping_header("Rss:  64 kB"), None);
        assert_eq!(mapping_header("VmFlags: rd ex mr mw me"), None);
        assert_eq!(mapping_header("1000-2000 rw-p 0 08:01 42 /usr/bin/ember"), Some(None));
        assert_eq!(mapping_header("1000-2000 r--s 0 08:01 42 /usr/bin/ember"), Some(None));
        assert_eq!(mapping_header("1000-2000 r-xp 0 08:01 42 /usr/bin/ember"), Some(Some((0x1000, 0x2000))));
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_not_released() {
        let s = "1000-2000 r-xp 0 08:01 42 /usr/bin/ember\nRss: 4 kB\n3000-4000 r-xp 0 08:01 42 /usr/bin/ember\nAnonymous: 0 kB";
        assert_eq!(releasable(s), vec![(0x3000, 0x4000)]);
    }

    /// Lines come whole across the buffer's edge; a line longer than the
    /// buffer is skipped (and nothing after it is lost); the last line
    /// needs no newline.
    #[test]
    fn lines_are_read_through_a_small_buffer() {
        let path = std::env::temp_dir().join(format!("ember-code-pages-lines-{}", std::process::id()));
        let long_a = "a".repeat(4080);
        let content = format!("{long_a}\nsecond line across the edge\n{}\nb\nc", "x".repeat(5000));
        std::fs::write(&path, &content).unwrap();
        let mut lines = Vec::new();
        for_each_line(&mut File::open(&path).unwrap(), |l| lines.push(l.to_string()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(lines, [long_a.as_str(), "second line across the edge", "b", "c"]);
    }

    #[test]
    fn released_code_runs_again() {
        // This test binary's own code, its libraries' and their read-only
        // data: released, then the test goes on running (and formatting)
        // from them.
        let pages = CodePages::open().expect("/proc is mounted");
        let span = pages.release();
        assert_eq!(format!("{}", 6 * 7), "42");
        // Under a debugger nothing is released; otherwise this binary has
        // at least its code.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.lines().any(tracer_line) || span > 0, "{span}");
    }
}
