//! Memory access paths of the interpreter and the JIT: the [`Mem`] trait
//! they run against, the flat user-mode space ([`UserMem`]), and the
//! system-mode MMU ([`SysMem`]: Sv39/Sv48 page walk, hardware A/D update,
//! a direct-mapped TLB per translation regime) over a machine's
//! [`crate::Bus`].

use crate::cpu::{cause, Core, Trap};
use crate::PAGE_SIZE;

pub(crate) mod guard;
mod sys;
mod user;

pub(crate) use sys::{Entry, SysMem, Tlb, TLB_SIZE};
pub(crate) use user::UserMem;

/// Memory as the interpreter sees it (user flat space or MMU + bus).
pub(crate) trait Mem {
    /// Loads `N` bytes (1, 2, 4, 8), zero-extended.
    fn load<const N: usize>(&mut self, core: &mut Core, va: u64) -> Result<u64, Trap>;
    /// Stores the low `N` bytes of `v`.
    fn store<const N: usize>(&mut self, core: &mut Core, va: u64, v: u64) -> Result<(), Trap>;
    /// Host pointer for an aligned atomic access of `N` bytes to RAM
    /// (`store`: the access writes).
    fn atomic<const N: usize>(
        &mut self,
        core: &mut Core,
        va: u64,
        store: bool,
    ) -> Result<*mut u8, Trap>;
    /// An atomic read-modify-write of `N` (4 or 8) aligned bytes: `op`
    /// gets the old value (zero-extended) and gives the new one, or
    /// `None` to store nothing (`store`: the access may write, as for
    /// [`Mem::atomic`]); returns the old value. LR is `op = |_| None`, SC
    /// a compare-and-swap, an AMO its operation (all as a CAS loop on the
    /// host, which is one atomic step for the guest).
    fn rmw<const N: usize>(
        &mut self,
        core: &mut Core,
        va: u64,
        store: bool,
        op: impl Fn(u64) -> Option<u64>,
    ) -> Result<u64, Trap> {
        let p = self.atomic::<N>(core, va, store)?;
        // SAFETY: `atomic` returned a host pointer to N bytes of RAM
        // aligned to N, valid while the mapping lives.
        Ok(unsafe { host_rmw::<N>(p, op) })
    }
}

/// [`Mem::rmw`] on host memory that cannot fault.
///
/// # Safety
/// `p` must point to `N` (4 or 8) bytes of live memory aligned to `N`.
unsafe fn host_rmw<const N: usize>(p: *mut u8, op: impl Fn(u64) -> Option<u64>) -> u64 {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
    if N == 4 {
        // SAFETY: aligned, live (the caller's promise).
        let a = unsafe { AtomicU32::from_ptr(p.cast()) };
        let mut old = a.load(SeqCst);
        while let Some(new) = op(old as u64) {
            match a.compare_exchange_weak(old, new as u32, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(v) => old = v,
            }
        }
        old as u64
    } else {
        // SAFETY: as above.
        let a = unsafe { AtomicU64::from_ptr(p.cast()) };
        let mut old = a.load(SeqCst);
        while let Some(new) = op(old) {
            match a.compare_exchange_weak(old, new, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(v) => old = v,
            }
        }
        old
    }
}

const OFF_MASK: u64 = PAGE_SIZE - 1;

/// Reads `N` bytes from host memory, zero-extended.
///
/// # Safety
/// `p` must be valid for reading `N` bytes.
#[inline(always)]
unsafe fn rd<const N: usize>(p: *const u8) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match N {
            1 => *p as u64,
            2 => p.cast::<u16>().read_unaligned() as u64,
            4 => p.cast::<u32>().read_unaligned() as u64,
            _ => p.cast::<u64>().read_unaligned(),
        }
    }
}

/// Writes the low `N` bytes of `v` to host memory.
///
/// # Safety
/// `p` must be valid for writing `N` bytes.
#[inline(always)]
unsafe fn wr<const N: usize>(p: *mut u8, v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match N {
            1 => *p = v as u8,
            2 => p.cast::<u16>().write_unaligned(v as u16),
            4 => p.cast::<u32>().write_unaligned(v as u32),
            _ => p.cast::<u64>().write_unaligned(v),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Acc {
    Load,
    Store,
    Fetch,
}

fn page_fault(acc: Acc, va: u64) -> Trap {
    Trap {
        cause: match acc {
            Acc::Load => cause::LOAD_PAGE,
            Acc::Store => cause::STORE_PAGE,
            Acc::Fetch => cause::FETCH_PAGE,
        },
        tval: va,
    }
}

fn access_fault(acc: Acc, va: u64) -> Trap {
    Trap {
        cause: match acc {
            Acc::Load => cause::LOAD_ACCESS,
            Acc::Store => cause::STORE_ACCESS,
            Acc::Fetch => cause::FETCH_ACCESS,
        },
        tval: va,
    }
}

fn misaligned(acc: Acc, va: u64) -> Trap {
    Trap {
        cause: if acc == Acc::Load {
            cause::LOAD_MISALIGNED
        } else {
            cause::STORE_MISALIGNED
        },
        tval: va,
    }
}
