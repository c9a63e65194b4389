//! The execution engine of a hart: the decoded-block cache, the JIT it
//! owns (x86-64 hosts), and the run loops that pick for each block between
//! translated code and the interpreter, and handle what happens between
//! blocks (attention requests, code and TLB flushes, interrupts, `wfi`).
//!
//! A block is a run of instructions within one page ending at the first
//! control-flow or state-changing instruction ([`Insn::ends_block`]). Blocks
//! live in one flat arena; a direct-mapped table maps a block key (virtual
//! pc in user mode, physical pc in system mode) to its index. Flushing is
//! O(1): the arena is cleared and stale table entries fail the key check.

use std::sync::atomic::Ordering;

use crate::block::{decode_block, push_end, translate_user, MAX_BLOCK, POLL_BLOCKS};
use crate::cpu::{attn, cause, Core, Exit, Trap};
use crate::decode::{Insn, Kind};
use crate::exec::{exec_block, Fault};
#[cfg(target_arch = "x86_64")]
use crate::jit;
use crate::mem::{Bus, UserSpace};
use crate::mmu::{SysMem, Tlb, UserMem};
use crate::PAGE_SIZE;

/// Direct-mapped block table size (power of two).
const MAP_SIZE: usize = 1 << 14;
/// Arena capacity before a full flush (bounded memory per hart).
const MAX_INSNS: usize = 1 << 20;

/// A cached block: where its decoded instructions live in the arena.
/// The direct-mapped table holds these inline, so a lookup is one load and
/// one compare.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    /// Block key (pc) with the cache epoch in the top byte.
    tag: u64,
    start: u32,
    count: u16,
    /// Instructions retired by a complete run (count minus the sentinel).
    retire: u16,
}

const NO_BLOCK: Block = Block {
    tag: u64::MAX,
    start: 0,
    count: 0,
    retire: 0,
};

/// Per-hart decoded-block cache.
pub(crate) struct Engine {
    map: Box<[Block; MAP_SIZE]>,
    insns: Vec<Insn>,
    /// Bumped by every flush so stale table entries stop matching; keys
    /// (user virtual or guest physical addresses) stay below 2^56.
    epoch: u64,
    /// Code generation (of the UserSpace or CodeMap) the cache matches.
    gen: u64,
    poll: u32,
    /// User mode translates blocks to host code (see `jit`) unless off.
    jit_on: bool,
    jit_threshold: u32,
    #[cfg(target_arch = "x86_64")]
    jit: Option<Box<jit::Jit>>,
}

/// User mode: how many times a block runs (in the interpreter) before it
/// is translated, unless [`Engine::set_jit_threshold`] says otherwise.
/// Start-up of a short process (busybox `ls`, 50 processes): 0.46 s of
/// CPU time translating every block on its first run, 0.20 s at 32, 0.18
/// s at 64, 0.17 s at 128 and with the interpreter alone; long runs do
/// not see the difference.
pub const DEFAULT_JIT_THRESHOLD: u32 = 64;

impl Engine {
    pub fn new() -> Self {
        Engine {
            map: vec![NO_BLOCK; MAP_SIZE]
                .into_boxed_slice()
                .try_into()
                .expect("MAP_SIZE entries"),
            insns: Vec::new(),
            epoch: 0,
            gen: 0,
            poll: POLL_BLOCKS,
            jit_on: cfg!(target_arch = "x86_64"),
            jit_threshold: DEFAULT_JIT_THRESHOLD,
            #[cfg(target_arch = "x86_64")]
            jit: None,
        }
    }

    /// Turns the user-mode JIT on or off (on by default on x86-64 hosts;
    /// elsewhere there is only the interpreter).
    pub fn set_jit(&mut self, on: bool) {
        self.jit_on = on && cfg!(target_arch = "x86_64");
        #[cfg(target_arch = "x86_64")]
        if !on {
            self.jit = None;
        }
    }

    pub fn jit_on(&self) -> bool {
        self.jit_on
    }

    /// User mode: a block is translated on its `n`th run (at least 1: on
    /// its first); before, the interpreter runs it.
    pub fn set_jit_threshold(&mut self, n: u32) {
        self.jit_threshold = n.max(1);
        #[cfg(target_arch = "x86_64")]
        if let Some(j) = self.jit.as_mut() {
            j.set_threshold(self.jit_threshold);
        }
    }

    pub fn jit_threshold(&self) -> u32 {
        self.jit_threshold
    }

    /// The hart's JIT, created on first use; `None` when it is off or the
    /// host refuses executable memory (then the interpreter runs alone).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn jit(&mut self) -> Option<&mut jit::Jit> {
        if !self.jit_on {
            return None;
        }
        if self.jit.is_none() {
            match jit::Jit::new(self.jit_threshold) {
                Some(j) => self.jit = Some(Box::new(j)),
                None => self.jit_on = false,
            }
        }
        self.jit.as_deref_mut()
    }

    /// Tests: slow exits of system-mode translated code so far.
    #[cfg(test)]
    pub(crate) fn jit_slow_exits(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        return self.jit.as_ref().map_or(0, |j| j.slow_exits);
        #[cfg(not(target_arch = "x86_64"))]
        0
    }

    /// System mode: runs translated code from `core.pc`. `false`: the
    /// interpreter must run the next block.
    #[inline(always)]
    fn run_jit_sys<B: Bus>(&mut self, core: &mut Core, mem: &mut SysMem<'_, B>) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let Some(j) = self.jit() else {
                return false;
            };
            let r = j.run_sys(core, mem);
            if j.take_fenced() {
                // Translated code ran a `fence.i` in place (and started
                // the JIT's new fence epoch itself).
                self.flush_decoded();
            }
            matches!(r, jit::JitExit::Yield)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (core, mem);
            false
        }
    }

    /// Runs translated code from `core.pc`. `false`: the interpreter must
    /// run the next block (a slow path, or no JIT).
    #[inline(always)]
    fn run_jit(&mut self, core: &mut Core, space: &UserSpace) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self
            .jit()
            .is_some_and(|j| matches!(j.run(core, space), jit::JitExit::Yield));
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (core, space);
            false
        }
    }

    pub fn flush(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Some(j) = self.jit.as_mut() {
            j.fence_i();
        }
        self.flush_decoded();
    }

    /// Drops the interpreter's decoded blocks only (the JIT follows code
    /// changes page by page itself, see `Jit::run_sys`).
    fn flush_decoded(&mut self) {
        self.insns.clear();
        self.epoch = (self.epoch + 1) & 0xff;
        if self.epoch == 0 {
            self.map.fill(NO_BLOCK);
        }
    }

    #[inline(always)]
    fn slot(key: u64) -> usize {
        ((key >> 1) ^ (key >> 15)) as usize & (MAP_SIZE - 1)
    }

    #[inline(always)]
    fn lookup(&self, key: u64) -> Option<Block> {
        let b = self.map[Self::slot(key)];
        (b.tag == key | (self.epoch << 56)).then_some(b)
    }

    #[cold]
    #[inline(never)]
    fn insert(&mut self, key: u64, insns: &[Insn]) -> Block {
        if self.insns.len() + insns.len() > MAX_INSNS {
            // The interpreter's store is full: its blocks go, the JIT's
            // translations (and counts) stay.
            self.flush_decoded();
        }
        let sentinel = insns.last().is_some_and(|i| i.kind == Kind::BlockEnd);
        let b = Block {
            tag: key | (self.epoch << 56),
            start: self.insns.len() as u32,
            count: insns.len() as u16,
            retire: insns.len() as u16 - sentinel as u16,
        };
        self.insns.extend_from_slice(insns);
        self.map[Self::slot(key)] = b;
        b
    }
}

/// The user-mode run loop of [`crate::Hart::run_user`].
pub(crate) fn run_user(core: &mut Core, engine: &mut Engine, space: &UserSpace) -> Exit {
    let mut mem = UserMem::new(space);
    let mut buf = Vec::with_capacity(MAX_BLOCK);
    loop {
        if core.control.attention() != 0 || core.recheck {
            core.recheck = false;
            let a = core.control.take_attention();
            if a & attn::FLUSH_CODE != 0 || core.code_dirty {
                core.code_dirty = false;
                engine.flush();
            }
            if a & attn::STOP != 0 {
                core.res_addr = u64::MAX;
                return Exit::Stopped;
            }
        }
        // Translated code runs until it needs the interpreter for one
        // block (a slow path) or the checks above.
        if engine.run_jit(core, space) {
            continue;
        }
        let g = space.code_gen();
        if g != engine.gen {
            engine.gen = g;
            engine.flush();
        }
        let pc = core.pc;
        let block = match engine.lookup(pc) {
            Some(b) => b,
            None => match translate_user(space, pc, &mut buf) {
                Ok(()) => engine.insert(pc, &buf),
                Err(t) => {
                    core.res_addr = u64::MAX;
                    return t.to_exit();
                }
            },
        };
        let first = block.start as usize;
        let insns = &engine.insns[first..first + block.count as usize];
        match exec_block(core, &mut mem, insns, pc) {
            Ok(next) => {
                core.pc = next;
                core.instret += block.retire as u64;
            }
            Err((t, at, n)) => {
                core.pc = at;
                core.instret += n as u64;
                core.res_addr = u64::MAX;
                return t.to_exit();
            }
        }
    }
}

/// The system-mode run loop of [`crate::Hart::run_system`].
pub(crate) fn run_system<B: Bus>(
    core: &mut Core,
    engine: &mut Engine,
    tlb: &mut Tlb,
    bus: &B,
) -> Exit {
    let code_map = bus.code_map();
    let mut mem = SysMem::new(bus, tlb);
    mem.update_modes(core);
    let mut buf = Vec::with_capacity(MAX_BLOCK);
    core.recheck = true;
    loop {
        engine.poll = engine.poll.wrapping_sub(1);
        if core.recheck || engine.poll == 0 || core.control.attention() != 0 {
            if let Some(e) = service(core, engine, &mut mem) {
                return e;
            }
        }
        // Translated code runs until it needs the interpreter for one
        // block or the run loop's checks.
        if engine.run_jit_sys(core, &mut mem) {
            core.recheck = true;
            continue;
        }
        let g = code_map.generation();
        if g != engine.gen {
            engine.gen = g;
            engine.flush_decoded();
        }
        let pc = core.pc;
        let (pa, host) = match mem.translate_fetch(core, pc) {
            Ok(v) => v,
            Err(t) => {
                core.take_trap(t);
                mem.update_modes(core);
                continue;
            }
        };
        let block = match engine.lookup(pa) {
            Some(b) => b,
            None => {
                let cached = match host {
                    Some(h) => {
                        if let Some(slot) = code_map.slot(pa) {
                            slot.store(1, Ordering::SeqCst);
                        }
                        let page_off = pa & !(PAGE_SIZE - 1);
                        let crosses = decode_block(pc, &mut buf, |a| {
                            let off = a - (pc & !(PAGE_SIZE - 1));
                            // SAFETY: `h` points at guest RAM backing the
                            // page of `pa`; `off` stays inside that page.
                            unsafe {
                                h.sub((pa - page_off) as usize)
                                    .add(off as usize)
                                    .cast::<u16>()
                                    .read_unaligned()
                            }
                        });
                        !crosses
                    }
                    None => false,
                };
                if cached {
                    engine.insert(pa, &buf)
                } else {
                    // MMIO code or an instruction crossing a page:
                    // fetch and run one instruction, uncached.
                    match mem.fetch_slow(core, pc) {
                        Ok(insn) => {
                            buf.clear();
                            buf.push(insn);
                            if !insn.ends_block() {
                                push_end(&mut buf, insn.size() as u64);
                            }
                        }
                        Err(t) => {
                            core.take_trap(t);
                            mem.update_modes(core);
                            continue;
                        }
                    }
                    let r = exec_block(core, &mut mem, &buf, pc);
                    if let Some(e) = finish(core, &mut mem, r, 1) {
                        return e;
                    }
                    continue;
                }
            }
        };
        let first = block.start as usize;
        let insns = &engine.insns[first..first + block.count as usize];
        let r = exec_block(core, &mut mem, insns, pc);
        if let Some(e) = finish(core, &mut mem, r, block.retire as u32) {
            return e;
        }
    }
}

/// Handles the end of a system-mode block.
fn finish<B: Bus>(
    core: &mut Core,
    mem: &mut SysMem<'_, B>,
    r: Result<u64, Fault>,
    count: u32,
) -> Option<Exit> {
    match r {
        Ok(next) => {
            core.pc = next;
            core.instret += count as u64;
            None
        }
        Err((t, at, n)) => {
            core.pc = at;
            core.instret += n as u64;
            if t.cause == cause::ECALL_S && core.sbi_ecalls {
                return Some(Exit::Ecall);
            }
            core.take_trap(t);
            mem.update_modes(core);
            None
        }
    }
}

/// System-mode slow path at a block boundary: remote requests, TLB and
/// code flushes, `wfi`, interrupts, stop requests.
fn service<B: Bus>(core: &mut Core, engine: &mut Engine, mem: &mut SysMem<'_, B>) -> Option<Exit> {
    loop {
        core.recheck = false;
        engine.poll = POLL_BLOCKS;
        let a = core.control.take_attention();
        if a & attn::FLUSH_TLB != 0 || core.tlb_dirty {
            core.tlb_dirty = false;
            core.tlb_flush_va = None;
            mem.flush();
        } else if let Some(va) = core.tlb_flush_va.take() {
            mem.flush_page(va);
        }
        if a & attn::FLUSH_CODE != 0 || core.code_dirty {
            core.code_dirty = false;
            engine.flush();
        }
        let posted = core.control.take_posted();
        if posted != 0 {
            core.csr.mip |= posted;
        }
        mem.update_modes(core);
        if a & attn::STOP != 0 {
            return Some(Exit::Stopped);
        }
        if let Some(code) = core.pending_interrupt() {
            core.wfi = false;
            core.take_trap(Trap {
                cause: cause::INTERRUPT | code,
                tval: 0,
            });
            core.tlb_dirty = false;
            mem.update_modes(core);
            return None;
        }
        if core.wfi {
            if core.mip() & core.csr.mie != 0 {
                // Pending but globally disabled: wfi completes.
                core.wfi = false;
                return None;
            }
            let deadline = core.next_deadline(core.csr.mie);
            let timeout = (deadline != u64::MAX).then(|| core.clock.until(deadline));
            if timeout != Some(std::time::Duration::ZERO) {
                core.control.sleep(timeout);
            }
            continue;
        }
        return None;
    }
}
