//! The user-mode memory path: the flat [`UserSpace`].

use std::sync::atomic::Ordering;

use super::guard::{self, Refused};
use super::{access_fault, misaligned, page_fault, Acc, Mem, OFF_MASK};
use crate::cpu::{Core, Trap};
use crate::mem::{perm, UserSpace};
use crate::PAGE_SIZE;

/// Attempts of a checked access whose host access keeps failing while the
/// table allows it: only a host that refuses to give a page its protection
/// back (out of mappings) gets that far, and the guest sees a fault.
const RETRIES: usize = 64;

/// The user-mode memory path: `host = base + va` after a permission check.
pub(crate) struct UserMem<'a> {
    space: &'a UserSpace,
    base: *mut u8,
    size: u64,
}

impl<'a> UserMem<'a> {
    pub fn new(space: &'a UserSpace) -> Self {
        UserMem {
            space,
            base: space.host_base(),
            size: space.size(),
        }
    }

    #[inline(always)]
    fn perm_of(&self, va: u64) -> u8 {
        if va < self.size {
            self.space.perm_slot(va / PAGE_SIZE).load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// A load that crosses pages, or that the fast path's host access
    /// failed: the table is checked again and the access retried, since
    /// the host refuses an access the table allowed only while another
    /// thread is taking the permission away (the next check sees that).
    /// A host bus error (nothing backs the page: a file mapping past its
    /// file's end) is the guest's access fault, as Linux's SIGBUS.
    #[cold]
    #[inline(never)]
    fn load_checked<const N: usize>(&self, va: u64) -> Result<u64, Trap> {
        for _ in 0..RETRIES {
            self.check(va, N as u64, perm::R)
                .map_err(|a| page_fault(Acc::Load, a))?;
            // SAFETY: checked inside the space (its guard covers the rest).
            match unsafe { guard::load::<N>(self.base.add(va as usize)) } {
                Ok(v) => return Ok(v),
                Err(Refused::Bus) => return Err(access_fault(Acc::Load, va)),
                Err(Refused::Protection) => {}
            }
        }
        Err(page_fault(Acc::Load, va))
    }

    /// The store of [`UserMem::load_checked`]; it also drops translated
    /// code it overwrites (which gives the page host write permission
    /// back).
    #[cold]
    #[inline(never)]
    fn store_checked<const N: usize>(&self, va: u64, v: u64) -> Result<(), Trap> {
        for _ in 0..RETRIES {
            self.check(va, N as u64, perm::W)
                .map_err(|a| page_fault(Acc::Store, a))?;
            self.space.note_store(va, N as u64);
            // SAFETY: as in `load_checked`.
            match unsafe { guard::store::<N>(self.base.add(va as usize), v) } {
                Ok(()) => return Ok(()),
                Err(Refused::Bus) => return Err(access_fault(Acc::Store, va)),
                Err(Refused::Protection) => {}
            }
        }
        Err(page_fault(Acc::Store, va))
    }

    /// Checks all pages of `[va, va+n)` for `need`; returns the first bad
    /// address.
    fn check(&self, va: u64, n: u64, need: u8) -> Result<(), u64> {
        if self.perm_of(va) & need != need {
            return Err(va);
        }
        let last = va.wrapping_add(n - 1);
        if last / PAGE_SIZE != va / PAGE_SIZE {
            let next = (va & !OFF_MASK).wrapping_add(PAGE_SIZE);
            if last < va || self.perm_of(next) & need != need {
                return Err(next);
            }
        }
        Ok(())
    }
}

impl Mem for UserMem<'_> {
    #[inline(always)]
    fn load<const N: usize>(&mut self, _core: &mut Core, va: u64) -> Result<u64, Trap> {
        if va < self.size
            && (N == 1 || va & OFF_MASK <= PAGE_SIZE - N as u64)
            && self.space.perm_slot(va / PAGE_SIZE).load(Ordering::Relaxed) & perm::R != 0
        {
            // SAFETY: the access stays inside one page of the reservation.
            if let Ok(v) = unsafe { guard::load::<N>(self.base.add(va as usize)) } {
                return Ok(v);
            }
        }
        self.load_checked::<N>(va)
    }

    #[inline(always)]
    fn store<const N: usize>(&mut self, _core: &mut Core, va: u64, v: u64) -> Result<(), Trap> {
        if va < self.size
            && (N == 1 || va & OFF_MASK <= PAGE_SIZE - N as u64)
            && self.space.perm_slot(va / PAGE_SIZE).load(Ordering::Relaxed) & (perm::W | perm::CODE)
                == perm::W
        {
            // SAFETY: the access stays inside one page of the reservation.
            if unsafe { guard::store::<N>(self.base.add(va as usize), v) }.is_ok() {
                return Ok(());
            }
        }
        self.store_checked::<N>(va, v)
    }

    fn atomic<const N: usize>(
        &mut self,
        _core: &mut Core,
        va: u64,
        store: bool,
    ) -> Result<*mut u8, Trap> {
        let acc = if store { Acc::Store } else { Acc::Load };
        if !va.is_multiple_of(N as u64) {
            return Err(misaligned(acc, va));
        }
        let need = if store { perm::R | perm::W } else { perm::R };
        if self.check(va, N as u64, need).is_err() {
            return Err(page_fault(acc, va));
        }
        if store {
            self.space.note_store(va, N as u64);
        }
        // SAFETY: inside the reservation, checked above.
        Ok(unsafe { self.base.add(va as usize) })
    }

    /// The interpreter's LR, SC and AMOs: a guarded load and guarded
    /// compare-and-swaps (`lock cmpxchg`), so that another thread's
    /// munmap, mprotect or file truncation meanwhile, or a page that
    /// nothing backs (a file mapping past its file's end), is the guest's
    /// fault (SIGSEGV, or SIGBUS as on Linux) rather than a host fault in
    /// the emulator. A protection fault while the table allows the access
    /// is retried from the check, as `load_checked` does.
    fn rmw<const N: usize>(
        &mut self,
        core: &mut Core,
        va: u64,
        store: bool,
        op: impl Fn(u64) -> Option<u64>,
    ) -> Result<u64, Trap> {
        let acc = if store { Acc::Store } else { Acc::Load };
        'check: for _ in 0..RETRIES {
            let p = self.atomic::<N>(core, va, store)?;
            // SAFETY: `atomic` checked the aligned range inside the space;
            // the accesses are guarded.
            let mut old = match unsafe { guard::load::<N>(p) } {
                Ok(v) => v,
                Err(Refused::Bus) => return Err(access_fault(acc, va)),
                Err(Refused::Protection) => continue 'check,
            };
            while let Some(new) = op(old) {
                // SAFETY: as above.
                match unsafe { guard::cas::<N>(p, old, new) } {
                    Ok(v) if v == old => break,
                    Ok(v) => old = v,
                    Err(Refused::Bus) => return Err(access_fault(acc, va)),
                    Err(Refused::Protection) => continue 'check,
                }
            }
            return Ok(old);
        }
        Err(page_fault(acc, va))
    }
}
