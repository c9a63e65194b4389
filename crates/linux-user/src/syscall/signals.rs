//! Signal masks, actions and the alternate stack.

use super::{EFAULT, EINVAL, ENOMEM, R};
use crate::mm::{PROT_R, PROT_W};
use crate::process::{AltStack, Thread};
use crate::signal::{self, bit, Action, NSIG};

impl Thread {
    /// `rt_sigprocmask`.
    pub(super) fn sys_rt_sigprocmask(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        if a3 != 8 {
            return Err(EINVAL);
        }
        let old = self.mask;
        if a1 != 0 {
            let set = self.mm().read_u64(a1).ok_or(EFAULT)?;
            let m = match a0 as i32 {
                libc::SIG_BLOCK => old | set,
                libc::SIG_UNBLOCK => old & !set,
                libc::SIG_SETMASK => set,
                _ => return Err(EINVAL),
            };
            self.set_mask(m);
        }
        if a2 != 0 {
            self.mm().write_u64(a2, old).ok_or(EFAULT)?;
        }
        Ok(0)
    }

    /// `rt_sigtimedwait`.
    pub(super) fn sys_rt_sigtimedwait(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        if a3 != 8 {
            return Err(EINVAL);
        }
        let m = self.mm().read_u64(a0).ok_or(EFAULT)?;
        Ok(host!(
            libc::SYS_rt_sigtimedwait,
            &m as *const u64,
            self.opt(a1, 128, PROT_W)?,
            self.opt(a2, 16, PROT_R)?,
            8
        ))
    }

    pub(super) fn guest_sigset(&self, addr: u64) -> Result<u64, i64> {
        Ok(self.mm().read_u64(addr).ok_or(EFAULT)? & !(signal::SYNC_SIGNALS | signal::UNBLOCKABLE))
    }

    pub(super) fn sigaction(&mut self, sig: i32, act: u64, oact: u64, size: u64) -> R {
        if size != 8 || !(1..=NSIG as i32).contains(&sig) {
            return Err(EINVAL);
        }
        let new = if act != 0 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                return Err(EINVAL);
            }
            let b = self.mm().read_vec(act, 24).ok_or(EFAULT)?;
            let rd = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
            Some(Action {
                handler: rd(0),
                flags: rd(8),
                mask: rd(16),
            })
        } else {
            None
        };
        let mut acts = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner());
        let old = acts[sig as usize];
        if oact != 0 {
            let mut b = [0u8; 24];
            b[..8].copy_from_slice(&old.handler.to_le_bytes());
            b[8..16].copy_from_slice(&old.flags.to_le_bytes());
            b[16..].copy_from_slice(&old.mask.to_le_bytes());
            self.mm().write(oact, &b).ok_or(EFAULT)?;
        }
        if let Some(a) = new {
            acts[sig as usize] = a;
            // Faults the CPU reports reach the guest without a host
            // handler; keeping the host default for them makes a bug in the
            // emulator itself fail loudly instead of looping.
            if signal::SYNC_SIGNALS & bit(sig) == 0 {
                signal::set_host_action(sig, &a);
            }
        }
        Ok(0)
    }

    pub(super) fn sigaltstack(&mut self, ss: u64, old: u64) -> R {
        let sp = self.hart.x(2);
        let on = self.altstack.enabled
            && sp > self.altstack.sp
            && sp <= self.altstack.sp + self.altstack.size;
        if old != 0 {
            let mut b = [0u8; 24];
            b[..8].copy_from_slice(&self.altstack.sp.to_le_bytes());
            let flags: i32 = if on {
                1
            } else if !self.altstack.enabled {
                2
            } else {
                0
            };
            b[8..12].copy_from_slice(&flags.to_le_bytes());
            b[16..].copy_from_slice(&self.altstack.size.to_le_bytes());
            self.mm().write(old, &b).ok_or(EFAULT)?;
        }
        if ss != 0 {
            let b = self.mm().read_vec(ss, 24).ok_or(EFAULT)?;
            let ssp = u64::from_le_bytes(b[..8].try_into().map_err(|_| EFAULT)?);
            let flags = i32::from_le_bytes(b[8..12].try_into().map_err(|_| EFAULT)?);
            let size = u64::from_le_bytes(b[16..].try_into().map_err(|_| EFAULT)?);
            if on {
                return Err(-(libc::EPERM as i64));
            }
            if flags & 2 != 0 {
                self.altstack = AltStack::default();
            } else if flags & !(1 | (1 << 31)) != 0 {
                return Err(EINVAL);
            } else {
                if size < 2048 {
                    return Err(ENOMEM);
                }
                self.altstack = AltStack {
                    sp: ssp,
                    size,
                    enabled: true,
                };
            }
        }
        Ok(0)
    }
}
