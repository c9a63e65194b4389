//! x86-64 machine code encoder: the twenty-odd instruction forms the JIT
//! emits, written at their final address so rel32 jumps can be computed
//! and patched. Knows nothing of guests (see `emit` for that).

// x86-64 registers.
pub(super) const RAX: u8 = 0;
pub(super) const RCX: u8 = 1;
pub(super) const RDX: u8 = 2;
pub(super) const RBX: u8 = 3;
pub(super) const RSP: u8 = 4;
pub(super) const RBP: u8 = 5;
pub(super) const RSI: u8 = 6;
pub(super) const RDI: u8 = 7;
pub(super) const R8: u8 = 8;
pub(super) const R9: u8 = 9;
pub(super) const R10: u8 = 10;
pub(super) const R11: u8 = 11;
pub(super) const R12: u8 = 12;
pub(super) const R13: u8 = 13;
pub(super) const R14: u8 = 14;
pub(super) const R15: u8 = 15;

// Condition codes.
pub(super) const CC_B: u8 = 0x2;
pub(super) const CC_AE: u8 = 0x3;
pub(super) const CC_E: u8 = 0x4;
pub(super) const CC_NE: u8 = 0x5;
#[allow(dead_code)] // (no user at the moment; part of the set)
pub(super) const CC_A: u8 = 0x7;
pub(super) const CC_L: u8 = 0xc;
pub(super) const CC_GE: u8 = 0xd;

// ALU opcodes (`op r/m, reg` form) and their /digit in the 0x81 group.
pub(super) const ADD: (u8, u8) = (0x01, 0);
pub(super) const OR: (u8, u8) = (0x09, 1);
pub(super) const AND: (u8, u8) = (0x21, 4);
pub(super) const SUB: (u8, u8) = (0x29, 5);
pub(super) const XOR: (u8, u8) = (0x31, 6);
pub(super) const CMP: (u8, u8) = (0x39, 7);

// Shift /digits (0xC1 imm8, 0xD3 by cl).
pub(super) const SHL: u8 = 4;
pub(super) const SHR: u8 = 5;
pub(super) const SAR: u8 = 7;

/// Byte emitter for code that will live at `base`.
pub(super) struct Asm {
    pub(super) b: Vec<u8>,
    pub(super) base: usize,
    /// Guest registers held in host registers (used by the block
    /// translator only; the encoder never reads it).
    pub(super) cache: super::emit::RegCache,
}

impl Asm {
    pub(super) fn new(base: usize, capacity: usize) -> Asm {
        Asm {
            b: Vec::with_capacity(capacity),
            base,
            cache: super::emit::RegCache::default(),
        }
    }
    /// An assembler writing into `b` (empty; its capacity is kept).
    pub(super) fn with_buf(base: usize, b: Vec<u8>) -> Asm {
        debug_assert!(b.is_empty());
        Asm {
            b,
            base,
            cache: super::emit::RegCache::default(),
        }
    }
    pub(super) fn addr(&self) -> usize {
        self.base + self.b.len()
    }
    pub(super) fn u8(&mut self, x: u8) {
        self.b.push(x);
    }
    pub(super) fn u32(&mut self, x: u32) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    pub(super) fn u64(&mut self, x: u64) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    pub(super) fn rex(&mut self, w: bool, reg: u8, index: u8, base: u8) {
        let r =
            0x40 | (w as u8) << 3 | (reg >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (base >> 3 & 1);
        if r != 0x40 {
            self.u8(r);
        }
    }
    /// ModRM (+SIB) for `[base + disp]`.
    pub(super) fn m_disp(&mut self, reg: u8, base: u8, disp: i32) {
        let small = (-128..=127).contains(&disp);
        self.u8(if small { 0x40 } else { 0x80 } | (reg & 7) << 3 | (base & 7));
        if base & 7 == 4 {
            self.u8(0x24);
        }
        if small {
            self.u8(disp as i8 as u8);
        } else {
            self.u32(disp as u32);
        }
    }
    /// ModRM + SIB for `[base + index + disp]` (index is never rsp).
    pub(super) fn m_bid(&mut self, reg: u8, base: u8, index: u8, disp: i32) {
        let small = (-128..=127).contains(&disp);
        self.u8(if small { 0x40 } else { 0x80 } | (reg & 7) << 3 | 4);
        self.u8((index & 7) << 3 | (base & 7));
        if small {
            self.u8(disp as i8 as u8);
        } else {
            self.u32(disp as u32);
        }
    }
    /// `op reg, [base + disp]` or `op [base + disp], reg`.
    pub(super) fn op_m(&mut self, w: bool, op: &[u8], reg: u8, base: u8, disp: i32) {
        self.rex(w, reg, 0, base);
        self.b.extend_from_slice(op);
        self.m_disp(reg, base, disp);
    }
    /// `op reg, [base + index + disp]` or the store direction.
    pub(super) fn op_bid(&mut self, w: bool, op: &[u8], reg: u8, base: u8, index: u8, disp: i32) {
        self.rex(w, reg, index, base);
        self.b.extend_from_slice(op);
        self.m_bid(reg, base, index, disp);
    }
    /// Register-register form: ModRM reg field `reg`, r/m field `rm`.
    pub(super) fn op_rr(&mut self, w: bool, op: &[u8], reg: u8, rm: u8) {
        self.rex(w, reg, 0, rm);
        self.b.extend_from_slice(op);
        self.u8(0xc0 | (reg & 7) << 3 | (rm & 7));
    }
    pub(super) fn load(&mut self, dst: u8, base: u8, disp: i32) {
        self.op_m(true, &[0x8b], dst, base, disp);
    }
    pub(super) fn store(&mut self, base: u8, disp: i32, src: u8) {
        self.op_m(true, &[0x89], src, base, disp);
    }
    pub(super) fn mov_rr(&mut self, dst: u8, src: u8) {
        self.op_rr(true, &[0x89], src, dst);
    }
    pub(super) fn mov_imm(&mut self, dst: u8, v: u64) {
        if v <= u32::MAX as u64 {
            self.rex(false, 0, 0, dst);
            self.u8(0xb8 + (dst & 7));
            self.u32(v as u32);
        } else if v as i64 >= i32::MIN as i64 && v as i64 <= i32::MAX as i64 {
            self.op_rr(true, &[0xc7], 0, dst);
            self.u32(v as u32);
        } else {
            self.rex(true, 0, 0, dst);
            self.u8(0xb8 + (dst & 7));
            self.u64(v);
        }
    }
    /// `op dst, src` (64 or 32 bit) for an ALU op.
    pub(super) fn alu_rr(&mut self, w: bool, op: (u8, u8), dst: u8, src: u8) {
        self.op_rr(w, &[op.0], src, dst);
    }
    pub(super) fn alu_imm(&mut self, w: bool, op: (u8, u8), dst: u8, imm: i32) {
        if (-128..=127).contains(&imm) {
            self.op_rr(w, &[0x83], op.1, dst);
            self.u8(imm as i8 as u8);
        } else {
            self.op_rr(w, &[0x81], op.1, dst);
            self.u32(imm as u32);
        }
    }
    pub(super) fn shift_imm(&mut self, w: bool, digit: u8, dst: u8, n: u8) {
        self.op_rr(w, &[0xc1], digit, dst);
        self.u8(n);
    }
    pub(super) fn shift_cl(&mut self, w: bool, digit: u8, dst: u8) {
        self.op_rr(w, &[0xd3], digit, dst);
    }
    /// `movsxd dst, src32`.
    pub(super) fn sext32(&mut self, dst: u8, src: u8) {
        self.op_rr(true, &[0x63], dst, src);
    }
    /// `setcc al; movzx eax, al`.
    pub(super) fn setcc_rax(&mut self, cc: u8) {
        self.b
            .extend_from_slice(&[0x0f, 0x90 + cc, 0xc0, 0x0f, 0xb6, 0xc0]);
    }
    /// `jcc rel32` with a placeholder; returns the offset of the rel32.
    pub(super) fn jcc(&mut self, cc: u8) -> usize {
        self.b.extend_from_slice(&[0x0f, 0x80 + cc]);
        self.u32(0);
        self.b.len() - 4
    }
    pub(super) fn jmp_abs(&mut self, target: usize) {
        self.u8(0xe9);
        let rel = target as i64 - (self.addr() as i64 + 4);
        self.u32(rel as i32 as u32);
    }
    /// `call rel32` to `target` (a routine at the buffer's start).
    pub(super) fn call_abs(&mut self, target: usize) {
        self.u8(0xe8);
        let rel = target as i64 - (self.addr() as i64 + 4);
        self.u32(rel as i32 as u32);
    }
    /// `jmp rel32` with a placeholder; returns the offset of the rel32.
    pub(super) fn jmp_fwd(&mut self) -> usize {
        self.u8(0xe9);
        self.u32(0);
        self.b.len() - 4
    }
    /// Points the rel32 at offset `at` to the current position.
    pub(super) fn bind(&mut self, at: usize) {
        let rel = (self.b.len() - (at + 4)) as u32;
        self.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }
}
