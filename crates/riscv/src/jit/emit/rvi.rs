//! RV64I without its loads and stores (see `mem`): upper immediates,
//! jumps and branches (chained or dispatched exits), register and
//! immediate arithmetic, `fence`.

use std::mem::offset_of;

use super::{ctx_off, Frame};
use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::jit::x86::*;
use crate::jit::Ctx;

/// Whether `r` is a link register (x1 or x5): by the ISA's hints a
/// `jal`/`jalr` writing one is a call, a `jalr x0` through one a return.
fn is_link(r: u8) -> bool {
    r == 1 || r == 5
}

/// Guest `rd` = guest `rs` (x0 reads as 0).
fn mv(a: &mut Asm, rd: u8, rs: u8) {
    if rs == 0 {
        a.ld_x(RAX, 0);
        a.st_x(rd, RAX);
    } else {
        let s = a.x_reg(rs);
        let d = a.rd_host(rd);
        if d != s {
            a.mov_rr(d, s);
        }
        a.rd_commit(rd, d);
    }
}

/// Emits `i`, the `k`th instruction of the block, at guest pc `ipc`
/// (`next`: the pc after it).
#[allow(clippy::too_many_arguments)]
pub(super) fn emit(a: &mut Asm, f: &mut Frame, k: usize, i: &Insn, ipc: u64, next: u64) {
    let imm = i.imm;
    let rd = i.rd;
    // rd = op(rs1, ...): `$op` computes in `d`, which holds rs1 first,
    // then the result (sign-extended from 32 bits for W forms) goes to
    // rd. `d` is rd's cache slot, so the result needs no copy, unless
    // the op still reads rs2 after `d` is written and rs2 is rd (or rs1
    // is x0, rare): then rax, as before the cache.
    macro_rules! into_rd {
        ($w:expr, $reads_rs2:expr, |$d:ident| $op:expr) => {{
            let direct = i.rs1 != 0 && !($reads_rs2 && rd == i.rs2 && i.rs1 != i.rs2);
            if direct {
                // W forms read and compute only low halves, and leave
                // the result unextended (see `RegCache::lazy`). An
                // operand better read in place (see `RegCache::in_place`)
                // stays out of the cache: rs1 is loaded into rd's
                // register, rs2 is a memory operand.
                let mem1 = a.cache.in_place(i.rs1);
                let s1 = if mem1 {
                    RAX
                } else if $w {
                    a.x_reg(i.rs1)
                } else {
                    a.x_reg32(i.rs1)
                };
                if $reads_rs2 && i.rs2 != 0 && !a.cache.in_place(i.rs2) {
                    // In its register before rd's slot is chosen, so the
                    // slot cannot evict it.
                    if $w {
                        a.x_reg(i.rs2);
                    } else {
                        a.x_reg32(i.rs2);
                    }
                }
                let $d = a.rd_host(rd);
                if mem1 {
                    a.load($d, RBX, super::xd(i.rs1));
                } else if $d != s1 {
                    a.mov_rr($d, s1);
                }
                $op;
                a.rd_commit_as(rd, $d, !$w);
            } else {
                let $d = RAX;
                a.ld_x(RAX, i.rs1);
                $op;
                if !$w {
                    a.sext32(RAX, RAX);
                }
                a.st_x(rd, RAX);
            }
        }};
    }
    macro_rules! rr {
        ($w:expr, $op:expr) => {
            into_rd!($w, true, |d| a.alu_x($w, $op, d, i.rs2))
        };
    }
    macro_rules! ri {
        ($w:expr, $op:expr) => {
            into_rd!($w, false, |d| a.alu_imm($w, $op, d, imm))
        };
    }
    macro_rules! sh_imm {
        ($w:expr, $sh:expr) => {
            into_rd!($w, false, |d| a.shift_imm(
                $w,
                $sh,
                d,
                (imm as u8) & if $w { 63 } else { 31 }
            ))
        };
    }
    macro_rules! sh_reg {
        ($w:expr, $sh:expr) => {
            into_rd!($w, true, |d| {
                a.ld_x(RCX, i.rs2);
                a.shift_cl($w, $sh, d)
            })
        };
    }
    // Compares rs1 with rs2 (or imm) in place, no copy (x0 through rax).
    // Two registers both known sign-extended from 32 bits (see
    // `RegCache::sx`) compare as their low halves, in every condition
    // (signed or not, sign extension keeps the order), so an unextended
    // one needs no extension first.
    macro_rules! compare {
        ($imm:expr) => {{
            let w = $imm || a.cache.sx & (1 << i.rs1 | 1 << i.rs2) != 1 << i.rs1 | 1 << i.rs2;
            // rs1 better read in place (see `RegCache::in_place`) and
            // rs2 not (or an immediate): `cmp [rs1], rs2`.
            let mem1 = a.cache.in_place(i.rs1) && ($imm || !a.cache.in_place(i.rs2));
            if mem1 {
                let m = super::xd(i.rs1);
                if $imm || i.rs2 == 0 {
                    let v = if $imm { imm } else { 0 };
                    if (-128..=127).contains(&v) {
                        a.op_m(w, &[0x83], CMP.1, RBX, m);
                        a.u8(v as i8 as u8);
                    } else {
                        a.op_m(w, &[0x81], CMP.1, RBX, m);
                        a.u32(v as u32);
                    }
                } else {
                    let s2 = if w { a.x_reg(i.rs2) } else { a.x_reg32(i.rs2) };
                    a.op_m(w, &[CMP.0], s2, RBX, m);
                }
            } else {
                let s1 = if i.rs1 == 0 {
                    a.ld_x(RAX, 0);
                    RAX
                } else if w {
                    a.x_reg(i.rs1)
                } else {
                    a.x_reg32(i.rs1)
                };
                if $imm {
                    a.alu_imm(true, CMP, s1, imm);
                } else {
                    a.alu_x(w, CMP, s1, i.rs2);
                }
            }
        }};
    }
    macro_rules! set {
        ($cc:expr, $imm:expr) => {{
            compare!($imm);
            a.setcc_rax($cc);
            a.st_x(rd, RAX);
        }};
    }
    macro_rules! branch {
        ($cc:expr) => {{
            let target = ipc.wrapping_add(imm as i64 as u64);
            // A target inside the block: a loop's back edge (to the
            // head, which checks for attention) or a forward jump to a
            // merge point. A back edge's count adjustment (see
            // `Frame::jump_internal`) comes before the comparison (`lea`
            // keeps the flags) and is taken back on the fall-through
            // path, so the taken path is a single `jcc` where it can be;
            // a forward jump's is added on the taken path only (see
            // `Frame::branch_fwd`).
            let back = f.back_jump(k, target);
            let fwd = f.internal(target).filter(|&j| j > k && back.is_none());
            let adj = back.unwrap_or(0);
            if back.is_some() {
                f.norm_for_back(a, target);
            }
            a.add_icount(adj);
            let cc = if i.rs1 == 0 && i.rs2 != 0 {
                // x0 against a register: the register against 0, the
                // condition mirrored (no zeroed rax to compare with).
                let w = a.cache.sx & 1 << i.rs2 == 0;
                let s2 = if w { a.x_reg(i.rs2) } else { a.x_reg32(i.rs2) };
                a.alu_imm(w, CMP, s2, 0);
                mirrored($cc)
            } else {
                compare!(false);
                $cc
            };
            if back.is_some() || fwd.is_some() {
                match fwd {
                    Some(j) => {
                        let owed = (k as u32 + 1).wrapping_sub(j as u32);
                        f.branch_fwd(a, j, cc, owed)
                    }
                    None => f.branch_back(a, target, cc),
                }
                // The fall-through goes on or, at the block's end, leaves.
                a.add_icount(adj.wrapping_neg());
                if k + 1 == f.len {
                    f.exit_to(a, next, k as u32 + 1);
                }
            } else if k + 1 < f.len {
                // An extended block (see `block::extend_user`): the
                // fall-through path goes on here, the taken one leaves
                // through an out-of-line exit.
                let at = a.jcc(cc);
                f.taken.push((at, k, target, a.cache.dirty_map()));
            } else {
                let taken = a.jcc(cc);
                f.exit_to(a, next, k as u32 + 1);
                a.bind(taken);
                f.exit_to(a, target, k as u32 + 1);
            }
        }};
    }
    use Kind::*;
    match i.kind {
        Lui => {
            a.mov_imm(RAX, imm as i64 as u64);
            a.st_x(rd, RAX);
        }
        Auipc => {
            a.mov_imm(RAX, ipc.wrapping_add(imm as i64 as u64));
            a.st_x(rd, RAX);
        }
        Jal => {
            if rd != ZERO_SINK {
                a.mov_imm(RAX, next);
                a.st_x(rd, RAX);
            }
            if is_link(rd) {
                f.ras_push(a, next);
            }
            let target = ipc.wrapping_add(imm as i64 as u64);
            match f.internal(target) {
                Some(j) if !f.is_back_edge(target) => f.jump_internal(a, k, j),
                _ => f.exit_to(a, target, k as u32 + 1),
            }
        }
        Jalr if f.static_target(k).is_some() => {
            // After an `auipc` of its base (see `emit::static_jalrs`): a
            // jump to a known address, as `jal` (the link written, the
            // return address pushed).
            if rd != ZERO_SINK {
                a.mov_imm(RAX, next);
                a.st_x(rd, RAX);
            }
            if is_link(rd) {
                f.ras_push(a, next);
            }
            let target = f.static_target(k).unwrap_or(next);
            f.exit_to(a, target, k as u32 + 1);
        }
        Jalr => {
            // A call pushes its return address, before rax gets the
            // target; a return pops it (see `jit::RAS_DEPTH`).
            if is_link(rd) {
                f.ras_push(a, next);
            }
            let ret = rd == ZERO_SINK && is_link(i.rs1) && imm == 0;
            a.ld_x(RAX, i.rs1);
            if imm != 0 {
                a.alu_imm(true, ADD, RAX, imm);
            }
            a.alu_imm(true, AND, RAX, -2);
            if rd != ZERO_SINK {
                a.mov_imm(RCX, next);
                a.st_x(rd, RCX);
            }
            a.flush_dirty(a.cache.dirty_map());
            a.add_icount(k as u32 + 1);
            a.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
            if ret {
                f.ras_pop(a);
            }
            if f.sys.is_some() {
                a.jmp_abs(f.dispatch_sys);
            } else {
                a.jmp_abs(f.dispatch);
            }
        }
        Beq => branch!(CC_E),
        Bne => branch!(CC_NE),
        Blt => branch!(CC_L),
        Bge => branch!(CC_GE),
        Bltu => branch!(CC_B),
        Bgeu => branch!(CC_AE),
        Addi if rd == ZERO_SINK => {}
        Addi if i.rs1 == 0 => a.li_x(rd, imm),
        Addi if i.rs1 == rd => a.add_x_imm(rd, imm),
        Addi if imm == 0 => mv(a, rd, i.rs1),
        // c.mv is `add rd, x0, rs2`; x ^ 0, x | 0, x + 0, x - 0 are x.
        Add | Or | Xor if i.rs1 == 0 => mv(a, rd, i.rs2),
        Add | Or | Xor | Sub if i.rs2 == 0 => mv(a, rd, i.rs1),
        // Bitwise ops of sign-extended 32-bit values, one held
        // unextended (a rotate's halves, see `RegCache::lazy`): on the
        // low halves, the result unextended too (and sign-extended, see
        // `RegCache::note_write`), no operand extended first.
        Xor | Or | And if a.cache.low_halves(i.rs1, i.rs2) => match i.kind {
            Xor => rr!(false, XOR),
            Or => rr!(false, OR),
            _ => rr!(false, AND),
        },
        Xori | Ori | Andi if a.cache.low_halves(i.rs1, 0) => match i.kind {
            Xori => ri!(false, XOR),
            Ori => ri!(false, OR),
            _ => ri!(false, AND),
        },
        Addi => ri!(true, ADD),
        Xori => ri!(true, XOR),
        Ori => ri!(true, OR),
        Andi => ri!(true, AND),
        Addiw => ri!(false, ADD),
        Slti => set!(CC_L, true),
        Sltiu => set!(CC_B, true),
        Slt => set!(CC_L, false),
        Sltu => set!(CC_B, false),
        Slli => sh_imm!(true, SHL),
        Srli => sh_imm!(true, SHR),
        Srai => sh_imm!(true, SAR),
        Slliw => sh_imm!(false, SHL),
        Srliw => sh_imm!(false, SHR),
        Sraiw => sh_imm!(false, SAR),
        Sll => sh_reg!(true, SHL),
        Srl => sh_reg!(true, SHR),
        Sra => sh_reg!(true, SAR),
        Sllw => sh_reg!(false, SHL),
        Srlw => sh_reg!(false, SHR),
        Sraw => sh_reg!(false, SAR),
        Add => rr!(true, ADD),
        Sub => rr!(true, SUB),
        Xor => rr!(true, XOR),
        Or => rr!(true, OR),
        And => rr!(true, AND),
        Addw => rr!(false, ADD),
        Subw => rr!(false, SUB),
        Fence => {
            // As the interpreter: only a store->load order needs a
            // host barrier on x86 (TSO).
            let pred = (i.raw >> 24) & 0xf;
            let succ = (i.raw >> 20) & 0xf;
            let tso = i.raw >> 28 == 0b1000;
            if !tso && pred & 0b0101 != 0 && succ & 0b1010 != 0 {
                a.b.extend_from_slice(&[0x0f, 0xae, 0xf0]); // mfence
            }
        }
        // `emit_code` routes only the kinds above here.
        _ => unreachable!(),
    }
}

/// The condition `cc` with its operands swapped (`a < b` as `b > a`).
fn mirrored(cc: u8) -> u8 {
    const CC_BE: u8 = 0x6;
    const CC_LE: u8 = 0xe;
    const CC_G: u8 = 0xf;
    match cc {
        CC_L => CC_G,
        CC_GE => CC_LE,
        CC_B => CC_A,
        CC_AE => CC_BE,
        CC_G => CC_L,
        CC_LE => CC_GE,
        CC_A => CC_B,
        CC_BE => CC_AE,
        _ => cc,
    }
}
