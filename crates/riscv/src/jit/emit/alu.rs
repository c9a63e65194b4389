//! Integer arithmetic with better host forms than `rvi`'s generic
//! "copy rs1 into rd's register, then operate" pattern: constants straight
//! into the destination's register, `lea` for additions into a third
//! register, `movzx`/`movsx`/`movsxd` for extensions (also the fused pairs
//! of `fuse`), set-on-compare into the destination without a detour
//! through rax, and BMI2's three-operand shifts by a register when the
//! host has them.

use super::{xd, CACHE_REGS};
use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::jit::x86::*;

/// Emits `i` (at guest pc `ipc`) when it is one of the forms this module
/// handles; `false` when `rvi` should.
pub(super) fn emit(a: &mut Asm, i: &Insn, ipc: u64) -> bool {
    use Kind::*;
    let (rd, rs1, rs2, imm) = (i.rd, i.rs1, i.rs2, i.imm);
    if rd == ZERO_SINK {
        // Results written to x0 vanish; none of these kinds traps.
        return matches!(
            i.kind,
            Lui | Auipc
                | Slt
                | Sltu
                | Slti
                | Sltiu
                | AddUw
                | ZextH
                | SextH
                | SextB
                | Sh1add
                | Sh2add
                | Sh3add
                | Sh1addUw
                | Sh2addUw
                | Sh3addUw
                | SlliUw
        );
    }
    match i.kind {
        Lui => a.li_x(rd, imm),
        Auipc => {
            let c = a.cache_slot(rd);
            a.mov_imm(c, ipc.wrapping_add(imm as i64 as u64));
            a.rd_commit(rd, c);
        }
        // rd = rs1 + imm into another register: one `lea`.
        Addi if rs1 != 0 && rs1 != rd && imm != 0 => {
            let s = a.x_reg(rs1);
            let d = a.rd_host(rd);
            a.op_m(true, &[0x8d], d, s, imm);
            a.rd_commit(rd, d);
        }
        // sext.w (also `slli 32; srai 32`).
        Addiw if rs1 != 0 && imm == 0 => unary(a, i, Low, |a, d, s| a.sext32(d, s)),
        // (Left unextended, see `RegCache::lazy`.)
        Addiw if rs1 != 0 && rs1 != rd => unary(a, i, W, |a, d, s| {
            a.op_m(false, &[0x8d], d, s, imm); // lea d32, [s + imm]
        }),
        // An operand better read in place (see `RegCache::in_place`):
        // the other one (or it too) into rd's register, then an `add`
        // from `Core::x` (which still holds the operands' values when rd
        // is one of them: rd is written back only after).
        Add | Addw if rs1 != 0 && rs2 != 0 && (a.cache.in_place(rs1) || a.cache.in_place(rs2)) => {
            let w = i.kind == Add;
            let (mem, other) = if a.cache.in_place(rs2) {
                (rs2, rs1)
            } else {
                (rs1, rs2)
            };
            let d = if a.cache.in_place(other) {
                let d = a.rd_host(rd);
                a.load(d, RBX, xd(other));
                d
            } else {
                let c = if w { a.x_reg(other) } else { a.x_reg32(other) };
                let d = a.rd_host(rd);
                if d != c {
                    a.mov_rr(d, c);
                }
                d
            };
            a.op_m(w, &[ADD.0 + 2], d, RBX, xd(mem));
            // addw: unextended (see `RegCache::lazy`).
            a.rd_commit_as(rd, d, !w);
        }
        Add | Addw if rs1 != 0 && rs2 != 0 => {
            let w = i.kind == Add;
            let (s1, s2) = if w {
                (a.x_reg(rs1), a.x_reg(rs2))
            } else {
                (a.x_reg32(rs1), a.x_reg32(rs2))
            };
            let d = a.rd_host(rd);
            if d == s1 {
                a.alu_rr(w, ADD, d, s2);
            } else if d == s2 {
                a.alu_rr(w, ADD, d, s1);
            } else {
                a.op_bid(w, &[0x8d], d, s1, s2, 0); // lea d, [s1 + s2]
            }
            // addw: unextended (see `RegCache::lazy`).
            a.rd_commit_as(rd, d, !w);
        }
        // zext.b, zext.h, zext.w (also `slli n; srli n`).
        Andi if rs1 != 0 && imm == 0xff => unary(a, i, Low, |a, d, s| {
            byte_rex(a, false, d, s);
            a.b.extend_from_slice(&[0x0f, 0xb6, 0xc0 | (d & 7) << 3 | (s & 7)]);
        }),
        ZextH => unary(a, i, Low, |a, d, s| a.op_rr(false, &[0x0f, 0xb7], d, s)),
        SextH => unary(a, i, Low, |a, d, s| a.op_rr(true, &[0x0f, 0xbf], d, s)),
        SextB => unary(a, i, Low, |a, d, s| a.op_rr(true, &[0x0f, 0xbe], d, s)),
        AddUw if rs2 == 0 => unary(a, i, Low, |a, d, s| a.op_rr(false, &[0x89], s, d)),
        AddUw if rs1 != 0 => {
            // zext.w's operand: its low half.
            let s1 = a.x_reg32(rs1);
            let s2 = a.x_reg(rs2);
            let d = a.rd_host(rd);
            if d == s2 {
                a.op_rr(false, &[0x89], s1, RAX); // mov eax, s1d
                a.alu_rr(true, ADD, d, RAX);
            } else {
                a.op_rr(false, &[0x89], s1, d); // mov d32, s1d
                a.alu_rr(true, ADD, d, s2);
            }
            a.rd_commit(rd, d);
        }
        // rd = (rs1 << n) + rs2 (Zba, also `slli; add`, see `fuse`): one
        // `lea`. An operand better read in place (see
        // `RegCache::in_place`) comes through a scratch register, off
        // the other operand's dependency chain.
        Sh1add | Sh2add | Sh3add if rs1 != 0 && rs2 != 0 => {
            let n = match i.kind {
                Sh1add => 1,
                Sh2add => 2,
                _ => 3,
            };
            let s1 = if a.cache.in_place(rs1) {
                a.load(RAX, RBX, xd(rs1));
                RAX
            } else {
                a.x_reg(rs1)
            };
            let s2 = if a.cache.in_place(rs2) {
                a.load(RCX, RBX, xd(rs2));
                RCX
            } else {
                a.x_reg(rs2)
            };
            let d = a.rd_host(rd);
            lea_scaled(a, d, s2, s1, n);
            a.rd_commit(rd, d);
        }
        // zext.w, then shifted left (also `slli 32; srli 29..31`, see
        // `fuse`).
        SlliUw => unary(a, i, Low, |a, d, s| {
            a.op_rr(false, &[0x89], s, d); // mov d32, s32
            if imm & 63 != 0 {
                a.shift_imm(true, SHL, d, (imm & 63) as u8);
            }
        }),
        // rd = (zext(rs1) << n) + rs2 (also `slli 32; srli; add`, see
        // `fuse`): the zero extension into rax, then one `lea`.
        Sh1addUw | Sh2addUw | Sh3addUw if rs1 != 0 && rs2 != 0 => {
            let n = match i.kind {
                Sh1addUw => 1,
                Sh2addUw => 2,
                _ => 3,
            };
            if a.cache.in_place(rs1) {
                a.op_m(false, &[0x8b], RAX, RBX, xd(rs1)); // mov eax, [x]
            } else {
                let s1 = a.x_reg32(rs1);
                a.op_rr(false, &[0x89], s1, RAX); // mov eax, s1d
            }
            let s2 = if a.cache.in_place(rs2) {
                a.load(RCX, RBX, xd(rs2));
                RCX
            } else {
                a.x_reg(rs2)
            };
            let d = a.rd_host(rd);
            lea_scaled(a, d, s2, RAX, n);
            a.rd_commit(rd, d);
        }
        Slt | Sltu | Slti | Sltiu => set(a, i),
        Sll | Srl | Sra | Sllw | Srlw | Sraw if rs1 != 0 && rs2 != 0 && bmi2() => {
            let w = matches!(i.kind, Sll | Srl | Sra);
            // The count is masked to the low 5 or 6 bits; a W shift
            // reads and writes low halves (see `RegCache::lazy`).
            let s1 = if w { a.x_reg(rs1) } else { a.x_reg32(rs1) };
            let s2 = a.x_reg32(rs2);
            let d = a.rd_host(rd);
            // shlx (66), shrx (F2), sarx (F3): d = s1 shifted by s2, the
            // count masked to the operand size as RISC-V masks it.
            let pp = match i.kind {
                Sll | Sllw => 1,
                Srl | Srlw => 3,
                _ => 2,
            };
            a.b.extend_from_slice(&[
                0xc4,
                (!(d >> 3) & 1) << 7 | 1 << 6 | (!(s1 >> 3) & 1) << 5 | 0x02,
                (w as u8) << 7 | (!s2 & 15) << 3 | pp,
                0xf7,
                0xc0 | (d & 7) << 3 | (s1 & 7),
            ]);
            a.rd_commit_as(rd, d, !w);
        }
        _ => return false,
    }
    true
}

/// `lea d, [base + index << n]` (n = 0..=3; `index` is never rsp).
pub(super) fn lea_scaled(a: &mut Asm, d: u8, base: u8, index: u8, n: u8) {
    a.rex(true, d, index, base);
    a.u8(0x8d);
    let sib = n << 6 | (index & 7) << 3 | (base & 7);
    if base & 7 == 5 {
        // rbp or r13 as the base needs a displacement (mod 00 would mean
        // none and disp32): disp8 0.
        a.b.extend_from_slice(&[0x44 | (d & 7) << 3, sib, 0]);
    } else {
        a.b.extend_from_slice(&[0x04 | (d & 7) << 3, sib]);
    }
}

/// Whether the host has BMI2 (`shlx`, `shrx`, `sarx`). Detected once by
/// std and cached there.
fn bmi2() -> bool {
    std::is_x86_feature_detected!("bmi2")
}

/// How a one-operand op reads its source and leaves its result (see
/// `RegCache::lazy`).
#[derive(Clone, Copy, PartialEq)]
enum Width {
    /// Reads only the low 32 bits (or fewer), writes a whole register.
    Low,
    /// Reads only the low 32 bits, leaves the result unextended.
    W,
}
use Width::*;

/// rd = op(rs1) for a one-operand op that reads its source before writing
/// its destination (any register, possibly the same): `op(a, d, s)`. x0
/// as the source gives 0 for every op routed here.
fn unary(a: &mut Asm, i: &Insn, width: Width, op: impl FnOnce(&mut Asm, u8, u8)) {
    if i.rs1 == 0 {
        a.li_x(i.rd, 0);
        return;
    }
    let s = a.x_reg32(i.rs1);
    let d = a.rd_host(i.rd);
    op(a, d, s);
    a.rd_commit_as(i.rd, d, width == W);
}

/// The REX prefix of an instruction with a byte register operand `rm`
/// (and `reg`): forced when `rm` is rsp..rdi, whose low bytes (spl..dil)
/// need one (without it they encode ah..bh).
fn byte_rex(a: &mut Asm, w: bool, reg: u8, rm: u8) {
    let r = 0x40 | (w as u8) << 3 | (reg >> 3 & 1) << 2 | (rm >> 3 & 1);
    if r != 0x40 || (4..8).contains(&rm) {
        a.u8(r);
    }
}

/// slt, sltu, slti, sltiu: the flag straight into rd's register (cleared
/// before the compare, then `setcc` on its low byte) when rd is neither
/// source; otherwise through rax.
fn set(a: &mut Asm, i: &Insn) {
    use Kind::*;
    let cc = if matches!(i.kind, Slt | Slti) {
        CC_L
    } else {
        CC_B
    };
    let reg = matches!(i.kind, Slt | Sltu);
    let s1 = if i.rs1 != 0 {
        Some(a.x_reg(i.rs1))
    } else {
        None
    };
    let s2 = if reg && i.rs2 != 0 {
        Some(a.x_reg(i.rs2))
    } else {
        None
    };
    let d = a.rd_host(i.rd);
    debug_assert!(CACHE_REGS.contains(&d));
    let direct = s1.is_some() && s1 != Some(d) && s2 != Some(d);
    if direct {
        a.op_rr(false, &[0x31], d, d); // xor d32, d32 (before the flags)
    }
    let left = match s1 {
        Some(s) => s,
        None => {
            a.op_rr(false, &[0x31], RAX, RAX);
            RAX
        }
    };
    match (reg, s2) {
        (true, Some(s)) => a.alu_rr(true, CMP, left, s),
        (true, None) => a.alu_imm(true, CMP, left, 0),
        (false, _) => a.alu_imm(true, CMP, left, i.imm),
    }
    if direct {
        byte_rex(a, false, 0, d);
        a.b.extend_from_slice(&[0x0f, 0x90 + cc, 0xc0 | (d & 7)]);
    } else {
        a.setcc_rax(cc);
        a.mov_rr(d, RAX);
    }
    a.rd_commit(i.rd, d);
}
