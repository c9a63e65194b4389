//! The block translator: one decoded block ([`Insn`]s) to x86-64 code.
//!
//! Split by ISA extension as the interpreter (`crate::exec`) is: `mem`
//! (loads and stores, inline), `rvi` (the rest of the base integer set),
//! `rvm` (multiplications). Everything else that does not end a block (FP
//! arithmetic, atomics, division, bit manipulation) calls the interpreter
//! on that one instruction through [`helper`]; system instructions, which
//! end blocks, leave for the interpreter.

use std::mem::offset_of;

use super::x86::*;
use super::{helper, space_pages, Ctx, Jit, EXIT_ATTN, EXIT_CHAIN, EXIT_SLOW};
use crate::cpu::Core;
use crate::decode::{Insn, Kind, ZERO_SINK};

mod mem;
mod rvi;
mod rvm;

/// The block being translated, as the per-extension emitters see it.
struct Frame {
    /// Guest pc of the block's first instruction.
    pc: u64,
    /// System mode, with the address of its helper.
    sys: Option<usize>,
    epilogue: usize,
    dispatch: usize,
    dispatch_sys: usize,
    /// User mode: the address space's size and log2 size (bounds checks).
    space_size: u64,
    space_bits: u8,
    /// Jumps to the out-of-line slow exits: (rel32 offset, index of the
    /// instruction to resume at).
    slow: Vec<(usize, usize)>,
}

impl Frame {
    /// A static exit: chained (patched jmp) unless system mode leaves the
    /// block's page (a different page may translate differently).
    fn static_exit(&self, a: &mut Asm, target: u64) {
        if self.sys.is_some() && target >> 12 != self.pc >> 12 {
            a.mov_imm(RAX, target);
            a.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
            a.jmp_abs(self.dispatch_sys);
        } else {
            a.chain_exit(self.epilogue, target);
        }
    }
}

fn ctx_off(off: usize) -> i32 {
    off as i32
}

/// Displacement of guest register `r` from rbx (= &x[16]).
fn xd(r: u8) -> i32 {
    (r as i32 - 16) * 8
}

/// Displacement of FP register `r` from rbx.
fn fd(r: u8) -> i32 {
    (offset_of!(Core, f) as i32 - offset_of!(Core, x) as i32) + (r as i32 & 31) * 8 - 128
}

/// Guest-aware helpers on top of the encoder.
impl Asm {
    /// `op dst, <guest register r>` straight from memory (x0 reads as 0).
    pub(super) fn alu_x(&mut self, w: bool, op: (u8, u8), dst: u8, r: u8) {
        if r == 0 {
            self.alu_imm(w, op, dst, 0);
        } else {
            // The `op reg, r/m` form is the `op r/m, reg` opcode + 2.
            self.op_m(w, &[op.0 + 2], dst, RBX, xd(r));
        }
    }
    /// Guest register `r` into host `h` (x0 reads as 0).
    pub(super) fn ld_x(&mut self, h: u8, r: u8) {
        if r == 0 {
            self.op_rr(false, &[0x31], h, h);
        } else {
            self.load(h, RBX, xd(r));
        }
    }
    /// Host `h` into guest register `r` (writes to x0 vanish).
    pub(super) fn st_x(&mut self, r: u8, h: u8) {
        if r != 0 && r != ZERO_SINK {
            self.store(RBX, xd(r), h);
        }
    }
    pub(super) fn add_icount(&mut self, n: u32) {
        if n != 0 {
            self.rex(true, 0, 0, R14);
            self.u8(0x81);
            self.m_disp(0, R14, ctx_off(offset_of!(Ctx, icount)));
            self.u32(n);
        }
    }
    /// Exit to Rust with `reason`, next pc `pc`.
    pub(super) fn exit_pc(&mut self, epilogue: usize, pc: u64, reason: u32) {
        self.mov_imm(RAX, pc);
        self.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
        self.mov_imm(RAX, reason as u64);
        self.jmp_abs(epilogue);
    }
    /// A patchable chained exit to the static target `pc`: a `jmp` to the
    /// stub right behind it, which asks Rust to patch the jmp.
    pub(super) fn chain_exit(&mut self, epilogue: usize, pc: u64) {
        let site = self.addr();
        self.u8(0xe9);
        self.u32(0);
        self.mov_imm(RAX, site as u64);
        self.store(R14, ctx_off(offset_of!(Ctx, site)), RAX);
        self.exit_pc(epilogue, pc, EXIT_CHAIN);
    }
}

impl Jit {
    pub(super) fn emit_code(
        &mut self,
        at: usize,
        insns: &[Insn],
        pc: u64,
        sys: Option<usize>,
    ) -> Vec<u8> {
        use Kind::*;
        let mut a = Asm {
            b: Vec::with_capacity(insns.len() * 48 + 256),
            base: at,
        };
        let epi = self.epilogue;
        // Entry: leave when another thread asked for attention or the
        // address space's code changed since this block was translated.
        a.op_m(false, &[0x83], 7, R15, 0);
        a.u8(0);
        let attn1 = a.jcc(CC_NE);
        a.op_m(false, &[0x81], 7, RBP, 0);
        a.u32(self.gen as u32);
        let attn2 = a.jcc(CC_NE);
        // System mode: every POLL_BLOCKS blocks, back to the run loop to
        // check for interrupts and timer deadlines.
        let attn3 = sys.map(|_| {
            // sub dword [r14 + poll], 1; je attn
            a.op_m(false, &[0x83], 5, R14, ctx_off(offset_of!(Ctx, poll)));
            a.u8(1);
            a.jcc(CC_E)
        });
        let mut f = Frame {
            pc,
            sys,
            epilogue: epi,
            dispatch: self.dispatch,
            dispatch_sys: self.dispatch_sys,
            space_size: self.space_size,
            space_bits: self.space_bits,
            slow: Vec::new(),
        };
        for (k, i) in insns.iter().enumerate() {
            let ipc = pc.wrapping_add(i.off as u64);
            let next = ipc.wrapping_add(i.size() as u64);
            if mem::emit(&mut a, &mut f, k, i) {
                continue;
            }
            match i.kind {
                BlockEnd => {
                    a.add_icount(k as u32);
                    f.static_exit(&mut a, ipc);
                }
                Lui | Auipc | Jal | Jalr | Beq | Bne | Blt | Bge | Bltu | Bgeu | Addi | Xori
                | Ori | Andi | Addiw | Slti | Sltiu | Slt | Sltu | Slli | Srli | Srai | Slliw
                | Srliw | Sraiw | Sll | Srl | Sra | Sllw | Srlw | Sraw | Add | Sub | Xor | Or
                | And | Addw | Subw | Fence => rvi::emit(&mut a, &f, k, i, ipc, next),
                Mul | Mulw | Mulh | Mulhu => rvm::emit(&mut a, i),
                _ if i.ends_block() => {
                    // System instructions, ecall, illegal words: the
                    // interpreter runs the block from here.
                    a.add_icount(k as u32);
                    a.exit_pc(epi, ipc, EXIT_SLOW);
                }
                _ => {
                    let idx = self.helpers.len() as u32;
                    self.helpers.push(*i);
                    a.mov_rr(RDI, R14);
                    a.mov_imm(RSI, idx as u64);
                    a.mov_imm(RDX, ipc);
                    let user: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper;
                    a.mov_imm(RAX, sys.unwrap_or(user as usize) as u64);
                    a.b.extend_from_slice(&[0xff, 0xd0]); // call rax
                    a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
                    f.slow.push((a.jcc(CC_NE), k));
                }
            }
        }
        // Out-of-line exits.
        a.bind(attn1);
        a.bind(attn2);
        if let Some(at) = attn3 {
            a.bind(at);
        }
        a.exit_pc(epi, pc, EXIT_ATTN);
        let mut k_done = usize::MAX;
        f.slow.sort_by_key(|&(_, k)| k);
        let mut stub = 0;
        for &(at, k) in &f.slow {
            if k != k_done {
                k_done = k;
                stub = a.b.len();
                a.add_icount(k as u32);
                a.exit_pc(epi, pc.wrapping_add(insns[k].off as u64), EXIT_SLOW);
            }
            let rel = (stub - (at + 4)) as u32;
            a.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        a.b
    }
}
