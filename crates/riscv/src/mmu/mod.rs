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
