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
    assert_eq!(loop_regs(&insns), vec![10, 11, 12, 13, 14, 15, 16]);
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
    let mut out = Vec::new();
    for jit in [true, false] {
        let sp = UserSpace::new(32).unwrap();
        sp.map_anonymous(CODE, 0x1000, perm::R | perm::W).unwrap();
        sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
        let mut words = prog.to_vec();
        words.push(0x73); // ecall
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        sp.write(CODE, &bytes).unwrap();
        let data: Vec<u8> = (0..0x1000u32).map(|i| (i * 37 + 11) as u8 ^ 0x80).collect();
        sp.write(DATA, &data).unwrap();
        sp.set_perms(CODE, 0x1000, perm::R | perm::X).unwrap();
        let mut h = Hart::new_user();
        h.set_jit(jit);
        for &(r, v) in regs {
            h.set_x(r, v);
        }
        h.pc = CODE;
        let e = h.run_user(&sp);
        let x: [u64; 32] = std::array::from_fn(|r| h.x(r));
        out.push((e, h.pc, h.instret(), x));
    }
    assert_eq!(out[0], out[1], "translated vs interpreted, program {prog:08x?}");
    out[0].3
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
