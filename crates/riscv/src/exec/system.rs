//! Zicsr, Zifencei and the privileged instructions: `fence.i`, `ecall`,
//! `ebreak`, `mret`, `sret`, `wfi`, `sfence.vma`, and the CSR accesses
//! (QEMU: `trans_privileged.c.inc`, `trans_rvzicsr`, `trans_rvzifencei`).
//! All of them end their block.

use super::{Flow, Step};
use crate::cpu::{cause, csr, mstatus, Core, Priv, Trap};
use crate::decode::{Insn, Kind, ZERO_SINK};

/// Runs one system instruction (all of them leave the block). `n()`:
/// instructions of the block retired before this one (the counter
/// CSRs must see them).
#[inline(always)]
pub(super) fn exec(kind: Kind, core: &mut Core, i: &Insn, start: u64, n: impl Fn() -> u32) -> Step {
    operands!($ core, i, start);
    use Kind::*;
    match kind {
        FenceI => {
            core.code_dirty = true;
            core.recheck = true;
            Ok(Flow::Jump(next!()))
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
            core.do_mret().map(Flow::Jump)
        }
        Sret => {
            if core.user_only {
                ill!();
            }
            core.do_sret().map(Flow::Jump)
        }
        Wfi => {
            if core.user_only
                || core.prv == Priv::User
                || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TW != 0)
            {
                ill!();
            }
            core.wfi = true;
            core.recheck = true;
            Ok(Flow::Jump(next!()))
        }
        SfenceVma => {
            if core.user_only
                || core.prv == Priv::User
                || (core.prv == Priv::Supervisor && core.csr.mstatus & mstatus::TVM != 0)
            {
                ill!();
            }
            // rs1 = x0: every address; otherwise only the one in rs1 (its
            // leaf PTE), whatever the ASID in rs2.
            if i.rs1 == 0 {
                core.tlb_dirty = true;
            } else {
                core.sfence_page(rs1!());
            }
            core.recheck = true;
            Ok(Flow::Jump(next!()))
        }
        Csrrw | Csrrs | Csrrc | Csrrwi | Csrrsi | Csrrci => {
            let n16 = i.imm as u16;
            let src = if matches!(kind, Csrrw | Csrrs | Csrrc) {
                rs1!()
            } else {
                i.rs1 as u64
            };
            // csrrw with rd=x0 does not read; csrrs/c with rs1!()=x0 do not write.
            let writes = matches!(kind, Csrrw | Csrrwi) || i.rs1 != 0;
            let reads = !(matches!(kind, Csrrw | Csrrwi) && i.rd == ZERO_SINK);
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
                let new = match kind {
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
            let counter_written = writes && matches!(n16, csr::MINSTRET | csr::MCYCLE);
            let retired = n() as u64 + counter_written as u64;
            core.instret = core.instret.wrapping_sub(retired);
            wr!(old);
            Ok(Flow::Jump(next!()))
        }
        // exec_block routes only the kinds above here.
        _ => unreachable!(),
    }
}
