//! The M extension's multiplications (division goes through the
//! interpreter helper: its corner cases, x / 0 and overflow, would need
//! branches around the host's `div`, which traps on both).

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
            let w = i.kind == Mul;
            let s1 = a.x_reg(i.rs1);
            let s2 = a.x_reg(i.rs2);
            let d = a.rd_host(rd);
            if d != s1 {
                a.mov_rr(d, s1);
            }
            a.op_rr(w, &[0x0f, 0xaf], d, s2); // imul d, s2
            if !w {
                a.sext32(d, d);
            }
            a.rd_commit(rd, d);
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
        // `emit_code` routes only the kinds above here.
        _ => unreachable!(),
    }
}
