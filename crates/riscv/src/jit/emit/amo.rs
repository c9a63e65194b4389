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
//! before any access (it raises the misaligned trap).
//!
//! System mode (see [`emit_sys`]): the same host atomics and the same
//! reservation, the address through the inline data TLB as `mem`'s
//! system-mode loads and stores take it.

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
    if i.rs1 == 0 {
        return false;
    }
    if f.sys.is_some() {
        return emit_sys(a, f, k, i, op, n);
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

/// System mode: `i`, an A instruction of `n` bytes doing `op`, on the
/// host address the data TLB gives, exactly as `SysMem::atomic` and
/// `crate::exec::rva` do it. A misaligned address, a TLB miss (the
/// entry's tag for a load (LR) or a store (SC, AMOs): a store tag exists
/// only for a page the hart may write, dirty already), an MMIO page
/// (whose tags never match) and a store into a page holding translated
/// code (the interpreter drops the stale translations) leave for the
/// interpreter before any access: it redoes the instruction from the
/// start, trap and reservation included. An SC without the reservation
/// touches nothing and fails, as the interpreter's does (after the
/// alignment check, which comes first there too).
fn emit_sys(a: &mut Asm, f: &mut Frame, k: usize, i: &Insn, op: Amo, n: u8) -> bool {
    // The min/max/ALU loop needs rs2 in a register of its own.
    if i.rs2 == 0 && matches!(op, Amo::Alu(_) | Amo::MinMax(_)) {
        return false;
    }
    let w = n == 8;
    // Both operands in their cache registers before any branch: every
    // path below then leaves the register cache as it is.
    let c = a.x_reg(i.rs1);
    let v = match op {
        Amo::Lr => None,
        _ if i.rs2 == 0 => None,
        _ if w => Some(a.x_reg(i.rs2)),
        _ => Some(a.x_reg32(i.rs2)),
    };
    let (res_addr, res_val) = (
        core_d(offset_of!(Core, res_addr)),
        core_d(offset_of!(Core, res_val)),
    );
    a.op_rr(false, &[0xf7], 0, c); // test c32, n - 1
    a.u32(n as u32 - 1);
    f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    // An SC without the reservation: rax = 1, no access.
    let miss = (op == Amo::Sc).then(|| {
        a.mov_imm(RAX, 1);
        a.op_m(true, &[0x3b], c, RBX, res_addr); // cmp c, [res_addr]
        a.jcc(CC_NE)
    });
    tlb_host(a, f, k, c, op != Amo::Lr);
    // rdx: the host address. rcx: rs2's value where the op wants it.
    let ld_v = |a: &mut Asm| match v {
        Some(h) => a.mov_rr(RCX, h),
        None => a.op_rr(false, &[0x31], RCX, RCX), // xor ecx, ecx
    };
    let old = match op {
        Amo::Lr => {
            // The value zero-extended, as the reservation keeps it.
            a.op_m(w, &[0x8b], RAX, RDX, 0);
            a.store(RBX, res_addr, c);
            a.store(RBX, res_val, RAX);
            RAX
        }
        Amo::Sc => {
            ld_v(a);
            a.load(RAX, RBX, res_val);
            a.u8(0xf0);
            a.op_m(w, &[0x0f, 0xb1], RCX, RDX, 0); // lock cmpxchg [rdx], rcx
            a.setcc_rax(CC_NE);
            if let Some(m) = miss {
                a.bind(m);
            }
            // The reservation goes either way.
            a.op_m(true, &[0xc7], 0, RBX, res_addr); // mov qword [res_addr], -1
            a.u32(u32::MAX);
            a.st_x(i.rd, RAX);
            return true;
        }
        Amo::Swap => {
            ld_v(a);
            a.op_m(w, &[0x87], RCX, RDX, 0); // xchg [rdx], rcx
            RCX
        }
        Amo::Add => {
            ld_v(a);
            a.u8(0xf0);
            a.op_m(w, &[0x0f, 0xc1], RCX, RDX, 0); // lock xadd [rdx], rcx
            RCX
        }
        Amo::Alu(_) | Amo::MinMax(_) => {
            let Some(s) = v else { unreachable!() };
            a.op_m(w, &[0x8b], RAX, RDX, 0);
            let again = a.b.len();
            a.mov_rr(RCX, RAX);
            match op {
                Amo::Alu(o) => a.alu_rr(w, o, RCX, s),
                Amo::MinMax(cc) => {
                    a.alu_rr(w, CMP, RCX, s);
                    a.op_rr(w, &[0x0f, cc], RCX, s); // cmovcc rcx, s
                }
                _ => unreachable!(),
            }
            a.u8(0xf0);
            a.op_m(w, &[0x0f, 0xb1], RCX, RDX, 0); // lock cmpxchg [rdx], rcx
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

/// System mode: the host address of the aligned access at guest `c`
/// (a cache register, left alone) into rdx through the data TLB (`mem`'s
/// lookup: an aligned access stays in its page), leaving for the
/// interpreter at instruction `k` on a miss of the load or `store` tag,
/// and for a store into a page holding translated code. Clobbers rcx.
fn tlb_host(a: &mut Asm, f: &mut Frame, k: usize, c: u8, store: bool) {
    use crate::mmu::{Entry, TLB_SIZE};
    a.op_rr(false, &[0x89], c, RDX); // mov edx, c32
    a.shift_imm(false, SHR, RDX, 6);
    // * 64 = size of a TLB entry
    a.alu_imm(false, AND, RDX, ((TLB_SIZE - 1) << 6) as i32);
    a.alu_rr(true, ADD, RDX, R12);
    a.mov_rr(RCX, c);
    a.shift_imm(true, SHR, RCX, 12);
    let tag = if store {
        offset_of!(Entry, tag_w)
    } else {
        offset_of!(Entry, tag_r)
    };
    a.op_m(true, &[0x3b], RCX, RDX, tag as i32); // cmp rcx, [rdx + tag]
    f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    if store {
        a.load(RCX, RDX, offset_of!(Entry, code) as i32);
        a.op_m(false, &[0x80], 7, RCX, 0); // cmp byte [rcx], 0
        a.u8(0);
        f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    }
    a.load(RDX, RDX, offset_of!(Entry, addend) as i32);
    a.alu_rr(true, ADD, RDX, c);
}
