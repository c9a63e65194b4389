//! New threads and processes: clone of a thread, fork and vfork (with the
//! vfork parent's wait for its child's exec or exit).

use crate::mm::PAGE;
use crate::process::{gettid, Thread};
use riscv::Hart;
use std::sync::atomic::Ordering;

impl Thread {
    /// clone() for a new thread sharing everything.
    pub(crate) fn spawn_thread(
        &mut self,
        flags: u64,
        newsp: u64,
        ptid: u64,
        tls: u64,
        ctid: u64,
    ) -> i64 {
        const CLONE_SETTLS: u64 = 0x0008_0000;
        const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
        const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;
        const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
        let mut h = Hart::new_user();
        h.set_jit(self.proc.cfg.jit);
        h.set_jit_threshold(self.proc.cfg.jit_threshold);
        for r in 1..32 {
            h.set_x(r, self.hart.x(r));
        }
        h.f = self.hart.f;
        h.set_fcsr(self.hart.fcsr());
        h.pc = self.hart.pc + 4;
        h.set_x(10, 0);
        if newsp != 0 {
            h.set_x(2, newsp);
        }
        if flags & CLONE_SETTLS != 0 {
            h.set_x(4, tls);
        }
        let proc = self.proc.clone();
        let mask = self.mask;
        let (tx, rx) = std::sync::mpsc::channel();
        proc.threads.fetch_add(1, Ordering::AcqRel);
        let p2 = proc.clone();
        let r = std::thread::Builder::new()
            .name("guest".into())
            .stack_size(1 << 20)
            .spawn(move || {
                let tid = gettid();
                if flags & CLONE_CHILD_SETTID != 0 {
                    let _ = p2.mm.write_u32(ctid, tid as u32);
                }
                if flags & CLONE_PARENT_SETTID != 0 {
                    let _ = p2.mm.write_u32(ptid, tid as u32);
                }
                let _ = tx.send(tid);
                let mut t = Thread::new(p2, h, tid, mask, false);
                if flags & CLONE_CHILD_CLEARTID != 0 {
                    t.clear_child_tid = ctid;
                }
                let code = t.run();
                t.exit_cleanup();
                if t.proc.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // SAFETY: the last thread ends the process.
                    unsafe { libc::_exit(code) };
                }
            });
        match r {
            Ok(_) => rx
                .recv()
                .map(|t| t as i64)
                .unwrap_or(-(libc::EAGAIN as i64)),
            Err(_) => {
                proc.threads.fetch_sub(1, Ordering::AcqRel);
                -(libc::EAGAIN as i64)
            }
        }
    }

    /// clone() without CLONE_VM, and vfork: a host fork. For vfork the
    /// parent waits until the child execs or exits, as Linux does. The
    /// child gets a copy of memory rather than the parent's; for
    /// CLONE_VM|CLONE_VFORK (vfork(), posix_spawn) what the child wrote
    /// into the mapping holding the parent's stack is copied back before
    /// the parent resumes, which is where vfork users leave results (glibc's
    /// posix_spawn and busybox's spawn() report a failed exec that way).
    pub(crate) fn fork(&mut self, flags: u64, newsp: u64, ptid: u64, ctid: u64) -> i64 {
        const CLONE_VM: u64 = 0x100;
        const CLONE_VFORK: u64 = 0x4000;
        const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
        const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;
        const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
        let vfork = flags & CLONE_VFORK != 0;
        let share = vfork && flags & CLONE_VM != 0;
        // done: child -> parent ("sync me" bytes, then EOF at exec/exit);
        // ack: parent -> child (the copy-back is finished).
        let mut done = [-1i32; 2];
        let mut ack = [-1i32; 2];
        if vfork {
            // SAFETY: pipe2 writes two fds into each array.
            unsafe {
                if libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    return -(crate::mm::errno() as i64);
                }
                if share && libc::pipe2(ack.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    let e = crate::mm::errno();
                    libc::close(done[0]);
                    libc::close(done[1]);
                    return -(e as i64);
                }
            }
            // The child holds its ends until it execs or exits. Move them
            // to high descriptors so the child's opens and dup2s to low
            // numbers (shell redirections) neither see nor close them.
            move_high(&mut done[1]);
            move_high(&mut ack[0]);
        }
        // The parent's stack mapping around sp (bounded), for the copy-back.
        let sp = self.hart.x(2);
        let stack = if share {
            self.proc
                .mm
                .regions()
                .into_iter()
                .find(|r| r.start <= sp && sp < r.end && r.perm & crate::mm::PROT_W != 0)
                .map(|r| {
                    const SPAN: u64 = 32 << 20;
                    let lo = r.start.max(crate::mm::page_down(sp).saturating_sub(SPAN));
                    (lo, r.end.min(lo + 2 * SPAN))
                })
        } else {
            None
        };
        // SAFETY: fork; the child continues running this guest thread only
        // (other guest threads do not exist in the child, as in Linux).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = crate::mm::errno();
            for fd in done.into_iter().chain(ack) {
                if fd >= 0 {
                    // SAFETY: our own descriptors.
                    unsafe { libc::close(fd) };
                }
            }
            return -(e as i64);
        }
        if pid == 0 {
            if let Some((d, a)) = self.vfork_parent.take() {
                // A fork inside a vfork child: only the vfork child itself
                // holds the waiting parent.
                // SAFETY: our inherited copies of the pipe ends.
                unsafe {
                    libc::close(d);
                    libc::close(a);
                }
            }
            self.proc.threads.store(1, Ordering::Release);
            self.tid = gettid();
            // Only this thread lives on in the child.
            self.proc
                .robust
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            self.proc.set_robust_head(self.tid, self.robust_list);
            self.is_main = true;
            if vfork {
                // SAFETY: closing our copies of the parent's ends.
                unsafe {
                    libc::close(done[0]);
                    if ack[1] >= 0 {
                        libc::close(ack[1]);
                    }
                }
                if share {
                    self.vfork_parent = Some((done[1], ack[0]));
                }
            }
            if flags & CLONE_CHILD_SETTID != 0 {
                let _ = self.proc.mm.write_u32(ctid, self.tid as u32);
            }
            if flags & CLONE_CHILD_CLEARTID != 0 {
                self.clear_child_tid = ctid;
            }
            if newsp != 0 {
                self.hart.set_x(2, newsp);
            }
            return 0;
        }
        if vfork {
            // SAFETY: closing the child's ends, then serving its sync
            // requests until its copy of `done` closes (exec or exit).
            unsafe {
                libc::close(done[1]);
                if ack[0] >= 0 {
                    libc::close(ack[0]);
                }
                loop {
                    let mut b = 0u8;
                    let r = libc::read(done[0], (&mut b as *mut u8).cast(), 1);
                    if r < 0 && crate::mm::errno() == libc::EINTR {
                        continue;
                    }
                    if r != 1 {
                        break;
                    }
                    if let Some((lo, hi)) = stack {
                        self.copy_back(pid, lo, hi);
                    }
                    while libc::write(ack[1], (&b as *const u8).cast(), 1) < 0
                        && crate::mm::errno() == libc::EINTR
                    {}
                }
                libc::close(done[0]);
                if ack[1] >= 0 {
                    libc::close(ack[1]);
                }
            }
        }
        if flags & CLONE_PARENT_SETTID != 0 {
            let _ = self.proc.mm.write_u32(ptid, pid as u32);
        }
        pid as i64
    }

    /// Copies the pages of `lo..hi` that the (stopped) vfork child `pid`
    /// changed into our memory. The child has the same host layout (it is
    /// a fork of this process), so its guest page `a` is at our host address
    /// of `a`.
    fn copy_back(&self, pid: i32, lo: u64, hi: u64) {
        const CHUNK: u64 = 1 << 20;
        let mm = &self.proc.mm;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut a = lo;
        while a < hi {
            let n = CHUNK.min(hi - a);
            let Some(ours) = mm.ptr(a, n, crate::mm::PROT_W) else {
                return;
            };
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: n as usize,
            };
            let remote = libc::iovec {
                iov_base: ours.cast(),
                iov_len: n as usize,
            };
            // SAFETY: reads the child's memory into our buffer of n bytes.
            let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if r <= 0 {
                return;
            }
            let got = r as u64 & !(PAGE - 1);
            for off in (0..got).step_by(PAGE as usize) {
                let theirs = &buf[off as usize..(off + PAGE) as usize];
                // SAFETY: `ours..ours+n` is mapped writable guest memory
                // (checked above); the parent thread that owns this stack
                // is the one running here.
                let mine = unsafe {
                    std::slice::from_raw_parts_mut(ours.add(off as usize), PAGE as usize)
                };
                if mine != theirs {
                    mm.space().invalidate_code(a + off, PAGE);
                    mine.copy_from_slice(theirs);
                }
            }
            if got < n {
                return;
            }
            a += n;
        }
    }

    /// In a CLONE_VM vfork child about to exec or exit: lets the parent copy
    /// back what this child wrote, and waits until it has.
    pub(crate) fn vfork_sync(&mut self) {
        let Some((done, ack)) = self.vfork_parent else {
            return;
        };
        let b = b'S';
        // SAFETY: our own pipe descriptors and a one-byte buffer.
        unsafe {
            if libc::write(done, (&b as *const u8).cast(), 1) != 1 {
                return;
            }
            let mut r = 0u8;
            while libc::read(ack, (&mut r as *mut u8).cast(), 1) < 0
                && crate::mm::errno() == libc::EINTR
            {}
        }
    }
}

/// Moves a descriptor to a high number (half the fd limit, at least 64),
/// keeping close-on-exec; leaves it where it is if that fails.
fn move_high(fd: &mut i32) {
    if *fd < 0 {
        return;
    }
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes into `rl`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let high = (rl.rlim_cur / 2).clamp(64, 1 << 20) as libc::c_int;
    // SAFETY: duplicates our own descriptor; the old one is closed only if
    // the duplicate exists.
    unsafe {
        let hi = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, high);
        if hi >= 0 {
            libc::close(*fd);
            *fd = hi;
        }
    }
}
