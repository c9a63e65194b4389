//! The fixed routines at the start of a hart's code buffer: the entry
//! from Rust (saves callee-saved registers, loads the pinned ones from
//! [`Ctx`]), the epilogue back to Rust, and the inline dispatch of
//! indirect jumps: user mode through the 2-way pc -> code table, system
//! mode through the fetch TLB and then the (virtual, physical) table.

use std::mem::offset_of;

use super::x86::*;
use super::{Ctx, SysSlot, EXIT_DISPATCH, HASH_MUL, RAS_DEPTH, SET_BITS, SYS_SET_BITS};
use crate::mmu::TLB_SIZE;

/// Addresses of the fixed routines.
pub(super) struct Routines {
    /// `enter(ctx, code)`, sysv64.
    pub(super) enter: usize,
    pub(super) epilogue: usize,
    /// rax = guest pc (also in `Ctx::pc`): jump to its block or exit.
    pub(super) dispatch: usize,
    /// The same for system mode (virtual pc through the fetch TLB).
    pub(super) dispatch_sys: usize,
    /// System mode: [`straddle`] for groups of loads only, and for
    /// groups with a store.
    pub(super) straddle: [usize; 2],
}

fn ctx_off(off: usize) -> i32 {
    off as i32
}

/// Writes the routines at the start of `a`.
pub(super) fn write(a: &mut Asm) -> Routines {
    // enter(ctx: rdi, code: rsi)
    let enter = a.addr();
    a.b.extend_from_slice(&[0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57]);
    a.alu_imm(true, SUB, RSP, 8); // sub rsp, 8: 16-byte alignment for calls
    a.mov_rr(R14, RDI);
    a.load(RBX, R14, ctx_off(offset_of!(Ctx, xregs)));
    a.load(R12, R14, ctx_off(offset_of!(Ctx, membase)));
    a.load(R15, R14, ctx_off(offset_of!(Ctx, attn)));
    // The return-address stack grows down from here (see `RAS_DEPTH`).
    a.store(R14, ctx_off(offset_of!(Ctx, ras_base)), RSP);
    a.op_m(true, &[0x8d], RAX, RSP, -16 * RAS_DEPTH as i32); // lea rax, [rsp - 16 * depth]
    a.store(R14, ctx_off(offset_of!(Ctx, ras_limit)), RAX);
    // rbp counts the instructions retired since entry (see
    // `Asm::add_icount`); the epilogue stores it in `Ctx::icount`.
    a.op_rr(false, &[0x31], RBP, RBP); // xor ebp, ebp
    a.b.extend_from_slice(&[0xff, 0xe6]); // jmp rsi
    let epilogue = a.addr();
    a.store(R14, ctx_off(offset_of!(Ctx, icount)), RBP);
    // Drops what the return-address stack holds.
    a.load(RSP, R14, ctx_off(offset_of!(Ctx, ras_base)));
    a.alu_imm(true, ADD, RSP, 8);
    a.b.extend_from_slice(&[
        0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, 0xc3,
    ]);
    // dispatch: rax = pc, already stored in ctx.pc.
    let dispatch = a.addr();
    a.mov_imm(RCX, HASH_MUL);
    a.op_rr(true, &[0x0f, 0xaf], RCX, RAX); // imul rcx, rax
    a.shift_imm(true, SHR, RCX, 64 - SET_BITS as u8);
    a.shift_imm(true, SHL, RCX, 5); // two 16-byte entries per set
    a.op_m(true, &[0x03], RCX, R14, ctx_off(offset_of!(Ctx, table))); // add rcx, [r14+table]
    a.op_m(true, &[0x3b], RAX, RCX, 0); // cmp rax, [rcx]
    let way1 = a.jcc(CC_NE);
    a.op_m(false, &[0xff], 4, RCX, 8); // jmp [rcx+8]
    a.bind(way1);
    a.op_m(true, &[0x3b], RAX, RCX, 16); // cmp rax, [rcx+16]
    let miss = a.jcc(CC_NE);
    a.op_m(false, &[0xff], 4, RCX, 24); // jmp [rcx+24]
    a.bind(miss);
    a.mov_imm(RAX, EXIT_DISPATCH as u64);
    a.jmp_abs(epilogue);
    // dispatch_sys: rax = virtual pc, already in ctx.pc. Translates it
    // through the fetch TLB (a miss or MMIO: back to Rust), then looks
    // up (virtual pc, physical pc) in the system table, whose page must
    // also be verified in the current fence epoch (see `fence_i`; a page
    // checked in an earlier one is compared here, by `recheck_page`).
    let dispatch_sys = a.addr();
    a.mov_rr(RCX, RAX);
    a.shift_imm(true, SHR, RCX, 12);
    a.op_rr(false, &[0x89], RCX, RDX); // mov edx, ecx
    a.alu_imm(false, AND, RDX, (TLB_SIZE - 1) as i32);
    a.shift_imm(false, SHL, RDX, 6); // * 64 = size of a TLB entry
    a.op_m(true, &[0x03], RDX, R14, ctx_off(offset_of!(Ctx, itlb)));
    let tag_x = offset_of!(crate::mmu::Entry, tag_x) as i32;
    a.op_m(true, &[0x3b], RCX, RDX, tag_x); // cmp rcx, [rdx + tag_x]
    let miss1 = a.jcc(CC_NE);
    a.mov_rr(RSI, RAX);
    a.alu_imm(false, AND, RSI, 0xfff);
    let pa_page = offset_of!(crate::mmu::Entry, pa_page) as i32;
    // or rsi, [rdx + pa_page]: the physical pc.
    a.op_m(true, &[0x0b], RSI, RDX, pa_page);
    // The set of (vpc, pa), as `Jit::sys_slot`: two 32-byte slots.
    a.mov_rr(RCX, RSI);
    a.shift_imm(true, SHL, RCX, 7);
    a.alu_rr(true, XOR, RCX, RAX);
    a.mov_imm(RDX, HASH_MUL);
    a.op_rr(true, &[0x0f, 0xaf], RCX, RDX); // imul rcx, rdx
    a.shift_imm(true, SHR, RCX, 64 - SYS_SET_BITS as u8);
    a.shift_imm(true, SHL, RCX, 6);
    a.op_m(true, &[0x03], RCX, R14, ctx_off(offset_of!(Ctx, systable)));
    let vpc = offset_of!(SysSlot, vpc) as i32;
    let ppc = offset_of!(SysSlot, ppc) as i32;
    a.op_m(true, &[0x3b], RAX, RCX, vpc);
    let way1 = a.jcc(CC_NE);
    a.op_m(true, &[0x3b], RSI, RCX, ppc);
    let way1b = a.jcc(CC_NE);
    // The block's page must have been checked in the current fence
    // epoch: the slot points at the page's epoch.
    let hit = a.addr();
    a.load(RDX, RCX, offset_of!(SysSlot, epoch) as i32);
    a.load(RDX, RDX, 0);
    a.op_m(true, &[0x3b], RDX, R14, ctx_off(offset_of!(Ctx, epoch)));
    let stale = a.jcc(CC_NE);
    let go = a.addr();
    a.op_m(false, &[0xff], 4, RCX, offset_of!(SysSlot, code) as i32); // jmp [rcx + code]
                                                                      // A page last checked in an earlier epoch: `recheck_page` compares
                                                                      // it here (rsp stays 16-byte aligned across the call; rcx, the
                                                                      // slot, is kept on the stack; the register cache is dead at a
                                                                      // block's end) and, unchanged, the block is entered.
    a.bind(stale);
    a.u8(0x51); // push rcx
    a.alu_imm(true, SUB, 4, 8); // sub rsp, 8
    a.load(RDI, RCX, offset_of!(SysSlot, epoch) as i32);
    a.load(RSI, R14, ctx_off(offset_of!(Ctx, epoch)));
    a.op_m(false, &[0xff], 2, R14, ctx_off(offset_of!(Ctx, recheck))); // call [r14 + recheck]
    a.alu_imm(true, ADD, 4, 8); // add rsp, 8
    a.u8(0x59); // pop rcx
    a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
    let changed = a.jcc(CC_E);
    a.jmp_abs(go);
    a.bind(way1);
    a.bind(way1b);
    a.op_m(true, &[0x3b], RAX, RCX, 32 + vpc);
    let miss3 = a.jcc(CC_NE);
    a.op_m(true, &[0x3b], RSI, RCX, 32 + ppc);
    let miss4 = a.jcc(CC_NE);
    a.alu_imm(true, ADD, RCX, 32);
    a.jmp_abs(hit);
    for m in [miss1, changed, miss3, miss4] {
        a.bind(m);
    }
    a.mov_imm(RAX, EXIT_DISPATCH as u64);
    a.jmp_abs(epilogue);
    let straddle = [false, true].map(|store| straddle(a, store));
    Routines {
        enter,
        epilogue,
        dispatch,
        dispatch_sys,
        straddle,
    }
}

/// System mode, called (`call rel32`) by a group's leader whose TLB check
/// failed (see `emit::mem::sys_groups`), with rax = the group's first
/// byte (`base + lo`) and rcx = the page number of its last: whether the
/// group's bytes lie in two neighbouring pages that the data TLB holds
/// (in its entries of writes for a group with a `store`), that hold no
/// translated code (with a store) and whose host addends are one (the
/// guest pages follow each other in host memory too: RAM mapped in
/// order, as a kernel's linear map and image are). Then ZF is set and rcx
/// is that addend, with which the leader goes on as if its check had
/// passed: every byte of the group is at its address plus the addend,
/// and an access that crosses from one page into the other touches the
/// same bytes as the interpreter's, byte by byte. Else ZF is clear (the
/// leader leaves for the interpreter), and `Ctx::straddled` is the
/// return address (in the leader's block) when the first page was in the
/// TLB (the second missing from it, addends apart, or code in one): a
/// miss of the first is not counted, the interpreter fills the TLB.
/// Clobbers rcx, rdx and the flags; rax and the register cache stay.
fn straddle(a: &mut Asm, store: bool) -> usize {
    use crate::mmu::Entry;
    let at = a.addr();
    let tag = if store {
        offset_of!(Entry, tag_w)
    } else {
        offset_of!(Entry, tag_r)
    } as i32;
    let code = offset_of!(Entry, code) as i32;
    let addend = offset_of!(Entry, addend) as i32;
    let index = ((TLB_SIZE - 1) << 6) as i32;
    // Two pages, the second after the first (not a page of the group's
    // own that missed, nor bytes wrapping around 2^64).
    a.mov_rr(RDX, RAX);
    a.shift_imm(true, SHR, RDX, 12);
    a.alu_imm(true, ADD, RDX, 1);
    a.alu_rr(true, CMP, RDX, RCX);
    let mut plain = vec![a.jcc(CC_NE)];
    // The first page's entry (rdx = 64 * its index), then the second's.
    a.op_rr(false, &[0x89], RAX, RDX); // mov edx, eax
    a.shift_imm(false, SHR, RDX, 6);
    a.alu_imm(false, AND, RDX, index);
    a.mov_rr(RCX, RAX);
    a.shift_imm(true, SHR, RCX, 12);
    a.op_bid(true, &[0x3b], RCX, R12, RDX, tag); // cmp rcx, [r12 + rdx + tag]
    plain.push(a.jcc(CC_NE));
    // The first page in the TLB: from here on a failure counts, the
    // second page's miss too. That page may be one the group can never
    // use (read-only under a store, MMIO), never in the TLB's entries
    // for this access; a page the interpreter then fills costs at most
    // `STRADDLES` leaves before the group is given up.
    let mut count = Vec::new();
    a.alu_imm(true, ADD, RCX, 1);
    a.alu_imm(false, ADD, RDX, 64);
    a.alu_imm(false, AND, RDX, index);
    a.op_bid(true, &[0x3b], RCX, R12, RDX, tag);
    count.push(a.jcc(CC_NE));
    let code_free = |a: &mut Asm, count: &mut Vec<usize>| {
        if store {
            a.op_bid(true, &[0x8b], RCX, R12, RDX, code); // mov rcx, [code]
            a.op_m(false, &[0x80], 7, RCX, 0); // cmp byte [rcx], 0
            a.u8(0);
            count.push(a.jcc(CC_NE));
        }
    };
    code_free(a, &mut count);
    a.op_bid(true, &[0x8b], RCX, R12, RDX, addend); // the second's addend
    a.alu_imm(false, SUB, RDX, 64);
    a.alu_imm(false, AND, RDX, index);
    a.op_bid(true, &[0x3b], RCX, R12, RDX, addend); // the first's
    count.push(a.jcc(CC_NE));
    if store {
        code_free(a, &mut count);
        // (ZF set by the code byte's compare; mov keeps it.)
        a.op_bid(true, &[0x8b], RCX, R12, RDX, addend);
    }
    a.u8(0xc3); // ret
    for at in count {
        a.bind(at);
    }
    // Ctx::straddled = the return address (ZF stays clear).
    a.load(RCX, RSP, 0);
    a.store(R14, ctx_off(offset_of!(Ctx, straddled)), RCX);
    for at in plain {
        a.bind(at);
    }
    a.u8(0xc3); // ret
    at
}
