//! The A extension: load-reserved / store-conditional and the atomic
//! memory operations, as host atomics on guest RAM (QEMU:
//! `trans_rva.c.inc`).

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::{sx32, Flow, Step};
use crate::cpu::{cause, Core, Trap};
use crate::decode::{Insn, Kind};
use crate::mmu::Mem;

/// Runs one A instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec<M: Mem>(kind: Kind, core: &mut Core, mem: &mut M, i: &Insn) -> Step {
    operands!($ core, i);
    macro_rules! amo {
        ($n:literal, $atomic:ty, $op:ident, $val:expr, $ext:expr) => {{
            let p = tri!(mem.atomic::<$n>(core, rs1!(), true));
            // SAFETY: `atomic` returned a host pointer to N bytes of
            // guest RAM aligned to N, valid while the mapping lives.
            let a = unsafe { <$atomic>::from_ptr(p.cast()) };
            let old = a.$op($val, Ordering::SeqCst);
            wr!($ext(old));
        }};
    }
    use Kind::*;
    match kind {
        LrW => {
            let p = tri!(mem.atomic::<4>(core, rs1!(), false));
            // SAFETY: aligned host pointer to guest RAM (see `amo!`).
            let v = unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::SeqCst);
            core.res_addr = rs1!();
            core.res_val = v as u64;
            wr!(sx32(v as u64));
        }
        LrD => {
            let p = tri!(mem.atomic::<8>(core, rs1!(), false));
            // SAFETY: aligned host pointer to guest RAM (see `amo!`).
            let v = unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::SeqCst);
            core.res_addr = rs1!();
            core.res_val = v;
            wr!(v);
        }
        ScW => {
            if rs1!() & 3 != 0 {
                trap!(Trap {
                    cause: cause::STORE_MISALIGNED,
                    tval: rs1!()
                });
            }
            let ok = if core.res_addr == rs1!() {
                let p = tri!(mem.atomic::<4>(core, rs1!(), true));
                // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                unsafe { AtomicU32::from_ptr(p.cast()) }
                    .compare_exchange(
                        core.res_val as u32,
                        rs2!() as u32,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
            } else {
                false
            };
            core.res_addr = u64::MAX;
            wr!(!ok as u64);
        }
        ScD => {
            if rs1!() & 7 != 0 {
                trap!(Trap {
                    cause: cause::STORE_MISALIGNED,
                    tval: rs1!()
                });
            }
            let ok = if core.res_addr == rs1!() {
                let p = tri!(mem.atomic::<8>(core, rs1!(), true));
                // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                unsafe { AtomicU64::from_ptr(p.cast()) }
                    .compare_exchange(core.res_val, rs2!(), Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            } else {
                false
            };
            core.res_addr = u64::MAX;
            wr!(!ok as u64);
        }
        AmoSwapW => amo!(4, AtomicU32, swap, rs2!() as u32, |v: u32| sx32(v as u64)),
        AmoAddW => amo!(4, AtomicU32, fetch_add, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoXorW => amo!(4, AtomicU32, fetch_xor, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoAndW => amo!(4, AtomicU32, fetch_and, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoOrW => amo!(4, AtomicU32, fetch_or, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoMinW => amo!(4, AtomicI32, fetch_min, rs2!() as i32, |v: i32| v as i64
            as u64),
        AmoMaxW => amo!(4, AtomicI32, fetch_max, rs2!() as i32, |v: i32| v as i64
            as u64),
        AmoMinuW => amo!(4, AtomicU32, fetch_min, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoMaxuW => amo!(4, AtomicU32, fetch_max, rs2!() as u32, |v: u32| sx32(
            v as u64
        )),
        AmoSwapD => amo!(8, AtomicU64, swap, rs2!(), |v: u64| v),
        AmoAddD => amo!(8, AtomicU64, fetch_add, rs2!(), |v: u64| v),
        AmoXorD => amo!(8, AtomicU64, fetch_xor, rs2!(), |v: u64| v),
        AmoAndD => amo!(8, AtomicU64, fetch_and, rs2!(), |v: u64| v),
        AmoOrD => amo!(8, AtomicU64, fetch_or, rs2!(), |v: u64| v),
        AmoMinD => amo!(8, AtomicI64, fetch_min, rs2!() as i64, |v: i64| v as u64),
        AmoMaxD => amo!(8, AtomicI64, fetch_max, rs2!() as i64, |v: i64| v as u64),
        AmoMinuD => amo!(8, AtomicU64, fetch_min, rs2!(), |v: u64| v),
        AmoMaxuD => amo!(8, AtomicU64, fetch_max, rs2!(), |v: u64| v),
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
