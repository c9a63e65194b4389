//! RV64I, the base integer instructions: upper immediates, jumps and
//! branches, loads and stores, register and immediate arithmetic, `fence`
//! (QEMU: `trans_rvi.c.inc`).

use std::sync::atomic::Ordering;

use super::{sx32, Flow, Step};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};
use crate::mmu::Mem;

/// Runs one RV64I instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec<M: Mem>(kind: Kind, core: &mut Core, mem: &mut M, i: &Insn, start: u64) -> Step {
    operands!($ core, i, start);
    macro_rules! branch {
        ($c:expr) => {{
            return Ok(Flow::Jump(if $c {
                pc!().wrapping_add(imm!())
            } else {
                next!()
            }));
        }};
    }
    use Kind::*;
    match kind {
        Lui => wr!(imm!()),
        Auipc => wr!(pc!().wrapping_add(imm!())),
        Jal => {
            wr!(next!());
            return Ok(Flow::Jump(pc!().wrapping_add(imm!())));
        }
        Jalr => {
            let t = rs1!().wrapping_add(imm!()) & !1;
            wr!(next!());
            return Ok(Flow::Jump(t));
        }
        Beq => branch!(rs1!() == rs2!()),
        Bne => branch!(rs1!() != rs2!()),
        Blt => branch!((rs1!() as i64) < (rs2!() as i64)),
        Bge => branch!((rs1!() as i64) >= (rs2!() as i64)),
        Bltu => branch!(rs1!() < rs2!()),
        Bgeu => branch!(rs1!() >= rs2!()),
        Lb => wr!(tri!(mem.load::<1>(core, rs1!().wrapping_add(imm!()))) as i8 as u64),
        Lh => wr!(tri!(mem.load::<2>(core, rs1!().wrapping_add(imm!()))) as i16 as u64),
        Lw => wr!(tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!()))) as i32 as u64),
        Ld => wr!(tri!(mem.load::<8>(core, rs1!().wrapping_add(imm!())))),
        Lbu => wr!(tri!(mem.load::<1>(core, rs1!().wrapping_add(imm!())))),
        Lhu => wr!(tri!(mem.load::<2>(core, rs1!().wrapping_add(imm!())))),
        Lwu => wr!(tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!())))),
        Sb => tri!(mem.store::<1>(core, rs1!().wrapping_add(imm!()), rs2!())),
        Sh => tri!(mem.store::<2>(core, rs1!().wrapping_add(imm!()), rs2!())),
        Sw => tri!(mem.store::<4>(core, rs1!().wrapping_add(imm!()), rs2!())),
        Sd => tri!(mem.store::<8>(core, rs1!().wrapping_add(imm!()), rs2!())),
        Addi => wr!(rs1!().wrapping_add(imm!())),
        Slti => wr!(((rs1!() as i64) < (imm!() as i64)) as u64),
        Sltiu => wr!((rs1!() < imm!()) as u64),
        Xori => wr!(rs1!() ^ imm!()),
        Ori => wr!(rs1!() | imm!()),
        Andi => wr!(rs1!() & imm!()),
        Slli => wr!(rs1!() << (imm!() & 63)),
        Srli => wr!(rs1!() >> (imm!() & 63)),
        Srai => wr!(((rs1!() as i64) >> (imm!() & 63)) as u64),
        Add => wr!(rs1!().wrapping_add(rs2!())),
        Sub => wr!(rs1!().wrapping_sub(rs2!())),
        Sll => wr!(rs1!() << (rs2!() & 63)),
        Slt => wr!(((rs1!() as i64) < (rs2!() as i64)) as u64),
        Sltu => wr!((rs1!() < rs2!()) as u64),
        Xor => wr!(rs1!() ^ rs2!()),
        Srl => wr!(rs1!() >> (rs2!() & 63)),
        Sra => wr!(((rs1!() as i64) >> (rs2!() & 63)) as u64),
        Or => wr!(rs1!() | rs2!()),
        And => wr!(rs1!() & rs2!()),
        Addiw => wr!(sx32(rs1!().wrapping_add(imm!()))),
        Slliw => wr!(sx32(((rs1!() as u32) << (imm!() & 31)) as u64)),
        Srliw => wr!(sx32(((rs1!() as u32) >> (imm!() & 31)) as u64)),
        Sraiw => wr!(((rs1!() as i32) >> (imm!() & 31)) as i64 as u64),
        Addw => wr!(sx32(rs1!().wrapping_add(rs2!()))),
        Subw => wr!(sx32(rs1!().wrapping_sub(rs2!()))),
        Sllw => wr!(sx32(((rs1!() as u32) << (rs2!() & 31)) as u64)),
        Srlw => wr!(sx32(((rs1!() as u32) >> (rs2!() & 31)) as u64)),
        Sraw => wr!(((rs1!() as i32) >> (rs2!() & 31)) as i64 as u64),
        Fence => {
            // x86-64 (TSO) keeps every order RVWMO asks of a fence except
            // a store followed by a load: that one needs a real barrier
            // (Linux's smp_mb() is `fence rw,rw`; without it Dekker-style
            // handshakes between harts, e.g. wake-ups and IPI hand-offs,
            // can both miss each other). fence.tso (fm=1000) never orders
            // store->load, and other fences only need the compiler not to
            // move guest accesses across them.
            let pred = (i.raw >> 24) & 0xf;
            let succ = (i.raw >> 20) & 0xf;
            let tso = i.raw >> 28 == 0b1000;
            if !tso && pred & 0b0101 != 0 && succ & 0b1010 != 0 {
                std::sync::atomic::fence(Ordering::SeqCst);
            } else {
                std::sync::atomic::compiler_fence(Ordering::SeqCst);
            }
        }
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
