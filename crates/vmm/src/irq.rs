//! The interrupt line between a device model and an interrupt controller.

/// One level-triggered interrupt line from a device to an interrupt
/// controller (a PLIC source today, a KVM irqfd/resamplefd pair later).
///
/// Calls may come from any thread: a vCPU thread that acknowledges an
/// interrupt in a device register, or a device's worker thread that
/// completes a request. Because a device thread may raise a line while every
/// vCPU sleeps (WFI, HLT), an implementation must wake the vCPUs it targets.
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`, asserted) or low (`false`).
    fn set_level(&self, level: bool);

    /// Asserts the line.
    fn raise(&self) {
        self.set_level(true);
    }

    /// Deasserts the line.
    fn lower(&self) {
        self.set_level(false);
    }
}
