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
//! In both `add` forms the other operand is not `rd` (its value is then
//! the same before and after the first half) nor x0.

use crate::decode::{Insn, Kind, ZERO_SINK};

/// Rewrites the fusible pairs of `insns` (see the module's comment).
/// `merge[k]`: instruction `k` is also reached by a jump inside the block.
pub(super) fn pairs(insns: &mut [Insn], merge: &[bool]) {
    use Kind::*;
    let mut k = 0;
    while k + 1 < insns.len() {
        let (i, j) = (insns[k], add_with_rd_first(insns[k], insns[k + 1]));
        let same = i.rd != ZERO_SINK && j.rd == i.rd && j.rs1 == i.rd;
        if !same || merge.get(k + 1).copied().unwrap_or(true) {
            k += 1;
            continue;
        }
        let wide = |v: i64| i32::try_from(v).ok();
        let n = j.imm & 63;
        let fused = match (i.kind, j.kind) {
            (Lui, Addi) => wide(i.imm as i64 + j.imm as i64).map(|v| with(i, Lui, v)),
            (Lui, Addiw) => Some(with(i, Lui, i.imm.wrapping_add(j.imm))),
            (Auipc, Addi) => wide(i.imm as i64 + j.imm as i64).map(|v| with(i, Auipc, v)),
            (Slli, Srli) if i.imm & 63 == n => match n {
                32 => Some(Insn {
                    kind: AddUw,
                    rs2: 0,
                    ..i
                }),
                48 => Some(with(i, ZextH, 0)),
                56 => Some(with(i, Andi, 0xff)),
                _ => None,
            },
            (Slli, Add) if i.rs1 != 0 && j.rs2 != 0 && j.rs2 != i.rd => match i.imm & 63 {
                1 => Some(Insn {
                    kind: Sh1add,
                    rs2: j.rs2,
                    ..i
                }),
                2 => Some(Insn {
                    kind: Sh2add,
                    rs2: j.rs2,
                    ..i
                }),
                3 => Some(Insn {
                    kind: Sh3add,
                    rs2: j.rs2,
                    ..i
                }),
                _ => None,
            },
            (Slli, Srai) if i.imm & 63 == n => match n {
                32 => Some(with(i, Addiw, 0)),
                48 => Some(with(i, SextH, 0)),
                56 => Some(with(i, SextB, 0)),
                _ => None,
            },
            _ => None,
        };
        match fused {
            Some(f) => {
                insns[k] = f;
                insns[k + 1] = sink(j);
                // zext.w, then an add of it to another register: add.uw
                // (the add right after the pair, not a merge point).
                if let Some(&next) = insns.get(k + 2) {
                    let add = add_with_rd_first(f, next);
                    if f.kind == AddUw
                        && f.rs2 == 0
                        && f.rs1 != 0
                        && add.kind == Add
                        && add.rd == f.rd
                        && add.rs1 == f.rd
                        && add.rs2 != 0
                        && add.rs2 != f.rd
                        && !merge.get(k + 2).copied().unwrap_or(true)
                    {
                        insns[k].rs2 = add.rs2;
                        insns[k + 2] = sink(next);
                        k += 1;
                    }
                }
                k += 2;
            }
            None => k += 1,
        }
    }
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
