//! Guest RAM shared by the CPU's fast path and the device models.

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::{Error, Result};

/// One contiguous block of guest RAM: a `vm-memory` [`GuestMemoryMmap`] for
/// the devices, plus its host address for the CPU.
///
/// Two ways to get one:
///
/// * [`GuestRam::new`] (preferred): the crate maps anonymous memory itself
///   (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`, pages are committed only
///   when touched) and the CPU takes [`host_ptr`](Self::host_ptr). The mapping
///   lives as long as any clone of `GuestRam` or of [`memory`](Self::memory)
///   does, so a CPU that keeps a `GuestRam` next to its pointer can never see
///   the pointer dangle.
/// * [`GuestRam::from_raw`] (`unsafe`): wraps a mapping the board already made.
///
/// Guest RAM is shared memory in the virtio sense: a vCPU and a device thread
/// may touch the same bytes at once (the guest is racing with itself). The
/// device side only uses `vm-memory`'s volatile accessors; the CPU side should
/// likewise use raw-pointer (or atomic) accesses, never `&mut [u8]`s that
/// outlive an instruction.
#[derive(Clone, Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    base: u64,
    size: usize,
    host: *mut u8,
}

// SAFETY: `host` points into the mapping owned (through an `Arc`) by `memory`,
// which is itself `Send + Sync`; `GuestRam` never dereferences the pointer, it
// only hands it out, so sharing it between threads adds no data race that
// `GuestMemoryMmap` does not already account for.
unsafe impl Send for GuestRam {}
// SAFETY: see `Send` above.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps `size` bytes of zeroed anonymous memory as guest-physical
    /// `base..base + size`.
    pub fn new(base: u64, size: usize) -> Result<Self> {
        let err = |reason: String| Error::GuestRam { base, size, reason };
        if size == 0 {
            return Err(err("size is zero".into()));
        }
        base.checked_add(size as u64 - 1)
            .ok_or_else(|| err("region wraps around the address space".into()))?;
        let region = MmapRegion::new(size).map_err(|e| err(format!("mmap failed: {e}")))?;
        Self::from_region(region, base)
    }

    /// Wraps an existing host mapping of `size` bytes at `host` as guest
    /// physical `base..base + size`. The mapping is NOT unmapped when the
    /// last clone is dropped: its owner does that.
    ///
    /// # Safety
    ///
    /// * `host..host + size` must be one readable and writable mapping of the
    ///   current process (e.g. from `mmap(PROT_READ | PROT_WRITE,
    ///   MAP_PRIVATE | MAP_ANONYMOUS)`), and `host` must be page-aligned.
    /// * It must stay mapped, and not be remapped, until the returned value,
    ///   all its clones, all clones of [`memory`](Self::memory), and every
    ///   device transport holding one are dropped (in particular, shut the
    ///   transports down before unmapping).
    /// * Nothing may hold a Rust reference (`&[u8]`/`&mut [u8]`) into it while
    ///   devices run; access it through raw pointers only.
    pub unsafe fn from_raw(base: u64, host: *mut u8, size: usize) -> Result<Self> {
        let err = |reason: String| Error::GuestRam { base, size, reason };
        if size == 0 || host.is_null() {
            return Err(err("empty region or null host pointer".into()));
        }
        base.checked_add(size as u64 - 1)
            .ok_or_else(|| err("region wraps around the address space".into()))?;
        // SAFETY: the caller guarantees that `host..host + size` is a live
        // read/write private anonymous mapping outliving the region (see the
        // function's contract). `build_raw` records it as not owned, so the
        // region will not unmap it.
        let region = unsafe {
            MmapRegion::build_raw(
                host,
                size,
                libc_prot_read_write(),
                libc_map_private_anonymous(),
            )
        }
        .map_err(|e| err(format!("cannot wrap the mapping: {e}")))?;
        Self::from_region(region, base)
    }

    pub(crate) fn from_region(region: MmapRegion, base: u64) -> Result<Self> {
        let size = region.size();
        let host = region.as_ptr();
        let err = |reason: &str| Error::GuestRam {
            base,
            size,
            reason: reason.into(),
        };
        let region = GuestRegionMmap::new(region, GuestAddress(base))
            .ok_or_else(|| err("region wraps around the address space"))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| err(&format!("cannot build guest memory: {e}")))?;
        Ok(GuestRam {
            memory,
            base,
            size,
            host,
        })
    }

    /// The guest memory for the device models (cheap to clone: regions are
    /// reference-counted).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Host address of guest-physical [`base`](Self::base). Valid while this
    /// `GuestRam` (or any clone of it or of its memory) is alive.
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }

    /// First guest-physical address of the RAM.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Host address of guest-physical `gpa..gpa + len`, if the whole range is
    /// RAM. For the CPU's slow path (TLB fill).
    pub fn host_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let off = gpa.checked_sub(self.base)?;
        let end = off.checked_add(len as u64)?;
        if end > self.size as u64 {
            return None;
        }
        // The offset is below `size`, so it fits in usize and stays inside
        // the mapping.
        Some(self.host.wrapping_add(off as usize))
    }
}

// vm-memory's builder wants the prot/flags the mapping was made with; they
// only matter for its own bookkeeping (it never remaps), so the common values
// are recorded here rather than making every caller depend on libc.
fn libc_prot_read_write() -> i32 {
    libc::PROT_READ | libc::PROT_WRITE
}

fn libc_map_private_anonymous() -> i32 {
    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn new_ram_is_shared_with_host_pointer() {
        let ram = GuestRam::new(0x8000_0000, 1 << 20).unwrap();
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x8000_0010))
            .unwrap();
        // SAFETY: offset 0x10..0x14 lies inside the 1 MiB mapping kept alive
        // by `ram`.
        let v = unsafe { (ram.host_ptr().add(0x10) as *const u32).read_unaligned() };
        assert_eq!(v, 0xdead_beef);
        assert!(ram.host_address(0x8000_0000 + (1 << 20) - 4, 4).is_some());
        assert!(ram.host_address(0x8000_0000 + (1 << 20) - 3, 4).is_none());
        assert!(ram.host_address(0x7fff_ffff, 1).is_none());
        assert!(!ram.memory().address_in_range(GuestAddress(0x8010_0000)));
    }

    #[test]
    fn raw_mapping_is_wrapped_not_owned() {
        let size = 64 << 10;
        // SAFETY: plain anonymous mapping, checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: `p` is a fresh read/write mapping of `size` bytes that is
        // unmapped only after `ram` is dropped.
        let ram = unsafe { GuestRam::from_raw(0x1000_0000, p as *mut u8, size) }.unwrap();
        ram.memory()
            .write_obj(7u8, GuestAddress(0x1000_0000 + 5))
            .unwrap();
        drop(ram);
        // SAFETY: still mapped (the wrapper did not unmap it).
        assert_eq!(unsafe { *(p as *const u8).add(5) }, 7);
        // SAFETY: we own the mapping and nothing refers to it any more.
        assert_eq!(unsafe { libc::munmap(p, size) }, 0);
    }

    #[test]
    fn bad_regions_are_refused() {
        assert!(GuestRam::new(0, 0).is_err());
        assert!(GuestRam::new(u64::MAX - 10, 4096).is_err());
    }
}
