//! A system-mode hart's architectural state as a plain, versioned,
//! serialisable struct ([`HartState`]), for machine snapshots.
//!
//! Saved: integer and FP registers, pc, fcsr, privilege, every CSR the
//! hart keeps (trap setup and handling, counters enables, `satp`, PMP,
//! `stimecmp`, the software-writable `mip` bits), the LR/SC reservation,
//! the WFI state, `instret` (which `cycle` reads too), and from the
//! [`HartControl`]: the CLINT's `mtimecmp` and posted-but-untaken `mip`
//! bits. Device interrupt lines (MEIP/SEIP/MSIP) are not saved here: they
//! are outputs of the PLIC and CLINT, whose restored state raises them
//! again. Decoded blocks, translated code and the TLB are caches: a
//! restored hart starts with them empty.
//!
//! The clock is not part of a hart: the machine saves its time once and
//! restores it with [`crate::Clock::set`].
//!
//! Take a hart's state only while it is stopped (its thread returned
//! [`crate::Exit::Stopped`] or it never ran); restore into a hart that has
//! not run yet.

use serde::{Deserialize, Serialize};

use crate::cpu::{Core, HartControl, Priv};
use crate::hart::Hart;

/// Version of [`HartState`] this build writes and reads.
pub const HART_STATE_VERSION: u32 = 1;

/// The CSRs of a system-mode hart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrState {
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-writable `mip` bits (SSIP, STIP, SEIP as written, and
    /// posted IPIs already taken into the hart).
    pub mip: u64,
    pub mtvec: u64,
    pub mscratch: u64,
    pub mepc: u64,
    pub mcause: u64,
    pub mtval: u64,
    pub mcounteren: u64,
    pub menvcfg: u64,
    pub mcountinhibit: u64,
    pub stvec: u64,
    pub sscratch: u64,
    pub sepc: u64,
    pub scause: u64,
    pub stval: u64,
    pub scounteren: u64,
    pub senvcfg: u64,
    pub satp: u64,
    pub stimecmp: u64,
    pub pmpcfg: Vec<u64>,
    pub pmpaddr: Vec<u64>,
    pub hartid: u64,
}

/// A hart's architectural state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HartState {
    /// [`HART_STATE_VERSION`] when written.
    pub version: u32,
    /// x0..x31 (x0 is always 0).
    pub x: Vec<u64>,
    /// f0..f31 as raw bits.
    pub f: Vec<u64>,
    pub pc: u64,
    /// 0 = U, 1 = S, 3 = M.
    pub privilege: u8,
    pub fcsr: u64,
    pub csr: CsrState,
    /// LR reservation address (`u64::MAX`: none) and the value LR loaded.
    pub res_addr: u64,
    pub res_val: u64,
    /// Instructions retired (`instret`, `cycle`).
    pub instret: u64,
    /// Asleep in `wfi`.
    pub wfi: bool,
    /// Whether `ecall` from S-mode goes to the machine's built-in SBI.
    pub sbi_ecalls: bool,
    /// The CLINT's `mtimecmp` for this hart.
    pub mtimecmp: u64,
    /// `mip` bits posted by other threads and not yet taken.
    pub posted: u64,
}

/// Why a saved hart state cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    #[error("hart state version {found} is not supported (this build reads version {HART_STATE_VERSION})")]
    Version { found: u32 },
    #[error("hart state: {field} has {found} entries, expected {expected}")]
    Length {
        field: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("hart state: privilege {0} is not a mode (0 = U, 1 = S, 3 = M)")]
    Privilege(u8),
    #[error("hart state is for hart {found}, restored into hart {expected}")]
    HartId { found: u64, expected: u64 },
    #[error("hart state: a user-mode hart has no machine state to restore")]
    UserHart,
}

fn array<const N: usize>(field: &'static str, v: &[u64]) -> Result<[u64; N], PersistError> {
    v.try_into().map_err(|_| PersistError::Length {
        field,
        found: v.len(),
        expected: N,
    })
}

impl Hart {
    /// The hart's state (see the module doc for what it covers). Call it
    /// only while the hart is stopped.
    pub fn save_state(&self) -> HartState {
        let c: &Core = &self.core;
        let s = &c.csr;
        let ctl: &HartControl = &c.control;
        HartState {
            version: HART_STATE_VERSION,
            x: c.xregs().to_vec(),
            f: c.f.to_vec(),
            pc: c.pc,
            privilege: c.prv as u8,
            fcsr: c.fcsr(),
            csr: CsrState {
                mstatus: s.mstatus,
                medeleg: s.medeleg,
                mideleg: s.mideleg,
                mie: s.mie,
                mip: s.mip,
                mtvec: s.mtvec,
                mscratch: s.mscratch,
                mepc: s.mepc,
                mcause: s.mcause,
                mtval: s.mtval,
                mcounteren: s.mcounteren,
                menvcfg: s.menvcfg,
                mcountinhibit: s.mcountinhibit,
                stvec: s.stvec,
                sscratch: s.sscratch,
                sepc: s.sepc,
                scause: s.scause,
                stval: s.stval,
                scounteren: s.scounteren,
                senvcfg: s.senvcfg,
                satp: s.satp,
                stimecmp: s.stimecmp,
                pmpcfg: s.pmpcfg.to_vec(),
                pmpaddr: s.pmpaddr.to_vec(),
                hartid: s.hartid,
            },
            res_addr: c.res_addr,
            res_val: c.res_val,
            instret: c.instret,
            wfi: c.wfi,
            sbi_ecalls: c.sbi_ecalls,
            mtimecmp: ctl.mtimecmp(),
            posted: ctl.peek_posted(),
        }
    }

    /// Puts a saved state into this system-mode hart (made with
    /// [`Hart::new_system`] for the same hart id, not yet run). Everything
    /// is checked before anything changes: on error the hart is untouched.
    /// Caches (decoded blocks, translated code, TLB) start empty.
    pub fn restore_state(&mut self, st: &HartState) -> Result<(), PersistError> {
        if st.version != HART_STATE_VERSION {
            return Err(PersistError::Version { found: st.version });
        }
        if self.core.user_only {
            return Err(PersistError::UserHart);
        }
        let x: [u64; 32] = array("x", &st.x)?;
        let f: [u64; 32] = array("f", &st.f)?;
        let pmpcfg: [u64; 8] = array("pmpcfg", &st.csr.pmpcfg)?;
        let pmpaddr: [u64; 64] = array("pmpaddr", &st.csr.pmpaddr)?;
        let prv = match st.privilege {
            0 => Priv::User,
            1 => Priv::Supervisor,
            3 => Priv::Machine,
            p => return Err(PersistError::Privilege(p)),
        };
        if st.csr.hartid != self.core.csr.hartid {
            return Err(PersistError::HartId {
                found: st.csr.hartid,
                expected: self.core.csr.hartid,
            });
        }
        let c = &mut self.core;
        c.x[..32].copy_from_slice(&x);
        c.x[0] = 0;
        c.f = f;
        c.pc = st.pc;
        c.prv = prv;
        c.set_fcsr(st.fcsr);
        let s = &st.csr;
        let d = &mut c.csr;
        d.mstatus = s.mstatus;
        d.medeleg = s.medeleg;
        d.mideleg = s.mideleg;
        d.mie = s.mie;
        d.mip = s.mip;
        d.mtvec = s.mtvec;
        d.mscratch = s.mscratch;
        d.mepc = s.mepc;
        d.mcause = s.mcause;
        d.mtval = s.mtval;
        d.mcounteren = s.mcounteren;
        d.menvcfg = s.menvcfg;
        d.mcountinhibit = s.mcountinhibit;
        d.stvec = s.stvec;
        d.sscratch = s.sscratch;
        d.sepc = s.sepc;
        d.scause = s.scause;
        d.stval = s.stval;
        d.scounteren = s.scounteren;
        d.senvcfg = s.senvcfg;
        d.satp = s.satp;
        d.stimecmp = s.stimecmp;
        d.pmpcfg = pmpcfg;
        d.pmpaddr = pmpaddr;
        c.res_addr = st.res_addr;
        c.res_val = st.res_val;
        c.instret = st.instret;
        c.wfi = st.wfi;
        c.sbi_ecalls = st.sbi_ecalls;
        c.control.set_mtimecmp(st.mtimecmp);
        if st.posted != 0 {
            c.control.post(st.posted);
        }
        // Rebuild every cache from the restored state.
        c.tlb_dirty = true;
        c.code_dirty = true;
        c.recheck = true;
        self.engine.flush();
        self.tlb.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cpu::{csr, irq, Clock, HartConfig};

    fn hart(id: u64) -> Hart {
        Hart::new_system(HartConfig {
            hart_id: id,
            clock: Arc::new(Clock::new(10_000_000)),
            sbi_ecalls: true,
        })
    }

    #[test]
    fn state_round_trips_into_a_fresh_hart() {
        let mut a = hart(1);
        for r in 1..32 {
            a.set_x(r, 0x1000 + r as u64);
        }
        a.f[3] = 0xffff_ffff_3f80_0000;
        a.pc = 0x8020_0000;
        a.set_privilege(Priv::Supervisor);
        a.write_csr(csr::MSTATUS, 1 << 13);
        a.set_fcsr(0x41);
        a.write_csr(csr::STVEC, 0x8020_1000);
        a.write_csr(csr::SATP, (8 << 60) | 0x1234);
        a.write_csr(csr::PMPADDR0 + 5, 0x777);
        a.write_csr(csr::MIDELEG, irq::SSIP);
        a.write_csr(csr::MENVCFG, 1 << 63);
        a.set_stimecmp(12345);
        a.core.res_addr = 0x8000_1000;
        a.core.res_val = 99;
        a.core.instret = 1_000_000;
        a.core.wfi = true;
        a.control().set_mtimecmp(777);
        a.control().post(irq::SSIP);
        let st = a.save_state();

        let mut b = hart(1);
        b.restore_state(&st).unwrap();
        assert_eq!(b.save_state(), st);
        assert_eq!(b.x(5), 0x1005);
        assert_eq!(b.privilege(), Priv::Supervisor);
        assert_eq!(b.fcsr(), 0x41);
        assert_eq!(b.read_csr(csr::STIMECMP), Some(12345));
        assert_eq!(b.instret(), 1_000_000);
        assert_eq!(b.control().mtimecmp(), 777);
        assert!(b.core.wfi);
    }

    #[test]
    fn bad_states_are_refused_and_change_nothing() {
        let st = hart(0).save_state();
        let mut b = hart(0);
        b.pc = 42;
        let mut bad = st.clone();
        bad.version = 9;
        assert_eq!(
            b.restore_state(&bad),
            Err(PersistError::Version { found: 9 })
        );
        let mut bad = st.clone();
        bad.x.pop();
        assert!(matches!(
            b.restore_state(&bad),
            Err(PersistError::Length { field: "x", .. })
        ));
        let mut bad = st.clone();
        bad.privilege = 2;
        assert_eq!(b.restore_state(&bad), Err(PersistError::Privilege(2)));
        let mut other = hart(3);
        assert!(matches!(
            other.restore_state(&st),
            Err(PersistError::HartId { .. })
        ));
        assert_eq!(b.pc, 42);
        assert!(matches!(
            Hart::new_user().restore_state(&st),
            Err(PersistError::UserHart)
        ));
    }
}
