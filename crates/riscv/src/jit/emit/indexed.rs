//! User mode: a load through an address its block computed right before
//! as a base plus a (scaled) index, `add rd, rs1, rs2` or `shNadd rd,
//! rs1, rs2` (also the fused `slli; add`, see `fuse`), then `l* rd,
//! imm(rd)`: a table lookup whose address dies in the load (gzip's hash
//! chains `prev[cur & mask]`, crc32's table). Emitted one by one, the
//! address is a `lea` on the chain from the index to the load; here the
//! load's own addressing mode adds the scaled index to a host pointer
//! to the base (`r12 + rs2`, computed off that chain), and the
//! guest's address (a `lea` into rax) feeds only the bound check, a
//! branch. On a pointer chase (each load's result is the next index)
//! that is a cycle less per step.
//!
//! Exact: the address is never a guest register's value (the load
//! overwrites `rd`), and both ways out before the load has written `rd`
//! (the check's slow exit, a host fault of the access, see `jit::fault`)
//! resume at the add, with the registers as they were before it: the
//! interpreter redoes the add and the load.

use std::mem::offset_of;

use super::alu::lea_scaled;
use super::mem::{self, Plan};
use super::{xd, Ctx, Frame};
use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::jit::x86::*;

/// The index of the load when instructions `k..` of `insns` are an
/// add, its fused partner's sink when it has one, then an integer load
/// as the module's comment says, nothing jumping between them and the
/// load checking its base itself (`plan`); `None` otherwise.
pub(super) fn load_after(insns: &[Insn], merge: &[bool], plan: &[Plan], k: usize) -> Option<usize> {
    use Kind::*;
    let i = insns.get(k)?;
    if !matches!(i.kind, Add | Sh1add | Sh2add | Sh3add)
        || i.rd == 0
        || i.rd >= 32
        || i.rs1 == 0
        || i.rs2 == 0
    {
        return None;
    }
    let mut l = k + 1;
    if let Some(z) = insns.get(l) {
        if z.rd == ZERO_SINK && z.kind == Addi && z.rs1 == 0 {
            l += 1;
        }
    }
    let ld = insns.get(l)?;
    let load = matches!(ld.kind, Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu);
    let ok = load
        && ld.rs1 == i.rd
        && ld.rd == i.rd
        && plan.get(l) == Some(&Plan::Own)
        && !merge[k + 1..=l].iter().any(|&m| m);
    ok.then_some(l)
}

/// Emits the add at index `k` and the load at `l` (from [`load_after`]).
pub(super) fn emit(a: &mut Asm, f: &mut Frame, insns: &[Insn], k: usize, l: usize) {
    let (i, ld) = (insns[k], insns[l]);
    let n = match i.kind {
        Kind::Sh1add => 1,
        Kind::Sh2add => 2,
        Kind::Sh3add => 3,
        _ => 0,
    };
    let (size, signed, _) = mem::mem_shape(ld.kind).expect("an integer load");
    // Operands better read in place (see `RegCache::in_place`) come
    // through rdx and rcx.
    let idx = if a.cache.in_place(i.rs1) {
        a.load(RDX, RBX, xd(i.rs1));
        RDX
    } else {
        a.x_reg(i.rs1)
    };
    let base = if a.cache.in_place(i.rs2) {
        a.load(RCX, RBX, xd(i.rs2));
        RCX
    } else {
        a.x_reg(i.rs2)
    };
    // rd's slot (may evict another register, written back here; `idx`
    // and `base` keep their values until the load, which reads them
    // before writing `d`).
    let d = a.rd_host(ld.rd);
    // Both ways out resume at the add, the registers as before it.
    let dirty = a.cache.dirty_map();
    // rax = the guest's address; cmp rax, [r14 + space_size]; jae slow
    lea_scaled(a, RAX, base, idx, n);
    a.op_m(true, &[0x3b], RAX, R14, offset_of!(Ctx, space_size) as i32);
    f.slow.push((a.jcc(CC_AE), k, dirty));
    // rcx = the host address of the base.
    if base == RCX {
        a.alu_rr(true, ADD, RCX, R12);
    } else {
        lea_scaled(a, RCX, R12, base, 0);
    }
    f.faults.push((a.b.len(), k, dirty));
    let (w, op): (bool, &[u8]) = match (size, signed) {
        (1, true) => (true, &[0x0f, 0xbe]),
        (1, false) => (false, &[0x0f, 0xb6]),
        (2, true) => (true, &[0x0f, 0xbf]),
        (2, false) => (false, &[0x0f, 0xb7]),
        (4, true) => (true, &[0x63]),
        (4, false) => (false, &[0x8b]),
        _ => (true, &[0x8b]),
    };
    // op d, [rcx + idx << n + imm]
    a.rex(w, d, idx, RCX);
    a.b.extend_from_slice(op);
    let small = (-128..=127).contains(&ld.imm);
    a.u8(if small { 0x40 } else { 0x80 } | (d & 7) << 3 | 4);
    a.u8(n << 6 | (idx & 7) << 3 | (RCX & 7));
    if small {
        a.u8(ld.imm as i8 as u8);
    } else {
        a.u32(ld.imm as u32);
    }
    a.rd_commit(ld.rd, d);
}
