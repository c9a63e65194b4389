//! The execution engine: decoded-block cache and the interpreter loop.
//!
//! A block is a run of instructions within one page ending at the first
//! control-flow or state-changing instruction ([`Insn::ends_block`]). Blocks
//! live in one flat arena; a direct-mapped table maps a block key (virtual
//! pc in user mode, physical pc in system mode) to its index. Flushing is
//! O(1): the arena is cleared and stale table entries fail the key check.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

use crate::decode::{decode, decode_c, Insn, Kind};
use crate::fpu;
use crate::hart::{attn, cause, Core, Exit, Hart, Priv, Trap};
use crate::mem::{perm, Bus, UserSpace};
use crate::mmu::{SysMem, UserMem};
use crate::PAGE_SIZE;

/// Longest block, in instructions.
pub(crate) const MAX_BLOCK: usize = 96;
/// Direct-mapped block table size (power of two).
const MAP_SIZE: usize = 1 << 14;
/// Arena capacity before a full flush (bounded memory per hart).
const MAX_INSNS: usize = 1 << 20;
/// Blocks between timer polls in system mode.
pub(crate) const POLL_BLOCKS: u32 = 2048;

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
    #[cfg(target_arch = "x86_64")]
    jit: Option<Box<crate::jit::Jit>>,
}

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

    /// The hart's JIT, created on first use; `None` when it is off or the
    /// host refuses executable memory (then the interpreter runs alone).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn jit(&mut self) -> Option<&mut crate::jit::Jit> {
        if !self.jit_on {
            return None;
        }
        if self.jit.is_none() {
            match crate::jit::Jit::new() {
                Some(j) => self.jit = Some(Box::new(j)),
                None => self.jit_on = false,
            }
        }
        self.jit.as_deref_mut()
    }

    /// System mode: runs translated code from `core.pc`. `false`: the
    /// interpreter must run the next block.
    #[inline(always)]
    fn run_jit_sys<B: Bus>(&mut self, core: &mut Core, mem: &mut SysMem<'_, B>) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self
            .jit()
            .is_some_and(|j| matches!(j.run_sys(core, mem), crate::jit::JitExit::Yield));
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
            .is_some_and(|j| matches!(j.run(core, space), crate::jit::JitExit::Yield));
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
            self.flush();
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

/// Memory as the interpreter sees it (user flat space or MMU + bus).
pub(crate) trait Mem {
    /// Loads `N` bytes (1, 2, 4, 8), zero-extended.
    fn load<const N: usize>(&mut self, core: &mut Core, va: u64) -> Result<u64, Trap>;
    /// Stores the low `N` bytes of `v`.
    fn store<const N: usize>(&mut self, core: &mut Core, va: u64, v: u64) -> Result<(), Trap>;
    /// Host pointer for an aligned atomic access of `N` bytes to RAM
    /// (`store`: the access writes).
    fn atomic<const N: usize>(
        &mut self,
        core: &mut Core,
        va: u64,
        store: bool,
    ) -> Result<*mut u8, Trap>;
}

type Fault = (Trap, u64, u32);

#[inline(always)]
fn sx32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

/// Executes one block. Returns the next pc, or the trap with the pc of the
/// trapping instruction and the number of instructions retired before it.
#[inline(always)]
pub(crate) fn exec_block<M: Mem>(
    core: &mut Core,
    mem: &mut M,
    insns: &[Insn],
    start: u64,
) -> Result<u64, Fault> {
    macro_rules! x {
        ($r:expr) => {
            core.x[($r as usize) & 63]
        };
    }
    // Every block ends with an instruction whose arm returns (a
    // terminator, see `Insn::ends_block`, or the BlockEnd sentinel). With
    // that checked once here, the loop needs no end test and no counter.
    if !insns.last().is_some_and(Insn::ends_block) {
        return Ok(start);
    }
    let base = insns.as_ptr();
    let mut p = base;
    loop {
        // SAFETY: `p` stays inside `insns`: the last element's arm returns,
        // so the loop never advances past it.
        let i = unsafe { &*p };
        // SAFETY: at most one past an element of `insns` (see above).
        p = unsafe { p.add(1) };
        // Instructions retired before this one (only needed on traps).
        // SAFETY: both pointers are inside (or one past) `insns`.
        let n = || unsafe { p.offset_from(base) as u32 - 1 };
        macro_rules! trap {
            ($t:expr) => {
                return Err(($t, pc!(), n()))
            };
        }
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(t) => trap!(t),
                }
            };
        }
        // Operands are macros, not locals, so each arm loads only what it
        // uses (hoisted loads cost every instruction).
        macro_rules! pc {
            () => {
                start.wrapping_add(i.off as u64)
            };
        }
        macro_rules! next {
            () => {
                pc!().wrapping_add(i.size() as u64)
            };
        }
        macro_rules! wr {
            ($v:expr) => {{
                let v = $v;
                x!(i.rd) = v;
            }};
        }
        macro_rules! branch {
            ($c:expr) => {{
                return Ok(if $c {
                    pc!().wrapping_add(imm!())
                } else {
                    next!()
                });
            }};
        }
        macro_rules! ill {
            () => {
                trap!(Trap::illegal(i.raw))
            };
        }
        macro_rules! fp_on {
            () => {
                if core.fs_off() {
                    ill!();
                }
            };
        }
        macro_rules! rm {
            () => {{
                fp_on!();
                let rm = if i.rm == 7 { core.frm } else { i.rm as u64 };
                if rm > 4 {
                    ill!();
                }
                fpu::begin(rm);
            }};
        }
        macro_rules! fdone {
            () => {{
                core.fflags |= fpu::flags();
                core.set_fs_dirty();
            }};
        }
        macro_rules! fs1 {
            () => {
                fpu::unbox(core.f[(i.rs1 & 31) as usize])
            };
        }
        macro_rules! fs2 {
            () => {
                fpu::unbox(core.f[(i.rs2 & 31) as usize])
            };
        }
        macro_rules! fs3 {
            () => {
                fpu::unbox(core.f[(i.rs3 & 31) as usize])
            };
        }
        macro_rules! fd1 {
            () => {
                core.f[(i.rs1 & 31) as usize]
            };
        }
        macro_rules! fd2 {
            () => {
                core.f[(i.rs2 & 31) as usize]
            };
        }
        macro_rules! fd3 {
            () => {
                core.f[(i.rs3 & 31) as usize]
            };
        }
        macro_rules! fwr_s {
            ($v:expr) => {{
                let v = $v;
                core.f[(i.rd & 31) as usize] = fpu::boxs(v);
            }};
        }
        macro_rules! fwr_d {
            ($v:expr) => {{
                let v = $v;
                core.f[(i.rd & 31) as usize] = v;
            }};
        }
        macro_rules! amo {
            ($n:literal, $atomic:ty, $op:ident, $val:expr, $ext:expr) => {{
                let p = tri!(mem.atomic::<$n>(core, rs1!(), true));
                // SAFETY: `atomic` returned a host pointer to N bytes of
                // guest RAM aligned to N, valid while the mapping lives.
                let a = unsafe { <$atomic>::from_ptr(p.cast()) };
                let old = a.$op($val, Ordering::SeqCst);
                wr!($ext(old));
            }};
        }
        macro_rules! rs1 {
            () => {
                x!(i.rs1)
            };
        }
        macro_rules! rs2 {
            () => {
                x!(i.rs2)
            };
        }
        macro_rules! imm {
            () => {
                (i.imm as i64 as u64)
            };
        }
        use Kind::*;
        match i.kind {
            Illegal => ill!(),
            BlockEnd => return Ok(pc!()),
            Lui => wr!(imm!()),
            Auipc => wr!(pc!().wrapping_add(imm!())),
            Jal => {
                wr!(next!());
                return Ok(pc!().wrapping_add(imm!()));
            }
            Jalr => {
                let t = rs1!().wrapping_add(imm!()) & !1;
                wr!(next!());
                return Ok(t);
            }
            Beq => branch!(rs1!() == rs2!()),
            Bne => branch!(rs1!() != rs2!()),
            Blt => branch!((rs1!() as i64) < (rs2!() as i64)),
            Bge => branch!((rs1!() as i64) >= (rs2!() as i64)),
            Bltu => branch!(rs1!() < rs2!()),
            Bgeu => branch!(rs1!() >= rs2!()),
            Lb => wr!(tri!(mem.load::<1>(core, rs1!().wrapping_add(imm!()))) as i8 as u64),
            Lh => wr!(tri!(mem.load::<2>(core, rs1!().wrapping_add(imm!()))) as i16 as u64),
            Lw => wr!(tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!()))) as i32 as u64),
            Ld => wr!(tri!(mem.load::<8>(core, rs1!().wrapping_add(imm!())))),
            Lbu => wr!(tri!(mem.load::<1>(core, rs1!().wrapping_add(imm!())))),
            Lhu => wr!(tri!(mem.load::<2>(core, rs1!().wrapping_add(imm!())))),
            Lwu => wr!(tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!())))),
            Sb => tri!(mem.store::<1>(core, rs1!().wrapping_add(imm!()), rs2!())),
            Sh => tri!(mem.store::<2>(core, rs1!().wrapping_add(imm!()), rs2!())),
            Sw => tri!(mem.store::<4>(core, rs1!().wrapping_add(imm!()), rs2!())),
            Sd => tri!(mem.store::<8>(core, rs1!().wrapping_add(imm!()), rs2!())),
            Addi => wr!(rs1!().wrapping_add(imm!())),
            Slti => wr!(((rs1!() as i64) < (imm!() as i64)) as u64),
            Sltiu => wr!((rs1!() < imm!()) as u64),
            Xori => wr!(rs1!() ^ imm!()),
            Ori => wr!(rs1!() | imm!()),
            Andi => wr!(rs1!() & imm!()),
            Slli => wr!(rs1!() << (imm!() & 63)),
            Srli => wr!(rs1!() >> (imm!() & 63)),
            Srai => wr!(((rs1!() as i64) >> (imm!() & 63)) as u64),
            Add => wr!(rs1!().wrapping_add(rs2!())),
            Sub => wr!(rs1!().wrapping_sub(rs2!())),
            Sll => wr!(rs1!() << (rs2!() & 63)),
            Slt => wr!(((rs1!() as i64) < (rs2!() as i64)) as u64),
            Sltu => wr!((rs1!() < rs2!()) as u64),
            Xor => wr!(rs1!() ^ rs2!()),
            Srl => wr!(rs1!() >> (rs2!() & 63)),
            Sra => wr!(((rs1!() as i64) >> (rs2!() & 63)) as u64),
            Or => wr!(rs1!() | rs2!()),
            And => wr!(rs1!() & rs2!()),
            Addiw => wr!(sx32(rs1!().wrapping_add(imm!()))),
            Slliw => wr!(sx32(((rs1!() as u32) << (imm!() & 31)) as u64)),
            Srliw => wr!(sx32(((rs1!() as u32) >> (imm!() & 31)) as u64)),
            Sraiw => wr!(((rs1!() as i32) >> (imm!() & 31)) as i64 as u64),
            Addw => wr!(sx32(rs1!().wrapping_add(rs2!()))),
            Subw => wr!(sx32(rs1!().wrapping_sub(rs2!()))),
            Sllw => wr!(sx32(((rs1!() as u32) << (rs2!() & 31)) as u64)),
            Srlw => wr!(sx32(((rs1!() as u32) >> (rs2!() & 31)) as u64)),
            Sraw => wr!(((rs1!() as i32) >> (rs2!() & 31)) as i64 as u64),
            Fence => {
                // x86-64 (TSO) keeps every order RVWMO asks of a fence except
                // a store followed by a load: that one needs a real barrier
                // (Linux's smp_mb() is `fence rw,rw`; without it Dekker-style
                // handshakes between harts, e.g. wake-ups and IPI hand-offs,
                // can both miss each other). fence.tso (fm=1000) never orders
                // store->load, and other fences only need the compiler not to
                // move guest accesses across them.
                let pred = (i.raw >> 24) & 0xf;
                let succ = (i.raw >> 20) & 0xf;
                let tso = i.raw >> 28 == 0b1000;
                if !tso && pred & 0b0101 != 0 && succ & 0b1010 != 0 {
                    std::sync::atomic::fence(Ordering::SeqCst);
                } else {
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                }
            }
            FenceI => {
                core.code_dirty = true;
                core.recheck = true;
                return Ok(next!());
            }
            Ecall => trap!(Trap {
                cause: match core.prv {
                    Priv::User => cause::ECALL_U,
                    Priv::Supervisor => cause::ECALL_S,
                    Priv::Machine => cause::ECALL_M,
                },
                tval: 0,
            }),
            Ebreak => trap!(Trap {
                cause: cause::BREAKPOINT,
                tval: pc!(),
            }),
            Mret => {
                if core.user_only {
                    ill!();
                }
                return match core.do_mret() {
                    Ok(t) => Ok(t),
                    Err(t) => Err((t, pc!(), n())),
                };
            }
            Sret => {
                if core.user_only {
                    ill!();
                }
                return match core.do_sret() {
                    Ok(t) => Ok(t),
                    Err(t) => Err((t, pc!(), n())),
                };
            }
            Wfi => {
                use crate::hart::mstatus;
                if core.user_only
                    || core.prv == Priv::User
                    || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TW != 0)
                {
                    ill!();
                }
                core.wfi = true;
                core.recheck = true;
                return Ok(next!());
            }
            SfenceVma => {
                use crate::hart::mstatus;
                if core.user_only
                    || core.prv == Priv::User
                    || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TVM != 0)
                {
                    ill!();
                }
                core.tlb_dirty = true;
                core.recheck = true;
                return Ok(next!());
            }
            Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci => {
                let n16 = i.imm as u16;
                let src = if matches!(i.kind, Csrrw | Csrrs | Csrrc) {
                    rs1!()
                } else {
                    i.rs1 as u64
                };
                // csrrw with rd=x0 does not read; csrrs/c with rs1!()=x0 do not write.
                let writes = matches!(i.kind, Csrrw | Csrrwi) || i.rs1 != 0;
                let reads = !(matches!(i.kind, Csrrw | Csrrwi) && i.rd == crate::decode::ZERO_SINK);
                // Counters: retire the block's earlier instructions now so a
                // read sees them; a write of minstret/mcycle suppresses the
                // increment of the writing instruction (the block's last).
                core.instret = core.instret.wrapping_add(n() as u64);
                let old = if reads {
                    match core.csr_read(n16) {
                        Ok(v) => v,
                        Err(()) => {
                            core.instret = core.instret.wrapping_sub(n() as u64);
                            ill!()
                        }
                    }
                } else {
                    0
                };
                if writes {
                    let new = match i.kind {
                        Csrrw | Csrrwi => src,
                        Csrrs | Csrrsi => core.csr_rmw_base(n16, old) | src,
                        _ => core.csr_rmw_base(n16, old) & !src,
                    };
                    if core.csr_write(n16, new).is_err() {
                        core.instret = core.instret.wrapping_sub(n() as u64);
                        ill!();
                    }
                    core.recheck = true;
                }
                let counter_written =
                    writes && matches!(n16, crate::csr::MINSTRET | crate::csr::MCYCLE);
                let retired = n() as u64 + counter_written as u64;
                core.instret = core.instret.wrapping_sub(retired);
                wr!(old);
                return Ok(next!());
            }
            Mul => wr!(rs1!().wrapping_mul(rs2!())),
            Mulh => wr!(((rs1!() as i64 as i128 * rs2!() as i64 as i128) >> 64) as u64),
            Mulhsu => wr!(((rs1!() as i64 as i128).wrapping_mul(rs2!() as i128) >> 64) as u64),
            Mulhu => wr!(((rs1!() as u128 * rs2!() as u128) >> 64) as u64),
            Div => wr!(if rs2!() == 0 {
                u64::MAX
            } else {
                (rs1!() as i64).wrapping_div(rs2!() as i64) as u64
            }),
            Divu => wr!(rs1!().checked_div(rs2!()).unwrap_or(u64::MAX)),
            Rem => wr!(if rs2!() == 0 {
                rs1!()
            } else {
                (rs1!() as i64).wrapping_rem(rs2!() as i64) as u64
            }),
            Remu => wr!(if rs2!() == 0 { rs1!() } else { rs1!() % rs2!() }),
            Mulw => wr!(sx32(rs1!().wrapping_mul(rs2!()))),
            Divw => wr!(if rs2!() as u32 == 0 {
                u64::MAX
            } else {
                (rs1!() as i32).wrapping_div(rs2!() as i32) as i64 as u64
            }),
            Divuw => wr!((rs1!() as u32)
                .checked_div(rs2!() as u32)
                .map_or(u64::MAX, |q| sx32(q as u64))),
            Remw => wr!(if rs2!() as u32 == 0 {
                sx32(rs1!())
            } else {
                (rs1!() as i32).wrapping_rem(rs2!() as i32) as i64 as u64
            }),
            Remuw => wr!(if rs2!() as u32 == 0 {
                sx32(rs1!())
            } else {
                sx32(((rs1!() as u32) % (rs2!() as u32)) as u64)
            }),
            LrW => {
                let p = tri!(mem.atomic::<4>(core, rs1!(), false));
                // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                let v = unsafe { AtomicU32::from_ptr(p.cast()) }.load(Ordering::SeqCst);
                core.res_addr = rs1!();
                core.res_val = v as u64;
                wr!(sx32(v as u64));
            }
            LrD => {
                let p = tri!(mem.atomic::<8>(core, rs1!(), false));
                // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                let v = unsafe { AtomicU64::from_ptr(p.cast()) }.load(Ordering::SeqCst);
                core.res_addr = rs1!();
                core.res_val = v;
                wr!(v);
            }
            ScW => {
                if rs1!() & 3 != 0 {
                    trap!(Trap {
                        cause: cause::STORE_MISALIGNED,
                        tval: rs1!()
                    });
                }
                let ok = if core.res_addr == rs1!() {
                    let p = tri!(mem.atomic::<4>(core, rs1!(), true));
                    // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                    unsafe { AtomicU32::from_ptr(p.cast()) }
                        .compare_exchange(
                            core.res_val as u32,
                            rs2!() as u32,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok()
                } else {
                    false
                };
                core.res_addr = u64::MAX;
                wr!(!ok as u64);
            }
            ScD => {
                if rs1!() & 7 != 0 {
                    trap!(Trap {
                        cause: cause::STORE_MISALIGNED,
                        tval: rs1!()
                    });
                }
                let ok = if core.res_addr == rs1!() {
                    let p = tri!(mem.atomic::<8>(core, rs1!(), true));
                    // SAFETY: aligned host pointer to guest RAM (see `amo!`).
                    unsafe { AtomicU64::from_ptr(p.cast()) }
                        .compare_exchange(core.res_val, rs2!(), Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                } else {
                    false
                };
                core.res_addr = u64::MAX;
                wr!(!ok as u64);
            }
            AmoSwapW => amo!(4, AtomicU32, swap, rs2!() as u32, |v: u32| sx32(v as u64)),
            AmoAddW => amo!(4, AtomicU32, fetch_add, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoXorW => amo!(4, AtomicU32, fetch_xor, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoAndW => amo!(4, AtomicU32, fetch_and, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoOrW => amo!(4, AtomicU32, fetch_or, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoMinW => amo!(4, AtomicI32, fetch_min, rs2!() as i32, |v: i32| v as i64
                as u64),
            AmoMaxW => amo!(4, AtomicI32, fetch_max, rs2!() as i32, |v: i32| v as i64
                as u64),
            AmoMinuW => amo!(4, AtomicU32, fetch_min, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoMaxuW => amo!(4, AtomicU32, fetch_max, rs2!() as u32, |v: u32| sx32(
                v as u64
            )),
            AmoSwapD => amo!(8, AtomicU64, swap, rs2!(), |v: u64| v),
            AmoAddD => amo!(8, AtomicU64, fetch_add, rs2!(), |v: u64| v),
            AmoXorD => amo!(8, AtomicU64, fetch_xor, rs2!(), |v: u64| v),
            AmoAndD => amo!(8, AtomicU64, fetch_and, rs2!(), |v: u64| v),
            AmoOrD => amo!(8, AtomicU64, fetch_or, rs2!(), |v: u64| v),
            AmoMinD => amo!(8, AtomicI64, fetch_min, rs2!() as i64, |v: i64| v as u64),
            AmoMaxD => amo!(8, AtomicI64, fetch_max, rs2!() as i64, |v: i64| v as u64),
            AmoMinuD => amo!(8, AtomicU64, fetch_min, rs2!(), |v: u64| v),
            AmoMaxuD => amo!(8, AtomicU64, fetch_max, rs2!(), |v: u64| v),
            // ---- F / D ----
            Flw => {
                fp_on!();
                let v = tri!(mem.load::<4>(core, rs1!().wrapping_add(imm!())));
                fwr_s!(v as u32);
                core.set_fs_dirty();
            }
            Fld => {
                fp_on!();
                let v = tri!(mem.load::<8>(core, rs1!().wrapping_add(imm!())));
                fwr_d!(v);
                core.set_fs_dirty();
            }
            Fsw => {
                fp_on!();
                let v = fd2!();
                tri!(mem.store::<4>(core, rs1!().wrapping_add(imm!()), v));
            }
            Fsd => {
                fp_on!();
                let v = fd2!();
                tri!(mem.store::<8>(core, rs1!().wrapping_add(imm!()), v));
            }
            FaddS => {
                rm!();
                fwr_s!(fpu::add_s(fs1!(), fs2!()));
                fdone!();
            }
            FsubS => {
                rm!();
                fwr_s!(fpu::sub_s(fs1!(), fs2!()));
                fdone!();
            }
            FmulS => {
                rm!();
                fwr_s!(fpu::mul_s(fs1!(), fs2!()));
                fdone!();
            }
            FdivS => {
                rm!();
                fwr_s!(fpu::div_s(fs1!(), fs2!()));
                fdone!();
            }
            FsqrtS => {
                rm!();
                fwr_s!(fpu::sqrt_s(fs1!()));
                fdone!();
            }
            FmaddS => {
                rm!();
                fwr_s!(fpu::fma_s(fs1!(), fs2!(), fs3!()));
                fdone!();
            }
            FmsubS => {
                rm!();
                fwr_s!(fpu::fma_s(fs1!(), fs2!(), fs3!() ^ fpu::SIGN_S));
                fdone!();
            }
            FnmsubS => {
                rm!();
                fwr_s!(fpu::fma_s(fs1!() ^ fpu::SIGN_S, fs2!(), fs3!()));
                fdone!();
            }
            FnmaddS => {
                rm!();
                fwr_s!(fpu::fma_s(
                    fs1!() ^ fpu::SIGN_S,
                    fs2!(),
                    fs3!() ^ fpu::SIGN_S
                ));
                fdone!();
            }
            FaddD => {
                rm!();
                fwr_d!(fpu::add_d(fd1!(), fd2!()));
                fdone!();
            }
            FsubD => {
                rm!();
                fwr_d!(fpu::sub_d(fd1!(), fd2!()));
                fdone!();
            }
            FmulD => {
                rm!();
                fwr_d!(fpu::mul_d(fd1!(), fd2!()));
                fdone!();
            }
            FdivD => {
                rm!();
                fwr_d!(fpu::div_d(fd1!(), fd2!()));
                fdone!();
            }
            FsqrtD => {
                rm!();
                fwr_d!(fpu::sqrt_d(fd1!()));
                fdone!();
            }
            FmaddD => {
                rm!();
                fwr_d!(fpu::fma_d(fd1!(), fd2!(), fd3!()));
                fdone!();
            }
            FmsubD => {
                rm!();
                fwr_d!(fpu::fma_d(fd1!(), fd2!(), fd3!() ^ fpu::SIGN_D));
                fdone!();
            }
            FnmsubD => {
                rm!();
                fwr_d!(fpu::fma_d(fd1!() ^ fpu::SIGN_D, fd2!(), fd3!()));
                fdone!();
            }
            FnmaddD => {
                rm!();
                fwr_d!(fpu::fma_d(
                    fd1!() ^ fpu::SIGN_D,
                    fd2!(),
                    fd3!() ^ fpu::SIGN_D
                ));
                fdone!();
            }
            FsgnjS | FsgnjnS | FsgnjxS => {
                fp_on!();
                let (a, b) = (fs1!(), fs2!());
                let s = match i.kind {
                    FsgnjS => b,
                    FsgnjnS => !b,
                    _ => a ^ b,
                } & fpu::SIGN_S;
                fwr_s!((a & !fpu::SIGN_S) | s);
                core.set_fs_dirty();
            }
            FsgnjD | FsgnjnD | FsgnjxD => {
                fp_on!();
                let (a, b) = (fd1!(), fd2!());
                let s = match i.kind {
                    FsgnjD => b,
                    FsgnjnD => !b,
                    _ => a ^ b,
                } & fpu::SIGN_D;
                fwr_d!((a & !fpu::SIGN_D) | s);
                core.set_fs_dirty();
            }
            FminS | FmaxS => {
                fp_on!();
                fpu::begin(0);
                fwr_s!(fpu::minmax_s(fs1!(), fs2!(), i.kind == FmaxS));
                fdone!();
            }
            FminD | FmaxD => {
                fp_on!();
                fpu::begin(0);
                fwr_d!(fpu::minmax_d(fd1!(), fd2!(), i.kind == FmaxD));
                fdone!();
            }
            FcvtWS | FcvtWuS | FcvtLS | FcvtLuS => {
                rm!();
                let k = i.kind as u8 - FcvtWS as u8;
                wr!(fpu::to_int_s(fs1!(), k));
                fdone!();
            }
            FcvtWD | FcvtWuD | FcvtLD | FcvtLuD => {
                rm!();
                let k = i.kind as u8 - FcvtWD as u8;
                wr!(fpu::to_int_d(fd1!(), k));
                fdone!();
            }
            FcvtSW | FcvtSWu | FcvtSL | FcvtSLu => {
                rm!();
                let k = i.kind as u8 - FcvtSW as u8;
                fwr_s!(fpu::from_int_s(rs1!(), k));
                fdone!();
            }
            FcvtDW | FcvtDWu | FcvtDL | FcvtDLu => {
                rm!();
                let k = i.kind as u8 - FcvtDW as u8;
                fwr_d!(fpu::from_int_d(rs1!(), k));
                fdone!();
            }
            FcvtSD => {
                rm!();
                fwr_s!(fpu::d_to_s(fd1!()));
                fdone!();
            }
            FcvtDS => {
                rm!();
                fwr_d!(fpu::s_to_d(fs1!()));
                fdone!();
            }
            FmvXW => {
                fp_on!();
                wr!(sx32(fd1!()));
            }
            FmvXD => {
                fp_on!();
                wr!(fd1!());
            }
            FmvWX => {
                fp_on!();
                fwr_s!(rs1!() as u32);
                core.set_fs_dirty();
            }
            FmvDX => {
                fp_on!();
                fwr_d!(rs1!());
                core.set_fs_dirty();
            }
            FeqS | FltS | FleS => {
                fp_on!();
                fpu::begin(0);
                let op = match i.kind {
                    FeqS => 0,
                    FltS => 1,
                    _ => 2,
                };
                wr!(fpu::cmp_s(fs1!(), fs2!(), op));
                fdone!();
            }
            FeqD | FltD | FleD => {
                fp_on!();
                fpu::begin(0);
                let op = match i.kind {
                    FeqD => 0,
                    FltD => 1,
                    _ => 2,
                };
                wr!(fpu::cmp_d(fd1!(), fd2!(), op));
                fdone!();
            }
            FclassS => {
                fp_on!();
                wr!(fpu::class_s(fs1!()));
            }
            FclassD => {
                fp_on!();
                wr!(fpu::class_d(fd1!()));
            }
            // ---- Zba ----
            AddUw => wr!(rs2!().wrapping_add(rs1!() as u32 as u64)),
            Sh1add => wr!(rs2!().wrapping_add(rs1!() << 1)),
            Sh2add => wr!(rs2!().wrapping_add(rs1!() << 2)),
            Sh3add => wr!(rs2!().wrapping_add(rs1!() << 3)),
            Sh1addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 1)),
            Sh2addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 2)),
            Sh3addUw => wr!(rs2!().wrapping_add((rs1!() as u32 as u64) << 3)),
            SlliUw => wr!((rs1!() as u32 as u64) << (imm!() & 63)),
            // ---- Zbb ----
            Andn => wr!(rs1!() & !rs2!()),
            Orn => wr!(rs1!() | !rs2!()),
            Xnor => wr!(!(rs1!() ^ rs2!())),
            Clz => wr!(rs1!().leading_zeros() as u64),
            Clzw => wr!((rs1!() as u32).leading_zeros() as u64),
            Ctz => wr!(rs1!().trailing_zeros() as u64),
            Ctzw => wr!((rs1!() as u32).trailing_zeros() as u64),
            Cpop => wr!(rs1!().count_ones() as u64),
            Cpopw => wr!((rs1!() as u32).count_ones() as u64),
            Max => wr!((rs1!() as i64).max(rs2!() as i64) as u64),
            Maxu => wr!(rs1!().max(rs2!())),
            Min => wr!((rs1!() as i64).min(rs2!() as i64) as u64),
            Minu => wr!(rs1!().min(rs2!())),
            SextB => wr!(rs1!() as i8 as i64 as u64),
            SextH => wr!(rs1!() as i16 as i64 as u64),
            ZextH => wr!(rs1!() as u16 as u64),
            Rol => wr!(rs1!().rotate_left((rs2!() & 63) as u32)),
            Rolw => wr!(sx32(
                (rs1!() as u32).rotate_left((rs2!() & 31) as u32) as u64
            )),
            Ror => wr!(rs1!().rotate_right((rs2!() & 63) as u32)),
            Rori => wr!(rs1!().rotate_right((imm!() & 63) as u32)),
            Roriw => wr!(sx32(
                (rs1!() as u32).rotate_right((imm!() & 31) as u32) as u64
            )),
            Rorw => wr!(sx32(
                (rs1!() as u32).rotate_right((rs2!() & 31) as u32) as u64
            )),
            OrcB => {
                let mut r = 0u64;
                for b in 0..8 {
                    if (rs1!() >> (b * 8)) & 0xff != 0 {
                        r |= 0xff << (b * 8);
                    }
                }
                wr!(r)
            }
            Rev8 => wr!(rs1!().swap_bytes()),
            // ---- Zbs ----
            Bclr => wr!(rs1!() & !(1u64 << (rs2!() & 63))),
            Bclri => wr!(rs1!() & !(1u64 << (imm!() & 63))),
            Bext => wr!((rs1!() >> (rs2!() & 63)) & 1),
            Bexti => wr!((rs1!() >> (imm!() & 63)) & 1),
            Binv => wr!(rs1!() ^ (1u64 << (rs2!() & 63))),
            Binvi => wr!(rs1!() ^ (1u64 << (imm!() & 63))),
            Bset => wr!(rs1!() | (1u64 << (rs2!() & 63))),
            Bseti => wr!(rs1!() | (1u64 << (imm!() & 63))),
        }
    }
}

/// Decodes a block starting at `pc` using `fetch16(addr) -> Option<u16>`
/// for the bytes of the current page only; an instruction that would cross
/// the page end ends the block (returned `crosses` = true when that is the
/// very first instruction: the caller handles it specially).
pub(crate) fn decode_block(
    pc: u64,
    buf: &mut Vec<Insn>,
    mut fetch16: impl FnMut(u64) -> u16,
) -> bool {
    buf.clear();
    let page_end = (pc & !(PAGE_SIZE - 1)) + PAGE_SIZE;
    let mut a = pc;
    while buf.len() < MAX_BLOCK && a < page_end {
        let lo = fetch16(a);
        let insn = if lo & 3 == 3 {
            if a + 4 > page_end {
                if buf.is_empty() {
                    return true;
                }
                push_end(buf, a - pc);
                return false;
            }
            let hi = fetch16(a + 2);
            decode(lo as u32 | (hi as u32) << 16)
        } else {
            decode_c(lo)
        };
        let mut insn = insn;
        insn.off = (a - pc) as u16;
        a += insn.size() as u64;
        buf.push(insn);
        if insn.ends_block() {
            return false;
        }
    }
    push_end(buf, a - pc);
    false
}

/// Appends the fall-through sentinel at byte offset `off`.
fn push_end(buf: &mut Vec<Insn>, off: u64) {
    let mut end = decode(0);
    end.kind = Kind::BlockEnd;
    end.off = off as u16;
    buf.push(end);
}

impl Hart {
    /// Runs in user mode over `space` until something needs the caller: a
    /// system call, a fault, an illegal instruction, `ebreak`, or a stop
    /// request. See [`Exit`].
    pub fn run_user(&mut self, space: &UserSpace) -> Exit {
        let Hart { core, engine, .. } = self;
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

    /// Runs in system mode on `bus` until the machine must act: an SBI
    /// `ecall` (with [`crate::HartConfig::sbi_ecalls`]) or a stop request.
    /// Traps and interrupts are delivered to the guest; `wfi` sleeps until
    /// an interrupt, a timer deadline or a request from another thread.
    pub fn run_system<B: Bus>(&mut self, bus: &B) -> Exit {
        let Hart { core, engine, tlb } = self;
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
                engine.flush();
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
}

#[cold]
#[inline(never)]
pub(crate) fn translate_user(space: &UserSpace, pc: u64, buf: &mut Vec<Insn>) -> Result<(), Trap> {
    let fetch_fault = |a: u64| Trap {
        cause: cause::FETCH_PAGE,
        tval: a,
    };
    if space.perms(pc) & perm::X == 0 {
        return Err(fetch_fault(pc));
    }
    // Mark before reading so a concurrent store cannot slip between.
    space.mark_code(pc / PAGE_SIZE);
    let base = space.host_base();
    let crosses = decode_block(pc, buf, |a| {
        // SAFETY: `a` lies in the executable (hence host-readable) page of
        // `pc`, inside the reservation.
        unsafe { base.add(a as usize).cast::<u16>().read_unaligned() }
    });
    if crosses {
        // A 32-bit instruction straddling two pages.
        let next = (pc & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        if space.perms(next) & perm::X == 0 {
            return Err(fetch_fault(next));
        }
        space.mark_code(next / PAGE_SIZE);
        // SAFETY: both halves were checked executable above.
        let w = unsafe {
            base.add(pc as usize).cast::<u16>().read_unaligned() as u32
                | (base.add(next as usize).cast::<u16>().read_unaligned() as u32) << 16
        };
        buf.clear();
        let insn = decode(w);
        buf.push(insn);
        if !insn.ends_block() {
            push_end(buf, 4);
        }
    }
    Ok(())
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
            mem.flush();
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
