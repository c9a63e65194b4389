//! User mode: the A extension inline with host atomic instructions, as
//! the interpreter does it (`crate::exec::rva`): AMOs as `xchg`, `lock
//! xadd` and `lock cmpxchg` loops on guest RAM, LR as a load that records
//! the reservation (`Core::res_addr`, `Core::res_val`), SC as a `lock
//! cmpxchg` from the reserved value, so a hart running translated code
//! and one interpreting agree on every reservation.
//!
//! Checks as `mem` does for loads and stores: the base register below the
//! address space's size, then the host's protection (read-only for pages
//! holding translated code or without guest write permission: a locked
//! read-modify-write always writes, so it faults even when a compare
//! fails) with `jit::fault` resuming a faulting access at its slow exit,
//! where the interpreter redoes the instruction (a guest fault, or a
//! store into code). A misaligned address leaves for the interpreter
//! before any access (it raises the misaligned trap). System mode keeps
//! the helper.

use std::mem::offset_of;

use super::{Ctx, Frame};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};
use crate::jit::x86::*;

/// Displacement of a `Core` field from rbx (= `&x[16]`).
fn core_d(off: usize) -> i32 {
    off as i32 - offset_of!(Core, x) as i32 - 128
}

/// What an A instruction does: width (4 or 8) and operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Amo {
    Lr,
    Sc,
    Swap,
    Add,
    /// A `lock cmpxchg` loop: the ALU op (and, or, xor) ...
    Alu((u8, u8)),
    /// ... or a min/max: the `cmovcc` that takes rs2's value.
    MinMax(u8),
}

fn classify(k: Kind) -> Option<(Amo, u8)> {
    use Kind::*;
    let w = |a| Some((a, 4));
    let d = |a| Some((a, 8));
    match k {
        LrW => w(Amo::Lr),
        ScW => w(Amo::Sc),
        AmoSwapW => w(Amo::Swap),
        AmoAddW => w(Amo::Add),
        AmoXorW => w(Amo::Alu(XOR)),
        AmoAndW => w(Amo::Alu(AND)),
        AmoOrW => w(Amo::Alu(OR)),
        // cmovg / cmovl / cmova / cmovb: new = rs2 when old is greater
        // (min) or less (max).
        AmoMinW => w(Amo::MinMax(0x4f)),
        AmoMaxW => w(Amo::MinMax(0x4c)),
        AmoMinuW => w(Amo::MinMax(0x47)),
        AmoMaxuW => w(Amo::MinMax(0x42)),
        LrD => d(Amo::Lr),
        ScD => d(Amo::Sc),
        AmoSwapD => d(Amo::Swap),
        AmoAddD => d(Amo::Add),
        AmoXorD => d(Amo::Alu(XOR)),
        AmoAndD => d(Amo::Alu(AND)),
        AmoOrD => d(Amo::Alu(OR)),
        AmoMinD => d(Amo::MinMax(0x4f)),
        AmoMaxD => d(Amo::MinMax(0x4c)),
        AmoMinuD => d(Amo::MinMax(0x47)),
        AmoMaxuD => d(Amo::MinMax(0x42)),
        _ => None,
    }
}

/// Emits `i`, the `k`th instruction of the block, when it is an A
/// instruction handled inline; `false` otherwise.
pub(super) fn emit(a: &mut Asm, f: &mut Frame, k: usize, i: &Insn) -> bool {
    let Some((op, n)) = classify(i.kind) else {
        return false;
    };
    // (An access at address 0, through x0, faults anyway: the helper.)
    if f.sys.is_some() || i.rs1 == 0 {
        return false;
    }
    let w = n == 8;
    // The base below the space's size, aligned.
    let c = a.x_reg(i.rs1);
    // cmp c, [r14 + space_size]; jae slow
    a.op_m(true, &[0x3b], c, R14, offset_of!(Ctx, space_size) as i32);
    f.slow.push((a.jcc(CC_AE), k, a.cache.dirty_map()));
    a.op_rr(false, &[0xf7], 0, c); // test c32, n - 1
    a.u32(n as u32 - 1);
    f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    let (res_addr, res_val) = (
        core_d(offset_of!(Core, res_addr)),
        core_d(offset_of!(Core, res_val)),
    );
    // The old value ends in rax (rdx for xchg and xadd).
    let old = match op {
        Amo::Lr => {
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            // mov eax / rax, [r12 + c]: the value zero-extended, as the
            // reservation keeps it.
            a.op_bid(w, &[0x8b], RAX, R12, c, 0);
            a.store(RBX, res_addr, c);
            a.store(RBX, res_val, RAX);
            RAX
        }
        Amo::Sc => {
            // Reserved here: lock cmpxchg [r12 + c], rs2 from the reserved
            // value (rdx = 0 on success, as rd wants); elsewhere 1, no
            // access. The reservation goes either way.
            a.ld_x(RCX, i.rs2);
            a.op_m(true, &[0x3b], c, RBX, res_addr); // cmp c, [res_addr]
            a.mov_imm(RDX, 1);
            let miss = a.jcc(CC_NE);
            a.load(RAX, RBX, res_val);
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            a.u8(0xf0);
            a.op_bid(w, &[0x0f, 0xb1], RCX, R12, c, 0);
            a.b.extend_from_slice(&[0x0f, 0x95, 0xc2]); // setne dl
            a.bind(miss);
            a.op_m(true, &[0xc7], 0, RBX, res_addr); // mov qword [res_addr], -1
            a.u32(u32::MAX);
            a.st_x(i.rd, RDX);
            return true;
        }
        Amo::Swap | Amo::Add => {
            a.ld_x(RDX, i.rs2);
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            if op == Amo::Swap {
                // xchg [r12 + c], rdx (locked without the prefix)
                a.op_bid(w, &[0x87], RDX, R12, c, 0);
            } else {
                a.u8(0xf0);
                a.op_bid(w, &[0x0f, 0xc1], RDX, R12, c, 0); // lock xadd
            }
            RDX
        }
        Amo::Alu(_) | Amo::MinMax(_) => {
            a.ld_x(RDX, i.rs2);
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            a.op_bid(w, &[0x8b], RAX, R12, c, 0);
            let again = a.b.len();
            a.mov_rr(RCX, RAX);
            match op {
                Amo::Alu(o) => a.alu_rr(w, o, RCX, RDX),
                Amo::MinMax(cc) => {
                    a.alu_rr(w, CMP, RCX, RDX);
                    a.op_rr(w, &[0x0f, cc], RCX, RDX); // cmovcc rcx, rdx
                }
                _ => unreachable!(),
            }
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            a.u8(0xf0);
            a.op_bid(w, &[0x0f, 0xb1], RCX, R12, c, 0); // lock cmpxchg
                                                        // jne again (rax holds the value it found)
            let at = a.jcc(CC_NE);
            let rel = (again as i64 - (at as i64 + 4)) as i32;
            a.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
            RAX
        }
    };
    if !w {
        a.sext32(old, old);
    }
    a.st_x(i.rd, old);
    true
}
