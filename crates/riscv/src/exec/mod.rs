//! The interpreter: runs one decoded block ([`exec_block`]), monomorphised
//! over the memory path ([`Mem`]) so loads and stores inline into the loop.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::cpu::{cause, mstatus, Core, Priv, Trap};
use crate::decode::{Insn, Kind};
use crate::fpu;
use crate::mmu::Mem;

/// A trap, the pc of the trapping instruction, and the number of
/// instructions of the block retired before it.
pub(crate) type Fault = (Trap, u64, u32);

#[inline(always)]
fn sx32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

/// Executes one block. Returns the next pc, or the trap with the pc of the
/// trapping instruction and the number of instructions retired before it.
#[inline(always)]
pub(crate) fn exec_block<M: Mem>(
    core: &mut Core,
    mem: &mut M,
    insns: &[Insn],
    start: u64,
) -> Result<u64, Fault> {
    macro_rules! x {
        ($r:expr) => {
            core.x[($r as usize) & 63]
        };
    }
    // Every block ends with an instruction whose arm returns (a
    // terminator, see `Insn::ends_block`, or the BlockEnd sentinel). With
    // that checked once here, the loop needs no end test and no counter.
    if !insns.last().is_some_and(Insn::ends_block) {
        return Ok(start);
    }
    let base = insns.as_ptr();
    let mut p = base;
    loop {
        // SAFETY: `p` stays inside `insns`: the last element's arm returns,
        // so the loop never advances past it.
        let i = unsafe { &*p };
        // SAFETY: at most one past an element of `insns` (see above).
        p = unsafe { p.add(1) };
        // Instructions retired before this one (only needed on traps).
        // SAFETY: both pointers are inside (or one past) `insns`.
        let n = || unsafe { p.offset_from(base) as u32 - 1 };
        macro_rules! trap {
            ($t:expr) => {
                return Err(($t, pc!(), n()))
            };
        }
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(t) => trap!(t),
                }
            };
        }
        // Operands are macros, not locals, so each arm loads only what it
        // uses (hoisted loads cost every instruction).
        macro_rules! pc {
            () => {
                start.wrapping_add(i.off as u64)
            };
        }
        macro_rules! next {
            () => {
                pc!().wrapping_add(i.size() as u64)
            };
        }
        macro_rules! wr {
            ($v:expr) => {{
                let v = $v;
                x!(i.rd) = v;
            }};
        }
        macro_rules! branch {
            ($c:expr) => {{
                return Ok(if $c {
                    pc!().wrapping_add(imm!())
                } else {
                    next!()
                });
            }};
        }
        macro_rules! ill {
            () => {
                trap!(Trap::illegal(i.raw))
            };
        }
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
        macro_rules! rs1 {
            () => {
                x!(i.rs1)
            };
        }
        macro_rules! rs2 {
            () => {
                x!(i.rs2)
            };
        }
        macro_rules! imm {
            () => {
                (i.imm as i64 as u64)
            };
        }
        use Kind::*;
        match i.kind {
            Illegal => ill!(),
            BlockEnd => return Ok(pc!()),
            Lui => wr!(imm!()),
            Auipc => wr!(pc!().wrapping_add(imm!())),
            Jal => {
                wr!(next!());
                return Ok(pc!().wrapping_add(imm!()));
            }
            Jalr => {
                let t = rs1!().wrapping_add(imm!()) & !1;
                wr!(next!());
                return Ok(t);
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
            FenceI => {
                core.code_dirty = true;
                core.recheck = true;
                return Ok(next!());
            }
            Ecall => trap!(Trap {
                cause: match core.prv {
                    Priv::User => cause::ECALL_U,
                    Priv::Supervisor => cause::ECALL_S,
                    Priv::Machine => cause::ECALL_M,
                },
                tval: 0,
            }),
            Ebreak => trap!(Trap {
                cause: cause::BREAKPOINT,
                tval: pc!(),
            }),
            Mret => {
                if core.user_only {
                    ill!();
                }
                return match core.do_mret() {
                    Ok(t) => Ok(t),
                    Err(t) => Err((t, pc!(), n())),
                };
            }
            Sret => {
                if core.user_only {
                    ill!();
                }
                return match core.do_sret() {
                    Ok(t) => Ok(t),
                    Err(t) => Err((t, pc!(), n())),
                };
            }
            Wfi => {
                if core.user_only
                    || core.prv == Priv::User
                    || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TW != 0)
                {
                    ill!();
                }
                core.wfi = true;
                core.recheck = true;
                return Ok(next!());
            }
            SfenceVma => {
                if core.user_only
                    || core.prv == Priv::User
                    || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TVM != 0)
                {
                    ill!();
                }
                core.tlb_dirty = true;
                core.recheck = true;
                return Ok(next!());
            }
            Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci => {
                let n16 = i.imm as u16;
                let src = if matches!(i.kind, Csrrw | Csrrs | Csrrc) {
                    rs1!()
                } else {
                    i.rs1 as u64
                };
                // csrrw with rd=x0 does not read; csrrs/c with rs1!()=x0 do not write.
                let writes = matches!(i.kind, Csrrw | Csrrwi) || i.rs1 != 0;
                let reads = !(matches!(i.kind, Csrrw | Csrrwi) && i.rd == crate::decode::ZERO_SINK);
                // Counters: retire the block's earlier instructions now so a
                // read sees them; a write of minstret/mcycle suppresses the
                // increment of the writing instruction (the block's last).
                core.instret = core.instret.wrapping_add(n() as u64);
                let old = if reads {
                    match core.csr_read(n16) {
                        Ok(v) => v,
                        Err(()) => {
                            core.instret = core.instret.wrapping_sub(n() as u64);
                            ill!()
                        }
                    }
                } else {
                    0
                };
                if writes {
                    let new = match i.kind {
                        Csrrw | Csrrwi => src,
                        Csrrs | Csrrsi => core.csr_rmw_base(n16, old) | src,
                        _ => core.csr_rmw_base(n16, old) & !src,
                    };
                    if core.csr_write(n16, new).is_err() {
                        core.instret = core.instret.wrapping_sub(n() as u64);
                        ill!();
                    }
                    core.recheck = true;
                }
                let counter_written =
                    writes && matches!(n16, crate::cpu::csr::MINSTRET | crate::cpu::csr::MCYCLE);
                let retired = n() as u64 + counter_written as u64;
                core.instret = core.instret.wrapping_sub(retired);
                wr!(old);
                return Ok(next!());
            }
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
            // ---- F / D ----
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
                let s = match i.kind {
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
                let s = match i.kind {
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
                fwr_s!(fpu::minmax_s(fs1!(), fs2!(), i.kind == FmaxS));
                fdone!();
            }
            FminD | FmaxD => {
                fp_on!();
                fpu::begin(0);
                fwr_d!(fpu::minmax_d(fd1!(), fd2!(), i.kind == FmaxD));
                fdone!();
            }
            FcvtWS | FcvtWuS | FcvtLS | FcvtLuS => {
                rm!();
                let k = i.kind as u8 - FcvtWS as u8;
                wr!(fpu::to_int_s(fs1!(), k));
                fdone!();
            }
            FcvtWD | FcvtWuD | FcvtLD | FcvtLuD => {
                rm!();
                let k = i.kind as u8 - FcvtWD as u8;
                wr!(fpu::to_int_d(fd1!(), k));
                fdone!();
            }
            FcvtSW | FcvtSWu | FcvtSL | FcvtSLu => {
                rm!();
                let k = i.kind as u8 - FcvtSW as u8;
                fwr_s!(fpu::from_int_s(rs1!(), k));
                fdone!();
            }
            FcvtDW | FcvtDWu | FcvtDL | FcvtDLu => {
                rm!();
                let k = i.kind as u8 - FcvtDW as u8;
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
                let op = match i.kind {
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
                let op = match i.kind {
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
        }
    }
}
