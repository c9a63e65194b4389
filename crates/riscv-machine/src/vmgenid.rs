//! The VM generation ID device ("microsoft,vmgenid" in the device tree):
//! 16 bytes that change whenever the machine is restored from a snapshot,
//! with an interrupt that says so.
//!
//! Clones of one snapshot start with the same kernel random-number state.
//! Writing fresh bytes into `/dev/urandom` does not help at once: Linux
//! mixes them into its input pool and reseeds its generator only when its
//! reseed interval passes. A new generation ID does: Linux's vmgenid driver
//! (built into Debian's kernels, device-tree support since 6.10) passes it
//! to `add_vmfork_randomness`, which reseeds the generator immediately. It
//! is how Firecracker keeps its restored clones apart.
//!
//! The driver maps the region and copies the ID out of it from its
//! interrupt handler; nothing acknowledges the interrupt, so the line
//! (level-triggered at the PLIC) drops when the guest reads the ID.

use std::sync::{Arc, Mutex};

use crate::mmio::MmioDevice;

/// Size of the ID, as the ACPI and device-tree bindings define it.
pub const ID_LEN: usize = 16;

/// The device: its current ID and its interrupt line.
pub struct VmGenId {
    id: Mutex<[u8; ID_LEN]>,
    line: Arc<dyn vmm::IrqLine>,
}

impl VmGenId {
    pub fn new(id: [u8; ID_LEN], line: Arc<dyn vmm::IrqLine>) -> VmGenId {
        VmGenId {
            id: Mutex::new(id),
            line,
        }
    }

    /// The current ID (saved in snapshots, so a restore can tell a new
    /// one from it).
    pub fn id(&self) -> [u8; ID_LEN] {
        *self.id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new generation: a new ID, and the interrupt that tells the
    /// guest to read it.
    pub fn new_generation(&self, id: [u8; ID_LEN]) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
        self.line.raise();
    }
}

impl MmioDevice for VmGenId {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let id = self.id();
        // Reading the ID is the guest's answer to the interrupt.
        self.line.lower();
        let mut buf = [0u8; 8];
        for (i, b) in buf.iter_mut().enumerate().take(size.min(8) as usize) {
            if let Some(v) = offset
                .checked_add(i as u64)
                .and_then(|o| id.get(o as usize))
            {
                *b = *v;
            }
        }
        u64::from_le_bytes(buf)
    }

    /// The region is read-only.
    fn write(&self, _offset: u64, _size: u8, _value: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);
    impl vmm::IrqLine for Line {
        fn set_level(&self, level: bool) {
            self.0.store(level, Ordering::SeqCst);
        }
    }

    #[test]
    fn reads_the_id_at_any_size_and_a_read_drops_the_line() {
        let line = Arc::new(Line::default());
        let id: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let d = VmGenId::new(id, line.clone());
        assert_eq!(d.read(0, 8), u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(d.read(8, 4), u64::from(u32::from_le_bytes([9, 10, 11, 12])));
        assert_eq!(d.read(15, 2), 16);
        assert_eq!(d.read(100, 8), 0);
        assert_eq!(d.read(u64::MAX, 8), 0);
        d.new_generation([0xaa; 16]);
        assert!(line.0.load(Ordering::SeqCst));
        assert_eq!(d.read(0, 1), 0xaa);
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(d.id(), [0xaa; 16]);
    }
}
