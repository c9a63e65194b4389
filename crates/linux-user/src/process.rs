//! A guest process: its address space, signal actions and threads, and the
//! run loop of each guest thread (one host thread per guest thread).

use crate::abi;
use crate::loader::{self, AuxInfo, LoadError};
use crate::mm::{AddressSpace, MmError, PAGE, PROT_R, PROT_X};
use crate::signal::{self, bit, Action, SigState, NSIG, SIG_DFL, SIG_IGN};
use riscv::{Exit, Hart, MemFaultKind};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// How to run a program.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sysroot for the dynamic linker and absolute paths (`-L`).
    pub sysroot: Option<PathBuf>,
    /// Print every syscall to stderr (`--strace`).
    pub strace: bool,
    /// The virtkit binary, re-executed when the guest execs another riscv64
    /// program.
    pub self_exe: PathBuf,
    /// Stack size (default: the host's RLIMIT_STACK, capped).
    pub stack_size: Option<u64>,
    /// Translate guest code to host code (the default); `false` runs the
    /// interpreter alone (`--no-jit`), e.g. to rule the JIT out of a bug.
    pub jit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sysroot: None,
            strace: false,
            self_exe: PathBuf::new(),
            stack_size: None,
            jit: true,
        }
    }
}

/// Errors before the guest starts.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Mm(#[from] MmError),
}

/// State shared by all threads of a guest process.
pub struct Process {
    pub(crate) mm: AddressSpace,
    pub(crate) cfg: Config,
    /// Absolute host path of the guest program (`/proc/self/exe`).
    pub(crate) exe: PathBuf,
    pub(crate) actions: Mutex<[Action; NSIG + 1]>,
    pub(crate) unknown: Mutex<HashSet<u64>>,
    pub(crate) threads: AtomicUsize,
    /// Guest address of the signal return trampoline.
    pub(crate) sigreturn_tramp: u64,
    /// The guest's argv (/proc/self/cmdline).
    pub(crate) argv: Vec<Vec<u8>>,
    /// The auxiliary vector given to the guest (/proc/self/auxv).
    pub(crate) auxv: Vec<u8>,
    /// File contents the loader copied into guest memory (/proc/self/maps).
    pub(crate) segments: Vec<loader::FileSegment>,
    /// The initial stack mapping (start, end).
    pub(crate) stack: (u64, u64),
    /// Robust-list heads of the live threads, by tid (get_robust_list of
    /// another thread).
    pub(crate) robust: Mutex<HashMap<i32, u64>>,
}

impl Process {
    pub(crate) fn set_robust_head(&self, tid: i32, head: u64) {
        let mut m = self.robust.lock().unwrap_or_else(|e| e.into_inner());
        if head == 0 {
            m.remove(&tid);
        } else {
            m.insert(tid, head);
        }
    }

    pub(crate) fn robust_head(&self, tid: i32) -> Option<u64> {
        let m = self.robust.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&tid).copied()
    }
}

/// Alternate signal stack of a thread.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AltStack {
    pub sp: u64,
    pub size: u64,
    pub enabled: bool,
}

/// One guest thread.
pub struct Thread {
    pub(crate) proc: Arc<Process>,
    pub(crate) hart: Hart,
    pub(crate) sig: Arc<SigState>,
    pub(crate) tid: i32,
    /// The guest's signal mask.
    pub(crate) mask: u64,
    /// A temporary mask (sigsuspend, ppoll, pselect) under which pending
    /// signals are delivered once; the frame saves `mask`.
    pub(crate) tmp_mask: Option<u64>,
    pub(crate) altstack: AltStack,
    pub(crate) clear_child_tid: u64,
    pub(crate) robust_list: u64,
    pub(crate) is_main: bool,
    /// In a CLONE_VM vfork child: the (done, ack) pipe ends to the waiting
    /// parent (see `fork`).
    pub(crate) vfork_parent: Option<(i32, i32)>,
}

/// What a syscall handler wants done next.
pub(crate) enum Sys {
    /// Return this value in a0 and continue after the ecall.
    Ret(i64),
    /// Registers already set (sigreturn).
    Jumped,
    /// The thread ends.
    ExitThread(i32),
}

/// Syscalls Linux restarts after a handler with SA_RESTART (ERESTARTSYS).
fn restartable(nr: u64) -> bool {
    use abi::nr::*;
    matches!(
        nr,
        READ | WRITE
            | READV
            | WRITEV
            | PREAD64
            | PWRITE64
            | IOCTL
            | WAIT4
            | WAITID
            | OPENAT
            | FLOCK
            | FCNTL
            | FUTEX
            | ACCEPT
            | ACCEPT4
            | CONNECT
            | RECVFROM
            | SENDTO
            | RECVMSG
            | SENDMSG
            | SPLICE
            | SENDFILE
    )
}

fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Loads `program` and runs it to completion; returns only if loading
/// fails (the process exits with the guest's status otherwise).
pub fn run(
    cfg: Config,
    program: &Path,
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
) -> Result<std::convert::Infallible, StartError> {
    let data = loader::read_program(program)?;
    let mm = AddressSpace::new()?;
    let stack_size = cfg.stack_size.unwrap_or_else(|| {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: writes into `rl`.
        unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) };
        rl.rlim_cur
    });
    let exe = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let execfn = program.as_os_str().as_bytes().to_vec();
    let loaded = loader::load(
        &mm,
        program,
        &data,
        cfg.sysroot.as_deref(),
        &argv,
        &envp,
        &execfn,
        &AuxInfo::host(),
        stack_size,
    )?;
    drop(data);
    // The sigreturn trampoline: `li a7, 139; ecall`, on its own page
    // (Linux puts it in the vDSO).
    let tramp = mm.choose(0, PAGE, false, false)?;
    mm.map(tramp, PAGE, PROT_R | PROT_X, false, -1, 0)?;
    let code: [u32; 2] = [0x08b0_0893, 0x0000_0073];
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    mm.protect(tramp, PAGE, PROT_R | crate::mm::PROT_W)?;
    let _ = mm.write(tramp, &bytes);
    mm.protect(tramp, PAGE, PROT_R | PROT_X)?;

    // Initial guest actions: what the host process inherited (an ignored
    // SIGINT in a background job stays ignored), except SIGPIPE, which the
    // Rust runtime ignores on its own account.
    let mut actions = [Action::default(); NSIG + 1];
    for (s, a) in actions.iter_mut().enumerate().skip(1) {
        if s as i32 == libc::SIGPIPE {
            signal::set_host_action(libc::SIGPIPE, a);
            continue;
        }
        // SAFETY: queries the current disposition only.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(s as i32, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                a.handler = SIG_IGN;
            }
        }
    }
    let proc = Arc::new(Process {
        mm,
        cfg,
        exe,
        actions: Mutex::new(actions),
        unknown: Mutex::new(HashSet::new()),
        threads: AtomicUsize::new(1),
        sigreturn_tramp: tramp,
        argv,
        auxv: loaded.auxv,
        segments: loaded.segments,
        stack: (loaded.stack_low, loader::STACK_TOP),
        robust: Mutex::new(HashMap::new()),
    });
    let mut hart = Hart::new_user();
    hart.set_jit(proc.cfg.jit);
    hart.pc = loaded.pc;
    hart.set_x(2, loaded.sp);
    // SAFETY: reads the current mask into a local.
    let mask = unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut cur);
        signal::mask_from_host(&cur)
    };
    let mut t = Thread::new(proc, hart, gettid(), mask, true);
    let code = t.run();
    t.finish(code)
}

impl Thread {
    fn new(proc: Arc<Process>, hart: Hart, tid: i32, mask: u64, is_main: bool) -> Thread {
        let sig = SigState::new(hart.control().clone());
        Thread {
            proc,
            hart,
            sig,
            tid,
            mask,
            tmp_mask: None,
            altstack: AltStack::default(),
            clear_child_tid: 0,
            robust_list: 0,
            is_main,
            vfork_parent: None,
        }
    }

    /// Runs until the thread exits; returns its exit code.
    pub(crate) fn run(&mut self) -> i32 {
        self.sig.install();
        signal::set_host_mask(self.mask);
        loop {
            let exit = self.hart.run_user(self.proc.mm.space());
            match exit {
                Exit::Ecall => {
                    let nr = self.hart.x(17);
                    let args = [
                        self.hart.x(10),
                        self.hart.x(11),
                        self.hart.x(12),
                        self.hart.x(13),
                        self.hart.x(14),
                        self.hart.x(15),
                    ];
                    match self.syscall(nr, args) {
                        Sys::Ret(r) => {
                            if self.proc.cfg.strace {
                                eprintln!(
                                    "[{}] syscall {} ({:#x}, {:#x}, {:#x}, {:#x}) = {}",
                                    self.tid, nr, args[0], args[1], args[2], args[3], r
                                );
                            }
                            if r == -(libc::EINTR as i64) && restartable(nr) && self.restart_ok() {
                                // Leave pc on the ecall: it runs again after
                                // the handler (or right away).
                            } else {
                                self.hart.set_x(10, r as u64);
                                self.hart.pc += 4;
                            }
                        }
                        Sys::Jumped => {}
                        Sys::ExitThread(code) => return code,
                    }
                }
                Exit::Stopped => {}
                Exit::Ebreak => self.fault(libc::SIGTRAP, 1, self.hart.pc),
                Exit::IllegalInstruction { .. } => {
                    self.fault(libc::SIGILL, 1 /* ILL_ILLOPC */, self.hart.pc)
                }
                Exit::MemFault(f) => match f.kind {
                    MemFaultKind::Unmapped => {
                        // SEGV_ACCERR (2) for a mapped page the access is
                        // not allowed on, SEGV_MAPERR (1) for no mapping.
                        let mapped = self.proc.mm.page_perm(f.addr) != 0;
                        self.fault(libc::SIGSEGV, if mapped { 2 } else { 1 }, f.addr)
                    }
                    // BUS_ADRALN (1) / BUS_ADRERR (2).
                    MemFaultKind::Misaligned => self.fault(libc::SIGBUS, 1, f.addr),
                    MemFaultKind::Bus => self.fault(libc::SIGBUS, 2, f.addr),
                },
            }
            if self.sig.any_pending() {
                self.deliver_signals();
            }
            // A temporary mask (sigsuspend, ppoll...) only applies to the
            // signals that interrupted that one call.
            self.tmp_mask = None;
        }
    }

    /// Ends the thread: clear_child_tid, robust futexes, and the process
    /// when it was the last thread.
    pub(crate) fn finish(&mut self, code: i32) -> ! {
        self.exit_cleanup();
        if self.proc.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: ends the process; guest output went straight to fds.
            unsafe { libc::_exit(code) };
        }
        if self.is_main {
            // The main host thread must not return (that would end the
            // process); other guest threads go on. It blocks every signal
            // so the host kernel hands process-wide ones to a live thread.
            std::mem::forget(signal::BlockAll::new());
            loop {
                // SAFETY: waits for a signal; host signals with guest
                // handlers are recorded for this (finished) thread, which
                // is harmless.
                unsafe { libc::pause() };
            }
        }
        // Other threads end by leaving their host thread (see `spawn`).
        // SAFETY: a thread created by `spawn` whose Rust frames above this
        // are plain data; exiting it through the thread entry is done by the
        // caller, so this path is never reached for them.
        unsafe { libc::_exit(code) }
    }

    pub(crate) fn exit_cleanup(&mut self) {
        self.walk_robust_list();
        self.proc.set_robust_head(self.tid, 0);
        if self.clear_child_tid != 0 {
            let a = self.clear_child_tid;
            if self.proc.mm.write_u32(a, 0).is_some() {
                if let Some(p) = self.proc.mm.ptr(a, 4, PROT_R) {
                    // SAFETY: p is a checked guest address of 4 bytes.
                    unsafe {
                        libc::syscall(libc::SYS_futex, p, libc::FUTEX_WAKE, 1, 0, 0, 0);
                    }
                }
            }
        }
    }

    fn walk_robust_list(&mut self) {
        const FUTEX_WAITERS: u32 = 0x8000_0000;
        const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
        const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
        let head = self.robust_list;
        if head == 0 {
            return;
        }
        let mm = &self.proc.mm;
        let (Some(mut entry), Some(offset), Some(pending)) = (
            mm.read_u64(head),
            mm.read_u64(head + 8),
            mm.read_u64(head + 16),
        ) else {
            return;
        };
        let handle = |e: u64| {
            let fa = e.wrapping_add(offset);
            if let Some(w) = mm.read_u32(fa) {
                if w & FUTEX_TID_MASK == self.tid as u32 {
                    let _ = mm.write_u32(fa, (w & FUTEX_WAITERS) | FUTEX_OWNER_DIED);
                    if w & FUTEX_WAITERS != 0 {
                        if let Some(p) = mm.ptr(fa, 4, PROT_R) {
                            // SAFETY: checked guest address.
                            unsafe {
                                libc::syscall(libc::SYS_futex, p, libc::FUTEX_WAKE, 1, 0, 0, 0)
                            };
                        }
                    }
                }
            }
        };
        // Linux caps the walk (ROBUST_LIST_LIMIT) against cyclic lists.
        let mut n = 0;
        while entry != head && entry != 0 && n < 2048 {
            let next = mm.read_u64(entry & !1);
            if entry != pending {
                handle(entry & !1);
            }
            match next {
                Some(nx) => entry = nx,
                None => break,
            }
            n += 1;
        }
        if pending != 0 {
            handle(pending & !1);
        }
    }

    /// Whether an EINTR'd syscall should run again: no handler is about to
    /// run, or the one that is asked for SA_RESTART.
    fn restart_ok(&self) -> bool {
        let blocked = self.tmp_mask.unwrap_or(self.mask);
        let pend = self.sig.pending_mask() & !blocked;
        if pend == 0 {
            return true;
        }
        let sig = pend.trailing_zeros() as usize + 1;
        let act = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner())[sig];
        act.flags & abi::SA_RESTART != 0
    }

    /// A CPU exception: deliver to the guest's handler, or end the process
    /// by that signal when it is blocked, ignored or at its default.
    fn fault(&mut self, sig: i32, code: i32, addr: u64) {
        let act = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner())[sig as usize];
        if act.handler == SIG_DFL || act.handler == SIG_IGN || self.mask & bit(sig) != 0 {
            if self.proc.cfg.strace {
                eprintln!(
                    "[{}] fatal signal {} at pc {:#x} (addr {:#x})",
                    self.tid, sig, self.hart.pc, addr
                );
            }
            signal::die_by_signal(sig);
        }
        self.sig.post(sig, signal::make_info(sig, code, addr));
    }

    /// Sets the guest mask (and the host thread's mirror of it).
    pub(crate) fn set_mask(&mut self, m: u64) {
        self.mask = m & !signal::UNBLOCKABLE;
        signal::set_host_mask(self.mask);
    }

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

    /// execve: another riscv64 program runs in a fresh virtkit; a `#!`
    /// script runs its interpreter (itself emulated if riscv64); anything
    /// else is handed to the host kernel.
    pub(crate) fn execve(&mut self, path: Vec<u8>, argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>>) -> i64 {
        // A vfork parent must see what this child wrote before the exec
        // replaces its memory (and again at exit if the exec fails).
        self.vfork_sync();
        let mut path = path;
        let mut argv = argv;
        for _depth in 0..4 {
            let host_path = self.host_path(&path);
            let hp = Path::new(std::ffi::OsStr::from_bytes(&host_path));
            // As the kernel's execve: anything but a regular file (a
            // directory, a fifo) is EACCES, and so is a file the effective
            // ids may not execute.
            match std::fs::metadata(hp) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return -(libc::EACCES as i64),
                Err(e) => return -(e.raw_os_error().unwrap_or(libc::ENOENT) as i64),
            }
            if let Err(e) = loader::exec_access(hp) {
                return -(e.raw_os_error().unwrap_or(libc::EACCES) as i64);
            }
            let mut head = [0u8; 256];
            let n = match std::fs::File::open(hp)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            {
                Ok(n) => n,
                Err(e) => return -(e.raw_os_error().unwrap_or(libc::ENOEXEC) as i64),
            };
            let head = &head[..n];
            if head.len() >= 20 && &head[..4] == b"\x7fELF" {
                let machine = u16::from_le_bytes([head[18], head[19]]);
                if machine == crate::elf::EM_RISCV {
                    return self.reexec(&host_path, argv, envp);
                }
                return host_execve(&host_path, &argv, &envp);
            }
            if head.starts_with(b"#!") {
                let line_end = head.iter().position(|&c| c == b'\n').unwrap_or(head.len());
                let line = &head[2..line_end];
                let line: Vec<u8> = line
                    .iter()
                    .copied()
                    .skip_while(|c| *c == b' ' || *c == b'\t')
                    .collect();
                let mut parts = line.splitn(2, |c| *c == b' ' || *c == b'\t');
                let interp = parts.next().unwrap_or(&[]).to_vec();
                let arg = parts
                    .next()
                    .map(|a| a.trim_ascii().to_vec())
                    .filter(|a| !a.is_empty());
                if interp.is_empty() {
                    return -(libc::ENOEXEC as i64);
                }
                let mut nargv = vec![interp.clone()];
                if let Some(a) = arg {
                    nargv.push(a);
                }
                nargv.push(path.clone());
                nargv.extend(argv.into_iter().skip(1));
                argv = nargv;
                path = interp;
                continue;
            }
            return host_execve(&host_path, &argv, &envp);
        }
        -(libc::ELOOP as i64)
    }

    fn reexec(&mut self, prog: &[u8], argv: Vec<Vec<u8>>, envp: Vec<Vec<u8>>) -> i64 {
        let cfg = &self.proc.cfg;
        let mut a: Vec<Vec<u8>> = vec![
            cfg.self_exe.as_os_str().as_bytes().to_vec(),
            b"emu".to_vec(),
            b"user".to_vec(),
        ];
        if let Some(root) = &cfg.sysroot {
            a.push(b"-L".to_vec());
            a.push(root.as_os_str().as_bytes().to_vec());
        }
        if cfg.strace {
            a.push(b"--strace".to_vec());
        }
        if !cfg.jit {
            a.push(b"--no-jit".to_vec());
        }
        if let Some(a0) = argv.first() {
            a.push(b"-0".to_vec());
            a.push(a0.clone());
        }
        a.push(prog.to_vec());
        a.extend(argv.into_iter().skip(1));
        let exe = cfg.self_exe.as_os_str().as_bytes().to_vec();
        host_execve(&exe, &a, &envp)
    }

    /// Maps a guest path to the host path: `/proc/self/exe` is the guest
    /// program; absolute paths go under the sysroot when they exist there.
    pub(crate) fn host_path(&self, p: &[u8]) -> Vec<u8> {
        if p == b"/proc/self/exe" || p == format!("/proc/{}/exe", std::process::id()).as_bytes() {
            return self.proc.exe.as_os_str().as_bytes().to_vec();
        }
        if let (Some(root), Some(b'/')) = (&self.proc.cfg.sysroot, p.first()) {
            let mut full = root.as_os_str().as_bytes().to_vec();
            full.extend_from_slice(p);
            if let Ok(c) = std::ffi::CString::new(full.clone()) {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: c is a valid C string, st a valid out pointer.
                if unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) } == 0 {
                    return full;
                }
            }
        }
        p.to_vec()
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

/// Host execve with byte-string arguments; returns -errno on failure.
fn host_execve(path: &[u8], argv: &[Vec<u8>], envp: &[Vec<u8>]) -> i64 {
    let to_c = |v: &[u8]| std::ffi::CString::new(v.to_vec()).ok();
    let Some(p) = to_c(path) else {
        return -(libc::ENOENT as i64);
    };
    let a: Option<Vec<_>> = argv.iter().map(|s| to_c(s)).collect();
    let e: Option<Vec<_>> = envp.iter().map(|s| to_c(s)).collect();
    let (Some(a), Some(e)) = (a, e) else {
        return -(libc::EINVAL as i64);
    };
    let mut ap: Vec<*const libc::c_char> = a.iter().map(|c| c.as_ptr()).collect();
    ap.push(std::ptr::null());
    let mut ep: Vec<*const libc::c_char> = e.iter().map(|c| c.as_ptr()).collect();
    ep.push(std::ptr::null());
    // SAFETY: NUL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(p.as_ptr(), ap.as_ptr(), ep.as_ptr()) };
    -(crate::mm::errno() as i64)
}

/// Converts OS strings to byte vectors.
pub fn to_bytes(v: impl IntoIterator<Item = OsString>) -> Vec<Vec<u8>> {
    v.into_iter().map(|s| s.into_vec()).collect()
}
