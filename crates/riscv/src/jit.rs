//! User-mode JIT: translates decoded blocks ([`Insn`]) into x86-64 code.
//!
//! The interpreter's cost is dispatch: one indirect branch, operand
//! fetches and a loop per guest instruction. Here each block becomes
//! straight-line host code that keeps guest registers in `Core::x` (no
//! register allocation: every instruction loads its operands and stores its
//! result, all L1 hits), checks the permission table inline on every load
//! and store exactly as [`crate::mmu::UserMem`] does, and ends by jumping
//! straight into the next block (chaining, patched on first use) or through
//! an inline hash lookup (indirect jumps). Traps, stores into pages holding
//! code, page-crossing accesses, system instructions and anything else
//! rare leave the JIT at the instruction's pc, and the interpreter runs the
//! block from there: it owns all the precise slow paths, so the JIT never
//! has to reproduce them. Instructions that are neither common nor
//! control flow (FP, atomics, division, bit manipulation) call
//! [`helper`], which runs the interpreter on that one instruction.
//!
//! Written by hand rather than with an assembler crate (dynasm, iced): the
//! code needs some twenty instruction forms, must be emitted at its final
//! address (chained jumps are patched in place), and lives in one fixed
//! buffer per hart so that jumps between blocks stay rel32.
//!
//! Register use inside generated code (all callee-saved, so helper calls
//! keep them): rbx = `&core.x[16]` (so every register is a disp8),
//! r12 = guest memory base, r13 = permission table, r14 = [`Ctx`],
//! r15 = the hart's attention word, rbp = the address space's code
//! generation. rax, rcx, rdx, rsi, rdi are scratch.

use std::collections::HashMap;
use std::mem::offset_of;

use crate::decode::{Insn, Kind, ZERO_SINK};
use crate::hart::Core;
use crate::mem::{perm, Bus, UserSpace};
use crate::mmu::{SysMem, UserMem, TLB_SIZE};

/// Code buffer per hart. Reserved, not committed: pages are touched as
/// code is written. Full: everything is flushed and translation restarts.
const CODE_SIZE: usize = 32 << 20;
/// Room kept free for one more block (96 instructions at well under 100
/// bytes each, plus exit stubs).
const HEADROOM: usize = 64 << 10;
/// pc -> code table read by generated code: 2-way set associative (two
/// hot targets of one indirect jump that hash alike must not evict each
/// other on every call), `TABLE_SIZE / 2` sets, power of two.
const TABLE_SIZE: usize = 1 << 14;
const SET_BITS: u32 = 13;
/// Fibonacci hashing: spreads nearby and page-aligned pcs over all sets.
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// Cap on helper instructions before a flush (the table is a Vec whose
/// pointer generated code reads through `Ctx`).
const MAX_HELPERS: usize = 1 << 18;

const EXIT_DISPATCH: u32 = 0;
const EXIT_CHAIN: u32 = 1;
const EXIT_SLOW: u32 = 2;
const EXIT_ATTN: u32 = 3;

/// State shared between Rust and generated code (offsets are baked into
/// the code, hence `repr(C)`).
#[repr(C)]
struct Ctx {
    /// Next guest pc at every exit.
    pc: u64,
    /// Address of the `jmp rel32` to patch (EXIT_CHAIN).
    site: u64,
    /// Guest instructions retired since entry.
    icount: u64,
    table: *const Entry,
    core: *mut Core,
    space: *const UserSpace,
    helpers: *const Insn,
    xregs: *mut u64,
    /// r12: user mode, guest memory base; system mode, the data TLB.
    membase: *const u8,
    perms: *const u8,
    attn: *const u32,
    codegen: *const u64,
    /// System mode: the `SysMem` helpers run instructions with.
    mem: *mut (),
    /// System mode: blocks left before the run loop polls for interrupts.
    poll: u32,
    /// System mode: the fetch TLB, the block table and the fence epoch,
    /// for the inline dispatch of indirect and cross-page jumps.
    itlb: *const u8,
    systable: *const SysSlot,
    epoch: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    tag: u64,
    code: u64,
}

const EMPTY: Entry = Entry {
    tag: u64::MAX,
    code: 0,
};

/// Why [`Jit::run`] returned.
pub(crate) enum JitExit {
    /// The interpreter must run the block at `core.pc` (a slow path, a
    /// system instruction, or an untranslatable block).
    Slow,
    /// Attention requested or code changed: `core.pc` is a block start.
    Yield,
}

type EnterFn = unsafe extern "sysv64" fn(*mut Ctx, *const u8) -> u32;

/// A hart's translated code.
pub(crate) struct Jit {
    buf: *mut u8,
    len: usize,
    /// Offset where blocks start (after the fixed routines).
    blocks_start: usize,
    enter: EnterFn,
    epilogue: usize,
    dispatch: usize,
    dispatch_sys: usize,
    table: Box<[Entry]>,
    /// Every block translated since the last flush (the table above is a
    /// direct-mapped cache of it for generated code; a block evicted from
    /// the table is found here instead of being translated again).
    blocks: HashMap<u64, usize>,
    helpers: Vec<Insn>,
    /// Code generation of the address space the translations match.
    gen: u64,
    /// Bumped by every flush: a chain site recorded before a flush is gone.
    flushes: u64,
    decode_buf: Vec<Insn>,
    /// The address space the translations are for (its address and host
    /// base), its size and log2 size (baked into the bounds checks).
    space_id: (usize, usize),
    space_size: u64,
    space_bits: u8,
    /// System mode: (virtual pc, physical pc) -> code, direct-mapped in
    /// front of `sys_blocks` (no inline dispatch in system mode: every
    /// indirect jump translates its target through the fetch TLB in Rust).
    sys_table: Box<[SysSlot]>,
    sys_blocks: HashMap<(u64, u64), usize>,
    /// System mode: the physical pages blocks were translated from.
    sys_pages: HashMap<u64, SysPage>,
    /// System mode: bumped by every `fence.i` (see [`Jit::fence_i`]).
    fence_epoch: u64,
    /// Translating for a system-mode hart (set by the first `run_sys`).
    sys_mode: bool,
    /// `VIRTKIT_PERF_MAP=1`: each block is listed in `/tmp/perf-PID.map`
    /// (the perf tool's convention for JIT code) with its guest pc, so
    /// `perf report` names guest code instead of bare addresses.
    perf_map: Option<std::fs::File>,
}

/// A system-mode table slot: virtual pc, physical pc, code, and the fence
/// epoch at which its page was last found unchanged.
#[derive(Clone, Copy)]
#[repr(C)]
struct SysSlot {
    vpc: u64,
    ppc: u64,
    code: usize,
    epoch: u64,
}

const NO_SLOT: SysSlot = SysSlot {
    vpc: u64::MAX,
    ppc: 0,
    code: 0,
    epoch: 0,
};

/// A physical page holding translated code (system mode).
struct SysPage {
    /// The page's bytes when its first block was translated.
    copy: Box<[u8]>,
    /// Fence epoch at which the page was last compared with `copy`.
    epoch: u64,
    /// Blocks translated from it: (virtual pc, physical pc).
    blocks: Vec<(u64, u64)>,
}

// The inline dispatch of system mode scales the slot index by 32.
const _: () = assert!(std::mem::size_of::<SysSlot>() == 32);

// The TLB walk in generated code scales the index by 48.
const _: () = assert!(std::mem::size_of::<crate::mmu::Entry>() == 48);

// SAFETY: the buffer is owned by this value and only used by the thread
// that owns the hart; nothing in it refers to thread-local state.
unsafe impl Send for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: `buf` is the mapping of `CODE_SIZE` bytes made in `new`.
        unsafe { libc::munmap(self.buf.cast(), CODE_SIZE) };
    }
}

// x86-64 registers.
const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RBX: u8 = 3;
const RBP: u8 = 5;
const RSI: u8 = 6;
const RDI: u8 = 7;
const R12: u8 = 12;
const R13: u8 = 13;
const R14: u8 = 14;
const R15: u8 = 15;

// Condition codes.
const CC_B: u8 = 0x2;
const CC_AE: u8 = 0x3;
const CC_E: u8 = 0x4;
const CC_NE: u8 = 0x5;
const CC_A: u8 = 0x7;
const CC_L: u8 = 0xc;
const CC_GE: u8 = 0xd;

// ALU opcodes (`op r/m, reg` form) and their /digit in the 0x81 group.
const ADD: (u8, u8) = (0x01, 0);
const OR: (u8, u8) = (0x09, 1);
const AND: (u8, u8) = (0x21, 4);
const SUB: (u8, u8) = (0x29, 5);
const XOR: (u8, u8) = (0x31, 6);
const CMP: (u8, u8) = (0x39, 7);

// Shift /digits (0xC1 imm8, 0xD3 by cl).
const SHL: u8 = 4;
const SHR: u8 = 5;
const SAR: u8 = 7;

/// Byte emitter for code that will live at `base`.
struct Asm {
    b: Vec<u8>,
    base: usize,
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

impl Asm {
    fn addr(&self) -> usize {
        self.base + self.b.len()
    }
    fn u8(&mut self, x: u8) {
        self.b.push(x);
    }
    fn u32(&mut self, x: u32) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.b.extend_from_slice(&x.to_le_bytes());
    }
    fn rex(&mut self, w: bool, reg: u8, index: u8, base: u8) {
        let r =
            0x40 | (w as u8) << 3 | (reg >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (base >> 3 & 1);
        if r != 0x40 {
            self.u8(r);
        }
    }
    /// ModRM (+SIB) for `[base + disp]`.
    fn m_disp(&mut self, reg: u8, base: u8, disp: i32) {
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
    /// ModRM + SIB for `[base + index]` (disp8 0, so rbp/r13 bases work).
    fn m_bi(&mut self, reg: u8, base: u8, index: u8) {
        self.u8(0x40 | (reg & 7) << 3 | 4);
        self.u8((index & 7) << 3 | (base & 7));
        self.u8(0);
    }
    /// `op reg, [base + disp]` or `op [base + disp], reg`.
    fn op_m(&mut self, w: bool, op: &[u8], reg: u8, base: u8, disp: i32) {
        self.rex(w, reg, 0, base);
        self.b.extend_from_slice(op);
        self.m_disp(reg, base, disp);
    }
    /// `op reg, [base + index]` or the store direction.
    fn op_bi(&mut self, w: bool, op: &[u8], reg: u8, base: u8, index: u8) {
        self.rex(w, reg, index, base);
        self.b.extend_from_slice(op);
        self.m_bi(reg, base, index);
    }
    /// Register-register form: ModRM reg field `reg`, r/m field `rm`.
    fn op_rr(&mut self, w: bool, op: &[u8], reg: u8, rm: u8) {
        self.rex(w, reg, 0, rm);
        self.b.extend_from_slice(op);
        self.u8(0xc0 | (reg & 7) << 3 | (rm & 7));
    }
    fn load(&mut self, dst: u8, base: u8, disp: i32) {
        self.op_m(true, &[0x8b], dst, base, disp);
    }
    fn store(&mut self, base: u8, disp: i32, src: u8) {
        self.op_m(true, &[0x89], src, base, disp);
    }
    fn mov_rr(&mut self, dst: u8, src: u8) {
        self.op_rr(true, &[0x89], src, dst);
    }
    fn mov_imm(&mut self, dst: u8, v: u64) {
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
    fn alu_rr(&mut self, w: bool, op: (u8, u8), dst: u8, src: u8) {
        self.op_rr(w, &[op.0], src, dst);
    }
    /// `op dst, <guest register r>` straight from memory (x0 reads as 0).
    fn alu_x(&mut self, w: bool, op: (u8, u8), dst: u8, r: u8) {
        if r == 0 {
            self.alu_imm(w, op, dst, 0);
        } else {
            // The `op reg, r/m` form is the `op r/m, reg` opcode + 2.
            self.op_m(w, &[op.0 + 2], dst, RBX, xd(r));
        }
    }
    fn alu_imm(&mut self, w: bool, op: (u8, u8), dst: u8, imm: i32) {
        if (-128..=127).contains(&imm) {
            self.op_rr(w, &[0x83], op.1, dst);
            self.u8(imm as i8 as u8);
        } else {
            self.op_rr(w, &[0x81], op.1, dst);
            self.u32(imm as u32);
        }
    }
    fn shift_imm(&mut self, w: bool, digit: u8, dst: u8, n: u8) {
        self.op_rr(w, &[0xc1], digit, dst);
        self.u8(n);
    }
    fn shift_cl(&mut self, w: bool, digit: u8, dst: u8) {
        self.op_rr(w, &[0xd3], digit, dst);
    }
    /// `movsxd dst, src32`.
    fn sext32(&mut self, dst: u8, src: u8) {
        self.op_rr(true, &[0x63], dst, src);
    }
    /// `setcc al; movzx eax, al`.
    fn setcc_rax(&mut self, cc: u8) {
        self.b
            .extend_from_slice(&[0x0f, 0x90 + cc, 0xc0, 0x0f, 0xb6, 0xc0]);
    }
    /// `jcc rel32` with a placeholder; returns the offset of the rel32.
    fn jcc(&mut self, cc: u8) -> usize {
        self.b.extend_from_slice(&[0x0f, 0x80 + cc]);
        self.u32(0);
        self.b.len() - 4
    }
    fn jmp_abs(&mut self, target: usize) {
        self.u8(0xe9);
        let rel = target as i64 - (self.addr() as i64 + 4);
        self.u32(rel as i32 as u32);
    }
    /// Points the rel32 at offset `at` to the current position.
    fn bind(&mut self, at: usize) {
        let rel = (self.b.len() - (at + 4)) as u32;
        self.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
    }
    /// Guest register `r` into host `h` (x0 reads as 0).
    fn ld_x(&mut self, h: u8, r: u8) {
        if r == 0 {
            self.op_rr(false, &[0x31], h, h);
        } else {
            self.load(h, RBX, xd(r));
        }
    }
    /// Host `h` into guest register `r` (writes to x0 vanish).
    fn st_x(&mut self, r: u8, h: u8) {
        if r != 0 && r != ZERO_SINK {
            self.store(RBX, xd(r), h);
        }
    }
    fn add_icount(&mut self, n: u32) {
        if n != 0 {
            self.rex(true, 0, 0, R14);
            self.u8(0x81);
            self.m_disp(0, R14, ctx_off(offset_of!(Ctx, icount)));
            self.u32(n);
        }
    }
    /// Exit to Rust with `reason`, next pc `pc`.
    fn exit_pc(&mut self, epilogue: usize, pc: u64, reason: u32) {
        self.mov_imm(RAX, pc);
        self.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
        self.mov_imm(RAX, reason as u64);
        self.jmp_abs(epilogue);
    }
    /// A patchable chained exit to the static target `pc`: a `jmp` to the
    /// stub right behind it, which asks Rust to patch the jmp.
    fn chain_exit(&mut self, epilogue: usize, pc: u64) {
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

/// Runs one non-control-flow instruction through the interpreter.
/// Returns 0 when it completed, 1 when it trapped (nothing changed: the
/// JIT exits and the interpreter re-executes it to deliver the trap).
extern "sysv64" fn helper(ctx: *mut Ctx, idx: u32, pc: u64) -> u32 {
    // SAFETY: generated code passes the `Ctx` that `Jit::run` set up for
    // this call; `core` and `space` point at the hart's core and address
    // space, which `run` borrows mutably/shared for the whole run, and no
    // Rust reference to the core is live while generated code runs.
    let ctx = unsafe { &*ctx };
    // SAFETY: as above.
    let (core, space) = unsafe { (&mut *ctx.core, &*ctx.space) };
    // SAFETY: `idx` was allocated by `Jit::compile` in the helper table
    // that `ctx.helpers` points at; the table is not touched while
    // generated code runs.
    let insn = unsafe { *ctx.helpers.add(idx as usize) };
    let mut block = [insn, insn];
    block[0].off = 0;
    block[1].kind = Kind::BlockEnd;
    block[1].off = insn.size() as u16;
    let mut mem = UserMem::new(space);
    match crate::exec::exec_block(core, &mut mem, &block, pc) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

impl Jit {
    /// Maps the code buffer and writes the fixed routines. `None` when the
    /// host refuses executable memory (the interpreter then runs alone).
    pub(crate) fn new() -> Option<Jit> {
        // SAFETY: a fresh anonymous private mapping, owned by the Jit.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CODE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let buf = p.cast::<u8>();
        let mut a = Asm {
            b: Vec::new(),
            base: buf as usize,
        };
        // enter(ctx: rdi, code: rsi)
        let enter = a.addr();
        a.b.extend_from_slice(&[0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57]);
        a.alu_imm(true, SUB, 4, 8); // sub rsp, 8: 16-byte alignment for calls
        a.mov_rr(R14, RDI);
        a.load(RBX, R14, ctx_off(offset_of!(Ctx, xregs)));
        a.load(R12, R14, ctx_off(offset_of!(Ctx, membase)));
        a.load(R13, R14, ctx_off(offset_of!(Ctx, perms)));
        a.load(R15, R14, ctx_off(offset_of!(Ctx, attn)));
        a.load(RBP, R14, ctx_off(offset_of!(Ctx, codegen)));
        a.b.extend_from_slice(&[0xff, 0xe6]); // jmp rsi
        let epilogue = a.addr();
        a.alu_imm(true, ADD, 4, 8);
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
        // up (virtual pc, physical pc) in the system table, whose slot must
        // also be verified in the current fence epoch (see `fence_i`).
        let dispatch_sys = a.addr();
        a.mov_rr(RCX, RAX);
        a.shift_imm(true, SHR, RCX, 12);
        a.op_rr(false, &[0x89], RCX, RDX); // mov edx, ecx
        a.alu_imm(false, AND, RDX, (TLB_SIZE - 1) as i32);
        a.b.extend_from_slice(&[0x8d, 0x14, 0x52]); // lea edx, [rdx + rdx*2]
        a.shift_imm(false, SHL, RDX, 4);
        a.op_m(true, &[0x03], RDX, R14, ctx_off(offset_of!(Ctx, itlb)));
        let tag_x = offset_of!(crate::mmu::Entry, tag_x) as i32;
        a.op_m(true, &[0x3b], RCX, RDX, tag_x); // cmp rcx, [rdx + tag_x]
        let miss1 = a.jcc(CC_NE);
        a.mov_rr(RSI, RAX);
        a.alu_imm(false, AND, RSI, 0xfff);
        let pa_page = offset_of!(crate::mmu::Entry, pa_page) as i32;
        // or rsi, [rdx + pa_page]: the physical pc.
        a.op_m(true, &[0x0b], RSI, RDX, pa_page);
        // The slot of (vpc, pa), as `Jit::sys_slot`: 32-byte slots, two
        // per set.
        a.mov_rr(RCX, RSI);
        a.shift_imm(true, SHL, RCX, 7);
        a.alu_rr(true, XOR, RCX, RAX);
        a.mov_imm(RDX, HASH_MUL);
        a.op_rr(true, &[0x0f, 0xaf], RCX, RDX); // imul rcx, rdx
        a.shift_imm(true, SHR, RCX, 64 - SET_BITS as u8);
        a.shift_imm(true, SHL, RCX, 6);
        a.op_m(true, &[0x03], RCX, R14, ctx_off(offset_of!(Ctx, systable)));
        a.op_m(true, &[0x3b], RAX, RCX, offset_of!(SysSlot, vpc) as i32);
        let miss2 = a.jcc(CC_NE);
        a.op_m(true, &[0x3b], RSI, RCX, offset_of!(SysSlot, ppc) as i32);
        let miss3 = a.jcc(CC_NE);
        a.load(RDX, R14, ctx_off(offset_of!(Ctx, epoch)));
        a.op_m(true, &[0x3b], RDX, RCX, offset_of!(SysSlot, epoch) as i32);
        let miss4 = a.jcc(CC_NE);
        a.op_m(false, &[0xff], 4, RCX, offset_of!(SysSlot, code) as i32); // jmp [rcx + code]
        for m in [miss1, miss2, miss3, miss4] {
            a.bind(m);
        }
        a.mov_imm(RAX, EXIT_DISPATCH as u64);
        a.jmp_abs(epilogue);
        let n = a.b.len();
        // SAFETY: `n` bytes fit easily in the fresh CODE_SIZE mapping.
        unsafe { std::ptr::copy_nonoverlapping(a.b.as_ptr(), buf, n) };
        // SAFETY: `enter` is the address of the routine just written, which
        // follows the sysv64 convention of `EnterFn`.
        let enter: EnterFn = unsafe { std::mem::transmute::<usize, EnterFn>(enter) };
        let blocks_start = (n + 63) & !63;
        Some(Jit {
            buf,
            len: blocks_start,
            blocks_start,
            enter,
            epilogue,
            dispatch,
            dispatch_sys,
            table: vec![EMPTY; TABLE_SIZE].into_boxed_slice(),
            blocks: HashMap::new(),
            helpers: Vec::new(),
            gen: 0,
            flushes: 0,
            decode_buf: Vec::with_capacity(crate::exec::MAX_BLOCK + 1),
            space_id: (0, 0),
            space_size: 0,
            space_bits: 0,
            sys_table: vec![NO_SLOT; TABLE_SIZE].into_boxed_slice(),
            sys_blocks: HashMap::new(),
            sys_pages: HashMap::new(),
            fence_epoch: 0,
            sys_mode: false,
            perf_map: std::env::var_os("VIRTKIT_PERF_MAP")
                .is_some_and(|v| v != "0")
                .then(|| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(format!("/tmp/perf-{}.map", std::process::id()))
                        .ok()
                })
                .flatten(),
        })
    }

    /// `fence.i` on this hart (or requested by another). User mode drops
    /// every translation. System mode is lazier: Linux executes `fence.i`
    /// tens of thousands of times per boot, and stores by any hart into
    /// pages holding code already drop translations (code marks, see
    /// [`crate::CodeMap`]); what a fence must still catch are writes no
    /// hart made (device DMA into RAM). So each page is compared with the
    /// copy taken when it was translated, once per fence, when next
    /// entered from the run loop; a changed page loses its blocks. Chained
    /// jumps never leave a page in system mode, so code reached through
    /// them belongs to a page already checked.
    pub(crate) fn fence_i(&mut self) {
        if self.sys_mode {
            self.fence_epoch += 1;
        } else {
            self.flush();
        }
    }

    /// Drops the translations of a changed physical page.
    fn drop_page(&mut self, ppage: u64) {
        if let Some(p) = self.sys_pages.remove(&ppage) {
            for (v, pp) in p.blocks {
                self.sys_blocks.remove(&(v, pp));
                let s = &mut self.sys_table[Self::sys_slot(v, pp)];
                if s.vpc == v && s.ppc == pp {
                    *s = NO_SLOT;
                }
            }
        }
    }

    #[inline(always)]
    fn sys_slot(pc: u64, pa: u64) -> usize {
        Self::slot(pc ^ (pa << 7))
    }

    pub(crate) fn flush(&mut self) {
        self.len = self.blocks_start;
        self.blocks.clear();
        self.sys_blocks.clear();
        self.sys_pages.clear();
        if self.sys_mode {
            self.sys_table.fill(NO_SLOT);
        } else {
            self.table.fill(EMPTY);
        }
        self.helpers.clear();
        self.flushes += 1;
    }

    /// First entry of the set of `pc` (the system table, direct mapped,
    /// uses it as a slot number).
    #[inline(always)]
    fn slot(pc: u64) -> usize {
        (pc.wrapping_mul(HASH_MUL) >> (64 - SET_BITS)) as usize * 2
    }

    /// Puts `pc` in way 0 of its set, moving the old way 0 to way 1.
    fn table_insert(&mut self, pc: u64, code: usize) {
        let s = Self::slot(pc);
        self.table[s + 1] = self.table[s];
        self.table[s] = Entry {
            tag: pc,
            code: code as u64,
        };
    }

    /// Code for the block at `pc`, translating it if needed. `None`: the
    /// interpreter must run it (fetch fault, code crossing pages).
    fn code_for(&mut self, space: &UserSpace, pc: u64) -> Option<usize> {
        let s = Self::slot(pc);
        for e in &self.table[s..s + 2] {
            if e.tag == pc {
                return Some(e.code as usize);
            }
        }
        if let Some(&code) = self.blocks.get(&pc) {
            self.table_insert(pc, code);
            return Some(code);
        }
        self.compile(space, pc)
    }

    #[cold]
    #[inline(never)]
    fn compile(&mut self, space: &UserSpace, pc: u64) -> Option<usize> {
        let mut insns = std::mem::take(&mut self.decode_buf);
        let r = crate::exec::translate_user(space, pc, &mut insns);
        let out = r.ok().map(|()| {
            if self.len + HEADROOM > CODE_SIZE || self.helpers.len() + insns.len() > MAX_HELPERS {
                self.flush();
            }
            let at = self.buf as usize + self.len;
            let code = self.emit(at, &insns, pc, None);
            // SAFETY: `emit` keeps a block well under HEADROOM, which the
            // check above left free at `len`.
            unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len()) };
            self.len = (self.len + code.len() + 15) & !15;
            self.table_insert(pc, at);
            self.blocks.insert(pc, at);
            at
        });
        self.decode_buf = insns;
        out
    }

    /// Generates the code of one block (to live at `at`). `sys`: system
    /// mode, with the address of its helper.
    fn emit(&mut self, at: usize, insns: &[Insn], pc: u64, sys: Option<usize>) -> Vec<u8> {
        let code = self.emit_code(at, insns, pc, sys);
        if let Some(f) = self.perf_map.as_mut() {
            use std::io::Write;
            // Best effort: a profile without names is still a profile.
            let _ = writeln!(f, "{at:x} {:x} guest_{pc:x}", code.len());
        }
        code
    }

    fn emit_code(&mut self, at: usize, insns: &[Insn], pc: u64, sys: Option<usize>) -> Vec<u8> {
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

    /// Runs translated code from `core.pc` until something needs the
    /// interpreter or the run loop.
    pub(crate) fn run(&mut self, core: &mut Core, space: &UserSpace) -> JitExit {
        let id = (
            space as *const UserSpace as usize,
            space.host_base() as usize,
        );
        if id != self.space_id {
            self.flush();
            self.space_id = id;
            self.space_size = space.size();
            self.space_bits = space.size().trailing_zeros() as u8;
        }
        let g = space.code_gen();
        if g != self.gen {
            self.flush();
            self.gen = g;
        }
        let Some(mut code) = self.code_for(space, core.pc) else {
            return JitExit::Slow;
        };
        let attn = core.control.attention_ptr();
        let core_ptr: *mut Core = core;
        loop {
            let mut ctx = Ctx {
                pc: 0,
                site: 0,
                icount: 0,
                table: self.table.as_ptr(),
                core: core_ptr,
                space,
                helpers: self.helpers.as_ptr(),
                // SAFETY: index 16 is inside the 64-entry register array.
                xregs: unsafe { (*core_ptr).x.as_mut_ptr().add(16) },
                membase: space.host_base().cast_const(),
                perms: space.perm_table(),
                attn,
                codegen: space.code_gen_ptr(),
                mem: std::ptr::null_mut(),
                poll: u32::MAX,
                itlb: std::ptr::null(),
                systable: std::ptr::null(),
                epoch: 0,
            };
            // SAFETY: `code` is the entry of a block translated into this
            // hart's buffer for the current code generation; the context
            // points at live data that nothing else touches during the
            // call (the core is this thread's, the space outlives the run).
            let r = unsafe { (self.enter)(&mut ctx, code as *const u8) };
            // SAFETY: the generated code has returned; no other access to
            // the core is live.
            let core = unsafe { &mut *core_ptr };
            match self.after_exit(core, &ctx, r, |j, _| j.code_for(space, ctx.pc)) {
                Ok(next) => code = next,
                Err(e) => return e,
            }
        }
    }

    /// After generated code returned `r`: retires its instructions and
    /// sets the pc; on a chain or dispatch exit finds (or translates) the
    /// next block with `next_code` and patches the chain site. Returns the
    /// code to run next, or how the run ends.
    fn after_exit(
        &mut self,
        core: &mut Core,
        ctx: &Ctx,
        r: u32,
        next_code: impl FnOnce(&mut Self, &mut Core) -> Option<usize>,
    ) -> Result<usize, JitExit> {
        core.instret = core.instret.wrapping_add(ctx.icount);
        core.pc = ctx.pc;
        match r {
            EXIT_CHAIN | EXIT_DISPATCH => {
                let flushes = self.flushes;
                let next = next_code(self, core).ok_or(JitExit::Slow)?;
                if r == EXIT_CHAIN && self.flushes == flushes {
                    let site = ctx.site as usize;
                    let rel = (next as i64 - (site as i64 + 5)) as i32;
                    // SAFETY: `site` is a `jmp rel32` inside this buffer's
                    // blocks (no flush since it was recorded; in system mode
                    // chain exits only target the block's own page), and no
                    // generated code is running.
                    unsafe {
                        (site as *mut u8)
                            .add(1)
                            .cast::<[u8; 4]>()
                            .write_unaligned(rel.to_le_bytes())
                    };
                }
                Ok(next)
            }
            EXIT_SLOW => Err(JitExit::Slow),
            _ => Err(JitExit::Yield),
        }
    }
}

impl Jit {
    /// System mode: code for the block at `pc` as the hart fetches it now
    /// (through the fetch TLB), translating it if needed. `None`: the
    /// interpreter must run it (fetch fault, MMIO, an instruction crossing
    /// pages).
    fn code_for_sys<B: Bus>(
        &mut self,
        core: &Core,
        mem: &mut SysMem<'_, B>,
        pc: u64,
    ) -> Option<usize> {
        let (pa, host) = mem.translate_fetch(core, pc).ok()?;
        let host = host?;
        let slot = Self::sys_slot(pc, pa);
        let s = self.sys_table[slot];
        if s.vpc == pc && s.ppc == pa && s.epoch == self.fence_epoch {
            return Some(s.code);
        }
        let ppage = pa & !(crate::PAGE_SIZE - 1);
        let page = pc & !(crate::PAGE_SIZE - 1);
        // SAFETY: `host` points at the RAM byte of `pc`; the whole guest
        // page around it is RAM, contiguous in the host.
        let page_bytes = unsafe {
            std::slice::from_raw_parts(host.sub((pc - page) as usize), crate::PAGE_SIZE as usize)
        };
        let epoch = self.fence_epoch;
        match self.sys_pages.get_mut(&ppage) {
            Some(p) if p.epoch != epoch => {
                if *p.copy == *page_bytes {
                    p.epoch = epoch;
                } else {
                    self.drop_page(ppage);
                }
            }
            _ => {}
        }
        if let Some(&code) = self.sys_blocks.get(&(pc, pa)) {
            self.sys_table[slot] = SysSlot {
                vpc: pc,
                ppc: pa,
                code,
                epoch,
            };
            return Some(code);
        }
        let mut insns = std::mem::take(&mut self.decode_buf);
        if let Some(s) = mem.code_map().slot(pa) {
            s.store(1, std::sync::atomic::Ordering::SeqCst);
        }
        let crosses = crate::exec::decode_block(pc, &mut insns, |a| {
            // SAFETY: `host` points at the RAM byte of `pc`; `a` stays in
            // the same guest page (decode_block never leaves it), so the
            // read stays in the same host page.
            unsafe {
                host.sub((pc - page) as usize)
                    .add((a - page) as usize)
                    .cast::<u16>()
                    .read_unaligned()
            }
        });
        let out = (!crosses).then(|| {
            if self.len + HEADROOM > CODE_SIZE || self.helpers.len() + insns.len() > MAX_HELPERS {
                self.flush();
            }
            let at = self.buf as usize + self.len;
            let f: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper_sys::<B>;
            let code = self.emit(at, &insns, pc, Some(f as usize));
            // SAFETY: `emit` keeps a block well under HEADROOM, which the
            // check above left free at `len`.
            unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len()) };
            self.len = (self.len + code.len() + 15) & !15;
            self.sys_table[slot] = SysSlot {
                vpc: pc,
                ppc: pa,
                code: at,
                epoch,
            };
            self.sys_blocks.insert((pc, pa), at);
            self.sys_pages
                .entry(ppage)
                .or_insert_with(|| SysPage {
                    copy: page_bytes.into(),
                    epoch,
                    blocks: Vec::new(),
                })
                .blocks
                .push((pc, pa));
            at
        });
        self.decode_buf = insns;
        out
    }

    /// System mode: runs translated code from `core.pc` until something
    /// needs the interpreter (`Slow`: run one block there) or the run loop
    /// (`Yield`: interrupts, attention, code changes).
    pub(crate) fn run_sys<B: Bus>(&mut self, core: &mut Core, mem: &mut SysMem<'_, B>) -> JitExit {
        if !self.sys_mode {
            self.sys_mode = true;
            self.flush();
        }
        let g = mem.code_map().generation();
        if g != self.gen {
            self.flush();
            self.gen = g;
        }
        let Some(mut code) = self.code_for_sys(core, mem, core.pc) else {
            return JitExit::Slow;
        };
        let attn = core.control.attention_ptr();
        let codegen = mem.code_map().generation_ptr();
        let tlb = mem.data_tlb().cast::<u8>();
        let itlb = mem.fetch_tlb().cast::<u8>();
        let core_ptr: *mut Core = core;
        let mem_ptr: *mut SysMem<'_, B> = mem;
        let mut poll = crate::exec::POLL_BLOCKS;
        loop {
            let mut ctx = Ctx {
                pc: 0,
                site: 0,
                icount: 0,
                table: self.table.as_ptr(),
                core: core_ptr,
                space: std::ptr::null(),
                helpers: self.helpers.as_ptr(),
                // SAFETY: index 16 is inside the 64-entry register array.
                xregs: unsafe { (*core_ptr).x.as_mut_ptr().add(16) },
                membase: tlb,
                perms: std::ptr::null(),
                attn,
                codegen,
                mem: mem_ptr.cast(),
                poll,
                itlb,
                systable: self.sys_table.as_ptr(),
                epoch: self.fence_epoch,
            };
            // SAFETY: `code` is the entry of a block translated into this
            // hart's buffer for the current code generation, and the
            // context points at live data nothing else touches during the
            // call (core and memory path are this hart's).
            let r = unsafe { (self.enter)(&mut ctx, code as *const u8) };
            // SAFETY: the generated code has returned; no other access to
            // the core or the memory path is live.
            let (core, mem) = unsafe { (&mut *core_ptr, &mut *mem_ptr) };
            poll = ctx.poll;
            let pc = ctx.pc;
            match self.after_exit(core, &ctx, r, |j, core| j.code_for_sys(core, mem, pc)) {
                Ok(next) => code = next,
                Err(e) => return e,
            }
        }
    }
}

/// System-mode [`helper`]: one instruction through the interpreter with
/// the hart's memory path.
extern "sysv64" fn helper_sys<B: Bus>(ctx: *mut Ctx, idx: u32, pc: u64) -> u32 {
    // SAFETY: generated code passes the `Ctx` that `run_sys` set up; its
    // `core` and `mem` point at the hart's core and `SysMem<B>` (this `B`:
    // `run_sys::<B>` chose this instantiation), borrowed for the run.
    let ctx = unsafe { &*ctx };
    // SAFETY: as above.
    let (core, mem) = unsafe { (&mut *ctx.core, &mut *ctx.mem.cast::<SysMem<'_, B>>()) };
    // SAFETY: `idx` indexes the helper table `ctx.helpers` points at.
    let insn = unsafe { *ctx.helpers.add(idx as usize) };
    let mut block = [insn, insn];
    block[0].off = 0;
    block[1].kind = Kind::BlockEnd;
    block[1].off = insn.size() as u16;
    match crate::exec::exec_block(core, mem, &block, pc) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

fn space_pages(size: u64) -> u64 {
    size / crate::PAGE_SIZE
}
