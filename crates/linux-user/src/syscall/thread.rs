//! Processes, threads, ids, futexes, limits and time.

use super::{EFAULT, EINVAL, ENOSYS, R};
use crate::mm::{PAGE, PROT_R, PROT_W};
use crate::process::Thread;
use crate::signal::{self, Action};

impl Thread {
    /// `clone`.
    pub(super) fn sys_clone(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        const CLONE_VM: u64 = 0x100;
        const CLONE_VFORK: u64 = 0x4000;
        const CLONE_THREAD: u64 = 0x10000;
        // riscv64 clone(flags, newsp, ptid, tls, ctid).
        Ok(if a0 & CLONE_THREAD != 0 {
            if a0 & CLONE_VM == 0 {
                return Err(EINVAL);
            }
            self.spawn_thread(a0, a1, a2, a3, a4)
        } else if a0 & CLONE_VM != 0 && a0 & CLONE_VFORK == 0 {
            // A new process sharing memory (not vfork) cannot be
            // done with one host process per guest process.
            return Err(EINVAL);
        } else {
            self.fork(a0, a1, a2, a4)
        })
    }

    /// `get_robust_list`.
    pub(super) fn sys_get_robust_list(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let pid = a0 as i32;
        let head = if pid == 0 || pid == self.tid {
            self.robust_list
        } else if let Some(h) = self.proc.robust_head(pid) {
            // Another thread of this guest process.
            h
        } else if pid < 0 || host!(libc::SYS_kill, pid, 0) == -(libc::ESRCH as i64) {
            return Err(-(libc::ESRCH as i64));
        } else {
            // A task outside this emulated process: its list (if it
            // is a guest at all) lives in another address space.
            return Err(-(libc::EPERM as i64));
        };
        self.mm().write_u64(a1, head).ok_or(EFAULT)?;
        self.mm().write_u64(a2, 24).ok_or(EFAULT)?;
        Ok(0)
    }

    /// `uname`.
    pub(super) fn sys_uname(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let mut u = std::mem::MaybeUninit::<libc::utsname>::zeroed();
        let r = host!(libc::SYS_uname, u.as_mut_ptr());
        if r == 0 {
            // SAFETY: uname filled it.
            let mut u = unsafe { u.assume_init() };
            u.machine = [0; 65];
            for (d, s) in u.machine.iter_mut().zip(b"riscv64") {
                *d = *s as libc::c_char;
            }
            // SAFETY: utsname is plain bytes (6 x 65).
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&u as *const libc::utsname).cast::<u8>(),
                    std::mem::size_of::<libc::utsname>(),
                )
            };
            self.mm().write(a0, bytes).ok_or(EFAULT)?;
        }
        Ok(r)
    }

    /// clone3(args, size): the thread and fork/vfork forms (what glibc's
    /// pthread_create, fork and posix_spawn use), with CLONE_PIDFD for the
    /// fork form.
    pub(super) fn clone3(&mut self, args: u64, size: u64) -> R {
        const CLONE_VM: u64 = 0x100;
        const CLONE_PIDFD: u64 = 0x1000;
        const CLONE_VFORK: u64 = 0x4000;
        const CLONE_THREAD: u64 = 0x10000;
        const CLONE_SETTLS: u64 = 0x0008_0000;
        const CSIGNAL: u64 = 0xff;
        const CLONE_DETACHED: u64 = 0x0040_0000;
        /// Flags Linux knows (CLONE_NEWTIME, CLONE_INTO_CGROUP and
        /// CLONE_CLEAR_SIGHAND included).
        const KNOWN: u64 = 0x3_ffff_ff00;
        /// Flags this emulation cannot honour: namespaces, CLONE_PARENT,
        /// CLONE_INTO_CGROUP, CLONE_NEWTIME and CLONE_PTRACE/UNTRACED.
        const UNSUPPORTED: u64 = 0x7e02_0000 | 0x8000 | 0x2000 | 0x80 | 0x2_0000_0000 | 0x0080_0000;
        const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
        const CLONE_SIGHAND: u64 = 0x800;
        // Version 0 of struct clone_args is 64 bytes; version 2 is 88.
        const SIZE_VER0: u64 = 64;
        const SIZE_KNOWN: u64 = 88;
        if size < SIZE_VER0 {
            return Err(EINVAL);
        }
        if size > PAGE {
            return Err(-(libc::E2BIG as i64));
        }
        let raw = self.mm().read_vec(args, size as usize).ok_or(EFAULT)?;
        // A newer struct is fine as long as what we do not know is zero.
        if raw.iter().skip(SIZE_KNOWN as usize).any(|&b| b != 0) {
            return Err(-(libc::E2BIG as i64));
        }
        let mut w = [0u64; 11];
        for (i, c) in raw.chunks_exact(8).take(11).enumerate() {
            w[i] = u64::from_le_bytes(c.try_into().map_err(|_| EFAULT)?);
        }
        let [flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, _cgroup] =
            w;
        if flags & !KNOWN != 0 || flags & (CLONE_DETACHED | CSIGNAL) != 0 || exit_signal > 64 {
            return Err(EINVAL);
        }
        if (stack == 0) != (stack_size == 0) {
            return Err(EINVAL);
        }
        if flags & UNSUPPORTED != 0 || set_tid != 0 || set_tid_size != 0 {
            self.log_unknown("clone3 flags", flags);
            return Err(EINVAL);
        }
        if flags & CLONE_CLEAR_SIGHAND != 0 && flags & CLONE_SIGHAND != 0 {
            // Shared handlers cannot be reset for the child alone.
            return Err(EINVAL);
        }
        let sp = if stack != 0 {
            stack.checked_add(stack_size).ok_or(EINVAL)?
        } else {
            0
        };
        let tls = if flags & CLONE_SETTLS != 0 { tls } else { 0 };
        if flags & CLONE_THREAD != 0 {
            if flags & CLONE_VM == 0 || flags & CLONE_PIDFD != 0 || exit_signal != 0 {
                return Err(EINVAL);
            }
            return Ok(self.spawn_thread(flags, sp, parent_tid, tls, child_tid));
        }
        if flags & CLONE_VM != 0 && flags & CLONE_VFORK == 0 {
            // A process sharing memory (not vfork): see CLONE.
            return Err(EINVAL);
        }
        if exit_signal != libc::SIGCHLD as u64 {
            // One host process per guest process, made by fork(2), which
            // always signals SIGCHLD.
            self.log_unknown("clone3 exit signal", exit_signal);
            return Err(EINVAL);
        }
        if flags & CLONE_PIDFD != 0 {
            // Fail before forking if the pidfd cannot be stored.
            self.buf(pidfd, 4, PROT_W)?;
        }
        let pid = self.fork(flags, sp, parent_tid, child_tid);
        if pid == 0 && flags & CLONE_CLEAR_SIGHAND != 0 {
            // The child starts with default handlers; ignored stays ignored.
            let mut acts = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner());
            for (sig, a) in acts.iter_mut().enumerate().skip(1) {
                if a.handler != signal::SIG_IGN && a.handler != signal::SIG_DFL {
                    *a = Action::default();
                    signal::set_host_action(sig as i32, a);
                }
            }
        }
        if pid > 0 && flags & CLONE_PIDFD != 0 {
            let fd = host!(libc::SYS_pidfd_open, pid as i32, 0);
            if fd >= 0 {
                // PIDFD_NONBLOCK is 0 here; clone's pidfds are close-on-exec.
                host!(libc::SYS_fcntl, fd as i32, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            self.mm().write_u32(pidfd, fd as u32).ok_or(EFAULT)?;
        }
        Ok(pid)
    }

    pub(super) fn prctl(&mut self, op: i32, a1: u64, _a2: u64) -> R {
        Ok(match op {
            libc::PR_SET_NAME => {
                // Like Linux, read at most 15 bytes (up to a NUL): the name
                // need not be terminated, nor the memory after it mapped.
                let mut b = [0u8; 16];
                for (i, c) in b.iter_mut().take(15).enumerate() {
                    let v = self
                        .mm()
                        .read_vec(a1.wrapping_add(i as u64), 1)
                        .ok_or(EFAULT)?[0];
                    if v == 0 {
                        break;
                    }
                    *c = v;
                }
                host!(libc::SYS_prctl, op, b.as_ptr())
            }
            libc::PR_GET_NAME => host!(libc::SYS_prctl, op, self.buf(a1, 16, PROT_W)?),
            libc::PR_SET_PDEATHSIG
            | libc::PR_SET_DUMPABLE
            | libc::PR_GET_DUMPABLE
            | libc::PR_SET_NO_NEW_PRIVS
            | libc::PR_GET_NO_NEW_PRIVS
            | libc::PR_SET_CHILD_SUBREAPER
            | libc::PR_CAPBSET_READ
            | libc::PR_GET_KEEPCAPS
            | libc::PR_SET_KEEPCAPS => {
                host!(libc::SYS_prctl, op, a1, 0, 0, 0)
            }
            libc::PR_GET_PDEATHSIG | libc::PR_GET_CHILD_SUBREAPER => {
                host!(libc::SYS_prctl, op, self.buf(a1, 4, PROT_W)?, 0, 0, 0)
            }
            _ => EINVAL,
        })
    }

    pub(super) fn futex(
        &mut self,
        uaddr: u64,
        op: i32,
        val: u64,
        a3: u64,
        uaddr2: u64,
        val3: u64,
    ) -> R {
        let cmd = op & 0x7f;
        if !uaddr.is_multiple_of(4) {
            return Err(EINVAL);
        }
        // The PI operations have the host kernel write the word: it must be
        // writable for the guest (and so on the host, whose protection
        // mirrors the guest's; a page holding code gets host write back).
        let need = if matches!(cmd, 6 | 7 | 8 | 13) {
            PROT_R | PROT_W
        } else {
            PROT_R
        };
        let u = self.buf(uaddr, 4, need)?;
        Ok(match cmd {
            // WAIT, WAIT_BITSET, LOCK_PI, LOCK_PI2, WAIT_REQUEUE_PI: a3 is a timeout.
            0 | 9 | 6 | 13 | 11 => {
                let ts = self.opt(a3, 16, PROT_R)?;
                let u2 = if cmd == 11 {
                    self.buf(uaddr2, 4, PROT_R | PROT_W)?
                } else {
                    std::ptr::null_mut()
                };
                host!(libc::SYS_futex, u, op, val as u32, ts, u2, val3 as u32)
            }
            // WAKE, WAKE_BITSET, UNLOCK_PI, TRYLOCK_PI
            1 | 10 | 7 | 8 => host!(libc::SYS_futex, u, op, val as u32, a3, 0, val3 as u32),
            // REQUEUE, CMP_REQUEUE, WAKE_OP, CMP_REQUEUE_PI: a3 is val2.
            3 | 4 | 5 | 12 => {
                if !uaddr2.is_multiple_of(4) {
                    return Err(EINVAL);
                }
                let u2 = self.buf(uaddr2, 4, PROT_R | PROT_W)?;
                host!(libc::SYS_futex, u, op, val as u32, a3, u2, val3 as u32)
            }
            _ => ENOSYS,
        })
    }
}
