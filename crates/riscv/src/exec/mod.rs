//! The interpreter: runs one decoded block ([`exec_block`]), monomorphised
//! over the memory path ([`Mem`]) so loads and stores inline into the loop.
//!
//! One file per ISA extension, as QEMU's translator has one
//! `target/riscv/insn_trans/trans_rv*.c.inc` per extension: [`rvi`] (base
//! integer), [`rvm`], [`rva`], [`rvfd`] (F and D), [`rvb`] (Zba, Zbb, Zbs)
//! and [`system`] (Zicsr, Zifencei, privileged). Each has one
//! `#[inline(always)]` function with a `match` over its own kinds, called
//! from `exec_block`'s single `match` with the kind as a constant, so its
//! own `match` folds away: one jump table in the hot loop, no call and no
//! second dispatch per instruction. (Routing a group of kinds to a
//! function that matches again left two indirect jumps per instruction:
//! LLVM did not merge the nested switches.)

use crate::cpu::{Core, Trap};
use crate::decode::{Insn, Kind};
use crate::mmu::Mem;

/// Defines the operand macros the extension files share, inside an
/// instruction function that has `core: &mut Core` and `i: &Insn` in
/// scope, and `start` (the block's pc) when given (for `pc!` and `next!`). Macros, not locals or accessor calls made up
/// front: each arm loads only what it uses (operands hoisted above the
/// `match` would cost every instruction). `$d` is a literal `$`, passed in
/// so that the macros defined here can take arguments.
macro_rules! operands {
    ($d:tt $core:ident, $i:ident $(, $start:ident)?) => {
        #[allow(unused_macros)]
        macro_rules! x {
            ($d r:expr) => {
                $core.x[($d r as usize) & 63]
            };
        }
        #[allow(unused_macros)]
        macro_rules! rs1 {
            () => {
                x!($i.rs1)
            };
        }
        #[allow(unused_macros)]
        macro_rules! rs2 {
            () => {
                x!($i.rs2)
            };
        }
        #[allow(unused_macros)]
        macro_rules! imm {
            () => {
                ($i.imm as i64 as u64)
            };
        }
        $(
            #[allow(unused_macros)]
            macro_rules! pc {
                () => {
                    $start.wrapping_add($i.off as u64)
                };
            }
            #[allow(unused_macros)]
            macro_rules! next {
                () => {
                    pc!().wrapping_add($i.size() as u64)
                };
            }
        )?
        #[allow(unused_macros)]
        macro_rules! wr {
            ($d v:expr) => {{
                let v = $d v;
                x!($i.rd) = v;
            }};
        }
        /// Traps (`exec_block` adds the pc and the retired count).
        #[allow(unused_macros)]
        macro_rules! trap {
            ($d t:expr) => {
                return Err($d t)
            };
        }
        #[allow(unused_macros)]
        macro_rules! ill {
            () => {
                trap!($crate::cpu::Trap::illegal($i.raw))
            };
        }
        #[allow(unused_macros)]
        macro_rules! tri {
            ($d e:expr) => {
                match $d e {
                    Ok(v) => v,
                    Err(t) => trap!(t),
                }
            };
        }
    };
}

/// The block loop's one `match`: the arms given first, then for every
/// `ext: Kind Kind ...;` line one arm per kind, `Kind::K => run!(ext, K)`
/// (`run!` is defined by the caller, which knows each extension's
/// arguments). Listing the kinds per extension keeps the routing readable
/// while each arm still passes its kind as a constant.
macro_rules! dispatch {
    ($kind:expr; $($pat:pat => $e:expr,)* ; $($ext:ident: $($k:ident)+;)*) => {
        match $kind {
            $($pat => $e,)*
            $($(Kind::$k => run!($ext, $k),)+)*
        }
    };
}

mod rva;
mod rvb;
mod rvfd;
mod rvi;
mod rvm;
mod system;

/// What the block loop does after an instruction that did not trap.
pub(super) enum Flow {
    /// Runs the block's next instruction.
    Next,
    /// Leaves the block: execution continues at this pc.
    Jump(u64),
}

/// The outcome of one instruction.
pub(super) type Step = Result<Flow, Trap>;

/// A trap, the pc of the trapping instruction, and the number of
/// instructions of the block retired before it.
pub(crate) type Fault = (Trap, u64, u32);

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
    // Every block ends with an instruction that leaves it (a terminator,
    // see `Insn::ends_block`, or the BlockEnd sentinel). With that checked
    // once here, the loop needs no end test and no counter.
    if !insns.last().is_some_and(Insn::ends_block) {
        return Ok(start);
    }
    let base = insns.as_ptr();
    let mut p = base;
    loop {
        // SAFETY: `p` stays inside `insns`: the last element leaves the
        // block, so the loop never advances past it.
        let i = unsafe { &*p };
        // SAFETY: at most one past an element of `insns` (see above).
        p = unsafe { p.add(1) };
        // Instructions retired before this one (only needed on traps and
        // by the counter CSRs).
        // SAFETY: both pointers are inside (or one past) `insns`.
        let n = || unsafe { p.offset_from(base) as u32 - 1 };
        // One extension function per kind, called with the kind as a
        // constant: inlined, its own `match` folds away, so this is the
        // only dispatch of the loop.
        macro_rules! run {
            (rvi, $k:ident) => {
                rvi::exec(Kind::$k, core, mem, i, start)
            };
            (system, $k:ident) => {
                system::exec(Kind::$k, core, i, start, n)
            };
            (rvm, $k:ident) => {
                rvm::exec(Kind::$k, core, i)
            };
            (rva, $k:ident) => {
                rva::exec(Kind::$k, core, mem, i)
            };
            (rvfd, $k:ident) => {
                rvfd::exec(Kind::$k, core, mem, i)
            };
            (rvb, $k:ident) => {
                rvb::exec(Kind::$k, core, i)
            };
        }
        let step = dispatch! { i.kind;
            Kind::Illegal => Err(Trap::illegal(i.raw)),
            Kind::BlockEnd => Ok(Flow::Jump(start.wrapping_add(i.off as u64))),
            ;
            rvi: Lui Auipc Jal Jalr Beq Bne Blt Bge Bltu Bgeu Lb Lh Lw Ld Lbu Lhu Lwu Sb Sh Sw
                Sd Addi Slti Sltiu Xori Ori Andi Slli Srli Srai Add Sub Sll Slt Sltu Xor Srl Sra
                Or And Addiw Slliw Srliw Sraiw Addw Subw Sllw Srlw Sraw Fence;
            system: FenceI Ecall Ebreak Mret Sret Wfi SfenceVma Csrrw Csrrs Csrrc Csrrwi Csrrsi
                Csrrci;
            rvm: Mul Mulh Mulhsu Mulhu Div Divu Rem Remu Mulw Divw Divuw Remw Remuw;
            rva: LrW ScW AmoSwapW AmoAddW AmoXorW AmoAndW AmoOrW AmoMinW AmoMaxW AmoMinuW
                AmoMaxuW LrD ScD AmoSwapD AmoAddD AmoXorD AmoAndD AmoOrD AmoMinD AmoMaxD
                AmoMinuD AmoMaxuD;
            rvfd: Flw Fsw FmaddS FmsubS FnmsubS FnmaddS FaddS FsubS FmulS FdivS FsqrtS FsgnjS
                FsgnjnS FsgnjxS FminS FmaxS FcvtWS FcvtWuS FcvtLS FcvtLuS FmvXW FeqS FltS FleS
                FclassS FcvtSW FcvtSWu FcvtSL FcvtSLu FmvWX Fld Fsd FmaddD FmsubD FnmsubD
                FnmaddD FaddD FsubD FmulD FdivD FsqrtD FsgnjD FsgnjnD FsgnjxD FminD FmaxD
                FcvtWD FcvtWuD FcvtLD FcvtLuD FmvXD FeqD FltD FleD FclassD FcvtDW FcvtDWu
                FcvtDL FcvtDLu FmvDX FcvtSD FcvtDS;
            rvb: AddUw Sh1add Sh2add Sh3add Sh1addUw Sh2addUw Sh3addUw SlliUw Andn Orn Xnor
                Clz Clzw Ctz Ctzw Cpop Cpopw Max Maxu Min Minu SextB SextH ZextH Rol Rolw Ror
                Rori Roriw Rorw OrcB Rev8 Bclr Bclri Bext Bexti Binv Binvi Bset Bseti;
        };
        match step {
            Ok(Flow::Next) => {}
            Ok(Flow::Jump(next)) => return Ok(next),
            Err(t) => return Err((t, start.wrapping_add(i.off as u64), n())),
        }
    }
}
