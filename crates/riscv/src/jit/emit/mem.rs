//! Loads and stores of RV64I and, in user mode (where FP is always on),
//! of F and D, inline: user mode checks the permission table as
//! `crate::mmu::UserMem` does, system mode walks the data TLB; anything
//! else (a miss, a store into a page holding code, an access crossing a
//! page) leaves for the interpreter.

use std::mem::offset_of;

use super::{fd, space_pages, CacheMap, Frame};
use crate::decode::{Insn, Kind};
use crate::jit::x86::*;
use crate::mem::perm;
use crate::mmu::TLB_SIZE;

/// Loads and stores handled inline: (bytes, sign-extend, is a store).
fn mem_shape(k: Kind) -> Option<(u8, bool, bool)> {
    use Kind::*;
    Some(match k {
        Lb => (1, true, false),
        Lh => (2, true, false),
        Lw => (4, true, false),
        Ld => (8, false, false),
        Lbu => (1, false, false),
        Lhu => (2, false, false),
        Lwu => (4, false, false),
        Sb => (1, false, true),
        Sh => (2, false, true),
        Sw => (4, false, true),
        Sd => (8, false, true),
        _ => return None,
    })
}

/// Emits `i`, the `k`th instruction of the block, when it is a load or
/// store handled inline; `false` when it is not one.
pub(super) fn emit(a: &mut Asm, f: &mut Frame, k: usize, i: &Insn) -> bool {
    use Kind::*;
    let imm = i.imm;
    let rd = i.rd;
    // FP loads and stores, user mode (where FP is always on, so no
    // mstatus.FS check): the integer paths below, with f registers.
    let fp = match (i.kind, f.sys) {
        (Flw, None) => Some((4, false, false)),
        (Fld, None) => Some((8, false, false)),
        (Fsw, None) => Some((4, false, true)),
        (Fsd, None) => Some((8, false, true)),
        _ => None,
    };
    if let (Some((n, signed, is_store)), Some(_)) = (mem_shape(i.kind), f.sys) {
        // va = rs1 + imm in rax, vpn in rcx, TLB entry in rdx.
        a.ld_x(RAX, i.rs1);
        if imm != 0 {
            a.alu_imm(true, ADD, RAX, imm);
        }
        a.mov_rr(RCX, RAX);
        a.shift_imm(true, SHR, RCX, 12);
        a.op_rr(false, &[0x89], RCX, RDX); // mov edx, ecx
        a.alu_imm(false, AND, RDX, (TLB_SIZE - 1) as i32);
        a.b.extend_from_slice(&[0x8d, 0x14, 0x52]); // lea edx, [rdx + rdx*2]
        a.shift_imm(false, SHL, RDX, 4); // * 48 = size of a TLB entry
        a.alu_rr(true, ADD, RDX, R12);
        let tag = if is_store {
            offset_of!(crate::mmu::Entry, tag_w)
        } else {
            offset_of!(crate::mmu::Entry, tag_r)
        };
        a.op_m(true, &[0x3b], RCX, RDX, tag as i32); // cmp rcx, [rdx + tag]
        f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
        if is_store {
            // Stores into pages holding translated code take the
            // slow path (it drops the stale translations).
            // (rcx, the vpn, is free after the tag compare; rsi and rdi
            // belong to the register cache.)
            a.load(RCX, RDX, offset_of!(crate::mmu::Entry, code) as i32);
            a.op_m(false, &[0x80], 7, RCX, 0); // cmp byte [rcx], 0
            a.u8(0);
            f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
        }
        if n > 1 {
            a.op_rr(false, &[0x89], RAX, RCX); // mov ecx, eax
            a.alu_imm(false, AND, RCX, 0xfff);
            a.alu_imm(false, CMP, RCX, 0x1000 - n as i32);
            f.slow.push((a.jcc(CC_A), k, a.cache.dirty_map()));
        }
        // add rax, [rdx + addend]: the host address.
        a.op_m(
            true,
            &[0x03],
            RAX,
            RDX,
            offset_of!(crate::mmu::Entry, addend) as i32,
        );
        if is_store {
            a.ld_x(RDX, i.rs2);
            match n {
                1 => a.op_m(false, &[0x88], RDX, RAX, 0),
                2 => {
                    a.u8(0x66);
                    a.op_m(false, &[0x89], RDX, RAX, 0);
                }
                4 => a.op_m(false, &[0x89], RDX, RAX, 0),
                _ => a.op_m(true, &[0x89], RDX, RAX, 0),
            }
        } else {
            match (n, signed) {
                (1, true) => a.op_m(true, &[0x0f, 0xbe], RAX, RAX, 0),
                (1, false) => a.op_m(false, &[0x0f, 0xb6], RAX, RAX, 0),
                (2, true) => a.op_m(true, &[0x0f, 0xbf], RAX, RAX, 0),
                (2, false) => a.op_m(false, &[0x0f, 0xb7], RAX, RAX, 0),
                (4, true) => a.op_m(true, &[0x63], RAX, RAX, 0),
                (4, false) => a.op_m(false, &[0x8b], RAX, RAX, 0),
                _ => a.op_m(true, &[0x8b], RAX, RAX, 0),
            }
            a.st_x(rd, RAX);
        }
        return true;
    }
    if let Some((n, signed, is_store)) = mem_shape(i.kind).or(fp) {
        let is_fp = fp.is_some();
        // The host address is r12 + index + disp once checked.
        let (index, disp) = match f.plan.get(k).copied().unwrap_or(Plan::Own) {
            Plan::Covered => {
                // A group leader earlier in the block checked this
                // access's page with the base register unchanged since.
                (a.x_reg(i.rs1), imm)
            }
            Plan::Own => (
                check(a, f, k, i.rs1, imm, n as i32, !is_store, is_store, true),
                0,
            ),
            Plan::Lead { lo, hi, r, w } => {
                (check(a, f, k, i.rs1, lo, hi - lo, r, w, false), imm - lo)
            }
        };
        if is_store {
            if is_fp {
                a.load(RDX, RBX, fd(i.rs2));
            } else {
                a.ld_x(RDX, i.rs2);
            }
            match n {
                1 => a.op_bid(false, &[0x88], RDX, R12, index, disp),
                2 => {
                    a.u8(0x66);
                    a.op_bid(false, &[0x89], RDX, R12, index, disp);
                }
                4 => a.op_bid(false, &[0x89], RDX, R12, index, disp),
                _ => a.op_bid(true, &[0x89], RDX, R12, index, disp),
            }
        } else {
            // Integer loads land in rd's cache slot (chosen after the
            // index register was last used, so it cannot evict it; the
            // index may be that very register, read before written).
            let d = if is_fp { RAX } else { a.rd_host(rd) };
            match (n, signed) {
                (1, true) => a.op_bid(true, &[0x0f, 0xbe], d, R12, index, disp),
                (1, false) => a.op_bid(false, &[0x0f, 0xb6], d, R12, index, disp),
                (2, true) => a.op_bid(true, &[0x0f, 0xbf], d, R12, index, disp),
                (2, false) => a.op_bid(false, &[0x0f, 0xb7], d, R12, index, disp),
                (4, true) => a.op_bid(true, &[0x63], d, R12, index, disp),
                (4, false) => a.op_bid(false, &[0x8b], d, R12, index, disp),
                _ => a.op_bid(true, &[0x8b], d, R12, index, disp),
            }
            if is_fp {
                if n == 4 {
                    // NaN-box the single.
                    a.mov_imm(RCX, 0xffff_ffff_0000_0000);
                    a.alu_rr(true, OR, RAX, RCX);
                }
                a.store(RBX, fd(rd), RAX);
            } else {
                a.rd_commit(rd, d);
            }
        }
        return true;
    }
    false
}

/// User mode: returns a register holding `x[base] + off` (rax, or with
/// no offset the base's own cache register) after checking that the
/// `span` bytes from there lie in one page of the address space that
/// allows reading (`r`) and writing without holding code (`w`); any
/// failure leaves for the interpreter at instruction `k`. `natural`: the
/// span is one access of a power-of-two size, so an aligned address
/// cannot cross a page: the page-end test moves out of line, behind an
/// alignment test (one fused compare-and-branch instead of four
/// instructions when aligned; misaligned accesses stay inline, just
/// slower).
#[allow(clippy::too_many_arguments)]
fn check(
    a: &mut Asm,
    f: &mut Frame,
    k: usize,
    base: u8,
    off: i32,
    span: i32,
    r: bool,
    w: bool,
    natural: bool,
) -> u8 {
    let addr = if base != 0 && off != 0 {
        // lea rax, [base + off]
        let c = a.x_reg(base);
        a.op_m(true, &[0x8d], RAX, c, off);
        RAX
    } else if base != 0 {
        a.x_reg(base)
    } else {
        a.ld_x(RAX, base);
        if off != 0 {
            a.alu_imm(true, ADD, RAX, off);
        }
        RAX
    };
    a.mov_rr(RCX, addr);
    a.shift_imm(true, SHR, RCX, 12);
    let pages = space_pages(f.space_size);
    if pages <= i32::MAX as u64 {
        a.alu_imm(true, CMP, RCX, pages as i32);
        f.slow.push((a.jcc(CC_AE), k, a.cache.dirty_map()));
    } else {
        a.mov_rr(RDX, addr);
        a.shift_imm(true, SHR, RDX, f.space_bits);
        f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    }
    if w {
        // movzx edx, byte [r13 + rcx]; and edx, R?|W|CODE; cmp edx, R?|W
        let need = perm::W | if r { perm::R } else { 0 };
        a.op_bi(false, &[0x0f, 0xb6], RDX, R13, RCX);
        a.alu_imm(false, AND, RDX, (need | perm::CODE) as i32);
        a.alu_imm(false, CMP, RDX, need as i32);
        f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
    } else {
        // test byte [r13 + rcx], R
        a.op_bi(false, &[0xf6], 0, R13, RCX);
        a.u8(perm::R);
        f.slow.push((a.jcc(CC_E), k, a.cache.dirty_map()));
    }
    if span > 1 && natural {
        // test addr8, span - 1; jnz <page-end test, out of line>
        if addr >= 4 {
            // REX (.B for r8-r15; a bare one for sil/dil, which without
            // it would be dh/bh).
            a.u8(0x40 | addr >> 3);
        }
        a.u8(0xf6);
        a.u8(0xc0 | (addr & 7));
        a.u8((span - 1) as u8);
        let at = a.jcc(CC_NE);
        f.cross
            .push((at, a.b.len(), addr, span, k, a.cache.dirty_map()));
    } else if span > 1 {
        // The bytes must not cross the page end.
        let dirty = a.cache.dirty_map();
        cross_check(a, f, addr, span, k, dirty);
    }
    addr
}

/// Leaves for the interpreter at instruction `k` unless the `span` bytes
/// from `addr` stay in one page (`dirty`: the cache's dirty registers at
/// the test, which that exit writes back).
pub(super) fn cross_check(
    a: &mut Asm,
    f: &mut Frame,
    addr: u8,
    span: i32,
    k: usize,
    dirty: CacheMap,
) {
    a.op_rr(false, &[0x89], addr, RDX); // mov edx, addr32
    a.alu_imm(false, AND, RDX, 0xfff);
    a.alu_imm(false, CMP, RDX, 0x1000 - span);
    f.slow.push((a.jcc(CC_A), k, dirty));
}

/// How a user-mode load or store is checked (see [`plan`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Plan {
    /// Checks its own bytes.
    Own,
    /// Checks `x[rs1] + [lo, hi)` for itself and the later accesses of
    /// its group: reading allowed when `r`, writing when `w`.
    Lead { lo: i32, hi: i32, r: bool, w: bool },
    /// Checked by its group's leader.
    Covered,
}

/// Widest byte range one group check covers: wider groups cross page
/// ends more often, and a group whose range crosses one runs in the
/// interpreter from its leader on (exact, but slower).
const GROUP_SPAN: i32 = 128;

/// Groups the user-mode loads and stores of a block that go through the
/// same base register, unchanged in between, within `GROUP_SPAN` bytes:
/// the first checks the whole range once (one page, every permission the
/// group needs), the others go unchecked. Exact: if the range check
/// fails, the interpreter runs the block from the leader, before any
/// access of the group happened; and nothing between the leader and
/// the last member can change permissions (system calls end blocks).
///
/// `merge[j]`: instruction `j` is also reached by a jump inside the block
/// (see `Frame::internal`), which may skip a leader before it: a group
/// never reaches past such an instruction.
pub(super) fn plan(insns: &[Insn], merge: &[bool]) -> Vec<Plan> {
    let shape = |i: &Insn| {
        mem_shape(i.kind).or(match i.kind {
            Kind::Flw => Some((4, false, false)),
            Kind::Fld => Some((8, false, false)),
            Kind::Fsw => Some((4, false, true)),
            Kind::Fsd => Some((8, false, true)),
            _ => None,
        })
    };
    let mut plan = vec![Plan::Own; insns.len()];
    for k in 0..insns.len() {
        let i = &insns[k];
        let Some((n, _, st)) = shape(i) else { continue };
        if plan[k] != Plan::Own || i.rs1 == 0 {
            continue;
        }
        let base = i.rs1;
        let (mut lo, mut hi) = (i.imm, i.imm + n as i32);
        let (mut r, mut w) = (!st, st);
        let mut members = Vec::new();
        // An instruction writing the base ends the group after itself
        // (`rd` of any kind: conservative for FP destinations).
        if i.rd != base {
            for (j, ij) in insns.iter().enumerate().skip(k + 1) {
                if merge.get(j).copied().unwrap_or(false) {
                    break;
                }
                if let Some((nj, _, stj)) = shape(ij) {
                    if ij.rs1 == base {
                        let (l, h) = (lo.min(ij.imm), hi.max(ij.imm + nj as i32));
                        if h - l > GROUP_SPAN {
                            break;
                        }
                        (lo, hi) = (l, h);
                        r |= !stj;
                        w |= stj;
                        members.push(j);
                    }
                }
                if ij.rd == base || ij.ends_block() {
                    break;
                }
            }
        }
        if !members.is_empty() {
            plan[k] = Plan::Lead { lo, hi, r, w };
            for j in members {
                plan[j] = Plan::Covered;
            }
        }
    }
    plan
}
