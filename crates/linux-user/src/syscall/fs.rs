//! Files, directories, descriptors and polling.

use super::{EFAULT, EINVAL, MAX_PATH, R};
use crate::abi::{self, nr};
use crate::mm::{PROT_R, PROT_W};
use crate::process::Thread;
use std::ffi::CString;

impl Thread {
    /// `openat`.
    pub(super) fn sys_openat(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let dirfd = a[0] as i32 as libc::c_long;
        let raw = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
        if let Some(f) = crate::procfs::classify(&raw) {
            return Ok(self.open_proc(f, a2 as i32));
        }
        let path = self.path(a1)?;
        let flags = a2 as i32;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            let follow = flags & libc::O_NOFOLLOW == 0;
            self.refuse_running(dirfd, &path, follow)?;
        }
        Ok(host!(
            libc::SYS_openat,
            dirfd,
            path.as_ptr(),
            flags,
            a3 as u32
        ))
    }

    /// `truncate`.
    pub(super) fn sys_truncate(&mut self, a: [u64; 6]) -> R {
        let path = self.path(a[0])?;
        self.refuse_running(libc::AT_FDCWD as libc::c_long, &path, true)?;
        Ok(host!(libc::SYS_truncate, path.as_ptr(), a[1]))
    }

    /// ETXTBSY when `path` (at `dirfd`) is the file of the running program
    /// or its interpreter, as Linux refuses to write those: their pages are
    /// mapped from the file, so writing it would change the running code
    /// (and shortening it would make its pages fault). Other processes can
    /// still write it, which no emulator can prevent (qemu neither).
    fn refuse_running(&self, dirfd: libc::c_long, path: &CString, follow: bool) -> R {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
        let r = host!(
            libc::SYS_newfstatat,
            dirfd,
            path.as_ptr(),
            st.as_mut_ptr(),
            flags
        );
        if r == 0 {
            // SAFETY: the kernel filled the stat buffer (r == 0).
            let st = unsafe { st.assume_init() };
            if self.proc.running.contains(&(st.st_dev, st.st_ino)) {
                return Err(-(libc::ETXTBSY as i64));
            }
        }
        Ok(0)
    }

    /// `pipe2`.
    pub(super) fn sys_pipe2(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
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
        Ok(r)
    }

    /// `newfstatat | fstat`.
    pub(super) fn sys_newfstatat(&mut self, n: u64, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let fd = a[0] as i32 as libc::c_long;
        let dirfd = a[0] as i32 as libc::c_long;
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
        Ok(r)
    }

    /// `statx`.
    pub(super) fn sys_statx(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        let dirfd = a[0] as i32 as libc::c_long;
        let p = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
        let p =
            CString::new(if p.is_empty() { p } else { self.host_path(&p) }).map_err(|_| EINVAL)?;
        Ok(host!(
            libc::SYS_statx,
            dirfd,
            p.as_ptr(),
            a2 as i32,
            a3 as u32,
            self.buf(a4, 256, PROT_W)?
        ))
    }

    /// `readlinkat`.
    pub(super) fn sys_readlinkat(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let dirfd = a[0] as i32 as libc::c_long;
        let p = self.mm().cstr(a1, MAX_PATH).ok_or(EFAULT)?;
        let buf = self.buf(a2, a3, PROT_W)?;
        Ok(
            if p == b"/proc/self/exe" || p == format!("/proc/{}/exe", std::process::id()).as_bytes()
            {
                let exe = self.proc.exe.as_os_str().as_encoded_bytes();
                let n = exe.len().min(a3 as usize);
                self.mm().write(a2, &exe[..n]).ok_or(EFAULT)?;
                n as i64
            } else {
                let c = CString::new(self.host_path(&p)).map_err(|_| EINVAL)?;
                host!(libc::SYS_readlinkat, dirfd, c.as_ptr(), buf, a3)
            },
        )
    }

    /// `symlinkat`.
    pub(super) fn sys_symlinkat(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let target =
            CString::new(self.mm().cstr(a0, MAX_PATH).ok_or(EFAULT)?).map_err(|_| EINVAL)?;
        Ok(host!(
            libc::SYS_symlinkat,
            target.as_ptr(),
            a1 as i32,
            self.path(a2)?.as_ptr()
        ))
    }

    /// `utimensat`.
    pub(super) fn sys_utimensat(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let dirfd = a[0] as i32 as libc::c_long;
        let p = self.opt_path(a1)?;
        let pp = p.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        Ok(host!(
            libc::SYS_utimensat,
            dirfd,
            pp,
            self.opt(a2, 32, PROT_R)?,
            a3 as i32
        ))
    }

    /// `epoll_ctl`.
    pub(super) fn sys_epoll_ctl(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let fd = a[0] as i32 as libc::c_long;
        // riscv64's epoll_event is {u32 events; u64 data} with
        // natural alignment (16 bytes); x86-64's is packed (12).
        let mut ev = [0u8; 12];
        if a3 != 0 {
            let g = self.mm().read_vec(a3, 16).ok_or(EFAULT)?;
            ev[..4].copy_from_slice(&g[..4]);
            ev[4..].copy_from_slice(&g[8..16]);
        }
        let p = if a3 != 0 {
            ev.as_ptr()
        } else {
            std::ptr::null()
        };
        Ok(host!(libc::SYS_epoll_ctl, fd, a1 as i32, a2 as i32, p))
    }

    /// `epoll_pwait`.
    pub(super) fn sys_epoll_pwait(&mut self, a: [u64; 6]) -> R {
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        let fd = a[0] as i32 as libc::c_long;
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
        Ok(r)
    }

    /// `ppoll`.
    pub(super) fn sys_ppoll(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
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
        Ok(r)
    }

    /// `pselect6`.
    pub(super) fn sys_pselect6(&mut self, a: [u64; 6]) -> R {
        let a0 = a[0];
        let a1 = a[1];
        let a2 = a[2];
        let a3 = a[3];
        let a4 = a[4];
        let a5 = a[5];
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
        Ok(r)
    }

    pub(super) fn fcntl(&mut self, fd: libc::c_long, cmd: i32, arg: u64) -> R {
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

    pub(super) fn ioctl(&mut self, fd: libc::c_long, req: u64, arg: u64) -> R {
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
}
