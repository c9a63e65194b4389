//! `riscv`: a RISC-V RV64GC CPU (RV64IMAFDC, Zicsr, Zifencei, Zba, Zbb,
//! Zbs) with the privileged architecture (M/S/U, Sv39/Sv48, interrupts),
//! for user-mode emulation (`linux-user`) and whole machines
//! (`riscv-machine`).
//!
//! # Using it
//!
//! ```text
//! user mode:    let space = Arc::new(UserSpace::new(38)?);   // + map_anonymous / set_perms
//!               let mut hart = Hart::new_user();  hart.pc = entry;  hart.set_x(2, sp);
//!               loop { match hart.run_user(&space) {
//!                   Exit::Ecall => { /* syscall a7, args a0..a5 */ hart.pc += 4; }
//!                   Exit::Stopped => { /* another thread asked: deliver signals */ }
//!                   Exit::MemFault(f) => { /* SIGSEGV / SIGBUS */ }
//!                   Exit::IllegalInstruction { .. } => { /* SIGILL */ }
//!                   Exit::Ebreak => { /* SIGTRAP */ }
//!               } }
//! system mode:  let mut hart = Hart::new_system(HartConfig { hart_id, clock, sbi_ecalls: true, .. });
//!               hart.pc = entry; hart.set_x(10, hart_id); hart.set_x(11, fdt);
//!               loop { match hart.run_system(&bus) {    // bus: impl Bus
//!                   Exit::Ecall => { /* built-in SBI call from S-mode */ hart.pc += 4; }
//!                   Exit::Stopped => { /* shutdown? HSM stop? */ }
//!                   _ => unreachable in system mode: traps go to the guest's handlers
//!               } }
//!               other threads: hart.control() (Arc<HartControl>) raises MEIP/SEIP/MSIP,
//!               sets mtimecmp, posts SSIP (IPI), requests remote fences or a stop.
//! ```
//!
//! # Engine
//!
//! Instructions are decoded once per basic block into a compact form
//! ([`decode::Insn`]) and cached by address (virtual in user mode, physical
//! in system mode). On x86-64 hosts the `jit` module compiles those blocks
//! to host code and runs them chained together; the interpreter (a loop
//! over a block's instructions with a `match`, monomorphised over the
//! memory flavour so loads and stores inline into the hot loop) runs
//! whatever the JIT hands back: slow paths, traps, system instructions, and
//! everything when the JIT is off ([`Hart::set_jit`]). Stores into pages
//! holding decoded code, `fence.i`, and explicit invalidation calls drop
//! stale blocks.
//!
//! # Layout
//!
//! Modules form layers; each uses only the layers below it (no import
//! cycles; `PAGE_SIZE` and the re-exports here are the crate root's):
//!
//! ```text
//! persist  HartState: a stopped hart's saved state (snapshots)
//! hart     Hart: Core + Engine + Tlb; the public run_user / run_system
//!  engine  block cache, the JIT it owns, run loops, between-block service
//!   jit/   x86.rs encoder, dispatch.rs fixed routines, emit/ per extension
//!          (mem, rvi, rvm), mod.rs code buffer, block tables, run loops
//!   exec/  interpreter: exec_block + one file per extension (rvi, rvm,
//!          rva, rvfd, rvb, system)
//!   block  block decoding (MAX_BLOCK, decode_block, translate_user)
//!  mmu/    the Mem trait; user.rs (flat space), sys.rs (Sv39/48, TLB)
//!  cpu     Core: registers, CSRs, traps, interrupts; HartControl, Clock
//! decode, fpu, mem    leaves: decoder, softfloat glue, guest memory
//! ```
//!
//! `jit` uses `exec` (helpers run one instruction through the
//! interpreter), `block`, `mmu` and `cpu`; `exec` uses `mmu` and `cpu`;
//! `mmu` uses `cpu` and `mem`. Nothing below `engine` knows of `Hart`.

pub mod decode;
mod fpu;
mod mem;

mod cpu;
mod mmu;

mod block;
mod exec;
#[cfg(target_arch = "x86_64")]
mod jit;

mod engine;
mod hart;
mod persist;

pub use cpu::{
    csr, irq, Clock, Core, Exit, HartConfig, HartControl, MemAccess, MemFault, MemFaultKind, Priv,
};
pub use engine::DEFAULT_JIT_THRESHOLD;
pub use hart::Hart;
pub use mem::{perm, Bus, CodeMap, MemError, RamRegion, UserSpace};
pub use persist::{CsrState, HartState, PersistError, HART_STATE_VERSION};

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;

#[cfg(test)]
mod tests;
