//! A minimal riscv64 Linux program runner over the `riscv` crate, for the
//! crate's own tests and benchmark only: static ELF executables, a stack
//! with argv, and the read/write/exit system calls. (The real user-mode
//! emulator, with the whole Linux ABI, is the `linux-user` crate.)

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use riscv::{perm, Exit, Hart, UserSpace};

const STACK_TOP: u64 = 0x3f_f000_0000;
const STACK_SIZE: u64 = 8 << 20;

/// Result of running a program.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status (or 128 + signal-like code for a crash).
    pub status: i32,
    /// What the program wrote to fds 1 and 2.
    pub output: Vec<u8>,
    /// Instructions retired.
    pub instret: u64,
    /// Why it ended, if not by exit().
    pub crash: Option<Exit>,
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Loads a static riscv64 ELF into a fresh space; returns (space, entry).
pub fn load(elf: &[u8]) -> Result<(Arc<UserSpace>, u64), String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || u16le(elf, 18) != 243 {
        return Err("not a riscv64 ELF".into());
    }
    let space = Arc::new(UserSpace::new(38).map_err(|e| e.to_string())?);
    let entry = u64le(elf, 24);
    let phoff = u64le(elf, 32) as usize;
    let phentsize = u16le(elf, 54) as usize;
    let phnum = u16le(elf, 56) as usize;
    let mut pages: BTreeMap<u64, u8> = BTreeMap::new();
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 56 > elf.len() {
            return Err("truncated program headers".into());
        }
        if u32le(elf, ph) != 1 {
            continue;
        }
        let flags = u32le(elf, ph + 4);
        let off = u64le(elf, ph + 8) as usize;
        let vaddr = u64le(elf, ph + 16);
        let filesz = u64le(elf, ph + 32) as usize;
        let memsz = u64le(elf, ph + 40);
        if off + filesz > elf.len() {
            return Err("truncated segment".into());
        }
        let mut p = 0;
        if flags & 4 != 0 {
            p |= perm::R;
        }
        if flags & 2 != 0 {
            p |= perm::W;
        }
        if flags & 1 != 0 {
            p |= perm::X;
        }
        let start = vaddr & !0xfff;
        let end = (vaddr + memsz + 0xfff) & !0xfff;
        for page in (start..end).step_by(4096) {
            *pages.entry(page).or_insert(0) |= p;
        }
        segs.push((vaddr, off, filesz));
    }
    for &page in pages.keys() {
        space
            .map_anonymous(page, 4096, perm::R | perm::W)
            .map_err(|e| e.to_string())?;
    }
    for (vaddr, off, filesz) in segs {
        space
            .write(vaddr, &elf[off..off + filesz])
            .map_err(|e| e.to_string())?;
    }
    for (&page, &p) in &pages {
        space.set_perms(page, 4096, p).map_err(|e| e.to_string())?;
    }
    space
        .map_anonymous(STACK_TOP - STACK_SIZE, STACK_SIZE, perm::R | perm::W)
        .map_err(|e| e.to_string())?;
    Ok((space, entry))
}

/// Sets up the stack (argc, argv, envp, auxv) for `hart`.
pub fn setup_stack(space: &UserSpace, hart: &mut Hart, args: &[&str]) {
    let mut sp = STACK_TOP - 4096;
    let mut ptrs = Vec::new();
    for a in args {
        let bytes = [a.as_bytes(), b"\0"].concat();
        sp -= bytes.len() as u64;
        space.write(sp, &bytes).unwrap();
        ptrs.push(sp);
    }
    sp &= !15;
    let mut words = vec![args.len() as u64];
    words.extend(&ptrs);
    words.extend([0, 0, 6, 4096, 0, 0]); // argv NULL, envp NULL, AT_PAGESZ, AT_NULL
    sp -= (words.len() as u64 * 8 + 15) & !15;
    for (i, w) in words.iter().enumerate() {
        space.write(sp + 8 * i as u64, &w.to_le_bytes()).unwrap();
    }
    hart.set_x(2, sp);
}

/// Runs a loaded program to its exit.
pub fn run(space: &UserSpace, entry: u64, args: &[&str], stdin: &[u8], echo: bool) -> Outcome {
    let mut hart = Hart::new_user();
    hart.pc = entry;
    setup_stack(space, &mut hart, args);
    let mut output = Vec::new();
    let mut input = stdin;
    loop {
        match hart.run_user(space) {
            Exit::Ecall => {
                let a = |h: &Hart, i: usize| h.x(10 + i);
                let ret: i64 = match hart.x(17) {
                    63 => {
                        let (fd, buf, len) = (a(&hart, 0), a(&hart, 1), a(&hart, 2));
                        if fd != 0 {
                            -9
                        } else {
                            let n = (len as usize).min(input.len()).min(1 << 20);
                            match space.write(buf, &input[..n]) {
                                Ok(()) => {
                                    input = &input[n..];
                                    n as i64
                                }
                                Err(_) => -14,
                            }
                        }
                    }
                    64 => {
                        let (fd, buf, len) = (a(&hart, 0), a(&hart, 1), a(&hart, 2));
                        let mut v = vec![0u8; (len as usize).min(1 << 24)];
                        if fd != 1 && fd != 2 {
                            -9
                        } else if space.read(buf, &mut v).is_err() {
                            -14
                        } else {
                            if echo {
                                use std::io::Write;
                                let _ = std::io::stdout().write_all(&v);
                            } else {
                                output.extend_from_slice(&v);
                            }
                            v.len() as i64
                        }
                    }
                    93 | 94 => {
                        return Outcome {
                            status: a(&hart, 0) as i32 & 0xff,
                            output,
                            instret: hart.instret(),
                            crash: None,
                        }
                    }
                    _ => -38,
                };
                hart.set_x(10, ret as u64);
                hart.pc += 4;
            }
            other => {
                return Outcome {
                    status: 128,
                    output,
                    instret: hart.instret(),
                    crash: Some(other),
                }
            }
        }
    }
}

/// Loads and runs an ELF file.
pub fn run_file(path: &str, args: &[&str], echo: bool) -> Result<Outcome, String> {
    let elf = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let (space, entry) = load(&elf)?;
    let mut stdin = Vec::new();
    if !echo {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    Ok(run(&space, entry, args, &stdin, echo))
}
