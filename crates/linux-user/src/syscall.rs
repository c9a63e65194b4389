//! riscv64 Linux syscalls translated to the x86-64 host.
//!
//! Every guest pointer is checked against the guest's page permissions
//! before the host kernel sees it (a bad one gives EFAULT), so a guest can
//! never make the emulator touch host memory outside its address space.

use crate::abi::{self, nr};
use crate::mm::{self, page_up, PAGE, PROT_R, PROT_W};
use crate::process::{AltStack, Sys, Thread};
use crate::signal::{self, bit, Action, NSIG};
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
        ret(unsafe { libc::syscall($n $(, $a)*) })
    }};
}

type R = Result<i64, i64>;

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
            .slice(addr, (cnt * 16) as usize)
            .ok_or(EFAULT)?
            .to_vec();
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
            nr::OPENAT => {
                let raw = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
                if let Some(f) = crate::procfs::classify(&raw) {
                    return Ok(self.open_proc(f, a2 as i32));
                }
                host!(
                    libc::SYS_openat,
                    dirfd,
                    self.path(a1)?.as_ptr(),
                    a2 as i32,
                    a3 as u32
                )
            }
            nr::CLOSE => host!(libc::SYS_close, fd),
            nr::CLOSE_RANGE => host!(libc::SYS_close_range, a0 as u32, a1 as u32, a2 as u32),
            nr::DUP => host!(libc::SYS_dup, fd),
            nr::DUP3 => host!(libc::SYS_dup3, fd, a1 as i32, a2 as i32),
            nr::PIPE2 => {
                let mut fds = [0i32; 2];
                let r = host!(libc::SYS_pipe2, fds.as_mut_ptr(), a1 as i32);
                if r == 0 {
                    let b: Vec<u8> = fds.iter().flat_map(|f| f.to_le_bytes()).collect();
                    if self.mm().write(a0, &b).is_none() {
                        host!(libc::SYS_close, fds[0]);
                        host!(libc::SYS_close, fds[1]);
                        return Err(EFAULT);
                    }
                }
                r
            }
            nr::FCNTL => self.fcntl(fd, a1 as i32, a2)?,
            nr::IOCTL => self.ioctl(fd, a1, a2)?,
            nr::FLOCK => host!(libc::SYS_flock, fd, a1 as i32),
            nr::GETDENTS64 => host!(libc::SYS_getdents64, fd, self.buf(a1, a2, PROT_W)?, a2),
            nr::NEWFSTATAT | nr::FSTAT => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
                let r = if n == nr::FSTAT {
                    host!(libc::SYS_fstat, fd, st.as_mut_ptr())
                } else {
                    let p = if a1 != 0 && self.mm().cstr(a1, 1).is_some_and(|s| s.is_empty()) {
                        CString::default()
                    } else {
                        self.path(a1)?
                    };
                    host!(
                        libc::SYS_newfstatat,
                        dirfd,
                        p.as_ptr(),
                        st.as_mut_ptr(),
                        a3 as i32
                    )
                };
                if r == 0 {
                    let out = if n == nr::FSTAT { a1 } else { a2 };
                    // SAFETY: the kernel filled the stat buffer (r == 0).
                    let st = unsafe { st.assume_init() };
                    self.mm()
                        .write(out, &abi::stat_to_guest(&st))
                        .ok_or(EFAULT)?;
                }
                r
            }
            nr::STATX => {
                let p = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
                let p = CString::new(if p.is_empty() { p } else { self.host_path(&p) })
                    .map_err(|_| EINVAL)?;
                host!(
                    libc::SYS_statx,
                    dirfd,
                    p.as_ptr(),
                    a2 as i32,
                    a3 as u32,
                    self.buf(a4, 256, PROT_W)?
                )
            }
            nr::STATFS => host!(
                libc::SYS_statfs,
                self.path(a0)?.as_ptr(),
                self.buf(a1, 120, PROT_W)?
            ),
            nr::FSTATFS => host!(libc::SYS_fstatfs, fd, self.buf(a1, 120, PROT_W)?),
            nr::READLINKAT => {
                let p = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
                let buf = self.buf(a2, a3, PROT_W)?;
                if p == b"/proc/self/exe"
                    || p == format!("/proc/{}/exe", std::process::id()).as_bytes()
                {
                    let exe = self.proc.exe.as_os_str().as_encoded_bytes();
                    let n = exe.len().min(a3 as usize);
                    self.mm().write(a2, &exe[..n]).ok_or(EFAULT)?;
                    n as i64
                } else {
                    let c = CString::new(self.host_path(&p)).map_err(|_| EINVAL)?;
                    host!(libc::SYS_readlinkat, dirfd, c.as_ptr(), buf, a3)
                }
            }
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
            nr::SYMLINKAT => {
                let target = CString::new(self.mm().cstr(a0, MAX_PATH).ok_or(EFAULT)?)
                    .map_err(|_| EINVAL)?;
                host!(
                    libc::SYS_symlinkat,
                    target.as_ptr(),
                    a1 as i32,
                    self.path(a2)?.as_ptr()
                )
            }
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
            nr::UTIMENSAT => {
                let p = self.opt_path(a1)?;
                let pp = p.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
                host!(
                    libc::SYS_utimensat,
                    dirfd,
                    pp,
                    self.opt(a2, 32, PROT_R)?,
                    a3 as i32
                )
            }
            nr::TRUNCATE => host!(libc::SYS_truncate, self.path(a0)?.as_ptr(), a1),
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
            nr::EPOLL_CTL => {
                // riscv64's epoll_event is {u32 events; u64 data} with
                // natural alignment (16 bytes); x86-64's is packed (12).
                let mut ev = [0u8; 12];
                if a3 != 0 {
                    let g = self.mm().slice(a3, 16).ok_or(EFAULT)?;
                    ev[..4].copy_from_slice(&g[..4]);
                    ev[4..].copy_from_slice(&g[8..16]);
                }
                let p = if a3 != 0 {
                    ev.as_ptr()
                } else {
                    std::ptr::null()
                };
                host!(libc::SYS_epoll_ctl, fd, a1 as i32, a2 as i32, p)
            }
            nr::EPOLL_PWAIT => {
                let max = (a2 as i32).clamp(0, 1024) as usize;
                if max == 0 {
                    return Err(EINVAL);
                }
                self.buf(a1, 16 * max as u64, PROT_W)?;
                let mut evs = vec![0u8; 12 * max];
                let mask = if a4 != 0 {
                    Some(self.mm().read_u64(a4).ok_or(EFAULT)?)
                } else {
                    None
                };
                let mp = mask.as_ref().map_or(std::ptr::null(), |m| m as *const u64);
                let r = host!(
                    libc::SYS_epoll_pwait,
                    fd,
                    evs.as_mut_ptr(),
                    max as i32,
                    a3 as i32,
                    mp,
                    8
                );
                if mask.is_some() && r == -(libc::EINTR as i64) {
                    self.tmp_mask = mask;
                }
                for i in 0..r.max(0) as usize {
                    let mut g = [0u8; 16];
                    g[..4].copy_from_slice(&evs[12 * i..12 * i + 4]);
                    g[8..].copy_from_slice(&evs[12 * i + 4..12 * i + 12]);
                    self.mm().write(a1 + 16 * i as u64, &g).ok_or(EFAULT)?;
                }
                r
            }
            nr::PPOLL => {
                let nfds = a1;
                if nfds > 65536 {
                    return Err(EINVAL);
                }
                let fds = self.buf(a0, nfds * 8, PROT_R | PROT_W)?;
                let ts = self.opt(a2, 16, PROT_R | PROT_W)?;
                let mask = if a3 != 0 {
                    Some(self.guest_sigset(a3)?)
                } else {
                    None
                };
                let mp = mask.as_ref().map_or(std::ptr::null(), |m| m as *const u64);
                let r = host!(libc::SYS_ppoll, fds, nfds, ts, mp, 8);
                if mask.is_some() && r == -(libc::EINTR as i64) {
                    self.tmp_mask = mask;
                }
                r
            }
            nr::PSELECT6 => {
                let nfds = a0 as i64;
                if !(0..=1024).contains(&nfds) {
                    return Err(EINVAL);
                }
                let sz = (nfds as u64).div_ceil(64) * 8;
                let r_ = self.opt(a1, sz, PROT_R | PROT_W)?;
                let w_ = self.opt(a2, sz, PROT_R | PROT_W)?;
                let e_ = self.opt(a3, sz, PROT_R | PROT_W)?;
                let ts = self.opt(a4, 16, PROT_R | PROT_W)?;
                // The sixth argument points to {const sigset_t *ss; size_t len}.
                let mut mask = None;
                if a5 != 0 {
                    let ss = self.mm().read_u64(a5).ok_or(EFAULT)?;
                    if ss != 0 {
                        mask = Some(self.guest_sigset(ss)?);
                    }
                }
                let mp = mask.as_ref().map_or(std::ptr::null(), |m| m as *const u64);
                let arg: [u64; 2] = [mp as u64, 8];
                let argp = if a5 != 0 {
                    arg.as_ptr()
                } else {
                    std::ptr::null()
                };
                let r = host!(libc::SYS_pselect6, nfds, r_, w_, e_, ts, argp);
                if mask.is_some() && r == -(libc::EINTR as i64) {
                    self.tmp_mask = mask;
                }
                r
            }

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
            nr::MPROTECT => {
                if a0 % PAGE != 0 {
                    return Err(EINVAL);
                }
                if a1 == 0 {
                    return Ok(0);
                }
                let len = page_up(a1).ok_or(ENOMEM)?;
                self.mm()
                    .protect(a0, len, mm::prot_from_linux(a2 as i32))
                    .map_err(|e| -(e.errno() as i64))?;
                0
            }
            nr::MREMAP => self.mremap(a0, a1, a2, a3, a4)?,
            nr::MADVISE => {
                // MADV_DONTNEED and MADV_FREE must really drop the pages;
                // the rest are hints.
                if a2 == 4 || a2 == 8 {
                    let len = page_up(a1).ok_or(EINVAL)?;
                    if !self.mm().is_mapped(a0, len) {
                        return Err(ENOMEM);
                    }
                    let p = self.mm().base() as u64 + a0;
                    host!(libc::SYS_madvise, p, len, a2 as i32)
                } else {
                    0
                }
            }
            nr::MSYNC => {
                let len = page_up(a1).ok_or(ENOMEM)?;
                if !self.mm().is_mapped(a0, len) {
                    return Err(ENOMEM);
                }
                host!(
                    libc::SYS_msync,
                    self.mm().base() as u64 + a0,
                    len,
                    a2 as i32
                )
            }
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
            nr::CLONE => {
                const CLONE_VM: u64 = 0x100;
                const CLONE_VFORK: u64 = 0x4000;
                const CLONE_THREAD: u64 = 0x10000;
                // riscv64 clone(flags, newsp, ptid, tls, ctid).
                if a0 & CLONE_THREAD != 0 {
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
                }
            }
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
            nr::GET_ROBUST_LIST => {
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
                0
            }
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
            nr::UNAME => {
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
                r
            }
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
            nr::RT_SIGPROCMASK => {
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
                0
            }
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
            nr::RT_SIGTIMEDWAIT => {
                if a3 != 8 {
                    return Err(EINVAL);
                }
                let m = self.mm().read_u64(a0).ok_or(EFAULT)?;
                host!(
                    libc::SYS_rt_sigtimedwait,
                    &m as *const u64,
                    self.opt(a1, 128, PROT_W)?,
                    self.opt(a2, 16, PROT_R)?,
                    8
                )
            }
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
            nr::ACCEPT | nr::ACCEPT4 => {
                let (addr, len) = self.sockaddr_out(a1, a2)?;
                host!(
                    libc::SYS_accept4,
                    fd,
                    addr,
                    len,
                    if n == nr::ACCEPT4 { a3 as i32 } else { 0 }
                )
            }
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
            nr::RECVFROM => {
                let (addr, len) = self.sockaddr_out(a4, a5)?;
                host!(
                    libc::SYS_recvfrom,
                    fd,
                    self.buf(a1, a2, PROT_W)?,
                    a2,
                    a3 as i32,
                    addr,
                    len
                )
            }
            nr::SETSOCKOPT => host!(
                libc::SYS_setsockopt,
                fd,
                a1 as i32,
                a2 as i32,
                self.buf(a3, a4, PROT_R)?,
                a4 as u32
            ),
            nr::GETSOCKOPT => {
                let len = self.mm().read_u32(a4).ok_or(EFAULT)? as u64;
                host!(
                    libc::SYS_getsockopt,
                    fd,
                    a1 as i32,
                    a2 as i32,
                    self.buf(a3, len, PROT_W)?,
                    self.buf(a4, 4, PROT_W)?
                )
            }
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

    /// clone3(args, size): the thread and fork/vfork forms (what glibc's
    /// pthread_create, fork and posix_spawn use), with CLONE_PIDFD for the
    /// fork form.
    fn clone3(&mut self, args: u64, size: u64) -> R {
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
        let raw = self.mm().slice(args, size as usize).ok_or(EFAULT)?.to_vec();
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

    fn guest_sigset(&self, addr: u64) -> Result<u64, i64> {
        Ok(self.mm().read_u64(addr).ok_or(EFAULT)? & !(signal::SYNC_SIGNALS | signal::UNBLOCKABLE))
    }

    fn sockaddr_out(
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

    fn msg(&mut self, n: u64, fd: libc::c_long, addr: u64, flags: i32) -> R {
        // struct msghdr is laid out the same on both 64-bit ABIs; only its
        // pointers need translating.
        let need = if n == nr::RECVMSG { PROT_W } else { PROT_R };
        let g = self.mm().slice(addr, 56).ok_or(EFAULT)?.to_vec();
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

    fn fcntl(&mut self, fd: libc::c_long, cmd: i32, arg: u64) -> R {
        Ok(match cmd {
            libc::F_GETLK
            | libc::F_SETLK
            | libc::F_SETLKW
            | libc::F_OFD_GETLK
            | libc::F_OFD_SETLK
            | libc::F_OFD_SETLKW => {
                let need = if cmd == libc::F_GETLK || cmd == libc::F_OFD_GETLK {
                    PROT_R | PROT_W
                } else {
                    PROT_R
                };
                host!(libc::SYS_fcntl, fd, cmd, self.buf(arg, 32, need)?)
            }
            libc::F_DUPFD
            | libc::F_GETFD
            | libc::F_SETFD
            | libc::F_GETFL
            | libc::F_SETFL
            | libc::F_SETOWN
            | libc::F_GETOWN
            | libc::F_DUPFD_CLOEXEC
            | libc::F_GETPIPE_SZ
            | libc::F_SETPIPE_SZ
            | libc::F_ADD_SEALS
            | libc::F_GET_SEALS
            | 10
            | 11
            | libc::F_SETLEASE
            | libc::F_GETLEASE
            | libc::F_NOTIFY => {
                host!(libc::SYS_fcntl, fd, cmd, arg)
            }
            _ => EINVAL,
        })
    }

    fn ioctl(&mut self, fd: libc::c_long, req: u64, arg: u64) -> R {
        // Requests a shell and common tools use, with the size of what
        // `arg` points to (the generic ioctl numbers are shared by riscv64
        // and x86-64, and so are these structures).
        let req = req as u32;
        let size: Option<(u64, u8)> = match req {
            0x5401 => Some((36, PROT_W)),                           // TCGETS
            0x5402..=0x5404 => Some((36, PROT_R)),                  // TCSETS, TCSETSW, TCSETSF
            0x5413 => Some((8, PROT_W)),                            // TIOCGWINSZ
            0x5414 => Some((8, PROT_R)),                            // TIOCSWINSZ
            0x540f | 0x5429 | 0x541b | 0x5411 => Some((4, PROT_W)), // TIOCGPGRP, TIOCGSID, FIONREAD, TIOCOUTQ
            0x5410 | 0x5421 | 0x5452 => Some((4, PROT_R)),          // TIOCSPGRP, FIONBIO, FIOASYNC
            0x80045430 => Some((4, PROT_W)),                        // TIOCGPTN
            0x40045431 => Some((4, PROT_R)),                        // TIOCSPTLCK
            0x80081272 => Some((8, PROT_W)),                        // BLKGETSIZE64
            0x5409 | 0x540a | 0x540b | 0x540e | 0x5422 | 0x5450 | 0x5451 => None, // int args
            _ => {
                if self.proc.cfg.strace {
                    eprintln!("virtkit: unsupported ioctl {req:#x}");
                }
                return Ok(-(libc::ENOTTY as i64));
            }
        };
        Ok(match size {
            Some((len, need)) => host!(
                libc::SYS_ioctl,
                fd,
                req as libc::c_ulong,
                self.buf(arg, len, need)?
            ),
            None => host!(libc::SYS_ioctl, fd, req as libc::c_ulong, arg),
        })
    }

    fn prctl(&mut self, op: i32, a1: u64, _a2: u64) -> R {
        Ok(match op {
            libc::PR_SET_NAME => {
                // Like Linux, read at most 15 bytes (up to a NUL): the name
                // need not be terminated, nor the memory after it mapped.
                let mut b = [0u8; 16];
                for (i, c) in b.iter_mut().take(15).enumerate() {
                    let v = self
                        .mm()
                        .slice(a1.wrapping_add(i as u64), 1)
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

    fn sigaction(&mut self, sig: i32, act: u64, oact: u64, size: u64) -> R {
        if size != 8 || !(1..=NSIG as i32).contains(&sig) {
            return Err(EINVAL);
        }
        let new = if act != 0 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                return Err(EINVAL);
            }
            let b = self.mm().slice(act, 24).ok_or(EFAULT)?;
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

    fn sigaltstack(&mut self, ss: u64, old: u64) -> R {
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
            let b = self.mm().slice(ss, 24).ok_or(EFAULT)?.to_vec();
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

    fn futex(&mut self, uaddr: u64, op: i32, val: u64, a3: u64, uaddr2: u64, val3: u64) -> R {
        let cmd = op & 0x7f;
        if !uaddr.is_multiple_of(4) {
            return Err(EINVAL);
        }
        let u = self.buf(uaddr, 4, PROT_R)?;
        Ok(match cmd {
            // WAIT, WAIT_BITSET, LOCK_PI, LOCK_PI2, WAIT_REQUEUE_PI: a3 is a timeout.
            0 | 9 | 6 | 13 | 11 => {
                let ts = self.opt(a3, 16, PROT_R)?;
                let u2 = if cmd == 11 {
                    self.buf(uaddr2, 4, PROT_R)?
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

    fn mmap(&mut self, addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> R {
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
            .choose(addr, len, fixed, noreplace)
            .map_err(|e| -(e.errno() as i64))?;
        self.mm()
            .map(
                at,
                len,
                mm::prot_from_linux(prot),
                shared,
                if anon { -1 } else { fd },
                off,
            )
            .map_err(|e| -(e.errno() as i64))?;
        Ok(at as i64)
    }

    fn mremap(&mut self, old: u64, old_len: u64, new_len: u64, flags: u64, new_addr: u64) -> R {
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
        let to = mm
            .choose(0, new_len, false, false)
            .map_err(|e| -(e.errno() as i64))?;
        mm.remap(old, old_len, new_len, to)
            .map(|a| a as i64)
            .map_err(|e| -(e.errno() as i64))
    }
}
