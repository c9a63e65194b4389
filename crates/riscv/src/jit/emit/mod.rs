//! The block translator: one decoded block ([`Insn`]s) to x86-64 code.

use std::mem::offset_of;

use super::x86::*;
use super::{helper, space_pages, Ctx, Jit, EXIT_ATTN, EXIT_CHAIN, EXIT_SLOW};
use crate::cpu::Core;
use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::mem::perm;
use crate::mmu::TLB_SIZE;

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
        // A static exit: chained (patched jmp) unless system mode leaves
        // the block's page (a different page may translate differently).
        let dispatch_sys = self.dispatch_sys;
        let static_exit = |a: &mut Asm, target: u64| {
            if sys.is_some() && target >> 12 != pc >> 12 {
                a.mov_imm(RAX, target);
                a.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
                a.jmp_abs(dispatch_sys);
            } else {
                a.chain_exit(epi, target);
            }
        };
        // (rel32 offset, index of the instruction to resume at)
        let mut slow: Vec<(usize, usize)> = Vec::new();
        for (k, i) in insns.iter().enumerate() {
            let ipc = pc.wrapping_add(i.off as u64);
            let next = ipc.wrapping_add(i.size() as u64);
            let imm = i.imm;
            let rd = i.rd;
            // rd = op(rs1, ...): rs1 in rax, `$op` computes, then the
            // result (sign-extended from 32 bits for W forms) goes to rd.
            macro_rules! into_rd {
                ($w:expr, $op:expr) => {{
                    a.ld_x(RAX, i.rs1);
                    $op;
                    if !$w {
                        a.sext32(RAX, RAX);
                    }
                    a.st_x(rd, RAX);
                }};
            }
            macro_rules! rr {
                ($w:expr, $op:expr) => {
                    into_rd!($w, a.alu_x($w, $op, RAX, i.rs2))
                };
            }
            macro_rules! ri {
                ($w:expr, $op:expr) => {
                    into_rd!($w, a.alu_imm($w, $op, RAX, imm))
                };
            }
            macro_rules! sh_imm {
                ($w:expr, $d:expr) => {
                    into_rd!(
                        $w,
                        a.shift_imm($w, $d, RAX, (imm as u8) & if $w { 63 } else { 31 })
                    )
                };
            }
            macro_rules! sh_reg {
                ($w:expr, $d:expr) => {
                    into_rd!($w, {
                        a.ld_x(RCX, i.rs2);
                        a.shift_cl($w, $d, RAX)
                    })
                };
            }
            macro_rules! set {
                ($cc:expr, $imm:expr) => {{
                    a.ld_x(RAX, i.rs1);
                    if $imm {
                        a.alu_imm(true, CMP, RAX, imm);
                    } else {
                        a.alu_x(true, CMP, RAX, i.rs2);
                    }
                    a.setcc_rax($cc);
                    a.st_x(rd, RAX);
                }};
            }
            macro_rules! branch {
                ($cc:expr) => {{
                    a.add_icount(k as u32 + 1);
                    a.ld_x(RAX, i.rs1);
                    a.alu_x(true, CMP, RAX, i.rs2);
                    let taken = a.jcc($cc);
                    static_exit(&mut a, next);
                    a.bind(taken);
                    static_exit(&mut a, ipc.wrapping_add(imm as i64 as u64));
                }};
            }
            // FP loads and stores, user mode (where FP is always on, so no
            // mstatus.FS check): the integer paths below, with f registers.
            let fp = match (i.kind, sys) {
                (Flw, None) => Some((4, false, false)),
                (Fld, None) => Some((8, false, false)),
                (Fsw, None) => Some((4, false, true)),
                (Fsd, None) => Some((8, false, true)),
                _ => None,
            };
            if let (Some((n, signed, is_store)), Some(_)) = (mem_shape(i.kind), sys) {
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
                slow.push((a.jcc(CC_NE), k));
                if is_store {
                    // Stores into pages holding translated code take the
                    // slow path (it drops the stale translations).
                    a.load(RSI, RDX, offset_of!(crate::mmu::Entry, code) as i32);
                    a.op_m(false, &[0x80], 7, RSI, 0); // cmp byte [rsi], 0
                    a.u8(0);
                    slow.push((a.jcc(CC_NE), k));
                }
                if n > 1 {
                    a.op_rr(false, &[0x89], RAX, RSI); // mov esi, eax
                    a.alu_imm(false, AND, RSI, 0xfff);
                    a.alu_imm(false, CMP, RSI, 0x1000 - n as i32);
                    slow.push((a.jcc(CC_A), k));
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
                continue;
            }
            if let Some((n, signed, is_store)) = mem_shape(i.kind).or(fp) {
                // va = rs1 + imm in rax; page index in rcx.
                a.ld_x(RAX, i.rs1);
                if imm != 0 {
                    a.alu_imm(true, ADD, RAX, imm);
                }
                a.mov_rr(RCX, RAX);
                a.shift_imm(true, SHR, RCX, 12);
                let pages = space_pages(self.space_size);
                if pages <= i32::MAX as u64 {
                    a.alu_imm(true, CMP, RCX, pages as i32);
                    slow.push((a.jcc(CC_AE), k));
                } else {
                    a.mov_rr(RDX, RAX);
                    a.shift_imm(true, SHR, RDX, self.space_bits);
                    slow.push((a.jcc(CC_NE), k));
                }
                if is_store {
                    // movzx edx, byte [r13 + rcx]; and edx, W|CODE; cmp edx, W
                    a.op_bi(false, &[0x0f, 0xb6], RDX, R13, RCX);
                    a.alu_imm(false, AND, RDX, (perm::W | perm::CODE) as i32);
                    a.alu_imm(false, CMP, RDX, perm::W as i32);
                    slow.push((a.jcc(CC_NE), k));
                } else {
                    // test byte [r13 + rcx], R
                    a.op_bi(false, &[0xf6], 0, R13, RCX);
                    a.u8(perm::R);
                    slow.push((a.jcc(CC_E), k));
                }
                if n > 1 {
                    // The access must not cross the page end.
                    a.op_rr(false, &[0x89], RAX, RDX); // mov edx, eax
                    a.alu_imm(false, AND, RDX, 0xfff);
                    a.alu_imm(false, CMP, RDX, 0x1000 - n as i32);
                    slow.push((a.jcc(CC_A), k));
                }
                if is_store {
                    if fp.is_some() {
                        a.load(RDX, RBX, fd(i.rs2));
                    } else {
                        a.ld_x(RDX, i.rs2);
                    }
                    match n {
                        1 => a.op_bi(false, &[0x88], RDX, R12, RAX),
                        2 => {
                            a.u8(0x66);
                            a.op_bi(false, &[0x89], RDX, R12, RAX);
                        }
                        4 => a.op_bi(false, &[0x89], RDX, R12, RAX),
                        _ => a.op_bi(true, &[0x89], RDX, R12, RAX),
                    }
                } else {
                    match (n, signed) {
                        (1, true) => a.op_bi(true, &[0x0f, 0xbe], RAX, R12, RAX),
                        (1, false) => a.op_bi(false, &[0x0f, 0xb6], RAX, R12, RAX),
                        (2, true) => a.op_bi(true, &[0x0f, 0xbf], RAX, R12, RAX),
                        (2, false) => a.op_bi(false, &[0x0f, 0xb7], RAX, R12, RAX),
                        (4, true) => a.op_bi(true, &[0x63], RAX, R12, RAX),
                        (4, false) => a.op_bi(false, &[0x8b], RAX, R12, RAX),
                        _ => a.op_bi(true, &[0x8b], RAX, R12, RAX),
                    }
                    if fp.is_some() {
                        if n == 4 {
                            // NaN-box the single.
                            a.mov_imm(RCX, 0xffff_ffff_0000_0000);
                            a.alu_rr(true, OR, RAX, RCX);
                        }
                        a.store(RBX, fd(rd), RAX);
                    } else {
                        a.st_x(rd, RAX);
                    }
                }
                continue;
            }
            match i.kind {
                BlockEnd => {
                    a.add_icount(k as u32);
                    static_exit(&mut a, ipc);
                }
                Lui => {
                    a.mov_imm(RAX, imm as i64 as u64);
                    a.st_x(rd, RAX);
                }
                Auipc => {
                    a.mov_imm(RAX, ipc.wrapping_add(imm as i64 as u64));
                    a.st_x(rd, RAX);
                }
                Jal => {
                    if rd != ZERO_SINK {
                        a.mov_imm(RAX, next);
                        a.st_x(rd, RAX);
                    }
                    a.add_icount(k as u32 + 1);
                    static_exit(&mut a, ipc.wrapping_add(imm as i64 as u64));
                }
                Jalr => {
                    a.ld_x(RAX, i.rs1);
                    if imm != 0 {
                        a.alu_imm(true, ADD, RAX, imm);
                    }
                    a.alu_imm(true, AND, RAX, -2);
                    if rd != ZERO_SINK {
                        a.mov_imm(RCX, next);
                        a.st_x(rd, RCX);
                    }
                    a.add_icount(k as u32 + 1);
                    a.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
                    if sys.is_some() {
                        a.jmp_abs(self.dispatch_sys);
                    } else {
                        a.jmp_abs(self.dispatch);
                    }
                }
                Beq => branch!(CC_E),
                Bne => branch!(CC_NE),
                Blt => branch!(CC_L),
                Bge => branch!(CC_GE),
                Bltu => branch!(CC_B),
                Bgeu => branch!(CC_AE),
                Addi if rd == ZERO_SINK => {}
                Addi if i.rs1 == 0 => {
                    // li: mov qword [rbx + rd], simm32
                    a.op_m(true, &[0xc7], 0, RBX, xd(rd));
                    a.u32(imm as u32);
                }
                Addi if i.rs1 == rd => {
                    // add qword [rbx + rd], imm
                    if (-128..=127).contains(&imm) {
                        a.op_m(true, &[0x83], 0, RBX, xd(rd));
                        a.u8(imm as i8 as u8);
                    } else {
                        a.op_m(true, &[0x81], 0, RBX, xd(rd));
                        a.u32(imm as u32);
                    }
                }
                Addi if imm == 0 => {
                    // mv
                    a.ld_x(RAX, i.rs1);
                    a.st_x(rd, RAX);
                }
                Addi => ri!(true, ADD),
                Xori => ri!(true, XOR),
                Ori => ri!(true, OR),
                Andi => ri!(true, AND),
                Addiw => ri!(false, ADD),
                Slti => set!(CC_L, true),
                Sltiu => set!(CC_B, true),
                Slt => set!(CC_L, false),
                Sltu => set!(CC_B, false),
                Slli => sh_imm!(true, SHL),
                Srli => sh_imm!(true, SHR),
                Srai => sh_imm!(true, SAR),
                Slliw => sh_imm!(false, SHL),
                Srliw => sh_imm!(false, SHR),
                Sraiw => sh_imm!(false, SAR),
                Sll => sh_reg!(true, SHL),
                Srl => sh_reg!(true, SHR),
                Sra => sh_reg!(true, SAR),
                Sllw => sh_reg!(false, SHL),
                Srlw => sh_reg!(false, SHR),
                Sraw => sh_reg!(false, SAR),
                Add => rr!(true, ADD),
                Sub => rr!(true, SUB),
                Xor => rr!(true, XOR),
                Or => rr!(true, OR),
                And => rr!(true, AND),
                Addw => rr!(false, ADD),
                Subw => rr!(false, SUB),
                Mul | Mulw => {
                    let w = i.kind == Mul;
                    a.ld_x(RAX, i.rs1);
                    a.ld_x(RCX, i.rs2);
                    a.op_rr(w, &[0x0f, 0xaf], RAX, RCX); // imul rax, rcx
                    if !w {
                        a.sext32(RAX, RAX);
                    }
                    a.st_x(rd, RAX);
                }
                Mulh | Mulhu => {
                    a.ld_x(RAX, i.rs1);
                    a.ld_x(RCX, i.rs2);
                    // imul rcx (/5) or mul rcx (/4): rdx:rax = rax * rcx
                    a.op_rr(true, &[0xf7], if i.kind == Mulh { 5 } else { 4 }, RCX);
                    a.st_x(rd, RDX);
                }
                Fence => {
                    // As the interpreter: only a store->load order needs a
                    // host barrier on x86 (TSO).
                    let pred = (i.raw >> 24) & 0xf;
                    let succ = (i.raw >> 20) & 0xf;
                    let tso = i.raw >> 28 == 0b1000;
                    if !tso && pred & 0b0101 != 0 && succ & 0b1010 != 0 {
                        a.b.extend_from_slice(&[0x0f, 0xae, 0xf0]); // mfence
                    }
                }
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
                    let f: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper;
                    a.mov_imm(RAX, sys.unwrap_or(f as usize) as u64);
                    a.b.extend_from_slice(&[0xff, 0xd0]); // call rax
                    a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
                    slow.push((a.jcc(CC_NE), k));
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
        slow.sort_by_key(|&(_, k)| k);
        let mut stub = 0;
        for &(at, k) in &slow {
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
