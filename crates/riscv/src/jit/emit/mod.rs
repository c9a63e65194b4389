//! The block translator: one decoded block ([`Insn`]s) to x86-64 code.
//!
//! Split by ISA extension as the interpreter (`crate::exec`) is: `mem`
//! (loads and stores, inline), `rvi` (the rest of the base integer set),
//! `rvm` (multiplications, divisions). Everything else that does not end a
//! block (FP arithmetic, atomics, bit manipulation) calls the interpreter
//! on that one instruction through [`helper`]; system instructions, which
//! end blocks, leave for the interpreter (but for system mode's accesses
//! to sstatus, run in place by [`super::csr_sys`]).

use std::mem::offset_of;

use super::x86::*;
use super::{
    helper, Ctx, Jit, EXIT_ATTN, EXIT_CHAIN, EXIT_CHAIN_FWD, EXIT_CHAIN_SYS, EXIT_SLOW, GROUP_SLOTS,
};
use crate::cpu::Core;
use crate::decode::{Insn, Kind, ZERO_SINK};

mod alu;
mod amo;
#[cfg(test)]
mod amo_sys_tests;
#[cfg(test)]
mod amo_tests;
mod fp;
#[cfg(test)]
mod fp_tests;
mod fuse;
mod indexed;
mod mem;
mod rvi;
mod rvm;
mod select;
#[cfg(test)]
mod tests;

/// The block being translated, as the per-extension emitters see it.
struct Frame {
    /// Guest pc of the block's first instruction.
    pc: u64,
    /// System mode, with the address of its helper.
    sys: Option<usize>,
    epilogue: usize,
    dispatch: usize,
    dispatch_sys: usize,
    /// User mode: how each instruction's memory access is checked.
    plan: Vec<mem::Plan>,
    /// System mode: likewise (see [`mem::sys_groups`]).
    sysacc: Vec<mem::SysAcc>,
    /// System mode: `dispatch::straddle` (loads only, with a store).
    straddle: [usize; 2],
    /// System mode: group leaders' failed TLB checks: (rel32 offset,
    /// index of the leader, dirty registers there, code offset where the
    /// leader goes on with the addend in rcx, the group has a store),
    /// each to an out-of-line call of `straddle`.
    leads: Vec<(usize, usize, CacheMap, usize, bool)>,
    /// Instructions in the block.
    len: usize,
    /// User mode, a block that jumps back to its start.
    looping: Option<Loop>,
    /// Taken branches of an extended block: (rel32 offset, index of the
    /// branch, target), each to an out-of-line chained exit.
    /// (And the cache's dirty registers there, which the exit writes
    /// back.)
    taken: Vec<(usize, usize, u64, CacheMap)>,
    /// Calls: (offset of the `lea`'s disp32 that points at
    /// the return landing, return address), each landing an out-of-line
    /// chained exit to the return address (see [`super::RAS_DEPTH`]).
    landings: Vec<(usize, u64)>,
    /// Jumps to the out-of-line slow exits: (rel32 offset, index of the
    /// instruction to resume at, dirty registers to write back).
    slow: Vec<(usize, usize, CacheMap)>,
    /// User mode: byte offset (from `pc`) of each instruction, to find
    /// branch targets inside the block.
    offs: Vec<u16>,
    /// Instructions that some branch of the block jumps to from inside it
    /// (see [`Frame::internal`]).
    merge: Vec<bool>,
    /// Code offset of each merge point once emitted, the guest
    /// registers its register cache holds there, and the slots that may
    /// hold theirs unextended there (bit per slot, see
    /// [`RegCache::lazy`]).
    /// (And, at a loop head, its dirty slots, bit per slot.)
    labels: Vec<Option<(usize, CacheMap, u8, u8)>>,
    /// Registers each loop head claims known sign-extended (see
    /// [`RegCache::sx`]), and the back edges that could not keep a
    /// claim: (head, registers) (see [`Jit::emit_code`]).
    claims: Vec<u32>,
    broken: Vec<(usize, u32)>,
    /// Forward jumps to merge points not emitted yet: (rel32 offset,
    /// index of the target instruction, the cache at the jump and its
    /// dirty registers, see [`RegCache::dirty_map`], the registers
    /// known sign-extended there, see [`RegCache::sx`], and the count
    /// adjustment the jump still owes, see [`Frame::branch_fwd`]).
    forward: Vec<(usize, usize, CacheMap, CacheMap, u32, u32)>,
    /// Out-of-line count adjustments of forward jumps that need nothing
    /// else on their way to the merge point: (rel32 offset of the jump,
    /// instructions to add to the count, code offset to go on at).
    thunks: Vec<(usize, u32, usize)>,
    /// Backward jumps' attention exits: (rel32 offset, index of the
    /// target instruction, dirty registers to write back).
    attn_back: Vec<(usize, usize, CacheMap)>,
    /// User mode: inline loads and stores that may fault on the host (see
    /// `jit::fault`): (code offset of the access, instruction index, dirty
    /// registers there), resumed at the slow exit of that index and set.
    faults: Vec<(usize, usize, CacheMap)>,
    /// `jalr`s whose target is known when translating: (index, target),
    /// see [`static_jalrs`].
    static_jalr: Vec<(usize, u64)>,
    /// Inline FP (see `fp`).
    fp: fp::FpState,
}

impl Frame {
    /// A static exit: chained (patched jmp) unless system mode leaves the
    /// block's page (a different page may translate differently). A
    /// jump to a block after this block's start goes past the target's
    /// entry checks (attention, code changes, system mode's countdown to
    /// the interrupt poll): every cycle of blocks has a jump that is not
    /// forward (or, in system mode, leaves the page), which checks, so a
    /// stop request or a code change still ends any loop.
    fn static_exit(&self, a: &mut Asm, target: u64) {
        self.static_exit_from(a, target, self.pc);
    }
    /// [`Frame::static_exit`] as if leaving a block that starts at
    /// `from` (returns' landings: see `emit_code`).
    fn static_exit_from(&self, a: &mut Asm, target: u64, from: u64) {
        if self.sys.is_some() && target >> 12 != self.pc >> 12 {
            a.sys_chain_exit(self.epilogue, self.dispatch_sys, target);
        } else {
            let fwd = target > from;
            a.chain_exit(self.epilogue, target, fwd);
        }
    }
    /// A call: pushes `ret` (the return address) and its
    /// landing (see [`super::RAS_DEPTH`]) on the return-address stack,
    /// first emptying it when full. Clobbers rax only.
    fn ras_push(&mut self, a: &mut Asm, ret: u64) {
        a.op_m(true, &[0x3b], RSP, R14, ctx_off(offset_of!(Ctx, ras_limit))); // cmp rsp, [limit]
        let room = a.jcc(CC_A);
        a.load(RSP, R14, ctx_off(offset_of!(Ctx, ras_base)));
        a.bind(room);
        // lea rax, [rip + landing]; push rax
        a.b.extend_from_slice(&[0x48, 0x8d, 0x05]);
        a.u32(0);
        self.landings.push((a.b.len() - 4, ret));
        a.u8(0x50);
        if ret as i64 == ret as i32 as i64 {
            a.u8(0x68); // push imm32 (sign-extended)
            a.u32(ret as u32);
        } else {
            a.mov_imm(RAX, ret);
            a.u8(0x50); // push rax
        }
    }
    /// A return to rax (stored in `Ctx::pc`, everything
    /// written back and counted): pops the return-address stack and
    /// jumps to the landing when its address is rax's; otherwise goes
    /// on (to the dispatch the caller emits next). Clobbers rcx and rdx.
    /// (Measured: a host `call` at the push and a `ret` here, for the
    /// host's own return predictor, made the shell loop slower; tried
    /// again with a `call rel32` as the chain site and the landing right
    /// behind it, it gained nothing on gzip, the shell loop or the boot
    /// (within 2%, noise) on an AMD Zen 4 host, whose indirect predictor
    /// already predicts these `jmp rdx` from the branch history; only a
    /// callee returning to many call sites chosen at random got faster,
    /// 8-14%. That version is in the history, in the commit that added
    /// `jit_internal_and_indirect_calls_match_interpreter`.)
    fn ras_pop(&mut self, a: &mut Asm) {
        a.op_m(true, &[0x3b], RSP, R14, ctx_off(offset_of!(Ctx, ras_base))); // cmp rsp, [base]
        let empty = a.jcc(CC_AE);
        a.b.extend_from_slice(&[0x59, 0x5a]); // pop rcx; pop rdx
        a.alu_rr(true, CMP, RAX, RCX);
        let miss = a.jcc(CC_NE);
        a.b.extend_from_slice(&[0xff, 0xe2]); // jmp rdx
        a.bind(empty);
        a.bind(miss);
    }
    /// The target of the `jalr` at index `k` when it is known (see
    /// [`static_jalrs`]).
    fn static_target(&self, k: usize) -> Option<u64> {
        self.static_jalr
            .iter()
            .find(|&&(j, _)| j == k)
            .map(|&(_, t)| t)
    }
    /// Whether jumping to `target` is a back edge of this block's loop.
    fn is_back_edge(&self, target: u64) -> bool {
        self.looping.is_some() && target == self.pc
    }
    /// User mode: the index of the instruction at `target` when it lies
    /// in this (extended) block after its first instruction, so that a
    /// branch there can stay inside the block instead of leaving through
    /// a chained exit and entering another block (with its entry checks
    /// and an empty register cache). Jumps to the first instruction are
    /// the loop's back edges instead (see [`Loop`]). System mode jumps
    /// inside a block only on those back edges: its blocks count down to
    /// the next interrupt poll at every entry, and only the block's head
    /// (where back edges land) does so.
    fn internal(&self, target: u64) -> Option<usize> {
        if self.sys.is_some() {
            return None;
        }
        let off = target.wrapping_sub(self.pc);
        let j = self.offs.binary_search(&u16::try_from(off).ok()?).ok()?;
        (j > 0).then_some(j)
    }
    /// Jumps from the branch at index `k` to the instruction at index `j`
    /// of the same block (see [`Frame::internal`]). Exits retire their
    /// index on the fall-through path, so the jump adds the difference to
    /// the count of retired instructions (negative forward, where it
    /// skips instructions). A backward jump is a loop: it checks for
    /// attention (stop requests, signals, code changes) as block entries
    /// do. The cache at a merge point holds only what every forward jump
    /// to it agrees on (see `emit_code`); forward jumps keep their dirty
    /// registers (the merge point writes back, on the paths that need
    /// it, the dirty ones it does not keep); a backward jump goes to a
    /// loop head, whose cached registers all count as dirty: it writes
    /// back the dirty slots the head does not keep, then reloads the
    /// slots that differ from the head's.
    fn jump_internal(&mut self, a: &mut Asm, k: usize, j: usize) {
        a.add_icount((k as i64 + 1 - j as i64) as i32 as u32);
        if j <= k {
            let (label, want, ok, dirty) = self.labels[j].expect("a backward target is emitted");
            self.vouch(a, j);
            a.norm_for(ok);
            a.restore(&want, dirty);
            a.jmp_abs(a.base + label);
        } else {
            a.u8(0xe9);
            a.u32(0);
            self.forward.push((
                a.b.len() - 4,
                j,
                a.cache.guest,
                a.cache.dirty_map(),
                a.cache.sx,
                0,
            ));
        }
    }
    /// A backward jump to the loop head at index `j`: notes the head's
    /// sign-extension claims this path does not keep (see
    /// [`Jit::emit_code`]).
    fn vouch(&mut self, a: &Asm, j: usize) {
        let bad = self.claims[j] & !a.cache.sx;
        if bad != 0 {
            self.broken.push((j, bad));
        }
    }
    /// The attention check at the head of a loop inside the block, the
    /// instruction at index `j` (see [`Frame::jump_internal`]): leaves
    /// there with the head's dirty registers written back.
    fn head_check(&mut self, a: &mut Asm, j: usize) {
        a.op_m(false, &[0x83], 7, R15, 0);
        a.u8(0);
        self.attn_back.push((a.jcc(CC_NE), j, a.cache.dirty_map()));
    }
    /// A conditional backward jump (the flags hold the comparison, `cc`
    /// the condition) to the instruction at `target`: a back edge of the
    /// block's loop or a jump to an inner loop's head `j` (both check for
    /// attention where they land), from the branch at index `k`. The
    /// retired count is raised by the jump's difference before the
    /// comparison (`lea` keeps the flags) and lowered again on the
    /// fall-through, so that when the cache already matches the head's,
    /// the taken path is one `jcc` straight to the head.
    /// The extensions a backward jump to `target` needs (see
    /// [`Frame::branch_back`]), for the caller to emit before the
    /// comparison: between it and the `jcc` they would keep the host
    /// from fusing the two (measured: a loop of the C kernel 10% slower).
    pub(super) fn norm_for_back(&self, a: &mut Asm, target: u64) {
        let ok = match self.internal(target) {
            Some(j) if !self.is_back_edge(target) => self.labels[j].map_or(0, |l| l.2),
            _ => 0,
        };
        a.norm_for(ok);
    }
    pub(super) fn branch_back(&mut self, a: &mut Asm, target: u64, cc: u8) {
        let (label, want, ok, dirty) = match self.internal(target) {
            Some(j) if !self.is_back_edge(target) => {
                self.vouch(a, j);
                self.labels[j].expect("a backward target is emitted")
            }
            _ => {
                let l = self.looping.as_ref().expect("a back edge");
                (l.head, l.map, 0, l.dirty)
            }
        };
        // Extensions the head needs, before the jcc (both paths keep
        // them; `movsxd` leaves the flags alone). Branches have done
        // them before their comparison (see `Frame::norm_for_back`).
        a.norm_for(ok);
        if a.restore_is_noop(&want, dirty) {
            let at = a.jcc(cc);
            let rel = (label as i64 - (at as i64 + 4)) as i32;
            a.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        } else {
            let skip = a.jcc(cc ^ 1);
            a.restore(&want, dirty);
            a.jmp_abs(a.base + label);
            a.bind(skip);
        }
    }
    /// A conditional forward jump (flags and `cc` as in
    /// [`Frame::branch_back`]) to the instruction at index `j` of the
    /// block: one `jcc`, which owes the count adjustment `adj` (see
    /// [`Frame::jump_internal`]). The taken path adds it on its way to
    /// the merge point (in the stub that writes back what the merge point
    /// drops, or else in an out-of-line thunk), so the fall-through path
    /// pays nothing for the count.
    pub(super) fn branch_fwd(&mut self, a: &mut Asm, j: usize, cc: u8, adj: u32) {
        let at = a.jcc(cc);
        self.forward
            .push((at, j, a.cache.guest, a.cache.dirty_map(), a.cache.sx, adj));
    }
    /// For a jump from index `k` to `target`: the instructions it counts
    /// as retired when it goes backward inside the block (see
    /// [`Frame::branch_back`]), `None` otherwise.
    pub(super) fn back_jump(&self, k: usize, target: u64) -> Option<u32> {
        if self.is_back_edge(target) {
            return Some(k as u32 + 1);
        }
        match self.internal(target) {
            Some(j) if j <= k => Some((k + 1 - j) as u32),
            _ => None,
        }
    }
    /// Leaves for `target` after retiring `retired` instructions: a back
    /// edge of the block's loop or a static exit.
    fn exit_to(&self, a: &mut Asm, target: u64, retired: u32) {
        match &self.looping {
            Some(l) if target == self.pc => l.back_edge(a, retired),
            _ => {
                a.flush_dirty(a.cache.dirty_map());
                a.add_icount(retired);
                self.static_exit(a, target);
            }
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

/// System mode: the `jalr`s of a block right after an `auipc` of their
/// base register (no jump lands between them): `call`, `tail` and `jump`
/// to a symbol as assemblers write them where the linker did not relax
/// them to `jal` (Linux's kernel and modules: ~12M calls in a 1-hart
/// boot, each of which went through the inline dispatch's table lookup).
/// Their target is known: they leave through a chained exit as `jal`
/// does.
fn static_jalrs(insns: &[Insn], pc: u64, merge: &[bool]) -> Vec<(usize, u64)> {
    let mut v = Vec::new();
    for k in 1..insns.len() {
        let (u, j) = (&insns[k - 1], &insns[k]);
        if j.kind == Kind::Jalr && u.kind == Kind::Auipc && u.rd == j.rs1 && j.rs1 != 0 && !merge[k]
        {
            let base = pc
                .wrapping_add(u.off as u64)
                .wrapping_add(u.imm as i64 as u64);
            let target = base.wrapping_add(j.imm as i64 as u64) & !1;
            // Not back to the block's start: that would be a back edge of
            // its loop that the loop's analysis (which counts branches
            // and `jal`s) never saw.
            if target != pc {
                v.push((k, target));
            }
        }
    }
    v
}

/// The guest register in each of `CACHE_REGS` (0: none).
type CacheMap = [u8; CACHE_REGS.len()];

/// Buffers of one translation, kept for the next (cleared, capacity
/// kept): a Linux boot translates ~75k blocks, and allocating them anew
/// each time was ~3% of the boot. (The code buffer comes back through
/// [`Jit::reuse_code`] once copied into place.)
#[derive(Default)]
pub(super) struct Scratch {
    code: Vec<u8>,
    offs: Vec<u16>,
    merge: Vec<bool>,
    back_last: Vec<Option<usize>>,
    fused: Vec<Insn>,
    names: Vec<[u8; 3]>,
    labels: Vec<Option<(usize, CacheMap, u8, u8)>>,
    claims: Vec<u32>,
    slow: Vec<(usize, usize, CacheMap)>,
    keys: Vec<(usize, CacheMap)>,
    stubs: Vec<usize>,
    forced: Vec<bool>,
}

impl Jit {
    /// Takes back the code an `emit` returned, copied into place, for the
    /// next translation to write into (see [`Scratch`]).
    pub(super) fn reuse_code(&mut self, code: Vec<u8>) {
        self.scratch.code = code;
    }
}

/// In a map of dirty registers ([`RegCache::dirty_map`]): the slot holds
/// its register unextended (see [`RegCache::lazy`]), so writing it back
/// extends it first. (Guest registers are below 32.)
const LAZY: u8 = 0x80;

/// Host registers that hold guest registers within a block. A helper
/// call forgets them all (all but r13 are caller-saved), and none is a
/// scratch register of the translator (rax, rcx, rdx) or of the fixed
/// routines at block exits (which run after the cache is dead).
const CACHE_REGS: [u8; 7] = [R8, R9, R10, R11, RSI, RDI, R13];

/// Guest integer registers cached in host registers within one block,
/// write-back: a result only goes to its host register and marks it
/// dirty, so loops neither store nor reload their registers. Every
/// place where anything else can look at `Core::x` writes the dirty
/// ones back first: every exit (chained, dispatched, slow paths of
/// loads and stores that the interpreter redoes or traps on, helper
/// calls, system instructions, attention checks at loop heads and back
/// edges), a slot's reuse for another register, and forward jumps and
/// merge points inside the block (which agree on a clean state, see
/// `emit_code`). Loop heads count every cached register the block
/// writes anywhere as dirty (some back edge may arrive with it so;
/// writing back a clean one is only a useless store); one it never
/// writes is never dirty. Anything that could change a guest register behind
/// the translator's back (a helper call) forgets it all after the
/// write-back. Replacement is LRU.
#[derive(Default)]
pub(super) struct RegCache {
    /// Guest register held by each of `CACHE_REGS` (0: none; x0 is never
    /// cached).
    guest: CacheMap,
    /// Slots whose guest register is newer than `Core::x`.
    dirty: [bool; CACHE_REGS.len()],
    /// Slots holding the result of a W instruction without its sign
    /// extension: the low 32 bits are the guest register's, the upper
    /// ones garbage (see [`Asm::x_reg32`]). Whatever reads the whole
    /// register (a 64-bit operand, an address, a write-back to
    /// `Core::x`) extends it first (`movsxd`, see [`Asm::norm`]).
    lazy: [bool; CACHE_REGS.len()],
    /// Bit `r`: guest `r`'s value here is known to be a sign-extended
    /// 32-bit number (see [`sext_result`]) on every path (x0 always). Such
    /// registers compare as their low halves, and a loop head may hold
    /// them unextended (see [`lazy_ok`]).
    sx: u32,
    /// Last use of each slot (replacement's last tie-break).
    used: [u32; CACHE_REGS.len()],
    tick: u32,
    /// The integer registers each instruction of the block names
    /// (rs1, rs2, rd; see `RegCache::slot`), and the index of the one
    /// being translated.
    names: Vec<[u8; 3]>,
    pos: usize,
    /// The innermost loop being translated: its head's map and the index
    /// of its last back edge (registers it holds are needed again after
    /// the back edge even when the rest of the body does not name them).
    looping: (CacheMap, usize),
}

impl RegCache {
    /// The host register holding guest `r`, if any (marks it used).
    fn get(&mut self, r: u8) -> Option<u8> {
        let s = self.guest.iter().position(|&g| g == r && r != 0)?;
        self.tick += 1;
        self.used[s] = self.tick;
        Some(CACHE_REGS[s])
    }
    /// A slot for guest `r`: its own if cached, else an empty one, else
    /// the one whose register the block names again the latest (as
    /// Belady's replacement: the current instruction's operands last, a
    /// register of the loop being translated as if named again right
    /// after its back edge, one never named again first, clean before
    /// dirty, then least recently used), with the guest register it held
    /// if that one is dirty (the caller writes it back before reusing the
    /// slot).
    fn slot(&mut self, r: u8) -> (usize, Option<u8>) {
        if let Some(s) = self.guest.iter().position(|&g| g == r && r != 0) {
            self.tick += 1;
            self.used[s] = self.tick;
            return (s, None);
        }
        let pos = self.pos;
        let (loop_map, loop_end) = self.looping;
        let distance = |g: u8| -> usize {
            if g == 0 {
                return usize::MAX;
            }
            if let Some(d) = self.names.iter().skip(pos).position(|n| n.contains(&g)) {
                return d;
            }
            if pos <= loop_end && loop_map.contains(&g) {
                return loop_end + 1 - pos;
            }
            usize::MAX - 1
        };
        let s = (0..CACHE_REGS.len())
            .max_by_key(|&s| {
                (
                    distance(self.guest[s]),
                    !self.dirty[s],
                    std::cmp::Reverse(self.used[s]),
                )
            })
            .unwrap_or(0);
        let evicted = (self.dirty[s] && self.guest[s] != 0)
            .then_some(self.guest[s] | if self.lazy[s] { LAZY } else { 0 });
        self.tick += 1;
        self.guest[s] = r;
        self.dirty[s] = false;
        self.lazy[s] = false;
        self.used[s] = self.tick;
        (s, evicted)
    }
    /// Whether a bitwise op of `r1` (not x0) and `r2` may work on the
    /// low halves and leave its result unextended: both are known
    /// sign-extended 32-bit values (see [`RegCache::sx`]; x0 is one) and
    /// one is held unextended now, which a 64-bit op would first extend.
    fn low_halves(&self, r1: u8, r2: u8) -> bool {
        let known = |r: u8| r < 32 && self.sx & 1 << r != 0;
        let lazy = |r: u8| {
            r != 0
                && self
                    .guest
                    .iter()
                    .position(|&g| g == r)
                    .is_some_and(|s| self.lazy[s])
        };
        r1 != 0 && known(r1) && known(r2) && (lazy(r1) || lazy(r2))
    }
    /// Whether guest `r` (not x0), when not cached, is better read from
    /// `Core::x` in place (a memory operand: the copy there is current
    /// and extended) than brought into the cache, which would evict
    /// another register: inside a loop, one its head does not hold (the
    /// head holds the loop's hottest registers, see [`loop_regs`]; one
    /// evicted on the way would cost its back edge a reload, and a store
    /// when dirty); elsewhere, one no later instruction of the block
    /// names.
    fn in_place(&self, r: u8) -> bool {
        if r == 0 || r >= 32 || self.guest.contains(&r) {
            return false;
        }
        let (map, end) = self.looping;
        if self.pos <= end && map.iter().any(|&g| g != 0) {
            !map.contains(&r)
        } else {
            !self.names.iter().skip(self.pos + 1).any(|n| n.contains(&r))
        }
    }
    /// Marks guest `r`'s slot (it must be cached) as newer than memory,
    /// holding the whole new value (`lazy`: only its low half, see
    /// [`RegCache::lazy`]). Forgets what was known of the old value's
    /// sign (the translator sets it again after the instruction, see
    /// [`sext_result`]).
    fn set_dirty(&mut self, r: u8, lazy: bool) {
        if let Some(s) = self.guest.iter().position(|&g| g == r && r != 0) {
            self.dirty[s] = true;
            self.lazy[s] = lazy;
        }
        if r < 32 {
            self.sx &= !(1 << r);
        }
    }
    /// Per slot, the guest register it holds when that one is dirty (0
    /// otherwise), with [`LAZY`] when the slot still needs its sign
    /// extension: what an exit from here must write back.
    pub(super) fn dirty_map(&self) -> CacheMap {
        std::array::from_fn(|s| {
            if self.dirty[s] {
                self.guest[s] | if self.lazy[s] { LAZY } else { 0 }
            } else {
                0
            }
        })
    }
    /// After instruction `i`: whether its result is known sign-extended
    /// (see [`RegCache::sx`]).
    /// (`sx_in`: [`RegCache::sx`] before `i`, which writing rd, maybe
    /// one of its sources, has changed.)
    fn note_write(&mut self, i: &Insn, sx_in: u32) {
        use Kind::*;
        if i.rd != 0 && i.rd < 32 {
            // Bitwise ops keep both operands' sign extension (an
            // immediate is one).
            let known = |r: u8| r < 32 && sx_in & 1 << r != 0;
            let bitwise = match i.kind {
                And | Or | Xor => known(i.rs1) && known(i.rs2),
                Andi | Ori | Xori => known(i.rs1),
                _ => false,
            };
            if sext_result(i) || bitwise {
                self.sx |= 1 << i.rd;
            } else {
                self.sx &= !(1 << i.rd);
            }
        }
    }
    /// Forgets every cached register (their host registers may be
    /// clobbered, or the guest registers changed, behind the translator).
    /// The caller has written the dirty ones back.
    pub(super) fn forget_all(&mut self) {
        self.guest = [0; CACHE_REGS.len()];
        self.dirty = [false; CACHE_REGS.len()];
        self.lazy = [false; CACHE_REGS.len()];
    }
    /// The cache holding exactly `map` at a loop head: each register
    /// some instruction of the block writes (bit `r` of `written`)
    /// counted dirty, since a back edge may arrive with it so; the
    /// others can never be dirty in this block (see [`RegCache`]).
    fn preset(&mut self, map: &CacheMap, written: u32, lazy: u8) {
        for (s, &r) in map.iter().enumerate() {
            self.guest[s] = r;
            self.dirty[s] = r != 0 && written & 1 << r != 0;
            self.lazy[s] = r != 0 && lazy & 1 << s != 0;
        }
    }
}

/// Whether `i`'s result (in `rd`) is always a sign-extended 32-bit
/// number: the W instructions, loads narrower than 64 bits but `lwu`,
/// set-on-compare, small constants, masks and extensions to 16 bits or
/// fewer, shifts right that leave 31 bits or fewer.
pub(super) fn sext_result(i: &Insn) -> bool {
    use Kind::*;
    match i.kind {
        Addw | Subw | Addiw | Sllw | Srlw | Sraw | Slliw | Srliw | Sraiw | Mulw | Divw | Divuw
        | Remw | Remuw => true,
        Lb | Lh | Lw | Lbu | Lhu => true,
        Lui | Slt | Sltu | Slti | Sltiu | ZextH | SextH | SextB => true,
        Addi => i.rs1 == 0,
        Andi => i.imm >= 0,
        Srli => i.imm & 63 >= 33,
        Srai => i.imm & 63 >= 32,
        _ => false,
    }
}

/// Whether the translator leaves `i`'s result unextended (see
/// [`RegCache::lazy`]): W arithmetic and shifts, whose host forms work
/// on the low halves.
fn lazy_result(i: &Insn) -> bool {
    use Kind::*;
    matches!(
        i.kind,
        Addw | Subw | Addiw | Sllw | Srlw | Sraw | Slliw | Srliw | Sraiw | Mulw
    ) && !(i.kind == Addiw && i.imm == 0)
}

/// The registers `insns` write with results not known sign-extended
/// (see [`sext_result`]), and those some W instruction writes
/// unextended (see [`lazy_result`]), as bit masks.
fn sext_writes(insns: &[Insn]) -> (u32, u32) {
    insns
        .iter()
        .filter(|i| i.rd != 0 && i.rd < 32)
        .fold((0, 0), |(others, w), i| {
            let bit = 1u32 << i.rd;
            (
                if sext_result(i) { others } else { others | bit },
                if lazy_result(i) { w | bit } else { w },
            )
        })
}

/// The slots of `map` whose register is in bit mask `regs`, as a bit
/// mask.
fn slots_of(map: &CacheMap, regs: u32) -> u8 {
    (0..CACHE_REGS.len()).fold(0, |m, s| {
        m | ((map[s] != 0 && regs & 1 << map[s] != 0) as u8) << s
    })
}

/// User mode: clears the merge point after each branch of `fused` that
/// `select` can turn into a conditional move when that branch is the
/// only jump of the block landing there (`insns`: the block before
/// fusing, whose jumps made `merge`), and marks the branch in `forced`.
fn force_selects(insns: &[Insn], fused: &[Insn], merge: &mut [bool], forced: &mut [bool]) {
    use Kind::*;
    let target = |i: &Insn| (i.off as i64).wrapping_add(i.imm as i64);
    let is_jump = |i: &Insn| matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal);
    for k in 0..fused.len() {
        let Some(n) = select::skips(fused, merge, k) else {
            continue;
        };
        let t = k + 1 + n;
        let to_t = |i: &Insn| is_jump(i) && target(i) == insns[t].off as i64;
        if to_t(&insns[k]) && insns.iter().filter(|i| to_t(i)).count() == 1 {
            merge[t] = false;
            forced[k] = true;
        }
    }
}

/// The integer registers some instruction of `insns` writes, as a bit
/// mask (bit `r`: `rd` of any kind, conservative for FP destinations).
/// Only these can ever be dirty in the block's register cache.
fn written_regs(insns: &[Insn]) -> u32 {
    insns
        .iter()
        .filter(|i| i.rd < 32)
        .fold(0, |m, i| m | 1 << i.rd)
        & !1
}

/// The cache map of a loop head reached with the cache `current`: the
/// loop's registers `regs` (see [`loop_regs`]), each one already cached
/// kept in its slot (so entering the loop moves nothing it need not),
/// the others in the remaining slots; slots left over stay empty (a
/// register kept there for no loop use would be reloaded by back edges
/// whenever the body evicts it).
fn head_map(current: &CacheMap, regs: &[u8]) -> CacheMap {
    let mut map = [0; CACHE_REGS.len()];
    for (s, &g) in current.iter().enumerate() {
        if g != 0 && regs.contains(&g) {
            map[s] = g;
        }
    }
    let mut free = (0..CACHE_REGS.len())
        .filter(|&s| map[s] == 0)
        .collect::<Vec<_>>();
    // Slots whose current register the loop does not use: empty ones
    // first, so that a slot holding some other register keeps it when
    // the loop leaves it free.
    free.sort_by_key(|&s| current[s] != 0);
    let mut free = free.into_iter();
    for &r in regs {
        if !map.contains(&r) {
            if let Some(s) = free.next() {
                map[s] = r;
            }
        }
    }
    map
}

/// For each loop head `k` (see `back_last` in [`Jit::emit_try`]), the
/// group of overlapping loops it belongs to: the first head and the last
/// back edge of the union of the loops' ranges `[head, last]` that
/// overlap it, directly or through others. Heads of one group share one
/// cache map, so the jumps between them move no registers.
fn loop_groups(back_last: &[Option<usize>]) -> Vec<(usize, usize)> {
    // Empty for a block without loops (most): nothing is looked up then,
    // and a translation is on the path of all code run once.
    if !back_last.iter().any(Option::is_some) {
        return Vec::new();
    }
    let mut groups = vec![(0, 0); back_last.len()];
    let mut k = 0;
    while k < back_last.len() {
        let Some(mut end) = back_last[k] else {
            k += 1;
            continue;
        };
        let start = k;
        let mut m = k + 1;
        while m <= end && m < back_last.len() {
            if let Some(l) = back_last[m] {
                end = end.max(l);
            }
            m += 1;
        }
        for g in groups.iter_mut().take(end + 1).skip(start) {
            *g = (start, end);
        }
        k = end + 1;
    }
    groups
}

/// Which loop heads (see `back_last` in [`Jit::emit_try`]) check for
/// attention: enough that every cycle of jumps inside the block passes
/// one (the block's start checks too, where its own back edges land), so
/// a stop request or a code change still ends any loop. A group of
/// overlapping loops (the C kernel's `sort_list`, a loop nest) would
/// otherwise check at every head a pass goes through. Greedy: each head
/// in turn, the smallest loops first, stops checking when the block's
/// jumps, less the heads still checking, make no cycle. The jumps are
/// over-estimated (every branch may go both ways), which can only keep
/// more checks.
fn checking_heads(insns: &[Insn], back_last: &[Option<usize>]) -> Vec<bool> {
    use Kind::*;
    let n = insns.len();
    // No loop inside (most blocks; every system-mode one): nothing to
    // work out, and nothing to allocate (a translation is on the path of
    // all code run once); only loop heads are looked up.
    if !back_last.iter().any(Option::is_some) {
        return Vec::new();
    }
    let offs: Vec<u16> = insns.iter().map(|i| i.off).collect();
    // An instruction of the block after its start (jumps to the start
    // land on its check).
    let target = |i: &Insn| -> Option<usize> {
        let off = (i.off as i64).wrapping_add(i.imm as i64);
        let j = offs.binary_search(&u16::try_from(off).ok()?).ok()?;
        (j > 0).then_some(j)
    };
    // At most two successors each (NONE: no more), in one allocation:
    // a Vec per instruction was a malloc per instruction of every block
    // with a loop.
    let succ: Vec<[usize; 2]> = insns
        .iter()
        .enumerate()
        .map(|(k, i)| {
            let (a, b) = match i.kind {
                Beq | Bne | Blt | Bge | Bltu | Bgeu => (Some(k + 1), target(i)),
                Jal => (target(i), None),
                // Returns and indirect jumps leave the block; so do
                // system instructions (what follows is reached only by
                // jumps).
                _ if i.ends_block() => (None, None),
                _ => (Some(k + 1), None),
            };
            let ok = |j: Option<usize>| j.filter(|&j| j > 0 && j < n);
            match (ok(a), ok(b)) {
                (Some(a), b) => [a, b.unwrap_or(NONE)],
                (None, b) => [b.unwrap_or(NONE), NONE],
            }
        })
        .collect();
    let mut checks: Vec<bool> = (0..n)
        .map(|k| k > 0 && back_last.get(k).is_some_and(|b| b.is_some()))
        .collect();
    let mut order: Vec<usize> = (0..n).filter(|&k| checks[k]).collect();
    order.sort_by_key(|&k| back_last[k].map_or(0, |l| l - k));
    let (mut state, mut stack) = (Vec::new(), Vec::new());
    for h in order {
        checks[h] = false;
        if has_cycle(&succ, &checks, &mut state, &mut stack) {
            checks[h] = true;
        }
    }
    checks
}

/// No successor (see `checking_heads`).
const NONE: usize = usize::MAX;

/// Whether the graph `succ` (up to two successors a node, [`NONE`] for
/// none) less the nodes `removed` has a cycle.
/// `state` and `stack` are scratch space, reused across calls.
fn has_cycle(
    succ: &[[usize; 2]],
    removed: &[bool],
    state: &mut Vec<u8>,
    stack: &mut Vec<(usize, usize)>,
) -> bool {
    // 0: not seen, 1: on the path, 2: done.
    state.clear();
    state.resize(succ.len(), 0);
    for start in 0..succ.len() {
        if removed[start] || state[start] != 0 {
            continue;
        }
        stack.clear();
        stack.push((start, 0usize));
        state[start] = 1;
        while let Some(&mut (v, ref mut e)) = stack.last_mut() {
            if let Some(&w) = succ[v].get(*e).filter(|&&w| w != NONE) {
                *e += 1;
                if removed[w] {
                    continue;
                }
                match state[w] {
                    0 => {
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => return true,
                    _ => {}
                }
            } else {
                state[v] = 2;
                stack.pop();
            }
        }
    }
    false
}

/// A block that jumps back to its own start (a loop): the loop head, past
/// the prologue that fills the register cache, and the cache's contents
/// there, which every back edge restores before jumping to it, so the
/// loop's registers stay in host registers across iterations.
struct Loop {
    head: usize,
    map: CacheMap,
    /// The block's written registers (see [`written_regs`]).
    written: u32,
    /// The slots holding one of them, counted dirty at the head.
    dirty: u8,
}

impl Loop {
    /// A back edge from the current point: makes the cache the loop
    /// head's (see [`Asm::restore`]), then jumps to the head (which checks
    /// for attention again).
    fn back_edge(&self, a: &mut Asm, retired: u32) {
        a.norm_for(0);
        a.restore(&self.map, self.dirty);
        a.add_icount(retired);
        a.jmp_abs(a.base + self.head);
    }
}

/// The integer registers the loop `insns[h..=last]` (head `h`) names
/// most, each instruction weighted by an estimate of how often one pass
/// runs it (at most as many as the cache holds; ties go to the most
/// named, then the first named): what the loop's head holds. The
/// estimate: the head runs once; a conditional branch splits its weight
/// evenly between its two ways, a jump passes it on, both forward inside
/// the loop only (ways out of the loop, and jumps back to an earlier
/// point, drop theirs); an inner loop's head (the target of a later
/// jump back) counts four times what reaches it. So a search loop
/// holds the registers of its short way around (gzip's hash chain
/// walk: most candidates fail the first compare) rather than those of
/// its rarer long ways, which name more registers more often. Reading
/// a field that is not an integer register only costs a useless load.
fn loop_regs(insns: &[Insn], h: usize, last: usize) -> Vec<u8> {
    loop_regs_by(insns, h, last, false)
}

/// [`loop_regs`], or with `nested` for the one map of a group of
/// overlapping loops (see [`loop_groups`]), which must favour what runs
/// most in the innermost loops. There the estimate is the expected
/// count of each instruction per pass of the group, with every jump
/// back inside the group (a conditional one that closes a loop, the
/// last one back to its head, taken 7 times in 8) followed
/// around: counting an inner head 4 times what reaches it (once per
/// head) misjudges overlapping loops, whose heads follow each other
/// (`sort_list`, nine heads: the weights grew with each head passed),
/// and nested ones, whose inner loop's way out would get half its
/// weight (the C kernel's matrix multiply then left its innermost bound
/// out).
fn loop_regs_by(insns: &[Insn], h: usize, last: usize, nested: bool) -> Vec<u8> {
    use Kind::*;
    const ONE: u64 = 1 << 24;
    let body = &insns[h..=last];
    let n = body.len();
    let is_branch = |i: &Insn| matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu);
    // Index in `body` of the instruction a jump of `body[m]` goes to,
    // worked out once (the estimates below ask for each up to four times;
    // a scan each was the bulk of this function's time).
    let targets: Vec<Option<usize>> = body
        .iter()
        .map(|i| {
            if !is_branch(i) && i.kind != Jal {
                return None;
            }
            let off = i.off as i64 + i.imm as i64;
            body.iter().position(|t| t.off as i64 == off)
        })
        .collect();
    let target = |m: usize| targets[m];
    let mut inner = vec![false; n];
    for m in 0..n {
        if let Some(j) = target(m).filter(|&j| j > 0 && j <= m) {
            inner[j] = true;
        }
    }
    let mut freq = vec![0u64; n];
    freq[0] = ONE;
    for m in 0..n {
        if inner[m] {
            freq[m] = freq[m].saturating_mul(4);
        }
        let f = freq[m];
        let fwd = target(m).filter(|&j| j > m);
        let i = &body[m];
        let (stay, jump) = if is_branch(i) {
            (f - f / 2, f / 2)
        } else if i.kind == Jal {
            (0, f)
        } else if i.ends_block() {
            (0, 0)
        } else {
            (f, 0)
        };
        if m + 1 < n {
            freq[m + 1] = freq[m + 1].saturating_add(stay);
        }
        if let Some(j) = fwd {
            freq[j] = freq[j].saturating_add(jump);
        }
    }
    // (The nested estimate replaces the above: see `expected_counts`.)
    if nested {
        freq = expected_counts(body, &target, &is_branch);
    }
    // (weight, uses, first use, register)
    let mut uses: Vec<(u64, u32, usize, u8)> = Vec::new();
    for (m, i) in body.iter().enumerate() {
        for r in [i.rs1, i.rs2, i.rd] {
            if r != 0 && r < 32 {
                match uses.iter_mut().find(|u| u.3 == r) {
                    Some(u) => {
                        u.0 = u.0.saturating_add(freq[m]);
                        u.1 += 1;
                    }
                    None => uses.push((freq[m], 1, m, r)),
                }
            }
        }
    }
    uses.sort_by_key(|&(weight, count, first, _)| {
        (std::cmp::Reverse(weight), std::cmp::Reverse(count), first)
    });
    uses.iter()
        .take(CACHE_REGS.len())
        .map(|&(_, _, _, r)| r)
        .collect()
}

/// The expected number of times each instruction of `body` runs per
/// pass from its first (see [`loop_regs_by`]), in units of 2^-24,
/// `target` giving the index in `body` a jump goes to: a conditional
/// branch that is the last jump back to its target goes there 7 times
/// in 8, a test against zero for equality a quarter of the time (for
/// inequality three quarters), any other half the time; jumps back to
/// the first instruction end the pass. Computed by sweeps in order
/// (each adds a pass around every loop), until the counts settle or
/// 512 sweeps (a cycle no branch leaves stops there).
fn expected_counts(
    body: &[Insn],
    target: &dyn Fn(usize) -> Option<usize>,
    is_branch: &dyn Fn(&Insn) -> bool,
) -> Vec<u64> {
    let n = body.len();
    // The last jump back to each instruction (the one closing a loop).
    let mut closing = vec![None; n];
    for m in 0..n {
        if let Some(j) = target(m).filter(|&j| j <= m) {
            closing[j] = Some(m);
        }
    }
    // (from, to, probability)
    let mut edges: Vec<(usize, usize, f64)> = Vec::new();
    for (m, i) in body.iter().enumerate() {
        let t = target(m);
        let (stay, jump) = if is_branch(i) {
            match t {
                Some(j) if j > 0 && closing[j] == Some(m) => (0.125, 0.875),
                // A test of a register against zero for (in)equality:
                // mostly a null pointer or a count at its end (rare).
                _ if i.rs2 == 0 && i.kind == Kind::Beq => (0.75, 0.25),
                _ if i.rs2 == 0 && i.kind == Kind::Bne => (0.25, 0.75),
                _ => (0.5, 0.5),
            }
        } else if i.kind == Kind::Jal {
            (0.0, 1.0)
        } else if i.ends_block() {
            (0.0, 0.0)
        } else {
            (1.0, 0.0)
        };
        if m + 1 < n && stay > 0.0 {
            edges.push((m, m + 1, stay));
        }
        if let Some(j) = t.filter(|&j| j > 0 && jump > 0.0) {
            edges.push((m, j, jump));
        }
    }
    // In order of their targets, so a sweep carries forward ways in
    // full (Gauss-Seidel).
    edges.sort_by_key(|e| e.1);
    let mut freq = vec![0f64; n];
    for _ in 0..512 {
        let mut moved = 0f64;
        let mut e = edges.iter().peekable();
        for j in 0..n {
            let mut f = if j == 0 { 1.0 } else { 0.0 };
            while let Some(&(m, _, p)) = e.next_if(|x| x.1 == j) {
                f += freq[m] * p;
            }
            moved = moved.max((f - freq[j]).abs() / f.max(1.0));
            freq[j] = f;
        }
        if moved < 1e-4 {
            break;
        }
    }
    freq.iter()
        .map(|&f| (f.min(1e9) * (1u64 << 24) as f64) as u64)
        .collect()
}

/// Guest-aware helpers on top of the encoder.
impl Asm {
    /// Pads with NOPs (run once, on the way into the loop) to the next
    /// 32-byte boundary, where a loop head goes: the host fetches and
    /// caches decoded code in aligned windows, and an unaligned hot loop
    /// can straddle one more of them (measured: a tight loop of the C
    /// kernel ran 25% slower at one offset than at another).
    fn align_loop_head(&mut self) {
        const NOPS: [&[u8]; 9] = [
            &[0x90],
            &[0x66, 0x90],
            &[0x0f, 0x1f, 0x00],
            &[0x0f, 0x1f, 0x40, 0x00],
            &[0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
            &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
            &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        ];
        let mut pad = self.addr().wrapping_neg() & 31;
        while pad > 0 {
            let n = pad.min(NOPS.len());
            self.b.extend_from_slice(NOPS[n - 1]);
            pad -= n;
        }
    }
    /// A host register for guest `r` (see [`RegCache::slot`]), writing
    /// back the dirty register it held before.
    fn cache_slot(&mut self, r: u8) -> u8 {
        let (s, evicted) = self.cache.slot(r);
        if let Some(g) = evicted {
            self.write_back(s, g);
        }
        CACHE_REGS[s]
    }
    /// Stores slot `s` into guest `g & !LAZY`'s place in `Core::x`,
    /// extending it first when `g` has [`LAZY`] (in place: the slot then
    /// holds the same guest value, extended).
    fn write_back(&mut self, s: usize, g: u8) {
        if g & LAZY != 0 {
            self.sext32(CACHE_REGS[s], CACHE_REGS[s]);
        }
        self.store(RBX, xd(g & !LAZY), CACHE_REGS[s]);
    }
    /// Writes back the registers of `dirty` (from [`RegCache::dirty_map`])
    /// to `Core::x`, leaving the cache as it is: for a path that leaves
    /// (the path the translator goes on with keeps them dirty).
    pub(super) fn flush_dirty(&mut self, dirty: CacheMap) {
        for (s, &g) in dirty.iter().enumerate() {
            if g != 0 {
                self.write_back(s, g);
            }
        }
    }
    /// Extends slot `s`'s register in place (see [`RegCache::lazy`]);
    /// `movsxd` leaves the flags alone.
    pub(super) fn norm(&mut self, s: usize) {
        if self.cache.lazy[s] {
            self.sext32(CACHE_REGS[s], CACHE_REGS[s]);
            self.cache.lazy[s] = false;
        }
    }
    /// Extends the unextended slots that a loop head's cache does not
    /// allow so (`lazy_ok`, bit per slot), before jumping there (see
    /// [`RegCache::lazy`]). Flags survive.
    fn norm_for(&mut self, lazy_ok: u8) {
        for s in 0..CACHE_REGS.len() {
            if lazy_ok & 1 << s == 0 {
                self.norm(s);
            }
        }
    }
    /// Whether [`Asm::restore`] to `want`, `dirty` would emit nothing.
    pub(super) fn restore_is_noop(&self, want: &CacheMap, dirty: u8) -> bool {
        (0..CACHE_REGS.len()).all(|s| {
            let g = self.cache.guest[s];
            (want[s] == 0 || want[s] == g)
                && !(g != 0 && self.cache.dirty[s] && (want[s] != g || dirty & 1 << s == 0))
        })
    }
    /// On a path that jumps to a loop head with the cache `want` (the
    /// slots of bit mask `dirty` counted dirty there, the others clean):
    /// writes back the dirty registers that `want` does not keep, or keeps
    /// clean, then fills the slots that differ: from the slot their
    /// register is in now (a register copy, extended on the way: a slot
    /// the head allows unextended takes an extended value too), else from
    /// `Core::x`. Copies go in an order that reads each slot before
    /// overwriting it (a cycle goes through rax, free at every jump).
    /// Leaves the translator's cache as it is (the jump leaves this path).
    /// The caller has extended the slots the head wants extended (see
    /// [`Asm::norm_for`]).
    fn restore(&mut self, want: &CacheMap, dirty: u8) {
        const N: usize = CACHE_REGS.len();
        for (s, &w) in want.iter().enumerate() {
            let g = self.cache.guest[s];
            if g == 0 || !self.cache.dirty[s] {
                continue;
            }
            // Kept dirty where the head holds it (this slot or another).
            let kept = if w == g {
                dirty & 1 << s != 0
            } else {
                want.iter()
                    .position(|&v| v == g)
                    .is_some_and(|t| dirty & 1 << t != 0)
            };
            if !kept {
                let lazy = if self.cache.lazy[s] { LAZY } else { 0 };
                self.write_back(s, g | lazy);
            }
        }
        /// Where a slot's value comes from.
        #[derive(Clone, Copy, PartialEq)]
        enum From {
            Slot(usize),
            Rax,
            Memory,
        }
        let mut todo: Vec<(usize, From)> = (0..N)
            .filter(|&s| want[s] != 0 && self.cache.guest[s] != want[s])
            .map(|s| {
                let from = (0..N)
                    .find(|&t| self.cache.guest[t] == want[s])
                    .map_or(From::Memory, From::Slot);
                (s, from)
            })
            .collect();
        while !todo.is_empty() {
            // A slot no pending copy reads any more.
            let ready = todo
                .iter()
                .position(|&(s, _)| !todo.iter().any(|&(_, f)| f == From::Slot(s)));
            let n = match ready {
                Some(n) => n,
                None => {
                    // Every pending slot is read by another: a cycle.
                    // Save one's value in rax; its readers read rax.
                    let (s, _) = todo[0];
                    self.sext_or_mov(RAX, s);
                    for (_, f) in todo.iter_mut() {
                        if *f == From::Slot(s) {
                            *f = From::Rax;
                        }
                    }
                    0
                }
            };
            let (s, from) = todo.remove(n);
            match from {
                From::Slot(t) => self.sext_or_mov(CACHE_REGS[s], t),
                From::Rax => self.mov_rr(CACHE_REGS[s], RAX),
                From::Memory => self.load(CACHE_REGS[s], RBX, xd(want[s])),
            }
        }
    }
    /// Host `dst` = slot `t`'s value, extended when the slot holds it
    /// unextended (see [`RegCache::lazy`]).
    fn sext_or_mov(&mut self, dst: u8, t: usize) {
        if self.cache.lazy[t] {
            self.sext32(dst, CACHE_REGS[t]);
        } else {
            self.mov_rr(dst, CACHE_REGS[t]);
        }
    }
    /// Host register holding guest `r` (x1..x31), loading it into the
    /// cache first when it is not there yet.
    pub(super) fn x_reg(&mut self, r: u8) -> u8 {
        let h = self.x_reg32(r);
        if let Some(s) = CACHE_REGS.iter().position(|&c| c == h) {
            self.norm(s);
        }
        h
    }
    /// [`Asm::x_reg`] for a reader of the low 32 bits only (W
    /// instructions' operands, narrow stores' values, compares of known
    /// sign-extended values): the upper half may be garbage (see
    /// [`RegCache::lazy`]).
    pub(super) fn x_reg32(&mut self, r: u8) -> u8 {
        debug_assert!(r != 0 && r < 32);
        if let Some(h) = self.cache.get(r) {
            return h;
        }
        let h = self.cache_slot(r);
        self.load(h, RBX, xd(r));
        h
    }
    /// `op dst, <guest register r>` (x0 reads as 0). A 32-bit op reads
    /// only the low half (see [`Asm::x_reg32`]).
    /// A register better read in place (see [`RegCache::in_place`]) is
    /// a memory operand.
    pub(super) fn alu_x(&mut self, w: bool, op: (u8, u8), dst: u8, r: u8) {
        if r == 0 {
            self.alu_imm(w, op, dst, 0);
        } else if self.cache.in_place(r) {
            // The `op reg, r/m` form of the ALU op (`op.0` is `op r/m,
            // reg`).
            self.op_m(w, &[op.0 + 2], dst, RBX, xd(r));
        } else {
            let h = if w { self.x_reg(r) } else { self.x_reg32(r) };
            self.alu_rr(w, op, dst, h);
        }
    }
    /// Guest register `r` into host `h` (x0 reads as 0).
    pub(super) fn ld_x(&mut self, h: u8, r: u8) {
        if r == 0 {
            self.op_rr(false, &[0x31], h, h);
        } else if self.cache.in_place(r) {
            // Straight from `Core::x` (see [`RegCache::in_place`]).
            self.load(h, RBX, xd(r));
        } else {
            let c = self.x_reg(r);
            self.mov_rr(h, c);
        }
    }
    /// Host `h` into guest register `r` (writes to x0 vanish): into its
    /// cache slot, dirty.
    pub(super) fn st_x(&mut self, r: u8, h: u8) {
        if r != 0 && r != ZERO_SINK {
            let c = self.cache_slot(r);
            self.mov_rr(c, h);
            self.cache.set_dirty(r, false);
        }
    }
    /// The host register an instruction that writes guest `r` computes
    /// its result in: `r`'s cache slot (so the result needs no copy), or
    /// rax when the write vanishes (x0). Call it after the operands are
    /// in their registers: the slot may evict the least recently used.
    pub(super) fn rd_host(&mut self, r: u8) -> u8 {
        if r != 0 && r != ZERO_SINK {
            self.cache_slot(r)
        } else {
            RAX
        }
    }
    /// Ends a write of guest `r` computed in `h` (from [`Asm::rd_host`]):
    /// marks it dirty (no exit may come between the two: the slot holds
    /// a half-computed value until here).
    pub(super) fn rd_commit(&mut self, r: u8, h: u8) {
        self.rd_commit_as(r, h, false);
    }
    /// [`Asm::rd_commit`] of a W instruction's result left unextended
    /// in `h` (`lazy`; see [`RegCache::lazy`]).
    pub(super) fn rd_commit_as(&mut self, r: u8, h: u8, lazy: bool) {
        if r != 0 && r != ZERO_SINK {
            debug_assert!(
                self.cache
                    .guest
                    .iter()
                    .position(|&g| g == r)
                    .map(|s| CACHE_REGS[s])
                    == Some(h)
            );
            self.cache.set_dirty(r, lazy);
        }
    }
    /// Guest `rd` (not x0) = `rd + imm`, in place.
    pub(super) fn add_x_imm(&mut self, rd: u8, imm: i32) {
        let c = self.x_reg(rd);
        self.alu_imm(true, ADD, c, imm);
        self.cache.set_dirty(rd, false);
    }
    /// Guest `rd` (not x0) = sign-extended `imm`.
    pub(super) fn li_x(&mut self, rd: u8, imm: i32) {
        let c = self.cache_slot(rd);
        // mov c, simm32 (sign-extended to 64 bits)
        self.op_rr(true, &[0xc7], 0, c);
        self.u32(imm as u32);
        self.cache.set_dirty(rd, false);
    }
    /// Counts `n` more retired instructions (two's complement: a jump
    /// back inside the block subtracts). The count lives in rbp while
    /// generated code runs (the epilogue stores it in `Ctx::icount`): a
    /// register, not memory, so consecutive blocks and loop iterations
    /// do not chain through a store and a reload. `lea` leaves the flags
    /// alone.
    pub(super) fn add_icount(&mut self, n: u32) {
        if n != 0 {
            self.op_m(true, &[0x8d], RBP, RBP, n as i32);
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
    /// stub right behind it, which asks Rust to patch the jmp (`fwd`: to
    /// the target's code past its entry checks).
    /// System mode: a static exit to `pc` in another page, chained
    /// behind a guard (see [`super::SysSite`]): the fetch TLB must still
    /// map `pc`'s page to the physical page the chained block was
    /// translated from, and that page must have been checked in the
    /// current fence epoch, as the inline dispatch requires. Until Rust
    /// patches it on first use the guard fails (no physical page is
    /// `u64::MAX`) into an exit that asks for the patch; a guard that
    /// fails once patched goes through the inline dispatch.
    pub(super) fn sys_chain_exit(&mut self, epilogue: usize, dispatch_sys: usize, pc: u64) {
        use super::SysSite as S;
        let vpn = pc >> 12;
        let e = ((vpn as usize & (crate::mmu::TLB_SIZE - 1))
            * std::mem::size_of::<crate::mmu::Entry>()) as i32;
        let tag_x = offset_of!(crate::mmu::Entry, tag_x) as i32;
        let pa_page = offset_of!(crate::mmu::Entry, pa_page) as i32;
        self.load(RDX, R14, ctx_off(offset_of!(Ctx, itlb)));
        self.mov_imm(RCX, vpn);
        self.op_m(true, &[0x3b], RCX, RDX, e + tag_x); // cmp rcx, [rdx + tag_x]
        let tag_miss = self.jcc(CC_NE);
        let site = self.b.len();
        // movabs rcx, pa page (patched)
        self.b.extend_from_slice(&[0x48, 0xb9]);
        self.u64(u64::MAX);
        // cmp rcx, [rdx + disp32]
        self.b.extend_from_slice(&[0x48, 0x3b, 0x8a]);
        self.u32((e + pa_page) as u32);
        let pa_miss = self.jcc(CC_NE);
        assert_eq!(self.b.len() - site, S::EPOCH - 2);
        // movabs rdx, the page's epoch cell (patched); mov rdx, [rdx]
        self.b.extend_from_slice(&[0x48, 0xba]);
        self.u64(0);
        self.b.extend_from_slice(&[0x48, 0x8b, 0x12]);
        // cmp rdx, [r14 + epoch] (disp32)
        self.b.extend_from_slice(&[0x49, 0x3b, 0x96]);
        self.u32(offset_of!(Ctx, epoch) as u32);
        let epoch_miss = self.jcc(CC_NE);
        assert_eq!(self.b.len() - site, S::CODE - 1);
        // jmp code (patched)
        self.u8(0xe9);
        self.u32(0);
        assert_eq!(self.b.len() - site, S::MISS);
        for at in [tag_miss, pa_miss, epoch_miss] {
            self.bind(at);
        }
        // jmp first use (patched to the dispatch stub right after it)
        self.u8(0xe9);
        let first = self.b.len();
        self.u32(0);
        assert_eq!(self.b.len() - site, S::DISPATCH);
        self.mov_imm(RAX, pc);
        self.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
        self.jmp_abs(dispatch_sys);
        self.bind(first);
        self.mov_imm(RAX, (self.base + site) as u64);
        self.store(R14, ctx_off(offset_of!(Ctx, site)), RAX);
        self.exit_pc(epilogue, pc, EXIT_CHAIN_SYS);
    }

    pub(super) fn chain_exit(&mut self, epilogue: usize, pc: u64, fwd: bool) {
        let site = self.addr();
        self.u8(0xe9);
        self.u32(0);
        self.mov_imm(RAX, site as u64);
        self.store(R14, ctx_off(offset_of!(Ctx, site)), RAX);
        self.exit_pc(epilogue, pc, if fwd { EXIT_CHAIN_FWD } else { EXIT_CHAIN });
    }
}

impl Jit {
    /// Before a call of the interpreter on `i` (at `ipc`), through
    /// [`helper`] or `helper_sys`, or of `csr_sys`: registers `i` in
    /// the helper table, writes the register cache back and forgets it
    /// (the call reads and writes guest registers in `Core::x` and
    /// clobbers the cache's host registers), and loads the arguments
    /// (ctx, the table index, the pc).
    fn helper_args(&mut self, a: &mut Asm, i: &Insn, ipc: u64) {
        let idx = self.helpers.len() as u32;
        self.helpers.push(*i);
        a.flush_dirty(a.cache.dirty_map());
        a.cache.forget_all();
        a.mov_rr(RDI, R14);
        a.mov_imm(RSI, idx as u64);
        a.mov_imm(RDX, ipc);
    }

    pub(super) fn emit_code(
        &mut self,
        at: usize,
        insns: &[Insn],
        pc: u64,
        sys: Option<usize>,
    ) -> Vec<u8> {
        // Loop heads claim registers known sign-extended (see
        // `RegCache::sx`); a back edge that cannot vouch for a claim
        // makes the block translate again without it (claims only
        // shrink, so this ends; most blocks translate once).
        let helpers = self.helpers.len();
        let mut deny = vec![0u32; insns.len()];
        loop {
            match self.emit_try(at, insns, pc, sys, &deny) {
                Ok(code) => return code,
                Err(bad) => {
                    self.helpers.truncate(helpers);
                    for (j, bits) in bad {
                        deny[j] |= bits;
                    }
                }
            }
        }
    }

    /// One translation of the block (see [`Jit::emit_code`]) with the
    /// loop heads' sign-extension claims less `deny[j]` at each head `j`;
    /// `Err`: back edges that did not keep their head's claim, as (head,
    /// registers).
    fn emit_try(
        &mut self,
        at: usize,
        insns: &[Insn],
        pc: u64,
        sys: Option<usize>,
        deny: &[u32],
    ) -> Result<Vec<u8>, Vec<(usize, u32)>> {
        use Kind::*;
        let mut sc = std::mem::take(&mut self.scratch);
        let mut code = std::mem::take(&mut sc.code);
        code.clear();
        code.reserve(insns.len() * 48 + 256);
        let mut a = Asm::with_buf(at, code);
        // Nothing is known of the registers at entry but x0's value.
        a.cache.sx = 1;
        let epi = self.epilogue;
        // Merge points: instructions a branch of the block jumps to from
        // inside it (user mode; see `Frame::internal`).
        let mut offs = std::mem::take(&mut sc.offs);
        offs.clear();
        offs.extend(insns.iter().map(|i| i.off));
        // Loop heads among them: the last backward jump to each.
        let mut merge = std::mem::take(&mut sc.merge);
        merge.clear();
        merge.resize(insns.len(), false);
        let mut back_last = std::mem::take(&mut sc.back_last);
        back_last.clear();
        back_last.resize(insns.len(), None);
        if sys.is_none() {
            for (m, i) in insns.iter().enumerate() {
                if matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal) {
                    let off = (i.off as i64).wrapping_add(i.imm as i64);
                    if let Ok(j) = offs.binary_search(&(u16::try_from(off).unwrap_or(u16::MAX))) {
                        if j > 0 && off >= 0 {
                            merge[j] = true;
                            if j <= m {
                                back_last[j] = Some(m);
                            }
                        }
                    }
                }
            }
        }
        // Fused pairs (see `fuse`), for the translator's eyes only.
        let mut fused = std::mem::take(&mut sc.fused);
        fused.clear();
        fused.extend_from_slice(insns);
        fuse::pairs(&mut fused, &merge);
        // Branches over one instruction that become conditional moves
        // (see `select`): the instruction after the skipped one is a
        // merge point only for such a branch; when no other jump lands
        // there it is none, so the plan of checks and the loop analyses
        // below see straight-line code through it (a loop's entry check
        // then covers a base its body also uses after the branch). The
        // branch must then become a conditional move (`forced`).
        let mut forced = std::mem::take(&mut sc.forced);
        forced.clear();
        forced.resize(insns.len(), false);
        if sys.is_none() {
            force_selects(insns, &fused, &mut merge, &mut forced);
        }
        // Loops that check some base registers once on the way in rather
        // than at each access (see `mem::loop_bases`): (head, last back
        // edge, registers).
        let mut entry_checks: Vec<(usize, usize, u32)> = Vec::new();
        if sys.is_none() {
            let to_start = fused.iter().rposition(|i| {
                matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal)
                    && i.off as i64 + i.imm as i64 == 0
            });
            let heads = (0..fused.len()).filter_map(|h| back_last[h].map(|l| (h, l)));
            for (h, last) in to_start.map(|l| (0, l)).into_iter().chain(heads) {
                let bases = mem::loop_bases(&fused, &merge, h, last);
                if bases != 0 {
                    entry_checks.push((h, last, bases));
                }
            }
        }
        let checks_at = |h: usize| entry_checks.iter().find(|c| c.0 == h).map_or(0, |c| c.2);
        // Entry: leave when another thread asked for attention or the
        // address space's code changed since this block was translated.
        // A loop: the prologue fills the register cache, and back edges
        // jump to the head below it (which, in system mode, also counts
        // down to the next interrupt poll, as a block entry does).
        let is_loop = insns.iter().any(|i| {
            matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal)
                && pc
                    .wrapping_add(i.off as u64)
                    .wrapping_add(i.imm as i64 as u64)
                    == pc
        });
        let written = written_regs(insns);
        let mut entry_slow = std::mem::take(&mut sc.slow);
        entry_slow.clear();
        let looping = is_loop.then(|| {
            let map = head_map(
                &[0; CACHE_REGS.len()],
                &loop_regs(&fused, 0, fused.len() - 1),
            );
            for (s, &g) in map.iter().enumerate() {
                if g != 0 {
                    a.load(CACHE_REGS[s], RBX, xd(g));
                }
            }
            a.cache.preset(&map, written, 0);
            a.cache.looping = (map, insns.len());
            for r in (1..32).filter(|r| checks_at(0) & 1 << r != 0) {
                entry_slow.push((mem::entry_check(&mut a, r), 0, a.cache.dirty_map()));
            }
            Loop {
                head: {
                    a.align_loop_head();
                    a.b.len()
                },
                map,
                written,
                dirty: slots_of(&map, written),
            }
        });
        a.op_m(false, &[0x83], 7, R15, 0);
        a.u8(0);
        let attn1 = a.jcc(CC_NE);
        // A code change raises the attention of every hart running the
        // code (`UserSpace::code_changed`, `CodeMap::changed`), so the check
        // above covers it.
        // System mode: once the count of retired instructions (rbp)
        // reaches `Ctx::poll_at` (see `jit::POLL_INSNS`), a block entry
        // or a loop's head goes back to the run loop to check for
        // interrupts and timer deadlines. (A countdown in memory, which
        // this was, chained every block entry to the previous one
        // through a store and a load.)
        let attn3 = sys.map(|_| {
            // cmp rbp, [r14 + poll_at]; jae attn
            a.op_m(true, &[0x3b], RBP, R14, ctx_off(offset_of!(Ctx, poll_at)));
            a.jcc(CC_AE)
        });
        // Forward chained exits enter past the checks, which must then
        // be all a skipped entry misses: not a loop's block, whose
        // prologue comes first (see `Frame::static_exit`). (System mode:
        // a chain of forward exits stays in one page, so it ends soon in
        // an entry that checks and counts down to the interrupt poll.)
        self.last_skip = if looping.is_none() {
            a.b.len() as u16
        } else {
            0
        };
        let insns = &fused[..];
        a.cache.names = std::mem::take(&mut sc.names);
        a.cache.names.clear();
        a.cache.names.extend(
            insns
                .iter()
                .map(|i| [i.rs1, i.rs2, i.rd].map(|r| if r < 32 { r } else { 0 })),
        );
        let mut labels = std::mem::take(&mut sc.labels);
        labels.clear();
        labels.resize(insns.len(), None);
        let mut claims = std::mem::take(&mut sc.claims);
        claims.clear();
        claims.resize(insns.len(), 1);
        // System mode only: in user mode (busybox's sha256sum calling
        // memcpy's PLT stub per 64-byte block) the chained call made runs
        // bimodal, half of them ~40% slower, for reasons not found yet.
        let static_jalr = if sys.is_some() {
            static_jalrs(insns, pc, &merge)
        } else {
            Vec::new()
        };
        let mut f = Frame {
            pc,
            sys,
            epilogue: epi,
            dispatch: self.dispatch,
            dispatch_sys: self.dispatch_sys,
            plan: if sys.is_none() {
                let mut plan = mem::plan(insns, &merge);
                for &(h, last, bases) in &entry_checks {
                    mem::cover_loop(&mut plan, insns, h, last, bases);
                }
                plan
            } else {
                Vec::new()
            },
            sysacc: if sys.is_some() {
                let (pa, given_up) = (self.block_pa, &self.ungrouped);
                mem::sys_groups(insns, &|i: &Insn| {
                    !given_up.is_empty() && given_up.contains_key(&pa.wrapping_add(i.off as u64))
                })
            } else {
                Vec::new()
            },
            straddle: self.straddle,
            leads: Vec::new(),
            len: insns.len(),
            looping,
            taken: Vec::new(),
            landings: Vec::new(),
            slow: entry_slow,
            labels,
            claims,
            broken: Vec::new(),
            offs,
            merge,
            forward: Vec::new(),
            thunks: Vec::new(),
            attn_back: Vec::new(),
            faults: Vec::new(),
            static_jalr,
            fp: fp::FpState::default(),
        };
        let groups = loop_groups(&back_last);
        let checking = checking_heads(&fused, &back_last);
        let mut group_map: Option<(usize, CacheMap)> = None;
        // Instructions already emitted with a branch (see `select`).
        let mut skip_to = 0;
        for (k, i) in insns.iter().enumerate() {
            if k < skip_to {
                continue;
            }
            a.cache.pos = k;
            let ipc = pc.wrapping_add(i.off as u64);
            let next = ipc.wrapping_add(i.size() as u64);
            if f.merge[k] {
                // Reached from elsewhere in the block too: the cache keeps
                // the slots every forward jump here agrees on (each holds
                // its guest register's current value on every path),
                // dirty when dirty on any path; backward jumps will
                // restore exactly this map. Every path writes back its
                // dirty slots that are dropped here: the fall-through
                // inline, each forward jump that has some in a stub of
                // its own on the way to the label.
                let (here, later): (Vec<_>, Vec<_>) =
                    f.forward.drain(..).partition(|&(_, j, _, _, _, _)| j == k);
                f.forward = later;
                if k > 0 && matches!(insns[k - 1].kind, Jal | Jalr) {
                    if let Some(&(_, _, map, dirty, sx, _)) = here.first() {
                        // No fall-through (the block goes on past a jump,
                        // see `block::extend_user`): start from a jump's
                        // cache, not the dead path's (whose inline stores
                        // below never run).
                        a.cache.guest = map;
                        a.cache.dirty = std::array::from_fn(|s| dirty[s] != 0);
                        a.cache.lazy = std::array::from_fn(|s| dirty[s] & LAZY != 0);
                        a.cache.sx = sx;
                    }
                }
                // Inside a loop, a merge point takes the cache of its
                // earliest forward jump (the way most passes take by the
                // estimate of `loop_regs`: a search loop's early
                // mismatch), and every other way in conforms to it as a
                // back edge does to its head (see `Asm::restore`): the
                // hot way then writes back and reloads nothing, where
                // keeping only what every way agrees on would drop most
                // of the loop's registers, for its back edge to reload.
                // A slot counts dirty when its register is dirty on some
                // way in, unextended when so on some way in and known
                // sign-extended on all (else the ways extend it).
                let (loop_map, loop_end) = a.cache.looping;
                let in_loop = k <= loop_end && loop_map.iter().any(|&g| g != 0);
                if in_loop && !here.is_empty() {
                    const N: usize = CACHE_REGS.len();
                    let want = here[0].2;
                    let dirty_in =
                        |d: &CacheMap, g: u8| d.iter().any(|&x| x != 0 && x & !LAZY == g);
                    let fall = a.cache.dirty_map();
                    let mut mask = 0u8;
                    for (s, &g) in want.iter().enumerate() {
                        if g != 0 && (dirty_in(&fall, g) || here.iter().any(|h| dirty_in(&h.3, g)))
                        {
                            mask |= 1 << s;
                        }
                    }
                    let sx = here.iter().fold(a.cache.sx, |m, h| m & h.4);
                    let ok = (0..N).fold(0u8, |m, s| {
                        m | ((want[s] != 0 && sx & 1 << want[s] != 0) as u8) << s
                    });
                    // The slots a way into the merge leaves unextended.
                    let unext = |a: &Asm| {
                        (0..N).fold(0u8, |m, s| {
                            let keep = a.cache.lazy[s] && a.cache.guest[s] == want[s];
                            m | ((keep && ok & 1 << s != 0) as u8) << s
                        })
                    };
                    let mut lazy = unext(&a);
                    a.norm_for(ok);
                    a.restore(&want, mask);
                    let enter = |a: &mut Asm, map: &CacheMap, dirty: &CacheMap| {
                        a.cache.guest = *map;
                        a.cache.dirty = std::array::from_fn(|s| dirty[s] != 0);
                        a.cache.lazy = std::array::from_fn(|s| dirty[s] & LAZY != 0);
                    };
                    let (mut direct, mut stubs) = (Vec::new(), Vec::new());
                    for h in &here {
                        enter(&mut a, &h.2, &h.3);
                        lazy |= unext(&a);
                        let norm = (0..N).any(|s| a.cache.lazy[s] && ok & 1 << s == 0);
                        if !norm && a.restore_is_noop(&want, mask) {
                            direct.push(h);
                        } else {
                            stubs.push(h);
                        }
                    }
                    // The hot way in (the first direct one that owes a
                    // count adjustment, see `Frame::branch_fwd`; in a
                    // search loop the early mismatch) lands on a `lea`
                    // that adds its adjustment, right before the label,
                    // rather than in an out-of-line thunk that adds it
                    // and jumps back: one `jmp` fewer per pass. The
                    // fall-through and the stubs, which also pass that
                    // `lea`, take it back first.
                    let hot = direct
                        .iter()
                        .map(|h| h.5)
                        .find(|&adj| adj != 0)
                        .unwrap_or(0);
                    a.add_icount(hot.wrapping_neg());
                    // The fall-through jumps over the stubs; each stub
                    // jumps to the label.
                    let mut to_label = Vec::new();
                    if !stubs.is_empty() {
                        to_label.push(a.jmp_fwd());
                    }
                    for (n, h) in stubs.iter().enumerate() {
                        a.bind(h.0);
                        a.add_icount(h.5.wrapping_sub(hot));
                        enter(&mut a, &h.2, &h.3);
                        a.norm_for(ok);
                        a.restore(&want, mask);
                        if n + 1 < stubs.len() {
                            to_label.push(a.jmp_fwd());
                        }
                    }
                    for at in to_label {
                        a.bind(at);
                    }
                    for h in direct.iter().filter(|h| hot != 0 && h.5 == hot) {
                        a.bind(h.0);
                    }
                    a.add_icount(hot);
                    for h in direct.iter().filter(|h| hot == 0 || h.5 != hot) {
                        if h.5 == 0 {
                            a.bind(h.0);
                        } else {
                            f.thunks.push((h.0, h.5, a.b.len()));
                        }
                    }
                    a.cache.guest = want;
                    a.cache.dirty = std::array::from_fn(|s| mask & 1 << s != 0);
                    a.cache.lazy = std::array::from_fn(|s| lazy & 1 << s != 0);
                    a.cache.sx = sx;
                } else {
                    let mut keep = a.cache.guest;
                    for (_, _, map, _, _, _) in &here {
                        for (s, g) in keep.iter_mut().enumerate() {
                            if map[s] != *g {
                                *g = 0;
                            }
                        }
                    }
                    for (s, &kept) in keep.iter().enumerate() {
                        let g = a.cache.guest[s];
                        if kept != g {
                            if a.cache.dirty[s] {
                                let lazy = if a.cache.lazy[s] { LAZY } else { 0 };
                                a.write_back(s, g | lazy);
                            }
                            a.cache.guest[s] = 0;
                            a.cache.dirty[s] = false;
                            a.cache.lazy[s] = false;
                        }
                    }
                    // Known sign-extended on every path; a slot unextended on
                    // some path stays so only if its register is (the other
                    // paths' extended value is then a valid unextended one),
                    // else the paths that have it so extend it.
                    let sx = here.iter().fold(a.cache.sx, |m, h| m & h.4);
                    let fix: [bool; CACHE_REGS.len()] = std::array::from_fn(|s| {
                        let g = keep[s];
                        g != 0 && sx & 1 << g == 0
                    });
                    for (s, &fix) in fix.iter().enumerate() {
                        if fix {
                            a.norm(s);
                        }
                    }
                    a.cache.sx = sx;
                    let drops = |dirty: &CacheMap| -> CacheMap {
                        std::array::from_fn(|s| {
                            if keep[s] != dirty[s] & !LAZY {
                                dirty[s]
                            } else {
                                0
                            }
                        })
                    };
                    let fixes = |dirty: &CacheMap| -> Vec<usize> {
                        (0..CACHE_REGS.len())
                            .filter(|&s| {
                                fix[s] && dirty[s] & LAZY != 0 && keep[s] == dirty[s] & !LAZY
                            })
                            .collect()
                    };
                    let (direct, stubs): (Vec<_>, Vec<_>) =
                        here.iter().partition(|(_, _, _, dirty, _, _)| {
                            drops(dirty) == [0; CACHE_REGS.len()] && fixes(dirty).is_empty()
                        });
                    // The fall-through jumps over the stubs; each stub jumps
                    // to the label (the last one falls into it).
                    let mut to_label = Vec::new();
                    if !stubs.is_empty() {
                        to_label.push(a.jmp_fwd());
                    }
                    for (n, (at, _, _, dirty, _, adj)) in stubs.iter().enumerate() {
                        a.bind(*at);
                        a.add_icount(*adj);
                        a.flush_dirty(drops(dirty));
                        for s in fixes(dirty) {
                            a.sext32(CACHE_REGS[s], CACHE_REGS[s]);
                        }
                        if n + 1 < stubs.len() {
                            to_label.push(a.jmp_fwd());
                        }
                    }
                    for at in to_label {
                        a.bind(at);
                    }
                    for (at, _, _, _, _, adj) in direct {
                        if adj == 0 {
                            a.bind(at);
                        } else {
                            f.thunks.push((at, adj, a.b.len()));
                        }
                    }
                    for (_, _, _, dirty, _, _) in &here {
                        for s in 0..CACHE_REGS.len() {
                            let g = dirty[s] & !LAZY;
                            if g != 0 && keep[s] == g {
                                a.cache.dirty[s] = true;
                                if dirty[s] & LAZY != 0 && !fix[s] {
                                    a.cache.lazy[s] = true;
                                }
                            }
                        }
                    }
                }
                let mut lazy_ok = 0u8;
                let mut head_dirty = 0u8;
                if let Some(last) = back_last[k] {
                    // A loop head: fill the cache with the registers the
                    // loop names (as a block's loop prologue does), so the
                    // body does not evict its own registers for ones from
                    // before the loop and back edges find them in place.
                    // Heads of one group of overlapping loops (see
                    // `loop_groups`) share the map its first head picks
                    // for the whole group, so jumps between them move
                    // no registers (measured: the C kernel 5-7% faster,
                    // its `sort_list`, nine heads jumping into each
                    // other, 20-25% fewer samples than with a map per
                    // head that shuffled the others' registers).
                    let (g0, g1) = groups[k];
                    let want = match group_map {
                        Some((g, map)) if g == g0 && k != g0 => map,
                        _ if (g0 + 1..=g1).any(|m| back_last[m].is_some()) => {
                            head_map(&a.cache.guest, &loop_regs_by(insns, g0, g1, true))
                        }
                        _ => head_map(&a.cache.guest, &loop_regs(insns, k, last)),
                    };
                    group_map = Some((g0, want));
                    // What stays known sign-extended around the loop: of
                    // the registers known so here, those the loop writes
                    // only so. (A guess: every back edge must keep it,
                    // see `Frame::vouch`, e.g. a loop entered at its
                    // condition may break it.) Of those, the ones a W
                    // instruction of the loop leaves unextended may stay
                    // so at the head.
                    let (others, w_loop) = sext_writes(&insns[k..=last]);
                    // Registers the head holds that the loop writes only
                    // sign-extended, some of them unextended, but that
                    // are not known so on the way in (a register reused
                    // for a W temporary, the C kernel's matrix product):
                    // the way in checks them at run time (below), so the
                    // head may claim them too and its back edges keep
                    // them unextended. Only a group's first head checks:
                    // the others are entered from inside the group, on
                    // its hot ways (measured: sort_list's heads), and
                    // learn the first head's claims there.
                    let guarded = if k != g0 {
                        0
                    } else {
                        want.iter()
                            .filter(|&&g| g != 0 && g < 32)
                            .fold(0u32, |m, &g| m | 1 << g)
                            & w_loop
                            & !others
                            & !deny[k]
                            & !a.cache.sx
                    };
                    let sx = (a.cache.sx | guarded) & !others & !deny[k];
                    f.claims[k] = sx;
                    for (s, &g) in want.iter().enumerate() {
                        if g != 0 && sx & w_loop & 1 << g != 0 {
                            lazy_ok |= 1 << s;
                        }
                    }
                    // Registers the loop does not write are written back
                    // here, once, and stay clean in the loop: its exits
                    // and evictions store only what it changes. (A back
                    // edge that arrives with one dirty, through code past
                    // the loop's end, writes it back itself: see
                    // `Asm::restore`.)
                    let loop_written = written_regs(&insns[g0..=g1]);
                    head_dirty = slots_of(&want, loop_written);
                    a.norm_for(lazy_ok);
                    // Slots that keep their register unextended into the
                    // head (a W result, so sign-extended by nature).
                    let unext = (0..CACHE_REGS.len()).fold(0u8, |m, s| {
                        let keep = want[s] != 0 && a.cache.guest[s] == want[s] && a.cache.lazy[s];
                        m | (keep as u8) << s
                    });
                    a.restore(&want, head_dirty);
                    // The run-time check of the guarded registers: one
                    // that is not a sign-extended 32-bit value leaves,
                    // with the cache as `restore` left it, for the block
                    // at the head (whose loop makes no such claim). The
                    // exits the loop takes before writing it would
                    // otherwise store it extended.
                    let fail: CacheMap = std::array::from_fn(|s| {
                        if want[s] != 0 && head_dirty & 1 << s != 0 {
                            want[s] | if unext & 1 << s != 0 { LAZY } else { 0 }
                        } else {
                            0
                        }
                    });
                    for (s, &g) in want.iter().enumerate() {
                        if g != 0 && g < 32 && guarded & 1 << g != 0 && unext & 1 << s == 0 {
                            a.sext32(RAX, CACHE_REGS[s]);
                            a.alu_rr(true, CMP, RAX, CACHE_REGS[s]);
                            f.taken.push((a.jcc(CC_NE), k - 1, ipc, fail));
                        }
                    }
                    // (A slot the head allows unextended is written in
                    // the loop, so counted dirty; one loaded here or
                    // extended is a valid unextended one.)
                    a.cache.preset(&want, loop_written, lazy_ok);
                    a.cache.sx = sx;
                    a.cache.looping = (want, g1);
                    for r in (1..32).filter(|r| checks_at(k) & 1 << r != 0) {
                        let at = mem::entry_check(&mut a, r);
                        f.slow.push((at, k, a.cache.dirty_map()));
                    }
                }
                if back_last[k].is_some() {
                    a.align_loop_head();
                }
                f.labels[k] = Some((a.b.len(), a.cache.guest, lazy_ok, head_dirty));
                if back_last[k].is_some() && checking[k] {
                    // Every pass of the loop comes through its head,
                    // which checks for attention (stop requests, signals,
                    // code changes) so its back edges need not; or, in a
                    // group of overlapping loops, through another head
                    // that checks (see `checking_heads`).
                    f.head_check(&mut a, k);
                }
            }
            let sx_in = a.cache.sx;
            if let Some(n) = select::skips(insns, &f.merge, k).filter(|_| sys.is_none()) {
                let op = insns[k + 1];
                let opc = pc.wrapping_add(op.off as u64);
                let onext = opc.wrapping_add(op.size() as u64);
                let emit_op = |a: &mut Asm, f: &mut Frame| {
                    if !alu::emit(a, &op, opc) {
                        rvi::emit(a, f, k + 1, &op, opc, onext);
                    }
                };
                if select::emit(&mut a, &mut f, insns, k, n, forced[k], emit_op) {
                    skip_to = k + 1 + n;
                    continue;
                }
            }
            if let Some(l) =
                indexed::load_after(insns, &f.merge, &f.plan, k).filter(|_| sys.is_none())
            {
                indexed::emit(&mut a, &mut f, insns, k, l);
                a.cache.note_write(&insns[l], sx_in);
                skip_to = l + 1;
                continue;
            }
            if mem::emit(&mut a, &mut f, k, i)
                || alu::emit(&mut a, i, ipc)
                || fp::emit(&mut a, &mut f, &mut self.helpers, insns, k, ipc)
                || amo::emit(&mut a, &mut f, k, i)
            {
                a.cache.note_write(i, sx_in);
                continue;
            }
            match i.kind {
                BlockEnd => {
                    a.flush_dirty(a.cache.dirty_map());
                    a.add_icount(k as u32);
                    f.static_exit(&mut a, ipc);
                }
                Fence if sys.is_some() && i.raw == super::PAUSE => {
                    // `pause`: yield the host thread and poll for
                    // interrupts at the next block entry (see
                    // `super::pause_sys`); the call clobbers the cache's
                    // host registers.
                    a.flush_dirty(a.cache.dirty_map());
                    a.cache.forget_all();
                    a.mov_rr(RDI, R14);
                    let pause: extern "sysv64" fn(*mut Ctx) = super::pause_sys;
                    a.mov_imm(RAX, pause as usize as u64);
                    a.b.extend_from_slice(&[0xff, 0xd0]); // call rax
                }
                Lui | Auipc | Jal | Jalr | Beq | Bne | Blt | Bge | Bltu | Bgeu | Addi | Xori
                | Ori | Andi | Addiw | Slti | Sltiu | Slt | Sltu | Slli | Srli | Srai | Slliw
                | Srliw | Sraiw | Sll | Srl | Sra | Sllw | Srlw | Sraw | Add | Sub | Xor | Or
                | And | Addw | Subw | Fence => rvi::emit(&mut a, &mut f, k, i, ipc, next),
                Mul | Mulw | Mulh | Mulhu | Div | Divu | Rem | Remu | Divw | Divuw | Remw
                | Remuw => rvm::emit(&mut a, i),
                _ if sys.is_some() && super::runs_in_place(i) => {
                    // CSR accesses (the kernel toggles SIE and SUM around
                    // every irq save/restore and user copy, and reads and
                    // writes the trap CSRs on every trap), `sfence.vma`,
                    // `fence.i`: run in place by `super::csr_sys`, which
                    // also points the data TLB at the regime they leave
                    // (r12 is reloaded from `Ctx`). Its answer (see
                    // `super::IN_PLACE_DONE` and the rest): done, chain
                    // on; it traps (nothing changed), the interpreter
                    // redoes it; done, the run loop's checks next; done,
                    // on through the dispatch.
                    self.helper_args(&mut a, i, ipc);
                    // call [r14 + csr]
                    a.op_m(false, &[0xff], 2, R14, ctx_off(offset_of!(Ctx, csr)));
                    a.load(R12, R14, ctx_off(offset_of!(Ctx, membase)));
                    a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
                    let done = a.jcc(CC_E);
                    a.alu_imm(false, CMP, RAX, super::IN_PLACE_TRAP as i32);
                    f.slow.push((a.jcc(CC_E), k, [0; CACHE_REGS.len()]));
                    a.add_icount(k as u32 + 1);
                    a.alu_imm(false, CMP, RAX, super::IN_PLACE_DISPATCH as i32);
                    let disp = a.jcc(CC_E);
                    a.exit_pc(epi, next, EXIT_ATTN);
                    a.bind(disp);
                    a.mov_imm(RAX, next);
                    a.store(R14, ctx_off(offset_of!(Ctx, pc)), RAX);
                    a.jmp_abs(self.dispatch_sys);
                    a.bind(done);
                    a.add_icount(k as u32 + 1);
                    f.static_exit(&mut a, next);
                }
                _ if i.ends_block() => {
                    // System instructions, ecall, illegal words: the
                    // interpreter runs the block from here.
                    a.flush_dirty(a.cache.dirty_map());
                    a.add_icount(k as u32);
                    a.exit_pc(epi, ipc, EXIT_SLOW);
                }
                _ => {
                    self.helper_args(&mut a, i, ipc);
                    let user: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper;
                    a.mov_imm(RAX, sys.unwrap_or(user as usize) as u64);
                    a.b.extend_from_slice(&[0xff, 0xd0]); // call rax
                    a.op_rr(false, &[0x85], RAX, RAX); // test eax, eax
                    f.slow.push((a.jcc(CC_NE), k, [0; CACHE_REGS.len()]));
                }
            }
            a.cache.note_write(i, sx_in);
        }
        let user: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper;
        fp::stubs(&mut a, &mut f, sys.unwrap_or(user as usize));
        // Out-of-line exits.
        for &(at, k, target, dirty) in &f.taken {
            a.bind(at);
            a.flush_dirty(dirty);
            a.add_icount(k as u32 + 1);
            f.static_exit(&mut a, target);
        }
        for &(at, adj, to) in &f.thunks {
            a.bind(at);
            a.add_icount(adj);
            a.jmp_abs(a.base + to);
        }
        // Return landings: everything was written back and counted at
        // the call. They enter the return address's block through its
        // checks (as if from a block after it): a return can go back
        // to a lower address, and a chain of predicted returns could
        // otherwise loop without one.
        // System mode: always behind the guard of a chained exit to
        // another page (fetch TLB, physical page, fence epoch), even to
        // this block's page: the return may run in another address
        // space than the call (after a context switch, say), where the
        // same address maps other code.
        for &(at, ret) in &f.landings {
            a.bind(at);
            if f.sys.is_some() {
                a.sys_chain_exit(f.epilogue, f.dispatch_sys, ret);
            } else {
                f.static_exit_from(&mut a, ret, u64::MAX);
            }
        }
        a.bind(attn1);
        if let Some(at) = attn3 {
            a.bind(at);
        }
        if let Some(l) = &f.looping {
            // The loop head's registers that the block writes (a back
            // edge may have written them).
            for (s, &g) in l.map.iter().enumerate() {
                if g != 0 && l.written & 1 << g != 0 {
                    a.store(RBX, xd(g), CACHE_REGS[s]);
                }
            }
        }
        a.exit_pc(epi, pc, EXIT_ATTN);
        for &(at, j, dirty) in &f.attn_back {
            // A backward jump inside the block saw attention: leave at
            // its target, the jump retired (it added k + 1 - j).
            a.bind(at);
            a.flush_dirty(dirty);
            a.add_icount(j as u32);
            a.exit_pc(epi, pc.wrapping_add(insns[j].off as u64), EXIT_ATTN);
        }
        debug_assert!(f.forward.is_empty(), "every forward target is emitted");
        if !f.broken.is_empty() {
            return Err(f.broken);
        }
        // Group leaders whose check failed: bytes in two pages that one
        // addend reaches go on, others leave (see `dispatch::straddle`).
        for &(at, k, dirty, rejoin, store) in &f.leads {
            a.bind(at);
            a.call_abs(f.straddle[store as usize]);
            f.slow.push((a.jcc(CC_NE), k, dirty));
            a.jmp_abs(a.base + rejoin);
        }
        // Slow exits share a stub per instruction and dirty set; host
        // faults of inline accesses resume at the same stubs.
        let mut keys = std::mem::take(&mut sc.keys);
        keys.clear();
        keys.extend((f.slow.iter().chain(&f.faults)).map(|&(_, k, dirty)| (k, dirty)));
        keys.sort_unstable();
        keys.dedup();
        let mut stubs = std::mem::take(&mut sc.stubs);
        stubs.clear();
        for &(k, dirty) in &keys {
            stubs.push(a.b.len());
            a.flush_dirty(dirty);
            a.add_icount(k as u32);
            a.exit_pc(epi, pc.wrapping_add(insns[k].off as u64), EXIT_SLOW);
        }
        let stub = |k, dirty| keys.binary_search(&(k, dirty)).map(|i| stubs[i]);
        for &(at, k, dirty) in &f.slow {
            if let Ok(s) = stub(k, dirty) {
                let rel = (s - (at + 4)) as u32;
                a.b[at..at + 4].copy_from_slice(&rel.to_le_bytes());
            }
        }
        for &(off, k, dirty) in &f.faults {
            if let Ok(s) = stub(k, dirty) {
                self.sites.exits.push((a.base + off, a.base + s));
            }
        }
        self.scratch = Scratch {
            code: Vec::new(),
            offs: f.offs,
            merge: f.merge,
            back_last,
            fused,
            names: std::mem::take(&mut a.cache.names),
            labels: f.labels,
            claims: f.claims,
            slow: f.slow,
            keys,
            stubs,
            forced,
        };
        Ok(a.b)
    }
}
