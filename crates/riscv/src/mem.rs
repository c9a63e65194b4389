//! Guest memory as the CPU sees it.
//!
//! Two flavours, both designed so the interpreter's load/store fast path is a
//! couple of compares and one host memory access:
//!
//! * [`UserSpace`]: user-mode emulation. The whole guest virtual address
//!   space is one reserved range of host virtual memory (`host_base() + addr`),
//!   with one permission byte per 4 KiB guest page. Faults are precise
//!   because every access checks the permission table first; no host signal
//!   handler is needed. `linux-user` owns the layout (mmap, brk, munmap,
//!   mprotect) and keeps the table in step through [`UserSpace::set_perms`] or
//!   the `map_*`/`unmap`/`protect` helpers.
//! * [`Bus`]: system mode. The machine gives the physical memory map: RAM
//!   regions as host pointers (obtained once, used by the TLB fast path) and
//!   MMIO callbacks for everything else. The hart's MMU (Sv39/Sv48 + TLB)
//!   sits in front of it.
//!
//! Both keep a per-page "holds translated code" mark so stores into code
//! pages invalidate the decoded-block caches of every hart (see
//! [`CodeMap`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::PAGE_SIZE;

/// Errors of the memory helpers.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The range leaves the guest address space.
    #[error("guest range {addr:#x}+{len:#x} is outside the {size:#x}-byte address space")]
    OutOfRange {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
        /// Size of the address space.
        size: u64,
    },
    /// A page in the range lacks the needed permission.
    #[error("guest address {addr:#x} is not mapped with the needed permission")]
    Fault {
        /// First faulting address.
        addr: u64,
    },
    /// An address or length is not page aligned where it must be.
    #[error("guest range {addr:#x}+{len:#x} is not page aligned")]
    Unaligned {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// The host refused to reserve or map memory.
    #[error("host mmap failed: {0}")]
    Host(std::io::Error),
}

/// Guest page permissions in a [`UserSpace`] (a bit set).
pub mod perm {
    /// Readable.
    pub const R: u8 = 1;
    /// Writable.
    pub const W: u8 = 2;
    /// Executable.
    pub const X: u8 = 4;
    /// Internal: the page holds code that some hart has decoded. Stores to it
    /// take the slow path that invalidates decoded blocks. Ignored in the
    /// `perms` argument of the setters.
    pub(crate) const CODE: u8 = 8;
}

/// A user-mode guest address space: a host reservation plus a permission
/// table. Shared by all guest threads of a process (`Arc<UserSpace>`); all
/// methods take `&self`.
pub struct UserSpace {
    base: *mut u8,
    size: u64,
    perms: *mut AtomicU8,
    code_gen: AtomicU64,
}

// SAFETY: the raw pointers refer to host mappings owned by this value for its
// whole life; all mutation of the permission table goes through atomics, and
// guest data races on guest memory are the guest's own business (as on real
// hardware), never a hazard to the emulator's own data structures.
unsafe impl Send for UserSpace {}
// SAFETY: see `Send` above.
unsafe impl Sync for UserSpace {}

impl std::fmt::Debug for UserSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpace")
            .field("base", &self.base)
            .field("size", &self.size)
            .finish()
    }
}

fn host_mmap(addr: *mut u8, len: usize, prot: i32, flags: i32) -> Result<*mut u8, std::io::Error> {
    // SAFETY: anonymous mapping; when MAP_FIXED is given the caller passes a
    // range inside a reservation it owns.
    let p = unsafe { libc::mmap(addr.cast(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl UserSpace {
    /// Reserves a guest address space of `1 << addr_bits` bytes (Linux on
    /// riscv64 Sv39 gives user space 38 bits; 47 is the most an x86-64 host
    /// can reserve). Nothing is accessible until mapped.
    pub fn new(addr_bits: u32) -> Result<Self, MemError> {
        let addr_bits = addr_bits.clamp(20, 46);
        let size = 1u64 << addr_bits;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let base = host_mmap(std::ptr::null_mut(), size as usize, libc::PROT_NONE, flags)
            .map_err(MemError::Host)?;
        let pages = (size / PAGE_SIZE) as usize;
        let perms = match host_mmap(
            std::ptr::null_mut(),
            pages,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        ) {
            Ok(p) => p.cast::<AtomicU8>(),
            Err(e) => {
                // SAFETY: unmapping the reservation made just above.
                unsafe { libc::munmap(base.cast(), size as usize) };
                return Err(MemError::Host(e));
            }
        };
        Ok(UserSpace {
            base,
            size,
            perms,
            code_gen: AtomicU64::new(0),
        })
    }

    /// Host address of guest address 0. Guest address `a` lives at
    /// `host_base() + a` for every `a < size()`.
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Size of the guest address space in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check_range(&self, addr: u64, len: u64) -> Result<(), MemError> {
        if addr > self.size || len > self.size - addr {
            return Err(MemError::OutOfRange {
                addr,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn check_page_range(&self, addr: u64, len: u64) -> Result<(), MemError> {
        if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(MemError::Unaligned { addr, len });
        }
        self.check_range(addr, len)
    }

    #[inline(always)]
    pub(crate) fn perm_slot(&self, page: u64) -> &AtomicU8 {
        debug_assert!(page < self.size / PAGE_SIZE);
        // SAFETY: callers pass page < size / PAGE_SIZE, inside the table.
        unsafe { &*self.perms.add(page as usize) }
    }

    /// Permission bits ([`perm`]) of the page holding `addr` (0 outside the
    /// space).
    pub fn perms(&self, addr: u64) -> u8 {
        if addr >= self.size {
            return 0;
        }
        self.perm_slot(addr / PAGE_SIZE).load(Ordering::Relaxed) & (perm::R | perm::W | perm::X)
    }

    /// Sets the guest permissions of the pages `[addr, addr+len)` (page
    /// aligned). The host mapping must already allow what the guest may do:
    /// readable for R or X, writable for W. Invalidates decoded code in the
    /// range.
    pub fn set_perms(&self, addr: u64, len: u64, perms: u8) -> Result<(), MemError> {
        self.check_page_range(addr, len)?;
        let perms = perms & (perm::R | perm::W | perm::X);
        let mut had_code = false;
        for page in addr / PAGE_SIZE..(addr + len) / PAGE_SIZE {
            let old = self.perm_slot(page).swap(perms, Ordering::Relaxed);
            had_code |= old & perm::CODE != 0;
        }
        if had_code {
            self.code_gen.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Maps fresh zeroed anonymous host memory at `[addr, addr+len)` (page
    /// aligned), replacing what was there, with guest permissions `perms`.
    pub fn map_anonymous(&self, addr: u64, len: u64, perms: u8) -> Result<(), MemError> {
        self.check_page_range(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        host_mmap(
            // SAFETY: pointer arithmetic inside the reservation, checked above.
            unsafe { self.base.add(addr as usize) },
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
        )
        .map_err(MemError::Host)?;
        self.set_perms(addr, len, perms)
    }

    /// Unmaps `[addr, addr+len)`: the host range returns to an inaccessible
    /// reservation and the guest loses all permissions there.
    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), MemError> {
        self.check_page_range(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        self.set_perms(addr, len, 0)?;
        host_mmap(
            // SAFETY: pointer arithmetic inside the reservation, checked above.
            unsafe { self.base.add(addr as usize) },
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
        )
        .map_err(MemError::Host)?;
        Ok(())
    }

    /// True when every page of `[addr, addr+len)` has all permission bits of
    /// `need`.
    pub fn check(&self, addr: u64, len: u64, need: u8) -> bool {
        if self.check_range(addr, len).is_err() {
            return false;
        }
        if len == 0 {
            return true;
        }
        (addr / PAGE_SIZE..=(addr + len - 1) / PAGE_SIZE)
            .all(|p| self.perm_slot(p).load(Ordering::Relaxed) & need == need)
    }

    fn first_fault(&self, addr: u64, len: u64, need: u8) -> MemError {
        if let Err(e) = self.check_range(addr, len) {
            return e;
        }
        for p in addr / PAGE_SIZE..=(addr + len - 1) / PAGE_SIZE {
            if self.perm_slot(p).load(Ordering::Relaxed) & need != need {
                return MemError::Fault {
                    addr: (p * PAGE_SIZE).max(addr),
                };
            }
        }
        MemError::Fault { addr }
    }

    /// Copies guest memory into `buf`, checking read permission (for
    /// syscall arguments).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        if !self.check(addr, len, perm::R) {
            return Err(self.first_fault(addr, len, perm::R));
        }
        // SAFETY: the range is inside the reservation and mapped readable
        // (checked against the permission table, which linux-user keeps in
        // step with the host mappings).
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(addr as usize), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into guest memory, checking write permission and
    /// invalidating decoded code it overwrites.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        if !self.check(addr, len, perm::W) {
            return Err(self.first_fault(addr, len, perm::W));
        }
        if len > 0 {
            self.note_store(addr, len);
        }
        // SAFETY: as in `read`, with write permission checked.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(addr as usize), data.len())
        };
        Ok(())
    }

    /// Host pointer for `[addr, addr+len)` if every page has `need`.
    /// The pointer stays valid until the range is unmapped.
    pub fn host_ptr(&self, addr: u64, len: u64, need: u8) -> Option<*mut u8> {
        if !self.check(addr, len, need) {
            return None;
        }
        // SAFETY: pointer arithmetic inside the reservation, checked above.
        Some(unsafe { self.base.add(addr as usize) })
    }

    /// Invalidates decoded code in `[addr, addr+len)` on every hart (call it
    /// after changing memory behind the emulator's back, e.g. a file mmap
    /// over existing code). Harts notice at their next block boundary.
    pub fn invalidate_code(&self, addr: u64, len: u64) {
        if len == 0 || addr >= self.size {
            return;
        }
        let end = addr.saturating_add(len).min(self.size);
        let mut had = false;
        for p in addr / PAGE_SIZE..=(end - 1) / PAGE_SIZE {
            let old = self.perm_slot(p).fetch_and(!perm::CODE, Ordering::Relaxed);
            had |= old & perm::CODE != 0;
        }
        if had {
            self.code_gen.fetch_add(1, Ordering::Release);
        }
    }

    /// A store hit `[addr, addr+len)`: drop code marks there.
    #[inline]
    pub(crate) fn note_store(&self, addr: u64, len: u64) {
        let first = addr / PAGE_SIZE;
        let last = (addr + len - 1) / PAGE_SIZE;
        if (first..=last).any(|p| self.perm_slot(p).load(Ordering::Relaxed) & perm::CODE != 0) {
            self.invalidate_code(addr, len);
        }
    }

    /// The code generation counter, for generated code that polls it.
    pub(crate) fn code_gen_ptr(&self) -> *const u64 {
        self.code_gen.as_ptr()
    }

    /// The permission table (one byte per page), for generated code.
    pub(crate) fn perm_table(&self) -> *const u8 {
        self.perms.cast()
    }

    #[inline(always)]
    pub(crate) fn code_gen(&self) -> u64 {
        self.code_gen.load(Ordering::Acquire)
    }

    pub(crate) fn mark_code(&self, page: u64) {
        self.perm_slot(page).fetch_or(perm::CODE, Ordering::Relaxed);
    }
}

impl Drop for UserSpace {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` and are owned here.
        unsafe {
            libc::munmap(self.base.cast(), self.size as usize);
            libc::munmap(self.perms.cast(), (self.size / PAGE_SIZE) as usize);
        }
    }
}

/// One RAM region of a machine's physical address space, backed by host
/// memory.
#[derive(Clone, Copy, Debug)]
pub struct RamRegion {
    base: u64,
    len: u64,
    host: *mut u8,
}

// SAFETY: a RamRegion is a description of memory whose validity the creator
// guaranteed in `RamRegion::new`; guest-level races are the guest's business.
unsafe impl Send for RamRegion {}
// SAFETY: see `Send`.
unsafe impl Sync for RamRegion {}

impl RamRegion {
    /// Describes guest physical `[base, base+len)` as host memory at `host`.
    ///
    /// # Safety
    /// `host` must be valid for reads and writes of `len` bytes for as long
    /// as any hart or [`CodeMap`] uses this region, and `base` and `len`
    /// must be multiples of 4096.
    pub unsafe fn new(base: u64, len: u64, host: *mut u8) -> Self {
        RamRegion { base, len, host }
    }
    /// Guest physical base address.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Host address of the region's first byte.
    pub fn host(&self) -> *mut u8 {
        self.host
    }
}

/// Per-physical-page "holds decoded code" marks shared by all harts of a
/// machine, plus a generation counter the harts watch: when a page with a
/// mark is stored to (by a hart, or by a device through
/// [`CodeMap::invalidate`]), every hart drops its decoded blocks at its next
/// block boundary.
#[derive(Debug)]
pub struct CodeMap {
    regions: Vec<(u64, u64, Box<[AtomicU8]>)>,
    generation: AtomicU64,
}

impl CodeMap {
    /// A code map covering `regions` (the machine's RAM).
    pub fn new(regions: &[RamRegion]) -> Self {
        CodeMap {
            regions: regions
                .iter()
                .map(|r| {
                    let pages = r.len.div_ceil(PAGE_SIZE) as usize;
                    (
                        r.base,
                        r.len,
                        (0..pages).map(|_| AtomicU8::new(0)).collect(),
                    )
                })
                .collect(),
            generation: AtomicU64::new(0),
        }
    }

    /// The mark byte of the page holding physical address `pa`, if in RAM.
    pub(crate) fn slot(&self, pa: u64) -> Option<&AtomicU8> {
        self.regions.iter().find_map(|(base, len, marks)| {
            (pa >= *base && pa - base < *len).then(|| &marks[((pa - base) / PAGE_SIZE) as usize])
        })
    }

    /// Device or loader wrote guest physical `[pa, pa+len)` directly (DMA,
    /// image loading): decoded code there becomes stale.
    pub fn invalidate(&self, pa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let mut had = false;
        let mut page = pa & !(PAGE_SIZE - 1);
        let end = pa.saturating_add(len);
        while page < end {
            if let Some(s) = self.slot(page) {
                had |= s.swap(0, Ordering::Relaxed) != 0;
            }
            page = match page.checked_add(PAGE_SIZE) {
                Some(p) => p,
                None => break,
            };
        }
        if had {
            self.bump();
        }
    }

    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The generation counter, for generated code that polls it.
    pub(crate) fn generation_ptr(&self) -> *const u64 {
        self.generation.as_ptr()
    }

    #[inline(always)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The physical address space of a machine, implemented by the board.
///
/// RAM is reached directly through host pointers (the TLB caches them);
/// everything else goes through `read`/`write`, which model MMIO. A `None`
/// or `false` result becomes an access fault in the guest.
pub trait Bus: Sync {
    /// The RAM regions, fixed for the machine's life (harts read this once
    /// per TLB fill, so keep it a plain slice).
    fn ram(&self) -> &[RamRegion];
    /// The code map covering [`Bus::ram`] (create it once with
    /// [`CodeMap::new`] and share it between all harts).
    fn code_map(&self) -> &CodeMap;
    /// MMIO load of `size` (1, 2, 4 or 8) bytes at physical `addr`.
    fn read(&self, addr: u64, size: u8) -> Option<u64>;
    /// MMIO store of the low `size` bytes of `value` at physical `addr`.
    fn write(&self, addr: u64, size: u8, value: u64) -> bool;
}
