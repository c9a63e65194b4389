//! riscv64 Linux syscalls translated to the x86-64 host.
//!
//! Every guest pointer is checked against the guest's page permissions
//! before the host kernel sees it (a bad one gives EFAULT), so a guest can
//! never make the emulator touch host memory outside its address space.

use crate::abi::nr;
use crate::mm::{self, page_up, PAGE, PROT_R, PROT_W};
use crate::process::{Sys, Thread};
use std::ffi::CString;

const EFAULT: i64 = -(libc::EFAULT as i64);
const EINVAL: i64 = -(libc::EINVAL as i64);
const ENOSYS: i64 = -(libc::ENOSYS as i64);
const ENOMEM: i64 = -(libc::ENOMEM as i64);
/// Most strings a guest may pass (PATH_MAX-like cap for paths, larger for
/// execve arguments).
const MAX_PATH: usize = 4096;
const MAX_ARG: usize = 128 << 10;
/// Most iovecs per call (IOV_MAX).
const IOV_MAX: u64 = 1024;
/// Most argv/envp entries accepted by execve.
const MAX_ARGS: usize = 1 << 16;

/// The host's result of a raw syscall, as `-errno` on failure.
fn ret(r: libc::c_long) -> i64 {
    if r == -1 {
        -(mm::errno() as i64)
    } else {
        r
    }
}

/// Calls a host syscall with already-translated arguments.
macro_rules! host {
    ($n:expr $(, $a:expr)* $(,)?) => {{
        // SAFETY: every pointer argument was produced by a checked guest
        // translation (or is null), so the host kernel only touches guest
        // memory that is mapped with the needed permissions.
        $crate::syscall::ret(unsafe { libc::syscall($n $(, $a)*) })
    }};
}

type R = Result<i64, i64>;

// Handlers by family; the dispatch below stays one match.
mod fs;
mod memory;
mod net;
mod signals;
mod thread;

impl Thread {
    fn mm(&self) -> &mm::AddressSpace {
        &self.proc.mm
    }

    /// Host pointer for a guest buffer, or EFAULT. A zero-length buffer
    /// gives a null pointer (nothing is accessed).
    fn buf(&self, addr: u64, len: u64, need: u8) -> Result<*mut libc::c_void, i64> {
        if len == 0 {
            return Ok(std::ptr::null_mut());
        }
        if need & PROT_W != 0 {
            // The host kernel is about to write there: drop decoded code.
            self.mm().space().invalidate_code(addr, len);
        }
        self.mm()
            .ptr(addr, len, need)
            .map(|p| p as *mut libc::c_void)
            .ok_or(EFAULT)
    }

    /// Like `buf`, but a null guest pointer stays null.
    fn opt(&self, addr: u64, len: u64, need: u8) -> Result<*mut libc::c_void, i64> {
        if addr == 0 {
            Ok(std::ptr::null_mut())
        } else {
            self.buf(addr, len.max(1), need)
        }
    }

    fn path(&self, addr: u64) -> Result<CString, i64> {
        let p = self.mm().cstr(addr, MAX_PATH).ok_or(EFAULT)?;
        CString::new(self.host_path(&p)).map_err(|_| EINVAL)
    }

    /// Like `path`, but NULL is allowed (utimensat).
    fn opt_path(&self, addr: u64) -> Result<Option<CString>, i64> {
        if addr == 0 {
            Ok(None)
        } else {
            self.path(addr).map(Some)
        }
    }

    fn str_array(&self, addr: u64) -> Result<Vec<Vec<u8>>, i64> {
        let mut v = Vec::new();
        if addr == 0 {
            return Ok(v);
        }
        let mut total = 0;
        for i in 0..MAX_ARGS as u64 {
            let p = self.mm().read_u64(addr + 8 * i).ok_or(EFAULT)?;
            if p == 0 {
                return Ok(v);
            }
            let s = self.mm().cstr(p, MAX_ARG).ok_or(EFAULT)?;
            total += s.len() + 1;
            if total > 2 << 20 {
                return Err(-(libc::E2BIG as i64));
            }
            v.push(s);
        }
        Err(-(libc::E2BIG as i64))
    }

    /// Translates a guest iovec array.
    fn iovecs(&self, addr: u64, cnt: u64, need: u8) -> Result<Vec<libc::iovec>, i64> {
        if cnt > IOV_MAX {
            return Err(EINVAL);
        }
        let raw = self
            .mm()
            .read_vec(addr, (cnt * 16) as usize)
            .ok_or(EFAULT)?;
        let mut v = Vec::with_capacity(cnt as usize);
        for c in raw.chunks_exact(16) {
            let base = u64::from_le_bytes(c[..8].try_into().map_err(|_| EFAULT)?);
            let len = u64::from_le_bytes(c[8..].try_into().map_err(|_| EFAULT)?);
            let p = self.buf(base, len, need)?;
            v.push(libc::iovec {
                iov_base: p,
                iov_len: len as usize,
            });
        }
        Ok(v)
    }

    fn log_unknown(&self, what: &str, n: u64) {
        let mut u = self.proc.unknown.lock().unwrap_or_else(|e| e.into_inner());
        let key = if what == "syscall" { n } else { n | (1 << 63) };
        if u.insert(key) {
            eprintln!("virtkit: unsupported {what} {n} (returning ENOSYS)");
        }
    }

    /// Handles one ecall.
    pub(crate) fn syscall(&mut self, n: u64, a: [u64; 6]) -> Sys {
        match n {
            nr::RT_SIGRETURN => return self.sigreturn(),
            nr::EXIT => {
                self.vfork_sync();
                return Sys::ExitThread(a[0] as i32 & 0xff);
            }
            nr::EXIT_GROUP => {
                self.vfork_sync();
                // SAFETY: ends the whole process with the guest's status.
                unsafe { libc::_exit(a[0] as i32 & 0xff) }
            }
            _ => {}
        }
        Sys::Ret(match self.syscall_inner(n, a) {
            Ok(r) | Err(r) => r,
        })
    }

    fn syscall_inner(&mut self, n: u64, a: [u64; 6]) -> R {
        let (a0, a1, a2, a3, a4, a5) = (a[0], a[1], a[2], a[3], a[4], a[5]);
        let fd = a0 as i32 as libc::c_long;
        let dirfd = a0 as i32 as libc::c_long;
        Ok(match n {
            // --- files ---------------------------------------------------
            nr::READ => host!(libc::SYS_read, fd, self.buf(a1, a2, PROT_W)?, a2),
            nr::WRITE => host!(libc::SYS_write, fd, self.buf(a1, a2, PROT_R)?, a2),
            nr::PREAD64 => host!(libc::SYS_pread64, fd, self.buf(a1, a2, PROT_W)?, a2, a3),
            nr::PWRITE64 => host!(libc::SYS_pwrite64, fd, self.buf(a1, a2, PROT_R)?, a2, a3),
            nr::READV | nr::PREADV => {
                let v = self.iovecs(a1, a2, PROT_W)?;
                if n == nr::READV {
                    host!(libc::SYS_readv, fd, v.as_ptr(), v.len())
                } else {
                    host!(libc::SYS_preadv, fd, v.as_ptr(), v.len(), a3, 0)
                }
            }
            nr::WRITEV | nr::PWRITEV => {
                let v = self.iovecs(a1, a2, PROT_R)?;
                if n == nr::WRITEV {
                    host!(libc::SYS_writev, fd, v.as_ptr(), v.len())
                } else {
                    host!(libc::SYS_pwritev, fd, v.as_ptr(), v.len(), a3, 0)
                }
            }
            nr::LSEEK => host!(libc::SYS_lseek, fd, a1, a2 as i32),
            nr::OPENAT => self.sys_openat(a)?,
            nr::CLOSE => host!(libc::SYS_close, fd),
            nr::CLOSE_RANGE => host!(libc::SYS_close_range, a0 as u32, a1 as u32, a2 as u32),
            nr::DUP => host!(libc::SYS_dup, fd),
            nr::DUP3 => host!(libc::SYS_dup3, fd, a1 as i32, a2 as i32),
            nr::PIPE2 => self.sys_pipe2(a)?,
            nr::FCNTL => self.fcntl(fd, a1 as i32, a2)?,
            nr::IOCTL => self.ioctl(fd, a1, a2)?,
            nr::FLOCK => host!(libc::SYS_flock, fd, a1 as i32),
            nr::GETDENTS64 => host!(libc::SYS_getdents64, fd, self.buf(a1, a2, PROT_W)?, a2),
            nr::NEWFSTATAT | nr::FSTAT => self.sys_newfstatat(n, a)?,
            nr::STATX => self.sys_statx(a)?,
            nr::STATFS => host!(
                libc::SYS_statfs,
                self.path(a0)?.as_ptr(),
                self.buf(a1, 120, PROT_W)?
            ),
            nr::FSTATFS => host!(libc::SYS_fstatfs, fd, self.buf(a1, 120, PROT_W)?),
            nr::READLINKAT => self.sys_readlinkat(a)?,
            nr::FACCESSAT => host!(
                libc::SYS_faccessat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as i32
            ),
            nr::FACCESSAT2 => host!(
                libc::SYS_faccessat2,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as i32,
                a3 as i32
            ),
            nr::MKDIRAT => host!(libc::SYS_mkdirat, dirfd, self.path(a1)?.as_ptr(), a2 as u32),
            nr::MKNODAT => host!(
                libc::SYS_mknodat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as u32,
                a3
            ),
            nr::UNLINKAT => host!(
                libc::SYS_unlinkat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as i32
            ),
            nr::SYMLINKAT => self.sys_symlinkat(a)?,
            nr::LINKAT => host!(
                libc::SYS_linkat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as i32,
                self.path(a3)?.as_ptr(),
                a4 as i32
            ),
            nr::RENAMEAT2 => host!(
                libc::SYS_renameat2,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as i32,
                self.path(a3)?.as_ptr(),
                a4 as u32
            ),
            nr::FCHMOD => host!(libc::SYS_fchmod, fd, a1 as u32),
            nr::FCHMODAT => host!(
                libc::SYS_fchmodat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as u32
            ),
            nr::FCHOWN => host!(libc::SYS_fchown, fd, a1 as u32, a2 as u32),
            nr::FCHOWNAT => host!(
                libc::SYS_fchownat,
                dirfd,
                self.path(a1)?.as_ptr(),
                a2 as u32,
                a3 as u32,
                a4 as i32
            ),
            nr::UTIMENSAT => self.sys_utimensat(a)?,
            nr::TRUNCATE => self.sys_truncate(a)?,
            nr::FTRUNCATE => host!(libc::SYS_ftruncate, fd, a1),
            nr::FALLOCATE => host!(libc::SYS_fallocate, fd, a1 as i32, a2, a3),
            nr::FADVISE64 => host!(libc::SYS_fadvise64, fd, a1, a2, a3 as i32),
            nr::SYNC => host!(libc::SYS_sync),
            nr::FSYNC => host!(libc::SYS_fsync, fd),
            nr::FDATASYNC => host!(libc::SYS_fdatasync, fd),
            nr::GETCWD => host!(libc::SYS_getcwd, self.buf(a0, a1, PROT_W)?, a1),
            nr::CHDIR => host!(libc::SYS_chdir, self.path(a0)?.as_ptr()),
            nr::FCHDIR => host!(libc::SYS_fchdir, fd),
            nr::CHROOT => host!(libc::SYS_chroot, self.path(a0)?.as_ptr()),
            nr::UMASK => host!(libc::SYS_umask, a0 as u32),
            nr::SENDFILE => host!(
                libc::SYS_sendfile,
                fd,
                a1 as i32,
                self.opt(a2, 8, PROT_R | PROT_W)?,
                a3
            ),
            nr::COPY_FILE_RANGE => host!(
                libc::SYS_copy_file_range,
                fd,
                self.opt(a1, 8, PROT_R | PROT_W)?,
                a2 as i32,
                self.opt(a3, 8, PROT_R | PROT_W)?,
                a4,
                a5 as u32
            ),
            nr::SPLICE => host!(
                libc::SYS_splice,
                fd,
                self.opt(a1, 8, PROT_R | PROT_W)?,
                a2 as i32,
                self.opt(a3, 8, PROT_R | PROT_W)?,
                a4,
                a5 as u32
            ),
            nr::MEMFD_CREATE => {
                let name =
                    CString::new(self.mm().cstr(a0, 249).ok_or(EFAULT)?).map_err(|_| EINVAL)?;
                host!(libc::SYS_memfd_create, name.as_ptr(), a1 as u32)
            }
            nr::EVENTFD2 => host!(libc::SYS_eventfd2, a0 as u32, a1 as i32),
            nr::INOTIFY_INIT1 => host!(libc::SYS_inotify_init1, a0 as i32),
            nr::INOTIFY_ADD_WATCH => host!(
                libc::SYS_inotify_add_watch,
                fd,
                self.path(a1)?.as_ptr(),
                a2 as u32
            ),
            nr::INOTIFY_RM_WATCH => host!(libc::SYS_inotify_rm_watch, fd, a1 as i32),
            nr::TIMERFD_CREATE => host!(libc::SYS_timerfd_create, a0 as i32, a1 as i32),
            nr::TIMERFD_SETTIME => host!(
                libc::SYS_timerfd_settime,
                fd,
                a1 as i32,
                self.buf(a2, 32, PROT_R)?,
                self.opt(a3, 32, PROT_W)?
            ),
            nr::TIMERFD_GETTIME => host!(libc::SYS_timerfd_gettime, fd, self.buf(a1, 32, PROT_W)?),
            nr::SIGNALFD4 => {
                if a2 != 8 {
                    return Err(EINVAL);
                }
                let m = self.mm().read_u64(a1).ok_or(EFAULT)?;
                host!(libc::SYS_signalfd4, fd, &m as *const u64, 8, a3 as i32)
            }
            nr::EPOLL_CREATE1 => host!(libc::SYS_epoll_create1, a0 as i32),
            nr::EPOLL_CTL => self.sys_epoll_ctl(a)?,
            nr::EPOLL_PWAIT => self.sys_epoll_pwait(a)?,
            nr::PPOLL => self.sys_ppoll(a)?,
            nr::PSELECT6 => self.sys_pselect6(a)?,

            // --- memory ----------------------------------------------------
            nr::BRK => self.mm().brk(a0) as i64,
            nr::MMAP => self.mmap(a0, a1, a2 as i32, a3 as i32, a4 as i32, a5)?,
            nr::MUNMAP => {
                if a0 % PAGE != 0 || a1 == 0 {
                    return Err(EINVAL);
                }
                let len = page_up(a1).ok_or(EINVAL)?;
                self.mm().unmap(a0, len).map_err(|_| EINVAL)?;
                0
            }
            nr::MPROTECT => self.sys_mprotect(a)?,
            nr::MREMAP => self.mremap(a0, a1, a2, a3, a4)?,
            nr::MADVISE => self.sys_madvise(a)?,
            nr::MSYNC => self.sys_msync(a)?,
            nr::MLOCK | nr::MUNLOCK | nr::MLOCKALL | nr::MUNLOCKALL => 0,
            nr::MINCORE => {
                let len = page_up(a1).ok_or(ENOMEM)?;
                if !self.mm().is_mapped(a0, len) {
                    return Err(ENOMEM);
                }
                let v = self.buf(a2, len / PAGE, PROT_W)?;
                host!(libc::SYS_mincore, self.mm().base() as u64 + a0, len, v)
            }
            nr::RISCV_FLUSH_ICACHE => {
                self.mm().space().invalidate_code(0, mm::GUEST_SIZE);
                0
            }
            nr::MEMBARRIER => {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                if a0 == 0 {
                    // MEMBARRIER_CMD_QUERY: nothing registered-only offered.
                    1 // MEMBARRIER_CMD_GLOBAL
                } else {
                    0
                }
            }

            // --- processes and threads -------------------------------------
            nr::CLONE => self.sys_clone(a)?,
            nr::CLONE3 => self.clone3(a0, a1)?,
            nr::EXECVE => {
                let path = self.mm().cstr(a0, MAX_PATH).ok_or(EFAULT)?;
                let argv = self.str_array(a1)?;
                let envp = self.str_array(a2)?;
                self.execve(path, argv, envp)
            }
            nr::WAIT4 => host!(
                libc::SYS_wait4,
                a0 as i32,
                self.opt(a1, 4, PROT_W)?,
                a2 as i32,
                self.opt(a3, 144, PROT_W)?
            ),
            nr::WAITID => host!(
                libc::SYS_waitid,
                a0 as i32,
                a1 as i32,
                self.opt(a2, 128, PROT_W)?,
                a3 as i32,
                self.opt(a4, 144, PROT_W)?
            ),
            nr::SET_TID_ADDRESS => {
                self.clear_child_tid = a0;
                self.tid as i64
            }
            nr::SET_ROBUST_LIST => {
                if a1 != 24 {
                    return Err(EINVAL);
                }
                self.robust_list = a0;
                self.proc.set_robust_head(self.tid, a0);
                0
            }
            nr::GET_ROBUST_LIST => self.sys_get_robust_list(a)?,
            nr::FUTEX => self.futex(a0, a1 as i32, a2, a3, a4, a5)?,
            nr::GETPID => host!(libc::SYS_getpid),
            nr::GETPPID => host!(libc::SYS_getppid),
            nr::GETTID => self.tid as i64,
            nr::GETUID => host!(libc::SYS_getuid),
            nr::GETEUID => host!(libc::SYS_geteuid),
            nr::GETGID => host!(libc::SYS_getgid),
            nr::GETEGID => host!(libc::SYS_getegid),
            nr::GETRESUID => host!(
                libc::SYS_getresuid,
                self.buf(a0, 4, PROT_W)?,
                self.buf(a1, 4, PROT_W)?,
                self.buf(a2, 4, PROT_W)?
            ),
            nr::GETRESGID => host!(
                libc::SYS_getresgid,
                self.buf(a0, 4, PROT_W)?,
                self.buf(a1, 4, PROT_W)?,
                self.buf(a2, 4, PROT_W)?
            ),
            nr::SETUID => host!(libc::SYS_setuid, a0 as u32),
            nr::SETGID => host!(libc::SYS_setgid, a0 as u32),
            nr::SETREUID => host!(libc::SYS_setreuid, a0 as u32, a1 as u32),
            nr::SETREGID => host!(libc::SYS_setregid, a0 as u32, a1 as u32),
            nr::SETRESUID => host!(libc::SYS_setresuid, a0 as u32, a1 as u32, a2 as u32),
            nr::SETRESGID => host!(libc::SYS_setresgid, a0 as u32, a1 as u32, a2 as u32),
            nr::GETGROUPS => {
                let n = (a0 as i32).clamp(0, 65536) as u64;
                host!(libc::SYS_getgroups, a0 as i32, self.buf(a1, n * 4, PROT_W)?)
            }
            nr::SETGROUPS => {
                let n = (a0 as i32).clamp(0, 65536) as u64;
                host!(libc::SYS_setgroups, a0 as i32, self.buf(a1, n * 4, PROT_R)?)
            }
            nr::SETPGID => host!(libc::SYS_setpgid, a0 as i32, a1 as i32),
            nr::GETPGID => host!(libc::SYS_getpgid, a0 as i32),
            nr::GETSID => host!(libc::SYS_getsid, a0 as i32),
            nr::SETSID => host!(libc::SYS_setsid),
            nr::GETPRIORITY => host!(libc::SYS_getpriority, a0 as i32, a1 as i32),
            nr::SETPRIORITY => host!(libc::SYS_setpriority, a0 as i32, a1 as i32, a2 as i32),
            nr::SCHED_YIELD => host!(libc::SYS_sched_yield),
            nr::SCHED_GETAFFINITY => {
                host!(
                    libc::SYS_sched_getaffinity,
                    a0 as i32,
                    a1,
                    self.buf(a2, a1, PROT_W)?
                )
            }
            nr::SCHED_SETAFFINITY => {
                host!(
                    libc::SYS_sched_setaffinity,
                    a0 as i32,
                    a1,
                    self.buf(a2, a1, PROT_R)?
                )
            }
            nr::GETCPU => host!(
                libc::SYS_getcpu,
                self.opt(a0, 4, PROT_W)?,
                self.opt(a1, 4, PROT_W)?,
                0
            ),
            nr::PRLIMIT64 => host!(
                libc::SYS_prlimit64,
                a0 as i32,
                a1 as u32,
                self.opt(a2, 16, PROT_R)?,
                self.opt(a3, 16, PROT_W)?
            ),
            nr::GETRLIMIT => host!(libc::SYS_getrlimit, a0 as u32, self.buf(a1, 16, PROT_W)?),
            nr::SETRLIMIT => host!(libc::SYS_setrlimit, a0 as u32, self.buf(a1, 16, PROT_R)?),
            nr::GETRUSAGE => host!(libc::SYS_getrusage, a0 as i32, self.buf(a1, 144, PROT_W)?),
            nr::TIMES => host!(libc::SYS_times, self.opt(a0, 32, PROT_W)?),
            nr::PRCTL => self.prctl(a0 as i32, a1, a2)?,
            nr::PERSONALITY => {
                if a0 == 0xffff_ffff {
                    0
                } else {
                    host!(libc::SYS_personality, a0 as u32)
                }
            }
            nr::CAPGET => host!(
                libc::SYS_capget,
                self.buf(a0, 8, PROT_R | PROT_W)?,
                self.opt(a1, 24, PROT_W)?
            ),
            nr::UNAME => self.sys_uname(a)?,
            nr::SETHOSTNAME => host!(libc::SYS_sethostname, self.buf(a0, a1, PROT_R)?, a1),
            nr::SYSINFO => host!(libc::SYS_sysinfo, self.buf(a0, 112, PROT_W)?),
            nr::GETRANDOM => host!(
                libc::SYS_getrandom,
                self.buf(a0, a1, PROT_W)?,
                a1,
                a2 as u32
            ),

            // --- time --------------------------------------------------------
            nr::CLOCK_GETTIME => host!(
                libc::SYS_clock_gettime,
                a0 as i32,
                self.buf(a1, 16, PROT_W)?
            ),
            nr::CLOCK_GETRES => host!(libc::SYS_clock_getres, a0 as i32, self.opt(a1, 16, PROT_W)?),
            nr::GETTIMEOFDAY => host!(
                libc::SYS_gettimeofday,
                self.opt(a0, 16, PROT_W)?,
                self.opt(a1, 8, PROT_W)?
            ),
            nr::NANOSLEEP => host!(
                libc::SYS_nanosleep,
                self.buf(a0, 16, PROT_R)?,
                self.opt(a1, 16, PROT_W)?
            ),
            nr::CLOCK_NANOSLEEP => host!(
                libc::SYS_clock_nanosleep,
                a0 as i32,
                a1 as i32,
                self.buf(a2, 16, PROT_R)?,
                self.opt(a3, 16, PROT_W)?
            ),
            nr::GETITIMER => host!(libc::SYS_getitimer, a0 as i32, self.buf(a1, 32, PROT_W)?),
            nr::SETITIMER => host!(
                libc::SYS_setitimer,
                a0 as i32,
                self.buf(a1, 32, PROT_R)?,
                self.opt(a2, 32, PROT_W)?
            ),

            // --- signals -----------------------------------------------------
            nr::RT_SIGACTION => self.sigaction(a0 as i32, a1, a2, a3)?,
            nr::RT_SIGPROCMASK => self.sys_rt_sigprocmask(a)?,
            nr::RT_SIGPENDING => {
                let mut set = 0u64;
                let r = host!(libc::SYS_rt_sigpending, &mut set as *mut u64, 8);
                if r == 0 {
                    let p = (set | self.sig.pending_mask()) & self.mask;
                    self.mm().write_u64(a0, p).ok_or(EFAULT)?;
                }
                r
            }
            nr::RT_SIGSUSPEND => {
                if a1 != 8 {
                    return Err(EINVAL);
                }
                let m = self.guest_sigset(a0)?;
                let r = host!(libc::SYS_rt_sigsuspend, &m as *const u64, 8);
                self.tmp_mask = Some(m);
                r
            }
            nr::RT_SIGTIMEDWAIT => self.sys_rt_sigtimedwait(a)?,
            nr::RT_SIGQUEUEINFO => host!(
                libc::SYS_rt_sigqueueinfo,
                a0 as i32,
                a1 as i32,
                self.buf(a2, 128, PROT_R)?
            ),
            nr::KILL => host!(libc::SYS_kill, a0 as i32, a1 as i32),
            nr::TKILL => host!(libc::SYS_tkill, a0 as i32, a1 as i32),
            nr::TGKILL => host!(libc::SYS_tgkill, a0 as i32, a1 as i32, a2 as i32),
            nr::SIGALTSTACK => self.sigaltstack(a0, a1)?,

            // --- sockets -----------------------------------------------------
            nr::SOCKET => host!(libc::SYS_socket, a0 as i32, a1 as i32, a2 as i32),
            nr::SOCKETPAIR => host!(
                libc::SYS_socketpair,
                a0 as i32,
                a1 as i32,
                a2 as i32,
                self.buf(a3, 8, PROT_W)?
            ),
            nr::BIND => host!(libc::SYS_bind, fd, self.buf(a1, a2, PROT_R)?, a2 as u32),
            nr::CONNECT => host!(libc::SYS_connect, fd, self.buf(a1, a2, PROT_R)?, a2 as u32),
            nr::LISTEN => host!(libc::SYS_listen, fd, a1 as i32),
            nr::ACCEPT | nr::ACCEPT4 => self.sys_accept(n, a)?,
            nr::GETSOCKNAME | nr::GETPEERNAME => {
                let (addr, len) = self.sockaddr_out(a1, a2)?;
                let s = if n == nr::GETSOCKNAME {
                    libc::SYS_getsockname
                } else {
                    libc::SYS_getpeername
                };
                host!(s, fd, addr, len)
            }
            nr::SENDTO => host!(
                libc::SYS_sendto,
                fd,
                self.buf(a1, a2, PROT_R)?,
                a2,
                a3 as i32,
                self.opt(a4, a5, PROT_R)?,
                a5 as u32
            ),
            nr::RECVFROM => self.sys_recvfrom(a)?,
            nr::SETSOCKOPT => host!(
                libc::SYS_setsockopt,
                fd,
                a1 as i32,
                a2 as i32,
                self.buf(a3, a4, PROT_R)?,
                a4 as u32
            ),
            nr::GETSOCKOPT => self.sys_getsockopt(a)?,
            nr::SHUTDOWN => host!(libc::SYS_shutdown, fd, a1 as i32),
            nr::SENDMSG | nr::RECVMSG => self.msg(n, fd, a1, a2 as i32)?,

            // Deliberately unsupported; glibc copes without them.
            nr::RSEQ | nr::RISCV_HWPROBE | nr::EXECVEAT => ENOSYS,
            _ => {
                self.log_unknown("syscall", n);
                ENOSYS
            }
        })
    }
}
