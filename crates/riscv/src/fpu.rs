//! IEEE 754 arithmetic with RISC-V semantics (canonical NaNs, NaN boxing,
//! saturating conversions, fmin/fmax of the 2019 spec) on top of `softfp`.
//!
//! `softfp` asks for the rounding mode and reports exception flags through
//! two callbacks. They use a per-thread cell: each hart runs on its own host
//! thread and sets the mode right before each operation, collecting the
//! flags right after, so no state leaks between harts.

use std::cell::Cell;

use softfp::{Class, ExceptionFlags, RoundingMode, F32, F64};

thread_local! {
    static RM: Cell<RoundingMode> = const { Cell::new(RoundingMode::TiesToEven) };
    static FLAGS: Cell<u32> = const { Cell::new(0) };
}

/// `softfp` callback: the rounding mode of the operation in progress.
#[no_mangle]
pub fn softfp_get_rounding_mode() -> RoundingMode {
    RM.with(|c| c.get())
}

/// `softfp` callback: accumulate exception flags.
#[no_mangle]
pub fn softfp_set_exception_flags(f: ExceptionFlags) {
    FLAGS.with(|c| c.set(c.get() | f.bits()));
}

/// Sets the rounding mode (a valid RISC-V rm value 0..=4) for the next
/// operations and clears the flags.
#[inline]
pub(crate) fn begin(rm: u64) {
    let m = match rm {
        0 => RoundingMode::TiesToEven,
        1 => RoundingMode::TowardZero,
        2 => RoundingMode::TowardNegative,
        3 => RoundingMode::TowardPositive,
        _ => RoundingMode::TiesToAway,
    };
    RM.with(|c| c.set(m));
    FLAGS.with(|c| c.set(0));
}

/// The flags raised since `begin` (RISC-V fflags bit order, which is
/// softfp's).
#[inline]
pub(crate) fn flags() -> u64 {
    FLAGS.with(|c| c.get()) as u64
}

fn raise(f: ExceptionFlags) {
    softfp_set_exception_flags(f);
}

pub(crate) const CANON_S: u32 = 0x7fc0_0000;
pub(crate) const CANON_D: u64 = 0x7ff8_0000_0000_0000;

/// Reads a single from a 64-bit FP register: improperly NaN-boxed values
/// read as the canonical NaN.
#[inline]
pub(crate) fn unbox(v: u64) -> u32 {
    if v >> 32 == 0xffff_ffff {
        v as u32
    } else {
        CANON_S
    }
}

#[inline]
pub(crate) fn boxs(v: u32) -> u64 {
    0xffff_ffff_0000_0000 | v as u64
}

fn is_nan32(v: u32) -> bool {
    v & 0x7f80_0000 == 0x7f80_0000 && v & 0x007f_ffff != 0
}
fn is_snan32(v: u32) -> bool {
    is_nan32(v) && v & 0x0040_0000 == 0
}
fn is_nan64(v: u64) -> bool {
    v & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000 && v & 0x000f_ffff_ffff_ffff != 0
}
fn is_snan64(v: u64) -> bool {
    is_nan64(v) && v & 0x0008_0000_0000_0000 == 0
}

/// Canonicalises NaN results (softfp already returns the canonical quiet
/// NaN, but make it explicit so a library change cannot leak payloads).
fn c32(r: F32) -> u32 {
    if is_nan32(r.0) {
        CANON_S
    } else {
        r.0
    }
}
fn c64(r: F64) -> u64 {
    if is_nan64(r.0) {
        CANON_D
    } else {
        r.0
    }
}

pub(crate) fn add_s(a: u32, b: u32) -> u32 {
    c32(F32::new(a) + F32::new(b))
}
pub(crate) fn sub_s(a: u32, b: u32) -> u32 {
    c32(F32::new(a) - F32::new(b))
}
pub(crate) fn mul_s(a: u32, b: u32) -> u32 {
    c32(F32::new(a) * F32::new(b))
}
pub(crate) fn div_s(a: u32, b: u32) -> u32 {
    c32(F32::new(a) / F32::new(b))
}
pub(crate) fn sqrt_s(a: u32) -> u32 {
    // softfp mishandles NaN inputs (raises DZ); negative inputs are
    // invalid whatever their magnitude.
    if is_nan32(a) || (a & SIGN_S != 0 && a != SIGN_S) {
        if !is_nan32(a) || is_snan32(a) {
            raise(ExceptionFlags::INVALID_OPERATION);
        }
        return CANON_S;
    }
    c32(F32::new(a).square_root())
}
pub(crate) fn fma_s(a: u32, b: u32, c: u32) -> u32 {
    let (sign, exp) = (SIGN_S as u64, 0x7f80_0000);
    if let Some(r) = fma_zero_product(a as u64, b as u64, c as u64, sign, exp, is_nan32(c)) {
        return r as u32;
    }
    c32(F32::fused_multiply_add(
        F32::new(a),
        F32::new(b),
        F32::new(c),
    ))
}

/// softfp gets the sign of `0 * x + c` wrong in some rounding modes; when
/// the product is an exact zero (finite operands, one of them zero) the
/// result is `c`, or a signed zero by the IEEE rules for `±0 + ±0`.
fn fma_zero_product(a: u64, b: u64, c: u64, sign: u64, exp: u64, c_nan: bool) -> Option<u64> {
    let mag = sign - 1;
    let zero = |v: u64| v & mag == 0;
    let finite = |v: u64| v & exp != exp;
    if !(finite(a) && finite(b) && (zero(a) || zero(b))) || c_nan {
        return None;
    }
    if !zero(c) {
        return Some(c);
    }
    let ps = (a ^ b) & sign;
    let cs = c & sign;
    Some(if ps == cs {
        ps
    } else if RM.with(|m| m.get()) == RoundingMode::TowardNegative {
        sign
    } else {
        0
    })
}
pub(crate) fn add_d(a: u64, b: u64) -> u64 {
    c64(F64::new(a) + F64::new(b))
}
pub(crate) fn sub_d(a: u64, b: u64) -> u64 {
    c64(F64::new(a) - F64::new(b))
}
pub(crate) fn mul_d(a: u64, b: u64) -> u64 {
    c64(F64::new(a) * F64::new(b))
}
pub(crate) fn div_d(a: u64, b: u64) -> u64 {
    c64(F64::new(a) / F64::new(b))
}
pub(crate) fn sqrt_d(a: u64) -> u64 {
    if is_nan64(a) || (a & SIGN_D != 0 && a != SIGN_D) {
        if !is_nan64(a) || is_snan64(a) {
            raise(ExceptionFlags::INVALID_OPERATION);
        }
        return CANON_D;
    }
    c64(F64::new(a).square_root())
}
pub(crate) fn fma_d(a: u64, b: u64, c: u64) -> u64 {
    if let Some(r) = fma_zero_product(a, b, c, SIGN_D, 0x7ff0_0000_0000_0000, is_nan64(c)) {
        return r;
    }
    c64(F64::fused_multiply_add(
        F64::new(a),
        F64::new(b),
        F64::new(c),
    ))
}

pub(crate) const SIGN_S: u32 = 0x8000_0000;
pub(crate) const SIGN_D: u64 = 0x8000_0000_0000_0000;

/// fmin/fmax (RISC-V 2.2+: minimumNumber with -0 < +0; any signaling NaN
/// input raises NV; two NaNs give the canonical NaN).
pub(crate) fn minmax_s(a: u32, b: u32, max: bool) -> u32 {
    if is_snan32(a) || is_snan32(b) {
        raise(ExceptionFlags::INVALID_OPERATION);
    }
    match (is_nan32(a), is_nan32(b)) {
        (true, true) => return CANON_S,
        (true, false) => return b,
        (false, true) => return a,
        _ => {}
    }
    let (fa, fb) = (f32::from_bits(a), f32::from_bits(b));
    let a_less = fa < fb || (fa == fb && a & SIGN_S != 0 && b & SIGN_S == 0);
    if a_less != max {
        a
    } else {
        b
    }
}

pub(crate) fn minmax_d(a: u64, b: u64, max: bool) -> u64 {
    if is_snan64(a) || is_snan64(b) {
        raise(ExceptionFlags::INVALID_OPERATION);
    }
    match (is_nan64(a), is_nan64(b)) {
        (true, true) => return CANON_D,
        (true, false) => return b,
        (false, true) => return a,
        _ => {}
    }
    let (fa, fb) = (f64::from_bits(a), f64::from_bits(b));
    let a_less = fa < fb || (fa == fb && a & SIGN_D != 0 && b & SIGN_D == 0);
    if a_less != max {
        a
    } else {
        b
    }
}

/// feq (quiet: NV only for signaling NaNs), flt/fle (signaling: NV for
/// any NaN).
pub(crate) fn cmp_s(a: u32, b: u32, op: u8) -> u64 {
    if is_nan32(a) || is_nan32(b) {
        if op != 0 || is_snan32(a) || is_snan32(b) {
            raise(ExceptionFlags::INVALID_OPERATION);
        }
        return 0;
    }
    let (fa, fb) = (f32::from_bits(a), f32::from_bits(b));
    (match op {
        0 => fa == fb,
        1 => fa < fb,
        _ => fa <= fb,
    }) as u64
}

pub(crate) fn cmp_d(a: u64, b: u64, op: u8) -> u64 {
    if is_nan64(a) || is_nan64(b) {
        if op != 0 || is_snan64(a) || is_snan64(b) {
            raise(ExceptionFlags::INVALID_OPERATION);
        }
        return 0;
    }
    let (fa, fb) = (f64::from_bits(a), f64::from_bits(b));
    (match op {
        0 => fa == fb,
        1 => fa < fb,
        _ => fa <= fb,
    }) as u64
}

fn class_bits(c: Class) -> u64 {
    1 << (c as u32)
}

pub(crate) fn class_s(a: u32) -> u64 {
    class_bits(F32::new(a).classify())
}
pub(crate) fn class_d(a: u64) -> u64 {
    class_bits(F64::new(a).classify())
}

/// Float to integer conversions: `kind` 0 = w, 1 = wu, 2 = l, 3 = lu. The
/// result is the 64-bit register value (32-bit results sign-extended).
/// Saturated result for magnitudes of at least 2^32 (w, wu) or 2^64 (l,
/// lu), where softfp's shift overflows; `exp` is the unbiased exponent.
fn saturate(exp: i32, neg: bool, kind: u8) -> Option<u64> {
    let width = if kind < 2 { 32 } else { 64 };
    if exp < width {
        return None;
    }
    raise(ExceptionFlags::INVALID_OPERATION);
    Some(match (kind, neg) {
        (0, false) => 0x7fff_ffff,
        (0, true) => 0xffff_ffff_8000_0000,
        (2, false) => i64::MAX as u64,
        (2, true) => i64::MIN as u64,
        (_, false) => u64::MAX,
        (_, true) => 0,
    })
}

pub(crate) fn to_int_s(a: u32, kind: u8) -> u64 {
    if !is_nan32(a) {
        if let Some(r) = saturate(((a >> 23) & 0xff) as i32 - 127, a & SIGN_S != 0, kind) {
            return r;
        }
    }
    let f = F32::new(a);
    match kind {
        0 => f.convert_to_sint::<u32>() as i32 as u64,
        1 => f.convert_to_uint::<u32>() as i32 as u64,
        2 => f.convert_to_sint::<u64>(),
        _ => f.convert_to_uint::<u64>(),
    }
}

pub(crate) fn to_int_d(a: u64, kind: u8) -> u64 {
    if !is_nan64(a) {
        if let Some(r) = saturate(((a >> 52) & 0x7ff) as i32 - 1023, a & SIGN_D != 0, kind) {
            return r;
        }
    }
    let f = F64::new(a);
    match kind {
        0 => f.convert_to_sint::<u32>() as i32 as u64,
        1 => f.convert_to_uint::<u32>() as i32 as u64,
        2 => f.convert_to_sint::<u64>(),
        _ => f.convert_to_uint::<u64>(),
    }
}

/// Integer to float: `kind` as in [`to_int_s`], `v` the source register.
pub(crate) fn from_int_s(v: u64, kind: u8) -> u32 {
    match kind {
        0 => F32::convert_from_sint::<u32>(v as u32).0,
        1 => F32::convert_from_uint::<u32>(v as u32).0,
        2 => F32::convert_from_sint::<u64>(v).0,
        _ => F32::convert_from_uint::<u64>(v).0,
    }
}

pub(crate) fn from_int_d(v: u64, kind: u8) -> u64 {
    match kind {
        0 => F64::convert_from_sint::<u32>(v as u32).0,
        1 => F64::convert_from_uint::<u32>(v as u32).0,
        2 => F64::convert_from_sint::<u64>(v).0,
        _ => F64::convert_from_uint::<u64>(v).0,
    }
}

pub(crate) fn s_to_d(a: u32) -> u64 {
    c64(F32::new(a).convert_format::<softfp::F64Desc>())
}

pub(crate) fn d_to_s(a: u64) -> u32 {
    c32(F64::new(a).convert_format::<softfp::F32Desc>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(rm: u64, f: impl FnOnce() -> T) -> (T, u64) {
        begin(rm);
        let r = f();
        (r, flags())
    }

    #[test]
    fn basic_arith_and_flags() {
        let one = 1.0f32.to_bits();
        let three = 3.0f32.to_bits();
        let (r, fl) = run(0, || div_s(one, three));
        assert_eq!(r, (1.0f32 / 3.0).to_bits());
        assert_eq!(fl, 1); // NX
        let (r, fl) = run(1, || div_s(one, three));
        // 1/3 = 0x3eaaaaab rounded to nearest (the tail is above half).
        assert_eq!(r, (1.0f32 / 3.0).to_bits() - 1);
        assert_eq!(fl, 1);
        let (r, _) = run(3, || div_s(one, three));
        assert_eq!(r, (1.0f32 / 3.0).to_bits());
        let (r, _) = run(2, || div_s(one | SIGN_S, three));
        assert_eq!(r, (-1.0f32 / 3.0).to_bits());
        let (r, _) = run(3, || div_s(one | SIGN_S, three));
        assert_eq!(r, (-1.0f32 / 3.0).to_bits() - 1);
        let (r, fl) = run(0, || div_d(1.0f64.to_bits(), 0.0f64.to_bits()));
        assert_eq!(r, f64::INFINITY.to_bits());
        assert_eq!(fl, 8); // DZ
        let (r, fl) = run(0, || sqrt_d((-1.0f64).to_bits()));
        assert_eq!((r, fl), (CANON_D, 16));
    }

    #[test]
    fn minmax_zero_and_nan() {
        let pz = 0.0f32.to_bits();
        let nz = (-0.0f32).to_bits();
        assert_eq!(run(0, || minmax_s(pz, nz, false)).0, nz);
        assert_eq!(run(0, || minmax_s(nz, pz, true)).0, pz);
        let snan = 0x7f80_0001;
        let (r, fl) = run(0, || minmax_s(snan, one_s(), false));
        assert_eq!((r, fl), (one_s(), 16));
        let (r, fl) = run(0, || minmax_s(CANON_S, CANON_S, true));
        assert_eq!((r, fl), (CANON_S, 0));
    }

    fn one_s() -> u32 {
        1.0f32.to_bits()
    }

    #[test]
    fn conversions_saturate() {
        let (r, fl) = run(0, || to_int_d(f64::NAN.to_bits(), 0));
        assert_eq!((r, fl), (0x7fff_ffff, 16));
        let (r, fl) = run(0, || to_int_d(f64::NAN.to_bits(), 1));
        assert_eq!((r, fl), (u64::MAX, 16));
        let (r, fl) = run(0, || to_int_d((-1.0f64).to_bits(), 3));
        assert_eq!((r, fl), (0, 16));
        let (r, fl) = run(0, || to_int_d((-3e30f64).to_bits(), 2));
        assert_eq!((r, fl), (i64::MIN as u64, 16));
        let (r, fl) = run(1, || to_int_d((-2.5f64).to_bits(), 2));
        assert_eq!((r, fl), (-2i64 as u64, 1));
        let (r, fl) = run(4, || to_int_d(2.5f64.to_bits(), 0));
        assert_eq!((r, fl), (3, 1));
        let (r, _) = run(0, || from_int_s(u64::MAX, 2));
        assert_eq!(r, (-1.0f32).to_bits());
        assert_eq!(unbox(0x0000_0000_3f80_0000), CANON_S);
        assert_eq!(class_s(CANON_S), 1 << 9);
        assert_eq!(class_d((-0.0f64).to_bits()), 1 << 3);
    }
}
