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
    /// A block is translated on its `jit_threshold`th run; before, the
    /// interpreter runs it (see [`riscv::DEFAULT_JIT_THRESHOLD`]).
    pub jit_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sysroot: None,
            strace: false,
            self_exe: PathBuf::new(),
            stack_size: None,
            jit: true,
            jit_threshold: riscv::DEFAULT_JIT_THRESHOLD,
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
    /// (device, inode) of the program and interpreter files, whose pages
    /// are mapped: opening them for writing fails with ETXTBSY, as Linux
    /// refuses to write a running program.
    pub(crate) running: Vec<(u64, u64)>,
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

pub(crate) fn gettid() -> i32 {
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
    let file = loader::read_program(program)?;
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
        loader::Image::File(&file),
        cfg.sysroot.as_deref(),
        &argv,
        &envp,
        &execfn,
        &AuxInfo::host(),
        stack_size,
    )?;
    drop(file);
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
        running: loaded.files,
        stack: (loaded.stack_low, loader::STACK_TOP),
        robust: Mutex::new(HashMap::new()),
    });
    let mut hart = Hart::new_user();
    hart.set_jit(proc.cfg.jit);
    hart.set_jit_threshold(proc.cfg.jit_threshold);
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
    pub(crate) fn new(
        proc: Arc<Process>,
        hart: Hart,
        tid: i32,
        mask: u64,
        is_main: bool,
    ) -> Thread {
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
                        // (Mapped with no permission, PROT_NONE, is ACCERR.)
                        let page = crate::mm::page_down(f.addr);
                        let mapped = self.proc.mm.is_mapped(page, crate::mm::PAGE);
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
}

/// Converts OS strings to byte vectors.
pub fn to_bytes(v: impl IntoIterator<Item = OsString>) -> Vec<Vec<u8>> {
    v.into_iter().map(|s| s.into_vec()).collect()
}
