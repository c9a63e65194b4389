//! Memory-mapped I/O dispatch: the board's devices by physical address.

use std::sync::Arc;

/// A device with registers in the physical address space. Harts call it from
/// their own threads, so it takes `&self` and synchronises internally.
pub trait MmioDevice: Send + Sync {
    /// Reads `size` (1, 2, 4 or 8) bytes at `offset` from the device's base.
    fn read(&self, offset: u64, size: u8) -> u64;
    /// Writes the low `size` bytes of `value` at `offset`.
    fn write(&self, offset: u64, size: u8, value: u64);
}

struct Region {
    base: u64,
    size: u64,
    dev: Arc<dyn MmioDevice>,
}

/// The devices of a board, sorted by address.
#[derive(Default)]
pub struct MmioBus {
    regions: Vec<Region>,
}

impl MmioBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `dev` at `[base, base + size)`. Returns false if that overlaps a
    /// region already mapped.
    pub fn add(&mut self, base: u64, size: u64, dev: Arc<dyn MmioDevice>) -> bool {
        let end = base.saturating_add(size);
        if self
            .regions
            .iter()
            .any(|r| base < r.base + r.size && r.base < end)
        {
            return false;
        }
        self.regions.push(Region { base, size, dev });
        self.regions.sort_by_key(|r| r.base);
        true
    }

    fn find(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.base <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        (addr - r.base < r.size).then_some(r)
    }

    /// Reads from the device at `addr`; `None` if nothing is mapped there
    /// (the CPU then raises an access fault).
    pub fn read(&self, addr: u64, size: u8) -> Option<u64> {
        let r = self.find(addr)?;
        Some(r.dev.read(addr - r.base, size))
    }

    /// Writes to the device at `addr`; false if nothing is mapped there.
    pub fn write(&self, addr: u64, size: u8, value: u64) -> bool {
        match self.find(addr) {
            Some(r) => {
                r.dev.write(addr - r.base, size, value);
                true
            }
            None => false,
        }
    }
}
