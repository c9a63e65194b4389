//! Sockets: addresses and messages.

use super::{EFAULT, R};
use crate::abi::nr;
use crate::mm::{PROT_R, PROT_W};
use crate::process::Thread;

impl Thread {
    /// `accept | accept4`.
    pub(super) fn sys_accept(&mut self, n: u64, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let fd = a[0] as i32 as libc::c_long;
        let (addr, len) = self.sockaddr_out(a1, a2)?;
        Ok(host!(
            libc::SYS_accept4,
            fd,
            addr,
            len,
            if n == nr::ACCEPT4 { a3 as i32 } else { 0 }
        ))
    }

    /// `recvfrom`.
    pub(super) fn sys_recvfrom(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        let a5 = a[5];
        let fd = a[0] as i32 as libc::c_long;
        let (addr, len) = self.sockaddr_out(a4, a5)?;
        Ok(host!(
            libc::SYS_recvfrom,
            fd,
            self.buf(a1, a2, PROT_W)?,
            a2,
            a3 as i32,
            addr,
            len
        ))
    }

    /// `getsockopt`.
    pub(super) fn sys_getsockopt(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        let fd = a[0] as i32 as libc::c_long;
        let len = self.mm().read_u32(a4).ok_or(EFAULT)? as u64;
        Ok(host!(
            libc::SYS_getsockopt,
            fd,
            a1 as i32,
            a2 as i32,
            self.buf(a3, len, PROT_W)?,
            self.buf(a4, 4, PROT_W)?
        ))
    }

    pub(super) fn sockaddr_out(
        &self,
        addr: u64,
        lenp: u64,
    ) -> Result<(*mut libc::c_void, *mut libc::c_void), i64> {
        if addr == 0 {
            return Ok((std::ptr::null_mut(), std::ptr::null_mut()));
        }
        let len = self.mm().read_u32(lenp).ok_or(EFAULT)? as u64;
        Ok((
            self.buf(addr, len, PROT_W)?,
            self.buf(lenp, 4, PROT_R | PROT_W)?,
        ))
    }

    pub(super) fn msg(&mut self, n: u64, fd: libc::c_long, addr: u64, flags: i32) -> R {
        // struct msghdr is laid out the same on both 64-bit ABIs; only its
        // pointers need translating.
        let need = if n == nr::RECVMSG { PROT_W } else { PROT_R };
        let g = self.mm().read_vec(addr, 56).ok_or(EFAULT)?;
        let rd = |o: usize| u64::from_le_bytes(g[o..o + 8].try_into().unwrap_or([0; 8]));
        let (name, namelen, iov, iovlen, ctl, ctllen) =
            (rd(0), rd(8) as u32 as u64, rd(16), rd(24), rd(32), rd(40));
        let v = self.iovecs(iov, iovlen, need)?;
        // SAFETY: msghdr is plain data; zeroed is a valid value.
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = self.opt(name, namelen, need)?;
        h.msg_namelen = namelen as u32;
        h.msg_iov = v.as_ptr() as *mut libc::iovec;
        h.msg_iovlen = v.len();
        h.msg_control = self.opt(ctl, ctllen, need)?;
        h.msg_controllen = ctllen as usize;
        let r = if n == nr::SENDMSG {
            host!(libc::SYS_sendmsg, fd, &h as *const libc::msghdr, flags)
        } else {
            host!(libc::SYS_recvmsg, fd, &mut h as *mut libc::msghdr, flags)
        };
        if n == nr::RECVMSG && r >= 0 {
            self.mm().write_u32(addr + 8, h.msg_namelen).ok_or(EFAULT)?;
            self.mm()
                .write_u64(addr + 40, h.msg_controllen as u64)
                .ok_or(EFAULT)?;
            self.mm()
                .write_u32(addr + 48, h.msg_flags as u32)
                .ok_or(EFAULT)?;
        }
        Ok(r)
    }
}
