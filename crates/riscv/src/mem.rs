//! Guest memory as the CPU sees it.
//!
//! Two flavours, both designed so the interpreter's load/store fast path is a
//! couple of compares and one host memory access:
//!
//! * [`UserSpace`]: user-mode emulation. The whole guest virtual address
//!   space is one reserved range of host virtual memory (`host_base() + addr`),
//!   with one permission byte per 4 KiB guest page. The interpreter checks
//!   the table before every access, so its faults are precise. The host
//!   protection of every page mirrors the table (never more than the guest
//!   may do; pages holding translated code are host read-only), and guard
//!   pages surround the reservation: the JIT's inline accesses only test
//!   the address against the space size and let the host fault the rest
//!   (see `jit::fault`), then leave for the interpreter, which redoes the
//!   access the checked way. `linux-user` owns the layout (mmap, brk,
//!   munmap, mprotect) and keeps the table in step through
//!   [`UserSpace::set_perms`] or the `map_*`/`unmap`/`protect` helpers.
//! * [`Bus`]: system mode. The machine gives the physical memory map: RAM
//!   regions as host pointers (obtained once, used by the TLB fast path) and
//!   MMIO callbacks for everything else. The hart's MMU (Sv39/Sv48 + TLB)
//!   sits in front of it.
//!
//! Both keep a per-page "holds translated code" mark so stores into code
//! pages invalidate the decoded-block caches of every hart (see
//! [`CodeMap`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

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

/// Inaccessible host bytes below and above the reservation: an inline
/// access of the JIT adds a 12-bit signed offset (and its size) to a base
/// register it only checked against the space size, so it may reach up to
/// 2 KiB outside; there it faults like any unmapped guest page.
pub(crate) const GUARD: u64 = 64 << 10;

/// Host `PROT_*` bits that let the host do exactly what guest permissions
/// `p` allow, or less: RISC-V has no write-only pages (W comes with R), and
/// execute-only pages stay inaccessible (instructions are fetched through
/// [`UserSpace::fetch_page`], which reads them without host permission).
/// A page holding translated code (`perm::CODE`) loses host write, so
/// stores into it fault and drop the stale translations on their way.
fn host_prot(p: u8) -> i32 {
    if p & perm::W != 0 && p & perm::CODE == 0 {
        libc::PROT_READ | libc::PROT_WRITE
    } else if p & (perm::R | perm::W) != 0 {
        libc::PROT_READ
    } else {
        libc::PROT_NONE
    }
}

/// Order of host protections by what they allow (host_prot's values).
fn prot_rank(h: i32) -> u8 {
    (h & libc::PROT_READ != 0) as u8 + (h & libc::PROT_WRITE != 0) as u8
}

/// Attempts of a guarded copy whose host access keeps failing while the
/// permission table allows it (only a host that refuses to give pages
/// their protection back gets that far; the guest then sees EFAULT).
const COPY_RETRIES: usize = 64;

/// A user-mode guest address space: a host reservation plus a permission
/// table. Shared by all guest threads of a process (`Arc<UserSpace>`); all
/// methods take `&self`.
pub struct UserSpace {
    base: *mut u8,
    size: u64,
    perms: *mut AtomicU8,
    code_gen: AtomicU64,
    /// Harts whose translated code runs from this space: a code change
    /// raises their attention (see [`UserSpace::watch_code`]).
    watchers: Watchers,
    /// Serializes changes of host protection with the table changes they
    /// mirror (a code mark and a store's unmark racing in two threads must
    /// not leave the host writable under a code mark, or read-only under a
    /// writable page without one).
    prot_lock: Mutex<()>,
    /// The host refused to write-protect a page holding code (it ran out of
    /// mappings): stores that do not check the table would miss stale
    /// translations, so the JIT stands down and the interpreter, which
    /// checks every store, runs alone from then on.
    unprotected: AtomicBool,
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
        // Host faults of guest accesses (another thread's mprotect between
        // a check and the access; the JIT's unchecked accesses) are caught
        // (see `crate::mmu::guard`). Without the handler they crash the
        // process, as they did before host protection mirrored the guest's.
        crate::mmu::guard::install();
        let addr_bits = addr_bits.clamp(20, 46);
        let size = 1u64 << addr_bits;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let outer = (size + 2 * GUARD) as usize;
        let low = host_mmap(std::ptr::null_mut(), outer, libc::PROT_NONE, flags)
            .map_err(MemError::Host)?;
        // SAFETY: GUARD bytes into the reservation just made.
        let base = unsafe { low.add(GUARD as usize) };
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
                unsafe { libc::munmap(low.cast(), outer) };
                return Err(MemError::Host(e));
            }
        };
        Ok(UserSpace {
            base,
            size,
            perms,
            code_gen: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            prot_lock: Mutex::new(()),
            unprotected: AtomicBool::new(false),
        })
    }

    fn lock_prot(&self) -> std::sync::MutexGuard<'_, ()> {
        self.prot_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the host protection of guest pages `[addr, addr+len)` (inside
    /// the space, page aligned).
    fn host_protect(&self, addr: u64, len: u64, prot: i32) -> Result<(), MemError> {
        // SAFETY: the range lies inside the reservation this value owns
        // (callers checked it); changing its protection touches no Rust
        // object (guest memory is only reached through checked raw
        // pointers).
        let r = unsafe { libc::mprotect(self.base.add(addr as usize).cast(), len as usize, prot) };
        if r != 0 {
            return Err(MemError::Host(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The host protection page `page` has now (the mirror of its table
    /// byte).
    fn host_prot_of(&self, page: u64) -> i32 {
        host_prot(self.perm_slot(page).load(Ordering::Relaxed))
    }

    /// Whether the JIT may run on this space (see `unprotected`).
    pub(crate) fn jit_ok(&self) -> bool {
        !self.unprotected.load(Ordering::Relaxed)
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
    /// aligned), and the host protection to match. The host mapping must
    /// allow what the guest may do (a shared mapping of a file opened
    /// read-only cannot become writable: the host's error is returned).
    /// Invalidates decoded code in the range.
    pub fn set_perms(&self, addr: u64, len: u64, perms: u8) -> Result<(), MemError> {
        self.check_page_range(addr, len)?;
        if len == 0 {
            return Ok(());
        }
        let perms = perms & (perm::R | perm::W | perm::X);
        let pages = addr / PAGE_SIZE..(addr + len) / PAGE_SIZE;
        let new = host_prot(perms);
        let _g = self.lock_prot();
        // The host never allows more than the table: when every page gains
        // (or keeps) host access, the host changes first; otherwise the
        // table does. (Mixed ranges are only reachable by a guest racing
        // its own mprotect with accesses to the range.)
        let grows = pages
            .clone()
            .all(|p| prot_rank(self.host_prot_of(p)) <= prot_rank(new));
        if grows {
            self.host_protect(addr, len, new)?;
        }
        let mut had_code = false;
        for page in pages {
            let old = self.perm_slot(page).swap(perms, Ordering::Relaxed);
            had_code |= old & perm::CODE != 0;
        }
        if had_code {
            self.code_changed();
        }
        if !grows {
            if let Err(e) = self.host_protect(addr, len, new) {
                // The host allows more than the table now: only the
                // interpreter, which checks the table, stays exact.
                self.unprotected.store(true, Ordering::Relaxed);
                return Err(e);
            }
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
        // Code marks go first (and with them the host write protection
        // they imply): the fresh pages hold no code.
        self.invalidate_code(addr, len);
        host_mmap(
            // SAFETY: pointer arithmetic inside the reservation, checked above.
            unsafe { self.base.add(addr as usize) },
            len as usize,
            host_prot(perms & (perm::R | perm::W | perm::X)),
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
        // A fresh inaccessible mapping in place also drops the contents.
        self.reserve_again(addr, len)
    }

    /// Reserves `[addr, addr+len)` again, inaccessible: after an unmap
    /// (dropping the contents), or after the host moved its pages away
    /// (mremap), where a hole left in the reservation could take an
    /// unrelated host mapping, which guest accesses would then reach. The
    /// caller cleared the range's permissions first.
    pub fn reserve_again(&self, addr: u64, len: u64) -> Result<(), MemError> {
        self.check_page_range(addr, len)?;
        if len == 0 {
            return Ok(());
        }
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
    ///
    /// The copy is guarded: another thread may unmap the range meanwhile,
    /// or nothing may back it (a file mapping past its file's end); either
    /// is the guest's fault (EFAULT for a system call), not the emulator's
    /// crash. A protection fault while the table still allows the access
    /// (a page holding code turned read-only again for the host by
    /// another thread's translation, see `note_store`) is retried, as the
    /// interpreter's checked accesses are.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        for _ in 0..COPY_RETRIES {
            if !self.check(addr, len, perm::R) {
                break;
            }
            // SAFETY: the range is inside the reservation and mapped
            // readable (checked against the permission table, which
            // linux-user keeps in step with the host mappings); the copy
            // is guarded.
            match unsafe {
                crate::mmu::guard::copy(buf.as_mut_ptr(), self.base.add(addr as usize), buf.len())
            } {
                Ok(()) => return Ok(()),
                Err(crate::mmu::guard::Refused::Bus) => break,
                Err(crate::mmu::guard::Refused::Protection) => {}
            }
        }
        Err(self.first_fault(addr, len, perm::R))
    }

    /// Copies `data` into guest memory, checking write permission and
    /// invalidating decoded code it overwrites (guarded and retried as
    /// `read` is).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let len = data.len() as u64;
        for _ in 0..COPY_RETRIES {
            if !self.check(addr, len, perm::W) {
                break;
            }
            if len > 0 {
                self.note_store(addr, len);
            }
            // SAFETY: as in `read`, with write permission checked.
            match unsafe {
                crate::mmu::guard::copy(self.base.add(addr as usize), data.as_ptr(), data.len())
            } {
                Ok(()) => return Ok(()),
                Err(crate::mmu::guard::Refused::Bus) => break,
                Err(crate::mmu::guard::Refused::Protection) => {}
            }
        }
        Err(self.first_fault(addr, len, perm::W))
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
        let pages = addr / PAGE_SIZE..=(end - 1) / PAGE_SIZE;
        if !pages
            .clone()
            .any(|p| self.perm_slot(p).load(Ordering::Relaxed) & perm::CODE != 0)
        {
            return;
        }
        let _g = self.lock_prot();
        let mut had = false;
        for p in pages {
            let slot = self.perm_slot(p);
            let v = slot.load(Ordering::Relaxed);
            if v & perm::CODE == 0 {
                continue;
            }
            // Writable first, unmarked second: the host never refuses a
            // store the table allows without a code mark (the interpreter
            // stores through the host without more checks). A JIT store
            // slipping in between is followed by the generation bump below.
            if v & perm::W != 0
                && self
                    .host_protect(p * PAGE_SIZE, PAGE_SIZE, host_prot(v & !perm::CODE))
                    .is_err()
            {
                // Stays marked and read-only: stores keep faulting into
                // the interpreter, whose next attempt retries this.
                continue;
            }
            slot.fetch_and(!perm::CODE, Ordering::Relaxed);
            had = true;
        }
        if had {
            self.code_changed();
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

    /// Bumps the code generation and raises the attention of every hart
    /// running translated code from this space, so that their loops, which
    /// poll only their attention word, leave stale code (translated code
    /// does not read the generation itself; the JIT's run loop does).
    fn code_changed(&self) {
        self.code_gen.fetch_add(1, Ordering::Release);
        notify(&self.watchers);
    }

    /// Registers a hart about to run translated code from this space (see
    /// [`UserSpace::code_changed`]). The caller reads the code generation
    /// after this: a change made before the registration shows there.
    pub(crate) fn watch_code(&self, c: &std::sync::Arc<crate::cpu::HartControl>) {
        watch(&self.watchers, c);
    }

    #[inline(always)]
    pub(crate) fn code_gen(&self) -> u64 {
        self.code_gen.load(Ordering::Acquire)
    }

    /// Marks `page` as holding code about to be decoded. A writable page
    /// also loses host write permission (before the decoder reads it), so
    /// that stores which do not check the table (the JIT's) fault.
    pub(crate) fn mark_code(&self, page: u64) {
        let slot = self.perm_slot(page);
        let v = slot.load(Ordering::Relaxed);
        if v & perm::W == 0 {
            // Host-read-only already; nothing but the mark to set.
            slot.fetch_or(perm::CODE, Ordering::Relaxed);
            return;
        }
        let _g = self.lock_prot();
        // Marked first: a store allowed by the host meanwhile is one the
        // decoder sees (it reads after this returns).
        let old = slot.fetch_or(perm::CODE, Ordering::Relaxed);
        if old & perm::W != 0
            && self
                .host_protect(page * PAGE_SIZE, PAGE_SIZE, libc::PROT_READ)
                .is_err()
        {
            self.unprotected.store(true, Ordering::Relaxed);
        }
    }

    /// The bytes of guest page `page` (which the caller found executable)
    /// for the instruction decoder. Readable pages are read in place;
    /// execute-only pages, which the host keeps inaccessible so that loads
    /// fault, are copied out through `/proc/self/mem` (which reads
    /// regardless of protection, as a debugger does). `None` when that
    /// copy fails.
    pub(crate) fn fetch_page(&self, page: u64) -> Option<CodePage> {
        // SAFETY: the page lies inside the reservation (the caller checked
        // its permissions, which only pages of the space have).
        let at = unsafe { self.base.add((page * PAGE_SIZE) as usize) };
        if self.perms(page * PAGE_SIZE) & perm::R != 0 {
            return Some(CodePage::Host(at));
        }
        use std::os::unix::fs::FileExt;
        let mut copy = Box::new([0u8; PAGE_SIZE as usize]);
        let f = std::fs::File::open("/proc/self/mem").ok()?;
        f.read_exact_at(&mut copy[..], at as u64).ok()?;
        Some(CodePage::Copy(copy))
    }
}

/// A guest page's bytes for the decoder (see [`UserSpace::fetch_page`]).
pub(crate) enum CodePage {
    /// Host-readable in place.
    Host(*const u8),
    /// A copy of an execute-only page.
    Copy(Box<[u8; PAGE_SIZE as usize]>),
}

impl CodePage {
    /// The little-endian halfword at byte offset `off` of the page
    /// (`off` <= PAGE_SIZE - 2).
    pub(crate) fn read_u16(&self, off: u64) -> u16 {
        debug_assert!(off <= PAGE_SIZE - 2);
        match self {
            // SAFETY: `off + 2` stays inside the page, which is guest
            // memory. Another thread may take its permission away while
            // it is decoded: the bytes then read as 0, an illegal
            // instruction, and the change (which drops every translation
            // of a page holding code) sends the hart back to fetch, which
            // faults.
            CodePage::Host(p) => unsafe {
                crate::mmu::guard::load::<2>(p.add(off as usize)).unwrap_or(0) as u16
            },
            CodePage::Copy(c) => {
                let o = off as usize;
                u16::from_le_bytes([c[o], c[o + 1]])
            }
        }
    }
}

impl Drop for UserSpace {
    fn drop(&mut self) {
        // SAFETY: both mappings were created in `new` and are owned here
        // (the reservation with its guards).
        unsafe {
            libc::munmap(
                self.base.sub(GUARD as usize).cast(),
                (self.size + 2 * GUARD) as usize,
            );
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

/// Harts to tell about code changes (see `UserSpace::code_changed`,
/// `CodeMap::changed`).
type Watchers = Mutex<Vec<std::sync::Weak<crate::cpu::HartControl>>>;

/// Adds `c` to `w` once, dropping harts that are gone.
fn watch(w: &Watchers, c: &std::sync::Arc<crate::cpu::HartControl>) {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|c| c.strong_count() > 0);
    if !w
        .iter()
        .any(|x| std::ptr::eq(x.as_ptr(), std::sync::Arc::as_ptr(c)))
    {
        w.push(std::sync::Arc::downgrade(c));
    }
}

/// Raises the attention of every hart in `w` (no wake-up: a sleeping hart
/// runs no translated code).
fn notify(w: &Watchers) {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|c| match c.upgrade() {
        Some(c) => {
            c.note_code_change();
            true
        }
        None => false,
    });
}

/// Pages the change log of a [`CodeMap`] remembers: a hart that falls
/// further behind drops all its translations instead of some.
const CHANGE_LOG: usize = 1024;

/// The last [`CHANGE_LOG`] pages whose code changed, in order: entry
/// `n % CHANGE_LOG` is the page of the `n`th change (`n` < `count`).
#[derive(Debug)]
struct ChangeLog {
    pages: Box<[u64]>,
    count: u64,
}

/// Per-physical-page "holds decoded code" marks shared by all harts of a
/// machine, plus a generation counter the harts watch: when a page with a
/// mark is stored to (by a hart, or by a device through
/// [`CodeMap::invalidate`]), every hart drops its decoded blocks of that
/// page at its next block boundary. The generation counts the changed
/// pages, which a log keeps (see [`CodeMap::changes_since`]), so that a
/// JIT drops only the translations of those pages (Linux patches its own
/// text hundreds of times per boot: jump labels, alternatives).
#[derive(Debug)]
pub struct CodeMap {
    regions: Vec<(u64, u64, Box<[AtomicU8]>)>,
    /// The log's `count`, readable without its lock.
    generation: AtomicU64,
    log: Mutex<ChangeLog>,
    /// Harts running translated code from this machine's RAM: a bump
    /// raises their attention (see [`CodeMap::watch`]).
    watchers: Watchers,
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
            log: Mutex::new(ChangeLog {
                pages: vec![0; CHANGE_LOG].into_boxed_slice(),
                count: 0,
            }),
            watchers: Mutex::new(Vec::new()),
        }
    }

    /// Registers a hart about to run translated code from this machine
    /// (see [`CodeMap::changed`]). The caller reads the generation after
    /// this: a bump made before the registration shows there.
    pub(crate) fn watch(&self, c: &std::sync::Arc<crate::cpu::HartControl>) {
        watch(&self.watchers, c);
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
        let mut changed = Vec::new();
        let mut page = pa & !(PAGE_SIZE - 1);
        let end = pa.saturating_add(len);
        while page < end {
            if let Some(s) = self.slot(page) {
                if s.swap(0, Ordering::Relaxed) != 0 {
                    changed.push(page);
                }
            }
            page = match page.checked_add(PAGE_SIZE) {
                Some(p) => p,
                None => break,
            };
        }
        if !changed.is_empty() {
            self.changed(&changed);
        }
    }

    /// The code of physical `pages` changed (their marks were just
    /// cleared): logs them, bumps the generation and raises the attention
    /// of every watching hart (translated code polls only that word).
    pub(crate) fn changed(&self, pages: &[u64]) {
        {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            for &p in pages {
                let i = (log.count % CHANGE_LOG as u64) as usize;
                log.pages[i] = p & !(PAGE_SIZE - 1);
                log.count += 1;
            }
            self.generation.store(log.count, Ordering::Release);
        }
        notify(&self.watchers);
    }

    /// The pages whose code changed since generation `since` (appended to
    /// `out`, oldest first, possibly repeated) and the generation they
    /// bring the caller to; `None` when the log no longer holds them all
    /// (the caller must then drop every translation).
    pub(crate) fn changes_since(&self, since: u64, out: &mut Vec<u64>) -> Option<u64> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if since > log.count || log.count - since > CHANGE_LOG as u64 {
            return None;
        }
        out.extend((since..log.count).map(|n| log.pages[(n % CHANGE_LOG as u64) as usize]));
        Some(log.count)
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

#[cfg(test)]
mod code_map_tests {
    use super::*;

    #[test]
    fn changes_are_logged_by_page_until_the_log_overflows() {
        let mut ram = vec![0u8; 64 * PAGE_SIZE as usize];
        // SAFETY: the vector outlives the map and is not resized.
        let region = unsafe { RamRegion::new(0x8000_0000, ram.len() as u64, ram.as_mut_ptr()) };
        let map = CodeMap::new(&[region]);
        let mark = |pa: u64| map.slot(pa).unwrap().store(1, Ordering::SeqCst);
        mark(0x8000_3000);
        mark(0x8000_5000);
        // Unmarked pages change nothing.
        map.invalidate(0x8000_0000, PAGE_SIZE);
        assert_eq!(map.generation(), 0);
        map.invalidate(0x8000_2ff8, 0x3000);
        assert_eq!(map.generation(), 2);
        let mut out = Vec::new();
        assert_eq!(map.changes_since(0, &mut out), Some(2));
        assert_eq!(out, [0x8000_3000, 0x8000_5000]);
        out.clear();
        assert_eq!(map.changes_since(1, &mut out), Some(2));
        assert_eq!(out, [0x8000_5000]);
        for _ in 0..CHANGE_LOG {
            map.changed(&[0x8000_7123]);
        }
        out.clear();
        assert_eq!(map.changes_since(2, &mut out), Some(2 + CHANGE_LOG as u64));
        assert!(out.iter().all(|&p| p == 0x8000_7000));
        // Fallen too far behind: everything must go.
        assert_eq!(map.changes_since(1, &mut out), None);
    }
}
