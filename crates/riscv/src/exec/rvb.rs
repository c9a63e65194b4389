//! The bit manipulation extensions Zba, Zbb and Zbs (QEMU:
//! `trans_rvb.c.inc`).

use super::{sx32, Flow, Step};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};

/// Runs one Zba, Zbb or Zbs instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec(kind: Kind, core: &mut Core, i: &Insn) -> Step {
    operands!($ core, i);
    use Kind::*;
    match kind {
        // ---- Zba ----
        AddUw => wr!(rs2!().wrapping_add(rs1!() as u32 as u64)),
        Sh1add => wr!(rs2!().wrapping_add(rs1!() << 1)),
        Sh2add => wr!(rs2!().wrapping_add(rs1!() << 2)),
        Sh3add => wr!(rs2!().wrapping_add(rs1!() << 3)),
        Sh1addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 1)),
        Sh2addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 2)),
        Sh3addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 3)),
        SlliUw => wr!((rs1!() as u32 as u64) << (imm!() & 63)),
        // ---- Zbb ----
        Andn => wr!(rs1!() & !rs2!()),
        Orn => wr!(rs1!() | !rs2!()),
        Xnor => wr!(!(rs1!() ^ rs2!())),
        Clz => wr!(rs1!().leading_zeros() as u64),
        Clzw => wr!((rs1!() as u32).leading_zeros() as u64),
        Ctz => wr!(rs1!().trailing_zeros() as u64),
        Ctzw => wr!((rs1!() as u32).trailing_zeros() as u64),
        Cpop => wr!(rs1!().count_ones() as u64),
        Cpopw => wr!((rs1!() as u32).count_ones() as u64),
        Max => wr!((rs1!() as i64).max(rs2!() as i64) as u64),
        Maxu => wr!(rs1!().max(rs2!())),
        Min => wr!((rs1!() as i64).min(rs2!() as i64) as u64),
        Minu => wr!(rs1!().min(rs2!())),
        SextB => wr!(rs1!() as i8 as i64 as u64),
        SextH => wr!(rs1!() as i16 as i64 as u64),
        ZextH => wr!(rs1!() as u16 as u64),
        Rol => wr!(rs1!().rotate_left((rs2!() & 63) as u32)),
        Rolw => wr!(sx32(
            (rs1!() as u32).rotate_left((rs2!() & 31) as u32) as u64
        )),
        Ror => wr!(rs1!().rotate_right((rs2!() & 63) as u32)),
        Rori => wr!(rs1!().rotate_right((imm!() & 63) as u32)),
        Roriw => wr!(sx32(
            (rs1!() as u32).rotate_right((imm!() & 31) as u32) as u64
        )),
        Rorw => wr!(sx32(
            (rs1!() as u32).rotate_right((rs2!() & 31) as u32) as u64
        )),
        OrcB => {
            let mut r = 0u64;
            for b in 0..8 {
                if (rs1!() >> (b * 8)) & 0xff != 0 {
                    r |= 0xff << (b * 8);
                }
            }
            wr!(r)
        }
        Rev8 => wr!(rs1!().swap_bytes()),
        // ---- Zbs ----
        Bclr => wr!(rs1!() & !(1u64 << (rs2!() & 63))),
        Bclri => wr!(rs1!() & !(1u64 << (imm!() & 63))),
        Bext => wr!((rs1!() >> (rs2!() & 63)) & 1),
        Bexti => wr!((rs1!() >> (imm!() & 63)) & 1),
        Binv => wr!(rs1!() ^ (1u64 << (rs2!() & 63))),
        Binvi => wr!(rs1!() ^ (1u64 << (imm!() & 63))),
        Bset => wr!(rs1!() | (1u64 << (rs2!() & 63))),
        Bseti => wr!(rs1!() | (1u64 << (imm!() & 63))),
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
