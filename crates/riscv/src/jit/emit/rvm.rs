//! The M extension's multiplications and divisions. The host's `div` and
//! `idiv` trap where RISC-V defines a result (x / 0, and MIN / -1 for
//! signed division), so those divisors branch around them: by zero, the
//! quotient is all ones and the remainder the dividend; by -1 (signed),
//! the quotient is the negated dividend (MIN stays MIN, as RISC-V wants)
//! and the remainder 0.

use crate::decode::{Insn, Kind};
use crate::jit::x86::*;

/// Emits the multiplication `i`.
pub(super) fn emit(a: &mut Asm, i: &Insn) {
    use Kind::*;
    let rd = i.rd;
    match i.kind {
        Mul | Mulw if i.rs1 != 0 && i.rs2 != 0 && (rd != i.rs2 || i.rs1 == i.rs2) => {
            // In rd's cache slot, no copies: imul d, rs2 (the operands
            // are in their registers before the slot is chosen, so it
            // cannot evict them; rd = rs2 alone would clobber rs2 first).
            // mulw multiplies the low halves and leaves the product
            // unextended (see `RegCache::lazy`).
            let w = i.kind == Mul;
            let (s1, s2) = if w {
                (a.x_reg(i.rs1), a.x_reg(i.rs2))
            } else {
                (a.x_reg32(i.rs1), a.x_reg32(i.rs2))
            };
            let d = a.rd_host(rd);
            if d != s1 {
                a.mov_rr(d, s1);
            }
            a.op_rr(w, &[0x0f, 0xaf], d, s2); // imul d, s2
            a.rd_commit_as(rd, d, !w);
        }
        Mul | Mulw => {
            let w = i.kind == Mul;
            a.ld_x(RAX, i.rs1);
            a.ld_x(RCX, i.rs2);
            a.op_rr(w, &[0x0f, 0xaf], RAX, RCX); // imul rax, rcx
            if !w {
                a.sext32(RAX, RAX);
            }
            a.st_x(rd, RAX);
        }
        Mulh | Mulhu => {
            a.ld_x(RAX, i.rs1);
            a.ld_x(RCX, i.rs2);
            // imul rcx (/5) or mul rcx (/4): rdx:rax = rax * rcx
            a.op_rr(true, &[0xf7], if i.kind == Mulh { 5 } else { 4 }, RCX);
            a.st_x(rd, RDX);
        }
        Div | Divu | Rem | Remu | Divw | Divuw | Remw | Remuw => {
            let w = matches!(i.kind, Div | Divu | Rem | Remu);
            let signed = matches!(i.kind, Div | Rem | Divw | Remw);
            let rem = matches!(i.kind, Rem | Remu | Remw | Remuw);
            a.ld_x(RAX, i.rs1);
            a.ld_x(RCX, i.rs2);
            a.op_rr(w, &[0x85], RCX, RCX); // test rcx, rcx
            let by_zero = a.jcc(CC_E);
            let by_minus_one = signed.then(|| {
                a.alu_imm(w, CMP, RCX, -1);
                a.jcc(CC_E)
            });
            if signed {
                if w {
                    a.u8(0x48);
                }
                a.u8(0x99); // cqo / cdq
            } else {
                a.op_rr(false, &[0x31], RDX, RDX); // xor edx, edx
            }
            a.op_rr(w, &[0xf7], if signed { 7 } else { 6 }, RCX); // (i)div rcx
            if rem {
                a.mov_rr(RAX, RDX);
            }
            let mut done = vec![a.jmp_fwd()];
            if let Some(at) = by_minus_one {
                a.bind(at);
                if rem {
                    a.op_rr(false, &[0x31], RAX, RAX); // xor eax, eax
                } else {
                    a.op_rr(w, &[0xf7], 3, RAX); // neg rax
                }
                done.push(a.jmp_fwd());
            }
            a.bind(by_zero);
            if !rem {
                a.mov_imm(RAX, u64::MAX);
            }
            // (A remainder by zero is the dividend, still in rax.)
            for at in done {
                a.bind(at);
            }
            if !w {
                a.sext32(RAX, RAX);
            }
            a.st_x(rd, RAX);
        }
        // `emit_code` routes only the kinds above here.
        _ => unreachable!(),
    }
}
