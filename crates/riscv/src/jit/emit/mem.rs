//! Loads and stores of RV64I and, in user mode (where FP is always on),
//! of F and D, inline. System mode walks the data TLB; a miss, a store
//! into a page holding code or an access crossing a page leaves for the
//! interpreter.
//!
//! User mode checks only that the base register is below the address
//! space's size: the host protection of guest memory mirrors the guest's
//! permissions (pages holding translated code are host read-only), guard
//! pages around the reservation catch the 12-bit offset's reach past
//! either end, and x86-64 does misaligned and page-crossing accesses
//! itself (a faulting one changes nothing). So an access the guest may
//! not do faults on the host, and `jit::fault` resumes it at its slow
//! exit: the interpreter redoes it the checked way, exactly as
//! `crate::mmu::UserMem` does (a guest fault, or a store into code that
//! drops the stale translations).
//!
//! The check is paid once per base register where the guest pays once:
//! accesses through a base an earlier access of the block checked,
//! unchanged since, check nothing (see [`plan`]); a loop whose base only
//! steps by an `addi` checks it once on the way in (see [`loop_bases`]).

use std::mem::offset_of;

use super::{fd, Ctx, Frame};
use crate::decode::{Insn, Kind};
use crate::jit::x86::*;
use crate::mmu::TLB_SIZE;

/// Loads and stores handled inline: (bytes, sign-extend, is a store).
pub(super) fn mem_shape(k: Kind) -> Option<(u8, bool, bool)> {
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
        // va = rs1 + imm in rax; rcx = the vpn of the access's last
        // byte, rdx = the TLB entry of its first: a tag that matches
        // both means the access stays in one page (one that crosses
        // compares vpn + 1 with a tag whose index bits are vpn's).
        a.ld_x(RAX, i.rs1);
        if imm != 0 {
            a.alu_imm(true, ADD, RAX, imm);
        }
        if n > 1 {
            a.op_m(true, &[0x8d], RCX, RAX, n as i32 - 1); // lea rcx, [rax + n - 1]
        } else {
            a.mov_rr(RCX, RAX);
        }
        a.shift_imm(true, SHR, RCX, 12);
        // rdx = 6 * the entry's index, so that the entry is at
        // r12 + rdx * 8 (an entry is 48 bytes): the scale of the
        // address does the rest of the multiplication and the add.
        a.op_rr(false, &[0x89], RAX, RDX); // mov edx, eax
        a.shift_imm(false, SHR, RDX, 11);
        a.alu_imm(false, AND, RDX, 2 * (TLB_SIZE - 1) as i32);
        a.b.extend_from_slice(&[0x8d, 0x14, 0x52]); // lea edx, [rdx + rdx*2]
        const _: () = assert!(std::mem::size_of::<crate::mmu::Entry>() == 6 * 8);
        let tag = if is_store {
            offset_of!(crate::mmu::Entry, tag_w)
        } else {
            offset_of!(crate::mmu::Entry, tag_r)
        };
        // cmp rcx, [r12 + rdx*8 + tag]
        a.op_bi8d(true, &[0x3b], RCX, R12, RDX, tag as i32);
        f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
        if is_store {
            // Stores into pages holding translated code take the
            // slow path (it drops the stale translations).
            // (rcx, the vpn, is free after the tag compare; rsi and rdi
            // belong to the register cache.)
            let code = offset_of!(crate::mmu::Entry, code) as i32;
            a.op_bi8d(true, &[0x8b], RCX, R12, RDX, code);
            a.op_m(false, &[0x80], 7, RCX, 0); // cmp byte [rcx], 0
            a.u8(0);
            f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
        }
        // add rax, [r12 + rdx*8 + addend]: the host address.
        let addend = offset_of!(crate::mmu::Entry, addend) as i32;
        a.op_bi8d(true, &[0x03], RAX, R12, RDX, addend);
        if is_store {
            if n < 8 && i.rs2 != 0 && !a.cache.in_place(i.rs2) {
                // A narrow store reads only the low bits: an unextended W
                // result goes as it is (see `RegCache::lazy`).
                let c = a.x_reg32(i.rs2);
                a.op_rr(false, &[0x89], c, RDX); // mov edx, c32
            } else {
                a.ld_x(RDX, i.rs2);
            }
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
        // The host address is r12 + index + imm.
        let index = match f.plan.get(k).copied().unwrap_or(Plan::Own) {
            // An earlier access of the block checked the base register,
            // unchanged since.
            Plan::Covered => a.x_reg(i.rs1),
            Plan::Own => check(a, f, k, i.rs1),
        };
        let disp = imm;
        if is_store {
            // The value: straight from rs2's cache register (through rdx
            // for x0, FP registers, and byte stores from rsi or rdi, whose
            // low bytes need a REX prefix that `op_bid` leaves out).
            let src = if is_fp {
                a.load(RDX, RBX, fd(i.rs2));
                RDX
            } else if i.rs2 == 0 {
                a.ld_x(RDX, 0);
                RDX
            } else {
                // A narrow store reads only the low bits (an unextended
                // W result needs no extension, see `RegCache::lazy`).
                let c = if n < 8 {
                    a.x_reg32(i.rs2)
                } else {
                    a.x_reg(i.rs2)
                };
                if n == 1 && (c == RSI || c == RDI) {
                    a.mov_rr(RDX, c);
                    RDX
                } else {
                    c
                }
            };
            // The access may fault on the host: it then leaves at `k` with
            // the cache as it is here.
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            match n {
                1 => a.op_bid(false, &[0x88], src, R12, index, disp),
                2 => {
                    a.u8(0x66);
                    a.op_bid(false, &[0x89], src, R12, index, disp);
                }
                4 => a.op_bid(false, &[0x89], src, R12, index, disp),
                _ => a.op_bid(true, &[0x89], src, R12, index, disp),
            }
        } else {
            // Integer loads land in rd's cache slot (chosen after the
            // index register was last used, so it cannot evict it; the
            // index may be that very register, read before written).
            let d = if is_fp { RAX } else { a.rd_host(rd) };
            // As for stores: a fault leaves `d` as it was, and rd's slot
            // is not dirty with the load's value yet.
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
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

/// User mode: the register holding guest `base` (rax for x0, which reads
/// as 0) after checking it is below the address space's size (one compare
/// with the bound in [`Ctx`]); a base at or above it leaves for the
/// interpreter at instruction `k`. The access at `base + imm` may still
/// reach 2 KiB outside the space (into a guard) or pages the guest may not
/// access: the host faults those (see the module's comment).
fn check(a: &mut Asm, f: &mut Frame, k: usize, base: u8) -> u8 {
    if base == 0 {
        // The address is the offset itself: below 2 KiB, in the space; or
        // negative, 2 KiB below it, in the low guard.
        a.ld_x(RAX, 0);
        return RAX;
    }
    let c = a.x_reg(base);
    // cmp c, [r14 + space_size]; jae slow
    a.op_m(true, &[0x3b], c, R14, offset_of!(Ctx, space_size) as i32);
    f.slow.push((a.jcc(CC_AE), k, a.cache.dirty_map()));
    c
}

/// How a user-mode load or store is checked (see [`plan`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Plan {
    /// Checks its base register itself.
    Own,
    /// Its base register was checked by an earlier access of the block and
    /// has not changed since.
    Covered,
}

/// Marks the user-mode loads and stores of a block whose base register an
/// earlier access already checked, unchanged in between: the check is a
/// bound on the base alone, which the offset cannot break (its reach past
/// the space ends in a guard). Exact: nothing between the two can change
/// the base, and the host protection does the rest at each access.
///
/// `merge[j]`: instruction `j` is also reached by a jump inside the block
/// (see `Frame::internal`), which may skip the check before it: coverage
/// never reaches past such an instruction.
pub(super) fn plan(insns: &[Insn], merge: &[bool]) -> Vec<Plan> {
    let is_mem = |i: &Insn| {
        mem_shape(i.kind).is_some()
            || matches!(i.kind, Kind::Flw | Kind::Fld | Kind::Fsw | Kind::Fsd)
    };
    let mut plan = vec![Plan::Own; insns.len()];
    // Integer registers checked since the last merge point.
    let mut checked = 0u32;
    for (k, i) in insns.iter().enumerate() {
        if merge.get(k).copied().unwrap_or(false) {
            checked = 0;
        }
        if is_mem(i) && i.rs1 != 0 {
            if checked & 1 << i.rs1 != 0 {
                plan[k] = Plan::Covered;
            }
            checked |= 1 << i.rs1;
        }
        // An instruction writing a register ends its coverage (`rd` of
        // any kind: conservative for FP destinations; block ends too,
        // but a conditional branch's: inside an extended block, the next
        // instruction is its fall-through, reached from anywhere else
        // only as a merge point, which resets the coverage above).
        if i.rd < 32 {
            checked &= !(1 << i.rd);
        }
        let branch = matches!(
            i.kind,
            Kind::Beq | Kind::Bne | Kind::Blt | Kind::Bge | Kind::Bltu | Kind::Bgeu
        );
        if i.ends_block() && !branch {
            checked = 0;
        }
    }
    plan
}

/// User mode: the base registers whose checks the loop `insns[h..=last]`
/// (head `h`, its only back edge at `last`) does once, on the way in, as
/// a bit mask (bit `r`: guest `r`). Each is the base of some access of
/// the loop and written in it only by one `addi r, r, c`; the loop has no
/// other way in than its head (no merge point inside) and no other back
/// edge, so every pass that goes around runs every access of the body.
///
/// Exact by induction over the passes: the entry check puts the base
/// below the space's size; an access at most a few KiB outside the space
/// faults on the host (into a guard) and leaves for the interpreter, as
/// one to a page the guest may not touch does; so a pass that goes around
/// had its accesses land inside the space, and the next pass's, which the
/// `addi` moves by at most 2 KiB, land inside the space or its guards
/// again.
pub(super) fn loop_bases(insns: &[Insn], merge: &[bool], h: usize, last: usize) -> u32 {
    use Kind::*;
    let body = &insns[h..=last];
    let head_off = insns[h].off as i64;
    let back_edges = body
        .iter()
        .filter(|i| {
            matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal)
                && i.off as i64 + i.imm as i64 == head_off
        })
        .count();
    let inner_merge = (h + 1..=last).any(|m| merge.get(m).copied().unwrap_or(true));
    // System instructions, ecall, illegal words leave the block there.
    let leaves = body.iter().any(|i| {
        i.ends_block() && !matches!(i.kind, Jal | Jalr | Beq | Bne | Blt | Bge | Bltu | Bgeu)
    });
    if back_edges != 1 || inner_merge || leaves {
        return 0;
    }
    let mut bases = 0u32;
    for i in body {
        if (mem_shape(i.kind).is_some() || matches!(i.kind, Flw | Fld | Fsw | Fsd)) && i.rs1 != 0 {
            bases |= 1 << i.rs1;
        }
    }
    for r in 1..32u8 {
        if bases & 1 << r == 0 {
            continue;
        }
        let mut writes = body.iter().filter(|i| i.rd == r);
        let stepped = matches!(
            (writes.next(), writes.next()),
            (Some(w), None) if w.kind == Addi && w.rs1 == r && w.imm.abs() <= 2048
        );
        if !stepped {
            bases &= !(1 << r);
        }
    }
    bases
}

/// Marks the accesses of the loop `insns[h..=last]` through the registers
/// of `bases` (see [`loop_bases`]) as covered by the loop's entry check.
pub(super) fn cover_loop(plan: &mut [Plan], insns: &[Insn], h: usize, last: usize, bases: u32) {
    for (p, i) in plan[h..=last].iter_mut().zip(&insns[h..=last]) {
        let is_mem = mem_shape(i.kind).is_some()
            || matches!(i.kind, Kind::Flw | Kind::Fld | Kind::Fsw | Kind::Fsd);
        if is_mem && i.rs1 != 0 && bases & 1 << i.rs1 != 0 {
            *p = Plan::Covered;
        }
    }
}

/// A loop's entry check of guest `r` (see [`loop_bases`]): compares it
/// with the space's size, leaving the register cache exactly as it is
/// (the loop head's state); returns the rel32 offset of the `jae` that
/// the caller sends to the head's slow exit.
pub(super) fn entry_check(a: &mut Asm, r: u8) -> usize {
    let h = match a.cache.guest.iter().position(|&g| g == r) {
        Some(s) if a.cache.lazy[s] => {
            a.sext32(RAX, super::CACHE_REGS[s]);
            RAX
        }
        Some(s) => super::CACHE_REGS[s],
        None => {
            a.load(RAX, RBX, super::xd(r));
            RAX
        }
    };
    a.op_m(true, &[0x3b], h, R14, offset_of!(Ctx, space_size) as i32);
    a.jcc(CC_AE)
}
