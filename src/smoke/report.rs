//! What a smoke test found out: the verdict, its exit status, a summary
//! line and a JUnit report.

use std::path::PathBuf;
use std::time::Duration;

use super::Smoke;
use crate::exit::VmExit;

/// How one expectation fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The regular expression.
    pub pattern: String,
    /// When it matched, from the start of the VM.
    pub matched_after: Option<Duration>,
}

/// The outcome of a smoke test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation matched and the command (if any) exited 0.
    Passed,
    /// The command exited non-zero (expectations all matched).
    CommandFailed(i32),
    /// The timeout passed.
    Timeout,
    /// A kernel panic, oops or BUG line on the console.
    Panic(String),
    /// KVM reported a guest crash.
    Crash(VmExit),
    /// The VM ended before the command's status or every expectation.
    Incomplete(VmExit),
}

/// Everything a smoke test found out.
#[derive(Clone, Debug)]
pub struct SmokeReport {
    /// The outcome.
    pub verdict: Verdict,
    /// The command's exit status, when it reported one.
    pub command_status: Option<i32>,
    /// The command as given.
    pub command: Vec<String>,
    /// Each expectation, in order.
    pub expectations: Vec<Expectation>,
    /// How the VM ended.
    pub vm_exit: VmExit,
    /// Wall time from VM start to the verdict.
    pub elapsed: Duration,
    /// The timeout that applied.
    pub timeout: Duration,
    /// The whole console output.
    pub console: String,
    /// The command's stdout and stderr (their first MiB each) when they
    /// came apart from the console ([`Smoke::command_output`]); empty
    /// otherwise.
    pub command_output: (String, String),
    /// The kernel image.
    pub kernel: PathBuf,
}

impl SmokeReport {
    /// The process exit status for this report (docs/ci.md).
    pub fn exit_status(&self) -> i32 {
        match &self.verdict {
            Verdict::Passed => 0,
            // Only a real failure status passes through: a value that is
            // no process exit status (256 would become 0 as a byte) is a
            // failure all the same.
            Verdict::CommandFailed(n) if (1..=255).contains(n) => *n,
            Verdict::CommandFailed(_) => 1,
            Verdict::Timeout => Smoke::EXIT_TIMEOUT,
            Verdict::Panic(_) => Smoke::EXIT_PANIC,
            Verdict::Crash(_) => Smoke::EXIT_CRASH,
            Verdict::Incomplete(_) => Smoke::EXIT_INCOMPLETE,
        }
    }

    /// The index of the first expectation that never matched.
    pub fn waiting_for(&self) -> Option<usize> {
        self.expectations.iter().position(|e| e.matched_after.is_none())
    }

    /// The last `n` console lines, with control characters escaped (the
    /// guest wrote them: they must not reach the user's terminal raw).
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines: Vec<&str> = self.console.lines().map(|l| l.trim_end_matches('\r')).collect();
        lines[lines.len().saturating_sub(n)..].iter().map(|l| printable(l)).collect()
    }

    /// One line: verdict, what matched, the elapsed time.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let matched = self.expectations.iter().filter(|e| e.matched_after.is_some()).count();
        let exp = if self.expectations.is_empty() {
            String::new()
        } else {
            format!(", {matched}/{} expectations matched", self.expectations.len())
        };
        let cmd = match self.command_status {
            Some(n) => format!(", command exited {n}"),
            None if !self.command.is_empty() => ", command did not finish".to_string(),
            None => String::new(),
        };
        let what = match &self.verdict {
            Verdict::Passed => "PASS".to_string(),
            Verdict::CommandFailed(_) => "FAIL".to_string(),
            Verdict::Timeout => {
                let w = match self.waiting_for() {
                    Some(i) => format!(" waiting for expectation {} {:?}", i + 1, self.expectations[i].pattern),
                    None if !self.command.is_empty() => " waiting for the command to finish".to_string(),
                    None => String::new(),
                };
                format!("TIMEOUT after {:.0} s{w}", self.timeout.as_secs_f64())
            }
            Verdict::Panic(l) => format!("KERNEL PANIC ({})", printable(l)),
            Verdict::Crash(e) => format!("GUEST CRASH ({e})"),
            Verdict::Incomplete(e) => format!("INCOMPLETE (the VM ended first: {e})"),
        };
        format!("ember smoke: {what}{exp}{cmd}, in {secs:.3} s (exit status {})", self.exit_status())
    }

    /// The report as JUnit XML: one testcase per expectation, one for the
    /// command, one for the kernel itself; the console as system-out.
    pub fn junit_xml(&self) -> String {
        let mut cases: Vec<(String, f64, Option<String>)> = Vec::new();
        let total = self.elapsed.as_secs_f64();
        let ended = match &self.verdict {
            Verdict::Timeout => format!("timed out after {:.0} s", self.timeout.as_secs_f64()),
            Verdict::Panic(l) => format!("kernel panic: {l}"),
            Verdict::Crash(e) => format!("guest crash: {e}"),
            Verdict::Incomplete(e) => format!("the VM ended first: {e}"),
            _ => "not seen".to_string(),
        };
        let kernel_fail = match &self.verdict {
            Verdict::Panic(l) => Some(format!("kernel panic: {l}")),
            Verdict::Crash(e) => Some(format!("guest crash: {e}")),
            _ => None,
        };
        cases.push(("kernel".into(), total, kernel_fail));
        for (i, e) in self.expectations.iter().enumerate() {
            let t = e.matched_after.map(|d| d.as_secs_f64()).unwrap_or(total);
            let fail = e.matched_after.is_none().then(|| format!("/{}/ {}", e.pattern, ended));
            cases.push((format!("expect[{}] {}", i + 1, e.pattern), t, fail));
        }
        if !self.command.is_empty() {
            let fail = match self.command_status {
                Some(0) => None,
                Some(n) => Some(format!("exited {n}")),
                None => Some(ended.clone()),
            };
            cases.push((format!("command {}", self.command.join(" ")), total, fail));
        }
        let failures = cases.iter().filter(|c| c.2.is_some()).count();
        let name = format!("ember smoke {}", self.kernel.display());
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">\n",
            cases.len(),
            xml_attr(&name),
            cases.len()
        ));
        for (n, t, fail) in &cases {
            x.push_str(&format!("  <testcase classname=\"ember.smoke\" name=\"{}\" time=\"{t:.3}\"", xml_attr(n)));
            match fail {
                Some(m) => x.push_str(&format!(">\n    <failure message=\"{}\"/>\n  </testcase>\n", xml_attr(m))),
                None => x.push_str("/>\n"),
            }
        }
        let cdata = |t: &str| xml_text(t).replace("]]>", "]]]]><![CDATA[>");
        // The console, then the command's own stdout when it came apart;
        // its stderr as system-err.
        x.push_str("  <system-out><![CDATA[");
        x.push_str(&cdata(&self.console));
        if !self.command_output.0.is_empty() {
            x.push_str("\n--- the command's stdout ---\n");
            x.push_str(&cdata(&self.command_output.0));
        }
        x.push_str("]]></system-out>\n");
        if !self.command_output.1.is_empty() {
            x.push_str("  <system-err><![CDATA[");
            x.push_str(&cdata(&self.command_output.1));
            x.push_str("]]></system-err>\n");
        }
        x.push_str("</testsuite>\n</testsuites>\n");
        x
    }
}

/// `s` with control characters (escape sequences among them) escaped as
/// `\u{..}`, for guest text on the user's terminal.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc = c.is_control() && c != '\t';
            let (a, b) = if esc { (None, Some(c.escape_unicode())) } else { (Some(c), None) };
            a.into_iter().chain(b.into_iter().flatten())
        })
        .collect()
}

/// Characters XML 1.0 allows in text.
fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => '?',
            c => c,
        })
        .collect()
}

fn xml_attr(s: &str) -> String {
    xml_text(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verdict: Verdict) -> SmokeReport {
        SmokeReport {
            verdict,
            command_status: Some(3),
            command: vec!["sh".into(), "-c".into(), "exit 3 <&>".into()],
            expectations: vec![
                Expectation { pattern: "Linux".into(), matched_after: Some(Duration::from_millis(5)) },
                Expectation { pattern: "never\"".into(), matched_after: None },
            ],
            vm_exit: VmExit::Stopped,
            elapsed: Duration::from_millis(1500),
            timeout: Duration::from_secs(60),
            console: "line1\n\x1b[0m]]> end\n".into(),
            command_output: (String::new(), String::new()),
            kernel: "vmlinux".into(),
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(report(Verdict::Passed).exit_status(), 0);
        assert_eq!(report(Verdict::CommandFailed(3)).exit_status(), 3);
        assert_eq!(report(Verdict::Timeout).exit_status(), 124);
        assert_eq!(report(Verdict::Panic("x".into())).exit_status(), 120);
        assert_eq!(report(Verdict::Crash(VmExit::TripleFault { vcpu: 0, rip: 1 })).exit_status(), 121);
        assert_eq!(report(Verdict::Incomplete(VmExit::Reset)).exit_status(), 122);
    }

    /// Finding 5 of issue 16: a status of 256 became exit code 0 through
    /// an `as u8` cast while the summary said FAIL.
    #[test]
    fn out_of_range_statuses_never_exit_0() {
        for n in [256, 512, -256, i32::MIN, i32::MAX, -1, 1000] {
            let r = report(Verdict::CommandFailed(n));
            let code = r.exit_status();
            assert!((1..=255).contains(&code), "{n} -> {code}");
            assert_ne!(code as u8, 0, "{n}");
            assert!(r.summary().contains("FAIL"));
        }
        assert_eq!(report(Verdict::CommandFailed(255)).exit_status(), 255);
    }

    /// Issue 16 item 9: guest escape sequences do not reach the summary or
    /// the last lines raw.
    #[test]
    fn guest_text_is_escaped_for_the_terminal() {
        let s = report(Verdict::Panic("Kernel panic \x1b]0;owned\x07\x1b[2J".into())).summary();
        assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        assert!(s.contains("\\u{1b}]0;owned"), "{s}");
        let r = report(Verdict::Timeout);
        let last = r.last_lines(5);
        assert_eq!(last[1], "\\u{1b}[0m]]> end");
    }

    #[test]
    fn summary_names_the_waiting_expectation() {
        let s = report(Verdict::Timeout).summary();
        assert!(s.contains("TIMEOUT after 60 s waiting for expectation 2 \"never\\\"\""), "{s}");
        assert!(s.contains("1/2 expectations matched") && s.contains("1.500 s"), "{s}");
    }

    #[test]
    fn junit_has_the_command_output_apart() {
        let mut r = report(Verdict::Passed);
        assert!(!r.junit_xml().contains("system-err") && !r.junit_xml().contains("the command's stdout"));
        r.command_output = ("out <1>\n".into(), "err ]]> 2\n".into());
        let x = r.junit_xml();
        let (o, e) = (x.find("--- the command's stdout ---\nout <1>").unwrap(), x.find("<system-err>").unwrap());
        assert!(
            x.find("line1").unwrap() < o
                && o < x.find("</system-out>").unwrap()
                && x.find("</system-out>").unwrap() < e
        );
        assert!(x.contains("<system-err><![CDATA[err ]]]]><![CDATA[> 2"), "{x}");
    }

    #[test]
    fn junit_is_escaped() {
        let x = report(Verdict::Timeout).junit_xml();
        assert!(x.contains("tests=\"4\" failures=\"2\""), "{x}");
        assert!(x.contains("name=\"command sh -c exit 3 &lt;&amp;&gt;\""), "{x}");
        assert!(x.contains("name=\"expect[2] never&quot;\""), "{x}");
        assert!(x.contains("?[0m]]]]><![CDATA[> end"), "{x}");
        assert!(!x.contains('\x1b'));
    }
}
