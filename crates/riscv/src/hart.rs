//! The hart: its architectural state ([`Core`]) with the engine that runs
//! it ([`Engine`]: block cache, JIT) and its TLB; the public entry points
//! `run_user` and `run_system`.

use std::sync::Arc;

use crate::cpu::{Clock, Core, Exit, HartConfig};
use crate::engine::Engine;
use crate::mem::{Bus, UserSpace};
use crate::mmu::Tlb;

/// A RISC-V hart: architectural state ([`Core`], reachable by deref: `pc`,
/// `f`, `x()`, CSRs) plus its execution engine (decoded-block cache, TLB).
/// One hart runs on one host thread; it is `Send`, not shared.
pub struct Hart {
    pub(crate) core: Core,
    pub(crate) engine: Engine,
    pub(crate) tlb: Tlb,
}

impl std::ops::Deref for Hart {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::ops::DerefMut for Hart {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl std::fmt::Debug for Hart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hart")
            .field("pc", &self.core.pc)
            .field("prv", &self.core.prv)
            .finish()
    }
}

impl Hart {
    /// A user-mode hart (U-mode only, no CSRs beyond fcsr/counters; traps
    /// become [`Exit`]s). Registers start at zero.
    pub fn new_user() -> Hart {
        Hart {
            core: Core::new(true, Arc::new(Clock::new(10_000_000))),
            engine: Engine::new(),
            tlb: Tlb::new(),
        }
    }

    /// A system-mode hart in M-mode at pc 0 with the given configuration.
    pub fn new_system(cfg: HartConfig) -> Hart {
        let mut core = Core::new(false, cfg.clock);
        core.csr.hartid = cfg.hart_id;
        core.sbi_ecalls = cfg.sbi_ecalls;
        Hart {
            core,
            engine: Engine::new(),
            tlb: Tlb::new(),
        }
    }

    /// A new user-mode hart for a guest thread (clone): same registers, pc
    /// and fcsr, its own control block and caches.
    pub fn clone_user(&self) -> Hart {
        let mut h = Hart::new_user();
        h.core.x = self.core.x;
        h.core.f = self.core.f;
        h.core.pc = self.core.pc;
        h.core.fflags = self.core.fflags;
        h.core.frm = self.core.frm;
        h.core.clock = self.core.clock.clone();
        h.engine.set_jit(self.engine.jit_on());
        h.engine.set_jit_threshold(self.engine.jit_threshold());
        h
    }

    /// Chooses how user mode runs guest code: translated to host code (the
    /// default on x86-64 hosts) or by the interpreter alone (`false`, and
    /// always on other hosts). Both give the same results.
    pub fn set_jit(&mut self, on: bool) {
        self.engine.set_jit(on);
    }

    /// User mode: how many times a block runs in the interpreter before
    /// it is translated (see [`crate::DEFAULT_JIT_THRESHOLD`]); 1
    /// translates every block on its first run.
    pub fn set_jit_threshold(&mut self, n: u32) {
        self.engine.set_jit_threshold(n);
    }

    /// Drops all decoded blocks of this hart (like `fence.i`).
    pub fn flush_code(&mut self) {
        self.engine.flush();
    }

    /// Flushes this hart's TLB (like `sfence.vma`).
    pub fn flush_tlb(&mut self) {
        self.tlb.flush();
    }

    /// Runs in user mode over `space` until something needs the caller: a
    /// system call, a fault, an illegal instruction, `ebreak`, or a stop
    /// request. See [`Exit`].
    pub fn run_user(&mut self, space: &UserSpace) -> Exit {
        crate::engine::run_user(&mut self.core, &mut self.engine, space)
    }

    /// Runs in system mode on `bus` until the machine must act: an SBI
    /// `ecall` (with [`crate::HartConfig::sbi_ecalls`]) or a stop request.
    /// Traps and interrupts are delivered to the guest; `wfi` sleeps until
    /// an interrupt, a timer deadline or a request from another thread.
    pub fn run_system<B: Bus>(&mut self, bus: &B) -> Exit {
        crate::engine::run_system(&mut self.core, &mut self.engine, &mut self.tlb, bus)
    }
}
