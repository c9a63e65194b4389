//! How the interrupt controllers reach a hart's `mip` bits. (Devices drive
//! their lines through the one interrupt-line trait, [`vmm::IrqLine`].)

/// `mip` bit numbers of the interrupts the board drives.
pub const SSIP: u64 = 1 << 1;
pub const MSIP: u64 = 1 << 3;
pub const STIP: u64 = 1 << 5;
pub const MTIP: u64 = 1 << 7;
pub const SEIP: u64 = 1 << 9;
pub const MEIP: u64 = 1 << 11;

/// The harts' interrupt-pending inputs, as the interrupt controllers see
/// them. Implementations must be callable from any thread and must wake a
/// hart that sleeps in WFI when a bit it waits for becomes pending.
pub trait HartIrqs: Send + Sync {
    /// Drives the `mask` bits of hart `hart`'s `mip` to `level`.
    fn set_mip(&self, hart: usize, mask: u64, level: bool);
}

/// The harts of a machine, through their control blocks: device lines are
/// raised and lowered there, which also wakes a hart sleeping in WFI.
pub struct HartLines(pub Vec<std::sync::Arc<riscv::HartControl>>);

impl HartIrqs for HartLines {
    fn set_mip(&self, hart: usize, mask: u64, level: bool) {
        if let Some(h) = self.0.get(hart) {
            if level {
                h.raise(mask);
            } else {
                h.lower(mask);
            }
        }
    }
}
