//! The user-mode memory path: the flat [`UserSpace`].

use std::sync::atomic::Ordering;

use super::{misaligned, page_fault, rd, wr, Acc, Mem, OFF_MASK};
use crate::cpu::{Core, Trap};
use crate::mem::{perm, UserSpace};
use crate::PAGE_SIZE;

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
            // SAFETY: the page is mapped readable (permission table) and the
            // access stays inside it.
            return Ok(unsafe { rd::<N>(self.base.add(va as usize)) });
        }
        match self.check(va, N as u64, perm::R) {
            // SAFETY: both pages checked readable.
            Ok(()) => Ok(unsafe { rd::<N>(self.base.add(va as usize)) }),
            Err(a) => Err(page_fault(Acc::Load, a)),
        }
    }

    #[inline(always)]
    fn store<const N: usize>(&mut self, _core: &mut Core, va: u64, v: u64) -> Result<(), Trap> {
        if va < self.size
            && (N == 1 || va & OFF_MASK <= PAGE_SIZE - N as u64)
            && self.space.perm_slot(va / PAGE_SIZE).load(Ordering::Relaxed) & (perm::W | perm::CODE)
                == perm::W
        {
            // SAFETY: the page is mapped writable and the access stays inside.
            unsafe { wr::<N>(self.base.add(va as usize), v) };
            return Ok(());
        }
        match self.check(va, N as u64, perm::W) {
            Ok(()) => {
                self.space.note_store(va, N as u64);
                // SAFETY: both pages checked writable.
                unsafe { wr::<N>(self.base.add(va as usize), v) };
                Ok(())
            }
            Err(a) => Err(page_fault(Acc::Store, a)),
        }
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
}
