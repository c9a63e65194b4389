//! The guest address space: one flat host reservation.
//!
//! The CPU crate's [`UserSpace`] owns the reservation (guest address `a` at
//! host `base + a`, `GUEST_SIZE` bytes of `PROT_NONE` memory between guard
//! pages) and the per-page permission table its loads and stores check,
//! which makes faults precise; it keeps the host protection of every page
//! in step with the table (the JIT's inline accesses rely on the host to
//! fault what the guest may not do). This module owns the layout on top: which ranges are mapped,
//! where new mappings go, the program break, and file mappings. Guest
//! mappings are `MAP_FIXED` into the reservation and a guest `munmap` puts
//! the reservation back, so the range never has holes another host
//! allocation could fall into. Syscalls check every guest buffer against the
//! permission table before the host kernel sees it.

use riscv::{perm, MemError, UserSpace};
use std::collections::BTreeMap;
use std::sync::Mutex;
use thiserror::Error;

/// Guest page size.
pub const PAGE: u64 = 4096;
/// Size of the guest address space: 256 GiB, the user half of Sv39, which is
/// what riscv64 Linux gives a process on most hardware.
pub const GUEST_SIZE: u64 = 1 << 38;
/// Address bits of the guest space.
pub const GUEST_BITS: u32 = 38;

/// Page may be read.
pub const PROT_R: u8 = perm::R;
/// Page may be written.
pub const PROT_W: u8 = perm::W;
/// Page may be executed.
pub const PROT_X: u8 = perm::X;

/// Errors of the address space; syscalls map them to errno values.
#[derive(Debug, Error)]
pub enum MmError {
    #[error("cannot reserve the guest address space: {0}")]
    Reserve(MemError),
    #[error("guest range {addr:#x}+{len:#x} is outside the address space")]
    OutOfRange { addr: u64, len: u64 },
    #[error("no free guest range of {0:#x} bytes")]
    NoSpace(u64),
    #[error("guest range {0:#x} already mapped")]
    Exists(u64),
    #[error("host mmap failed: errno {0}")]
    Host(i32),
    #[error("guest range {addr:#x}+{len:#x} spans more than one mapping")]
    NotOneMapping { addr: u64, len: u64 },
}

impl MmError {
    /// The errno a syscall returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            MmError::Reserve(_) | MmError::NoSpace(_) => libc::ENOMEM,
            MmError::OutOfRange { .. } => libc::ENOMEM,
            MmError::Exists(_) => libc::EEXIST,
            MmError::Host(e) => *e,
            MmError::NotOneMapping { .. } => libc::EFAULT,
        }
    }
}

/// Host `PROT_*` bits for a mapping with guest permissions `p`: what the
/// guest may do and no more (the CPU crate sets the same on every change
/// of the table). Execute-only pages stay inaccessible to the host: the
/// CPU fetches their instructions without host permission.
fn host_prot(p: u8) -> i32 {
    if p & PROT_W != 0 {
        libc::PROT_READ | libc::PROT_WRITE
    } else if p & PROT_R != 0 {
        libc::PROT_READ
    } else {
        libc::PROT_NONE
    }
}

/// Guest permission bits from `PROT_*` of the riscv64 ABI (same values as
/// the host's).
pub fn prot_from_linux(prot: i32) -> u8 {
    let mut p = 0;
    if prot & libc::PROT_READ != 0 {
        p |= PROT_R;
    }
    if prot & libc::PROT_WRITE != 0 {
        // RISC-V has no write-only pages: W implies R, as in Linux.
        p |= PROT_W | PROT_R;
    }
    if prot & libc::PROT_EXEC != 0 {
        p |= PROT_X;
    }
    p
}

/// Rounds up to a page multiple, or `None` on overflow.
pub fn page_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

/// Rounds down to a page multiple.
pub fn page_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// A mapped range with one permission, as /proc/self/maps shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub perm: u8,
    pub shared: bool,
    pub file: bool,
}

/// Mapping kind bit: shared (MAP_SHARED).
const KIND_SHARED: u8 = 1;
/// Mapping kind bit: backed by a file.
const KIND_FILE: u8 = 2;

fn kind(shared: bool, file: bool) -> u8 {
    (shared as u8 * KIND_SHARED) | (file as u8 * KIND_FILE)
}

struct Layout {
    /// Mapped ranges: start -> (end exclusive, KIND_* bits); never
    /// overlapping.
    maps: BTreeMap<u64, (u64, u8)>,
    /// Top-down allocations start below this address.
    mmap_top: u64,
    /// Lowest address handed out without a hint.
    mmap_min: u64,
    brk_start: u64,
    brk: u64,
}

/// The guest address space. Shared by all guest threads of a process.
pub struct AddressSpace {
    space: UserSpace,
    base: *mut u8,
    layout: Mutex<Layout>,
}

// SAFETY: `base` is the host address of the reservation owned by `space`,
// which lives as long as the AddressSpace; all mutation of the layout is
// under the mutex.
unsafe impl Send for AddressSpace {}
// SAFETY: see above.
unsafe impl Sync for AddressSpace {}

impl AddressSpace {
    /// Reserves the guest range and the permission table.
    pub fn new() -> Result<AddressSpace, MmError> {
        let space = UserSpace::new(GUEST_BITS).map_err(MmError::Reserve)?;
        Ok(AddressSpace {
            base: space.host_base(),
            space,
            layout: Mutex::new(Layout {
                maps: BTreeMap::new(),
                mmap_top: GUEST_SIZE,
                mmap_min: 0x1_0000,
                brk_start: 0,
                brk: 0,
            }),
        })
    }

    /// The CPU's view of this space.
    pub fn space(&self) -> &UserSpace {
        &self.space
    }

    /// Host address of guest address 0.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Permission bits of the page containing `addr` (0 outside the space).
    #[inline]
    pub fn page_perm(&self, addr: u64) -> u8 {
        self.space.perms(addr)
    }

    /// Whether every byte of `addr..addr+len` has all of `need`.
    pub fn check(&self, addr: u64, len: u64, need: u8) -> bool {
        if len == 0 {
            return addr <= GUEST_SIZE;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if end > GUEST_SIZE {
            return false;
        }
        let mut p = page_down(addr);
        while p < end {
            if self.page_perm(p) & need != need {
                return false;
            }
            p += PAGE;
        }
        true
    }

    /// Host pointer for a guest range that has permissions `need`, or `None`
    /// (the syscall then fails with EFAULT).
    pub fn ptr(&self, addr: u64, len: u64, need: u8) -> Option<*mut u8> {
        if self.check(addr, len, need) {
            // SAFETY: addr+len <= GUEST_SIZE, inside the reservation.
            Some(unsafe { self.base.add(addr as usize) })
        } else {
            None
        }
    }

    /// A readable guest byte slice.
    pub fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let p = self.ptr(addr, len as u64, PROT_R)?;
        // SAFETY: the range is mapped readable inside the reservation. Other
        // guest threads may write it concurrently, as on real hardware; the
        // bytes are only copied out.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// A writable guest byte slice. Decoded code in the range is dropped
    /// first, since the caller (or the host kernel) is about to write it.
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let p = self.ptr(addr, len as u64, PROT_W)?;
        self.space.invalidate_code(addr, len as u64);
        // SAFETY: the range is mapped writable inside the reservation.
        Some(unsafe { std::slice::from_raw_parts_mut(p, len) })
    }

    /// Reads a NUL-terminated guest string of at most `max` bytes.
    ///
    /// Copied out through the CPU crate's guarded copy (as are `read_u64`,
    /// `read_u32` and the `write`s): a page that another thread unmaps
    /// meanwhile, or that nothing backs (a file mapping past its file's
    /// end), is EFAULT for the system call, not a host fault that takes
    /// the emulator down.
    pub fn cstr(&self, addr: u64, max: usize) -> Option<Vec<u8>> {
        // Paths are short: a small chunk at a time, never past a page.
        const CHUNK: u64 = 256;
        let mut out = Vec::new();
        let mut buf = [0u8; CHUNK as usize];
        let mut a = addr;
        loop {
            let n = (page_down(a) + PAGE - a).min(CHUNK) as usize;
            self.space.read(a, &mut buf[..n]).ok()?;
            if let Some(z) = buf[..n].iter().position(|&c| c == 0) {
                out.extend_from_slice(&buf[..z]);
                return if out.len() <= max { Some(out) } else { None };
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() > max {
                return None;
            }
            a += n as u64;
        }
    }

    /// Copies `len` readable guest bytes out (guarded, as `cstr`), for
    /// structures a system call parses.
    pub fn read_vec(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.space.read(addr, &mut v).ok()?;
        Some(v)
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.space.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.space.read(addr, &mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }

    /// Writes bytes (dropping decoded code they overwrite).
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<()> {
        self.space.write(addr, data).ok()
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, addr: u64, v: u64) -> Option<()> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Writes a little-endian u32.
    pub fn write_u32(&self, addr: u64, v: u32) -> Option<()> {
        self.write(addr, &v.to_le_bytes())
    }

    fn range_ok(addr: u64, len: u64) -> Result<u64, MmError> {
        let end = addr
            .checked_add(len)
            .filter(|&e| {
                e <= GUEST_SIZE && addr.is_multiple_of(PAGE) && len.is_multiple_of(PAGE) && len > 0
            })
            .ok_or(MmError::OutOfRange { addr, len })?;
        Ok(end)
    }

    fn overlaps(l: &Layout, start: u64, end: u64) -> bool {
        l.maps
            .range(..end)
            .next_back()
            .is_some_and(|(_, &(e, _))| e > start)
    }

    fn remove_range(l: &mut Layout, start: u64, end: u64) {
        // Ranges never overlap, so walking back from `end` until one ends at
        // or before `start` finds every range that intersects.
        let hits: Vec<(u64, u64, u8)> = l
            .maps
            .range(..end)
            .rev()
            .take_while(|(_, &(e, _))| e > start)
            .map(|(&s, &(e, sh))| (s, e, sh))
            .collect();
        for (s, e, sh) in hits {
            l.maps.remove(&s);
            if s < start {
                l.maps.insert(s, (start, sh));
            }
            if e > end {
                l.maps.insert(end, (e, sh));
            }
        }
    }

    fn find_free(l: &Layout, len: u64) -> Option<u64> {
        // Top-down first fit below mmap_top, as Linux does.
        let mut top = l.mmap_top;
        for (&s, &(e, _)) in l.maps.range(..l.mmap_top).rev() {
            if e < top && top - e >= len {
                return Some(top - len);
            }
            top = top.min(s);
        }
        if top >= len && top - len >= l.mmap_min {
            return Some(top - len);
        }
        // Then anything above the brk area, bottom-up.
        let mut lo = page_up(l.brk.max(l.mmap_min) + (64 << 20))?;
        for (&s, &(e, _)) in l.maps.range(lo..) {
            if s >= lo && s - lo >= len {
                return Some(lo);
            }
            lo = lo.max(e);
        }
        (GUEST_SIZE - lo >= len).then_some(lo)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Layout> {
        self.layout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chooses where a mapping of `len` bytes goes: `hint` if it is free
    /// (or `fixed`), otherwise a free range.
    pub fn choose(
        &self,
        hint: u64,
        len: u64,
        fixed: bool,
        noreplace: bool,
    ) -> Result<u64, MmError> {
        let l = self.lock();
        Self::choose_locked(&l, hint, len, fixed, noreplace)
    }

    /// `choose` with the layout lock held.
    fn choose_locked(
        l: &Layout,
        hint: u64,
        len: u64,
        fixed: bool,
        noreplace: bool,
    ) -> Result<u64, MmError> {
        let len = page_up(len).ok_or(MmError::NoSpace(len))?;
        if fixed {
            let end = Self::range_ok(hint, len)?;
            if noreplace && Self::overlaps(l, hint, end) {
                return Err(MmError::Exists(hint));
            }
            return Ok(hint);
        }
        if hint != 0 && hint.is_multiple_of(PAGE) {
            if let Ok(end) = Self::range_ok(hint, len) {
                if !Self::overlaps(l, hint, end) {
                    return Ok(hint);
                }
            }
        }
        Self::find_free(l, len).ok_or(MmError::NoSpace(len))
    }

    /// mmap(2): chooses where the mapping goes (as [`AddressSpace::choose`])
    /// and maps it there under one lock, so that another thread's mmap or
    /// mremap cannot be handed the same free range meanwhile (the later
    /// `MAP_FIXED` would replace the earlier's fresh mapping). Returns the
    /// address.
    #[allow(clippy::too_many_arguments)]
    pub fn map_chosen(
        &self,
        hint: u64,
        len: u64,
        fixed: bool,
        noreplace: bool,
        prot: u8,
        shared: bool,
        fd: i32,
        offset: u64,
    ) -> Result<u64, MmError> {
        let mut l = self.lock();
        let at = Self::choose_locked(&l, hint, len, fixed, noreplace)?;
        self.map_locked(&mut l, at, len, prot, shared, fd, offset)?;
        Ok(at)
    }

    /// Maps `len` bytes at guest `addr` (page aligned), replacing whatever
    /// was there. `fd < 0` means anonymous. `shared` selects `MAP_SHARED`.
    pub fn map(
        &self,
        addr: u64,
        len: u64,
        prot: u8,
        shared: bool,
        fd: i32,
        offset: u64,
    ) -> Result<(), MmError> {
        let mut l = self.lock();
        self.map_locked(&mut l, addr, len, prot, shared, fd, offset)
    }

    /// `map` with the layout lock held.
    #[allow(clippy::too_many_arguments)]
    fn map_locked(
        &self,
        l: &mut Layout,
        addr: u64,
        len: u64,
        prot: u8,
        shared: bool,
        fd: i32,
        offset: u64,
    ) -> Result<(), MmError> {
        let len = page_up(len).ok_or(MmError::NoSpace(len))?;
        let end = Self::range_ok(addr, len)?;
        // The guest's permissions on the host too (a shared file mapping
        // must also match the file's open mode, which the host checks).
        let hprot = host_prot(prot);
        let mut flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        flags |= libc::MAP_FIXED;
        if fd < 0 {
            flags |= libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        }
        // Drop code decoded from what is being replaced.
        self.space.invalidate_code(addr, len);
        // SAFETY: the target range lies inside our reservation (checked by
        // range_ok), so MAP_FIXED replaces only guest memory.
        let r = unsafe {
            libc::mmap(
                self.base.add(addr as usize) as *mut libc::c_void,
                len as usize,
                hprot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(MmError::Host(errno()));
        }
        Self::remove_range(l, addr, end);
        l.maps.insert(addr, (end, kind(shared, fd >= 0)));
        self.space
            .set_perms(addr, len, prot)
            .map_err(|e| mem_error(e, addr, len))?;
        Ok(())
    }

    /// Unmaps a guest range (puts the reservation back).
    pub fn unmap(&self, addr: u64, len: u64) -> Result<(), MmError> {
        let len = page_up(len).ok_or(MmError::NoSpace(len))?;
        let end = Self::range_ok(addr, len)?;
        let mut l = self.lock();
        self.space
            .unmap(addr, len)
            .map_err(|_| MmError::Host(libc::ENOMEM))?;
        Self::remove_range(&mut l, addr, end);
        Ok(())
    }

    /// Changes permissions of a mapped range. Fails with ENOMEM if part of
    /// it is unmapped, like Linux.
    pub fn protect(&self, addr: u64, len: u64, prot: u8) -> Result<(), MmError> {
        let len = page_up(len).ok_or(MmError::NoSpace(len))?;
        let end = Self::range_ok(addr, len)?;
        let l = self.lock();
        // Fully covered by mappings? (The CPU crate changes the host
        // protection with the table; for a shared file mapping the host
        // refuses write permission the file's open mode does not allow.)
        let mut a = addr;
        for (&s, &(e, _)) in l.maps.range(..end) {
            if e <= a {
                continue;
            }
            if s > a {
                break;
            }
            a = e;
        }
        if a < end {
            return Err(MmError::OutOfRange { addr, len });
        }
        self.space
            .set_perms(addr, len, prot)
            .map_err(|e| mem_error(e, addr, len))?;
        Ok(())
    }

    /// Whether `addr..addr+len` is entirely unmapped.
    pub fn is_free(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len).filter(|&e| e <= GUEST_SIZE) else {
            return false;
        };
        let l = self.lock();
        !Self::overlaps(&l, addr, end)
    }

    /// Whether `addr..addr+len` is entirely mapped (by one or more ranges).
    pub fn is_mapped(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len).filter(|&e| e <= GUEST_SIZE) else {
            return false;
        };
        let l = self.lock();
        let mut a = addr;
        for (&s, &(e, _)) in l.maps.range(..end) {
            if e <= a {
                continue;
            }
            if s > a {
                return false;
            }
            a = e;
        }
        a >= end
    }

    /// Permission runs of `addr..end` as (offset from `addr`, length,
    /// permission). The caller holds the layout lock, so no other thread
    /// changes them meanwhile.
    fn perm_runs(&self, addr: u64, end: u64) -> Vec<(u64, u64, u8)> {
        let mut runs: Vec<(u64, u64, u8)> = Vec::new();
        let mut a = addr;
        while a < end {
            let p = self.page_perm(a);
            match runs.last_mut() {
                Some((_, len, lp)) if *lp == p => *len += PAGE,
                _ => runs.push((a - addr, PAGE, p)),
            }
            a += PAGE;
        }
        runs
    }

    /// The permission of `addr..end` if it is all one permission (what
    /// Linux's mremap asks of its source: a single mapping), with the
    /// layout lock held by the caller.
    fn one_mapping_perm(&self, addr: u64, end: u64) -> Result<u8, MmError> {
        match self.perm_runs(addr, end).as_slice() {
            [(_, _, p)] => Ok(*p),
            _ => Err(MmError::NotOneMapping {
                addr,
                len: end - addr,
            }),
        }
    }

    /// Grows the private anonymous mapping ending at `addr + old_len` in
    /// place to `new_len` (mremap without moving). The new pages get the
    /// mapping's permission, as they extend it. All
    /// checks and the change happen under one lock, so a racing mmap in
    /// another thread cannot take the range in between.
    pub fn grow_in_place(&self, addr: u64, old_len: u64, new_len: u64) -> Result<bool, MmError> {
        let old_end = Self::range_ok(addr, old_len)?;
        let new_end = Self::range_ok(addr, new_len)?;
        if new_end <= old_end {
            return Ok(true);
        }
        let mut l = self.lock();
        let anon_private = l
            .maps
            .range(..old_end)
            .next_back()
            .is_some_and(|(_, &(e, k))| e >= old_end && k == 0);
        if !anon_private || Self::overlaps(&l, old_end, new_end) {
            return Ok(false);
        }
        let prot = self.one_mapping_perm(addr, old_end)?;
        self.map_locked(&mut l, old_end, new_end - old_end, prot, false, -1, 0)?;
        Ok(true)
    }

    /// Moves/resizes a mapping with the host's mremap (keeps file/shared
    /// semantics and the permission). The source must have one permission
    /// throughout (Linux: lie in one mapping), else EFAULT. Returns the new
    /// guest address.
    pub fn remap(&self, old: u64, old_len: u64, new_len: u64, new: u64) -> Result<u64, MmError> {
        self.remap_to(old, old_len, new_len, Some(new))
    }

    /// [`AddressSpace::remap`] to a free range chosen under the same lock
    /// (`None`), so that no other thread's mmap is handed it meanwhile.
    pub fn remap_to(
        &self,
        old: u64,
        old_len: u64,
        new_len: u64,
        new: Option<u64>,
    ) -> Result<u64, MmError> {
        let old_len = page_up(old_len).ok_or(MmError::NoSpace(old_len))?;
        let new_len = page_up(new_len).ok_or(MmError::NoSpace(new_len))?;
        let old_end = Self::range_ok(old, old_len)?;
        let mut l = self.lock();
        let new = match new {
            Some(n) => n,
            None => Self::choose_locked(&l, 0, new_len, false, false)?,
        };
        let new_end = Self::range_ok(new, new_len)?;
        // Linux refuses overlapping ranges before touching anything; the
        // host would too, but only after the source lost its permissions
        // below (other threads' accesses meanwhile would fault).
        if old < new_end && new < old_end {
            return Err(MmError::Host(libc::EINVAL));
        }
        // Read under the lock: another thread's mprotect cannot slip in.
        let prot = self.one_mapping_perm(old, old_end)?;
        let k = l
            .maps
            .range(..=old)
            .next_back()
            .filter(|(_, &(e, _))| e > old)
            .map_or(0, |(_, &(_, k))| k);
        self.space.invalidate_code(old, old_len);
        self.space.invalidate_code(new, new_len);
        // The source loses its guest permissions (table and host) while it
        // is still mapped: once the host has moved its pages there is
        // nothing left there to change the protection of (mprotect fails
        // with ENOMEM on a hole), and another thread's access meanwhile
        // must find no permission, not a hole.
        self.space
            .set_perms(old, old_len, 0)
            .map_err(|e| mem_error(e, old, old_len))?;
        // SAFETY: both ranges are inside the reservation; the destination is
        // replaced (MREMAP_FIXED), and the source hole is re-reserved below.
        let r = unsafe {
            libc::mremap(
                self.base.add(old as usize) as *mut libc::c_void,
                old_len as usize,
                new_len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.base.add(new as usize) as *mut libc::c_void,
            )
        };
        if r == libc::MAP_FAILED {
            let e = errno();
            // Nothing moved: the source gets its permission back.
            self.space
                .set_perms(old, old_len, prot)
                .map_err(|e| mem_error(e, old, old_len))?;
            return Err(MmError::Host(e));
        }
        // Refill the hole the move left in the reservation, so that no
        // host mapping can land inside the guest's address space.
        self.space
            .reserve_again(old, old_len)
            .map_err(|e| mem_error(e, old, old_len))?;
        Self::remove_range(&mut l, old, old_end);
        Self::remove_range(&mut l, new, new_end);
        l.maps.insert(new, (new_end, k));
        self.space
            .set_perms(new, new_len, prot)
            .map_err(|e| mem_error(e, new, new_len))?;
        Ok(new)
    }

    /// The mapped ranges split where the permission changes, for
    /// /proc/self/maps: (start, end, permission, shared, file-backed).
    pub fn regions(&self) -> Vec<Region> {
        let l = self.lock();
        let mut out = Vec::new();
        for (&s, &(e, k)) in &l.maps {
            for (off, len, perm) in self.perm_runs(s, e) {
                out.push(Region {
                    start: s + off,
                    end: s + off + len,
                    perm,
                    shared: k & KIND_SHARED != 0,
                    file: k & KIND_FILE != 0,
                });
            }
        }
        out
    }

    /// The program break area (start, current break).
    pub fn brk_range(&self) -> (u64, u64) {
        let l = self.lock();
        (l.brk_start, l.brk)
    }

    /// Sets where top-down allocation starts and the lowest address it uses.
    pub fn set_mmap_window(&self, min: u64, top: u64) {
        let mut l = self.lock();
        l.mmap_min = min;
        l.mmap_top = top;
    }

    /// Initializes the program break.
    pub fn set_brk_start(&self, start: u64) {
        let mut l = self.lock();
        l.brk_start = start;
        l.brk = start;
    }

    /// brk(2): moves the break, returns the new (or unchanged) break.
    pub fn brk(&self, want: u64) -> u64 {
        let (start, cur) = {
            let l = self.lock();
            (l.brk_start, l.brk)
        };
        if want < start || want >= GUEST_SIZE {
            return cur;
        }
        let old_top = page_up(cur).unwrap_or(cur);
        let Some(new_top) = page_up(want) else {
            return cur;
        };
        if new_top > old_top {
            if !self.is_free(old_top, new_top - old_top) {
                return cur;
            }
            if self
                .map(old_top, new_top - old_top, PROT_R | PROT_W, false, -1, 0)
                .is_err()
            {
                return cur;
            }
        } else if new_top < old_top {
            let _ = self.unmap(new_top, old_top - new_top);
        }
        self.lock().brk = want;
        want
    }

    /// The mapped ranges (for diagnostics and tests).
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        let l = self.lock();
        l.maps.iter().map(|(&s, &(e, _))| (s, e)).collect()
    }
}

/// An error of the CPU crate's space as the syscall's error: the host's
/// errno when the host refused a protection change.
fn mem_error(e: MemError, addr: u64, len: u64) -> MmError {
    match e {
        MemError::Host(e) => MmError::Host(e.raw_os_error().unwrap_or(libc::ENOMEM)),
        _ => MmError::OutOfRange { addr, len },
    }
}

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_protect_unmap() {
        let mm = AddressSpace::new().unwrap();
        mm.map(0x10000, 0x3000, PROT_R | PROT_W, false, -1, 0)
            .unwrap();
        assert!(mm.check(0x10000, 0x3000, PROT_W));
        mm.write_u64(0x10ff8, 42).unwrap();
        assert_eq!(mm.read_u64(0x10ff8), Some(42));
        assert!(mm.write_u64(0x12ffc, 1).is_none(), "crosses the end");
        mm.protect(0x11000, 0x1000, PROT_R).unwrap();
        assert!(!mm.check(0x10000, 0x3000, PROT_W));
        assert!(mm.protect(0x12000, 0x2000, PROT_R).is_err());
        mm.unmap(0x11000, 0x1000).unwrap();
        assert_eq!(mm.mappings(), vec![(0x10000, 0x11000), (0x12000, 0x13000)]);
        assert!(mm.read_u64(0x11000).is_none());
        assert!(mm.read_u64(GUEST_SIZE - 4).is_none());
        assert!(mm.read_u64(u64::MAX - 3).is_none());
    }

    /// A moving mremap leaves the source reserved and inaccessible, not a
    /// hole: a later munmap or mprotect there (a realloc'ing program's
    /// next steps) must not fail on the host, which would turn the JIT off
    /// for the rest of the process (and a hole could take a host mapping).
    #[test]
    fn moving_remap_leaves_the_source_reserved() {
        let mm = AddressSpace::new().unwrap();
        mm.map(0x10000, 0x3000, PROT_R | PROT_W, false, -1, 0)
            .unwrap();
        mm.write_u64(0x12ff8, 7).unwrap();
        assert_eq!(mm.remap(0x10000, 0x3000, 0x5000, 0x40000).unwrap(), 0x40000);
        assert_eq!(mm.read_u64(0x42ff8), Some(7));
        assert!(mm.check(0x40000, 0x5000, PROT_W));
        assert!(!mm.check(0x10000, 0x1000, PROT_R));
        assert_eq!(mm.mappings(), vec![(0x40000, 0x45000)]);
        // SAFETY: a protection change inside the space's own reservation,
        // to what it already is.
        let r = unsafe {
            libc::mprotect(
                mm.space.host_base().add(0x10000).cast(),
                0x3000,
                libc::PROT_NONE,
            )
        };
        assert_eq!(r, 0, "the source is a hole in the reservation");
        mm.unmap(0x10000, 0x3000).unwrap();
        mm.unmap(0x40000, 0x5000).unwrap();
        mm.map(0x10000, 0x1000, PROT_R, false, -1, 0).unwrap();
        assert_eq!(mm.read_u64(0x10000), Some(0));
    }

    /// A remap the host refuses (overlapping ranges: EINVAL, as Linux)
    /// never takes the source's permission away, even for a moment:
    /// another thread using the source meanwhile must not fault.
    #[test]
    fn a_refused_remap_leaves_the_source_accessible_throughout() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let mm = std::sync::Arc::new(AddressSpace::new().unwrap());
        mm.map(0x10000, 0x4000, PROT_R | PROT_W, false, -1, 0)
            .unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let misses = std::sync::Arc::new(AtomicU64::new(0));
        let t = {
            let (mm, stop, misses) = (mm.clone(), stop.clone(), misses.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if !mm.check(0x10000, 0x4000, PROT_R) {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        for _ in 0..20000 {
            let e = mm.remap(0x10000, 0x4000, 0x4000, 0x12000).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL);
        }
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert_eq!(
            misses.load(Ordering::Relaxed),
            0,
            "source seen inaccessible"
        );
        assert!(mm.check(0x10000, 0x4000, PROT_W));
    }

    #[test]
    fn top_down_allocation_and_brk() {
        let mm = AddressSpace::new().unwrap();
        mm.set_mmap_window(0x100000, 0x4000_0000);
        let a = mm.choose(0, 0x2000, false, false).unwrap();
        assert_eq!(a, 0x4000_0000 - 0x2000);
        mm.map(a, 0x2000, PROT_R, false, -1, 0).unwrap();
        let b = mm.choose(0, 0x1000, false, false).unwrap();
        assert_eq!(b, a - 0x1000);
        assert!(matches!(
            mm.choose(a, 0x1000, true, true),
            Err(MmError::Exists(_))
        ));
        mm.set_brk_start(0x20_0800);
        assert_eq!(mm.brk(0), 0x20_0800);
        assert_eq!(mm.brk(0x30_0000), 0x30_0000);
        assert!(mm.check(0x20_1000, 0xff000, PROT_W));
        assert_eq!(mm.brk(0x20_1000), 0x20_1000);
        assert!(!mm.check(0x20_2000, 1, PROT_R));
    }
}
