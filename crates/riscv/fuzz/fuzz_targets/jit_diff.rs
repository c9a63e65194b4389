//! The JIT and the interpreter agree: arbitrary 32-bit instruction words
//! (control flow made forward-only so every program ends) run both ways
//! from the same registers and memory; registers, FP state, pc, the exit
//! and the data page must match. Half the programs loop back to their
//! start a few times (x31 counts the passes), and their backward
//! branches then become loops inside the block (each target counts x31
//! down, so every loop ends). x8 points into the code, which is
//! writable for some inputs (stores change it while it runs: the JIT's
//! host write protection of translated code), and x9 near the end of the
//! space (accesses reaching into the guard pages).
//! Where the input had a `jalr`, a call and its return (see
//! `call_patterns`). Some words become the pairs the JIT fuses (see
//! `fusion_pairs`), W chains and branches over one op (see
//! `narrow_patterns`), and loops step a base register (see
//! `stride_patterns`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use riscv::decode::{decode, Kind};
use riscv::{perm, Exit, Hart, UserSpace};

const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;
const NOP: u32 = 0x13;
const ECALL: u32 = 0x73;
/// addi x31, x31, -1
const ADDI_X31_M1: u32 = 0xffff_8f93;

/// Log2 of the space's size.
const SPACE_BITS: u32 = 24;

fn run(
    words: &[u32],
    regs: &[u64],
    data: &[u8],
    code_writable: bool,
    jit: bool,
) -> (Hart, Exit, Vec<u8>) {
    let space = UserSpace::new(SPACE_BITS).expect("reserve");
    space
        .map_anonymous(CODE, 0x4000, perm::R | perm::W)
        .expect("map code");
    space
        .map_anonymous(DATA, 0x1000, perm::R | perm::W)
        .expect("map data");
    let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    space.write(CODE, &code).expect("write code");
    space.write(DATA, data).expect("write data");
    let w = if code_writable { perm::W } else { 0 };
    space
        .set_perms(CODE, 0x4000, perm::R | perm::X | w)
        .expect("perms");
    let mut hart = Hart::new_user();
    hart.set_jit(jit);
    for (r, &v) in regs.iter().enumerate().skip(1) {
        hart.set_x(r, v);
    }
    hart.pc = CODE;
    let exit = hart.run_user(&space);
    let mut page = vec![0u8; 0x1000];
    space.read(DATA, &mut page).expect("read data");
    (hart, exit, page)
}

/// `blt x0, x31, off`.
fn blt_x0_x31(off: i32) -> u32 {
    let o = off as u32;
    ((o >> 12 & 1) << 31)
        | ((o >> 5 & 0x3f) << 25)
        | (31 << 20)
        | (4 << 12)
        | ((o >> 1 & 0xf) << 8)
        | ((o >> 11 & 1) << 7)
        | 0x63
}

fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 20 & 1) << 31)
        | ((o >> 1 & 0x3ff) << 21)
        | ((o >> 11 & 1) << 20)
        | ((o >> 12 & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}

fn jalr(rd: u32, rs1: u32) -> u32 {
    (rs1 << 15) | (rd << 7) | 0x67
}

fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

/// Calls and returns, which the JIT predicts with a return-address
/// stack: where the input had a `jalr` (which the filter turned into a
/// NOP), a call through x1 or x5 to a return two words on, which comes
/// back right after the call (the prediction holds) or, in the longer
/// form, with its link moved on by a word first (a return elsewhere than
/// predicted). Each pattern ends past its last word; patterns never
/// overwrite the loop counter's words, and jumps into a pattern's middle
/// (where a return through a stale link could go backwards forever)
/// become NOPs.
fn call_patterns(words: &mut [u32], orig: &[u32], n: usize) {
    let mut inside = vec![false; n];
    let mut k = 0;
    while k < n {
        let i = decode(orig[k]);
        let link = if i.rd & 1 == 0 { 1 } else { 5 };
        let long = orig[k] >> 31 == 1;
        let len = if long { 5 } else { 3 };
        let free = k + len <= n
            && words[k..k + len].iter().all(|&w| {
                let d = decode(w);
                w != ADDI_X31_M1 && !(d.kind == Kind::Blt && d.rs2 == 31)
            });
        if i.kind != Kind::Jalr || !free {
            k += 1;
            continue;
        }
        let p: &[u32] = if long {
            &[
                jal(link, 12),
                jal(0, 16),
                jal(0, 12),
                addi(link, link, 4),
                jalr(0, link),
            ]
        } else {
            &[jal(link, 8), jal(0, 8), jalr(0, link)]
        };
        words[k..k + len].copy_from_slice(p);
        inside[k + 1..k + len].fill(true);
        k += len;
    }
    let mut k = 0;
    while k < n {
        let i = decode(words[k]);
        let jumps = matches!(
            i.kind,
            Kind::Jal | Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu
        );
        if jumps && !inside[k] {
            let t = k as i64 + i.imm as i64 / 4;
            if (0..n as i64).contains(&t) && inside[t as usize] {
                words[k] = NOP;
            }
        }
        k += 1;
    }
}

/// The pairs the JIT fuses (`lui`/`auipc` + `addi`/`addiw`, `slli` +
/// `srli`/`srai` by the same amount, both on one register), which random
/// words rarely make: where the input has a `lui`, `auipc` or `slli`,
/// the next word becomes its partner when that word's low opcode bit
/// pattern says so (about half the time), with its own immediate. The
/// loop counter's words are left alone.
fn fusion_pairs(words: &mut [u32], orig: &[u32]) {
    for k in 0..words.len().saturating_sub(1) {
        let i = decode(words[k]);
        let next = decode(words[k + 1]);
        let keep = words[k + 1] == ADDI_X31_M1 || (next.kind == Kind::Blt && next.rs2 == 31);
        if keep || orig[k + 1] & 0x80 == 0 || i.rd >= 31 {
            continue;
        }
        let rd = i.rd as u32;
        let imm = (orig[k + 1] >> 20) as i32;
        words[k + 1] = match i.kind {
            Kind::Lui | Kind::Auipc if orig[k + 1] & 0x100 == 0 => addi(rd, rd, imm),
            // addiw
            Kind::Lui | Kind::Auipc => addi(rd, rd, imm) ^ 0x13 ^ 0x1b,
            Kind::Slli => {
                let n = (i.imm & 63) as u32;
                // srli, or srai (bit 30)
                let sra = (orig[k + 1] >> 8 & 1) << 30;
                sra | n << 20 | rd << 15 | 5 << 12 | rd << 7 | 0x13
            }
            _ => continue,
        };
    }
}

/// Narrow arithmetic and branches over one instruction, which random
/// words rarely line up: where the input's word has bit 26 set, a W
/// instruction (`OP-32`, `OP-IMM-32`), register-register op or branch
/// gets its registers from x10..x13 (so W results feed W instructions,
/// stores, compares and 64-bit reads: the JIT keeps W results
/// unextended until read whole); where a branch's bit 8 is set, it
/// skips exactly the next word (the JIT turns a branch over one op into
/// conditional moves). The loop counter's words are left alone.
fn narrow_patterns(words: &mut [u32], orig: &[u32]) {
    for k in 0..words.len() {
        let w = words[k];
        let i = decode(w);
        if w == ADDI_X31_M1 || (i.kind == Kind::Blt && i.rs2 == 31) {
            continue;
        }
        let op = w & 0x7f;
        let mut v = w;
        if matches!(op, 0x1b | 0x3b | 0x33 | 0x63) && orig[k] >> 26 & 1 == 1 {
            let small = |x: u32, sh: u32| (x & !(31 << sh)) | (10 + (x >> sh & 3)) << sh;
            if op != 0x63 {
                v = small(v, 7); // rd (a branch's immediate there)
            }
            v = small(v, 15);
            if op != 0x1b {
                v = small(v, 20); // rs2 (an immediate in OP-IMM-32)
            }
        }
        if op == 0x63 && orig[k] >> 8 & 1 == 1 {
            // Offset +8: imm[4:1] = 0b0100, every other offset bit 0.
            v = (v & 0x01ff_f07f) | 4 << 8;
        }
        words[k] = v;
    }
}

/// In a program that loops back to its start, where the input's first
/// word has bit 10 set: x9 becomes a base that the loop steps (the JIT
/// then checks it once on the way into the loop, see
/// `emit::mem::loop_bases`): the second word steps it by 8 or 2 KiB
/// either way (so that passes run into the guard past the space's end,
/// or back from it), no other word writes it, and the loads and stores
/// whose input word had bit 11 set use it as their base.
fn stride_patterns(words: &mut [u32], orig: &[u32]) {
    if words.len() < 3 || orig[0] >> 10 & 1 == 0 {
        return;
    }
    for (k, w) in words.iter_mut().enumerate() {
        let op = *w & 0x7f;
        let writes_rd = !matches!(op, 0x23 | 0x27 | 0x63);
        if writes_rd && *w >> 7 & 31 == 9 {
            *w = NOP;
        } else if matches!(op, 0x03 | 0x07 | 0x23 | 0x27) && orig[k] >> 11 & 1 == 1 {
            *w = (*w & !(31 << 15)) | 9 << 15;
        }
    }
    if words[1] != ADDI_X31_M1 && decode(words[1]).kind != Kind::Blt {
        words[1] = addi(9, 9, [8, -8, 2040, -2048][(orig[1] & 3) as usize]);
    }
}

fuzz_target!(|input: &[u8]| {
    // 32 registers (2 bytes each) of which x1..x7 point into DATA, x8
    // into the code and x9 near the space's end, then the code words.
    if input.len() < 64 {
        return;
    }
    let (head, rest) = input.split_at(64);
    let mut regs = [0u64; 32];
    for (k, c) in head.chunks(2).enumerate() {
        let v = u16::from_le_bytes([c[0], c[1]]) as u64;
        regs[k] = if k < 8 {
            DATA + (v & 0xfff)
        } else if k == 8 {
            CODE + (v & 0x3fff)
        } else if k == 9 {
            (1 << SPACE_BITS) - 1 - (v & 0xfff)
        } else if v >> 12 == 0xf {
            // Division's corner values: zero, -1, MIN (64 and 32 bit).
            [
                0,
                u64::MAX,
                1 << 63,
                1 << 31,
                0xffff_ffff,
                i32::MIN as i64 as u64,
            ][v as usize % 6]
        } else {
            v.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
    }
    let mut words: Vec<u32> = rest
        .chunks_exact(4)
        .take(0x3f00 / 4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) | 3)
        .collect();
    let n = words.len();
    let orig = words.clone();
    for (k, w) in words.iter_mut().enumerate() {
        let i = decode(*w);
        let forward =
            i.imm > 0 && i.imm % 4 == 0 && (k as i64 + (i.imm as i64) / 4) <= n as i64 + 8;
        let ok = match i.kind {
            Kind::Jal | Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu => {
                forward
            }
            Kind::Jalr => false,
            _ => true,
        };
        if !ok {
            *w = NOP;
        }
    }
    // (Up to 1000 words: the back edge is a branch, +-4 KiB.)
    let looping = n > 0 && n <= 1000 && regs[31] & 1 == 1;
    if looping {
        // A loop back to the start, counted down by x31 on every pass
        // through it: exercises the JIT's loops (registers kept in host
        // registers across the back edge).
        // Nothing else may write x31 (an increment would never end).
        for w in words.iter_mut() {
            if decode(*w).rd == 31 {
                *w = NOP;
            }
        }
        // Backward conditional branches the filter above turned into
        // NOPs come back as `blt x0, x31, back` (as the input had them,
        // by their offset) to a target that counts x31 down: every taken
        // back edge (all `x31 > 0`) reaches a decrement before the next,
        // so the loops inside the JIT's extended blocks end.
        for k in 1..n {
            let i = decode(orig[k]);
            let is_branch = matches!(
                i.kind,
                Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu
            );
            if is_branch && i.imm < 0 && i.imm % 4 == 0 && (-i.imm / 4) as usize <= k {
                let t = k - (-i.imm / 4) as usize;
                words[t] = ADDI_X31_M1;
                words[k] = blt_x0_x31(i.imm);
            }
        }
        words[0] = ADDI_X31_M1;
        // blt x0, x31, start
        words.push(blt_x0_x31(-4 * n as i32));
        regs[31] = (regs[31] >> 1) % 4;
    }
    narrow_patterns(&mut words[..n], &orig);
    fusion_pairs(&mut words[..n], &orig);
    call_patterns(&mut words, &orig, n);
    if looping {
        stride_patterns(&mut words[..n], &orig);
    }
    words.extend(std::iter::repeat_n(ECALL, 16));
    let data: Vec<u8> = (0..0x1000u32)
        .map(|k| (k.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let code_writable = regs[30] & 1 == 1;
    let (a, ea, ma) = run(&words, &regs, &data, code_writable, true);
    let (b, eb, mb) = run(&words, &regs, &data, code_writable, false);
    assert_eq!(ea, eb, "exit");
    assert_eq!(a.pc, b.pc, "pc");
    assert_eq!(a.instret(), b.instret(), "instret");
    for r in 0..32 {
        assert_eq!(a.x(r), b.x(r), "x{r}");
    }
    assert_eq!(a.f, b.f, "f");
    assert_eq!(a.fcsr(), b.fcsr(), "fcsr");
    assert!(ma == mb, "data page");
});
