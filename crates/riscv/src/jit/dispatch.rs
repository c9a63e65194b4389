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
    Routines {
        enter,
        epilogue,
        dispatch,
        dispatch_sys,
    }
}
