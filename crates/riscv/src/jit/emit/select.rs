//! Branches over one instruction as conditional moves (if-conversion):
//! `b<cc> rs1, rs2, L; op rd, ...; L:` (the op possibly a fused pair,
//! see `fuse`) computes the op into rd's register, then the comparison,
//! then puts rd's old value back when the branch is taken. The host then
//! has no branch to mispredict: compiled `if (c) x = y;` statements on
//! data-dependent conditions (a CRC's feedback bit, a minimum, a
//! saturation) cost a misprediction every other time as branches.
//!
//! Exact: the op is one that neither traps nor leaves (integer
//! arithmetic done inline), nothing can jump between the branch and `L`
//! but the branch itself, rd is neither operand of the comparison (the
//! op runs before it), and the retired count is lowered by the skipped
//! instructions when the branch is taken (a conditional move too), so
//! both paths leave the registers and the count as the branch would.
//! Every register involved is already in its host register, so nothing
//! is loaded or evicted (written back) on the way.

use super::{sext_result, Frame, CACHE_REGS};
use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::jit::x86::*;

/// Arithmetic the translator emits inline, without exits or helper
/// calls, into its destination's cache slot.
fn plain(i: &Insn) -> bool {
    use Kind::*;
    (i.kind == AddUw && i.rs1 != 0)
        || matches!(
            i.kind,
            Lui | Addi
                | Xori
                | Ori
                | Andi
                | Addiw
                | Slti
                | Sltiu
                | Slt
                | Sltu
                | Slli
                | Srli
                | Srai
                | Slliw
                | Srliw
                | Sraiw
                | Add
                | Sub
                | Xor
                | Or
                | And
                | Addw
                | Subw
                | ZextH
                | SextH
                | SextB
        )
}

/// Whether `i` reads its `rs2` field as a register.
fn reads_rs2(i: &Insn) -> bool {
    use Kind::*;
    matches!(
        i.kind,
        Slt | Sltu | Add | Sub | Xor | Or | And | Addw | Subw | AddUw
    )
}

/// The instructions a conditional branch at index `k` of `insns` skips
/// when it can become a conditional move (see the module's comment):
/// 1, or 2 for a fused pair (whose second half emits nothing).
/// `merge[m]`: instruction `m` is reached by a jump inside the block.
pub(super) fn skips(insns: &[Insn], merge: &[bool], k: usize) -> Option<usize> {
    use Kind::*;
    let b = insns.get(k)?;
    if !matches!(b.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu) {
        return None;
    }
    let op = insns.get(k + 1)?;
    let n = match insns.get(k + 2) {
        Some(z) if z.rd == ZERO_SINK && z.kind == Addi && z.rs1 == 0 => 2,
        _ => 1,
    };
    let target = (b.off as i64).wrapping_add(b.imm as i64);
    let after = insns.get(k + 1 + n)?;
    let ok = target == after.off as i64
        && plain(op)
        && op.rd != 0
        && op.rd < 32
        && op.rd != b.rs1
        && op.rd != b.rs2
        && !merge[k + 1..k + 1 + n].iter().any(|&m| m);
    ok.then_some(n)
}

/// Emits the branch at index `k` and the `n` instructions it skips (from
/// [`skips`]) as a conditional move, when every register involved is in
/// its host register, or always when `force` (the instruction after the
/// skipped ones is then no merge point, see `force_selects`: a branch
/// could not jump there), loading them first; `false` (nothing emitted)
/// otherwise. `op_emit` emits the skipped op the usual way.
pub(super) fn emit(
    a: &mut Asm,
    f: &mut Frame,
    insns: &[Insn],
    k: usize,
    n: usize,
    force: bool,
    op_emit: impl FnOnce(&mut Asm, &mut Frame),
) -> bool {
    let (b, op) = (&insns[k], &insns[k + 1]);
    let mut regs = [b.rs1, b.rs2, op.rs1, op.rd, 0];
    if reads_rs2(op) {
        regs[4] = op.rs2;
    }
    let missing = |a: &Asm| regs.iter().any(|&r| r != 0 && !a.cache.guest.contains(&r));
    if missing(a) {
        if !force {
            return false;
        }
        // Loading one never evicts another: all are named by the
        // instructions at `k` and `k + 1`, which the cache evicts last
        // (`RegCache::slot`), and they are at most 5 of its 7 slots.
        for r in regs.into_iter().filter(|&r| r != 0) {
            a.x_reg32(r);
        }
        debug_assert!(!missing(a), "a forced select has its registers cached");
    }
    let cc = match b.kind {
        Kind::Beq => CC_E,
        Kind::Bne => CC_NE,
        Kind::Blt => CC_L,
        Kind::Bge => CC_GE,
        Kind::Bltu => CC_B,
        _ => CC_AE,
    };
    let sx_old = a.cache.sx & 1 << op.rd != 0;
    // rd's old value in rdx (whole: extended if it was not), then the
    // op into rd's register, extended too (the move may put back a value
    // not known sign-extended, see `RegCache::lazy`).
    let old = a.x_reg(op.rd);
    a.mov_rr(RDX, old);
    a.cache.pos = k + 1;
    op_emit(a, f);
    a.cache.pos = k;
    let s = CACHE_REGS
        .iter()
        .position(|&c| c == old)
        .expect("rd stays in its register");
    debug_assert_eq!(a.cache.guest[s], op.rd);
    a.norm(s);
    // The comparison, as a branch makes it (`rvi`).
    let both_sx = a.cache.sx & (1 << b.rs1 | 1 << b.rs2) == 1 << b.rs1 | 1 << b.rs2;
    let s1 = if b.rs1 == 0 {
        a.op_rr(false, &[0x31], RAX, RAX);
        RAX
    } else if both_sx {
        a.x_reg32(b.rs1)
    } else {
        a.x_reg(b.rs1)
    };
    a.alu_x(!both_sx, CMP, s1, b.rs2);
    // Taken: rd as it was, and the skipped instructions not retired
    // (exits count retired instructions by index).
    a.op_m(true, &[0x8d], RAX, RBP, -(n as i32)); // lea rax, [rbp - n]
    a.op_rr(true, &[0x0f, 0x40 + cc], old, RDX); // cmovcc rd, rdx
    a.op_rr(true, &[0x0f, 0x40 + cc], RBP, RAX); // cmovcc rbp, rax
                                                 // Known sign-extended after only if so on both paths.
    if !(sx_old && sext_result(op)) {
        a.cache.sx &= !(1 << op.rd);
    } else {
        a.cache.sx |= 1 << op.rd;
    }
    true
}
