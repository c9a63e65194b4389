//! How the interrupt controllers reach a hart's `mip` bits. (Devices drive
//! their lines through the one interrupt-line trait, [`vmm::IrqLine`].)

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
