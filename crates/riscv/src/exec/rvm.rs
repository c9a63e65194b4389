//! The M extension: integer multiply and divide (QEMU: `trans_rvm.c.inc`).

use super::{sx32, Flow, Step};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};

/// Runs one M instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec(kind: Kind, core: &mut Core, i: &Insn) -> Step {
    operands!($ core, i);
    use Kind::*;
    match kind {
        Mul => wr!(rs1!().wrapping_mul(rs2!())),
        Mulh => wr!(((rs1!() as i64 as i128 * rs2!() as i64 as i128) >> 64) as u64),
        Mulhsu => wr!(((rs1!() as i64 as i128).wrapping_mul(rs2!() as i128) >> 64) as u64),
        Mulhu => wr!(((rs1!() as u128 * rs2!() as u128) >> 64) as u64),
        Div => wr!(if rs2!() == 0 {
            u64::MAX
        } else {
            (rs1!() as i64).wrapping_div(rs2!() as i64) as u64
        }),
        Divu => wr!(rs1!().checked_div(rs2!()).unwrap_or(u64::MAX)),
        Rem => wr!(if rs2!() == 0 {
            rs1!()
        } else {
            (rs1!() as i64).wrapping_rem(rs2!() as i64) as u64
        }),
        Remu => wr!(if rs2!() == 0 { rs1!() } else { rs1!() % rs2!() }),
        Mulw => wr!(sx32(rs1!().wrapping_mul(rs2!()))),
        Divw => wr!(if rs2!() as u32 == 0 {
            u64::MAX
        } else {
            (rs1!() as i32).wrapping_div(rs2!() as i32) as i64 as u64
        }),
        Divuw => wr!((rs1!() as u32)
            .checked_div(rs2!() as u32)
            .map_or(u64::MAX, |q| sx32(q as u64))),
        Remw => wr!(if rs2!() as u32 == 0 {
            sx32(rs1!())
        } else {
            (rs1!() as i32).wrapping_rem(rs2!() as i32) as i64 as u64
        }),
        Remuw => wr!(if rs2!() as u32 == 0 {
            sx32(rs1!())
        } else {
            sx32(((rs1!() as u32) % (rs2!() as u32)) as u64)
        }),
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
