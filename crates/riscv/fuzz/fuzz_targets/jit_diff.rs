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
//! `narrow_patterns`), table lookups (see `indexed_patterns`), and
//! loops step a base register (see `stride_patterns`). FP registers
//! start with special operands (see
//! `FP_VALUES`) and frm with any mode, and some words become F/D
//! instructions on them (see `fp_patterns`): the JIT runs those inline
//! with host SSE where it can prove the result the interpreter's. And
//! some become valid AMOs, LRs and SCs (see `amo_patterns`), which it
//! runs with host atomics. One input in four is translated from each
//! block's second run on, after the interpreter ran the first.
#![no_main]

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use riscv::decode::{decode, Kind};
use riscv::{perm, Exit, Hart, HartControl, UserSpace};

const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;
const NOP: u32 = 0x13;
const ECALL: u32 = 0x73;
/// addi x31, x31, -1
const ADDI_X31_M1: u32 = 0xffff_8f93;

/// Log2 of the space's size.
const SPACE_BITS: u32 = 24;

/// How long the interpreter's run may take before the watchdog stops it.
const RUN_LIMIT: Duration = Duration::from_secs(2);
/// How long the translated run may take once the interpreter's ended (it
/// can be slower: code rewriting itself is translated again each time).
const JIT_RUN_LIMIT: Duration = Duration::from_secs(6);

/// A thread that stops a run taking longer than [`RUN_LIMIT`]: a program
/// whose stores or AMOs rewrite its own loop counter (x8 points into
/// writable code) can loop forever, in the interpreter as translated.
/// `Some((control, limit))` starts watching a run, `None` ends it.
type Watch = Option<(Arc<HartControl>, Duration)>;

fn watchdog() -> &'static Mutex<Sender<Watch>> {
    static DOG: OnceLock<Mutex<Sender<Watch>>> = OnceLock::new();
    DOG.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || watch(rx));
        Mutex::new(tx)
    })
}

fn watch(rx: Receiver<Watch>) {
    while let Ok(msg) = rx.recv() {
        let Some((control, limit)) = msg else {
            continue;
        };
        match rx.recv_timeout(limit) {
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                control.request_stop();
                // The run's end.
                if rx.recv().is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    words: &[u32],
    regs: &[u64],
    fp: &([u64; 32], u64),
    data: &[u8],
    code_writable: bool,
    jit: bool,
    threshold: u32,
    limit: Duration,
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
    hart.set_jit_threshold(threshold);
    for (r, &v) in regs.iter().enumerate().skip(1) {
        hart.set_x(r, v);
    }
    hart.f = fp.0;
    hart.set_fcsr(fp.1);
    hart.pc = CODE;
    let dog = watchdog();
    let dog = dog.lock().expect("watchdog");
    dog.send(Some((hart.control().clone(), limit)))
        .expect("watchdog");
    let exit = hart.run_user(&space);
    dog.send(None).expect("watchdog");
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
/// predicted), or with the call made by `auipc` + `jalr`. Each pattern
/// ends past its last word; patterns never overwrite the loop counter's
/// words, and jumps into a pattern's middle
/// (where a return through a stale link could go backwards forever)
/// become NOPs.
fn call_patterns(words: &mut [u32], orig: &[u32], n: usize) {
    let mut inside = vec![false; n];
    let mut k = 0;
    while k < n {
        let i = decode(orig[k]);
        let link = if i.rd & 1 == 0 { 1 } else { 5 };
        let long = orig[k] >> 31 == 1;
        // The call as unrelaxed code writes it: `auipc` + `jalr` (the
        // JIT takes the target as known, see `emit::static_jalrs`).
        let auipc = !long && orig[k] >> 30 & 1 == 1;
        let len = if long {
            5
        } else if auipc {
            4
        } else {
            3
        };
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
        } else if auipc {
            &[
                (link << 7) | 0x17, // auipc link, 0
                (12 << 20) | jalr(link, link),
                jal(0, 8),
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
/// `srli`/`srai` by the same amount, `slli 32` + `srli` by 29..=32,
/// `lui`/`li` + `add`, `slli` + `add`, zero extension +
/// `add`, all on one register but the `srli` after `slli 32`, which may
/// write another), which random words rarely make: where the input has
/// a `lui`, `auipc`, `addi`, `slli` or `srli`, the next word
/// becomes its partner when that word's low opcode bit pattern says so
/// (about half the time), with its own immediate or second register.
/// The loop counter's words are left alone.
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
            // add rd, rd, rs2 or (bit 10) add rd, rs2, rd: a scaled
            // index added to its base (shNadd), or after a zero
            // extension (add.uw, shNadd.uw), or a constant added to a
            // register (lui or li, then add: addi).
            Kind::Slli | Kind::Srli | Kind::Lui | Kind::Addi if orig[k + 1] & 0x200 != 0 => {
                let rs2 = orig[k + 1] >> 20 & 31;
                let (a, b) = if orig[k + 1] & 0x400 != 0 {
                    (rs2, rd)
                } else {
                    (rd, rs2)
                };
                b << 20 | a << 15 | rd << 7 | 0x33
            }
            Kind::Lui | Kind::Auipc if orig[k + 1] & 0x100 == 0 => addi(rd, rd, imm),
            // addiw
            Kind::Lui | Kind::Auipc => addi(rd, rd, imm) ^ 0x13 ^ 0x1b,
            // After `slli 32`: srli by 29..=32 (slli.uw), into rd or
            // (bit 11) the next register, the slli's result kept.
            Kind::Slli if i.imm & 63 == 32 && orig[k + 1] & 0x1000 != 0 => {
                let n = 32 - (orig[k + 1] >> 9 & 3);
                let d = if orig[k + 1] & 0x800 != 0 {
                    (rd + 1) % 31
                } else {
                    rd
                };
                n << 20 | rd << 15 | 5 << 12 | d << 7 | 0x13
            }
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

/// Table lookups the JIT emits as one indexed load (see the JIT's
/// `indexed`): where the input's word has bits 27 and 28 set, it and
/// the next word become `add` or `shNadd` (Zba) rd, index, base and a
/// load of any width into rd through rd. The base is one of x1..x9
/// (into the data page, the code, near the space's end), the index
/// one of x1..x7 or x10..x17 (small, or anything: the bound check's
/// slow exit, host faults in the guard). The loop counter's words are
/// left alone.
fn indexed_patterns(words: &mut [u32], orig: &[u32]) {
    let keep = |w: u32| {
        let i = decode(w);
        w == ADDI_X31_M1 || (i.kind == Kind::Blt && i.rs2 == 31)
    };
    let mut k = 0;
    while k + 1 < words.len() {
        let w = orig[k];
        if w >> 27 & 3 != 3 || keep(words[k]) || keep(words[k + 1]) {
            k += 1;
            continue;
        }
        let rd = 10 + (w >> 7 & 31) % 21;
        let rs2 = 1 + (w >> 20 & 15) % 9;
        let rs1 = if w >> 29 & 1 == 0 {
            1 + (w >> 15 & 7) % 7
        } else {
            10 + (w >> 15 & 7)
        };
        let n = w >> 12 & 3;
        // add, or sh1add/sh2add/sh3add
        let f7 = if n == 0 { 0 } else { 0x10 };
        words[k] = f7 << 25 | rs2 << 20 | rs1 << 15 | (2 * n) << 12 | rd << 7 | 0x33;
        let f3 = (w >> 24 & 7) % 7; // lb lh lw ld lbu lhu lwu
        let imm = (w >> 2 & 31) as i32 - 16;
        words[k + 1] = (imm as u32 & 0xfff) << 20 | rd << 15 | f3 << 12 | rd << 7 | 0x03;
        k += 2;
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

/// FP operands worth testing: doubles (signed zeros, ones, infinities,
/// quiet NaNs canonical, with a payload and negative, signalling NaNs,
/// subnormals, the normal range's edges, ties, the integer conversions'
/// range edges), then the same for singles (NaN-boxed when used).
const FP_VALUES: [u64; 32] = [
    0,
    1 << 63,
    0x3ff0_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0x7ff8_0000_0000_0123,
    0xfff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    1,
    0x000f_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x7fef_ffff_ffff_ffff,
    0x3fd5_5555_5555_5555,
    0xc004_0000_0000_0000,
    0x41e0_0000_0000_0000,
    0xc3e0_0000_0000_0000,
    0x43f0_0000_0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0x7f80_0000,
    0x7fc0_0000,
    0x7fc0_0123,
    0x7f80_0001,
    1,
    0x0080_0000,
    0x7f7f_ffff,
    0x3eaa_aaab,
    0xc020_0000,
    0x4f00_0000,
    0x5f00_0000,
    0x4b80_0001,
];

/// The FP registers and fcsr, from the input's head: each register a
/// special value (a single NaN-boxed, unless the input says otherwise:
/// an improperly boxed one reads as the canonical NaN) or random bits;
/// fcsr any rounding mode (illegal ones too) and flags.
fn fp_state(head: &[u8]) -> ([u64; 32], u64) {
    let f = std::array::from_fn(|k| {
        let v = head[k] as usize;
        let x = FP_VALUES[v % 32];
        match v >> 5 {
            0..=3 if v % 32 >= 18 => 0xffff_ffff_0000_0000 | x,
            4 => x,
            5 | 6 => x ^ (head[(k + 7) % 64] as u64) << 20,
            _ => (head[(k + 1) % 64] as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ x,
        }
    });
    let fcsr = (head[32] as u64) & if head[33] & 3 == 0 { 0xff } else { 0x1f };
    (f, fcsr)
}

/// F and D instructions on the special operands, more of them than
/// random words make: where bits 2..6 of the input's word are 0b10101
/// (1 in 32), it becomes an OP-FP or fused multiply-add instruction of a
/// kind the JIT runs inline (or fclass) chosen by its upper bits, with
/// the rounding mode field as the input has it (static, dynamic or
/// illegal). The loop counter's words are left alone, and none of these
/// writes x31.
fn fp_patterns(words: &mut [u32], orig: &[u32]) {
    for k in 0..words.len() {
        let w = orig[k];
        let i = decode(words[k]);
        if words[k] == ADDI_X31_M1 || (i.kind == Kind::Blt && i.rs2 == 31) || w >> 2 & 31 != 0x15 {
            continue;
        }
        // Registers: f/x 0..31 from the word; funct5 from a list of the
        // operations the JIT runs inline (and fclass).
        const F5: [u32; 14] = [
            0, 1, 2, 3, 0x0b, 4, 5, 0x14, 0x18, 0x1a, 0x1c, 0x1e, 0x08, 0x10,
        ];
        let f5 = F5[(w >> 27) as usize % F5.len()];
        let fmt = w >> 25 & 1;
        let mut rs2 = w >> 20 & 31;
        let rm = w >> 12 & 7;
        let mut funct7 = f5 << 2 | fmt;
        let op = match f5 {
            0x08 => {
                // fcvt.s.d / fcvt.d.s
                funct7 = 0x20 | fmt;
                rs2 = 1 - fmt;
                0x53
            }
            0x10 => {
                // fused multiply-add family, rs3 from bits 7..11 mixed
                funct7 = (w >> 7 & 31) << 2 | fmt;
                [0x43, 0x47, 0x4b, 0x4f][(w >> 8) as usize % 4]
            }
            0x0b => {
                rs2 = 0;
                0x53
            }
            0x18 | 0x1a => {
                rs2 &= 3;
                0x53
            }
            0x1c | 0x1e => {
                rs2 = 0;
                0x53
            }
            _ => 0x53,
        };
        let rm = match f5 {
            4 | 0x14 => rm % 3,
            5 => rm % 2,
            0x1c => rm % 2,
            0x1e => 0,
            _ => rm,
        };
        let rd = (w >> 7 & 31).min(30);
        words[k] = funct7 << 25 | rs2 << 20 | (w >> 15 & 31) << 15 | rm << 12 | rd << 7 | op;
    }
}

/// Valid A instructions, which random words rarely make (funct5 and
/// funct3 must both fit): where bits 2..6 of the input's word are
/// 0b01011 (the AMO opcode's), it becomes an AMO, LR or SC (word or
/// double) through x1..x9 (DATA at any alignment, the code, the space's
/// end), and an LR is followed by an SC on the same register when the
/// input says so. None writes x31; the loop counter's words stay.
fn amo_patterns(words: &mut [u32], orig: &[u32]) {
    const F5: [u32; 11] = [2, 3, 1, 0, 4, 0xc, 8, 0x10, 0x14, 0x18, 0x1c];
    let keep = |w: u32| {
        let i = decode(w);
        w == ADDI_X31_M1 || (i.kind == Kind::Blt && i.rs2 == 31)
    };
    for k in 0..words.len() {
        let w = orig[k];
        if keep(words[k]) || w >> 2 & 31 != 0x0b {
            continue;
        }
        let f5 = F5[(w >> 27) as usize % F5.len()];
        let f3 = 2 | (w >> 12 & 1);
        let rs1 = 1 + (w >> 15 & 7) % 9;
        let rd = (w >> 7 & 31).min(30);
        let rs2 = if f5 == 2 { 0 } else { w >> 20 & 31 };
        words[k] =
            f5 << 27 | (w >> 25 & 3) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x2f;
        if f5 == 2 && w >> 24 & 1 == 1 && k + 1 < words.len() && !keep(words[k + 1]) {
            let rs2 = w >> 20 & 31;
            words[k + 1] =
                3 << 27 | rs2 << 20 | rs1 << 15 | f3 << 12 | (rd ^ 1).min(30) << 7 | 0x2f;
        }
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
    fp_patterns(&mut words[..n], &orig);
    amo_patterns(&mut words[..n], &orig);
    narrow_patterns(&mut words[..n], &orig);
    fusion_pairs(&mut words[..n], &orig);
    indexed_patterns(&mut words[..n], &orig);
    call_patterns(&mut words, &orig, n);
    if looping {
        stride_patterns(&mut words[..n], &orig);
    }
    words.extend(std::iter::repeat_n(ECALL, 16));
    let data: Vec<u8> = (0..0x1000u32)
        .map(|k| (k.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let code_writable = regs[30] & 1 == 1;
    let fp = fp_state(head);
    // One input in four translates blocks from their second run on (a
    // loop's first pass interpreted, the rest translated).
    let threshold = if regs[30] >> 1 & 3 == 0 { 2 } else { 1 };
    // The interpreter first: a program it does not end in time is
    // skipped (see `watchdog`), one it ends the translated run must end.
    let (b, eb, mb) = run(
        &words,
        &regs,
        &fp,
        &data,
        code_writable,
        false,
        1,
        RUN_LIMIT,
    );
    if eb == Exit::Stopped {
        // A program that rewrote its loop counter and never ended (see
        // `watchdog`): nothing to compare.
        return;
    }
    let (a, ea, ma) = run(
        &words,
        &regs,
        &fp,
        &data,
        code_writable,
        true,
        threshold,
        JIT_RUN_LIMIT,
    );
    // The interpreter ended it: translated code that did not is a JIT bug
    // (an endless loop of its own), not an endless program.
    assert_ne!(
        ea,
        Exit::Stopped,
        "translated run stopped by the watchdog, the interpreter's ended: {eb:?}"
    );
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
