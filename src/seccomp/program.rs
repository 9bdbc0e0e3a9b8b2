//! The BPF program of an allow-list: a binary search on the system call
//! number, then that call's argument rules.
//!
//! rust-vmm's `seccompiler` (which ember keeps for its action codes, its
//! program type, installing a program, and as the reference these tests
//! compare against) emits one comparison per listed call, in a row. When a
//! filter is attached, the kernel runs it once for every system call
//! number to find the calls it always allows (its action cache), so the
//! attach costs about the number of calls × the row's length; and every
//! call the cache cannot answer (those with argument rules: `ioctl`,
//! `mmap`, …) walks the row up to its number. The search reaches any
//! number in about 12 instructions: ember's filters attach in 40–70 µs
//! instead of 100–160 µs on this project's host (docs/security.md,
//! "Filter shape").
//!
//! Every comparison is on the low 32 bits of an argument, the only width
//! ember's lists use (`seccompiler`'s `Dword`).

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};

/// What an argument's low 32 bits must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgOp {
    /// Equal to the value.
    Eq(u32),
    /// Anything but the value.
    Ne(u32),
    /// `arg & mask == value & mask`.
    MaskedEq {
        /// The bits compared.
        mask: u32,
        /// What they must be.
        value: u32,
    },
}

/// One check of one argument (0–5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ArgCheck {
    /// Which argument.
    pub arg: u8,
    /// What it must be.
    pub op: ArgOp,
}

impl ArgCheck {
    /// Argument `arg` equal to `v`, which must fit in 32 bits: only the
    /// low 32 bits are compared, so a larger value in a list is a mistake
    /// (caught by the unit tests, which build every list).
    pub(crate) fn eq(arg: u8, v: u64) -> Self {
        debug_assert!(v <= u64::from(u32::MAX), "argument {arg} compared with {v:#x}, wider than 32 bits");
        ArgCheck { arg, op: ArgOp::Eq(v as u32) }
    }
}

/// A rule holds when all of its checks hold. A call is allowed when its
/// list of rules is empty or any rule holds.
pub(crate) type Rule = Vec<ArgCheck>;

/// The allow-list: system call number → its rules.
pub(crate) type Rules = BTreeMap<i64, Vec<Rule>>;

/// A list that cannot be made into a program.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    /// A system call number outside 0..2^32.
    #[error("system call number {0} is out of range")]
    SyscallNumber(i64),
    /// An argument index past the sixth.
    #[error("argument {arg} of system call {nr} does not exist (0-5)")]
    Argument {
        /// The call.
        nr: i64,
        /// The index given.
        arg: u8,
    },
    /// A rule without checks (an empty list of rules allows the call).
    #[error("system call {0} has a rule without checks")]
    EmptyRule(i64),
    /// Longer than the kernel takes (4,096 instructions).
    #[error("the program has {0} instructions; the kernel takes at most 4096")]
    TooLong(usize),
}

/// `struct seccomp_data` offsets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_low(i: u8) -> u32 {
    16 + 8 * i as u32
}
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const BPF_MAXINSNS: usize = 4096;
/// Calls compared one after another at the bottom of the search.
const LEAF: usize = 4;

// Classic BPF opcodes (linux/bpf_common.h): class | operation | source.
/// `BPF_LD | BPF_W | BPF_ABS` (class 0, size 0).
const LD_W_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`.
const ALU_AND_K: u16 = 0x04 | 0x50;
/// `BPF_JMP | BPF_JA`.
const JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x05 | 0x10;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x05 | 0x30;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;

/// An instruction whose jumps name labels, before layout.
enum Insn {
    Stmt(u16, u32),
    /// Conditional jump: to `t` if true, `f` if false (labels).
    Jump(u16, u32, usize, usize),
    /// Unconditional jump to a label (32-bit offset).
    Ja(usize),
    /// Where a label is.
    Label(usize),
}

struct Asm {
    code: Vec<Insn>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn put(&mut self, i: Insn) {
        self.code.push(i);
    }
    /// Lays the program out; a conditional jump farther than 255 is a bug
    /// of this module (they only skip within one rule or one leaf).
    fn finish(self) -> BpfProgram {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for i in &self.code {
            match i {
                Insn::Label(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for i in self.code {
            let pc = out.len();
            let rel = |l: usize| at[l].checked_sub(pc + 1).expect("a backward jump");
            let short = |l: usize| u8::try_from(rel(l)).expect("a conditional jump within 255");
            match i {
                Insn::Label(_) => continue,
                Insn::Stmt(code, k) => out.push(sock_filter { code, jt: 0, jf: 0, k }),
                Insn::Jump(code, k, t, f) => out.push(sock_filter { code, jt: short(t), jf: short(f), k }),
                Insn::Ja(l) => out.push(sock_filter { code: JA, jt: 0, jf: 0, k: rel(l) as u32 }),
            }
        }
        out
    }
}

/// The program for `rules`: `matched` (the action of an allowed call) or
/// `mismatch`; any architecture but x86-64 kills the process.
pub(crate) fn compile(rules: &Rules, mismatch: u32, matched: u32) -> Result<BpfProgram, ProgramError> {
    let mut calls = Vec::with_capacity(rules.len());
    for (&nr, list) in rules {
        let n = u32::try_from(nr).map_err(|_| ProgramError::SyscallNumber(nr))?;
        for rule in list {
            if rule.is_empty() {
                return Err(ProgramError::EmptyRule(nr));
            }
            if let Some(c) = rule.iter().find(|c| c.arg > 5) {
                return Err(ProgramError::Argument { nr, arg: c.arg });
            }
        }
        calls.push((n, list.as_slice()));
    }
    let mut a = Asm { code: Vec::new(), labels: 0 };
    a.put(Insn::Stmt(LD_W_ABS, ARCH));
    let arch_ok = a.label();
    let kill = a.label();
    a.put(Insn::Jump(JEQ_K, AUDIT_ARCH_X86_64, arch_ok, kill));
    a.put(Insn::Label(kill));
    a.put(Insn::Stmt(RET_K, SECCOMP_RET_KILL_PROCESS));
    a.put(Insn::Label(arch_ok));
    a.put(Insn::Stmt(LD_W_ABS, NR));
    let refuse = a.label();
    // The rules of calls that have some, laid out after the search.
    let mut bodies: Vec<(usize, &[Rule])> = Vec::new();
    search(&mut a, &calls, refuse, matched, &mut bodies);
    a.put(Insn::Label(refuse));
    a.put(Insn::Stmt(RET_K, mismatch));
    for (label, list) in bodies {
        a.put(Insn::Label(label));
        for rule in list {
            let next = a.label();
            let mut loaded = None;
            for c in rule {
                if loaded != Some(c.arg) {
                    a.put(Insn::Stmt(LD_W_ABS, arg_low(c.arg)));
                    loaded = Some(c.arg);
                }
                let go = a.label();
                match c.op {
                    ArgOp::Eq(v) => a.put(Insn::Jump(JEQ_K, v, go, next)),
                    ArgOp::Ne(v) => a.put(Insn::Jump(JEQ_K, v, next, go)),
                    ArgOp::MaskedEq { mask, value } => {
                        a.put(Insn::Stmt(ALU_AND_K, mask));
                        // The accumulator no longer holds the argument.
                        loaded = None;
                        a.put(Insn::Jump(JEQ_K, value & mask, go, next));
                    }
                }
                a.put(Insn::Label(go));
            }
            a.put(Insn::Stmt(RET_K, matched));
            a.put(Insn::Label(next));
        }
        a.put(Insn::Stmt(RET_K, mismatch));
    }
    let program = a.finish();
    if program.len() > BPF_MAXINSNS {
        return Err(ProgramError::TooLong(program.len()));
    }
    Ok(program)
}

/// The search over `calls` (sorted by number), the number in the
/// accumulator: halves until a leaf of at most [`LEAF`] calls, compared in
/// turn; a call without rules returns `matched` on the spot, one with
/// rules jumps to its body (queued in `bodies`); no match jumps to `refuse`.
fn search<'r>(
    a: &mut Asm,
    calls: &[(u32, &'r [Rule])],
    refuse: usize,
    matched: u32,
    bodies: &mut Vec<(usize, &'r [Rule])>,
) {
    if calls.len() <= LEAF {
        for &(nr, list) in calls {
            let (hit, miss) = (a.label(), a.label());
            a.put(Insn::Jump(JEQ_K, nr, hit, miss));
            a.put(Insn::Label(hit));
            if list.is_empty() {
                a.put(Insn::Stmt(RET_K, matched));
            } else {
                let body = a.label();
                bodies.push((body, list));
                a.put(Insn::Ja(body));
            }
            a.put(Insn::Label(miss));
        }
        a.put(Insn::Ja(refuse));
        return;
    }
    let (low, high) = calls.split_at(calls.len() / 2);
    let (upper, lower) = (a.label(), a.label());
    let to_upper = a.label();
    a.put(Insn::Jump(JGE_K, high[0].0, to_upper, lower));
    a.put(Insn::Label(to_upper));
    a.put(Insn::Ja(upper));
    a.put(Insn::Label(lower));
    search(a, low, refuse, matched, bodies);
    a.put(Insn::Label(upper));
    search(a, high, refuse, matched, bodies);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
    };

    /// Runs a classic BPF seccomp program on (arch, nr, args), as the
    /// kernel would: its action and the instructions it ran. Panics on
    /// anything a valid program cannot do.
    pub(crate) fn run(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
                o if (16..64).contains(&o) && o % 4 == 0 => {
                    let a = args[(o as usize - 16) / 8];
                    if o % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "a loop");
            let i = &p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = word(i.k),
                ALU_AND_K => acc &= i.k,
                JA => pc += i.k as usize,
                JEQ_K | JGE_K => {
                    let t = if i.code == JEQ_K { acc == i.k } else { acc >= i.k };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                RET_K => return (i.k, steps),
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// The same list as seccompiler rules.
    pub(crate) fn reference(rules: &Rules, mismatch: SeccompAction) -> BpfProgram {
        let map = rules
            .iter()
            .map(|(&nr, list)| {
                let list = list
                    .iter()
                    .map(|rule| {
                        let conds = rule
                            .iter()
                            .map(|c| {
                                let (op, v) = match c.op {
                                    ArgOp::Eq(v) => (SeccompCmpOp::Eq, v),
                                    ArgOp::Ne(v) => (SeccompCmpOp::Ne, v),
                                    ArgOp::MaskedEq { mask, value } => (SeccompCmpOp::MaskedEq(mask as u64), value),
                                };
                                SeccompCondition::new(c.arg, SeccompCmpArgLen::Dword, op, v as u64).unwrap()
                            })
                            .collect();
                        SeccompRule::new(conds).unwrap()
                    })
                    .collect();
                (nr, list)
            })
            .collect();
        SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64).unwrap().try_into().unwrap()
    }

    /// Every call number 0..1024 and some far ones, with each argument at
    /// every value a rule names, one off it, and its masked forms: both
    /// programs decide every case alike. Returns the number of cases.
    pub(crate) fn assert_same_decisions(rules: &Rules) -> usize {
        let mismatch = SeccompAction::Errno(4000);
        let ours = compile(rules, u32::from(mismatch.clone()), u32::from(SeccompAction::Allow)).unwrap();
        let theirs = reference(rules, mismatch);
        let mut values = vec![0u64, 1, u32::MAX as u64, 1 << 32, u64::MAX];
        for c in rules.values().flatten().flatten() {
            let v = match c.op {
                ArgOp::Eq(v) | ArgOp::Ne(v) => v,
                ArgOp::MaskedEq { mask, value } => {
                    values.extend([(value & mask) as u64, (!mask) as u64, mask as u64, (value | !mask) as u64]);
                    value
                }
            };
            for d in [v as u64, v.wrapping_add(1) as u64, v.wrapping_sub(1) as u64, (v as u64) | (7 << 32)] {
                values.push(d);
            }
        }
        values.sort_unstable();
        values.dedup();
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([0x4000_0000, 0x4000_0001, 0x4000_0010, u32::MAX, 1 << 31]);
        let mut cases = 0;
        for &nr in &numbers {
            // Arguments varied one at a time over the values, then all
            // at once (a rule with checks on two arguments).
            let listed = rules.contains_key(&(nr as i64));
            let argsets: Vec<[u64; 6]> = if listed {
                let mut v = Vec::new();
                for arg in 0..6 {
                    for &x in &values {
                        let mut a = [0u64; 6];
                        a[arg] = x;
                        v.push(a);
                    }
                }
                for &x in &values {
                    v.push([x; 6]);
                }
                v
            } else {
                vec![[0; 6], [u64::MAX; 6]]
            };
            for args in argsets {
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                    let (a, b) = (run(&ours, arch, nr, args).0, run(&theirs, arch, nr, args).0);
                    assert_eq!(a, b, "nr {nr} arch {arch:#x} args {args:x?}");
                    cases += 1;
                }
            }
        }
        cases
    }

    fn sample() -> Rules {
        let mut r = Rules::new();
        for nr in [0i64, 1, 3, 9, 10, 11, 60, 202, 231, 334] {
            r.insert(nr, vec![]);
        }
        r.insert(16, (0..30).map(|i| vec![ArgCheck::eq(1, 0xae00 + i)]).collect());
        r.insert(72, vec![vec![ArgCheck { arg: 1, op: ArgOp::Eq(1) }], vec![ArgCheck { arg: 1, op: ArgOp::Eq(1030) }]]);
        r.insert(13, vec![vec![ArgCheck { arg: 0, op: ArgOp::Ne(31) }]]);
        r.insert(9, vec![vec![ArgCheck { arg: 2, op: ArgOp::MaskedEq { mask: 4, value: 0 } }]]);
        r.insert(
            234,
            vec![vec![
                ArgCheck::eq(0, 77),
                ArgCheck { arg: 2, op: ArgOp::Ne(0) },
                ArgCheck { arg: 2, op: ArgOp::MaskedEq { mask: 0xf0, value: 0x30 } },
            ]],
        );
        r
    }

    #[test]
    fn decides_like_seccompiler() {
        assert!(assert_same_decisions(&sample()) > 10_000);
        assert!(assert_same_decisions(&Rules::new()) > 1000);
        let one: Rules = [(39i64, vec![])].into_iter().collect();
        assert_same_decisions(&one);
    }

    #[test]
    fn any_call_is_decided_in_few_instructions() {
        let mut r = sample();
        for nr in 100..400 {
            r.insert(nr, vec![]);
        }
        let mismatch = SeccompAction::Errno(4000);
        let ours = compile(&r, u32::from(mismatch.clone()), u32::from(SeccompAction::Allow)).unwrap();
        let row = reference(&r, mismatch);
        let worst = |p: &[sock_filter]| (0..1024u32).map(|nr| run(p, AUDIT_ARCH_X86_64, nr, [0; 6]).1).max().unwrap();
        // Arch check and load (4), ~7 halvings of 2, a leaf of 4 × 2, the
        // 30-rule ioctl body × 2: tens, where the row takes hundreds.
        let (a, b) = (worst(&ours), worst(&row));
        assert!(a < 100 && b > 6 * a, "worst paths: {a} (search), {b} (row)");
    }

    #[test]
    fn bad_lists_are_refused() {
        let r: Rules = [(-1i64, vec![])].into_iter().collect();
        assert_eq!(compile(&r, 0, 1), Err(ProgramError::SyscallNumber(-1)));
        let r: Rules = [(5i64, vec![vec![]])].into_iter().collect();
        assert_eq!(compile(&r, 0, 1), Err(ProgramError::EmptyRule(5)));
        let r: Rules = [(5i64, vec![vec![ArgCheck::eq(6, 1)]])].into_iter().collect();
        assert_eq!(compile(&r, 0, 1), Err(ProgramError::Argument { nr: 5, arg: 6 }));
        let r: Rules = (0..3000i64).map(|nr| (nr, vec![vec![ArgCheck::eq(0, 1)]])).collect();
        assert!(matches!(compile(&r, 0, 1), Err(ProgramError::TooLong(_))));
    }

    /// A value the 32-bit comparison would cut is a list mistake, not a
    /// silent truncation (debug builds, where the tests run).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "wider than 32 bits")]
    fn wide_values_are_a_list_mistake() {
        ArgCheck::eq(1, 1 << 32);
    }

    /// The kernel takes the program and applies it: a call outside the
    /// list gets the mismatch errno, a listed one runs.
    #[test]
    fn the_kernel_applies_the_program() {
        let p = compile(&sample(), u32::from(SeccompAction::Errno(4000)), u32::from(SeccompAction::Allow)).unwrap();
        let got = std::thread::spawn(move || {
            seccompiler::apply_filter(&p).unwrap();
            // SAFETY: getpid and close(-1) have no preconditions; getpid
            // (39) is not in the sample list, close (3) is.
            unsafe {
                let pid = (libc::syscall(libc::SYS_getpid), *libc::__errno_location());
                let close = (libc::syscall(libc::SYS_close, -1), *libc::__errno_location());
                (pid, close)
            }
        })
        .join()
        .unwrap();
        assert_eq!(got, ((-1, 4000), (-1, libc::EBADF)));
    }
}
