//! Loads and stores of RV64I and, in user mode (where FP is always on),
//! of F and D, inline. System mode walks the data TLB; a miss, a store
//! into a page holding code or an access crossing a page leaves for the
//! interpreter (but for groups of accesses whose bytes cross into a
//! neighbouring page: see [`sys_groups`]).
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

use super::{fd, Ctx, Frame, GROUP_SLOTS};
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
        let acc = f.sysacc.get(k).copied().unwrap_or(SysAcc::Own);
        if let SysAcc::Member(slot) = acc {
            member(a, i, n, signed, is_store, slot);
            return true;
        }
        // The bytes the TLB check covers, from the address in rax: the
        // access's own, or its whole group's (see `sys_groups`).
        let (lo, hi, store_tag) = match acc {
            SysAcc::Lead { lo, hi, store, .. } => (lo, hi, store),
            _ => (imm, imm + n as i32 - 1, is_store),
        };
        // va = rs1 + lo in rax; rcx = the vpn of the last byte (rs1 +
        // hi), rdx = the TLB entry of the first: a tag that matches both
        // means the bytes stay in one page (a range that crosses, by at
        // most 4 KiB, compares vpn + 1 with a tag whose index bits are
        // vpn's).
        a.ld_x(RAX, i.rs1);
        if lo != 0 {
            a.alu_imm(true, ADD, RAX, lo);
        }
        if hi != lo {
            a.op_m(true, &[0x8d], RCX, RAX, hi - lo); // lea rcx, [rax + hi - lo]
        } else {
            a.mov_rr(RCX, RAX);
        }
        a.shift_imm(true, SHR, RCX, 12);
        // rdx = 64 * the entry's index (an entry is 64 bytes): the
        // entry is at r12 + rdx.
        a.op_rr(false, &[0x89], RAX, RDX); // mov edx, eax
        a.shift_imm(false, SHR, RDX, 6);
        a.alu_imm(false, AND, RDX, ((TLB_SIZE - 1) << 6) as i32);
        const _: () = assert!(std::mem::size_of::<crate::mmu::Entry>() == 64);
        let tag = if store_tag {
            offset_of!(crate::mmu::Entry, tag_w)
        } else {
            offset_of!(crate::mmu::Entry, tag_r)
        };
        // cmp rcx, [r12 + rdx + tag]
        a.op_bid(true, &[0x3b], RCX, R12, RDX, tag as i32);
        // A leader's miss goes out of line first: its group's bytes may
        // lie in two pages that one addend still covers (see `emit_try`).
        let miss = a.jcc(CC_NE);
        if !matches!(acc, SysAcc::Lead { .. }) {
            f.slow.push((miss, k, a.cache.dirty_map()));
        }
        if store_tag {
            // Stores into pages holding translated code take the
            // slow path (it drops the stale translations).
            // (rcx, the vpn, is free after the tag compare; rsi and rdi
            // belong to the register cache.)
            let code = offset_of!(crate::mmu::Entry, code) as i32;
            a.op_bid(true, &[0x8b], RCX, R12, RDX, code);
            a.op_m(false, &[0x80], 7, RCX, 0); // cmp byte [rcx], 0
            a.u8(0);
            f.slow.push((a.jcc(CC_NE), k, a.cache.dirty_map()));
        }
        // add rax, [r12 + rdx + addend]: the host address of rs1 + lo.
        let addend = offset_of!(crate::mmu::Entry, addend) as i32;
        if let SysAcc::Lead { slot, .. } = acc {
            // The group's members add the addend to their base register
            // themselves: mov rcx, [addend]; mov [r14 + slot], rcx.
            a.op_bid(true, &[0x8b], RCX, R12, RDX, addend);
            f.leads
                .push((miss, k, a.cache.dirty_map(), a.b.len(), store_tag));
            a.op_m(true, &[0x89], RCX, R14, group_slot(slot));
            a.alu_rr(true, ADD, RAX, RCX);
        } else {
            a.op_bid(true, &[0x03], RAX, R12, RDX, addend);
        }
        let disp = imm - lo;
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
                1 => a.op_m(false, &[0x88], RDX, RAX, disp),
                2 => {
                    a.u8(0x66);
                    a.op_m(false, &[0x89], RDX, RAX, disp);
                }
                4 => a.op_m(false, &[0x89], RDX, RAX, disp),
                _ => a.op_m(true, &[0x89], RDX, RAX, disp),
            }
        } else {
            match (n, signed) {
                (1, true) => a.op_m(true, &[0x0f, 0xbe], RAX, RAX, disp),
                (1, false) => a.op_m(false, &[0x0f, 0xb6], RAX, RAX, disp),
                (2, true) => a.op_m(true, &[0x0f, 0xbf], RAX, RAX, disp),
                (2, false) => a.op_m(false, &[0x0f, 0xb7], RAX, RAX, disp),
                (4, true) => a.op_m(true, &[0x63], RAX, RAX, disp),
                (4, false) => a.op_m(false, &[0x8b], RAX, RAX, disp),
                _ => a.op_m(true, &[0x8b], RAX, RAX, disp),
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
            } else {
                store_src(a, i.rs2, n)
            };
            // The access may fault on the host: it then leaves at `k` with
            // the cache as it is here.
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            store_bid(a, n, src, R12, index, disp);
        } else {
            // Integer loads land in rd's cache slot (chosen after the
            // index register was last used, so it cannot evict it; the
            // index may be that very register, read before written).
            let d = if is_fp { RAX } else { a.rd_host(rd) };
            // As for stores: a fault leaves `d` as it was, and rd's slot
            // is not dirty with the load's value yet.
            f.faults.push((a.b.len(), k, a.cache.dirty_map()));
            load_bid(a, n, signed, d, R12, index, disp);
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

/// System mode: an access of a group (see [`sys_groups`]) past its
/// leader: the leader checked the TLB for every byte of the group, so
/// this one adds the host addend the leader left in its slot to the base
/// register, with no check and no slow path.
fn member(a: &mut Asm, i: &Insn, n: u8, signed: bool, is_store: bool, slot: u8) {
    let imm = i.imm;
    let index = if a.cache.in_place(i.rs1) {
        a.ld_x(RCX, i.rs1);
        RCX
    } else {
        a.x_reg(i.rs1)
    };
    if is_store {
        let src = store_src(a, i.rs2, n);
        a.load(RAX, R14, group_slot(slot));
        store_bid(a, n, src, RAX, index, imm);
    } else {
        // rd's slot, chosen after the index was last used (so it cannot
        // evict it; the index may be that very register, read before
        // written).
        let d = a.rd_host(i.rd);
        a.load(RAX, R14, group_slot(slot));
        load_bid(a, n, signed, d, RAX, index, imm);
        a.rd_commit(i.rd, d);
    }
}

/// The host register holding integer store `rs2`'s value, `n` bytes of
/// it: its cache register (a narrow store reads only the low bits, so an
/// unextended W result needs no extension, see `RegCache::lazy`), or rdx
/// for x0 and for byte stores from rsi or rdi, whose low bytes need a REX
/// prefix that `op_bid` leaves out.
fn store_src(a: &mut Asm, rs2: u8, n: u8) -> u8 {
    if rs2 == 0 {
        a.ld_x(RDX, 0);
        return RDX;
    }
    let c = if n < 8 { a.x_reg32(rs2) } else { a.x_reg(rs2) };
    if n == 1 && (c == RSI || c == RDI) {
        a.mov_rr(RDX, c);
        RDX
    } else {
        c
    }
}

/// `mov [base + index + disp], src` of `n` bytes.
fn store_bid(a: &mut Asm, n: u8, src: u8, base: u8, index: u8, disp: i32) {
    match n {
        1 => a.op_bid(false, &[0x88], src, base, index, disp),
        2 => {
            a.u8(0x66);
            a.op_bid(false, &[0x89], src, base, index, disp);
        }
        4 => a.op_bid(false, &[0x89], src, base, index, disp),
        _ => a.op_bid(true, &[0x89], src, base, index, disp),
    }
}

/// `d = [base + index + disp]`, `n` bytes, sign- or zero-extended.
fn load_bid(a: &mut Asm, n: u8, signed: bool, d: u8, base: u8, index: u8, disp: i32) {
    match (n, signed) {
        (1, true) => a.op_bid(true, &[0x0f, 0xbe], d, base, index, disp),
        (1, false) => a.op_bid(false, &[0x0f, 0xb6], d, base, index, disp),
        (2, true) => a.op_bid(true, &[0x0f, 0xbf], d, base, index, disp),
        (2, false) => a.op_bid(false, &[0x0f, 0xb7], d, base, index, disp),
        (4, true) => a.op_bid(true, &[0x63], d, base, index, disp),
        (4, false) => a.op_bid(false, &[0x8b], d, base, index, disp),
        _ => a.op_bid(true, &[0x8b], d, base, index, disp),
    }
}

/// Displacement from r14 of group slot `slot` (see [`SysAcc`]).
fn group_slot(slot: u8) -> i32 {
    (offset_of!(Ctx, groups) + 8 * slot as usize) as i32
}

/// How a system-mode load or store is checked (see [`sys_groups`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum SysAcc {
    /// Looks its own bytes up in the TLB.
    Own,
    /// Looks up the bytes `lo..=hi` from its base register, those of
    /// its whole group (a store among them: in the TLB of writes, and the
    /// page must hold no translated code), and leaves the page's host
    /// addend in group slot `slot` of [`Ctx`] (or, bytes across two
    /// pages, the addend both share, see [`sys_groups`]).
    Lead {
        slot: u8,
        lo: i32,
        hi: i32,
        store: bool,
    },
    /// Its leader checked it: uses the addend in group slot `slot`.
    Member(u8),
}

/// System mode: groups of a block's loads and stores through one base
/// register, unchanged between them, whose TLB check the first (the
/// leader) does once for the bytes of all, as long as they lie in one
/// page. The rest (members) then cost an add.
///
/// A group whose bytes cross a page at run time (a struct lying across
/// two pages, a buffer walked from one into the next) fails that check;
/// the leader then calls `dispatch::straddle` out of line, which lets it
/// go on when the two pages are in the TLB, hold no code (with a store)
/// and share one host addend (neighbours in host memory too: RAM mapped
/// in order, as a kernel's linear map and image are). Else the leader
/// leaves for the interpreter, and after a few such leaves of one
/// leader (`jit::STRADDLES`, not counting misses of the first page,
/// which the interpreter fills; counting the second's, which may be a
/// page the group can never use: read-only under a store, MMIO) the
/// blocks it leaves from are translated again
/// with the group given up (`given_up`: each access checks its own
/// bytes; see `Jit::note_straddle`), so that a hot block does not leave
/// on every pass.
///
/// Exact: nothing between a leader and its members can change the
/// translation (CSR writes, fences, `sfence.vma`, traps, helpers that may
/// walk and refill the TLB all end the groups: only inline integer
/// arithmetic and inline loads and stores keep them); system mode has no
/// jumps into a block but to its start, so a member runs only after its
/// leader in the same pass; a store's page holds no translated code and
/// gets none before the block ends (only this hart's translator marks
/// its pages, between blocks; another hart's marks matter only at its
/// `fence.i`, which rechecks the code); a page whose entry allows writes
/// allows reads (the walk grants writes only with reads). Past a leader
/// nothing refills the TLB, but even a refill would not change what the
/// addend maps. Across two pages: the group spans at most two (under
/// 4 KiB of bytes); each of its bytes is in one of them, at its address
/// plus the addend both entries hold (every byte of either page is); a
/// member crossing from one into the other touches the bytes the
/// interpreter does one by one (which no fault interrupts: both pages
/// are there, for the group's kind of access); neither page holds code.
/// Giving a group up changes only how its accesses are checked.
///
/// `given_up(leader)`: the leader's group is given up, its accesses
/// check their own bytes.
pub(super) fn sys_groups(insns: &[Insn], given_up: &dyn Fn(&Insn) -> bool) -> Vec<SysAcc> {
    use Kind::*;
    let keeps = |i: &Insn| {
        mem_shape(i.kind).is_some()
            || matches!(
                i.kind,
                Lui | Auipc
                    | Beq
                    | Bne
                    | Blt
                    | Bge
                    | Bltu
                    | Bgeu
                    | Addi
                    | Slti
                    | Sltiu
                    | Xori
                    | Ori
                    | Andi
                    | Slli
                    | Srli
                    | Srai
                    | Add
                    | Sub
                    | Sll
                    | Slt
                    | Sltu
                    | Xor
                    | Srl
                    | Sra
                    | Or
                    | And
                    | Addiw
                    | Slliw
                    | Srliw
                    | Sraiw
                    | Addw
                    | Subw
                    | Sllw
                    | Srlw
                    | Sraw
                    | Mul
                    | Mulh
                    | Mulhsu
                    | Mulhu
                    | Div
                    | Divu
                    | Rem
                    | Remu
                    | Mulw
                    | Divw
                    | Divuw
                    | Remw
                    | Remuw
                    | AddUw
                    | Sh1add
                    | Sh2add
                    | Sh3add
                    | ZextH
                    | SextH
                    | SextB
            )
    };
    #[derive(Clone, Copy, Default)]
    struct G {
        lead: u8,
        last: u8,
        lo: i32,
        hi: i32,
        store: bool,
    }
    // (Fixed arrays: this runs for every block translated; blocks are
    // shorter than `MAX` but for pathological fused ones, left alone.)
    const MAX: usize = 128;
    let mut out = vec![SysAcc::Own; insns.len()];
    if insns.len() > MAX {
        return out;
    }
    let mut groups = [G::default(); MAX];
    let mut ng = 0usize;
    // The group of each access (index into `groups`).
    let mut acc = [u8::MAX; MAX];
    // The open group of each base register.
    let mut open = [u8::MAX; 32];
    for (k, i) in insns.iter().enumerate() {
        if !keeps(i) {
            open = [u8::MAX; 32];
            continue;
        }
        if let Some((n, _, is_store)) = mem_shape(i.kind) {
            let b = i.rs1 as usize;
            let (lo, hi) = (i.imm, i.imm + n as i32 - 1);
            let g = open[b] as usize;
            let joined = b != 0 && g != u8::MAX as usize && {
                let grp = &mut groups[g];
                let (l, h) = (grp.lo.min(lo), grp.hi.max(hi));
                // Bytes that fit in one page (others always leave).
                h - l < 4096 && {
                    grp.lo = l;
                    grp.hi = h;
                    grp.last = k as u8;
                    grp.store |= is_store;
                    true
                }
            };
            let g = if joined {
                g
            } else {
                groups[ng] = G {
                    lead: k as u8,
                    last: k as u8,
                    lo,
                    hi,
                    store: is_store,
                };
                ng += 1;
                ng - 1
            };
            acc[k] = g as u8;
            if b != 0 {
                open[b] = g as u8;
            }
        }
        if (i.rd as usize) < 32 {
            open[i.rd as usize] = u8::MAX;
        }
    }
    // Slots for the groups of more than one access, first come first
    // served among those whose groups ended before (others stay apart).
    let mut slot_of = [u8::MAX; MAX];
    let mut busy_until = [None::<u8>; GROUP_SLOTS];
    for (g, grp) in groups[..ng].iter().enumerate() {
        if grp.last == grp.lead || given_up(&insns[grp.lead as usize]) {
            continue;
        }
        if let Some(s) = busy_until
            .iter()
            .position(|b| b.is_none_or(|e| e < grp.lead))
        {
            busy_until[s] = Some(grp.last);
            slot_of[g] = s as u8;
        }
    }
    for (k, o) in out.iter_mut().enumerate() {
        let g = acc[k] as usize;
        if g == u8::MAX as usize || slot_of[g] == u8::MAX {
            continue;
        }
        let (grp, slot) = (groups[g], slot_of[g]);
        *o = if grp.lead as usize == k {
            SysAcc::Lead {
                slot,
                lo: grp.lo,
                hi: grp.hi,
                store: grp.store,
            }
        } else {
            SysAcc::Member(slot)
        };
    }
    out
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
