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

use crate::decode::{Insn, Kind, ZERO_SINK};

/// Rewrites the fusible pairs of `insns` (see the module's comment).
/// `merge[k]`: instruction `k` is also reached by a jump inside the block.
pub(super) fn pairs(insns: &mut [Insn], merge: &[bool]) {
    use Kind::*;
    let mut k = 0;
    while k + 1 < insns.len() {
        let (i, j) = (insns[k], insns[k + 1]);
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
                // The second half: `addi zero, x0, 0`, which emits nothing.
                insns[k + 1] = Insn {
                    kind: Addi,
                    rd: ZERO_SINK,
                    rs1: 0,
                    rs2: 0,
                    imm: 0,
                    ..j
                };
                k += 2;
            }
            None => k += 1,
        }
    }
}

/// `i` turned into `kind` with immediate `imm` (same registers, pc and
/// size).
fn with(i: Insn, kind: Kind, imm: i32) -> Insn {
    Insn { kind, imm, ..i }
}
