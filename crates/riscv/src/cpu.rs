//! A hart's architectural state ([`Core`]): registers, privilege, CSRs,
//! traps and interrupts; and the cross-thread control block
//! ([`HartControl`]) other threads use to reach a running hart. Knows
//! nothing of how instructions run (see `exec`, `jit`, `engine`).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Privilege modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Priv {
    /// U-mode.
    User = 0,
    /// S-mode.
    Supervisor = 1,
    /// M-mode.
    Machine = 3,
}

impl Priv {
    pub(crate) fn from_bits(b: u64) -> Priv {
        match b & 3 {
            0 => Priv::User,
            1 => Priv::Supervisor,
            // 2 is reserved (H); WARL: treat as M never happens because
            // writers of MPP legalise first.
            _ => Priv::Machine,
        }
    }
}

/// What a faulting memory access was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemAccess {
    /// A load (or LR).
    Load,
    /// A store, SC or AMO.
    Store,
    /// An instruction fetch.
    Fetch,
}

/// Why a memory access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemFaultKind {
    /// No mapping, or the mapping forbids this access (Linux: SIGSEGV).
    Unmapped,
    /// Misaligned atomic (Linux: SIGBUS).
    Misaligned,
    /// The physical address has no RAM or device; in user mode, nothing
    /// backs the page (a file mapping past its file's end) (Linux: SIGBUS).
    Bus,
}

/// A precise memory fault: the hart's `pc` still points at the faulting
/// instruction and no architectural state was changed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemFault {
    /// The faulting address (first byte that could not be accessed).
    pub addr: u64,
    /// What the access was doing.
    pub access: MemAccess,
    /// Why it faulted.
    pub kind: MemFaultKind,
}

/// Why [`Hart::run_user`] or [`Hart::run_system`] returned. In all cases
/// `pc` points at the instruction concerned (not past it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `ecall`: a system call (user mode), or an SBI call from S-mode when
    /// [`HartConfig::sbi_ecalls`] is set. Handle it, then `pc += 4`.
    Ecall,
    /// `ebreak` / `c.ebreak` in user mode.
    Ebreak,
    /// An illegal instruction in user mode, with its bits (16-bit
    /// compressed instructions in the low half).
    IllegalInstruction {
        /// The instruction encoding.
        bits: u32,
    },
    /// A memory fault in user mode.
    MemFault(MemFault),
    /// Another thread called [`HartControl::request_stop`]. The request is
    /// consumed; call run again to continue.
    Stopped,
}

/// Interrupt bits of `mip`/`mie`.
pub mod irq {
    /// Supervisor software interrupt.
    pub const SSIP: u64 = 1 << 1;
    /// Machine software interrupt.
    pub const MSIP: u64 = 1 << 3;
    /// Supervisor timer interrupt.
    pub const STIP: u64 = 1 << 5;
    /// Machine timer interrupt.
    pub const MTIP: u64 = 1 << 7;
    /// Supervisor external interrupt.
    pub const SEIP: u64 = 1 << 9;
    /// Machine external interrupt.
    pub const MEIP: u64 = 1 << 11;
}

/// CSR numbers.
#[allow(missing_docs)]
pub mod csr {
    pub const FFLAGS: u16 = 0x001;
    pub const FRM: u16 = 0x002;
    pub const FCSR: u16 = 0x003;
    pub const CYCLE: u16 = 0xc00;
    pub const TIME: u16 = 0xc01;
    pub const INSTRET: u16 = 0xc02;
    pub const SSTATUS: u16 = 0x100;
    pub const SIE: u16 = 0x104;
    pub const STVEC: u16 = 0x105;
    pub const SCOUNTEREN: u16 = 0x106;
    pub const SENVCFG: u16 = 0x10a;
    pub const SSCRATCH: u16 = 0x140;
    pub const SEPC: u16 = 0x141;
    pub const SCAUSE: u16 = 0x142;
    pub const STVAL: u16 = 0x143;
    pub const SIP: u16 = 0x144;
    pub const STIMECMP: u16 = 0x14d;
    pub const SATP: u16 = 0x180;
    pub const MVENDORID: u16 = 0xf11;
    pub const MARCHID: u16 = 0xf12;
    pub const MIMPID: u16 = 0xf13;
    pub const MHARTID: u16 = 0xf14;
    pub const MCONFIGPTR: u16 = 0xf15;
    pub const MSTATUS: u16 = 0x300;
    pub const MISA: u16 = 0x301;
    pub const MEDELEG: u16 = 0x302;
    pub const MIDELEG: u16 = 0x303;
    pub const MIE: u16 = 0x304;
    pub const MTVEC: u16 = 0x305;
    pub const MCOUNTEREN: u16 = 0x306;
    pub const MENVCFG: u16 = 0x30a;
    pub const MCOUNTINHIBIT: u16 = 0x320;
    pub const MSCRATCH: u16 = 0x340;
    pub const MEPC: u16 = 0x341;
    pub const MCAUSE: u16 = 0x342;
    pub const MTVAL: u16 = 0x343;
    pub const MIP: u16 = 0x344;
    pub const MTINST: u16 = 0x34a;
    pub const MTVAL2: u16 = 0x34b;
    pub const PMPCFG0: u16 = 0x3a0;
    pub const PMPADDR0: u16 = 0x3b0;
    pub const MSECCFG: u16 = 0x747;
    pub const MCYCLE: u16 = 0xb00;
    pub const MINSTRET: u16 = 0xb02;
}

pub(crate) mod mstatus {
    pub const SIE: u64 = 1 << 1;
    pub const MIE: u64 = 1 << 3;
    pub const SPIE: u64 = 1 << 5;
    pub const MPIE: u64 = 1 << 7;
    pub const SPP: u64 = 1 << 8;
    pub const MPP_SHIFT: u32 = 11;
    pub const MPP: u64 = 3 << 11;
    pub const FS: u64 = 3 << 13;
    pub const FS_DIRTY: u64 = 3 << 13;
    pub const MPRV: u64 = 1 << 17;
    pub const SUM: u64 = 1 << 18;
    pub const MXR: u64 = 1 << 19;
    pub const TVM: u64 = 1 << 20;
    pub const TW: u64 = 1 << 21;
    pub const TSR: u64 = 1 << 22;
    pub const UXL_SXL: u64 = (2 << 32) | (2 << 34);
    pub const SD: u64 = 1 << 63;
    pub const SSTATUS_MASK: u64 = SIE | SPIE | SPP | FS | SUM | MXR | (3 << 32) | SD;
    pub const WRITABLE: u64 =
        SIE | MIE | SPIE | MPIE | SPP | MPP | FS | MPRV | SUM | MXR | TVM | TW | TSR;
}

/// Exception causes.
pub(crate) mod cause {
    pub const FETCH_ACCESS: u64 = 1;
    pub const ILLEGAL: u64 = 2;
    pub const BREAKPOINT: u64 = 3;
    pub const LOAD_MISALIGNED: u64 = 4;
    pub const LOAD_ACCESS: u64 = 5;
    pub const STORE_MISALIGNED: u64 = 6;
    pub const STORE_ACCESS: u64 = 7;
    pub const ECALL_U: u64 = 8;
    pub const ECALL_S: u64 = 9;
    pub const ECALL_M: u64 = 11;
    pub const FETCH_PAGE: u64 = 12;
    pub const LOAD_PAGE: u64 = 13;
    pub const STORE_PAGE: u64 = 15;
    pub const INTERRUPT: u64 = 1 << 63;
}

/// A synchronous exception (or interrupt, with [`cause::INTERRUPT`] set)
/// on its way to a trap handler or to an [`Exit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trap {
    pub cause: u64,
    pub tval: u64,
}

impl Trap {
    pub fn illegal(bits: u32) -> Trap {
        Trap {
            cause: cause::ILLEGAL,
            tval: bits as u64,
        }
    }

    /// The user-mode exit for this trap.
    pub fn to_exit(self) -> Exit {
        let fault = |access, kind| {
            Exit::MemFault(MemFault {
                addr: self.tval,
                access,
                kind,
            })
        };
        match self.cause {
            cause::ILLEGAL => Exit::IllegalInstruction {
                bits: self.tval as u32,
            },
            cause::BREAKPOINT => Exit::Ebreak,
            cause::ECALL_U | cause::ECALL_S | cause::ECALL_M => Exit::Ecall,
            cause::LOAD_MISALIGNED => fault(MemAccess::Load, MemFaultKind::Misaligned),
            cause::STORE_MISALIGNED => fault(MemAccess::Store, MemFaultKind::Misaligned),
            cause::FETCH_ACCESS => fault(MemAccess::Fetch, MemFaultKind::Bus),
            cause::LOAD_ACCESS => fault(MemAccess::Load, MemFaultKind::Bus),
            cause::STORE_ACCESS => fault(MemAccess::Store, MemFaultKind::Bus),
            cause::FETCH_PAGE => fault(MemAccess::Fetch, MemFaultKind::Unmapped),
            cause::LOAD_PAGE => fault(MemAccess::Load, MemFaultKind::Unmapped),
            _ => fault(MemAccess::Store, MemFaultKind::Unmapped),
        }
    }
}

/// The machine's time base: the `time` CSR and CLINT `mtime` read it.
/// Counts at `freq` Hz from creation; [`Clock::set`] moves it (CLINT mtime
/// writes).
#[derive(Debug)]
pub struct Clock {
    origin: Instant,
    freq: u64,
    offset: AtomicI64,
}

impl Clock {
    /// A clock ticking at `freq` Hz (QEMU's `virt` uses 10 MHz), starting at 0.
    pub fn new(freq: u64) -> Self {
        Clock {
            origin: Instant::now(),
            freq: freq.max(1),
            offset: AtomicI64::new(0),
        }
    }

    /// Ticks per second.
    pub fn freq(&self) -> u64 {
        self.freq
    }

    fn raw(&self) -> u64 {
        let ns = self.origin.elapsed().as_nanos();
        (ns * self.freq as u128 / 1_000_000_000) as u64
    }

    /// Current time in ticks.
    pub fn now(&self) -> u64 {
        self.raw()
            .wrapping_add(self.offset.load(Ordering::Relaxed) as u64)
    }

    /// Sets the current time to `ticks`.
    pub fn set(&self, ticks: u64) {
        self.offset
            .store(ticks.wrapping_sub(self.raw()) as i64, Ordering::Relaxed);
    }

    /// Host duration until the clock reaches `ticks` (zero if passed).
    pub fn until(&self, ticks: u64) -> Duration {
        let now = self.now();
        if ticks <= now {
            return Duration::ZERO;
        }
        let d = ticks - now;
        Duration::from_nanos(
            (d as u128 * 1_000_000_000 / self.freq as u128).min(u64::MAX as u128) as u64,
        )
    }
}

pub(crate) mod attn {
    pub const STOP: u32 = 1;
    pub const IRQ: u32 = 2;
    pub const FLUSH_TLB: u32 = 4;
    pub const FLUSH_CODE: u32 = 8;
    /// The code the hart runs changed (the user-mode address space's, or
    /// the machine's RAM holding code): translated code leaves, and the
    /// run loop compares code generations.
    pub const CODE_CHANGED: u32 = 16;
}

/// The part of a hart that other threads may touch while it runs: device
/// interrupt lines, IPIs, the CLINT's `mtimecmp`, remote fences and stop
/// requests. Every setter wakes the hart if it sleeps in `wfi`. Get it with
/// [`Hart::control`] and share the `Arc`.
#[derive(Debug)]
pub struct HartControl {
    attention: AtomicU32,
    lines: AtomicU64,
    posted: AtomicU64,
    mtimecmp: AtomicU64,
    sleep: Mutex<()>,
    wake: Condvar,
}

impl HartControl {
    fn new() -> Self {
        HartControl {
            attention: AtomicU32::new(0),
            lines: AtomicU64::new(0),
            posted: AtomicU64::new(0),
            mtimecmp: AtomicU64::new(u64::MAX),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn poke(&self, bits: u32) {
        self.attention.fetch_or(bits, Ordering::AcqRel);
        // Taking the lock orders this wake-up after a sleeper's check of
        // `attention`, so it cannot be lost.
        drop(self.sleep.lock().unwrap_or_else(|e| e.into_inner()));
        self.wake.notify_all();
    }

    /// Raises level-triggered interrupt lines (`irq::MEIP`, `irq::SEIP`,
    /// `irq::MSIP`; `irq::MTIP` too if the board drives the timer itself).
    /// They stay pending until [`HartControl::lower`].
    pub fn raise(&self, bits: u64) {
        self.lines.fetch_or(bits, Ordering::AcqRel);
        self.poke(attn::IRQ);
    }

    /// Lowers level-triggered interrupt lines.
    pub fn lower(&self, bits: u64) {
        self.lines.fetch_and(!bits, Ordering::AcqRel);
        self.poke(attn::IRQ);
    }

    /// Sets software-clearable `mip` bits on the hart (an SBI IPI posts
    /// `irq::SSIP`); the guest clears them itself.
    pub fn post(&self, bits: u64) {
        self.posted.fetch_or(bits, Ordering::AcqRel);
        self.poke(attn::IRQ);
    }

    /// Sets this hart's CLINT `mtimecmp`: MTIP is pending while
    /// `time >= mtimecmp`. Starts at `u64::MAX`.
    pub fn set_mtimecmp(&self, value: u64) {
        self.mtimecmp.store(value, Ordering::Release);
        self.poke(attn::IRQ);
    }

    /// This hart's CLINT `mtimecmp`.
    pub fn mtimecmp(&self) -> u64 {
        self.mtimecmp.load(Ordering::Acquire)
    }

    /// Asks the hart to return [`Exit::Stopped`] at its next block
    /// boundary (or to leave `wfi`).
    pub fn request_stop(&self) {
        self.poke(attn::STOP);
    }

    /// Remote `sfence.vma` (SBI RFENCE): the hart flushes its whole TLB at
    /// its next block boundary.
    pub fn request_tlb_flush(&self) {
        self.poke(attn::FLUSH_TLB);
    }

    /// Remote `fence.i` (SBI RFENCE, Linux `riscv_flush_icache`): the hart
    /// drops its decoded blocks at its next block boundary.
    pub fn request_fence_i(&self) {
        self.poke(attn::FLUSH_CODE);
    }

    /// The code this hart runs changed (see `UserSpace::code_changed`,
    /// `CodeMap::changed`). No wake-up: a sleeping hart runs no code.
    pub(crate) fn note_code_change(&self) {
        self.attention
            .fetch_or(attn::CODE_CHANGED, Ordering::AcqRel);
    }

    #[inline(always)]
    /// The attention word, for generated code that polls it.
    pub(crate) fn attention_ptr(&self) -> *const u32 {
        self.attention.as_ptr()
    }

    pub(crate) fn attention(&self) -> u32 {
        self.attention.load(Ordering::Relaxed)
    }

    pub(crate) fn take_attention(&self) -> u32 {
        self.attention.swap(0, Ordering::AcqRel)
    }

    pub(crate) fn lines(&self) -> u64 {
        self.lines.load(Ordering::Acquire)
    }

    pub(crate) fn take_posted(&self) -> u64 {
        self.posted.swap(0, Ordering::AcqRel)
    }

    /// Posted `mip` bits not yet taken by the hart (for snapshots).
    pub(crate) fn peek_posted(&self) -> u64 {
        self.posted.load(Ordering::Acquire)
    }

    /// Sleeps until poked or `timeout` passes.
    pub(crate) fn sleep(&self, timeout: Option<Duration>) {
        let guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        if self.attention.load(Ordering::Acquire) != 0 {
            return;
        }
        let _unused = match timeout {
            Some(t) => {
                self.wake
                    .wait_timeout(guard, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.wake.wait(guard).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Configuration of a system-mode hart.
#[derive(Clone, Debug)]
pub struct HartConfig {
    /// `mhartid`.
    pub hart_id: u64,
    /// Shared time base (one per machine).
    pub clock: Arc<Clock>,
    /// Return [`Exit::Ecall`] for `ecall` from S-mode instead of trapping
    /// to M-mode: the machine implements SBI itself (no M-mode firmware).
    pub sbi_ecalls: bool,
}

/// Machine-level CSR state (unused in user mode).
#[derive(Clone, Debug)]
pub(crate) struct Csrs {
    pub mstatus: u64,
    pub medeleg: u64,
    pub mideleg: u64,
    pub mie: u64,
    /// Software-writable mip bits (SSIP, STIP, SEIP as written by M-mode).
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
    pub pmpcfg: [u64; 8],
    pub pmpaddr: [u64; 64],
    pub hartid: u64,
}

/// Architectural state of a hart, reachable through `Hart` (which derefs to
/// it).
#[derive(Debug)]
pub struct Core {
    /// Integer registers; index 32 is the write sink of `x0` (see
    /// [`crate::decode::ZERO_SINK`]), 33..64 pad the array so register
    /// indices need no bounds checks.
    pub(crate) x: [u64; 64],
    /// FP registers as raw bits (single values NaN-boxed).
    pub f: [u64; 32],
    /// Program counter.
    pub pc: u64,
    /// Current privilege mode.
    pub(crate) prv: Priv,
    pub(crate) fflags: u64,
    pub(crate) frm: u64,
    pub(crate) csr: Csrs,
    /// LR reservation: address (u64::MAX: none) and the value LR loaded.
    pub(crate) res_addr: u64,
    pub(crate) res_val: u64,
    pub(crate) instret: u64,
    pub(crate) user_only: bool,
    pub(crate) sbi_ecalls: bool,
    /// Interrupt state may have changed: re-evaluate at the next boundary.
    pub(crate) recheck: bool,
    pub(crate) clock: Arc<Clock>,
    pub(crate) control: Arc<HartControl>,
    /// Set by CSR writes that change translation: flush the TLB.
    pub(crate) tlb_dirty: bool,
    /// `sfence.vma` of one address: flush only its translations (unless
    /// `tlb_dirty` asks for all of them).
    pub(crate) tlb_flush_va: Option<u64>,
    /// Set by `fence.i`: drop decoded blocks.
    pub(crate) code_dirty: bool,
    pub(crate) wfi: bool,
}

/// Value of `misa`: RV64 IMAFDC + S + U.
pub const MISA_VALUE: u64 = (2 << 62)
    | (1 << 0)
    | (1 << 2)
    | (1 << 3)
    | (1 << 5)
    | (1 << 8)
    | (1 << 12)
    | (1 << 18)
    | (1 << 20);

impl Core {
    pub(crate) fn new(user_only: bool, clock: Arc<Clock>) -> Self {
        let mut c = Core {
            x: [0; 64],
            f: [0; 32],
            pc: 0,
            prv: if user_only { Priv::User } else { Priv::Machine },
            fflags: 0,
            frm: 0,
            csr: Csrs {
                mstatus: 0,
                medeleg: 0,
                mideleg: 0,
                mie: 0,
                mip: 0,
                mtvec: 0,
                mscratch: 0,
                mepc: 0,
                mcause: 0,
                mtval: 0,
                mcounteren: 0,
                menvcfg: 0,
                mcountinhibit: 0,
                stvec: 0,
                sscratch: 0,
                sepc: 0,
                scause: 0,
                stval: 0,
                scounteren: 0,
                senvcfg: 0,
                satp: 0,
                stimecmp: u64::MAX,
                pmpcfg: [0; 8],
                pmpaddr: [0; 64],
                hartid: 0,
            },
            res_addr: u64::MAX,
            res_val: 0,
            instret: 0,
            user_only,
            sbi_ecalls: false,
            recheck: true,
            clock,
            control: Arc::new(HartControl::new()),
            tlb_dirty: true,
            tlb_flush_va: None,
            code_dirty: false,
            wfi: false,
        };
        c.csr.mstatus = mstatus::UXL_SXL;
        if user_only {
            // FP state is always on for user programs.
            c.csr.mstatus |= mstatus::FS_DIRTY;
        }
        c.csr.stimecmp = u64::MAX;
        c
    }

    /// Integer register `r` (0..32; `x0` reads 0).
    pub fn x(&self, r: usize) -> u64 {
        if r < 32 {
            self.x[r]
        } else {
            0
        }
    }

    /// Sets integer register `r` (writes to `x0` and indices >= 32 are
    /// ignored).
    pub fn set_x(&mut self, r: usize, value: u64) {
        if (1..32).contains(&r) {
            self.x[r] = value;
        }
    }

    /// All 32 integer registers (`x0` first).
    pub fn xregs(&self) -> [u64; 32] {
        let mut r = [0; 32];
        r.copy_from_slice(&self.x[..32]);
        r[0] = 0;
        r
    }

    /// `fcsr` (frm << 5 | fflags).
    pub fn fcsr(&self) -> u64 {
        (self.frm << 5) | self.fflags
    }

    /// Sets `fcsr`.
    pub fn set_fcsr(&mut self, v: u64) {
        self.fflags = v & 0x1f;
        self.frm = (v >> 5) & 7;
    }

    /// Current privilege mode.
    pub fn privilege(&self) -> Priv {
        self.prv
    }

    /// Sets the privilege mode (system mode: boot loaders start harts in
    /// S-mode with the built-in SBI, in M-mode for firmware).
    pub fn set_privilege(&mut self, p: Priv) {
        if !self.user_only {
            self.prv = p;
            self.tlb_dirty = true;
            self.recheck = true;
        }
    }

    /// Sets the S-mode timer compare (`stimecmp`; the built-in SBI's
    /// `set_timer`): STIP is pending while `time >= value`.
    pub fn set_stimecmp(&mut self, value: u64) {
        self.csr.stimecmp = value;
        self.csr.mip &= !irq::STIP;
        self.recheck = true;
    }

    /// The control block other threads use to interrupt or stop this hart.
    pub fn control(&self) -> &Arc<HartControl> {
        &self.control
    }

    /// Instructions retired.
    pub fn instret(&self) -> u64 {
        self.instret
    }

    /// Reads a CSR with M-mode rights (for the machine's SBI and debugging).
    pub fn read_csr(&self, n: u16) -> Option<u64> {
        self.csr_read_at(n, Priv::Machine).ok()
    }

    /// Writes a CSR with M-mode rights.
    pub fn write_csr(&mut self, n: u16, v: u64) -> bool {
        let p = self.prv;
        self.prv = Priv::Machine;
        let r = self.csr_write(n, v).is_ok();
        self.prv = p;
        r
    }

    #[inline]
    pub(crate) fn fs_off(&self) -> bool {
        self.csr.mstatus & mstatus::FS == 0
    }

    #[inline]
    pub(crate) fn set_fs_dirty(&mut self) {
        self.csr.mstatus |= mstatus::FS_DIRTY;
    }

    fn time_now(&self) -> u64 {
        self.clock.now()
    }

    /// Effective `mip`: software bits, device lines, and the timers.
    pub(crate) fn mip(&self) -> u64 {
        let mut p = self.csr.mip | self.control.lines();
        let now = self.time_now();
        if now >= self.control.mtimecmp() {
            p |= irq::MTIP;
        }
        if now >= self.csr.stimecmp {
            p |= irq::STIP;
        }
        p
    }

    fn counter_allowed(&self, n: u16, prv: Priv) -> bool {
        let bit = 1u64 << (n & 31);
        match prv {
            Priv::Machine => true,
            Priv::Supervisor => self.csr.mcounteren & bit != 0,
            Priv::User => {
                self.user_only || (self.csr.mcounteren & bit != 0 && self.csr.scounteren & bit != 0)
            }
        }
    }

    fn stimecmp_allowed(&self, prv: Priv) -> bool {
        match prv {
            Priv::Machine => true,
            Priv::Supervisor => self.csr.menvcfg & (1 << 63) != 0 && self.csr.mcounteren & 2 != 0,
            Priv::User => false,
        }
    }

    /// The value a CSRRS/CSRRC read-modify-write starts from, given what
    /// the instruction read (`read`). For `mip` that is not the read value:
    /// the privileged spec has SEIP (and STIP while it is software-owned)
    /// read as the OR of the software bit and the controller's line, but
    /// the read-modify-write uses the software bit alone. Otherwise M-mode
    /// firmware setting SSIP with `csrs mip` (OpenSBI's IPI path) while the
    /// PLIC line is high would latch SEIP for good: an endless storm of
    /// external interrupts that nothing can claim.
    pub(crate) fn csr_rmw_base(&self, n: u16, read: u64) -> u64 {
        if n == csr::MIP {
            let soft = irq::SEIP | irq::STIP;
            (read & !soft) | (self.csr.mip & soft)
        } else {
            read
        }
    }

    /// CSR read with privilege checks. `Err` is an illegal instruction.
    pub(crate) fn csr_read(&self, n: u16) -> Result<u64, ()> {
        self.csr_read_at(n, self.prv)
    }

    fn csr_read_at(&self, n: u16, prv: Priv) -> Result<u64, ()> {
        use csr::*;
        if self.user_only {
            return match n {
                FFLAGS => Ok(self.fflags),
                FRM => Ok(self.frm),
                FCSR => Ok(self.fcsr()),
                CYCLE | INSTRET => Ok(self.instret),
                TIME => Ok(self.time_now()),
                _ => Err(()),
            };
        }
        let min_priv = ((n >> 8) & 3) as u8;
        if (prv as u8) < min_priv {
            return Err(());
        }
        let c = &self.csr;
        Ok(match n {
            FFLAGS | FRM | FCSR => {
                if self.fs_off() {
                    return Err(());
                }
                match n {
                    FFLAGS => self.fflags,
                    FRM => self.frm,
                    _ => self.fcsr(),
                }
            }
            CYCLE | INSTRET | TIME => {
                if !self.counter_allowed(n, prv) {
                    return Err(());
                }
                if n == TIME {
                    self.time_now()
                } else {
                    self.instret
                }
            }
            0xc03..=0xc1f => {
                if !self.counter_allowed(n, prv) {
                    return Err(());
                }
                0
            }
            SSTATUS => sstatus_of(c.mstatus),
            SIE => c.mie & c.mideleg,
            STVEC => c.stvec,
            SCOUNTEREN => c.scounteren,
            SENVCFG => c.senvcfg,
            SSCRATCH => c.sscratch,
            SEPC => c.sepc,
            SCAUSE => c.scause,
            STVAL => c.stval,
            SIP => self.mip() & c.mideleg,
            STIMECMP => {
                if !self.stimecmp_allowed(prv) {
                    return Err(());
                }
                c.stimecmp
            }
            SATP => {
                if prv == Priv::Supervisor && c.mstatus & mstatus::TVM != 0 {
                    return Err(());
                }
                c.satp
            }
            MVENDORID | MARCHID | MIMPID | MCONFIGPTR => 0,
            MHARTID => c.hartid,
            MSTATUS => status_with_sd(c.mstatus),
            MISA => MISA_VALUE,
            MEDELEG => c.medeleg,
            MIDELEG => c.mideleg,
            MIE => c.mie,
            MTVEC => c.mtvec,
            MCOUNTEREN => c.mcounteren,
            MENVCFG => c.menvcfg,
            MCOUNTINHIBIT => c.mcountinhibit,
            MSCRATCH => c.mscratch,
            MEPC => c.mepc,
            MCAUSE => c.mcause,
            MTVAL => c.mtval,
            MIP => self.mip(),
            MTINST | MTVAL2 | MSECCFG => 0,
            0x3a0..=0x3af => {
                if n & 1 != 0 {
                    return Err(());
                }
                c.pmpcfg[((n - PMPCFG0) / 2) as usize]
            }
            0x3b0..=0x3ef => c.pmpaddr[(n - PMPADDR0) as usize],
            MCYCLE | MINSTRET => self.instret,
            0xb03..=0xb1f | 0x323..=0x33f => 0u64,
            // Sdtrig with no triggers: tselect 0 selects a trigger of type 0
            // ("none"); tcontrol, tinfo read 0.
            0x7a0..=0x7a5 => 0,
            _ => return Err(()),
        })
    }

    /// CSR write with privilege checks (read-only CSRs are rejected by the
    /// caller, which knows whether the instruction writes).
    pub(crate) fn csr_write(&mut self, n: u16, v: u64) -> Result<(), ()> {
        use csr::*;
        if n >> 10 == 3 {
            return Err(());
        }
        if self.user_only {
            match n {
                FFLAGS => self.fflags = v & 0x1f,
                FRM => self.frm = v & 7,
                FCSR => self.set_fcsr(v),
                _ => return Err(()),
            }
            return Ok(());
        }
        let min_priv = ((n >> 8) & 3) as u8;
        if (self.prv as u8) < min_priv {
            return Err(());
        }
        match n {
            FFLAGS | FRM | FCSR => {
                if self.fs_off() {
                    return Err(());
                }
                match n {
                    FFLAGS => self.fflags = v & 0x1f,
                    FRM => self.frm = v & 7,
                    _ => self.set_fcsr(v),
                }
                self.set_fs_dirty();
            }
            SSTATUS => {
                let m = mstatus::SSTATUS_MASK & mstatus::WRITABLE;
                self.write_mstatus((self.csr.mstatus & !m) | (v & m));
            }
            SIE => {
                let m = self.csr.mideleg;
                self.csr.mie = (self.csr.mie & !m) | (v & m);
                self.recheck = true;
            }
            STVEC => self.csr.stvec = v & !2,
            SCOUNTEREN => self.csr.scounteren = v & 0xffff_ffff,
            SENVCFG => self.csr.senvcfg = v & 1,
            SSCRATCH => self.csr.sscratch = v,
            SEPC => self.csr.sepc = v & !1,
            SCAUSE => self.csr.scause = v,
            STVAL => self.csr.stval = v,
            SIP => {
                let m = self.csr.mideleg & irq::SSIP;
                self.csr.mip = (self.csr.mip & !m) | (v & m);
                self.recheck = true;
            }
            STIMECMP => {
                if !self.stimecmp_allowed(self.prv) {
                    return Err(());
                }
                self.csr.stimecmp = v;
                self.recheck = true;
            }
            SATP => {
                if self.prv == Priv::Supervisor && self.csr.mstatus & mstatus::TVM != 0 {
                    return Err(());
                }
                let mode = v >> 60;
                if mode == 0 || mode == 8 || mode == 9 {
                    // 16 ASID bits; the TLB is flushed on every write, so
                    // ASIDs are honoured conservatively.
                    self.csr.satp = v;
                    self.tlb_dirty = true;
                }
            }
            MSTATUS => self.write_mstatus(v),
            MISA | MCONFIGPTR | MTINST | MTVAL2 | MSECCFG => {}
            MEDELEG => self.csr.medeleg = v & 0xb3ff,
            MIDELEG => {
                self.csr.mideleg = v & (irq::SSIP | irq::STIP | irq::SEIP);
                self.recheck = true;
            }
            MIE => {
                self.csr.mie =
                    v & (irq::SSIP | irq::STIP | irq::SEIP | irq::MSIP | irq::MTIP | irq::MEIP);
                self.recheck = true;
            }
            MTVEC => self.csr.mtvec = v & !2,
            MCOUNTEREN => self.csr.mcounteren = v & 0xffff_ffff,
            MENVCFG => self.csr.menvcfg = v & ((1 << 63) | 1),
            MCOUNTINHIBIT => self.csr.mcountinhibit = v & 0xffff_fffd,
            MSCRATCH => self.csr.mscratch = v,
            MEPC => self.csr.mepc = v & !1,
            MCAUSE => self.csr.mcause = v,
            MTVAL => self.csr.mtval = v,
            MIP => {
                let mut m = irq::SSIP | irq::SEIP;
                if self.csr.menvcfg & (1 << 63) == 0 {
                    m |= irq::STIP;
                }
                self.csr.mip = (self.csr.mip & !m) | (v & m);
                self.recheck = true;
            }
            0x3a0..=0x3af => {
                if n & 1 != 0 {
                    return Err(());
                }
                self.csr.pmpcfg[((n - PMPCFG0) / 2) as usize] = v;
            }
            0x3b0..=0x3ef => self.csr.pmpaddr[(n - PMPADDR0) as usize] = v & ((1 << 54) - 1),
            MCYCLE | MINSTRET => self.instret = v,
            0xb03..=0xb1f | 0x323..=0x33f | 0x7a0..=0x7a5 => {}
            _ => return Err(()),
        }
        Ok(())
    }

    fn write_mstatus(&mut self, v: u64) {
        let old = self.csr.mstatus;
        let mut v = v & mstatus::WRITABLE;
        // MPP is WARL: 2 (reserved) becomes U.
        if (v & mstatus::MPP) >> mstatus::MPP_SHIFT == 2 {
            v &= !mstatus::MPP;
        }
        let new = (old & !mstatus::WRITABLE) | v | mstatus::UXL_SXL;
        self.csr.mstatus = new;
        // SUM selects its own TLB regime; the others change what cached
        // translations allow.
        let tlb_bits = mstatus::MPRV | mstatus::MXR | mstatus::MPP;
        if (old ^ new) & tlb_bits != 0 {
            self.tlb_dirty = true;
        }
        self.recheck = true;
    }

    /// The highest-priority pending and enabled interrupt, if any.
    pub(crate) fn pending_interrupt(&self) -> Option<u64> {
        let pending = self.mip() & self.csr.mie;
        if pending == 0 {
            return None;
        }
        let mstatus = self.csr.mstatus;
        let m_enabled = self.prv < Priv::Machine || mstatus & mstatus::MIE != 0;
        let s_enabled = self.prv < Priv::Supervisor
            || (self.prv == Priv::Supervisor && mstatus & mstatus::SIE != 0);
        let m_pending = if m_enabled {
            pending & !self.csr.mideleg
        } else {
            0
        };
        let s_pending = if s_enabled {
            pending & self.csr.mideleg
        } else {
            0
        };
        let pick = |p: u64| {
            [11u64, 3, 7, 9, 1, 5]
                .into_iter()
                .find(|&b| p & (1 << b) != 0)
        };
        pick(m_pending).or_else(|| pick(s_pending))
    }

    /// Takes a trap: exception or interrupt (cause with the top bit), in
    /// system mode. `pc` is the faulting/interrupted instruction.
    pub(crate) fn take_trap(&mut self, t: Trap) {
        let interrupt = t.cause & cause::INTERRUPT != 0;
        let code = t.cause & !cause::INTERRUPT;
        let deleg = if interrupt {
            self.csr.mideleg
        } else {
            self.csr.medeleg
        };
        let to_s = self.prv <= Priv::Supervisor && code < 64 && deleg & (1 << code) != 0;
        let ms = self.csr.mstatus;
        let (tvec, new_status);
        if to_s {
            self.csr.scause = t.cause;
            self.csr.sepc = self.pc;
            self.csr.stval = t.tval;
            let mut s = ms & !(mstatus::SPP | mstatus::SPIE | mstatus::SIE);
            if self.prv == Priv::Supervisor {
                s |= mstatus::SPP;
            }
            if ms & mstatus::SIE != 0 {
                s |= mstatus::SPIE;
            }
            new_status = s;
            tvec = self.csr.stvec;
            self.prv = Priv::Supervisor;
        } else {
            self.csr.mcause = t.cause;
            self.csr.mepc = self.pc;
            self.csr.mtval = t.tval;
            let mut s = ms & !(mstatus::MPP | mstatus::MPIE | mstatus::MIE);
            s |= (self.prv as u64) << mstatus::MPP_SHIFT;
            if ms & mstatus::MIE != 0 {
                s |= mstatus::MPIE;
            }
            new_status = s;
            tvec = self.csr.mtvec;
            self.prv = Priv::Machine;
        }
        self.csr.mstatus = new_status;
        let base = tvec & !3;
        self.pc = if interrupt && tvec & 1 != 0 {
            base.wrapping_add(4 * code)
        } else {
            base
        };
        // No TLB flush: each privilege (and SUM) has its own TLB, and the
        // mode change selects it (`SysMem::update_modes`).
        self.recheck = true;
        self.res_addr = u64::MAX;
    }

    /// `sfence.vma` of virtual address `va`: its translations go at the
    /// next block boundary (two different pages pending: all of them).
    pub(crate) fn sfence_page(&mut self, va: u64) {
        if self.tlb_dirty {
            return;
        }
        match self.tlb_flush_va {
            None => self.tlb_flush_va = Some(va),
            Some(v) if v >> 12 == va >> 12 => {}
            Some(_) => self.tlb_dirty = true,
        }
    }

    pub(crate) fn do_mret(&mut self) -> Result<u64, Trap> {
        if self.prv != Priv::Machine {
            return Err(Trap::illegal(0x3020_0073));
        }
        let ms = self.csr.mstatus;
        let mpp = Priv::from_bits((ms & mstatus::MPP) >> mstatus::MPP_SHIFT);
        let mut s = ms & !(mstatus::MPP | mstatus::MIE);
        if ms & mstatus::MPIE != 0 {
            s |= mstatus::MIE;
        }
        s |= mstatus::MPIE;
        if mpp != Priv::Machine {
            s &= !mstatus::MPRV;
        }
        self.csr.mstatus = s;
        self.prv = mpp;
        self.recheck = true;
        self.res_addr = u64::MAX;
        Ok(self.csr.mepc)
    }

    pub(crate) fn do_sret(&mut self) -> Result<u64, Trap> {
        if self.prv < Priv::Supervisor
            || (self.prv == Priv::Supervisor && self.csr.mstatus & mstatus::TSR != 0)
        {
            return Err(Trap::illegal(0x1020_0073));
        }
        let ms = self.csr.mstatus;
        let spp = if ms & mstatus::SPP != 0 {
            Priv::Supervisor
        } else {
            Priv::User
        };
        let mut s = ms & !(mstatus::SPP | mstatus::SIE | mstatus::MPRV);
        if ms & mstatus::SPIE != 0 {
            s |= mstatus::SIE;
        }
        s |= mstatus::SPIE;
        self.csr.mstatus = s;
        self.prv = spp;
        self.recheck = true;
        self.res_addr = u64::MAX;
        Ok(self.csr.sepc)
    }

    /// Earliest deadline (ticks) of a timer whose interrupt `mie` enables:
    /// when a sleeping hart must wake.
    pub(crate) fn next_deadline(&self, mie: u64) -> u64 {
        let mut d = u64::MAX;
        if mie & irq::MTIP != 0 {
            d = d.min(self.control.mtimecmp());
        }
        if mie & irq::STIP != 0 {
            d = d.min(self.csr.stimecmp);
        }
        d
    }
}

fn status_with_sd(s: u64) -> u64 {
    if s & mstatus::FS == mstatus::FS_DIRTY {
        s | mstatus::SD
    } else {
        s
    }
}

fn sstatus_of(ms: u64) -> u64 {
    status_with_sd(ms) & mstatus::SSTATUS_MASK
}
