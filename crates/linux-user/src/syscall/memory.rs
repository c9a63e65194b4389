//! Memory: mmap, mremap and the calls on mapped ranges.

use super::{EINVAL, ENOMEM, R};
use crate::mm::{self, page_up, PAGE};
use crate::process::Thread;

impl Thread {
    /// `mprotect`.
    pub(super) fn sys_mprotect(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        if !a0.is_multiple_of(PAGE) {
            return Err(EINVAL);
        }
        if a1 == 0 {
            return Ok(0);
        }
        let len = page_up(a1).ok_or(ENOMEM)?;
        self.mm()
            .protect(a0, len, mm::prot_from_linux(a2 as i32))
            .map_err(|e| -(e.errno() as i64))?;
        Ok(0)
    }

    /// `madvise`.
    pub(super) fn sys_madvise(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        // MADV_DONTNEED and MADV_FREE must really drop the pages;
        // the rest are hints.
        Ok(if a2 == 4 || a2 == 8 {
            let len = page_up(a1).ok_or(EINVAL)?;
            if !self.mm().is_mapped(a0, len) {
                return Err(ENOMEM);
            }
            let p = self.mm().base() as u64 + a0;
            host!(libc::SYS_madvise, p, len, a2 as i32)
        } else {
            0
        })
    }

    /// `msync`.
    pub(super) fn sys_msync(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let len = page_up(a1).ok_or(ENOMEM)?;
        if !self.mm().is_mapped(a0, len) {
            return Err(ENOMEM);
        }
        Ok(host!(
            libc::SYS_msync,
            self.mm().base() as u64 + a0,
            len,
            a2 as i32
        ))
    }

    pub(super) fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        off: u64,
    ) -> R {
        const MAP_SHARED_VALIDATE: i32 = 3;
        if len == 0 || !off.is_multiple_of(PAGE) {
            return Err(EINVAL);
        }
        let len = page_up(len).ok_or(ENOMEM)?;
        if len > mm::GUEST_SIZE {
            return Err(ENOMEM);
        }
        let kind = flags & 3;
        let shared = kind == libc::MAP_SHARED || kind == MAP_SHARED_VALIDATE;
        if !shared && kind != libc::MAP_PRIVATE {
            return Err(EINVAL);
        }
        let anon = flags & libc::MAP_ANONYMOUS != 0;
        let noreplace = flags & libc::MAP_FIXED_NOREPLACE != 0;
        let fixed = flags & libc::MAP_FIXED != 0 || noreplace;
        if fixed && !addr.is_multiple_of(PAGE) {
            return Err(EINVAL);
        }
        if !anon {
            // Check the descriptor before touching the address space.
            let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
            let r = host!(libc::SYS_fstat, fd, st.as_mut_ptr());
            if r < 0 {
                return Err(r);
            }
        }
        let at = self
            .mm()
            .map_chosen(
                addr,
                len,
                fixed,
                noreplace,
                mm::prot_from_linux(prot),
                shared,
                if anon { -1 } else { fd },
                off,
            )
            .map_err(|e| -(e.errno() as i64))?;
        Ok(at as i64)
    }

    pub(super) fn mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    ) -> R {
        const MAYMOVE: u64 = 1;
        const FIXED: u64 = 2;
        if !old.is_multiple_of(PAGE)
            || flags & !(MAYMOVE | FIXED) != 0
            || (flags & FIXED != 0 && flags & MAYMOVE == 0)
        {
            return Err(EINVAL);
        }
        let old_len = page_up(old_len).ok_or(EINVAL)?;
        let new_len = page_up(new_len).ok_or(EINVAL)?;
        if new_len == 0 || old_len == 0 {
            return Err(EINVAL);
        }
        if !self.mm().is_mapped(old, old_len) {
            return Err(-(libc::EFAULT as i64));
        }
        let mm = self.mm();
        if flags & FIXED != 0 {
            if !new_addr.is_multiple_of(PAGE) {
                return Err(EINVAL);
            }
            return mm
                .remap(old, old_len, new_len, new_addr)
                .map(|a| a as i64)
                .map_err(|e| -(e.errno() as i64));
        }
        if new_len <= old_len {
            if new_len < old_len {
                mm.unmap(old + new_len, old_len - new_len)
                    .map_err(|_| EINVAL)?;
            }
            return Ok(old as i64);
        }
        if mm
            .grow_in_place(old, old_len, new_len)
            .map_err(|e| -(e.errno() as i64))?
        {
            return Ok(old as i64);
        }
        if flags & MAYMOVE == 0 {
            return Err(ENOMEM);
        }
        mm.remap_to(old, old_len, new_len, None)
            .map(|a| a as i64)
            .map_err(|e| -(e.errno() as i64))
    }
}
