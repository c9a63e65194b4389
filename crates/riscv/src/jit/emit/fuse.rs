//! Instruction pairs the translator emits as one: the block's decoded
//! instructions are rewritten (for the translator only; the interpreter,
//! which runs every slow path, decodes the guest's own code) so that the
//! first of a pair computes the pair's result in its destination and the
//! second becomes a write to the zero sink, which emits nothing but still
//! retires (exits count instructions by index, so counts stay exact).
//!
//! A pair is fused only when both write the same register, the second
//! reads only it, and nothing can leave the block between the two: the
//! second is not a merge point (a jump inside the block may not land
//! between them) and neither can exit or trap. So every path that sees
//! the pair's first half also runs the second, and the intermediate value
//! is never observable.
//!
//! - `lui rd, hi; addi[w] rd, rd, lo` and `auipc rd, hi; addi rd, rd, lo`:
//!   one constant.
//! - `slli rd, rs, n; srli rd, rd, n` (n = 32, 48, 56): zero extension
//!   (`zext.w`, `zext.h`, `andi 0xff`); with `srai`, sign extension
//!   (`sext.w`, `sext.h`, `sext.b`).
//! - `slli rd, rs, n; add rd, rd, rs2` (n = 1, 2, 3; either operand
//!   order): an array index scaled and added to its base, Zba's
//!   `shNadd`, one `lea` on the host (a cycle less on the chain of a
//!   table walk: gzip's hash chains, crc32's table). Likewise the zero
//!   extension above followed by such an `add` (n = 0): `add.uw`.
//!
//! - `slli rd, rs, 32; srli rd, rd, 32 - n` (n = 1, 2, 3): a u32 index
//!   scaled (Zba's `slli.uw`), and with an `add` after it `shNadd.uw`
//!   (one `mov` and one `lea`).
//! - `lui rd, hi; add rd, rd, rs2` and `li rd, c; add rd, rd, rs2`: a
//!   constant added to another register, an `addi` with a 32-bit
//!   immediate (one `lea`).
//!
//! In every `add` form the other operand is not `rd` (its value is then
//! the same before and after the first half) nor x0. A fused result may
//! pair again with the instruction after the pair (`lui; addi; add`).
//!
//! One pair keeps its first half: `slli t, s, 32; srli d, t, 32 - n`
//! (n = 0..=3) with `d` not `t` (`t` may be read later) and `t` not `s`: the second
//! becomes `slli.uw d, s, n`, which reads `s` (unchanged by the first)
//! instead of `t`, off the first one's chain, and may pair on with an
//! `add`.

use crate::decode::{Insn, Kind, ZERO_SINK};

/// Rewrites the fusible pairs of `insns` (see the module's comment).
/// `merge[k]`: instruction `k` is also reached by a jump inside the block.
pub(super) fn pairs(insns: &mut [Insn], merge: &[bool]) {
    let is_merge = |k: usize| merge.get(k).copied().unwrap_or(true);
    let mut k = 0;
    while k + 1 < insns.len() {
        // A fused result may pair again with the next instruction (a
        // constant, then an add of it: `lui; addi; add`; a zero
        // extension, then an add: `add.uw`), the second half of each
        // pair sunk in between.
        let mut j = k + 1;
        let mut fused = false;
        while j < insns.len() && !is_merge(j) {
            match fuse(insns[k], insns[j]) {
                Some(Fused::Both(f)) => {
                    insns[k] = f;
                    insns[j] = sink(insns[j]);
                    fused = true;
                    j += 1;
                }
                Some(Fused::Second(g)) => {
                    // The first stays; the second, which reads it
                    // no longer, may pair on.
                    insns[j] = g;
                    k = j;
                    j += 1;
                    fused = false;
                }
                None => break,
            }
        }
        k = if fused { j } else { k + 1 };
    }
}

/// What [`fuse`] makes of a pair.
enum Fused {
    /// One instruction that does both (the second is sunk).
    Both(Insn),
    /// The second instruction rewritten to read the first one's source
    /// instead of its result (the first still runs: its destination may
    /// be read later), off the first one's dependency chain.
    Second(Insn),
}

/// The pair `i; j` (adjacent, `j` no merge point) as one instruction,
/// or `j` rewritten (see [`Fused`]), or `None`.
fn fuse(i: Insn, j: Insn) -> Option<Fused> {
    use Kind::*;
    let j = add_with_rd_first(i, j);
    let n = j.imm & 63;
    if i.kind == Slli
        && i.imm & 63 == 32
        && j.kind == Srli
        && j.rs1 == i.rd
        && j.rd != i.rd
        && i.rd != 0
        && i.rd != ZERO_SINK
        && i.rs1 != i.rd
        && j.rd != 0
        && j.rd != ZERO_SINK
        && (29..=32).contains(&n)
    {
        // `slli t, s, 32; srli d, t, n` (a u32 index scaled for an
        // array of u16, u32, u64): d = zext(s) << (32 - n), from `s`
        // (which the first does not write).
        return Some(Fused::Second(Insn {
            kind: SlliUw,
            rs1: i.rs1,
            rs2: 0,
            imm: 32 - n,
            ..j
        }));
    }
    let same = i.rd != ZERO_SINK && j.rd == i.rd && j.rs1 == i.rd;
    if !same {
        return None;
    }
    let wide = |v: i64| i32::try_from(v).ok();
    // The other operand of an `add` after `i`: not rd (its value is the
    // same before and after `i`) nor x0.
    let other = j.kind == Add && j.rs2 != 0 && j.rs2 != i.rd;
    let f = match (i.kind, j.kind) {
        (Lui, Addi) => wide(i.imm as i64 + j.imm as i64).map(|v| with(i, Lui, v))?,
        (Lui, Addiw) => with(i, Lui, i.imm.wrapping_add(j.imm)),
        (Auipc, Addi) => wide(i.imm as i64 + j.imm as i64).map(|v| with(i, Auipc, v))?,
        // A constant added to another register: `addi` with a 32-bit
        // immediate, one `lea` (`lui a3, 3; add a3, a3, a5`).
        (Lui, Add) if other => Insn {
            kind: Addi,
            rs1: j.rs2,
            rs2: 0,
            ..i
        },
        (Addi, Add) if other && i.rs1 == 0 => Insn {
            kind: Addi,
            rs1: j.rs2,
            rs2: 0,
            ..i
        },
        (Slli, Srli) if i.imm & 63 == n => match n {
            32 => Insn {
                kind: AddUw,
                rs2: 0,
                ..i
            },
            48 => with(i, ZextH, 0),
            56 => with(i, Andi, 0xff),
            _ => return None,
        },
        // zext.w, then a scale by 2, 4 or 8 (`slli 32; srli 31..29`).
        (Slli, Srli) if i.imm & 63 == 32 && (29..=31).contains(&n) => Insn {
            kind: SlliUw,
            rs2: 0,
            imm: 32 - n,
            ..i
        },
        (Slli, Add) if i.rs1 != 0 && other => Insn {
            kind: match i.imm & 63 {
                1 => Sh1add,
                2 => Sh2add,
                3 => Sh3add,
                _ => return None,
            },
            rs2: j.rs2,
            ..i
        },
        // A zero extension (scaled), then an add of it to another
        // register: add.uw, shNadd.uw.
        (AddUw, Add) if i.rs2 == 0 && i.rs1 != 0 && other => Insn { rs2: j.rs2, ..i },
        (SlliUw, Add) if i.rs1 != 0 && other => Insn {
            kind: match i.imm & 63 {
                1 => Sh1addUw,
                2 => Sh2addUw,
                3 => Sh3addUw,
                _ => return None,
            },
            rs2: j.rs2,
            imm: 0,
            ..i
        },
        (Slli, Srai) if i.imm & 63 == n => match n {
            32 => with(i, Addiw, 0),
            48 => with(i, SextH, 0),
            56 => with(i, SextB, 0),
            _ => return None,
        },
        _ => return None,
    };
    Some(Fused::Both(f))
}

/// `j` with its operands swapped when it is an `add` that reads `i`'s
/// destination as its second operand only (so that the pair's shapes
/// need only one operand order).
fn add_with_rd_first(i: Insn, j: Insn) -> Insn {
    if j.kind == Kind::Add && j.rs2 == i.rd && j.rs1 != i.rd {
        Insn {
            rs1: j.rs2,
            rs2: j.rs1,
            ..j
        }
    } else {
        j
    }
}

/// A fused pair's second half: `addi zero, x0, 0`, which emits nothing
/// but retires where `j` did.
fn sink(j: Insn) -> Insn {
    Insn {
        kind: Kind::Addi,
        rd: ZERO_SINK,
        rs1: 0,
        rs2: 0,
        imm: 0,
        ..j
    }
}

/// `i` turned into `kind` with immediate `imm` (same registers, pc and
/// size).
fn with(i: Insn, kind: Kind, imm: i32) -> Insn {
    Insn { kind, imm, ..i }
}
