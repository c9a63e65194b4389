//! Inline atomics (see `amo`) against the interpreter: random sequences
//! of every AMO, LR and SC, word and double, on aligned and misaligned
//! addresses, in writable, read-only and unmapped pages and beyond the
//! space's end, LR/SC pairs that match and that do not; and threads
//! hammering one counter with AMOs and LR/SC loops, translated.

use std::sync::Arc;

use crate::{perm, Hart, UserSpace};

const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;
const RO: u64 = 0x30000;

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn amo(f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f5 << 27) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | 0x2f
}

fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (rd << 7) | 0x13
}

const F5: [u32; 11] = [2, 3, 1, 0, 4, 0xc, 8, 0x10, 0x14, 0x18, 0x1c];

struct Run {
    exit: String,
    pc: u64,
    instret: u64,
    x: [u64; 32],
    data: Vec<u8>,
}

fn run(prog: &[u32], x: &[u64; 32], jit: bool) -> Run {
    let sp = UserSpace::new(24).unwrap();
    sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
    sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
    sp.map_anonymous(RO, 0x1000, perm::R | perm::W).unwrap();
    let mut words = prog.to_vec();
    words.push(0x73);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    sp.write(CODE, &bytes).unwrap();
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 101 + 7) as u8).collect();
    sp.write(DATA, &data).unwrap();
    sp.write(RO, &data).unwrap();
    sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
    sp.set_perms(RO, 0x1000, perm::R).unwrap();
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.set_jit(jit);
    for (r, &v) in x.iter().enumerate().skip(1) {
        h.set_x(r, v);
    }
    h.pc = CODE;
    let e = h.run_user(&sp);
    let mut page = vec![0u8; 0x1000];
    sp.read(DATA, &mut page).unwrap();
    Run {
        exit: format!("{e:?}"),
        pc: h.pc,
        instret: h.instret(),
        x: std::array::from_fn(|r| h.x(r)),
        data: page,
    }
}

#[test]
fn inline_atomics_match_the_interpreter() {
    let mut rng = 0x5eed_1234_abcd_9876u64;
    for round in 0..2000 {
        let n = 1 + (next(&mut rng) % 16) as usize;
        let mut prog = Vec::new();
        for _ in 0..n {
            // Bases: x5..x8 into DATA (x8 misaligned by 4, x7 by 1), x9
            // into the read-only page, x10 past the space's end, x11
            // unmapped. LR/SC often on the same base back to back.
            let base = [5, 5, 5, 6, 6, 7, 8, 9, 10, 11][(next(&mut rng) % 10) as usize];
            let f3 = 2 + (next(&mut rng) % 2) as u32;
            let rd = [0, 12, 13, 14, 15, 5][(next(&mut rng) % 6) as usize];
            let rs2 = 12 + (next(&mut rng) % 4) as u32;
            match next(&mut rng) % 8 {
                0 => {
                    // An LR/SC pair (maybe through another base).
                    prog.push(amo(2, f3, rd, base, 0));
                    let other = if next(&mut rng).is_multiple_of(4) {
                        6
                    } else {
                        base
                    };
                    prog.push(amo(3, f3, 13, other, rs2));
                }
                1 => prog.push(addi(5, 5, [8, -8, 4, 16][(next(&mut rng) % 4) as usize])),
                _ => {
                    let f5 = F5[(next(&mut rng) as usize) % F5.len()];
                    let rs2 = if f5 == 2 { 0 } else { rs2 };
                    prog.push(amo(f5, f3, rd, base, rs2));
                }
            }
        }
        let mut x = [0u64; 32];
        x[5] = DATA + 0x800;
        x[6] = DATA + 0x100;
        x[7] = DATA + 0x201;
        x[8] = DATA + 0x304;
        x[9] = RO + 0x40;
        x[10] = (1 << 24) + 0x40;
        x[11] = 0x40000;
        for v in &mut x[12..16] {
            *v = match next(&mut rng) % 3 {
                0 => next(&mut rng),
                1 => next(&mut rng) as i32 as i64 as u64,
                _ => [0, 1, u64::MAX, 1 << 63, 1 << 31, 0x7fff_ffff][(next(&mut rng) % 6) as usize],
            };
        }
        let a = run(&prog, &x, true);
        let b = run(&prog, &x, false);
        let ctx = || format!("round {round}: program {prog:08x?}");
        assert_eq!(a.exit, b.exit, "exit, {}", ctx());
        assert_eq!(a.pc, b.pc, "pc, {}", ctx());
        assert_eq!(a.instret, b.instret, "instret, {}", ctx());
        assert_eq!(a.x, b.x, "x, {}", ctx());
        assert!(a.data == b.data, "DATA differs, {}", ctx());
    }
}

/// Threads increment one counter, translated: half with `amoadd.w`, half
/// with an LR/SC loop (and one thread interpreting); the total is exact.
#[test]
fn threads_count_exactly_with_amos_and_lr_sc() {
    const N: i32 = 20000;
    let sp = Arc::new(UserSpace::new(24).unwrap());
    sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
    sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
    // a0 = &counter, t0 = N, t1 = 1.
    // amo:  amoadd.w x0, t1, (a0); addi t0, t0, -1; bnez t0, amo
    // lrsc: lr.w t2, (a0); addi t2, t2, 1; sc.w t3, t2, (a0);
    //       bnez t3, lrsc; addi t0, t0, -1; bnez t0, lrsc
    let bnez = |rs: u32, off: i32| {
        let o = off as u32;
        ((o >> 12 & 1) << 31)
            | ((o >> 5 & 0x3f) << 25)
            | (rs << 15)
            | (1 << 12)
            | ((o >> 1 & 0xf) << 8)
            | ((o >> 11 & 1) << 7)
            | 0x63
    };
    let amo_loop = [amo(0, 2, 0, 10, 6), addi(5, 5, -1), bnez(5, -8), 0x73];
    let lrsc_loop = [
        amo(2, 2, 7, 10, 0),
        addi(7, 7, 1),
        amo(3, 2, 28, 10, 7),
        bnez(28, -12),
        addi(5, 5, -1),
        bnez(5, -20),
        0x73,
    ];
    let mut bytes: Vec<u8> = amo_loop.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(0x100, 0);
    bytes.extend(lrsc_loop.iter().flat_map(|w| w.to_le_bytes()));
    sp.write(CODE, &bytes).unwrap();
    sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                let mut h = Hart::new_user();
                h.set_jit_threshold(1);
                h.set_jit(t != 3);
                h.set_x(10, DATA);
                h.set_x(5, N as u64);
                h.set_x(6, 1);
                h.pc = CODE + if t % 2 == 0 { 0 } else { 0x100 };
                h.run_user(&sp);
                h.x(5)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
    let mut c = [0u8; 4];
    sp.read(DATA, &mut c).unwrap();
    assert_eq!(u32::from_le_bytes(c), 4 * N as u32);
}
