//! Inline FP (see `fp`) against the interpreter: random sequences of F
//! and D instructions over special operands (NaNs signalling and quiet,
//! with payloads and negative, improperly boxed singles, ±0, ±inf,
//! subnormals, the overflow and underflow edges, values whose rounding
//! differs per mode, the integer conversions' range edges) in all five
//! rounding modes, static and dynamic (frm changed by `fsrm` between
//! blocks, illegal ones included); registers, FP registers, fcsr, the
//! pc and the retired count must agree.

use crate::{perm, Hart, UserSpace};

const CODE: u64 = 0x10000;

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Doubles worth testing.
const DOUBLES: [u64; 36] = [
    0,
    1 << 63,
    0x3ff0_0000_0000_0000, // 1
    0xbff0_0000_0000_0000, // -1
    0x7ff0_0000_0000_0000, // inf
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_0000, // canonical NaN
    0x7ff8_0000_0000_0123, // quiet NaN with payload
    0xfff8_0000_0000_0000, // negative quiet NaN (x86's default)
    0x7ff0_0000_0000_0001, // signalling NaN
    0x7ff4_0000_0000_0000, // signalling NaN
    1,                     // smallest subnormal
    0x000f_ffff_ffff_ffff, // largest subnormal
    0x0010_0000_0000_0000, // smallest normal
    0x0010_0000_0000_0001, // just above
    0x8010_0000_0000_0000, // -smallest normal
    0x7fef_ffff_ffff_ffff, // largest finite
    0xffef_ffff_ffff_ffff, // -largest finite
    0x3fd5_5555_5555_5555, // 1/3
    0x3ff8_0000_0000_0000, // 1.5
    0x4004_0000_0000_0000, // 2.5
    0xc004_0000_0000_0000, // -2.5
    0x3fe0_0000_0000_0000, // 0.5
    0xbfe0_0000_0000_0000, // -0.5
    0xbfd3_3333_3333_3333, // -0.3
    0x41df_ffff_ffc0_0000, // 2^31 - 1
    0x41e0_0000_0000_0000, // 2^31
    0xc1e0_0000_0000_0000, // -2^31
    0x41ef_ffff_ffe0_0000, // 2^32 - 1
    0x41f0_0000_0000_0000, // 2^32
    0x43e0_0000_0000_0000, // 2^63
    0xc3e0_0000_0000_0000, // -2^63
    0x43f0_0000_0000_0000, // 2^64
    0x4340_0000_0000_0001, // 2^54 + 2: ties in singles
    0x3ca0_0000_0000_0000, // 2^-53
    0x4170_0000_1000_0000, // 2^24 + 2^-4 (ish)
];

/// Singles worth testing (boxed when used).
const SINGLES: [u32; 30] = [
    0,
    0x8000_0000,
    0x3f80_0000, // 1
    0xbf80_0000,
    0x7f80_0000, // inf
    0xff80_0000,
    0x7fc0_0000, // canonical NaN
    0x7fc0_0123,
    0xffc0_0000,
    0x7f80_0001, // signalling
    0x7fa0_0000,
    1,
    0x007f_ffff,
    0x0080_0000, // smallest normal
    0x0080_0001,
    0x8080_0000,
    0x7f7f_ffff, // largest finite
    0xff7f_ffff,
    0x3eaa_aaab, // 1/3
    0x3fc0_0000,
    0x4020_0000, // 2.5
    0xc020_0000,
    0x3f00_0000,
    0xbf00_0000,
    0x4f00_0000, // 2^31
    0xcf00_0000,
    0x4f80_0000, // 2^32
    0x5f00_0000, // 2^63
    0x4b80_0001, // 2^24 + 2
    0x3380_0000, // 2^-24
];

const INTS: [u64; 14] = [
    0,
    1,
    u64::MAX,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff_ffff_8000_0000,
    0x0100_0001,
    0x0020_0000_0000_0001,
    i64::MAX as u64,
    1 << 63,
    0x8000_0000_0000_0401,
    0x7fff_ffff_ffff_fdff,
    12345,
];

/// A random FP register value: a double, a boxed single, an improperly
/// boxed single, or random bits.
fn fval(rng: &mut u64) -> u64 {
    match next(rng) % 8 {
        0..=2 => DOUBLES[(next(rng) as usize) % DOUBLES.len()],
        3..=5 => 0xffff_ffff_0000_0000 | SINGLES[(next(rng) as usize) % SINGLES.len()] as u64,
        6 => SINGLES[(next(rng) as usize) % SINGLES.len()] as u64,
        _ => {
            let v = next(rng);
            if v & 1 == 0 {
                v | 0xffff_ffff_0000_0000
            } else {
                v
            }
        }
    }
}

fn xval(rng: &mut u64) -> u64 {
    match next(rng) % 3 {
        0 | 1 => INTS[(next(rng) as usize) % INTS.len()],
        _ => next(rng),
    }
}

fn op_fp(f7: u32, rs2: u32, rs1: u32, rm: u32, rd: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (rm << 12) | (rd << 7) | 0x53
}

/// A random rounding mode field: mostly legal static ones and dynamic,
/// sometimes an illegal one (a trap).
fn rm(rng: &mut u64) -> u32 {
    match next(rng) % 16 {
        0..=4 => 7,
        15 => 5 + (next(rng) % 2) as u32,
        n => (n % 5) as u32,
    }
}

/// One random F/D instruction (or an fsrm / fflags write, which end the
/// block: the next one starts with another mode).
fn random_insn(rng: &mut u64) -> u32 {
    let fr = |rng: &mut u64| (next(rng) % 8) as u32;
    let (rd, rs1, rs2, rs3) = (fr(rng), fr(rng), fr(rng), fr(rng));
    let xd = 10 + (next(rng) % 4) as u32;
    let xs = 10 + (next(rng) % 4) as u32;
    let fmt = (next(rng) % 2) as u32;
    let m = rm(rng);
    match next(rng) % 23 {
        0..=3 => {
            // fadd, fsub, fmul, fdiv
            let f5 = (next(rng) % 4) as u32;
            op_fp(f5 << 2 | fmt, rs2, rs1, m, rd)
        }
        4 => op_fp(0x0b << 2 | fmt, 0, rs1, m, rd), // fsqrt
        5 | 6 => {
            let op = [0x43, 0x47, 0x4b, 0x4f][(next(rng) % 4) as usize];
            (rs3 << 27) | (fmt << 25) | (rs2 << 20) | (rs1 << 15) | (m << 12) | (rd << 7) | op
        }
        7 => op_fp(0x04 << 2 | fmt, rs2, rs1, (next(rng) % 3) as u32, rd), // fsgnj*
        8 => op_fp(0x05 << 2 | fmt, rs2, rs1, (next(rng) % 2) as u32, rd), // fmin/fmax
        9 => op_fp(0x14 << 2 | fmt, rs2, rs1, (next(rng) % 3) as u32, xd), // fle/flt/feq
        10 | 11 => op_fp(0x18 << 2 | fmt, (next(rng) % 4) as u32, rs1, m, xd), // fcvt.int.fp
        12 | 13 => op_fp(0x1a << 2 | fmt, (next(rng) % 4) as u32, xs, m, rd), // fcvt.fp.int
        14 => op_fp(0x20, 1, rs1, m, rd),                                  // fcvt.s.d
        15 => op_fp(0x21, 0, rs1, m, rd),                                  // fcvt.d.s
        16 => op_fp(0x1c << 2 | fmt, 0, rs1, 0, xd),                       // fmv.x.*
        17 => op_fp(0x1e << 2 | fmt, 0, xs, 0, rd),                        // fmv.*.x
        18 => op_fp(0x1c << 2 | fmt, 0, rs1, 1, xd),                       // fclass
        19 => {
            // fsrmi (csrrwi x0, frm, imm): 0..7
            let imm = (next(rng) % 8) as u32;
            (2 << 20) | (imm << 15) | (5 << 12) | 0x73
        }
        20 => {
            // Any CSR instruction on fflags, frm or fcsr: register or
            // immediate forms, x0 sources (no write) included.
            let n = 1 + (next(rng) % 3) as u32;
            let f3 = [1, 2, 3, 5, 6, 7][(next(rng) % 6) as usize];
            let src = match next(rng) % 3 {
                0 => 0,
                1 => xs,
                _ => (next(rng) % 32) as u32,
            };
            let rd = if next(rng).is_multiple_of(2) { 0 } else { xd };
            (n << 20) | (src << 15) | (f3 << 12) | (rd << 7) | 0x73
        }
        21 => (1 << 20) | (5 << 12) | 0x73, // csrwi fflags, 0
        _ => {
            // An integer op between FP ones (the register cache holds
            // what FP conversions and compares wrote): addi xd, xs, 1.
            (1 << 20) | (xs << 15) | (xd << 7) | 0x13
        }
    }
}

struct Run {
    pc: u64,
    instret: u64,
    x: [u64; 32],
    f: [u64; 32],
    fcsr: u64,
    exit: String,
}

fn run(prog: &[u32], x: &[u64; 32], f: &[u64; 32], fcsr: u64, jit: bool) -> Run {
    let sp = UserSpace::new(24).unwrap();
    sp.map_anonymous(CODE, 0x4000, perm::R | perm::W).unwrap();
    let mut words = prog.to_vec();
    words.push(0x73);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    sp.write(CODE, &bytes).unwrap();
    sp.set_perms(CODE, 0x4000, perm::R | perm::X).unwrap();
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.set_jit(jit);
    for (r, &v) in x.iter().enumerate().skip(1) {
        h.set_x(r, v);
    }
    h.f = *f;
    h.set_fcsr(fcsr);
    h.pc = CODE;
    // Twice: the second run is all translated code (blocks the first
    // one translated; the interpreter ran some of it first).
    let e = h.run_user(&sp);
    Run {
        pc: h.pc,
        instret: h.instret(),
        x: std::array::from_fn(|r| h.x(r)),
        f: h.f,
        fcsr: h.fcsr(),
        exit: format!("{e:?}"),
    }
}

fn check(prog: &[u32], x: &[u64; 32], f: &[u64; 32], fcsr: u64, what: &str) {
    let a = run(prog, x, f, fcsr, true);
    let b = run(prog, x, f, fcsr, false);
    let ctx = || format!("{what}: program {prog:08x?}, x {x:x?}, f {f:x?}, fcsr {fcsr:x}");
    assert_eq!(a.exit, b.exit, "exit, {}", ctx());
    assert_eq!(a.pc, b.pc, "pc, {}", ctx());
    assert_eq!(a.instret, b.instret, "instret, {}", ctx());
    assert_eq!(a.x, b.x, "x, {}", ctx());
    assert_eq!(a.f, b.f, "f, {}", ctx());
    assert_eq!(a.fcsr, b.fcsr, "fcsr, {}", ctx());
}

#[test]
fn inline_fp_matches_the_interpreter() {
    let mut rng = 0x1234_5678_9abc_def1u64;
    for round in 0..3000 {
        let n = 1 + (next(&mut rng) % 24) as usize;
        let prog: Vec<u32> = (0..n).map(|_| random_insn(&mut rng)).collect();
        let x: [u64; 32] = std::array::from_fn(|_| xval(&mut rng));
        let f: [u64; 32] = std::array::from_fn(|_| fval(&mut rng));
        // frm: mostly RNE, every mode (and illegal ones) sometimes.
        let frm = match next(&mut rng) % 4 {
            0 | 1 => 0,
            _ => next(&mut rng) % 8,
        };
        let fcsr = (frm << 5) | ((next(&mut rng) % 2) * (next(&mut rng) & 0x1f));
        check(&prog, &x, &f, fcsr, &format!("round {round}"));
    }
}

/// Every inline instruction on every pair of special operands, in every
/// static rounding mode and dynamically in every frm.
#[test]
fn inline_fp_special_operands_all_modes() {
    let mut ops = Vec::new();
    for fmt in 0..2 {
        for f5 in 0..4 {
            ops.push(op_fp(f5 << 2 | fmt, 2, 1, 0, 3));
        }
        ops.push(op_fp(0x0b << 2 | fmt, 0, 1, 0, 3));
        for op in [0x43, 0x47, 0x4b, 0x4f] {
            ops.push((4 << 27) | (fmt << 25) | (2 << 20) | (1 << 15) | (3 << 7) | op);
        }
        for m in 0..3 {
            ops.push(op_fp(0x04 << 2 | fmt, 2, 1, m, 3));
            ops.push(op_fp(0x14 << 2 | fmt, 2, 1, m, 10));
        }
        for m in 0..2 {
            ops.push(op_fp(0x05 << 2 | fmt, 2, 1, m, 3));
        }
        for t in 0..4 {
            ops.push(op_fp(0x18 << 2 | fmt, t, 1, 0, 10));
            ops.push(op_fp(0x1a << 2 | fmt, t, 11, 0, 3));
        }
        ops.push(op_fp(0x1c << 2 | fmt, 0, 1, 0, 10));
        ops.push(op_fp(0x1e << 2 | fmt, 0, 11, 0, 3));
    }
    ops.push(op_fp(0x20, 1, 1, 0, 3));
    ops.push(op_fp(0x21, 0, 1, 0, 3));
    let mut vals: Vec<u64> = DOUBLES.to_vec();
    vals.extend(SINGLES.iter().map(|&s| 0xffff_ffff_0000_0000 | s as u64));
    vals.push(0x3f80_0000); // an improperly boxed 1.0f
    let is_rm =
        |op: u32| op & 0x7f != 0x53 || !matches!(op >> 27, 0x04 | 0x05 | 0x14 | 0x1c | 0x1e);
    // Programs of up to 10 instructions, each with its own destination
    // (f5.. or x12..; rd 3 and 10 above are placeholders) and followed
    // by `csrrwi x(22 + j), fflags, 0`, so that each instruction's flags
    // are compared on their own.
    let program = |ops: &[u32], m: Option<u32>| -> Vec<u32> {
        let mut p = Vec::new();
        for (j, &op) in ops.iter().enumerate() {
            let j = j as u32;
            let rd = if op >> 7 & 31 == 10 { 12 + j } else { 5 + j };
            let mut w = op & !(31 << 7) | rd << 7;
            if is_rm(op) {
                w = w & !(7 << 12) | m.unwrap_or(7) << 12;
            }
            p.push(w);
            p.push((1 << 20) | (5 << 12) | ((22 + j) << 7) | 0x73);
        }
        p
    };
    let mut rng = 0x0bad_cafe_f00d_1234u64;
    for chunk in ops.chunks(10) {
        for (n, &a) in vals.iter().enumerate() {
            for _ in 0..2 {
                let b = vals[(next(&mut rng) as usize) % vals.len()];
                let c = vals[(next(&mut rng) as usize + n) % vals.len()];
                let mut f = [0u64; 32];
                f[1] = a;
                f[2] = b;
                f[4] = c;
                let mut x = [0u64; 32];
                x[11] = INTS[(next(&mut rng) as usize) % INTS.len()];
                for m in 0..8u32 {
                    // Static m, or dynamic with frm = m.
                    check(&program(chunk, Some(m)), &x, &f, 0, "static");
                    check(&program(chunk, None), &x, &f, (m as u64) << 5, "dynamic");
                }
            }
        }
    }
}
