//! cgroup v2 device rules. v2 has no devices.allow/deny files: the kernel
//! asks an eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the
//! cgroup. This builds one from linux.resources.devices plus the default
//! devices, with v1's meaning: rules apply in order and the last one that
//! matches decides; a device no rule matches is allowed (v1's parent
//! default). An allow rule matches when it grants every access asked for,
//! a deny rule when it forbids any of them.

use crate::error::{spec_err, Error, Result};
use oci_spec::runtime::LinuxDeviceCgroup;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Access bits and device types of `struct bpf_cgroup_dev_ctx`
/// (linux/bpf.h): `access_type` is `access << 16 | type`.
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

/// One rule, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub allow: bool,
    /// DEV_BLOCK, DEV_CHAR, or None for `a` (every device, every access).
    pub typ: Option<u32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

fn access_bits(s: &str, field: &str) -> Result<u32> {
    s.chars().try_fold(0, |acc, c| match c {
        'r' => Ok(acc | ACC_READ),
        'w' => Ok(acc | ACC_WRITE),
        'm' => Ok(acc | ACC_MKNOD),
        _ => Err(spec_err(field, format!("access {s:?}: only r, w and m"))),
    })
}

fn number(n: Option<i64>, field: &str) -> Result<Option<u32>> {
    match n {
        // runc writes -1 for "any".
        None | Some(-1) => Ok(None),
        // Compared as a sign-extended 32-bit immediate: keep it positive
        // (Linux majors have 12 bits, minors 20).
        Some(v) if (0..=i32::MAX as i64).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(spec_err(field, format!("{v} is not a device number"))),
    }
}

impl Rule {
    pub fn from_spec(i: usize, d: &LinuxDeviceCgroup) -> Result<Rule> {
        let f = |n: &str| format!("linux.resources.devices[{i}].{n}");
        let typ = match d.typ().map(|t| t.as_str().to_string()).as_deref() {
            None | Some("a") => None,
            Some("c") | Some("u") => Some(DEV_CHAR),
            Some("b") => Some(DEV_BLOCK),
            Some(t) => return Err(spec_err(f("type"), format!("{t:?} is not a, b or c"))),
        };
        Ok(Rule {
            allow: d.allow(),
            typ,
            major: number(d.major(), &f("major"))?,
            minor: number(d.minor(), &f("minor"))?,
            access: access_bits(d.access().as_deref().unwrap_or("rwm"), &f("access"))?,
        })
    }

    /// A v1-style allow rule ("c 1:3 rwm", "c 136:* rwm").
    pub fn from_v1(rule: &str) -> Result<Rule> {
        let bad = || Error::Cgroup(format!("device rule {rule:?}"));
        let mut it = rule.split(' ');
        let typ = match it.next() {
            Some("c") => DEV_CHAR,
            Some("b") => DEV_BLOCK,
            _ => return Err(bad()),
        };
        let (ma, mi) = it.next().and_then(|n| n.split_once(':')).ok_or_else(bad)?;
        let num = |s: &str| -> Result<Option<u32>> {
            if s == "*" {
                Ok(None)
            } else {
                s.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(|n| Some(n as u32))
                    .ok_or_else(bad)
            }
        };
        Ok(Rule {
            allow: true,
            typ: Some(typ),
            major: num(ma)?,
            minor: num(mi)?,
            access: access_bits(it.next().ok_or_else(bad)?, "device rule")?,
        })
    }
}

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const LDX_W_MEM: u8 = 0x61;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const EXIT: u8 = 0x95;

/// The program: r3 = type, r4 = access, r5 = major, r6 = minor; then one
/// block per rule, last rule first, each returning its verdict on a match.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W_MEM, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND64_K, 3, 0, 0, 0xffff),
        insn(MOV64_X, 4, 2, 0, 0),
        insn(RSH64_K, 4, 0, 0, 16),
        insn(LDX_W_MEM, 5, 1, 4, 0),
        insn(LDX_W_MEM, 6, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Conditions as (jump code, register, immediate, scratch setup).
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps: Vec<usize> = Vec::new();
        if let Some(t) = r.typ {
            jumps.push(block.len());
            block.push(insn(JNE_K, 3, 0, 0, t as i32));
            let all = ACC_READ | ACC_WRITE | ACC_MKNOD;
            if r.allow && r.access != all {
                // Skip unless every requested bit is granted.
                block.push(insn(MOV64_X, 7, 4, 0, 0));
                block.push(insn(AND64_K, 7, 0, 0, (!r.access & all) as i32));
                jumps.push(block.len());
                block.push(insn(JNE_K, 7, 0, 0, 0));
            } else if !r.allow {
                // Skip unless some requested bit is denied.
                block.push(insn(MOV64_X, 7, 4, 0, 0));
                block.push(insn(AND64_K, 7, 0, 0, r.access as i32));
                jumps.push(block.len());
                block.push(insn(JEQ_K, 7, 0, 0, 0));
            }
            if let Some(m) = r.major {
                jumps.push(block.len());
                block.push(insn(JNE_K, 5, 0, 0, m as i32));
            }
            if let Some(m) = r.minor {
                jumps.push(block.len());
                block.push(insn(JNE_K, 6, 0, 0, m as i32));
            }
        }
        block.push(insn(MOV64_K, 0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let n = block.len();
        let unconditional = jumps.is_empty();
        for j in jumps {
            block[j].off = (n - j - 1) as i16;
        }
        p.extend(block);
        if unconditional {
            // An `a` rule decides everything: code after it would be
            // unreachable, which the verifier refuses.
            return p;
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Load `prog` and attach it to the cgroup directory `cgroup`.
pub fn attach(cgroup: &std::path::Path, prog: &[Insn]) -> Result<()> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    #[repr(C)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
    }
    let err = |what: &str| Error::Cgroup(format!("{what}: {}", std::io::Error::last_os_error()));
    // The verifier explains a refusal here.
    let mut log = vec![0u8; 16 << 10];
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: a bpf_attr prefix of the size we pass; the instructions,
    // license and log buffer outlive the call; the kernel returns a new fd.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        let e = err("loading the device eBPF program");
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        return Err(Error::Cgroup(format!("{e}; verifier: {}", text.trim())));
    }
    // SAFETY: a new fd nobody else owns.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| Error::Cgroup(format!("opening {}: {e}", cgroup.display())))?;
    let at = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: as above; both fds are open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &at as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if r != 0 {
        return Err(err(&format!(
            "attaching the device program to {}",
            cgroup.display()
        )));
    }
    Ok(())
}

/// The program for a container: its rules, then the default devices.
pub fn rules_for(devices: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut rules = devices
        .iter()
        .enumerate()
        .map(|(i, d)| Rule::from_spec(i, d))
        .collect::<Result<Vec<_>>>()?;
    for r in crate::cgroups::DEFAULT_DEVICE_RULES {
        rules.push(Rule::from_v1(r)?);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::path::PathBuf;

    fn cgroup2_mount() -> Option<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mp))
        })
    }

    #[test]
    fn bad_rules_name_the_field() {
        let d: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rwx"}"#)
                .unwrap();
        let e = Rule::from_spec(2, &d).unwrap_err().to_string();
        assert!(e.contains("linux.resources.devices[2].access"), "{e}");
        assert_eq!(
            Rule::from_v1("c 136:* rw").unwrap(),
            Rule {
                allow: true,
                typ: Some(DEV_CHAR),
                major: Some(136),
                minor: None,
                access: ACC_READ | ACC_WRITE
            }
        );
    }

    /// The kernel runs the program: in a cgroup with "deny all, allow
    /// /dev/null read-only", a child may read /dev/null but not write it,
    /// and may not open /dev/zero. Needs root and a cgroup2 mount (this
    /// hybrid host has an empty one at /sys/fs/cgroup/unified).
    #[test]
    fn the_kernel_enforces_the_program() {
        let Some(root) = cgroup2_mount() else {
            eprintln!("no cgroup2 mount: nothing to attach to");
            return;
        };
        let dir = root.join(format!("virtkit-devfilter-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                for _ in 0..200 {
                    if std::fs::remove_dir(&self.0).is_ok() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        let _rm = Rm(dir.clone());
        let deny_all: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow":false,"access":"rwm"}"#).unwrap();
        let null_ro: LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"r"}"#)
                .unwrap();
        let rules = [
            Rule::from_spec(0, &deny_all).unwrap(),
            Rule::from_spec(1, &null_ro).unwrap(),
        ];
        attach(&dir, &program(&rules)).unwrap();
        let procs = CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap();
        // SAFETY: the child only makes async-signal-safe libc calls on
        // strings built before the fork, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                let moved = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let eperm = |r: i32| r < 0 && *libc::__errno_location() == libc::EPERM;
                let read_null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) >= 0;
                let write_null = eperm(libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY));
                let zero = eperm(libc::open(c"/dev/zero".as_ptr(), libc::O_RDONLY));
                libc::_exit(
                    moved as i32
                        | (read_null as i32) << 1
                        | (write_null as i32) << 2
                        | (zero as i32) << 3,
                );
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status));
        // moved, /dev/null readable, not writable, /dev/zero refused.
        assert_eq!(libc::WEXITSTATUS(status), 0b1111);
    }
}
