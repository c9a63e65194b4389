//! The F and D extensions: single and double precision loads, stores,
//! arithmetic, conversions, moves, compares (QEMU: `trans_rvf.c.inc`,
//! `trans_rvd.c.inc`). The arithmetic itself is in `crate::fpu`.

use super::{sx32, Flow, Step};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};
use crate::fpu;
use crate::mmu::Mem;

/// Runs one F or D instruction; `exec_block` routes only those kinds here.
#[inline(always)]
pub(super) fn exec<M: Mem>(kind: Kind, core: &mut Core, mem: &mut M, i: &Insn) -> Step {
    operands!($ core, i);
    macro_rules! fp_on {
        () => {
            if core.fs_off() {
                ill!();
            }
        };
    }
    macro_rules! rm {
        () => {{
            fp_on!();
            let rm = if i.rm == 7 { core.frm } else { i.rm as u64 };
            if rm > 4 {
                ill!();
            }
            fpu::begin(rm);
        }};
    }
    macro_rules! fdone {
        () => {{
            core.fflags |= fpu::flags();
            core.set_fs_dirty();
        }};
    }
    macro_rules! fs1 {
        () => {
            fpu::unbox(core.f[(i.rs1 & 31) as usize])
        };
    }
    macro_rules! fs2 {
        () => {
            fpu::unbox(core.f[(i.rs2 & 31) as usize])
        };
    }
    macro_rules! fs3 {
        () => {
            fpu::unbox(core.f[(i.rs3 & 31) as usize])
        };
    }
    macro_rules! fd1 {
        () => {
            core.f[(i.rs1 & 31) as usize]
        };
    }
    macro_rules! fd2 {
        () => {
            core.f[(i.rs2 & 31) as usize]
        };
    }
    macro_rules! fd3 {
        () => {
            core.f[(i.rs3 & 31) as usize]
        };
    }
    macro_rules! fwr_s {
        ($v:expr) => {{
            let v = $v;
            core.f[(i.rd & 31) as usize] = fpu::boxs(v);
        }};
    }
    macro_rules! fwr_d {
        ($v:expr) => {{
            let v = $v;
            core.f[(i.rd & 31) as usize] = v;
        }};
    }
    use Kind::*;
    match kind {
        Flw => {
            fp_on!();
            let v = tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!())));
            fwr_s!(v as u32);
            core.set_fs_dirty();
        }
        Fld => {
            fp_on!();
            let v = tri!(mem.load::<8>(core, rs1!().wrapping_add(imm!())));
            fwr_d!(v);
            core.set_fs_dirty();
        }
        Fsw => {
            fp_on!();
            let v = fd2!();
            tri!(mem.store::<4>(core, rs1!().wrapping_add(imm!()), v));
        }
        Fsd => {
            fp_on!();
            let v = fd2!();
            tri!(mem.store::<8>(core, rs1!().wrapping_add(imm!()), v));
        }
        FaddS => {
            rm!();
            fwr_s!(fpu::add_s(fs1!(), fs2!()));
            fdone!();
        }
        FsubS => {
            rm!();
            fwr_s!(fpu::sub_s(fs1!(), fs2!()));
            fdone!();
        }
        FmulS => {
            rm!();
            fwr_s!(fpu::mul_s(fs1!(), fs2!()));
            fdone!();
        }
        FdivS => {
            rm!();
            fwr_s!(fpu::div_s(fs1!(), fs2!()));
            fdone!();
        }
        FsqrtS => {
            rm!();
            fwr_s!(fpu::sqrt_s(fs1!()));
            fdone!();
        }
        FmaddS => {
            rm!();
            fwr_s!(fpu::fma_s(fs1!(), fs2!(), fs3!()));
            fdone!();
        }
        FmsubS => {
            rm!();
            fwr_s!(fpu::fma_s(fs1!(), fs2!(), fs3!() ^ fpu::SIGN_S));
            fdone!();
        }
        FnmsubS => {
            rm!();
            fwr_s!(fpu::fma_s(fs1!() ^ fpu::SIGN_S, fs2!(), fs3!()));
            fdone!();
        }
        FnmaddS => {
            rm!();
            fwr_s!(fpu::fma_s(
                fs1!() ^ fpu::SIGN_S,
                fs2!(),
                fs3!() ^ fpu::SIGN_S
            ));
            fdone!();
        }
        FaddD => {
            rm!();
            fwr_d!(fpu::add_d(fd1!(), fd2!()));
            fdone!();
        }
        FsubD => {
            rm!();
            fwr_d!(fpu::sub_d(fd1!(), fd2!()));
            fdone!();
        }
        FmulD => {
            rm!();
            fwr_d!(fpu::mul_d(fd1!(), fd2!()));
            fdone!();
        }
        FdivD => {
            rm!();
            fwr_d!(fpu::div_d(fd1!(), fd2!()));
            fdone!();
        }
        FsqrtD => {
            rm!();
            fwr_d!(fpu::sqrt_d(fd1!()));
            fdone!();
        }
        FmaddD => {
            rm!();
            fwr_d!(fpu::fma_d(fd1!(), fd2!(), fd3!()));
            fdone!();
        }
        FmsubD => {
            rm!();
            fwr_d!(fpu::fma_d(fd1!(), fd2!(), fd3!() ^ fpu::SIGN_D));
            fdone!();
        }
        FnmsubD => {
            rm!();
            fwr_d!(fpu::fma_d(fd1!() ^ fpu::SIGN_D, fd2!(), fd3!()));
            fdone!();
        }
        FnmaddD => {
            rm!();
            fwr_d!(fpu::fma_d(
                fd1!() ^ fpu::SIGN_D,
                fd2!(),
                fd3!() ^ fpu::SIGN_D
            ));
            fdone!();
        }
        FsgnjS | FsgnjnS | FsgnjxS => {
            fp_on!();
            let (a, b) = (fs1!(), fs2!());
            let s = match kind {
                FsgnjS => b,
                FsgnjnS => !b,
                _ => a ^ b,
            } & fpu::SIGN_S;
            fwr_s!((a & !fpu::SIGN_S) | s);
            core.set_fs_dirty();
        }
        FsgnjD | FsgnjnD | FsgnjxD => {
            fp_on!();
            let (a, b) = (fd1!(), fd2!());
            let s = match kind {
                FsgnjD => b,
                FsgnjnD => !b,
                _ => a ^ b,
            } & fpu::SIGN_D;
            fwr_d!((a & !fpu::SIGN_D) | s);
            core.set_fs_dirty();
        }
        FminS | FmaxS => {
            fp_on!();
            fpu::begin(0);
            fwr_s!(fpu::minmax_s(fs1!(), fs2!(), kind == FmaxS));
            fdone!();
        }
        FminD | FmaxD => {
            fp_on!();
            fpu::begin(0);
            fwr_d!(fpu::minmax_d(fd1!(), fd2!(), kind == FmaxD));
            fdone!();
        }
        FcvtWS | FcvtWuS | FcvtLS | FcvtLuS => {
            rm!();
            let k = kind as u8 - FcvtWS as u8;
            wr!(fpu::to_int_s(fs1!(), k));
            fdone!();
        }
        FcvtWD | FcvtWuD | FcvtLD | FcvtLuD => {
            rm!();
            let k = kind as u8 - FcvtWD as u8;
            wr!(fpu::to_int_d(fd1!(), k));
            fdone!();
        }
        FcvtSW | FcvtSWu | FcvtSL | FcvtSLu => {
            rm!();
            let k = kind as u8 - FcvtSW as u8;
            fwr_s!(fpu::from_int_s(rs1!(), k));
            fdone!();
        }
        FcvtDW | FcvtDWu | FcvtDL | FcvtDLu => {
            rm!();
            let k = kind as u8 - FcvtDW as u8;
            fwr_d!(fpu::from_int_d(rs1!(), k));
            fdone!();
        }
        FcvtSD => {
            rm!();
            fwr_s!(fpu::d_to_s(fd1!()));
            fdone!();
        }
        FcvtDS => {
            rm!();
            fwr_d!(fpu::s_to_d(fs1!()));
            fdone!();
        }
        FmvXW => {
            fp_on!();
            wr!(sx32(fd1!()));
        }
        FmvXD => {
            fp_on!();
            wr!(fd1!());
        }
        FmvWX => {
            fp_on!();
            fwr_s!(rs1!() as u32);
            core.set_fs_dirty();
        }
        FmvDX => {
            fp_on!();
            fwr_d!(rs1!());
            core.set_fs_dirty();
        }
        FeqS | FltS | FleS => {
            fp_on!();
            fpu::begin(0);
            let op = match kind {
                FeqS => 0,
                FltS => 1,
                _ => 2,
            };
            wr!(fpu::cmp_s(fs1!(), fs2!(), op));
            fdone!();
        }
        FeqD | FltD | FleD => {
            fp_on!();
            fpu::begin(0);
            let op = match kind {
                FeqD => 0,
                FltD => 1,
                _ => 2,
            };
            wr!(fpu::cmp_d(fd1!(), fd2!(), op));
            fdone!();
        }
        FclassS => {
            fp_on!();
            wr!(fpu::class_s(fs1!()));
        }
        FclassD => {
            fp_on!();
            wr!(fpu::class_d(fd1!()));
        }
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
    Ok(Flow::Next)
}
