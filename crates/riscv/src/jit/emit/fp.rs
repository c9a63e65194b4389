//! F and D arithmetic, compares, conversions and moves inline with the
//! host's SSE (and FMA3 where the host has it), exact by construction: a
//! fast path whose result the host computes only where it is provably
//! the interpreter's (`crate::fpu`, soft-float with RISC-V semantics),
//! and an out-of-line call of the interpreter on the instruction (see
//! `jit::helper`) everywhere else.
//!
//! The host result is taken when the rounding mode is one the host has
//! (RNE, RTZ, RDN, RUP statically; a dynamic one only when `frm` is RNE),
//! the single-precision operands are properly NaN-boxed and the host
//! raised no flag but inexact; inexact is then accrued into `fflags` as
//! NX. Everything else (invalid, divide by zero, overflow, underflow, NaN
//! results: x86 propagates payloads and its default NaN is negative,
//! RISC-V always gives the canonical NaN; saturating conversions, RMM)
//! goes to the helper, which redoes the instruction and sets the flags,
//! so tininess, NaN and conversion rules stay the interpreter's.
//!
//! Flags without reading MXCSR (`stmxcsr` measured ~6 ns a time here,
//! several times the operation): every flag but inexact shows in the
//! result, so
//! the fast path checks the result's class instead: an exponent field
//! away from both ends (no NaN, infinity, largest binade, which a
//! directed rounding's overflow gives, zero, subnormal or smallest
//! binade, where tininess lives) for FP results, not the host's "integer
//! indefinite" for conversions to integers. And inexact matters only
//! while `fflags` lacks NX, which numeric code sets early and keeps. When
//! either check fails, the recheck path (out of line) runs the operation
//! again with the flags cleared and reads them: back to the fast path
//! with NX accrued when only inexact was raised, else to the helper.
//! MXCSR stays the default that Rust code runs with (RNE, exceptions
//! masked, no flush to zero) but
//! around an instruction with another static mode (set before, restored
//! right after; the recheck path's scratch word lives in the red zone
//! below rsp, which the kernel's signal frames skip).
//!
//! mstatus.FS (system mode): with FS off the instruction leaves for the
//! interpreter, which raises the illegal-instruction trap; those that the
//! interpreter marks dirty set FS to dirty. User mode keeps FS on and
//! dirty (see `Core::new`).

use std::mem::offset_of;

use super::{fd, CacheMap, Frame, CACHE_REGS};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};
use crate::jit::x86::*;

const RSP: u8 = 4;
/// The default MXCSR: all exceptions masked, RNE, no flags.
const MXCSR: u32 = 0x1f80;
/// Red-zone scratch: where `stmxcsr` writes and `ldmxcsr` reads.
const ST: i32 = -8;
const LD: i32 = -16;
/// MXCSR flags that send an instruction to the helper: invalid, divide
/// by zero, overflow, underflow (denormal operand, 0x02, is no IEEE flag).
const BAD: u8 = 0x1d;
const PE: u8 = 0x20;
/// mstatus.FS.
const FS: u32 = 3 << 13;

/// Displacement of a `Core` field from rbx (= `&x[16]`).
fn core_d(off: usize) -> i32 {
    off as i32 - offset_of!(Core, x) as i32 - 128
}
fn fflags_d() -> i32 {
    core_d(offset_of!(Core, fflags))
}
fn frm_d() -> i32 {
    core_d(offset_of!(Core, frm))
}
fn mstatus_d() -> i32 {
    core_d(offset_of!(Core, csr) + offset_of!(crate::cpu::Csrs, mstatus))
}

/// An out-of-line call of the interpreter on one instruction (see the
/// module's comment), entered from the `jumps` of its fast path, back to
/// `join` (the end of the instruction's code).
pub(super) struct Stub {
    jumps: Vec<usize>,
    recheck: Option<Recheck>,
    k: usize,
    insn: Insn,
    idx: u32,
    pc: u64,
    /// The cache's dirty registers at the jumps (all of them the same).
    dirty: CacheMap,
    /// The cache at `join`: every slot is reloaded from `Core::x`.
    reload: CacheMap,
    join: usize,
}

/// The exact flags of an instruction whose fast path could not tell
/// them from its result (see the module's comment): entered from
/// `jumps`, it runs the operation again with the flags cleared and reads
/// them; back to `commit` in the fast path when only inexact (accrued
/// here) or none was raised and the result is no NaN, else on to the
/// helper.
struct Recheck {
    jumps: Vec<usize>,
    op: Op,
    d: bool,
    trunc: bool,
    /// Rounding control.
    rc: u8,
    commit: usize,
}

/// Per-block FP state of the translator.
#[derive(Default)]
pub(super) struct FpState {
    pub(super) stubs: Vec<Stub>,
}

/// What an instruction is, for the emitter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Two-operand arithmetic: the SSE opcode.
    Arith(u8),
    Sqrt,
    /// Fused multiply-add: the VEX opcode of its 213 form.
    Fma(u8),
    /// Double to single.
    DToS,
    /// Single to double.
    SToD,
    /// Integer to FP: source 32 bits (signed / unsigned), 64 bits
    /// (signed / unsigned).
    FromInt {
        wide: bool,
        unsigned: bool,
    },
    /// FP to integer.
    ToInt {
        wide: bool,
        unsigned: bool,
    },
    /// Compare: the condition code of `ucomis*`.
    Cmp(u8),
    MinMax {
        max: bool,
    },
    /// Sign injection: 0 = sgnj, 1 = sgnjn, 2 = sgnjx.
    Sgnj(u8),
    /// fmv.x.w / fmv.x.d.
    MvXF,
    /// fmv.w.x / fmv.d.x.
    MvFX,
}

/// Classifies `i`: (operation, double precision).
fn classify(k: Kind) -> Option<(Op, bool)> {
    use Kind::*;
    let fi = |wide, unsigned| Op::FromInt { wide, unsigned };
    let ti = |wide, unsigned| Op::ToInt { wide, unsigned };
    Some(match k {
        FaddS => (Op::Arith(0x58), false),
        FsubS => (Op::Arith(0x5c), false),
        FmulS => (Op::Arith(0x59), false),
        FdivS => (Op::Arith(0x5e), false),
        FaddD => (Op::Arith(0x58), true),
        FsubD => (Op::Arith(0x5c), true),
        FmulD => (Op::Arith(0x59), true),
        FdivD => (Op::Arith(0x5e), true),
        FsqrtS => (Op::Sqrt, false),
        FsqrtD => (Op::Sqrt, true),
        // 213 forms: vfmadd (a*b + c), vfmsub (a*b - c), vfnmadd
        // (-(a*b) + c = RISC-V's fnmsub), vfnmsub (-(a*b) - c = fnmadd).
        FmaddS => (Op::Fma(0xa9), false),
        FmsubS => (Op::Fma(0xab), false),
        FnmsubS => (Op::Fma(0xad), false),
        FnmaddS => (Op::Fma(0xaf), false),
        FmaddD => (Op::Fma(0xa9), true),
        FmsubD => (Op::Fma(0xab), true),
        FnmsubD => (Op::Fma(0xad), true),
        FnmaddD => (Op::Fma(0xaf), true),
        FcvtSD => (Op::DToS, false),
        FcvtDS => (Op::SToD, true),
        FcvtSW => (fi(false, false), false),
        FcvtSWu => (fi(false, true), false),
        FcvtSL => (fi(true, false), false),
        FcvtSLu => (fi(true, true), false),
        FcvtDW => (fi(false, false), true),
        FcvtDWu => (fi(false, true), true),
        FcvtDL => (fi(true, false), true),
        FcvtDLu => (fi(true, true), true),
        FcvtWS => (ti(false, false), false),
        FcvtWuS => (ti(false, true), false),
        FcvtLS => (ti(true, false), false),
        FcvtLuS => (ti(true, true), false),
        FcvtWD => (ti(false, false), true),
        FcvtWuD => (ti(false, true), true),
        FcvtLD => (ti(true, false), true),
        FcvtLuD => (ti(true, true), true),
        FeqS => (Op::Cmp(CC_E), false),
        FltS => (Op::Cmp(CC_B), false),
        FleS => (Op::Cmp(CC_BE), false),
        FeqD => (Op::Cmp(CC_E), true),
        FltD => (Op::Cmp(CC_B), true),
        FleD => (Op::Cmp(CC_BE), true),
        FminS => (Op::MinMax { max: false }, false),
        FmaxS => (Op::MinMax { max: true }, false),
        FminD => (Op::MinMax { max: false }, true),
        FmaxD => (Op::MinMax { max: true }, true),
        FsgnjS => (Op::Sgnj(0), false),
        FsgnjnS => (Op::Sgnj(1), false),
        FsgnjxS => (Op::Sgnj(2), false),
        FsgnjD => (Op::Sgnj(0), true),
        FsgnjnD => (Op::Sgnj(1), true),
        FsgnjxD => (Op::Sgnj(2), true),
        FmvXW => (Op::MvXF, false),
        FmvXD => (Op::MvXF, true),
        FmvWX => (Op::MvFX, false),
        FmvDX => (Op::MvFX, true),
        _ => return None,
    })
}

const CC_BE: u8 = 0x6;
const CC_P: u8 = 0xa;
const CC_S: u8 = 0x8;

/// Whether the host has FMA3 (std caches the answer).
fn host_fma() -> bool {
    std::is_x86_feature_detected!("fma")
}

/// `pfx 0f op /r` with a memory operand `[base + disp]` (`pfx` 0: none).
fn sse_m(a: &mut Asm, pfx: u8, w: bool, op: u8, x: u8, base: u8, disp: i32) {
    if pfx != 0 {
        a.u8(pfx);
    }
    a.op_m(w, &[0x0f, op], x, base, disp);
}

/// `pfx 0f op /r`, register form (`reg` in ModRM.reg, `rm` in ModRM.rm).
fn sse_rr(a: &mut Asm, pfx: u8, w: bool, op: u8, reg: u8, rm: u8) {
    if pfx != 0 {
        a.u8(pfx);
    }
    a.op_rr(w, &[0x0f, op], reg, rm);
}

/// The scalar prefix: F2 (double) or F3 (single).
fn sp(d: bool) -> u8 {
    if d {
        0xf2
    } else {
        0xf3
    }
}

/// `ldmxcsr` of the default MXCSR with rounding control `rc` (flags
/// cleared).
fn ld_mxcsr(a: &mut Asm, rc: u8) {
    a.op_m(false, &[0xc7], 0, RSP, LD); // mov dword [rsp + LD], imm32
    a.u32(MXCSR | (rc as u32) << 13);
    a.op_m(false, &[0x0f, 0xae], 2, RSP, LD);
}

/// RISC-V static rounding mode to x86 rounding control (RMM: none).
fn rc_of(rm: u8) -> Option<u8> {
    match rm {
        0 => Some(0),
        1 => Some(3),
        2 => Some(1),
        3 => Some(2),
        _ => None,
    }
}

/// Emits `insns[k]`, the `k`th instruction of the block at `pc`, when it
/// is an FP instruction handled inline; `false` otherwise (the caller runs
/// it through the helper). `helpers`: the JIT's table of helper
/// instructions.
pub(super) fn emit(
    a: &mut Asm,
    f: &mut Frame,
    helpers: &mut Vec<Insn>,
    insns: &[Insn],
    k: usize,
    pc: u64,
) -> bool {
    let i = &insns[k];
    if matches!(
        i.kind,
        Kind::Csrrw | Kind::Csrrs | Kind::Csrrc | Kind::Csrrwi | Kind::Csrrsi | Kind::Csrrci
    ) {
        return csr(a, f, k, i, pc.wrapping_add(i.size() as u64));
    }
    let Some((op, d)) = classify(i.kind) else {
        return false;
    };
    // Instructions whose result depends on the rounding mode, and those
    // that only check it is legal (exact results).
    let rounds = match op {
        Op::Arith(_) | Op::Sqrt | Op::Fma(_) | Op::DToS => true,
        Op::FromInt { wide, .. } => wide || !d,
        Op::ToInt { .. } => true,
        Op::SToD => false,
        _ => false,
    };
    let has_rm = rounds || matches!(op, Op::SToD | Op::FromInt { .. });
    // Rounding control: None for a dynamic mode (frm, checked at run
    // time), else the static one's.
    let rc = if has_rm && i.rm != 7 {
        match (rounds, rc_of(i.rm)) {
            (true, Some(rc)) => Some(rc),
            // Exact results: any legal static mode is as good as RNE.
            (false, _) if i.rm <= 4 => Some(0),
            // RMM (the host has none), or an illegal mode (a trap the
            // interpreter raises): the helper.
            _ => return false,
        }
    } else {
        Some(0)
    };
    if matches!(op, Op::Fma(_)) && !host_fma() {
        return false;
    }
    let sys = f.sys.is_some();
    if sys {
        // FS off: the interpreter raises the illegal-instruction trap.
        a.op_m(false, &[0xf7], 0, RBX, mstatus_d()); // test dword [rbx+ms], FS
        a.u32(FS);
        f.slow.push((a.jcc(CC_E), k, a.cache.dirty_map()));
    }
    // Integer sources first: loading one may evict, and every jump to the
    // helper below must see the same cache.
    let xsrc = match op {
        Op::FromInt { .. } | Op::MvFX if i.rs1 != 0 => Some(a.x_reg(i.rs1)),
        _ => None,
    };
    let dirty = a.cache.dirty_map();
    let mut jumps = Vec::new();
    if has_rm && i.rm == 7 {
        // Dynamic: the host path only for RNE (for an exact result, any
        // legal mode); others (and illegal ones, which trap) in the helper.
        a.op_m(false, &[0x80], 7, RBX, frm_d()); // cmp byte [rbx+frm], imm8
        if rounds {
            a.u8(0);
            jumps.push(a.jcc(CC_NE));
        } else {
            a.u8(4);
            jumps.push(a.jcc(CC_A));
        }
    }
    let rc = rc.unwrap_or(0);
    // Single operands must be NaN-boxed (else they read as the canonical
    // NaN: the helper).
    if !d || matches!(op, Op::SToD) {
        let srcs: &[u8] = match op {
            Op::Fma(_) => &[i.rs1, i.rs2, i.rs3],
            Op::Arith(_) | Op::Cmp(_) | Op::MinMax { .. } | Op::Sgnj(_) => &[i.rs1, i.rs2],
            Op::Sqrt | Op::ToInt { .. } | Op::SToD => &[i.rs1],
            _ => &[],
        };
        let mut seen = 0u32;
        for &r in srcs {
            if seen & 1 << (r & 31) == 0 {
                seen |= 1 << (r & 31);
                a.op_m(false, &[0x83], 7, RBX, fd(r) + 4); // cmp dword [..+4], -1
                a.u8(0xff);
                jumps.push(a.jcc(CC_NE));
            }
        }
    }
    // Instructions that may raise flags but inexact, or inexact (see
    // the module's comment).
    let flags = matches!(
        op,
        Op::Arith(_) | Op::Sqrt | Op::Fma(_) | Op::DToS | Op::ToInt { .. }
    ) || matches!(op, Op::FromInt { .. }) && rounds;
    // fcvt to an integer toward zero truncates whatever the control says.
    let trunc = matches!(op, Op::ToInt { .. }) && rc == 3;
    let rc = if trunc { 0 } else { rc };
    if let Op::FromInt { wide, unsigned } = op {
        // The source in rax (zero-extended for wu, x0 as 0): the
        // operation converts rax (64-bit: every 32-bit source is exact
        // there, and a 64-bit one rounds by the control).
        let src = match xsrc {
            Some(h) => h,
            None => {
                a.op_rr(false, &[0x31], RAX, RAX);
                RAX
            }
        };
        match (wide, unsigned) {
            (false, false) => a.sext32(RAX, src),
            (false, true) => a.op_rr(false, &[0x89], src, RAX), // mov eax, src32
            (true, _) => a.mov_rr(RAX, src),
        }
        if wide && unsigned {
            // At or above 2^63: no host instruction (the helper).
            a.op_rr(true, &[0x85], RAX, RAX);
            jumps.push(a.jcc(CC_S));
        }
    }
    if rc != 0 {
        ld_mxcsr(a, rc);
    }
    // The operation: an FP result in xmm0, an integer one in rax.
    operation(a, op, d, i, trunc);
    if rc != 0 {
        ld_mxcsr(a, 0);
    }
    let nan_check = matches!(
        op,
        Op::Arith(_) | Op::Sqrt | Op::Fma(_) | Op::DToS | Op::SToD
    );
    let mut recheck = Vec::new();
    if matches!(op, Op::Cmp(_) | Op::MinMax { .. }) {
        // ucomis* xmm0, xmm1: unordered (a NaN) goes to the helper (NV
        // rules, canonical NaN).
        sse_rr(a, if d { 0x66 } else { 0 }, false, 0x2e, 0, 1);
        jumps.push(a.jcc(CC_P));
    } else if op == Op::SToD {
        // Exact: only a NaN needs the helper.
        sse_rr(a, 0x66, false, 0x2e, 0, 0); // ucomisd xmm0, xmm0
        jumps.push(a.jcc(CC_P));
    } else if nan_check {
        // The result's exponent field e must be in [2, max - 2]: a NaN,
        // an infinity, the largest binade (a directed rounding's
        // overflow), zero, subnormals and the smallest normal binade
        // (tiny before or after rounding) are rechecked.
        if d {
            a.u8(0x66);
            a.op_rr(true, &[0x0f, 0x7e], 0, RCX); // movq rcx, xmm0
            a.shift_imm(true, SHL, RCX, 1);
            a.shift_imm(true, SHR, RCX, 53);
            a.alu_imm(false, SUB, RCX, 2);
            a.alu_imm(false, CMP, RCX, 0x7fb);
        } else {
            a.u8(0x66);
            a.op_rr(false, &[0x0f, 0x7e], 0, RCX); // movd ecx, xmm0
            a.shift_imm(false, SHL, RCX, 1);
            a.shift_imm(false, SHR, RCX, 24);
            a.alu_imm(false, SUB, RCX, 2);
            a.alu_imm(false, CMP, RCX, 0xfb);
        }
        recheck.push(a.jcc(CC_A));
    }
    if let Op::ToInt { wide, unsigned } = op {
        // The destination's range (what does not fit: the helper
        // saturates; the recheck below reruns the same conversion).
        match (wide, unsigned) {
            (false, false) => {
                a.sext32(RCX, RAX);
                a.alu_rr(true, CMP, RCX, RAX);
                jumps.push(a.jcc(CC_NE));
            }
            (false, true) => {
                a.mov_rr(RCX, RAX);
                a.shift_imm(true, SHR, RCX, 32);
                jumps.push(a.jcc(CC_NE));
            }
            (true, false) => {}
            (true, true) => {
                a.op_rr(true, &[0x85], RAX, RAX);
                jumps.push(a.jcc(CC_S));
            }
        }
        // The host's "integer indefinite" (NaN, out of range; also a
        // true -2^63): rechecked. `neg` overflows only on it.
        a.mov_rr(RCX, RAX);
        a.op_rr(true, &[0xf7], 3, RCX); // neg rcx
        recheck.push(a.jcc(0x0)); // jo
    }
    if flags {
        // Inexact needs no flag when NX is set already; else recheck.
        a.op_m(false, &[0xf6], 0, RBX, fflags_d()); // test byte [rbx+fflags], 1
        a.u8(1);
        recheck.push(a.jcc(CC_E));
    }
    let commit = a.b.len();
    let p = sp(d);
    // The result. FP destinations go straight to `Core::f`; integer ones
    // through the register cache (no jump to the helper after them).
    let fr = fd(i.rd);
    let store_f = |a: &mut Asm, x: u8, single: bool| {
        if single {
            sse_m(a, 0xf3, false, 0x11, x, RBX, fr); // movss [rd], x
            a.op_m(false, &[0xc7], 0, RBX, fr + 4);
            a.u32(u32::MAX);
        } else {
            sse_m(a, 0xf2, false, 0x11, x, RBX, fr); // movsd [rd], x
        }
    };
    match op {
        Op::Arith(_) | Op::Sqrt | Op::Fma(_) | Op::DToS | Op::SToD | Op::FromInt { .. } => {
            store_f(a, 0, !d);
        }
        Op::ToInt { wide, .. } => {
            if wide {
                a.mov_rr(RCX, RAX);
            } else {
                a.sext32(RCX, RAX);
            }
            a.st_x(i.rd, RCX);
        }
        Op::Cmp(cc) => {
            a.setcc_rax(cc);
            a.st_x(i.rd, RAX);
        }
        Op::MinMax { max } => {
            // For ordered operands min(a, b) | min(b, a) is RISC-V's fmin
            // (equal values have equal bits but ±0, where the or gives
            // -0); max with `and` gives +0.
            let pd = if d { 0x66 } else { 0 };
            sse_rr(a, pd, false, 0x28, 2, 0); // movap* xmm2, xmm0
            let mm = if max { 0x5f } else { 0x5d };
            sse_rr(a, p, false, mm, 2, 1); // min/max xmm2, xmm1
            sse_rr(a, p, false, mm, 1, 0); // min/max xmm1, xmm0
            sse_rr(a, pd, false, if max { 0x54 } else { 0x56 }, 1, 2);
            store_f(a, 1, !d);
        }
        Op::Sgnj(kind) => {
            // Integer bit operations on the raw values.
            let w = d;
            let sh = if d { 63 } else { 31 };
            a.op_m(w, &[0x8b], RAX, RBX, fd(i.rs1));
            if i.rs1 == i.rs2 {
                match kind {
                    // fmv
                    0 => {}
                    // fneg: flip the sign
                    1 => {
                        a.op_rr(w, &[0x0f, 0xba], 7, RAX); // btc rax, sh
                        a.u8(sh);
                    }
                    // fabs: clear it
                    _ => {
                        a.op_rr(w, &[0x0f, 0xba], 6, RAX); // btr rax, sh
                        a.u8(sh);
                    }
                }
            } else {
                a.op_m(w, &[0x8b], RCX, RBX, fd(i.rs2));
                if kind == 1 {
                    a.op_rr(w, &[0xf7], 2, RCX); // not rcx
                }
                a.shift_imm(w, SHR, RCX, sh);
                a.shift_imm(w, SHL, RCX, sh);
                if kind != 2 {
                    a.op_rr(w, &[0x0f, 0xba], 6, RAX); // btr rax, sh
                    a.u8(sh);
                    a.alu_rr(w, OR, RAX, RCX);
                } else {
                    a.alu_rr(w, XOR, RAX, RCX);
                }
            }
            a.op_m(w, &[0x89], RAX, RBX, fr);
            if !d {
                a.op_m(false, &[0xc7], 0, RBX, fr + 4);
                a.u32(u32::MAX);
            }
        }
        Op::MvXF => {
            // The raw bits (fmv.x.w: the low half, sign-extended; no
            // unboxing).
            if d {
                a.load(RAX, RBX, fd(i.rs1));
            } else {
                a.op_m(true, &[0x63], RAX, RBX, fd(i.rs1)); // movsxd rax, [..]
            }
            a.st_x(i.rd, RAX);
        }
        Op::MvFX => {
            match xsrc {
                Some(h) => a.mov_rr(RAX, h),
                None => a.op_rr(false, &[0x31], RAX, RAX),
            }
            if d {
                a.store(RBX, fr, RAX);
            } else {
                a.op_m(false, &[0x89], RAX, RBX, fr);
                a.op_m(false, &[0xc7], 0, RBX, fr + 4);
                a.u32(u32::MAX);
            }
        }
    }
    // The interpreter marks FS dirty for all but fmv.x.* (and fclass).
    if sys && op != Op::MvXF {
        a.op_m(false, &[0x81], 1, RBX, mstatus_d()); // or dword [rbx+ms], FS
        a.u32(FS);
    }
    if !jumps.is_empty() || !recheck.is_empty() {
        let idx = helpers.len() as u32;
        helpers.push(*i);
        f.fp.stubs.push(Stub {
            jumps,
            recheck: (!recheck.is_empty()).then_some(Recheck {
                jumps: recheck,
                op,
                d,
                trunc,
                rc,
                commit,
            }),
            k,
            idx,
            pc,
            insn: *i,
            dirty,
            reload: a.cache.guest,
            join: a.b.len(),
        });
    }
    true
}

/// The operation of `i` (`op`, double precision `d`): an FP result in
/// xmm0, an integer one in rax (`trunc`: toward zero); the operands of
/// compares and min/max in xmm0 and xmm1. Integer sources are in rax
/// already. Touches no guest state, so the recheck path runs it again.
fn operation(a: &mut Asm, op: Op, d: bool, i: &Insn, trunc: bool) {
    let p = sp(d);
    match op {
        Op::Arith(o) => {
            sse_m(a, p, false, 0x10, 0, RBX, fd(i.rs1)); // movs* xmm0, [rs1]
            sse_m(a, p, false, o, 0, RBX, fd(i.rs2));
        }
        Op::Sqrt => sse_m(a, p, false, 0x51, 0, RBX, fd(i.rs1)),
        Op::Fma(o) => {
            sse_m(a, p, false, 0x10, 0, RBX, fd(i.rs1));
            sse_m(a, p, false, 0x10, 1, RBX, fd(i.rs2));
            // vfm*213s* xmm0, xmm1, [rs3]: xmm0 = xmm1 * xmm0 (+-) [rs3]
            a.u8(0xc4);
            a.u8(0xe2);
            a.u8((d as u8) << 7 | (!1u8 & 15) << 3 | 0x01);
            a.u8(o);
            a.m_disp(0, RBX, fd(i.rs3));
        }
        Op::DToS => sse_m(a, 0xf2, false, 0x5a, 0, RBX, fd(i.rs1)), // cvtsd2ss
        Op::SToD => sse_m(a, 0xf3, false, 0x5a, 0, RBX, fd(i.rs1)), // cvtss2sd
        Op::FromInt { .. } => {
            // xorps xmm0, xmm0 (no dependency on its old value), then
            // cvtsi2s* xmm0, rax.
            sse_rr(a, 0, false, 0x57, 0, 0);
            sse_rr(a, p, true, 0x2a, 0, RAX);
        }
        // cvt(t)s*2si rax, [rs1]: 64 bits (the caller checks the
        // destination's range).
        Op::ToInt { .. } => {
            sse_m(
                a,
                p,
                true,
                if trunc { 0x2c } else { 0x2d },
                RAX,
                RBX,
                fd(i.rs1),
            );
        }
        Op::Cmp(_) | Op::MinMax { .. } => {
            sse_m(a, p, false, 0x10, 0, RBX, fd(i.rs1));
            sse_m(a, p, false, 0x10, 1, RBX, fd(i.rs2));
        }
        Op::Sgnj(_) | Op::MvXF | Op::MvFX => {}
    }
}

/// User mode: a CSR instruction on fflags, frm or fcsr (always legal
/// there, see `Core::csr_write`) run in place, the block's last, then a
/// chained exit to `next`: numeric code reads and restores the flags
/// around library calls (glibc's `sqrt` and others), which would
/// otherwise leave for the interpreter each time. (FP instructions read
/// NX from `fflags` at run time, so a write that clears it sends the
/// next inexact one through the recheck path, see the module's comment.)
fn csr(a: &mut Asm, f: &mut Frame, k: usize, i: &Insn, next: u64) -> bool {
    use Kind::*;
    let n = i.imm;
    if f.sys.is_some() || !(1..=3).contains(&n) {
        return false;
    }
    let (ff, frm) = (fflags_d(), frm_d());
    // The source in rdx (the 5-bit immediate of the i forms).
    if matches!(i.kind, Csrrwi | Csrrsi | Csrrci) {
        a.mov_imm(RDX, i.rs1 as u64);
    } else {
        a.ld_x(RDX, i.rs1);
    }
    // The old value in rax.
    match n {
        1 => a.load(RAX, RBX, ff),
        2 => a.load(RAX, RBX, frm),
        _ => {
            a.load(RAX, RBX, frm);
            a.shift_imm(true, SHL, RAX, 5);
            a.op_m(true, &[0x0b], RAX, RBX, ff); // or rax, [fflags]
        }
    }
    // csrrs/csrrc with rs1 = x0 (or a zero immediate) do not write.
    if matches!(i.kind, Csrrw | Csrrwi) || i.rs1 != 0 {
        match i.kind {
            Csrrw | Csrrwi => {}
            Csrrs | Csrrsi => a.alu_rr(true, OR, RDX, RAX),
            _ => {
                a.op_rr(true, &[0xf7], 2, RDX); // not rdx
                a.alu_rr(true, AND, RDX, RAX);
            }
        }
        match n {
            1 => {
                a.alu_imm(true, AND, RDX, 0x1f);
                a.store(RBX, ff, RDX);
            }
            2 => {
                a.alu_imm(true, AND, RDX, 7);
                a.store(RBX, frm, RDX);
            }
            _ => {
                a.mov_rr(RCX, RDX);
                a.alu_imm(true, AND, RCX, 0x1f);
                a.store(RBX, ff, RCX);
                a.shift_imm(true, SHR, RDX, 5);
                a.alu_imm(true, AND, RDX, 7);
                a.store(RBX, frm, RDX);
            }
        }
    }
    a.st_x(i.rd, RAX);
    a.flush_dirty(a.cache.dirty_map());
    a.add_icount(k as u32 + 1);
    f.static_exit(a, next);
    true
}

/// The out-of-line helper calls of the block's inline FP instructions
/// (see [`Stub`]); `helper`: the address of the instruction helper.
pub(super) fn stubs(a: &mut Asm, f: &mut Frame, helper: usize) {
    for mut s in std::mem::take(&mut f.fp.stubs) {
        if let Some(r) = s.recheck.take() {
            for at in r.jumps {
                a.bind(at);
            }
            ld_mxcsr(a, r.rc);
            operation(a, r.op, r.d, &s.insn, r.trunc);
            a.op_m(false, &[0x0f, 0xae], 3, RSP, ST); // stmxcsr [rsp + ST]
            ld_mxcsr(a, 0);
            a.op_m(false, &[0xf6], 0, RSP, ST); // test byte [rsp + ST], BAD
            a.u8(BAD);
            s.jumps.push(a.jcc(CC_NE));
            if !matches!(r.op, Op::ToInt { .. } | Op::FromInt { .. }) {
                // A NaN from a quiet NaN raises nothing.
                sse_rr(a, if r.d { 0x66 } else { 0 }, false, 0x2e, 0, 0);
                s.jumps.push(a.jcc(CC_P));
            }
            a.op_m(false, &[0xf6], 0, RSP, ST); // test byte [rsp + ST], PE
            a.u8(PE);
            let exact = a.jcc(CC_E);
            a.op_m(false, &[0x80], 1, RBX, fflags_d()); // or byte [rbx+fflags], 1
            a.u8(1);
            a.bind(exact);
            a.jmp_abs(a.base + r.commit);
        }
        for at in s.jumps {
            a.bind(at);
        }
        // The helper reads and writes `Core::x`, and clobbers the
        // caller-saved cache registers.
        a.flush_dirty(s.dirty);
        a.mov_rr(RDI, R14);
        a.mov_imm(RSI, s.idx as u64);
        a.mov_imm(RDX, s.pc);
        a.mov_imm(RAX, helper as u64);
        a.b.extend_from_slice(&[0xff, 0xd0]); // call rax
        a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
                                           // A trap (nothing changed, all written back): the interpreter.
        f.slow.push((a.jcc(CC_NE), s.k, [0; CACHE_REGS.len()]));
        for (slot, &g) in s.reload.iter().enumerate() {
            if g != 0 {
                a.load(CACHE_REGS[slot], RBX, super::xd(g));
            }
        }
        a.jmp_abs(a.base + s.join);
    }
}
