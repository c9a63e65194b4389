//! The A extension: load-reserved / store-conditional and the atomic
//! memory operations, each one atomic step on guest RAM through
//! [`Mem::rmw`] (QEMU: `trans_rva.c.inc`).

use super::{sx32, Flow, Step};
use crate::cpu::{cause, Core, Trap};
use crate::decode::{Insn, Kind};
use crate::mmu::Mem;

/// Runs one A instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec<M: Mem>(kind: Kind, core: &mut Core, mem: &mut M, i: &Insn) -> Step {
    operands!($ core, i);
    // An AMO of `N` bytes: `f(old, rs2)` on the operands' low `N` bytes
    // (as u32 or u64), the old value sign-extended into rd.
    macro_rules! amo_w {
        ($f:expr) => {{
            let b = rs2!() as u32;
            let f: fn(u32, u32) -> u32 = $f;
            let old = tri!(mem.rmw::<4>(core, rs1!(), true, |o| Some(f(o as u32, b) as u64)));
            wr!(sx32(old));
        }};
    }
    macro_rules! amo_d {
        ($f:expr) => {{
            let b = rs2!();
            let f: fn(u64, u64) -> u64 = $f;
            let old = tri!(mem.rmw::<8>(core, rs1!(), true, |o| Some(f(o, b))));
            wr!(old);
        }};
    }
    use Kind::*;
    match kind {
        LrW => {
            let v = tri!(mem.rmw::<4>(core, rs1!(), false, |_| None));
            core.res_addr = rs1!();
            core.res_val = v;
            wr!(sx32(v));
        }
        LrD => {
            let v = tri!(mem.rmw::<8>(core, rs1!(), false, |_| None));
            core.res_addr = rs1!();
            core.res_val = v;
            wr!(v);
        }
        ScW | ScD => {
            let n = if kind == ScW { 4 } else { 8 };
            if rs1!() & (n - 1) != 0 {
                trap!(Trap {
                    cause: cause::STORE_MISALIGNED,
                    tval: rs1!()
                });
            }
            let ok = if core.res_addr == rs1!() {
                let (want, new) = (core.res_val, rs2!());
                // Stores `new` only over the value LR read (a CAS).
                if kind == ScW {
                    let want = want as u32 as u64;
                    let new = new as u32 as u64;
                    tri!(mem.rmw::<4>(core, rs1!(), true, |o| (o == want).then_some(new))) == want
                } else {
                    tri!(mem.rmw::<8>(core, rs1!(), true, |o| (o == want).then_some(new))) == want
                }
            } else {
                false
            };
            core.res_addr = u64::MAX;
            wr!(!ok as u64);
        }
        AmoSwapW => amo_w!(|_, b| b),
        AmoAddW => amo_w!(|a, b| a.wrapping_add(b)),
        AmoXorW => amo_w!(|a, b| a ^ b),
        AmoAndW => amo_w!(|a, b| a & b),
        AmoOrW => amo_w!(|a, b| a | b),
        AmoMinW => amo_w!(|a, b| (a as i32).min(b as i32) as u32),
        AmoMaxW => amo_w!(|a, b| (a as i32).max(b as i32) as u32),
        AmoMinuW => amo_w!(|a, b| a.min(b)),
        AmoMaxuW => amo_w!(|a, b| a.max(b)),
        AmoSwapD => amo_d!(|_, b| b),
        AmoAddD => amo_d!(|a, b| a.wrapping_add(b)),
        AmoXorD => amo_d!(|a, b| a ^ b),
        AmoAndD => amo_d!(|a, b| a & b),
        AmoOrD => amo_d!(|a, b| a | b),
        AmoMinD => amo_d!(|a, b| (a as i64).min(b as i64) as u64),
        AmoMaxD => amo_d!(|a, b| (a as i64).max(b as i64) as u64),
        AmoMinuD => amo_d!(|a, b| a.min(b)),
        AmoMaxuD => amo_d!(|a, b| a.max(b)),
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
