//! Seccomp: compile the spec's `linux.seccomp` into a classic BPF program
//! and install it.
//!
//! Why our own compiler instead of seccompiler or libseccomp: seccompiler
//! gives one filter a single match action (an OCI profile mixes ALLOW,
//! ERRNO(n) and others per rule) and has no public syscall-name table;
//! libseccomp needs the C library and its headers at build time on every
//! machine that builds the workspace. The OCI model maps directly onto a
//! linear BPF program: check the architecture, then one block per rule
//! (syscall number, argument conditions on both 32-bit halves, return the
//! rule's action), then the default action. Syscall names come from the
//! `syscalls` crate's per-architecture tables.

use crate::error::{Error, Result};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use std::str::FromStr;

pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
pub const ARCHES: &[&str] = &["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"];

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes used by seccomp filters.
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// The kernel refuses programs longer than this (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;
/// Names per run of `jeq` sharing one return: a conditional jump reaches at
/// most 255 instructions ahead.
const CHUNK: usize = 200;

/// A compiled filter, ready to install.
#[derive(Debug, Clone)]
pub struct Program {
    pub insns: Vec<libc::sock_filter>,
    pub flags: u32,
}

#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

enum Ins {
    Stmt(u16, u32),
    Jump(u16, u32, Target, Target),
    /// Unconditional jump to a label (32-bit offset).
    Ja(usize),
    Label(usize),
}

struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn ld(&mut self, off: u32) {
        self.ins.push(Ins::Stmt(LD_W_ABS, off));
    }
    fn ret(&mut self, v: u32) {
        self.ins.push(Ins::Stmt(RET_K, v));
    }
    fn jmp(&mut self, op: u16, k: u32, t: Target, f: Target) {
        self.ins.push(Ins::Jump(op, k, t, f));
    }

    fn finish(self) -> Result<Vec<libc::sock_filter>> {
        // First pass: instruction index of every label.
        let mut pos = vec![0usize; self.labels];
        let mut n = 0;
        for i in &self.ins {
            match i {
                Ins::Label(l) => pos[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for i in &self.ins {
            let here = out.len();
            let off = |t: &Target| -> Result<u8> {
                match t {
                    Target::Next => Ok(0),
                    Target::Label(l) => u8::try_from(pos[*l] - here - 1).map_err(|_| {
                        Error::Seccomp("internal: conditional jump out of range".into())
                    }),
                }
            };
            match i {
                Ins::Label(_) => {}
                Ins::Stmt(code, k) => out.push(libc::sock_filter {
                    code: *code,
                    jt: 0,
                    jf: 0,
                    k: *k,
                }),
                Ins::Jump(code, k, t, f) => out.push(libc::sock_filter {
                    code: *code,
                    jt: off(t)?,
                    jf: off(f)?,
                    k: *k,
                }),
                Ins::Ja(l) => out.push(libc::sock_filter {
                    code: JMP_JA,
                    jt: 0,
                    jf: 0,
                    k: (pos[*l] - here - 1) as u32,
                }),
            }
        }
        if out.len() > MAX_INSNS {
            return Err(Error::Seccomp(format!(
                "the filter needs {} BPF instructions, more than the kernel's {MAX_INSNS}",
                out.len()
            )));
        }
        Ok(out)
    }
}

fn action_value(a: LinuxSeccompAction, errno: Option<u32>, field: &str) -> Result<u32> {
    let data = |d: Option<u32>, default: u32| d.unwrap_or(default) & 0xffff;
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | data(errno, libc::EPERM as u32),
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | data(errno, libc::EPERM as u32),
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        // A user notification needs a seccomp agent behind
        // linux.seccomp.listenerPath to answer it; without one the
        // filtered calls would block forever.
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Seccomp(format!(
                "{field}: action SCMP_ACT_NOTIFY is not supported (no seccomp agent, \
                 linux.seccomp.listenerPath, support)"
            )))
        }
        #[allow(unreachable_patterns)]
        other => {
            return Err(Error::Seccomp(format!(
                "{field}: action {other:?} is not supported"
            )))
        }
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Abi {
    X86_64,
    X32,
    I386,
}

impl Abi {
    fn nr(self, name: &str) -> Option<u32> {
        match self {
            Abi::X86_64 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
            // x32 shares x86_64's numbers for all common calls, with bit 30
            // set; its few x32-only entry points (512..547) are not listed.
            Abi::X32 => syscalls::x86_64::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32 | X32_SYSCALL_BIT),
            Abi::I386 => syscalls::x86::Sysno::from_str(name)
                .ok()
                .map(|s| s.id() as u32),
        }
    }
    fn audit(self) -> u32 {
        match self {
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
        }
    }
}

struct Rule {
    names: Vec<String>,
    action: u32,
    /// (index, op, value, value_two)
    conds: Vec<(usize, LinuxSeccompOperator, u64, u64)>,
}

/// Compile the spec's seccomp section.
pub fn compile(s: &LinuxSeccomp) -> Result<Program> {
    let default = action_value(
        s.default_action(),
        s.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let mut abis = vec![Abi::X86_64];
    for (i, a) in s.architectures().iter().flatten().enumerate() {
        let abi = match a {
            Arch::ScmpArchX86_64 => Abi::X86_64,
            Arch::ScmpArchX86 => Abi::I386,
            Arch::ScmpArchX32 => Abi::X32,
            // Foreign architectures never run on this host's kernel entry
            // points; libseccomp ignores them the same way on x86-64.
            _ => continue,
        };
        let _ = i;
        if !abis.contains(&abi) {
            abis.push(abi);
        }
    }
    let mut flags = 0u32;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::Seccomp(format!(
                    "linux.seccomp.flags: {other:?} is not supported"
                )))
            }
        };
    }
    let mut rules = Vec::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let action = action_value(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
        let mut conds = Vec::new();
        for (j, a) in sc.args().iter().flatten().enumerate() {
            if a.index() > 5 {
                return Err(Error::Seccomp(format!(
                    "{field}.args[{j}].index: {} is not an argument index (0..5)",
                    a.index()
                )));
            }
            conds.push((a.index(), a.op(), a.value(), a.value_two().unwrap_or(0)));
        }
        rules.push(Rule {
            names: sc.names().clone(),
            action,
            conds,
        });
    }

    let mut asm = Asm {
        ins: Vec::new(),
        labels: 0,
    };
    for abi in &abis {
        let next_section = asm.label();
        let in_section = asm.label();
        asm.ld(4); // seccomp_data.arch
        asm.jmp(
            JMP_JEQ_K,
            abi.audit(),
            Target::Label(in_section),
            Target::Next,
        );
        asm.ins.push(Ins::Ja(next_section));
        asm.ins.push(Ins::Label(in_section));
        asm.ld(0); // seccomp_data.nr
        match abi {
            Abi::X86_64 => {
                let ok = asm.label();
                asm.jmp(JMP_JGE_K, X32_SYSCALL_BIT, Target::Next, Target::Label(ok));
                asm.ins.push(Ins::Ja(next_section));
                asm.ins.push(Ins::Label(ok));
            }
            Abi::X32 => {
                let ok = asm.label();
                asm.jmp(JMP_JGE_K, X32_SYSCALL_BIT, Target::Label(ok), Target::Next);
                asm.ins.push(Ins::Ja(next_section));
                asm.ins.push(Ins::Label(ok));
            }
            Abi::I386 => {}
        }
        emit_rules(&mut asm, *abi, &rules);
        asm.ret(default);
        asm.ins.push(Ins::Label(next_section));
    }
    // An architecture the profile does not list (as libseccomp's default
    // bad-architecture action).
    asm.ret(RET_KILL_PROCESS);
    Ok(Program {
        insns: asm.finish()?,
        flags,
    })
}

fn emit_rules(asm: &mut Asm, abi: Abi, rules: &[Rule]) {
    // Conditional rules first: an unconditional rule for the same syscall
    // would otherwise shadow them (libseccomp orders them the same way).
    for r in rules.iter().filter(|r| !r.conds.is_empty()) {
        for name in &r.names {
            let Some(nr) = abi.nr(name) else { continue };
            let fail = asm.label();
            asm.ld(0);
            asm.jmp(JMP_JEQ_K, nr, Target::Next, Target::Label(fail));
            for &(idx, op, v, v2) in &r.conds {
                emit_cond(asm, idx, op, v, v2, fail);
            }
            asm.ret(r.action);
            asm.ins.push(Ins::Label(fail));
        }
    }
    asm.ld(0);
    for r in rules.iter().filter(|r| r.conds.is_empty()) {
        let nrs: Vec<u32> = r.names.iter().filter_map(|n| abi.nr(n)).collect();
        for chunk in nrs.chunks(CHUNK) {
            let hit = asm.label();
            let miss = asm.label();
            for nr in chunk {
                asm.jmp(JMP_JEQ_K, *nr, Target::Label(hit), Target::Next);
            }
            asm.ins.push(Ins::Ja(miss));
            asm.ins.push(Ins::Label(hit));
            asm.ret(r.action);
            asm.ins.push(Ins::Label(miss));
        }
    }
}

/// Compare the 64-bit argument `idx` with `v`; jump to `fail` if the
/// condition does not hold, fall through if it does.
fn emit_cond(asm: &mut Asm, idx: usize, op: LinuxSeccompOperator, v: u64, v2: u64, fail: usize) {
    let lo_off = 16 + 8 * idx as u32;
    let hi_off = lo_off + 4;
    let (hi, lo) = ((v >> 32) as u32, v as u32);
    let f = Target::Label(fail);
    let pass = asm.label();
    let p = Target::Label(pass);
    let n = Target::Next;
    use LinuxSeccompOperator as Op;
    match op {
        Op::ScmpCmpEq => {
            asm.ld(hi_off);
            asm.jmp(JMP_JEQ_K, hi, n, f);
            asm.ld(lo_off);
            asm.jmp(JMP_JEQ_K, lo, n, f);
        }
        Op::ScmpCmpNe => {
            asm.ld(hi_off);
            asm.jmp(JMP_JEQ_K, hi, n, p);
            asm.ld(lo_off);
            asm.jmp(JMP_JEQ_K, lo, f, n);
        }
        Op::ScmpCmpMaskedEq => {
            // value is the mask, valueTwo the expected masked value.
            asm.ld(hi_off);
            asm.ins.push(Ins::Stmt(ALU_AND_K, hi));
            asm.jmp(JMP_JEQ_K, (v2 >> 32) as u32, n, f);
            asm.ld(lo_off);
            asm.ins.push(Ins::Stmt(ALU_AND_K, lo));
            asm.jmp(JMP_JEQ_K, v2 as u32, n, f);
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            asm.ld(hi_off);
            asm.jmp(JMP_JGT_K, hi, p, n);
            asm.jmp(JMP_JEQ_K, hi, n, f);
            asm.ld(lo_off);
            let code = if op == Op::ScmpCmpGt {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            asm.jmp(code, lo, n, f);
        }
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            asm.ld(hi_off);
            asm.jmp(JMP_JGT_K, hi, f, n);
            asm.jmp(JMP_JEQ_K, hi, n, p);
            asm.ld(lo_off);
            let code = if op == Op::ScmpCmpLt {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            asm.jmp(code, lo, f, n);
        }
    }
    asm.ins.push(Ins::Label(pass));
}

/// Install the filter in the calling thread (the kernel needs either
/// no_new_privs or CAP_SYS_ADMIN).
pub fn install(p: &Program) -> Result<()> {
    let prog = libc::sock_fprog {
        len: p.insns.len() as u16,
        filter: p.insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `prog` and the
    // instructions it points to, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            p.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(Error::Seccomp(format!(
            "installing the filter: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter over seccomp_data, to check what the
    /// compiled program decides without installing it.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    a = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                ALU_AND_K => a &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    let c = match i.code {
                        JMP_JEQ_K => a == i.k,
                        JMP_JGT_K => a > i.k,
                        _ => a >= i.k,
                    };
                    pc += if c { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn profile(json: &str) -> Program {
        compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn notify_is_refused_by_name() {
        let s = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let Err(e) = compile(&s) else {
            panic!("SCMP_ACT_NOTIFY was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn actions_and_default() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
              {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
              {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
              {"names":["kill"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        );
        let x = AUDIT_ARCH_X86_64;
        assert_eq!(run(&p.insns, x, 0, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p.insns, x, 1, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p.insns, x, 83, [0; 6]), RET_ERRNO | 13);
        assert_eq!(run(&p.insns, x, 62, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(run(&p.insns, x, 2, [0; 6]), RET_ERRNO | 38);
        // i386 not listed: killed; x32 not listed: killed.
        assert_eq!(run(&p.insns, AUDIT_ARCH_I386, 3, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(run(&p.insns, x, X32_SYSCALL_BIT, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn arguments() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[
              {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
              {"names":["clone"],"action":"SCMP_ACT_ERRNO","errnoRet":2,"args":[{"index":0,"value":2080505856,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
              {"names":["setuid"],"action":"SCMP_ACT_ERRNO","errnoRet":3,"args":[{"index":0,"value":4294967296,"op":"SCMP_CMP_GE"}]},
              {"names":["setgid"],"action":"SCMP_ACT_ERRNO","errnoRet":4,"args":[{"index":1,"value":10,"op":"SCMP_CMP_LT"}]},
              {"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":5,"args":[{"index":0,"value":18,"op":"SCMP_CMP_NE"}]}]}"#,
        );
        let x = AUDIT_ARCH_X86_64;
        assert_eq!(run(&p.insns, x, 135, [8, 0, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(run(&p.insns, x, 135, [9, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            run(&p.insns, x, 135, [8 | 1 << 32, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(&p.insns, x, 56, [0x11, 0, 0, 0, 0, 0]), RET_ERRNO | 2);
        assert_eq!(
            run(&p.insns, x, 56, [0x1000_0000, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&p.insns, x, 105, [1 << 32, 0, 0, 0, 0, 0]),
            RET_ERRNO | 3
        );
        assert_eq!(
            run(&p.insns, x, 105, [u32::MAX as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(run(&p.insns, x, 106, [0, 9, 0, 0, 0, 0]), RET_ERRNO | 4);
        assert_eq!(run(&p.insns, x, 106, [0, 10, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p.insns, x, 106, [0, 1 << 40, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p.insns, x, 95, [18, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p.insns, x, 95, [19, 0, 0, 0, 0, 0]), RET_ERRNO | 5);
        // i386 personality is 136.
        assert_eq!(
            run(&p.insns, AUDIT_ARCH_I386, 136, [8, 0, 0, 0, 0, 0]),
            RET_ERRNO | 1
        );
    }

    #[test]
    fn large_profiles_fit() {
        let names: Vec<String> = syscalls::x86_64::Sysno::iter()
            .map(|s| format!("\"{}\"", s.name()))
            .collect();
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
               "syscalls":[{{"names":[{}],"action":"SCMP_ACT_ALLOW"}}]}}"#,
            names.join(",")
        ));
        for nr in [0u32, 100, 200, 300, 330] {
            assert_eq!(
                run(&p.insns, AUDIT_ARCH_X86_64, nr, [0; 6]),
                RET_ALLOW,
                "nr {nr}"
            );
        }
        assert_eq!(run(&p.insns, AUDIT_ARCH_X86_64, 999, [0; 6]), RET_ERRNO | 1);
    }
}
