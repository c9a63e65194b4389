//! The translator's own choices: register-cache maps at loop heads, and
//! fused instruction pairs, each run translated and interpreted from the
//! same registers (results must agree, including rd aliasing a source,
//! x0 as destination and sign bits).

use super::*;
use crate::decode::decode;
use crate::{perm, Hart, UserSpace};

const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;

#[test]
fn loop_regs_prefers_the_most_used() {
    // x9 is named once, first; x10..x17 more often: the seven most used
    // win, ties to the first named.
    let mut words = vec![0x0004_8013]; // addi x0, x9, 0
    for r in 10..18u32 {
        let uses = if r == 17 { 1 } else { 2 };
        for _ in 0..uses {
            words.push((r << 15) | 0x13); // addi x0, r, 0
        }
    }
    let insns: Vec<Insn> = words.iter().map(|&w| decode(w)).collect();
    assert_eq!(
        loop_regs(&insns, 0, insns.len() - 1),
        vec![10, 11, 12, 13, 14, 15, 16]
    );
}

#[test]
fn head_map_keeps_cached_loop_registers_in_place() {
    // Slots: x5 (loop uses it), x6 (it does not), empty, x7 (uses it).
    let current = [5, 6, 0, 7, 0, 0, 0];
    let map = head_map(&current, &[7, 8, 5, 9]);
    assert_eq!(map[0], 5);
    assert_eq!(map[3], 7);
    // x8 and x9 take empty slots first; x6's slot is dropped only when
    // no empty one is left, and never holds a register the loop lacks.
    assert_eq!((map[2], map[4]), (8, 9));
    assert_eq!(map[1], 0);
    let full = head_map(&current, &[1, 2, 3, 4, 5, 7, 8]);
    assert_eq!((full[0], full[3]), (5, 7));
    let mut got: Vec<u8> = full.to_vec();
    got.sort();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 7, 8]);
}

#[test]
fn written_regs_ignores_x0() {
    let insns = [decode(0x0004_8013), decode(0x0004_8293)]; // addi x0/x5, x9, 0
    assert_eq!(written_regs(&insns), 1 << 5);
}

/// Runs `prog` (then an ecall) from registers `regs` translated and
/// interpreted; every register, the pc and the retired count must agree.
/// Returns the translated run's registers.
pub(super) fn both_ways(prog: &[u32], regs: &[(usize, u64)]) -> [u64; 32] {
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
    both_ways_data(prog, &data, regs)
}

/// [`both_ways`] with the data page holding `data` at first, which must
/// agree at the end too.
fn both_ways_data(prog: &[u32], data: &[u8], regs: &[(usize, u64)]) -> [u64; 32] {
    let mut out = Vec::new();
    // Translated at once, translated on the third run (the first runs
    // of a loop interpreted, then the rest from a block that starts
    // where the interpreter left it), interpreted.
    for (jit, threshold) in [(true, 1), (true, 3), (false, 1)] {
        let sp = UserSpace::new(32).unwrap();
        sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
        sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
        let mut words = prog.to_vec();
        words.push(0x73); // ecall
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        sp.write(CODE, &bytes).unwrap();
        sp.write(DATA, data).unwrap();
        sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
        let mut h = Hart::new_user();
        h.set_jit_threshold(threshold);
        h.set_jit(jit);
        for &(r, v) in regs {
            h.set_x(r, v);
        }
        h.pc = CODE;
        let e = h.run_user(&sp);
        let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
        let mut mem = vec![0; 0x1000];
        sp.read(DATA, &mut mem).unwrap();
        out.push((e, h.pc, h.instret(), x, mem));
    }
    assert_eq!(
        out[0], out[2],
        "translated vs interpreted, program {prog:08x?}"
    );
    assert_eq!(
        out[1], out[2],
        "translated from the third run vs interpreted, program {prog:08x?}"
    );
    out[0].3
}

#[test]
fn loop_groups_join_overlapping_loops() {
    // Heads 1 (to 3) and 2 (to 5) overlap, 4 (to 4) lies inside them;
    // 7 (to 8) stands alone; 6 and 9 are no heads.
    let back_last = [
        None,
        Some(3),
        Some(5),
        None,
        Some(4),
        None,
        None,
        Some(8),
        None,
        None,
    ];
    let g = loop_groups(&back_last);
    assert!(g[1..=5].iter().all(|&x| x == (1, 5)), "{g:?}");
    assert_eq!((g[7], g[8]), ((7, 8), (7, 8)));
}

/// The C kernel's matrix multiply (N = 4, rows of 16 bytes) after one
/// instruction, so its three nested loops are loops inside the block:
/// A at `DATA`, B at `DATA + 0x100`, C at `DATA + 0x200` (see
/// [`matrix_regs`]).
fn matrix_loop() -> Vec<u32> {
    let lw = |rd, rs1| i(0x03, 2, rd, rs1, 0);
    vec![
        addi(9, 9, 1),    // 0
        addi(10, 25, 0),  // 1: outer: a0 = B
        addi(17, 14, 0),  // 2: a7 = C row
        addi(6, 16, -16), // 3: t1 = A row
        addi(13, 6, 0),   // 4: middle: a3 = A row
        addi(12, 10, 0),  // 5: a2 = B column
        addi(11, 0, 0),   // 6: sum
        lw(28, 13),       // 7: inner
        lw(15, 12),       // 8
        addi(13, 13, 4),  // 9
        addi(12, 12, 16), // 10
        mulw(15, 15, 28), // 11
        addw(11, 11, 15), // 12
        bne(13, 16, -24), // 13: -> 7
        sw(11, 17, 0),    // 14
        addi(10, 10, 4),  // 15
        addi(17, 17, 4),  // 16
        bne(18, 10, -52), // 17: -> 4
        addi(16, 13, 16), // 18
        addi(14, 14, 16), // 19
        bne(27, 16, -76), // 20: -> 1
    ]
}

fn matrix_regs() -> Vec<(usize, u64)> {
    vec![
        (16, DATA + 16),
        (14, DATA + 0x200),
        (25, DATA + 0x100),
        (18, DATA + 0x110),
        (27, DATA + 80),
    ]
}

#[test]
fn a_group_of_nested_loops_holds_the_innermost_registers() {
    // One map for the three loops: it must hold the inner loop's
    // registers, its bound x16 included (an even split at its back edge
    // weighs the middle loop's x10 and x17 more).
    let insns = decoded(matrix_loop());
    let regs = loop_regs_by(&insns, 1, 20, true);
    for r in [11, 12, 13, 15, 16, 28] {
        assert!(regs.contains(&r), "x{r} in {regs:?}");
    }
    let code = host_code(&matrix_loop());
    assert_eq!(moves_through_memory(&code), 0);
}

#[test]
fn expected_counts_follow_loops_around() {
    // The matrix loop: its inner body runs about 8 times per pass of
    // the middle loop's, which runs about 8 times per pass of the outer.
    let insns = decoded(matrix_loop());
    let body = &insns[1..];
    let target = |m: usize| {
        let off = body[m].off as i64 + body[m].imm as i64;
        body.iter().position(|t| t.off as i64 == off)
    };
    let is_branch = |i: &Insn| i.kind == Kind::Bne;
    let f = expected_counts(body, &target, &is_branch);
    let ratio = |a: usize, b: usize| f[a] as f64 / f[b] as f64;
    // body[0] outer, body[3] middle, body[6] inner heads.
    assert!((ratio(6, 3) - 8.0).abs() < 0.1, "{f:?}");
    assert!((ratio(3, 0) - 8.0).abs() < 0.1, "{f:?}");
    assert_eq!(f[0], 1 << 24);
}

#[test]
fn a_group_of_nested_loops_matches_the_interpreter() {
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 97 + 5) as u8).collect();
    for seed in 0..3 {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| !matrix_regs().iter().any(|&(m, _)| m == r));
        regs.extend(matrix_regs());
        let x = both_ways_data(&matrix_loop(), &data, &regs);
        assert_eq!(x[16], DATA + 80);
    }
    // A column past the data page: a host fault in the inner loop.
    let mut regs = matrix_regs();
    regs[2] = (25, DATA + 0xfc0);
    regs[3] = (18, DATA + 0xfd0);
    both_ways_data(&matrix_loop(), &data, &regs);
}

/// The C kernel's `sort_list` (a merge sort of a linked list, gcc -O2,
/// compressed instructions): nine loop heads in one group, reached by
/// jumps into each other's middles. a0 = list, a1 = by key (else by
/// value); returns to ra.
const SORT_LIST: [u32; 38] = [
    0x832e882a, 0x4f054885, 0x08080463, 0x46014501, 0x87424e85, 0xa0114781, 0x2785c709, 0x9de36318,
    0x85c6fef8, 0x00f05c63, 0x86c2e58d, 0x00083803, 0xce0937fd, 0x8636e214, 0xfef048e3, 0x02b05d63,
    0xeb89cf1d, 0x35fd86ba, 0xf66d6318, 0x86368536, 0xdf61b7e5, 0x00030b63, 0x00882e03, 0xd6e34714,
    0x86bafdc6, 0x631835fd, 0x2e03b7e9, 0x475400c8, 0xffc6c9e3, 0xc701bf5d, 0x883a2e85, 0x3023bf59,
    0x8a630006, 0x882a01ee, 0x0018989b, 0xf80810e3, 0x00003023, 0x80829002,
];

#[test]
fn overlapping_loops_sort_a_list_as_the_interpreter() {
    // Lists of nodes {next, key, val} (16 bytes) in the data page, sorted
    // both ways, whole; and with a node pointing off the page (a host
    // fault in the middle of the merge).
    let ret = CODE + 4 * SORT_LIST.len() as u64;
    for n in [1u64, 2, 3, 7, 40, 200] {
        for by_key in [0, 1] {
            for bad in [None, Some(n / 2)] {
                let mut data = vec![0u8; 0x1000];
                let mut seed = 0x1234u32.wrapping_add(n as u32);
                for k in 0..n {
                    seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
                    let node = &mut data[16 * k as usize..][..16];
                    let next = if k + 1 < n { DATA + 16 * (k + 1) } else { 0 };
                    let next = if bad == Some(k) { 0x7_0000 } else { next };
                    node[..8].copy_from_slice(&next.to_le_bytes());
                    node[8..12].copy_from_slice(&(seed >> 8 & 0xffff).to_le_bytes());
                    node[12..].copy_from_slice(&(k as u32 ^ seed >> 20).to_le_bytes());
                }
                let regs = [(10, DATA), (11, by_key), (1, ret)];
                both_ways_data(&SORT_LIST, &data, &regs);
            }
        }
    }
}

#[test]
fn nested_loops_keep_registers_across_heads() {
    // x10 = 3 outer passes of 5 inner ones, summing into x11 and x12
    // (more loop registers than the cache holds in the outer loop).
    let prog = [
        0x0030_0513u32, // li x10, 3
        0x0050_0693,    // outer: li x13, 5
        0x00a5_85b3,    // inner: add x11, x11, x10
        0x00d6_0633,    // add x12, x12, x13
        0xfff6_8693,    // addi x13, x13, -1
        0x00e7_87b3,    // add x15, x15, x14
        0xfe06_98e3,    // bnez x13, inner
        0x0018_0813,    // addi x16, x16, 1
        0x0018_8893,    // addi x17, x17, 1
        0x0019_0913,    // addi x18, x18, 1
        0xfff5_0513,    // addi x10, x10, -1
        0xfc05_1ce3,    // bnez x10, outer
    ];
    let x = both_ways(&prog, &[(14, 7), (15, 1)]);
    assert_eq!(x[11], 5 * (3 + 2 + 1));
    assert_eq!(x[12], 3 * 15);
    assert_eq!(x[15], 1 + 15 * 7);
    assert_eq!((x[16], x[17], x[18]), (3, 3, 3));
}

// ---- encoders ----
fn r(op: u32, f3: u32, f7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn i(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x13, 0, rd, rs1, imm)
}
fn addiw(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x1b, 0, rd, rs1, imm)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}
fn auipc(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x17
}
fn slli(rd: u32, rs1: u32, n: i32) -> u32 {
    i(0x13, 1, rd, rs1, n)
}
fn srli(rd: u32, rs1: u32, n: i32) -> u32 {
    i(0x13, 5, rd, rs1, n)
}
fn srai(rd: u32, rs1: u32, n: i32) -> u32 {
    i(0x13, 5, rd, rs1, 0x400 | n)
}
/// `bne rs1, rs2, off`.
fn bne(rs1: u32, rs2: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 12 & 1) << 31)
        | ((o >> 5 & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (1 << 12)
        | ((o >> 1 & 0xf) << 8)
        | ((o >> 11 & 1) << 7)
        | 0x63
}

/// Sign-heavy register values: every register gets one.
const VALUES: [u64; 8] = [
    0,
    1,
    u64::MAX,
    0x8000_0000_0000_0000,
    0x0000_0000_8000_0000,
    0xffff_ffff_7fff_ffff,
    0x1234_5678_9abc_def0,
    0xfedc_ba98_8765_ff80,
];

fn regs_from(seed: usize) -> Vec<(usize, u64)> {
    (1..32)
        .map(|r| (r, VALUES[(r * 3 + seed) % VALUES.len()]))
        .collect()
}

#[test]
fn fused_constants_match_the_interpreter() {
    for (hi, lo) in [
        (0x12345, 0x678),
        (0x80000, -1),
        (0x7ffff, 0x7ff), // lui + addi leaves i32: not fused
        (0xfffff, -2048),
        (0, 5),
    ] {
        for rd in [10, 0] {
            both_ways(&[lui(rd, hi), addi(rd, rd, lo)], &[]);
            both_ways(&[lui(rd, hi), addiw(rd, rd, lo)], &[]);
            both_ways(&[auipc(rd, hi), addi(rd, rd, lo)], &[]);
            // Not a pair: the second reads another register.
            both_ways(&[lui(rd, hi), addi(rd, 11, lo)], &regs_from(1));
        }
    }
    // addiw wraps around 32 bits: MIN - 1 is MAX.
    let x = both_ways(&[lui(10, 0x80000), addiw(10, 10, -1)], &[]);
    assert_eq!(x[10], 0x7fff_ffff);
    let x = both_ways(&[lui(10, 0x7ffff), addi(10, 10, 0x7ff)], &[]);
    assert_eq!(x[10], 0x7fff_f7ff);
    let x = both_ways(&[auipc(10, 1), addi(10, 10, -4)], &[]);
    assert_eq!(x[10], CODE + 0x1000 - 4);
}

#[test]
fn fused_extensions_match_the_interpreter() {
    for seed in 0..VALUES.len() {
        let regs = regs_from(seed);
        for n in [8, 16, 31, 32, 40, 48, 56, 63] {
            for (rd, rs) in [(10, 10), (10, 11), (0, 11), (12, 0)] {
                both_ways(&[slli(rd, rs, n), srli(rd, rd, n)], &regs);
                both_ways(&[slli(rd, rs, n), srai(rd, rd, n)], &regs);
                // Different shift amounts: not a pair.
                both_ways(&[slli(rd, rs, n), srli(rd, rd, n ^ 8)], &regs);
            }
        }
    }
    let x = both_ways(
        &[slli(10, 11, 48), srai(10, 10, 48)],
        &[(11, 0x1234_5678_9abc_8001)],
    );
    assert_eq!(x[10], 0xffff_ffff_ffff_8001);
    assert_eq!(x[11], 0x1234_5678_9abc_8001, "the source stays");
    let x = both_ways(&[slli(10, 10, 32), srli(10, 10, 32)], &[(10, u64::MAX)]);
    assert_eq!(x[10], 0xffff_ffff);
}

#[test]
fn fused_scaled_additions_match_the_interpreter() {
    // slli rd, rs, n; add rd, rd, rs2 (or add rd, rs2, rd): shNadd for
    // n = 1..=3, not fused otherwise, nor when rs2 is rd or x0; and
    // zext.w (slli 32; srli 32) then such an add: add.uw.
    for seed in 0..VALUES.len() {
        let regs = regs_from(seed);
        for n in [0, 1, 2, 3, 4, 32] {
            for (rd, rs, rs2) in [
                (10, 10, 11),
                (10, 11, 12),
                (10, 11, 11),
                (10, 11, 10),
                (10, 11, 0),
                (10, 0, 11),
                (0, 11, 12),
            ] {
                both_ways(&[slli(rd, rs, n), add(rd, rd, rs2)], &regs);
                both_ways(&[slli(rd, rs, n), add(rd, rs2, rd)], &regs);
                let zext = [slli(rd, rs, 32), srli(rd, rd, 32)];
                both_ways(&[zext[0], zext[1], add(rd, rd, rs2)], &regs);
                both_ways(&[zext[0], zext[1], add(rd, rs2, rd)], &regs);
            }
        }
    }
    let x = both_ways(
        &[slli(10, 11, 3), add(10, 12, 10)],
        &[(11, 0x2000_0000_0000_0005), (12, 0x100)],
    );
    assert_eq!(x[10], 0x128);
    assert_eq!(x[11], 0x2000_0000_0000_0005, "the source stays");
    let x = both_ways(
        &[slli(10, 11, 32), srli(10, 10, 32), add(10, 10, 12)],
        &[(11, 0xffff_ffff_8000_0001), (12, 2)],
    );
    assert_eq!(x[10], 0x8000_0003);
    // A jump to the add splits the pair (the add runs alone on x10 = 7).
    for x1 in [0u64, 1] {
        let prog = [bne(1, 0, 8), slli(10, 11, 2), add(10, 10, 12)];
        let x = both_ways(&prog, &[(1, x1), (10, 7), (11, 3), (12, 100)]);
        assert_eq!(x[10], if x1 == 0 { 112 } else { 107 });
    }
    // In a loop that names more registers than the cache holds, so that
    // operands come from `Core::x` in place (see `RegCache::in_place`),
    // as a table walk's base does.
    let prog = [
        add(5, 5, 6),
        add(7, 7, 8),
        add(9, 9, 6),
        add(17, 17, 8),
        xor(18, 18, 5),
        slli(13, 14, 2),
        add(13, 13, 15),
        slli(19, 20, 1),
        add(19, 21, 19),
        addi(14, 14, 1),
        addi(16, 16, -1),
        bne(16, 0, -44),
    ];
    for seed in 0..VALUES.len() {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 16);
        regs.push((16, 5));
        both_ways(&prog, &regs);
    }
}

#[test]
fn a_jump_between_a_pair_splits_it() {
    // bne x1, x2 skips the lui: the addi alone runs on x10 = 7 (a merge
    // point at the pair's second half), or the pair on the fall-through.
    for x1 in [0u64, 1] {
        let prog = [
            bne(1, 0, 8),
            lui(10, 0x12345),
            addi(10, 10, 0x10),
            slli(11, 12, 48),
            bne(1, 0, 8),
            slli(11, 11, 4),
            srli(11, 11, 48),
        ];
        let x = both_ways(&prog, &[(1, x1), (10, 7), (12, u64::MAX)]);
        if x1 == 0 {
            assert_eq!(x[10], 0x1234_5010);
            assert_eq!(x[11], 0xfff0);
        } else {
            assert_eq!(x[10], 0x17);
            assert_eq!(x[11], 0xffff);
        }
    }
}

/// Random sequences over the forms `alu` and `mem` choose specially
/// (lea additions, set-on-compare, shifts by a register, extensions,
/// stores from cached registers) on more registers than the cache holds,
/// so every host register serves as source and destination, with rd
/// aliasing either source and x0 on both sides.
#[test]
fn special_forms_match_the_interpreter() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // (opcode, funct3, funct7) of the register forms.
    const RR: [(u32, u32, u32); 15] = [
        (0x33, 0, 0),    // add
        (0x3b, 0, 0),    // addw
        (0x33, 2, 0),    // slt
        (0x33, 3, 0),    // sltu
        (0x33, 1, 0),    // sll
        (0x33, 5, 0),    // srl
        (0x33, 5, 0x20), // sra
        (0x3b, 1, 0),    // sllw
        (0x3b, 5, 0),    // srlw
        (0x3b, 5, 0x20), // sraw
        (0x3b, 0, 4),    // add.uw
        (0x33, 0, 0x20), // sub
        (0x33, 2, 0x10), // sh1add
        (0x33, 4, 0x10), // sh2add
        (0x33, 6, 0x10), // sh3add
    ];
    for round in 0..300 {
        let mut prog = Vec::new();
        // x5 points at DATA (stores land there), never written.
        let reg = |v: u64| [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15][(v % 15) as usize];
        for _ in 0..30 {
            let (rd, rs1, rs2) = (reg(next()), reg(next()), reg(next()));
            let imm = (next() % 4096) as i32 - 2048;
            prog.push(match next() % 12 {
                0..=3 => {
                    let (op, f3, f7) = RR[(next() as usize) % RR.len()];
                    r(op, f3, f7, rd, rs1, rs2)
                }
                4 => addi(rd, rs1, imm),
                5 => addiw(rd, rs1, [0, imm][(next() % 2) as usize]),
                6 => i(0x13, 2 + (next() % 2) as u32, rd, rs1, imm), // slti, sltiu
                7 => i(0x13, 7, rd, rs1, 0xff),                      // andi 0xff
                8 => match next() % 3 {
                    0 => 0x6040_1013 | rd << 7 | rs1 << 15, // sext.b
                    1 => 0x6050_1013 | rd << 7 | rs1 << 15, // sext.h
                    _ => 0x0800_403b | rd << 7 | rs1 << 15, // zext.h
                },
                // sb / sh / sw / sd rs2, off(x5)
                9 => {
                    let off = (next() % 256) as u32 * 8;
                    ((off >> 5) << 25)
                        | rs2 << 20
                        | 5 << 15
                        | ((next() % 4) as u32) << 12
                        | (off & 31) << 7
                        | 0x23
                }
                10 => lui(rd, (next() & 0xfffff) as u32),
                _ => auipc(rd, (next() & 0xfffff) as u32),
            });
        }
        let mut regs = regs_from(round);
        regs.retain(|&(r, _)| r != 5);
        regs.push((5, DATA + 0x400));
        both_ways(&prog, &regs);
    }
}

#[test]
fn replacement_evicts_the_register_named_latest() {
    let mut c = RegCache {
        guest: [1, 2, 3, 4, 5, 6, 7],
        // Instruction 0 names x8 (being loaded) and x1; then x2..x7 in
        // order, x5 never.
        names: vec![
            [8, 1, 0],
            [2, 0, 0],
            [3, 0, 0],
            [4, 0, 0],
            [6, 0, 0],
            [7, 0, 0],
        ],
        ..RegCache::default()
    };
    c.dirty[4] = true;
    assert_eq!(c.slot(8), (4, Some(5)), "x5, named never again");
    // x8 (in x5's slot) and x1 are not named again either.
    c.names[1] = [2, 8, 1];
    c.pos = 1;
    assert_eq!(c.slot(9).0, 6, "x7, named the latest");
    // A register of the loop being translated is needed again after the
    // back edge (at 3) even when the rest of the body does not name it:
    // x2 stays, x3 (named at 5) goes.
    let loop_case = |looping| {
        let mut c = RegCache {
            guest: [2, 3, 4, 5, 6, 7, 8],
            names: vec![[0; 3], [0; 3], [4, 5, 6], [7, 8, 0], [0; 3], [3, 0, 0]],
            pos: 2,
            looping,
            ..RegCache::default()
        };
        c.slot(9).0
    };
    assert_eq!(loop_case(([2, 0, 0, 0, 0, 0, 0], 3)), 1, "x3's slot");
    assert_eq!(loop_case(([0; 7], 0)), 0, "x2's slot, outside a loop");
}

/// `beq`/`blt`/`bltu` (`f3` 0, 4, 6) `rs1, rs2, off`.
fn branch(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    bne(rs1, rs2, off) & !(7 << 12) | f3 << 12
}
fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 0, 0, rd, rs1, rs2)
}
fn addw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x3b, 0, 0, rd, rs1, rs2)
}
fn mulw(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x3b, 0, 1, rd, rs1, rs2)
}
fn sw(rs2: u32, rs1: u32, off: u32) -> u32 {
    (off >> 5) << 25 | rs2 << 20 | rs1 << 15 | 2 << 12 | (off & 31) << 7 | 0x23
}
/// `jal x0, off`.
fn j(off: i32) -> u32 {
    let o = off as u32;
    ((o >> 20 & 1) << 31)
        | ((o >> 1 & 0x3ff) << 21)
        | ((o >> 11 & 1) << 20)
        | ((o >> 12 & 0xff) << 12)
        | 0x6f
}

/// The host code of user-mode block `words` (then an ecall).
fn host_code(words: &[u32]) -> Vec<u8> {
    let mut jit = crate::jit::Jit::new(1).expect("a code buffer");
    let mut insns: Vec<Insn> = words.iter().chain(&[0x73]).map(|&w| decode(w)).collect();
    for (k, i) in insns.iter_mut().enumerate() {
        i.off = 4 * k as u16;
    }
    jit.emit_code(0x10_0000, &insns, CODE, None)
}

/// How many `movsxd r64, r32` (register forms) `code` holds.
fn sign_extensions(code: &[u8]) -> usize {
    code.windows(3)
        .filter(|w| w[0] & 0xf8 == 0x48 && w[1] == 0x63 && w[2] >= 0xc0)
        .count()
}

/// How many `cmovcc r64, r64` `code` holds.
fn cmovs(code: &[u8]) -> usize {
    code.windows(4)
        .filter(|w| w[0] & 0xf8 == 0x48 && w[1] == 0x0f && w[2] & 0xf0 == 0x40 && w[3] >= 0xc0)
        .count()
}

#[test]
fn w_results_stay_unextended_until_read_whole() {
    // Two addw into x5: one extension, at the exit (instead of one per
    // addw). Then a narrow store of it, and a 64-bit add reads it whole.
    assert_eq!(
        sign_extensions(&host_code(&[addw(5, 6, 7), addw(5, 5, 7)])),
        1
    );
    let chain = [addw(5, 6, 7), addw(5, 5, 7), sw(5, 10, 0)];
    let mut whole = chain.to_vec();
    whole.push(add(8, 5, 5));
    for seed in 0..VALUES.len() {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 10);
        regs.push((10, DATA + 0x100));
        let x = both_ways(&whole, &regs);
        assert_eq!(
            x[5],
            x[6].wrapping_add(x[7].wrapping_mul(2)) as i32 as i64 as u64
        );
        both_ways(&chain, &regs);
    }
}

#[test]
fn w_results_cross_loop_heads_unextended() {
    // A multiply-accumulate loop (x11 += x12 * x13, x14 passes) inside a
    // block: x11 stays unextended around the loop, its compare and
    // exits extend as needed; x15 counts down with addw and compares
    // against x0 as its low half.
    let prog = [
        addi(11, 0, 0),    // li x11, 0
        mulw(16, 12, 13),  // head: x16 = x12 * x13 (32-bit)
        addw(11, 11, 16),  // x11 += x16
        addiw(14, 14, -1), // x14 -= 1
        bne(14, 0, -12),   // loop
        sw(11, 10, 0),     // store the sum
        addw(17, 11, 11),  // read it again, W
    ];
    for (seed, n) in [(0, 1), (3, 5), (5, 17)] {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| ![10, 14].contains(&r));
        regs.push((10, DATA + 0x200));
        regs.push((14, n));
        let x = both_ways(&prog, &regs);
        let prod = (x[12] as i32).wrapping_mul(x[13] as i32);
        assert_eq!(x[11], prod.wrapping_mul(n as i32) as i64 as u64);
    }
}

#[test]
fn a_loop_entered_at_its_condition_keeps_whole_values() {
    // j cond; body: addw x5, x5, x6; addi x7, x7, -1; cond: bne x7, x0,
    // body. x5 comes in not sign-extended (its upper half matters when
    // the body never runs), so the loop head may not claim it is.
    let prog = [
        j(12),
        addw(5, 5, 6),
        addi(7, 7, -1),
        bne(7, 0, -8),
        add(8, 5, 0),
        bne(5, 6, 8), // 64-bit compare of the two after the loop
        addi(9, 0, 1),
    ];
    for passes in [0, 1, 3] {
        for seed in 0..VALUES.len() {
            let mut regs = regs_from(seed);
            regs.retain(|&(r, _)| r != 7);
            regs.push((7, passes));
            both_ways(&prog, &regs);
        }
    }
    // Entered both ways: falling in, x5 and x6 are sign-extended, so the
    // head would claim them and compare them as low halves; jumping in
    // (x10 = 0) they are not, and differ only in their upper halves. The
    // jump's back edge breaks the claim: the block translates again
    // without it.
    let prog = [
        branch(0, 10, 0, 24), // beqz x10, cond
        addiw(5, 5, 0),
        addiw(6, 6, 0),
        bne(5, 6, 8), // body: skip the count when they differ
        addi(9, 9, 1),
        addw(5, 5, 6),
        addi(7, 7, -1),
        bne(7, 0, -16), // cond: loop to body
    ];
    for (x10, x7) in [(0, 2), (1, 2), (0, 1)] {
        let regs = [(5, 0x1_0000_0005), (6, 5), (7, x7), (9, 0), (10, x10)];
        let x = both_ways(&prog, &regs);
        if x10 == 0 && x7 == 1 {
            assert_eq!(x[9], 0, "x5 and x6 differ in their upper halves");
        }
    }
}

/// `prog`'s branch over one op (comparing x5 and x6) is two cmovs, and
/// runs as interpreted from every seed's registers, the branch taken
/// (x6 = x5) and not.
fn two_cmovs_both_ways(prog: &[u32]) {
    assert_eq!(cmovs(&host_code(prog)), 2, "{prog:08x?}");
    for seed in 0..VALUES.len() {
        both_ways(prog, &regs_from(seed));
        // Equal operands: the branch is taken.
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 6);
        regs.push((6, VALUES[(5 * 3 + seed) % VALUES.len()]));
        both_ways(prog, &regs);
    }
}

#[test]
fn a_branch_over_one_op_becomes_conditional_moves() {
    // The adds bring x5..x8 into host registers; then `beq x5, x6, +8;
    // addi x7, x8, 1` (and its forms) is a compare and two cmovs (rd and
    // the retired count).
    let lead = [add(9, 5, 6), add(9, 7, 8)];
    let shapes: [&[u32]; 5] = [
        &[branch(0, 5, 6, 8), addi(7, 8, 1)],
        &[branch(4, 5, 6, 8), add(7, 7, 8)],
        &[branch(6, 6, 5, 8), addw(7, 8, 5)],
        &[bne(5, 0, 12), slli(7, 8, 48), srli(7, 7, 48)],
        &[branch(0, 0, 6, 8), addi(7, 7, -5)],
    ];
    for shape in shapes {
        let mut prog = lead.to_vec();
        prog.extend_from_slice(shape);
        prog.push(add(10, 7, 9));
        two_cmovs_both_ways(&prog);
    }
    // rd as a compare operand (the op would change the comparison): a
    // branch as before.
    let mut prog = lead.to_vec();
    prog.extend_from_slice(&[branch(0, 5, 7, 8), addi(7, 8, 1)]);
    assert_eq!(cmovs(&host_code(&prog)), 0);
    both_ways(&prog, &regs_from(1));
}

#[test]
fn conditional_moves_in_a_loop_count_exactly() {
    // A CRC-like loop: x5 = x5 >> 1, and x5 = x5 ^ x6 (via x7) when the
    // low bit was set; the branch goes both ways from pass to pass.
    let prog = [
        addi(8, 0, 32),         // li x8, 32
        i(0x13, 7, 9, 5, 1),    // head: andi x9, x5, 1
        srli(5, 5, 1),          // x5 >>= 1
        r(0x33, 4, 0, 7, 5, 6), // xor x7, x5, x6
        branch(0, 9, 0, 8),     // beqz x9, +8
        addi(5, 7, 0),          // mv x5, x7
        addi(8, 8, -1),         // x8 -= 1
        bne(8, 0, -24),         // loop
    ];
    for seed in 0..VALUES.len() {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 5);
        regs.push((5, 0x9abc_def0_1234_5677u64.rotate_left(seed as u32 * 7)));
        both_ways(&prog, &regs);
    }
}

/// How many stores of a cached register into guest `r`'s place in
/// `Core::x` (`mov [rbx + disp8], reg`) `code` holds.
fn stores_of(code: &[u8], r: u8) -> usize {
    let disp = xd(r) as i8 as u8;
    code.windows(4)
        .filter(|w| w[0] & 0xf8 == 0x48 && w[1] == 0x89 && w[2] & 0xc7 == 0x43 && w[3] == disp)
        .count()
}

#[test]
fn a_register_the_loop_only_reads_is_written_back_before_it() {
    // x5 changes before the loop, which only reads it: one store, on the
    // way in (not at the loop head's stop check, nor at the exit).
    let prog = [
        addi(5, 5, 7),
        add(6, 6, 5), // head
        addi(7, 7, -1),
        bne(7, 0, -8),
    ];
    let code = host_code(&[&[addi(7, 0, 3)][..], &prog].concat());
    assert_eq!(stores_of(&code, 5), 1);
    for seed in 0..VALUES.len() {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 7);
        regs.push((7, 1 + seed as u64));
        let x = both_ways(&prog, &regs);
        let x5 = regs.iter().find(|r| r.0 == 5).unwrap().1.wrapping_add(7);
        assert_eq!(x[5], x5);
    }
}

/// How many `lea rbp, [rbp + disp]` (count adjustments) `code` holds.
fn count_adds(code: &[u8]) -> usize {
    code.windows(3)
        .filter(|w| w[0] == 0x48 && w[1] == 0x8d && (w[2] == 0x6d || w[2] == 0xad))
        .count()
}

#[test]
fn forward_branches_count_on_the_taken_path_only() {
    // Two forward branches inside a block, each taken or not, then a
    // load that faults or not (an exit after the merge points: the count
    // there must be the same whichever way the branches went).
    let prog = [
        branch(0, 10, 11, 12), // beq x10, x11, +12
        addi(12, 12, 1),
        addi(13, 13, 1),
        addi(14, 14, 1), // merge
        bne(10, 12, 8),  // bne x10, x12, +8
        addi(15, 15, 1),
        i(0x03, 2, 16, 17, 0), // merge: lw x16, 0(x17)
        add(18, 16, 14),
    ];
    for (taken1, taken2, fault) in (0..8).map(|n| (n & 1 != 0, n & 2 != 0, n & 4 != 0)) {
        let x10 = 5u64;
        let x12 = if taken2 { 0 } else { 4 };
        let regs = [
            (10, x10),
            (11, if taken1 { x10 } else { 6 }),
            // Not taken, the first branch's path adds 1 to x12.
            (12, if taken1 { x12 } else { x12.wrapping_sub(1) }),
            (17, if fault { DATA + 0x10_0000 } else { DATA + 8 }),
        ];
        both_ways(&prog, &regs);
    }
    // The fall-through pays nothing for the count: the block's straight
    // path adds it once, at its exit; each taken branch adds its own (in
    // an out-of-line thunk), and the slow exit of the load its own.
    let code = host_code(&prog);
    assert!(count_adds(&code) <= 5, "{} count adds", count_adds(&code));
}

/// How many compares with the address space's size (`cmp r64, [r14 +
/// space_size]`, the user-mode bound check) `code` holds.
fn bound_checks(code: &[u8]) -> usize {
    let disp = (offset_of!(Ctx, space_size) as u32).to_le_bytes();
    code.windows(6)
        .filter(|w| w[0] == 0x3b && w[1] & 0xc7 == 0x86 && w[2..6] == disp)
        .count()
}

fn ld(rd: u32, rs1: u32, off: i32) -> u32 {
    i(0x03, 3, rd, rs1, off)
}
fn sd(rs2: u32, rs1: u32, off: u32) -> u32 {
    sw(rs2, rs1, off) | 1 << 12
}

/// A loop summing doublewords from x5 on, `step` bytes apart, x8 times
/// (into x6, storing each running sum back), after `pre` (the loop is the
/// block's start when `pre` is empty, an inner loop otherwise).
fn stride_loop(pre: &[u32], step: i32) -> Vec<u32> {
    let body = [
        ld(7, 5, 0),
        add(6, 6, 7),
        sd(6, 5, 0),
        addi(5, 5, step),
        addi(8, 8, -1),
        bne(8, 0, -20),
    ];
    [pre, &body[..]].concat()
}

#[test]
fn loops_check_a_stepping_base_once_on_the_way_in() {
    for pre in [&[][..], &[addi(6, 0, 0)][..]] {
        let code = host_code(&stride_loop(pre, 8));
        // The entry check only (plus the `ecall`'s block-end: none).
        assert_eq!(bound_checks(&code), 1, "pre {pre:x?}");
        for (step, x5, x8) in [
            // Inside the page, then running off its end, or its start.
            (8, DATA, 3),
            (8, DATA, 600),
            (8, DATA + 0xff8, 2),
            (-8, DATA + 0xff8, 600),
            (-2048, DATA + 0xff8, 5),
            (2040, DATA, 5),
            // Bases outside the space (4 GiB here) or near its end.
            (8, 1 << 32, 2),
            (8, (1 << 32) - 8, 2),
            (-8, u64::MAX - 7, 2),
            (8, 0x8000_0000_0000_0000, 1),
        ] {
            let prog = stride_loop(pre, step);
            both_ways(&prog, &[(5, x5), (8, x8), (6, 1)]);
        }
    }
}

#[test]
fn loops_keep_checking_bases_they_do_not_only_step() {
    // x5 loaded (a linked list's next pointer, here garbage from the
    // second pass on) or stepped twice, or the loop with two ways around:
    // each pass checks again.
    let linked = [ld(7, 5, 8), add(6, 6, 7), ld(5, 5, 0), bne(5, 0, -12)];
    assert_eq!(bound_checks(&host_code(&linked)), 1);
    let twice = [
        ld(7, 5, 0),
        addi(5, 5, 8),
        ld(9, 5, 0),
        addi(5, 5, 8),
        addi(8, 8, -1),
        bne(8, 0, -20),
    ];
    assert_eq!(bound_checks(&host_code(&twice)), 2);
    let two_ways = [
        ld(7, 5, 0),
        addi(5, 5, 8),
        branch(0, 7, 0, -8), // beqz x7, back to the head
        addi(8, 8, -1),
        bne(8, 0, -16),
    ];
    assert_eq!(bound_checks(&host_code(&two_ways)), 1);
    for x5 in [DATA, DATA + 0xff0, 1 << 40] {
        both_ways(&linked, &[(5, x5)]);
        both_ways(&twice, &[(5, x5), (8, 300)]);
        both_ways(&two_ways, &[(5, x5), (8, 300)]);
    }
}

/// How many stores of a register into `Core::x` right before a load of
/// the same place into another register (`mov [rbx + d], a; mov b, [rbx +
/// d]`: a move through memory) `code` holds.
fn moves_through_memory(code: &[u8]) -> usize {
    code.windows(8)
        .filter(|w| {
            w[0] & 0xf8 == 0x48
                && w[1] == 0x89
                && w[2] & 0xc7 == 0x43
                && w[4] & 0xf8 == 0x48
                && w[5] == 0x8b
                && w[6] & 0xc7 == 0x43
                && w[3] == w[7]
        })
        .count()
}

#[test]
fn back_edges_move_registers_between_slots_in_registers() {
    // Ten registers in a loop of seven slots: the body evicts some, and
    // at the back edge the loop's registers sit in other slots than at
    // the head; W results among them (unextended until read whole).
    let prog = [
        add(5, 5, 6), // head
        addw(7, 7, 5),
        add(8, 8, 7),
        addw(9, 9, 8),
        add(10, 10, 9),
        addw(11, 11, 10),
        add(12, 12, 11),
        addw(13, 13, 12),
        add(14, 14, 13),
        addw(6, 6, 14),
        add(5, 5, 9),
        addi(15, 15, -1),
        bne(15, 0, -48),
    ];
    let code = host_code(&prog);
    assert_eq!(moves_through_memory(&code), 0);
    for seed in 0..VALUES.len() {
        let mut regs = regs_from(seed);
        regs.retain(|&(r, _)| r != 15);
        regs.push((15, 1 + seed as u64 * 3));
        both_ways(&prog, &regs);
    }
}

#[test]
fn branches_on_x0_against_a_register_match_the_interpreter() {
    // `bxx x0, x5`: the JIT compares x5 with 0 and mirrors the condition;
    // forward inside the block, leaving it, and a loop's back edge.
    for f3 in [0, 1, 4, 5, 6, 7] {
        let inside = [branch(f3, 0, 5, 8), addi(6, 6, 1), addi(7, 7, 1)];
        let leaving = [addi(7, 7, 1), branch(f3, 0, 5, 64), addi(6, 6, 1)];
        for (n, &v) in VALUES.iter().enumerate() {
            let regs = [(5, v), (6, n as u64), (7, 0)];
            both_ways(&inside, &regs);
            both_ways(&leaving, &regs);
            // A W result (unextended in its slot) as the operand.
            let w = [addiw(5, 5, 1), branch(f3, 0, 5, 8), addi(6, 6, 1)];
            both_ways(&w, &regs);
        }
    }
    for f3 in [4, 6] {
        // blt/bltu x0, x5: loops while x5 > 0 (or != 0).
        let counted = [addi(5, 5, -1), addi(6, 6, 3), branch(f3, 0, 5, -8)];
        for x5 in [1, 7, 200] {
            both_ways(&counted, &[(5, x5)]);
        }
    }
}

fn sub(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 0, 0x20, rd, rs1, rs2)
}
fn xor(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 4, 0, rd, rs1, rs2)
}
fn and(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 7, 0, rd, rs1, rs2)
}
fn sll(rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 1, 0, rd, rs1, rs2)
}
fn andi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x13, 7, rd, rs1, imm)
}

/// A hash-chain walk as gzip's `longest_match` does it, with more
/// registers than the cache holds: a short way around (the first
/// compare fails) and longer ones, all merging before the back edge,
/// which reads loop invariants the head does not hold.
fn search_loop() -> Vec<u32> {
    vec![
        addiw(31, 31, 1),      // 0: unextended on every way
        add(12, 20, 13),       // 1: both operands' sums
        add(14, 12, 21),       // 2
        xor(15, 14, 22),       // 3
        andi(16, 15, 3),       // 4
        bne(16, 23, 24),       // 5: -> 11 (the short way)
        addw(17, 17, 14),      // 6: unextended at the merge
        branch(0, 17, 24, 16), // 7: beq -> 11
        sub(18, 18, 25),       // 8
        bne(18, 26, 8),        // 9: -> 11
        addw(19, 19, 27),      // 10
        and(13, 13, 28),       // 11: the merge point
        slli(13, 13, 1),       // 12
        add(13, 13, 29),       // 13
        sll(30, 13, 11),       // 14
        add(30, 30, 31),       // 15: x31 read whole
        branch(0, 25, 0, 8),   // 16: beqz x25 -> 18
        branch(6, 24, 13, 12), // 17: bltu x24, x13 -> 20 (out)
        addiw(10, 10, -1),     // 18
        bne(10, 0, -76),       // 19: -> 0
    ]
}

/// The registers the search loop's head holds (see [`loop_regs`]).
/// `words` decoded, each at its offset (4 bytes apart).
fn decoded(words: Vec<u32>) -> Vec<Insn> {
    words
        .iter()
        .enumerate()
        .map(|(k, &w)| {
            let mut i = decode(w);
            i.off = 4 * k as u16;
            i
        })
        .collect()
}

fn search_loop_regs() -> Vec<u8> {
    let insns = decoded(search_loop());
    loop_regs(&insns, 0, insns.len() - 1)
}

#[test]
fn loop_regs_prefer_the_short_way_around() {
    let regs = search_loop_regs();
    // x18, x19, x26, x27 are named only on the longest ways (more
    // often than x20..x23, named once each on the short way).
    for r in [18, 19, 26, 27] {
        assert!(!regs.contains(&r), "x{r} in {regs:?}");
    }
    assert!(regs.contains(&13) && regs.contains(&10), "{regs:?}");
}

#[test]
fn a_search_loop_matches_the_interpreter() {
    // As the block's own loop and as a loop inside a block (one
    // instruction before it), from several register states: the ways
    // around, the exits in the middle (x25 zero or x24 small) and the
    // registers read in place must all agree with the interpreter.
    for prefix in [&[][..], &[addi(9, 9, 1)][..]] {
        let mut prog = prefix.to_vec();
        prog.extend(search_loop());
        for seed in 0..VALUES.len() {
            let mut regs = regs_from(seed);
            regs.retain(|&(r, _)| r != 10 && r != 25 && r != 28);
            regs.push((10, 40));
            regs.push((25, (seed % 3) as u64));
            regs.push((28, 0xffff_fff0 >> (seed % 4)));
            both_ways(&prog, &regs);
        }
    }
}

/// How many ALU ops `code` holds that read guest `r` from `Core::x` as a
/// memory operand (`op reg, [rbx + disp8]`, or `cmp [rbx + disp8], reg`),
/// or loads of it into a scratch register (`mov rax|rcx, [rbx + disp8]`,
/// as a fused `slli; add` reads its base, see `alu`).
fn reads_in_place(code: &[u8], r: u8) -> usize {
    let disp = xd(r) as i8 as u8;
    code.windows(4)
        .filter(|w| {
            let alu = w[0] & 0xf0 == 0x40
                && matches!(w[1], 0x03 | 0x0b | 0x23 | 0x2b | 0x33 | 0x3b | 0x39)
                && w[2] & 0xc7 == 0x43;
            let scratch = w[0] == 0x48 && w[1] == 0x8b && matches!(w[2], 0x43 | 0x4b);
            (alu || scratch) && w[3] == disp
        })
        .count()
}

#[test]
fn a_loop_reads_the_registers_its_head_lacks_in_place() {
    // The search loop's invariants on its short way (x20..x23, x28,
    // x29: more registers than the cache holds besides its hot ones)
    // are operands straight from `Core::x`, not loaded into the cache
    // (which would evict a register the back edge then reloads).
    let code = host_code(&search_loop());
    let regs = search_loop_regs();
    let in_place: Vec<u8> = [20u8, 21, 22, 23, 28, 29]
        .into_iter()
        .filter(|r| !regs.contains(r))
        .collect();
    assert!(!in_place.is_empty(), "{regs:?}");
    for r in in_place {
        assert!(reads_in_place(&code, r) > 0, "x{r} (head holds {regs:?})");
    }
}

fn lbu(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x03, 4, rd, rs1, imm)
}

#[test]
fn a_base_checked_before_a_branch_stays_checked_after_it() {
    // lbu x5, 0(x10); bne x5, x6, +8; lbu x7, 16(x10): the second
    // access's base is the first's, unchanged, on the branch's
    // fall-through (its target, a merge point, would not be).
    let prog = [lbu(5, 10, 0), bne(5, 6, 8), lbu(7, 10, 16)];
    let insns: Vec<Insn> = prog.iter().map(|&w| decode(w)).collect();
    let plan = mem::plan(&insns, &[false; 3]);
    assert_eq!(plan[2], mem::Plan::Covered);
    assert_eq!(mem::plan(&insns, &[false, false, true])[2], mem::Plan::Own);
    // Taken or not, in range, or the second access past the data page's
    // end (a host fault, resumed by the interpreter), or the base out
    // of the space: as the interpreter does it.
    for base in [DATA, DATA + 0xff0, DATA + 0xfff, 1 << 40] {
        for x6 in [0, 0x8b, 0xff] {
            both_ways(&prog, &[(10, base), (6, x6)]);
        }
    }
}

/// `jalr rd, imm(rs1)`.
fn jalr(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x67, 0, rd, rs1, imm)
}

#[test]
fn a_loop_whose_condition_precedes_a_ret_runs_inside_one_block() {
    // busybox's crc32 loop as gcc lays it out: the condition sits right
    // before the function's return and jumps over it to the body, whose
    // `j` goes back to the condition. The block at the condition goes on
    // past the `ret` (see `block::extend_user`), so the whole loop is one
    // block: every pass, and the return at any count, as interpreted.
    // x11..x12: the bytes; x13: a 256-word table; x10: the running crc.
    let body = |ret: u32| {
        vec![
            branch(1, 11, 12, 8), // cond: bne x11, x12, body
            ret,
            lbu(15, 11, 0), // body
            addi(11, 11, 1),
            xor(15, 15, 10),
            andi(15, 15, 0xff),
            slli(15, 15, 2),
            add(15, 15, 13),
            i(0x03, 2, 15, 15, 0), // lw x15, 0(x15)
            i(0x1b, 5, 10, 10, 8), // srliw x10, x10, 8
            xor(10, 10, 15),
            j(-44), // to cond
        ]
    };
    // A return through the link register (the return-address stack's
    // pop, which misses here: nothing pushed) and a plain indirect jump,
    // each to the ecall after the program.
    for (ret, link) in [(jalr(0, 1, 0), 1), (jalr(0, 6, 4), 6)] {
        let prog = body(ret);
        let end = CODE + 4 * prog.len() as u64;
        let to = if link == 6 { end - 4 } else { end };
        for n in [0, 1, 2, 7, 300] {
            let regs = [
                (link, to),
                (10, 0xffff_ffff),
                (11, DATA),
                (12, DATA + n),
                (13, DATA + 0x400),
            ];
            let x = both_ways(&prog, &regs);
            assert_eq!(x[11], DATA + n);
        }
    }
}

// Random loop nests (written by a review of the merged changes): rets the
// block goes on past, nested and overlapping loops (loop groups), slli+add
// and zext.w+add pairs (shNadd, add.uw), W results feeding bitwise ops
// (low halves), loads and stores of every width, some faulting.

#[derive(Clone, Copy)]
enum RvItem {
    W(u32),
    Br(u32, u32, u32, usize),
    Jal(usize),
}

fn rv_store(f3: u32, rs2: u32, rs1: u32, off: i32) -> u32 {
    let o = off as u32 & 0xfff;
    (o >> 5) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (o & 31) << 7 | 0x23
}

fn rv_random_body(rng: &mut u64, items: &mut Vec<RvItem>, n: usize, ret: bool) {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    const D: [u32; 12] = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let mut pend: Vec<(usize, usize)> = Vec::new(); // (item, skip)
    for _ in 0..n {
        let rd = D[(next() % 12) as usize];
        let rs1 = if next() % 10 == 0 {
            0
        } else {
            D[(next() % 12) as usize]
        };
        let rs2 = if next() % 10 == 0 {
            0
        } else {
            D[(next() % 12) as usize]
        };
        let sh = (next() % 32) as i32;
        let imm = [0, 1, -1, 0x7ff, -0x800, 0x55, 0xff][(next() % 7) as usize];
        let w = match next() % 24 {
            0 => r(0x3b, 0, 0, rd, rs1, rs2),     // addw
            1 => r(0x3b, 0, 0x20, rd, rs1, rs2),  // subw
            2 => i(0x1b, 0, rd, rs1, imm),        // addiw
            3 => i(0x1b, 1, rd, rs1, sh),         // slliw
            4 => i(0x1b, 5, rd, rs1, sh),         // srliw
            5 => i(0x1b, 5, rd, rs1, 0x400 | sh), // sraiw
            6 => r(0x3b, 1, 0, rd, rs1, rs2),     // sllw
            7 => r(0x33, 4, 0, rd, rs1, rs2),     // xor
            8 => r(0x33, 6, 0, rd, rs1, rs2),     // or
            9 => r(0x33, 7, 0, rd, rs1, rs2),     // and
            10 => i(0x13, [4, 6, 7][(next() % 3) as usize], rd, rs1, imm),
            11 => r(0x33, 0, 0, rd, rs1, rs2), // add
            12 => r(0x3b, 0, 1, rd, rs1, rs2), // mulw
            13 => {
                // slli + add (shNadd), either order
                let n = 1 + (next() % 3) as i32;
                items.push(RvItem::W(slli(rd, rs1, n)));
                if next() % 2 == 0 {
                    add(rd, rd, rs2)
                } else {
                    add(rd, rs2, rd)
                }
            }
            14 => {
                items.push(RvItem::W(slli(rd, rs1, 32)));
                items.push(RvItem::W(srli(rd, rd, 32)));
                if next() % 2 == 0 {
                    add(rd, rd, rs2)
                } else {
                    add(rd, rs2, rd)
                }
            }
            15 | 16 => {
                let f3 = (next() % 4) as u32;
                let off = ((next() % 0x100) as i32) << 3;
                rv_store(
                    f3,
                    rs2,
                    [18, 18, 18, 18, 18, 18, 19, 20][(next() % 8) as usize],
                    off,
                )
            }
            17 => {
                let f3 = [0, 1, 2, 3, 4, 5, 6][(next() % 7) as usize];
                let off = ((next() % 0x100) as i32) << 3;
                i(
                    0x03,
                    f3,
                    rd,
                    [18, 18, 18, 18, 18, 18, 19, 20][(next() % 8) as usize],
                    off,
                )
            }
            18 => i(
                0x13,
                5,
                rd,
                rs1,
                [32, 33, 0x420, 0x43f][(next() % 4) as usize],
            ),
            19 if rs2 != 0 && next() % 2 == 0 => {
                // c.slli rd, n; c.add rd, rs2 (one word)
                let n = 1 + (next() % 3) as u32;
                let cs = (rd << 7) | (n << 2) | 0b10;
                let ca = (0b1001 << 12) | (rd << 7) | (rs2 << 2) | 0b10;
                cs | ca << 16
            }
            19 => r(0x33, 3, 0, rd, rs1, rs2), // sltu
            20 | 21 => {
                let f3 = [0, 1, 4, 5, 6, 7][(next() % 6) as usize];
                pend.push((items.len(), 1 + (next() % 5) as usize));
                items.push(RvItem::Br(f3, rs1, rs2, 0));
                continue;
            }
            22 => {
                pend.push((items.len(), 1 + (next() % 4) as usize));
                items.push(RvItem::Jal(0));
                continue;
            }
            _ if ret => {
                // A ret the block goes on past: `b<cc> over; ret; over:`.
                let f3 = [0, 1, 4, 5][(next() % 4) as usize];
                items.push(RvItem::Br(f3, rs1, rs2, items.len() + 2));
                jalr(0, 1, 0)
            }
            _ => match next() % 6 {
                0 => r(0x33, 2, 0x10, rd, rs1, rs2), // sh1add
                1 => r(0x33, 4, 0x10, rd, rs1, rs2), // sh2add
                2 => r(0x33, 6, 0x10, rd, rs1, rs2), // sh3add
                3 => r(0x3b, 0, 0x04, rd, rs1, rs2), // add.uw
                _ => r(0x33, 0, 0x20, rd, rs1, rs2), // sub
            },
        };
        items.push(RvItem::W(w));
    }
    let end = items.len();
    for (at, skip) in pend {
        let t = (at + 1 + skip).min(end);
        items[at] = match items[at] {
            RvItem::Br(f3, a, b, _) => RvItem::Br(f3, a, b, t),
            _ => RvItem::Jal(t),
        };
    }
}

fn rv_resolve(items: &[RvItem]) -> Vec<u32> {
    items
        .iter()
        .enumerate()
        .map(|(k, it)| match *it {
            RvItem::W(w) => w,
            RvItem::Br(f3, a, b, t) => branch(f3, a, b, 4 * (t as i32 - k as i32)),
            RvItem::Jal(t) => j(4 * (t as i32 - k as i32)),
        })
        .collect()
}

/// Two nested loops (x29 outer, x30 inner, 3 passes each), sometimes a
/// third overlapping them back to the outer head (x31, 4 passes).
fn rv_random_prog(rng: &mut u64) -> Vec<u32> {
    let (outer, inner, over) = (3, 3, 4);
    let mut items = vec![RvItem::W(addi(29, 0, outer)), RvItem::W(addi(31, 0, over))];
    let h1 = items.len();
    items.push(RvItem::W(addi(30, 0, inner)));
    let h2 = items.len();
    let pick = |rng: &mut u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let na = 2 + (pick(rng) % 14) as usize;
    rv_random_body(rng, &mut items, na, true);
    if pick(rng) % 2 == 0 {
        // an overlapping loop back to h1, bounded by x31
        items.push(RvItem::W(addi(31, 31, -1)));
        items.push(RvItem::Br(4, 0, 31, h1)); // blt x0, x31, h1
        let m = 1 + (pick(rng) % 4) as usize;
        rv_random_body(rng, &mut items, m, false);
    }
    items.push(RvItem::W(addi(30, 30, -1)));
    items.push(RvItem::Br(1, 30, 0, h2));
    let nb = (pick(rng) % 8) as usize;
    let rb = pick(rng) % 2 == 0;
    rv_random_body(rng, &mut items, nb, rb);
    items.push(RvItem::W(addi(29, 29, -1)));
    items.push(RvItem::Br(1, 29, 0, h1));
    rv_resolve(&items)
}

#[test]
fn random_loop_nests_with_rets_and_fused_pairs_match_the_interpreter() {
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
    for _ in 0..3000 {
        let prog = rv_random_prog(&mut rng);
        let end = CODE + 4 * prog.len() as u64;
        let mut regs = vec![(1usize, end), (18, DATA), (19, DATA + 0x3000), (20, CODE)];
        for r in 5..=16usize {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = match rng % 4 {
                0 => rng,
                1 => rng as i32 as i64 as u64,
                2 => [0, 1, u64::MAX, 1 << 63, 1 << 31, 0x7fff_ffff, 0xffff_ffff]
                    [(rng >> 8) as usize % 7],
                _ => (rng >> 20) & 7,
            };
            regs.push((r, v));
        }
        both_ways_data(&prog, &data, &regs);
    }
}

/// A loop inside a block that writes x5 only with W results, but whose
/// way in knows nothing of x5: the head checks it at run time (a value
/// that is not sign-extended leaves for the block at the head) and
/// keeps it unextended around the loop. x5 is written only when the
/// loaded word is not 0, so with zeros it must come out of the loop
/// (and out of every exit on the way: a host fault at the page's end)
/// whole.
#[test]
fn a_loop_head_checks_unknown_w_registers_on_the_way_in() {
    let lw = |rd, rs1| i(0x03, 2, rd, rs1, 0);
    let prog = [
        addi(12, 12, 1),    // 0
        lw(6, 11),          // 1: head
        branch(0, 6, 0, 8), // 2: beqz x6, 4
        addw(5, 5, 6),      // 3
        addi(11, 11, 4),    // 4
        addi(7, 7, -1),     // 5
        bne(7, 0, -20),     // 6: -> 1
        add(8, 5, 0),       // 7: read whole
        mulw(9, 5, 5),      // 8
    ];
    for zeros in [false, true] {
        let data: Vec<u8> = (0..0x1000u32)
            .map(|i| if zeros { 0 } else { (i * 13 + 1) as u8 })
            .collect();
        for x5 in [5, 0x1_0000_0005, 0xffff_ffff_8000_0000, u64::MAX, 1 << 63] {
            // Passes; and a start 8 bytes before the page's end, where
            // the third pass faults.
            for (x11, x7) in [(DATA, 1), (DATA + 0x40, 7), (DATA + 0xff8, 5)] {
                let mut regs = regs_from(x5 as usize % 7);
                regs.retain(|&(r, _)| ![5, 7, 11].contains(&r));
                regs.extend([(5, x5), (7, x7), (11, x11)]);
                let x = both_ways_data(&prog, &data, &regs);
                if zeros && x11 != DATA + 0xff8 {
                    assert_eq!(x[8], x5, "x5 {x5:#x} kept whole");
                }
            }
        }
    }
    // The matrix product's inner loop (x15 = x15 * x28, W) keeps x15
    // unextended: its multiply-accumulate has no extension.
    let code = host_code(&matrix_loop());
    let mul = code
        .windows(2)
        .position(|w| w == [0x0f, 0xaf])
        .expect("an imul");
    let back = mul
        + code[mul..]
            .windows(2)
            .position(|w| w == [0x0f, 0x85])
            .expect("a jne");
    assert_eq!(sign_extensions(&code[mul..back]), 0);
}

/// How many attention checks (`cmp dword [r15], 0`) `code` holds.
fn attention_checks(code: &[u8]) -> usize {
    code.windows(5)
        .filter(|w| *w == [0x41, 0x83, 0x7f, 0x00, 0x00])
        .count()
}

#[test]
fn only_enough_loop_heads_check_for_attention() {
    // The matrix product's nest: every pass of the middle and outer
    // loops runs the inner one, whose head alone checks (and the
    // block's start).
    assert_eq!(attention_checks(&host_code(&matrix_loop())), 2);
    // Overlapping loops: 1..=5 (its back edge a `j`) and 2..=4. A pass
    // of the outer one goes through the inner head, which checks.
    let prog = [
        addi(12, 12, 1), // 0
        addi(10, 10, 1), // 1: outer head
        addi(11, 11, 1), // 2: inner head
        andi(6, 11, 1),  // 3
        bne(6, 0, -8),   // 4: -> 2
        j(-16),          // 5: -> 1
    ];
    let insns = decoded(prog.to_vec());
    let back_last = [None, Some(5), Some(4), None, None, None];
    let checks = checking_heads(&insns, &back_last);
    assert_eq!(checks, [false, false, true, false, false, false]);
    // Two disjoint loops each keep their own.
    let prog = [
        addi(12, 12, 1),  // 0
        addi(10, 10, -1), // 1: head
        bne(10, 0, -4),   // 2: -> 1
        addi(11, 11, -1), // 3: head
        bne(11, 0, -4),   // 4: -> 3
    ];
    let insns = decoded(prog.to_vec());
    let back_last = [None, Some(2), None, Some(4), None];
    let checks = checking_heads(&insns, &back_last);
    assert_eq!(checks, [false, true, false, true, false]);
}

#[test]
fn a_search_loop_counts_its_early_mismatch_at_the_merge() {
    // longest_match's shape: each pass loads a byte and, on a mismatch
    // (the hot way), jumps forward over the match path to the merge
    // point, whose `lea` adds the jump's count adjustment (the
    // fall-through and the stubs take it back first). A load after the
    // merge faults on pass `p`, so exits after the merge count exactly
    // whichever way each pass went. `extra`: the match path writes more
    // registers than the cache holds, and a second way in jumps from
    // there, with another cache: a stub.
    let lbu = |rd, rs1, off| i(0x03, 4, rd, rs1, off);
    for extra in [false, true] {
        let mut prog = vec![lbu(5, 10, 0)];
        let mut body = vec![addi(7, 7, 1), lbu(8, 10, 1), add(9, 9, 8)];
        if extra {
            body.extend((14..22).map(|r| addi(r, r, r as i32)));
            // A second way in, with another cache: a stub.
            let to_merge = 4 * (body.len() as i32 - 2);
            body.insert(3, bne(8, 6, to_merge));
        }
        prog.push(bne(5, 6, 4 * (body.len() as i32 + 1)));
        prog.extend(body);
        prog.extend([
            ld(11, 12, 0), // merge: faults once x12 leaves the page
            addi(10, 10, 1),
            addi(12, 12, 8),
            addi(13, 13, -1),
        ]);
        let back = -4 * prog.len() as i32;
        prog.push(bne(13, 0, back));
        // Bytes of the data page are (i * 37 + 11) ^ 0x80: x6 matches
        // some passes or none.
        for (x6, p) in [0x8bu64, 0xb0, 0x1ff]
            .into_iter()
            .flat_map(|x| (1..15).map(move |p| (x, p)))
        {
            let regs = [(6, x6), (10, DATA), (12, DATA + 0x1000 - 8 * p), (13, 12)];
            both_ways(&prog, &regs);
        }
    }
}

// ---- review13: random block-internal control flow ----
// Arbitrary (not only nested) loops inside one block, each back edge
// bounded by a shared fuel register (x31), forward jumps landing on loop
// heads, on the instruction after a back edge and on the second half of
// an RVC pair, registers x5..x8 written (almost) only by W instructions
// with values not sign-extended on the way in (run-time checks at loop
// heads), rets the block goes on past, stores, and a pointer (x20) that
// walks off the data page (a host fault mid-loop).

#[derive(Clone, Copy, Debug)]
enum Rx {
    W(u32),
    /// A conditional branch (f3, rs1, rs2) to (item, half).
    Br(u32, u32, u32, usize, bool),
    Jal(usize, bool),
    /// A forward jump not resolved yet: branch (f3, rs1, rs2) or jal.
    FwdBr(u32, u32, u32),
    FwdJal,
}

fn rx_next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn rx_branch(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    bne(rs1, rs2, off) & !(7 << 12) | f3 << 12
}

fn c_addiw(rd: u32, imm: i32) -> u32 {
    (1 << 13) | ((imm as u32 >> 5) & 1) << 12 | rd << 7 | (imm as u32 & 31) << 2 | 1
}

/// An RVC pair (one word): two 16-bit instructions.
fn rx_rvc_pair(rng: &mut u64) -> u32 {
    let half = |rng: &mut u64| -> u32 {
        let w = [5u32, 6, 7, 8][(rx_next(rng) % 4) as usize];
        let g = 9 + (rx_next(rng) % 8) as u32;
        let c = 8 + (rx_next(rng) % 8) as u32; // x8..x15
        let c2 = 8 + (rx_next(rng) % 8) as u32;
        match rx_next(rng) % 7 {
            0 => c_addiw(w, [1, -1, 31, -32, 0][(rx_next(rng) % 5) as usize]),
            1 => c_addiw(g, 3),
            // c.addw / c.subw rd', rs2'
            2 => (0b100111 << 10) | (c - 8) << 7 | 1 << 5 | (c2 - 8) << 2 | 1,
            3 => (0b100111 << 10) | (c - 8) << 7 | (c2 - 8) << 2 | 1,
            4 => (g << 7) | ((1 + rx_next(rng) % 3) as u32) << 2 | 2, // c.slli
            5 => (0b1001 << 12) | g << 7 | c << 2 | 2,                // c.add
            _ => (0b1000 << 12) | g << 7 | w << 2 | 2,                // c.mv
        }
    };
    let lo = half(rng);
    let hi = half(rng);
    lo | hi << 16
}

/// One random instruction (or pair) that does not jump.
fn rx_op(rng: &mut u64, items: &mut Vec<Rx>, w_only: bool) {
    const WR: [u32; 4] = [5, 6, 7, 8];
    let any = |rng: &mut u64| -> u32 {
        match rx_next(rng) % 14 {
            0 => 0,
            n if n < 5 => WR[(n - 1) as usize],
            n => 9 + (n - 5) as u32 % 8,
        }
    };
    let wr = WR[(rx_next(rng) % 4) as usize];
    let gr = 9 + (rx_next(rng) % 8) as u32;
    let (s1, s2) = (any(rng), any(rng));
    let sh = (rx_next(rng) % 32) as i32;
    let imm = [0, 1, -1, 0x7ff, -0x800, 0x55, 3][(rx_next(rng) % 7) as usize];
    let w = match rx_next(rng) % 30 {
        // W results into x5..x8
        0 => addw(wr, s1, s2),
        1 => r(0x3b, 0, 0x20, wr, s1, s2), // subw
        2 => addiw(wr, s1, imm),
        3 => i(0x1b, 1, wr, s1, sh),         // slliw
        4 => i(0x1b, 5, wr, s1, sh),         // srliw
        5 => i(0x1b, 5, wr, s1, 0x400 | sh), // sraiw
        6 => r(0x3b, 1, 0, wr, s1, s2),      // sllw
        7 => r(0x3b, 5, 0x20, wr, s1, s2),   // sraw
        8 => mulw(wr, s1, s2),
        9 => addw(wr, wr, s2),
        10 => i(0x03, 2, wr, 18, ((rx_next(rng) % 0x200) as i32) << 3), // lw
        // anything into x9..x16 (x5..x8 too, rarely: not W-only)
        11 if !w_only && rx_next(rng).is_multiple_of(4) => add(wr, s1, s2),
        11 | 12 => add(gr, s1, s2),
        13 => r(0x33, 0, 0x20, gr, s1, s2), // sub
        14 => r(0x33, 4, 0, gr, s1, s2),    // xor
        15 => r(0x33, 6, 0, gr, s1, s2),    // or
        16 => r(0x33, 7, 0, gr, s1, s2),    // and (bitwise of W values)
        17 => i(0x13, [4, 6, 7][(rx_next(rng) % 3) as usize], gr, s1, imm),
        18 => slli(gr, s1, sh),
        19 => srai(gr, s1, sh),
        20 => r(0x33, 3, 0, gr, s1, s2), // sltu
        21 => {
            let n = 1 + (rx_next(rng) % 3) as i32;
            items.push(Rx::W(slli(gr, s1, n)));
            add(gr, gr, s2)
        }
        22 => i(0x03, 3, gr, 18, ((rx_next(rng) % 0x200) as i32) << 3), // ld
        23 => i(
            0x03,
            [3, 2, 4][(rx_next(rng) % 3) as usize],
            any(rng).max(9),
            20,
            0,
        ), // walks off
        24 => addi(20, 20, 8),
        25 => rv_store(
            (rx_next(rng) % 4) as u32,
            s2,
            18,
            ((rx_next(rng) % 0x200) as i32) << 3,
        ),
        26 | 27 => rx_rvc_pair(rng),
        28 => addi(gr, gr, -1),
        _ => mulw(gr, s1, s2),
    };
    items.push(Rx::W(w));
}

/// A random program: loops back to any earlier item (bounded by x31),
/// forward jumps to any later point.
fn rx_prog(rng: &mut u64) -> Vec<u32> {
    let n = 6 + (rx_next(rng) % 40) as usize;
    let w_only = !rx_next(rng).is_multiple_of(3);
    let mut items: Vec<Rx> = Vec::new();
    let mut fwd: Vec<usize> = Vec::new();
    let mut heads: Vec<usize> = Vec::new();
    let mut after_back: Vec<usize> = Vec::new();
    // Items no jump may land on (a back edge's branches, which must come
    // right after its fuel decrement).
    let mut no_land: Vec<usize> = Vec::new();
    let rs = |rng: &mut u64| -> u32 {
        match rx_next(rng) % 6 {
            0 => 0,
            1 => 5 + (rx_next(rng) % 4) as u32,
            _ => 9 + (rx_next(rng) % 8) as u32,
        }
    };
    for _ in 0..n {
        match rx_next(rng) % 16 {
            0..=2 if !items.is_empty() => {
                // A back edge to an earlier item (maybe the block's start,
                // maybe an RVC pair's second half).
                let t = (rx_next(rng) % items.len() as u64) as usize;
                if no_land.contains(&t) {
                    continue;
                }
                let half =
                    matches!(items[t], Rx::W(w) if w & 3 != 3) && rx_next(rng).is_multiple_of(2);
                heads.push(t);
                items.push(Rx::W(addi(31, 31, -1)));
                no_land.extend([items.len(), items.len() + 1]);
                match rx_next(rng) % 3 {
                    0 => items.push(Rx::Br(4, 0, 31, t, half)), // blt x0, x31
                    k => {
                        // bge x0, x31, over; (b<cc> | j) head; over:
                        let at = items.len();
                        items.push(Rx::Br(5, 0, 31, at + 2, false));
                        if k == 1 {
                            let f3 = [0, 1, 4, 5, 6, 7][(rx_next(rng) % 6) as usize];
                            items.push(Rx::Br(f3, rs(rng), rs(rng), t, half));
                        } else {
                            items.push(Rx::Jal(t, half));
                        }
                    }
                }
                after_back.push(items.len());
            }
            3 | 4 => {
                fwd.push(items.len());
                let f3 = [0, 1, 4, 5, 6, 7][(rx_next(rng) % 6) as usize];
                items.push(Rx::FwdBr(f3, rs(rng), rs(rng)));
            }
            5 => {
                fwd.push(items.len());
                items.push(Rx::FwdJal);
            }
            6 => {
                // A ret the block goes on past.
                let at = items.len();
                let f3 = [0, 1, 4, 5][(rx_next(rng) % 4) as usize];
                items.push(Rx::Br(f3, rs(rng), rs(rng), at + 2, false));
                items.push(Rx::W(jalr(0, 1, 0)));
            }
            _ => rx_op(rng, &mut items, w_only),
        }
    }
    let end = items.len();
    for at in fwd {
        // Later: a loop head, the point after a back edge, an RVC second
        // half, or anywhere (the end included).
        let later = |v: &Vec<usize>| v.iter().copied().filter(|&t| t > at).collect::<Vec<_>>();
        let (hs, abs) = (later(&heads), later(&after_back));
        let pick = rx_next(rng) % 4;
        let mut t = if pick == 0 && !hs.is_empty() {
            hs[(rx_next(rng) % hs.len() as u64) as usize]
        } else if pick == 1 && !abs.is_empty() {
            abs[(rx_next(rng) % abs.len() as u64) as usize]
        } else {
            at + 1 + (rx_next(rng) % (end - at) as u64) as usize
        };
        while no_land.contains(&t) {
            t += 1;
        }
        let half =
            t < end && matches!(items[t], Rx::W(w) if w & 3 != 3) && rx_next(rng).is_multiple_of(2);
        items[at] = match items[at] {
            Rx::FwdBr(f3, a, b) => Rx::Br(f3, a, b, t, half),
            _ => Rx::Jal(t, half),
        };
    }
    items
        .iter()
        .enumerate()
        .map(|(k, it)| {
            let off = |t: usize, half: bool| 4 * (t as i32 - k as i32) + if half { 2 } else { 0 };
            match *it {
                Rx::W(w) => w,
                Rx::Br(f3, a, b, t, h) => rx_branch(f3, a, b, off(t, h)),
                Rx::Jal(t, h) => j(off(t, h)),
                Rx::FwdBr(..) | Rx::FwdJal => unreachable!(),
            }
        })
        .collect()
}

fn rx_regs(rng: &mut u64, prog_len: usize) -> Vec<(usize, u64)> {
    let end = CODE + 4 * prog_len as u64;
    let walk = 1 + rx_next(rng) % 24;
    let mut regs = vec![
        (1usize, end),
        (18, DATA),
        (20, DATA + 0x1000 - 8 * walk),
        (31, 1 + rx_next(rng) % 40),
    ];
    for r in 5..=16usize {
        let v = rx_next(rng);
        let v = match v % 5 {
            0 => v,
            1 => v as i32 as i64 as u64,
            2 => [
                0,
                1,
                u64::MAX,
                1 << 63,
                1 << 31,
                0x7fff_ffff,
                0xffff_ffff,
                0x1_0000_0000,
            ][(v >> 8) as usize % 8],
            3 => (v >> 40) & 0xf,
            _ => 0x8000_0000 | (v & 0xffff),
        };
        regs.push((r, v));
    }
    regs
}

fn rx_run(seed: u64, count: usize) {
    let mut rng = seed;
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
    for _ in 0..count {
        let prog = rx_prog(&mut rng);
        let regs = rx_regs(&mut rng, prog.len());
        both_ways_data(&prog, &data, &regs);
    }
}

#[test]
fn random_block_internal_loops_and_merges_match_the_interpreter() {
    rx_run(0x2545_f491_4f6c_dd1d, 6000);
}

#[test]
#[ignore]
fn random_block_internal_loops_long() {
    let n: usize = std::env::var("RX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("RX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    rx_run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, n);
}

/// The interpreter one instruction at a time, `n` of them, from `regs`
/// over a fresh space holding `prog` and `data`: (registers, pc, data).
fn rx_interp_steps(
    prog: &[u32],
    data: &[u8],
    regs: &[(usize, u64)],
    n: u64,
) -> ([u64; 32], u64, Vec<u8>) {
    let sp = UserSpace::new(32).unwrap();
    sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
    sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
    let mut words = prog.to_vec();
    words.push(0x73);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    sp.write(CODE, &bytes).unwrap();
    sp.write(DATA, data).unwrap();
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    for &(r, v) in regs {
        h.set_x(r, v);
    }
    h.pc = CODE;
    let mut mem = crate::mmu::UserMem::new(&sp);
    for _ in 0..n {
        let pc = h.pc;
        let mut b = [0u8; 4];
        sp.read(pc, &mut b).unwrap();
        let mut insn = decode(u32::from_le_bytes(b));
        insn.off = 0;
        let mut end = insn;
        end.kind = Kind::BlockEnd;
        end.off = insn.size() as u16;
        let next = crate::exec::exec_block(&mut h.core, &mut mem, &[insn, end], pc)
            .expect("no trap before the stop");
        h.core.pc = next;
    }
    let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
    let mut m = vec![0; 0x1000];
    sp.read(DATA, &mut m).unwrap();
    (x, h.pc, m)
}

/// Random programs whose loops never run out of fuel (x31 huge), stopped
/// by another thread: the translated run must stop (every cycle of jumps
/// inside a block passes an attention check), and where it stops its
/// registers, pc and memory must be the interpreter's after the same
/// number of instructions.
#[test]
fn random_endless_block_internal_loops_stop_where_the_interpreter_agrees() {
    let mut rng: u64 = 0x517c_c1b7_2722_0a95;
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
    let mut stopped = 0;
    for _ in 0..60 {
        let prog = rx_prog(&mut rng);
        let mut regs = rx_regs(&mut rng, prog.len());
        regs.retain(|&(r, _)| r != 31 && r != 20);
        regs.extend([(31, i64::MAX as u64), (20, DATA)]);
        let (p2, r2, d2) = (prog.clone(), regs.clone(), data.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sp = UserSpace::new(32).unwrap();
            sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
            sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
            let mut words = p2.clone();
            words.push(0x73);
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            sp.write(CODE, &bytes).unwrap();
            sp.write(DATA, &d2).unwrap();
            sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
            let mut h = Hart::new_user();
            h.set_jit_threshold(1);
            h.set_jit(true);
            for &(r, v) in &r2 {
                h.set_x(r, v);
            }
            h.pc = CODE;
            let ctl = h.control().clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(3));
                ctl.request_stop();
            });
            let e = h.run_user(&sp);
            t.join().unwrap();
            let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
            let mut m = vec![0; 0x1000];
            sp.read(DATA, &mut m).unwrap();
            let _ = tx.send((e, h.pc, h.instret(), x, m));
        });
        let (e, pc, n, x, m) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("never stopped: program {prog:08x?}"));
        if e != crate::Exit::Stopped {
            continue;
        }
        stopped += 1;
        let (xi, pci, mi) = rx_interp_steps(&prog, &data, &regs, n);
        assert_eq!(
            (pc, x),
            (pci, xi),
            "after {n} instructions, program {prog:08x?}"
        );
        assert!(
            m == mi,
            "memory after {n} instructions, program {prog:08x?}"
        );
    }
    assert!(stopped > 20, "only {stopped} programs looped");
}

/// A tight endless nest with several heads in one block (a W register
/// checked at the group's first head, a head that is also a merge point
/// entered by a forward jump, a `j` back edge): a stop request ends it,
/// where the interpreter agrees after the same number of instructions.
#[test]
fn a_tight_loop_with_several_heads_in_one_block_stops() {
    let prog = [
        addi(12, 12, 1), // 0
        bne(13, 0, 20),  // 1: -> 6 (head C, a merge point)
        addi(10, 10, 1), // 2: head A
        addiw(5, 5, 1),  // 3: head B (x5: W only)
        andi(6, 5, 3),   // 4
        bne(6, 0, -8),   // 5: -> 3
        addi(11, 11, 1), // 6: head C
        andi(7, 11, 7),  // 7
        bne(7, 0, -8),   // 8: -> 6
        xor(14, 14, 11), // 9
        j(-32),          // 10: -> 2
    ];
    let data = vec![0u8; 0x1000];
    for (x13, x5) in [
        (0u64, 0x1_0000_0001u64),
        (1, 7),
        (0, 0xffff_ffff_8000_0000),
        (1, 1 << 40),
    ] {
        let regs = [(13usize, x13), (5, x5), (14, 0x1234_5678_9abc)];
        let sp = UserSpace::new(32).unwrap();
        sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
        sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
        let bytes: Vec<u8> = prog
            .iter()
            .chain(&[0x73])
            .flat_map(|w| w.to_le_bytes())
            .collect();
        sp.write(CODE, &bytes).unwrap();
        sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(true);
        for &(r, v) in &regs {
            h.set_x(r, v);
        }
        h.pc = CODE;
        let ctl = h.control().clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            ctl.request_stop();
        });
        assert_eq!(h.run_user(&sp), crate::Exit::Stopped);
        t.join().unwrap();
        let n = h.instret();
        assert!(n > 10_000, "the loops ran: {n}");
        let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
        let (xi, pci, _) = rx_interp_steps(&prog, &data, &regs, n);
        assert_eq!(
            (h.pc, x),
            (pci, xi),
            "x13 {x13} x5 {x5:#x}: after {n} instructions"
        );
    }
}

/// `call`, `tail` and `jump` as unrelaxed code writes them: `auipc` of
/// the base, then `jalr` (see `static_jalrs`). Offsets from the program's
/// start, which is the first `auipc`'s address.
pub(super) fn auipc_calls() -> Vec<u32> {
    vec![
        auipc(5, 0),         // 0
        jalr(1, 5, 21),      // 4: call 20 (bit 0 of the sum dropped), ra = 8
        addi(10, 10, 1),     // 8
        auipc(6, 0),         // 12
        jalr(0, 6, 20),      // 16: tail to 32
        addi(11, 11, 7),     // 20: the callee
        jalr(0, 1, 0),       // 24: ret to 8
        addi(14, 14, 100),   // 28: never
        auipc(7, 0),         // 32
        jalr(7, 7, 12),      // 36: to 44, the link into the base's register
        addi(14, 14, 100),   // 40: never
        addi(12, 7, 0),      // 44
        branch(1, 10, 0, 8), // 48: bne x10, x0, 56 (lands on the jalr)
        auipc(8, 0),         // 52: never (a jump lands past it)
        jalr(0, 8, 12),      // 56: x8 is the caller's: to 64 (x8 = 52 at entry)
        addi(14, 14, 100),   // 60: never
        addi(13, 13, 3),     // 64
    ]
}

/// (User mode looks these targets up as any `jalr`'s; system mode knows
/// them, see `amo_sys_tests`.)
#[test]
fn calls_through_auipc_and_jalr_match_the_interpreter() {
    let prog = auipc_calls();
    // The jalr at 56 takes x8 from before the program: CODE + 52, so it
    // goes to 64 as if the auipc at 52 had run; from CODE + 56 instead,
    // to 68: the ecall. A translator that took the skipped `auipc` for
    // the base would go to 64 both times.
    for x8 in [CODE + 52, CODE + 56] {
        let x = both_ways(&prog, &[(8, x8)]);
        assert_eq!((x[1], x[10], x[11]), (CODE + 8, 1, 7));
        assert_eq!((x[7], x[12]), (CODE + 40, CODE + 40));
        assert_eq!(x[13], if x8 == CODE + 52 { 3 } else { 0 });
        assert_eq!(x[14], 0);
    }
}

/// A loop that checks its base register once on the way in (see
/// `mem::loop_bases`) and, after its one counted back edge (a `bne` to
/// the start), an `auipc`+`jalr` back to the start (see `static_jalrs`):
/// the jalr is a second back edge, and the base register it brings back
/// was never checked. x13 points (from the space's base) at host memory
/// outside the space: the interpreter faults on the load; the translated
/// load must not read that memory. (User mode now looks every `jalr`'s
/// target up, and `static_jalrs` leaves out targets at the block's
/// start: this keeps both ways exact should either change.)
#[test]
fn a_static_jalr_back_to_a_loop_start_keeps_the_entry_check() {
    let prog = vec![
        ld(10, 11, 0),         // 0: loop: base x11 (checked once at entry)
        addi(11, 11, 8),       // 4
        branch(1, 11, 12, -8), // 8: bne x11, x12, 0
        branch(1, 14, 0, 24),  // 12: bne x14, x0, 36 (the ecall): second time
        addi(14, 0, 1),        // 16
        addi(11, 13, 0),       // 20: x11 = an unchecked address
        addi(12, 13, 8),       // 24: one pass
        auipc(6, 0),           // 28
        jalr(0, 6, -28),       // 32: back to 0, the block's start
    ];
    // Both spaces first (made one after the other, a space dropped in
    // between could come back elsewhere: parallel tests map too), then a
    // secret host buffer outside both and out of a 12-bit offset's reach
    // of their guards.
    let spaces = [UserSpace::new(32).unwrap(), UserSpace::new(32).unwrap()];
    let far_of = |secret: &[u64], sp: &UserSpace| {
        (secret.as_ptr() as u64).wrapping_sub(sp.host_base() as u64) + 8 * 256
    };
    let outside = |far: u64| far > (1 << 32) + (64 << 10) && far < (64u64 << 10).wrapping_neg();
    let mut passed_over = Vec::new();
    let secret: Box<[u64]> = loop {
        let b = vec![0x5ec2_e75e_c2e7_5ec2u64; 512].into_boxed_slice();
        if spaces.iter().all(|sp| outside(far_of(&b, sp))) {
            break b;
        }
        assert!(passed_over.len() < 16, "no host buffer outside the spaces");
        passed_over.push(b);
    };
    let mut out = Vec::new();
    for (jit, sp) in [true, false].into_iter().zip(spaces) {
        sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
        sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
        let mut words = prog.clone();
        words.push(0x73); // ecall
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        sp.write(CODE, &bytes).unwrap();
        sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(jit);
        h.set_x(11, DATA);
        h.set_x(12, DATA + 8);
        let far = far_of(&secret, &sp);
        h.set_x(13, far);
        h.pc = CODE;
        let mut e = h.run_user(&sp);
        // The two spaces lie at different host addresses, so `far`
        // differs: compare addresses relative to it.
        if let crate::Exit::MemFault(f) = &mut e {
            f.addr = f.addr.wrapping_sub(far);
        }
        let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
        out.push((
            format!("{e:?}"),
            h.pc,
            h.instret(),
            x[10],
            x[11].wrapping_sub(far),
        ));
    }
    assert_eq!(out[0], out[1], "translated vs interpreted");
}

/// Random programs with `auipc` + `jalr` pairs in random places (see
/// `static_jalrs`): links into x0, x1, x5, the base itself or another
/// register, bit 0 of the sum set or not, targets forward, onto the
/// program's start (a back edge when a branch also loops there) or the
/// final ecall; pairs whose auipc writes another register than the
/// jalr's base; branches landing between an auipc and its jalr; loads
/// and stores through a stepping base. x30 is the fuel, tested at the
/// start (the only backward target), so every program ends. (Written
/// when user mode took these targets as known; it still guards the
/// lookup.)
#[test]
fn random_auipc_jalr_placements_match_the_interpreter() {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % n
    };
    for _ in 0..150 {
        let len = 8 + rnd(24) as usize;
        // Slots: 0 = fuel, 1 = its test, then the body; the ecall at `len`.
        let mut p = vec![addi(30, 30, -1), 0];
        // Indices of jalrs whose auipc writes x7 (see below).
        let mut landable = Vec::new();
        let mut pending = Vec::new();
        // Jalrs no jump may land on (their base could send them back).
        let mut fixed = Vec::new();
        while p.len() < len {
            let k = p.len();
            match rnd(9) {
                0..=2 if k + 2 <= len => {
                    // A pair: the target a later word or the start. x7's
                    // pair (one a program) may be landed on past its
                    // auipc, so it goes forward and does not link into
                    // x7; with another auipc register, the base is x15
                    // (CODE), not a static target.
                    let x7 = landable.is_empty() && rnd(3) == 0;
                    let t = if !x7 && rnd(4) == 0 {
                        0
                    } else {
                        k + 2 + rnd((len - k - 1) as u64) as usize
                    };
                    let other = !x7 && rnd(8) == 0;
                    let base = if x7 {
                        7
                    } else if other {
                        15
                    } else {
                        [1, 5, 6][rnd(3) as usize]
                    };
                    let rd = if x7 {
                        [0, 1, 5, 13][rnd(4) as usize]
                    } else {
                        [0, 1, 5, base, 13][rnd(5) as usize]
                    };
                    let bit = rnd(2) as i32;
                    if other {
                        p.push(auipc(14, 0));
                        p.push(jalr(rd, 15, 4 * t as i32 + bit));
                    } else {
                        p.push(auipc(base, 0));
                        p.push(jalr(rd, base, 4 * (t as i32 - k as i32) + bit));
                    }
                    if x7 {
                        landable.push(k + 1);
                    } else {
                        fixed.push(k + 1);
                    }
                }
                3 => p.push(ld(12, 20, 8 * rnd(2) as i32)),
                4 => p.push(sd(11, 20, 8 * rnd(2) as u32)),
                5 => p.push(addi(20, 20, 8)),
                6 => {
                    // A branch, forward (to be placed) or to the start.
                    if rnd(3) == 0 {
                        p.push(branch(1, 10, 11, -4 * k as i32));
                    } else {
                        pending.push(k);
                        p.push(0);
                    }
                }
                _ => {
                    let (d, a, b) = (10 + rnd(4) as u32, 10 + rnd(4) as u32, 10 + rnd(4) as u32);
                    p.push(if rnd(2) == 0 {
                        add(d, a, b)
                    } else {
                        addi(d, a, rnd(64) as i32 - 32)
                    });
                }
            }
        }
        p[1] = branch(4, 30, 0, 4 * (len as i32 - 1)); // blt x30, x0, ecall
        for &k in &pending {
            // Forward: onto a jalr past its auipc (x7's pairs only: x7
            // holds its own auipc's value from an earlier pass, or 0),
            // or anywhere later.
            let later: Vec<usize> = landable.iter().copied().filter(|&j| j > k).collect();
            let t = if !later.is_empty() && rnd(2) == 0 {
                later[rnd(later.len() as u64) as usize]
            } else {
                let mut t = k + 1 + rnd((len - k) as u64) as usize;
                while fixed.contains(&t) {
                    t += 1;
                }
                t
            };
            p[k] = branch(1, 10, 12, 4 * (t - k) as i32);
        }
        let regs = [
            (7, 0),
            (15, CODE),
            (10, rnd(3)),
            (11, rnd(3)),
            (12, rnd(3)),
            (20, DATA),
            (30, 1 + rnd(6)),
        ];
        both_ways(&p, &regs);
    }
}

#[test]
fn system_mode_groups_accesses_through_one_unchanged_base() {
    use super::mem::{sys_groups, SysAcc::*};
    // A prologue's stores through sp (x2), a load through a0 (x10) in
    // between; then sp moves (a new group), an AMO (helper: ends every
    // group), and a load into its own base (the group ends after it).
    let insns = decoded(vec![
        sd(1, 2, 8),
        sd(8, 2, 0),
        ld(11, 10, 16),
        sw(9, 2, 16),
        addi(2, 2, -32),
        ld(1, 2, 40),
        ld(8, 2, 32),
        0x00f2_b8af, // amoadd.d x17, x15, (x5)
        ld(10, 10, 0),
        ld(12, 10, 8),
        ld(13, 10, 16),
    ]);
    let g = sys_groups(&insns, &|_| false);
    assert_eq!(
        g,
        [
            Lead {
                slot: 0,
                lo: 0,
                hi: 19,
                store: true
            },
            Member(0),
            Own,
            Member(0),
            Own,
            Lead {
                slot: 0,
                lo: 32,
                hi: 47,
                store: false
            },
            Member(0),
            Own,
            Own,
            Lead {
                slot: 0,
                lo: 8,
                hi: 23,
                store: false
            },
            Member(0),
        ]
    );
    // Bytes that cannot lie in one page: apart.
    let far = sys_groups(&decoded(vec![ld(1, 2, -2048), ld(8, 2, 2047)]), &|_| false);
    assert_eq!(far, [Own, Own]);
    // Five bases at once: four slots, the fifth group stays apart.
    let mut w = Vec::new();
    for b in [5, 6, 7, 8, 9, 5, 6, 7, 8, 9] {
        w.push(ld(10, b, 0));
    }
    let five = sys_groups(&decoded(w), &|_| false);
    assert_eq!(five.iter().filter(|a| matches!(a, Lead { .. })).count(), 4);
    assert_eq!(five[4], Own);
    assert_eq!(five[9], Own);
}

/// `shNadd rd, rs1, rs2` (Zba; `n` = 1..=3).
fn shadd(n: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x33, 2 * n, 0x10, rd, rs1, rs2)
}

/// How many `lea rcx, [r12 + r]` or `add rcx, r12` (the host address of
/// an indexed load's base, see `indexed`) `code` holds.
fn indexed_bases(code: &[u8]) -> usize {
    code.windows(3)
        .filter(|w| {
            (w[0] & 0xfd == 0x49 && w[1] == 0x8d && w[2] == 0x0c)
                || (w[0] == 0x4c && w[1] == 0x01 && w[2] == 0xe1)
        })
        .count()
}

#[test]
fn indexed_loads_match_the_interpreter() {
    // add / shNadd (Zba, or `slli; add` fused) then a load through the
    // sum into the same register: one load off r12 + base, the index
    // scaled in its addressing mode (see `indexed`). Every width and
    // sign, the operands cached (read again after) or read in place,
    // rd aliasing either operand; the address in the data page, past
    // its end or start (host faults resumed at the add), the base or
    // the index outside the space (the bound check's slow exit).
    let loads = [0u32, 1, 2, 3, 4, 5, 6]; // lb lh lw ld lbu lhu lwu
    let adds = |n: u32, rd: u32, rs1: u32, rs2: u32| -> Vec<Vec<u32>> {
        let mut v = Vec::new();
        if n == 0 {
            v.push(vec![add(rd, rs1, rs2)]);
            v.push(vec![add(rd, rs2, rs1)]);
        } else {
            v.push(vec![shadd(n, rd, rs1, rs2)]);
            if rd != rs2 && rd != 0 {
                v.push(vec![slli(rd, rs1, n as i32), add(rd, rd, rs2)]);
            }
        }
        v
    };
    let cases: [(u64, u64); 8] = [
        (DATA, 3),
        (DATA + 0x800, 0x7f),
        (DATA + 0xff0, 1),     // the access crosses or leaves the page
        (DATA - 0x800, 0x100), // starts below the page
        (DATA, 0x1000),        // past the page's end
        (1 << 32, 0),          // base outside the 4 GiB space
        (DATA, 1 << 40),       // index far outside
        (DATA, u64::MAX - 3),  // a negative index: below the page
    ];
    let mut combined = 0;
    for n in 0..=3u32 {
        for (rd, rs1, rs2) in [(10, 11, 12), (11, 11, 12), (12, 11, 12), (10, 11, 11)] {
            for ld_f3 in loads {
                for off in [0, 4, -8] {
                    for prog in adds(n, rd, rs1, rs2) {
                        let load = i(0x03, ld_f3, rd, rd, off);
                        let inplace = [&prog[..], &[load]].concat();
                        // The operands read again after: cached.
                        let cached =
                            [&prog[..], &[load, add(13, rs1, rs2), add(14, 13, rd)]].concat();
                        combined += indexed_bases(&host_code(&inplace));
                        combined += indexed_bases(&host_code(&cached));
                        for &(base, index) in &cases {
                            let regs = [(rs1 as usize, index), (rs2 as usize, base)];
                            let regs = if rs1 == rs2 {
                                vec![(rs1 as usize, DATA + (index & 0x7ff))]
                            } else {
                                regs.to_vec()
                            };
                            both_ways(&inplace, &regs);
                            both_ways(&cached, &regs);
                        }
                    }
                }
            }
        }
    }
    assert!(combined > 0, "some indexed loads combined");
    // A jump landing on the load: it keeps its own address (the add's
    // result) and check.
    for x1 in [0u64, 1] {
        let prog = [bne(1, 0, 8), add(10, 11, 12), lbu(10, 10, 0)];
        let code = host_code(&prog);
        assert_eq!(indexed_bases(&code), 0);
        both_ways(&prog, &[(1, x1), (10, DATA + 5), (11, 3), (12, DATA)]);
    }
    // The load into another register, or through another base: the
    // address lives on, not combined.
    for prog in [
        [add(10, 11, 12), lbu(13, 10, 0)],
        [add(10, 11, 12), lbu(10, 11, 0)],
    ] {
        assert_eq!(indexed_bases(&host_code(&prog)), 0);
        both_ways(&prog, &[(11, 3), (12, DATA)]);
    }
    let x = both_ways(
        &[slli(10, 11, 2), add(10, 10, 12), i(0x03, 2, 10, 10, 4)],
        &[(11, 0x10), (12, DATA)],
    );
    let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
    let at = 0x44;
    let want = i32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as i64 as u64;
    assert_eq!(x[10], want);
}

#[test]
fn fused_u32_indexes_match_the_interpreter() {
    // slli 32; srli 29..32 (and 28, 33: not fused): zext.w scaled
    // (slli.uw), into the same register or (the first half kept) into
    // another; then an add of it: shNadd.uw. The kept first half's
    // register is read after, the source may be the destination.
    for seed in 0..VALUES.len() {
        let regs = regs_from(seed);
        for n in [28, 29, 30, 31, 32, 33] {
            for (t, s, d) in [
                (10, 10, 10),
                (10, 11, 10),
                (10, 11, 12),
                (10, 11, 11),
                (10, 10, 12),
                (10, 11, 0),
                (0, 11, 12),
            ] {
                for rs2 in [13, 10, 12, 0] {
                    let pair = [slli(t, s, 32), srli(d, t, n)];
                    let after = add(14, t, d);
                    both_ways(&[pair[0], pair[1], after], &regs);
                    both_ways(&[pair[0], pair[1], add(d, d, rs2), after], &regs);
                    both_ways(&[pair[0], pair[1], add(d, rs2, d), after], &regs);
                }
            }
        }
    }
    let x = both_ways(
        &[slli(10, 11, 32), srli(12, 10, 31), add(12, 12, 13)],
        &[(11, 0xffff_ffff_8000_0003), (13, 0x100)],
    );
    assert_eq!(x[12], 0x1_0000_0106);
    assert_eq!(x[10], 0x8000_0003_0000_0000, "the first half stays");
    // Zba's own forms: slli.uw, shNadd.uw.
    for seed in 0..VALUES.len() {
        let regs = regs_from(seed);
        for (rd, rs1, rs2) in [
            (10, 11, 12),
            (10, 10, 12),
            (10, 11, 10),
            (10, 11, 11),
            (0, 11, 12),
        ] {
            for sh in [0, 1, 3, 31, 32, 63] {
                let w = i(0x1b, 1, rd, rs1, 0x80 | sh);
                assert_eq!(decode(w).kind, Kind::SlliUw);
                both_ways(&[w], &regs);
            }
            for n in 1..=3 {
                let w = r(0x3b, 2 * n, 0x10, rd, rs1, rs2);
                both_ways(&[w, add(13, 10, 0)], &regs);
            }
        }
    }
    // A jump to the srli splits the pair.
    for x1 in [0u64, 1] {
        let prog = [bne(1, 0, 8), slli(10, 11, 32), srli(12, 10, 31)];
        both_ways(&prog, &[(1, x1), (10, 7), (11, 3)]);
    }
}

#[test]
fn constants_added_to_a_register_match_the_interpreter() {
    // lui or li, then an add of it to another register: one addi with
    // a 32-bit immediate; lui+addi+add: the constant pair, then the add.
    for seed in 0..VALUES.len() {
        let regs = regs_from(seed);
        for (rd, rs2) in [(10, 11), (10, 10), (10, 0), (0, 11)] {
            for hi in [0, 3, 0x7ffff, 0x80000, 0xfffff] {
                both_ways(&[lui(rd, hi), add(rd, rd, rs2)], &regs);
                both_ways(&[lui(rd, hi), add(rd, rs2, rd)], &regs);
                for lo in [-2048, -1, 0, 5, 2047] {
                    both_ways(&[lui(rd, hi), addi(rd, rd, lo), add(rd, rd, rs2)], &regs);
                    both_ways(&[lui(rd, hi), addiw(rd, rd, lo), add(rd, rs2, rd)], &regs);
                }
            }
            for c in [-2048, -1, 0, 1, 2047] {
                both_ways(&[addi(rd, 0, c), add(rd, rd, rs2)], &regs);
                both_ways(&[addi(rd, 0, c), add(rd, rs2, rd)], &regs);
                // Not li: addi from another register.
                both_ways(&[addi(rd, 12, c), add(rd, rd, rs2)], &regs);
            }
        }
    }
    let x = both_ways(&[lui(10, 3), add(10, 10, 11)], &[(11, 0x1234)]);
    assert_eq!(x[10], 0x4234);
    let x = both_ways(
        &[lui(10, 0x80000), addi(10, 10, -1), add(10, 11, 10)],
        &[(11, 1)],
    );
    assert_eq!(x[10], 0xffff_ffff_8000_0000);
    // A jump to the add splits the pair.
    for x1 in [0u64, 1] {
        let prog = [bne(1, 0, 8), lui(10, 3), add(10, 10, 11)];
        both_ways(&prog, &[(1, x1), (10, 7), (11, 3)]);
    }
}

#[test]
fn system_mode_groups_see_fused_pairs_as_writes_of_the_base() {
    use super::mem::{sys_groups, SysAcc::*};
    // The planner sees the block as the translator emits it (after
    // `fuse::pairs`): a fused pair writing the base ends its group at
    // its first half (the second, a write to the zero sink, emits
    // nothing); a pair writing another register leaves it open.
    let mut insns = decoded(vec![
        ld(10, 2, 0),
        ld(11, 2, 8),
        lui(2, 0x9),
        addi(2, 2, 0x10), // lui + addi: x2 = 0x9010
        ld(12, 2, 0),
        lui(5, 1),
        addi(5, 5, 1), // a pair writing x5: x2's group goes on
        ld(13, 2, 8),
        slli(2, 14, 3),
        add(2, 2, 15), // sh3add x2, x14, x15
        ld(16, 2, 0),
        ld(17, 2, 16),
        slli(2, 14, 32),
        srli(2, 2, 32),
        add(2, 15, 2), // add.uw x2, x14, x15
        sd(16, 2, 0),
        ld(17, 2, 24),
    ]);
    let n = insns.len();
    super::fuse::pairs(&mut insns, &vec![false; n]);
    assert_eq!(insns[3].rd, ZERO_SINK);
    assert_eq!(insns[8].kind, Kind::Sh3add);
    assert_eq!(insns[12].kind, Kind::AddUw);
    assert_eq!(insns[14].rd, ZERO_SINK);
    let lead = |lo, hi, store| Lead {
        slot: 0,
        lo,
        hi,
        store,
    };
    assert_eq!(
        sys_groups(&insns, &|_| false),
        [
            lead(0, 15, false),
            Member(0),
            Own,
            Own,
            lead(0, 15, false),
            Own,
            Own,
            Member(0),
            Own,
            Own,
            lead(0, 23, false),
            Member(0),
            Own,
            Own,
            Own,
            lead(0, 31, true),
            Member(0),
        ]
    );
}

#[test]
fn a_branch_alone_at_its_target_becomes_conditional_moves_from_memory() {
    // The branch is the only jump to the add after the op, so the add is
    // no merge point, and the branch must become conditional moves even
    // when its registers are not cached yet: as first instruction, and
    // after seven others took every slot of the cache (the loads evict
    // none of the branch's registers, or the moves would be wrong).
    let pressure: Vec<u32> = (9..16).map(|r| add(r, r, r)).collect();
    let shapes: [&[u32]; 3] = [
        &[branch(0, 5, 6, 8), addi(7, 8, 1)],
        &[branch(6, 6, 5, 8), add(7, 7, 8)],
        &[bne(5, 0, 12), slli(7, 8, 48), srli(7, 7, 48)],
    ];
    for shape in shapes {
        for lead in [&[][..], &pressure[..]] {
            let mut prog = lead.to_vec();
            prog.extend_from_slice(shape);
            prog.push(add(16, 7, 5));
            two_cmovs_both_ways(&prog);
        }
    }
    // A second jump to the same place keeps it a merge point: the branch
    // may stay a branch there.
    let prog = [
        branch(0, 10, 0, 12), // beqz x10, +12 (to the add)
        branch(0, 5, 6, 8),
        addi(7, 8, 1),
        add(16, 7, 5),
    ];
    assert_eq!(cmovs(&host_code(&prog)), 0);
    for x10 in [0, 1] {
        let mut regs = regs_from(2);
        regs.retain(|&(r, _)| r != 10);
        regs.push((10, x10));
        both_ways(&prog, &regs);
    }
}

#[test]
fn a_loop_with_conditional_moves_checks_its_base_once() {
    // gzip's window slide: for each 16-bit entry, m >= x20 ? m : 0x8000
    // (as `lui`), plus x11, stored back in place. The branch over the
    // `lui` becomes conditional moves, so the loop has no merge point: its
    // base x15 (stepped by one addi) is checked once on the way in, not at
    // the load and again at the store.
    let lhu = |rd, rs1| i(0x03, 5, rd, rs1, 0);
    let sh = |rs2: u32, rs1: u32| rs2 << 20 | rs1 << 15 | 1 << 12 | 0x23;
    let prog = [
        lhu(16, 15),          // head
        addi(12, 16, 0),      // mv x12, x16
        branch(7, 16, 20, 8), // bgeu x16, x20, +8
        lui(12, 0xffff8),
        addw(12, 12, 11),
        sh(12, 15),
        addi(15, 15, 2),
        bne(15, 10, -28),
    ];
    assert_eq!(bound_checks(&host_code(&prog)), 1);
    let data: Vec<u8> = (0..0x1000u32).map(|i| ((i * 7919) >> 3) as u8).collect();
    for (start, n) in [(0, 64), (0xf00, 128)] {
        let regs = [
            (15, DATA + start),
            (10, DATA + start + 2 * n),
            (20, 0x8000),
            (11, (-0x8000i64) as u64),
        ];
        both_ways_data(&prog, &data, &regs);
    }
}

/// Review (2aab33e): random loops mixing branches over one op (forced
/// conditional moves: the only jump to their target), branches over two,
/// fused pairs after and inside them, accesses through a base that a
/// (possibly conditional) `addi` steps, and more live registers than the
/// cache holds; translated vs interpreted, also walking off the page.
#[test]
fn review_random_loops_with_forced_selects_match_the_interpreter() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    const BASE: u32 = 21;
    const COUNT: u32 = 22;
    let plain = |rnd: &mut dyn FnMut(u64) -> u64| -> u32 {
        let rd = 5 + rnd(14) as u32;
        let rs1 = 5 + rnd(14) as u32;
        let rs2 = 5 + rnd(14) as u32;
        match rnd(10) {
            0 => addi(rd, rs1, rnd(4000) as i32 - 2000),
            1 => add(rd, rs1, rs2),
            2 => r(0x33, 4, 0, rd, rs1, rs2), // xor
            3 => r(0x33, 3, 0, rd, rs1, rs2), // sltu
            4 => slli(rd, rs1, rnd(64) as i32),
            5 => srli(rd, rs1, rnd(64) as i32),
            6 => lui(rd, rnd(1 << 20) as u32),
            7 => addw(rd, rs1, rs2),
            8 => r(0x33, 0, 0x20, rd, rs1, rs2), // sub
            _ => addiw(rd, rs1, rnd(4000) as i32 - 2000),
        }
    };
    let f3s = [0, 1, 4, 5, 6, 7];
    let mut progs = 0;
    for _ in 0..400 {
        let mut body: Vec<u32> = Vec::new();
        let mut stepped = false;
        for _ in 0..(4 + rnd(10)) {
            let f3 = f3s[rnd(6) as usize];
            let (ra, rb) = (5 + rnd(17) as u32, 5 + rnd(17) as u32);
            match rnd(9) {
                0 | 1 => body.push(plain(&mut rnd)),
                2 | 3 => {
                    body.push(branch(f3, ra, rb, 8));
                    body.push(plain(&mut rnd));
                }
                4 => {
                    // A fused pair skipped, or one right after the target.
                    let rd = 5 + rnd(14) as u32;
                    if rnd(2) == 0 {
                        body.push(branch(f3, ra, rb, 12));
                        body.push(lui(rd, rnd(1 << 20) as u32));
                        body.push(addi(rd, rd, rnd(4000) as i32 - 2000));
                    } else {
                        body.push(branch(f3, ra, rb, 8));
                        body.push(plain(&mut rnd));
                        body.push(slli(rd, 5 + rnd(14) as u32, 48));
                        body.push(srli(rd, rd, 48));
                    }
                }
                5 => {
                    let rd = 5 + rnd(14) as u32;
                    let off = 8 * rnd(9) as i32;
                    if rnd(2) == 0 {
                        body.push(ld(rd, BASE, off));
                    } else {
                        body.push(sd(rd, BASE, off as u32));
                    }
                }
                6 if !stepped => {
                    stepped = true;
                    let step = [8, -8, 16, 2040, -2048][rnd(5) as usize];
                    if rnd(2) == 0 {
                        body.push(branch(f3, ra, rb, 8));
                    }
                    body.push(addi(BASE, BASE, step));
                }
                7 => {
                    // Not a select: two ops skipped.
                    body.push(branch(f3, ra, rb, 12));
                    body.push(plain(&mut rnd));
                    body.push(plain(&mut rnd));
                }
                _ => {
                    // Two branches over one op each, back to back (the
                    // second's target right after the first's).
                    body.push(branch(f3, ra, rb, 8));
                    body.push(plain(&mut rnd));
                    body.push(branch(f3s[rnd(6) as usize], rb, ra, 8));
                    body.push(plain(&mut rnd));
                }
            }
        }
        let mut prog = Vec::new();
        if rnd(2) == 0 {
            prog.push(plain(&mut rnd));
        }
        let head = prog.len();
        prog.extend_from_slice(&body);
        prog.push(addi(COUNT, COUNT, -1));
        let back = -4 * (prog.len() - head) as i32;
        prog.push(bne(COUNT, 0, back));
        prog.push(add(5, 6, 7));
        for (start, n) in [
            (0x400, 1 + rnd(30)),
            (0xf80, 1 + rnd(40)),
            (0x40, 1 + rnd(40)),
        ] {
            let s = rnd(8) as usize;
            let mut regs = regs_from(s);
            regs.retain(|&(r, _)| r != BASE as usize && r != COUNT as usize);
            regs.push((BASE as usize, DATA + start));
            regs.push((COUNT as usize, n));
            let data: Vec<u8> = (0..0x1000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            both_ways_data(&prog, &data, &regs);
            progs += 1;
        }
    }
    assert!(progs > 0);
}
