//! Guest signals on top of host signals.
//!
//! A signal the guest handles (guest action = a handler) is caught on the
//! host by [`host_handler`], which only records it in the receiving
//! thread's [`SigState`] and asks that thread's CPU to stop at its next
//! block boundary; the thread's run loop then builds a riscv64 signal frame
//! on the guest stack. Signals the guest ignores or leaves at their default
//! action get the same host disposition, so the host kernel does what it
//! would do to a real riscv64 process (terminate, stop, ignore), and
//! virtkit's exit status is the guest's.
//!
//! The guest's signal mask is mirrored into the host thread's mask, so a
//! blocked signal stays pending in the host kernel, and `sigsuspend`,
//! `ppoll`, `pselect` and `sigtimedwait` work with the host's atomic mask
//! swaps.

use crate::abi::{self, uc, SIGFRAME_SIZE};
use crate::process::{AltStack, Sys, Thread};
use riscv::HartControl;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Highest signal number (riscv64 has 64 signals, like x86-64).
pub const NSIG: usize = 64;

/// Signals the emulator itself raises for the guest (CPU exceptions): they
/// are never blocked on the host, since a host fault while they are blocked
/// would kill the process without a trace.
pub const SYNC_SIGNALS: u64 =
    bit(libc::SIGSEGV) | bit(libc::SIGBUS) | bit(libc::SIGILL) | bit(libc::SIGFPE);

/// Signals that can be neither caught nor blocked.
pub const UNBLOCKABLE: u64 = bit(libc::SIGKILL) | bit(libc::SIGSTOP);

/// The mask bit of signal `sig` (1-based, as in `sigset_t`).
pub const fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// The guest's action for one signal (riscv64 `struct sigaction`: handler,
/// flags, mask; no restorer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Action {
    pub handler: u64,
    pub flags: u64,
    pub mask: u64,
}

/// `SIG_DFL`.
pub const SIG_DFL: u64 = 0;
/// `SIG_IGN`.
pub const SIG_IGN: u64 = 1;

/// Per-thread record of caught host signals, written by the host signal
/// handler and read by the thread's run loop.
pub struct SigState {
    pending: AtomicU64,
    info: UnsafeCell<[[u8; 128]; NSIG + 1]>,
    control: Arc<HartControl>,
}

// SAFETY: `info` slots are written only by the host signal handler running
// on the owning thread (all signals masked during it) and read only by the
// owning thread with signals blocked (see `take`), so accesses never race.
unsafe impl Sync for SigState {}
// SAFETY: see above.
unsafe impl Send for SigState {}

thread_local! {
    /// The running guest thread's SigState, for the host signal handler.
    /// A const-initialised Cell needs no lazy initialisation or destructor,
    /// so touching it from a signal handler is safe.
    static CURRENT: Cell<*const SigState> = const { Cell::new(std::ptr::null()) };
}

impl SigState {
    /// Creates the state for a thread whose CPU is controlled by `control`.
    pub fn new(control: Arc<HartControl>) -> Arc<SigState> {
        Arc::new(SigState {
            pending: AtomicU64::new(0),
            info: UnsafeCell::new([[0; 128]; NSIG + 1]),
            control,
        })
    }

    /// Makes this the state the host handler records into on this thread.
    /// The Arc must outlive the thread's use of it (the run loop holds it).
    pub fn install(self: &Arc<Self>) {
        CURRENT.with(|c| c.set(Arc::as_ptr(self)));
    }

    /// Whether any caught signal waits for delivery.
    pub fn any_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }

    /// Pending caught signals as a mask.
    pub fn pending_mask(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Records a signal raised by the emulator itself (a CPU exception).
    pub fn post(&self, sig: i32, info: [u8; 128]) {
        let _blocked = BlockAll::new();
        // SAFETY: all signals are blocked on this thread, which is the only
        // one touching its slots.
        unsafe { (*self.info.get())[sig as usize] = info };
        self.pending.fetch_or(bit(sig), Ordering::AcqRel);
    }

    /// Takes the lowest pending signal not in `blocked`, with its siginfo.
    pub fn take(&self, blocked: u64) -> Option<(i32, [u8; 128])> {
        let _blocked = BlockAll::new();
        let pend = self.pending.load(Ordering::Acquire) & !blocked;
        if pend == 0 {
            return None;
        }
        // Synchronous signals first, as Linux does.
        let pick = if pend & SYNC_SIGNALS != 0 {
            pend & SYNC_SIGNALS
        } else {
            pend
        };
        let sig = pick.trailing_zeros() as i32 + 1;
        // SAFETY: signals are blocked (see `post`).
        let info = unsafe { (*self.info.get())[sig as usize] };
        self.pending.fetch_and(!bit(sig), Ordering::AcqRel);
        Some((sig, info))
    }
}

/// Blocks all host signals on this thread while alive.
pub struct BlockAll {
    old: libc::sigset_t,
}

impl BlockAll {
    /// Blocks everything, remembering the previous mask.
    pub fn new() -> BlockAll {
        // SAFETY: plain sigset manipulation on local values.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            BlockAll { old }
        }
    }
}

impl Default for BlockAll {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BlockAll {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// The host handler for signals the guest catches.
extern "C" fn host_handler(sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let cur = CURRENT.with(|c| c.get());
    if cur.is_null() || !(1..=NSIG as i32).contains(&sig) {
        return;
    }
    // SAFETY: `cur` points at the SigState of this thread (installed by
    // its run loop, which keeps it alive); all signals are masked while this
    // handler runs (sa_mask is full), so nothing else touches the slot.
    unsafe {
        let st = &*cur;
        let slot = &mut (*st.info.get())[sig as usize];
        std::ptr::copy_nonoverlapping(info as *const u8, slot.as_mut_ptr(), 128);
        st.pending.fetch_or(bit(sig), Ordering::AcqRel);
        st.control.request_stop();
    }
}

/// Sets the host disposition of `sig` to match a guest action.
pub fn set_host_action(sig: i32, act: &Action) {
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return;
    }
    // SAFETY: installs a handler that only touches atomics and the thread's
    // SigState, or a default/ignore disposition.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = match act.handler {
            SIG_DFL => libc::SIG_DFL,
            SIG_IGN => libc::SIG_IGN,
            _ => host_handler as *const () as usize,
        };
        // No SA_RESTART: a blocking host syscall must return EINTR so the
        // guest handler runs; the run loop restarts it when the guest asked
        // for SA_RESTART.
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigfillset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Sets the host thread mask to a guest mask (never blocking the signals
/// the emulator needs).
pub fn set_host_mask(mask: u64) {
    let m = mask & !(SYNC_SIGNALS | UNBLOCKABLE);
    // SAFETY: builds a sigset from bits and installs it for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in 1..=NSIG as i32 {
            if m & bit(s) != 0 {
                libc::sigaddset(&mut set, s);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The guest-visible kernel sigset of a host sigset.
pub fn mask_from_host(set: &libc::sigset_t) -> u64 {
    let mut m = 0;
    for s in 1..=NSIG as i32 {
        // SAFETY: reads a valid sigset.
        if unsafe { libc::sigismember(set, s) } == 1 {
            m |= bit(s);
        }
    }
    m
}

/// Kind of default action of a signal.
#[derive(Debug, PartialEq, Eq)]
pub enum Default_ {
    Ignore,
    Terminate,
    Stop,
    Continue,
}

/// The default action of `sig`.
pub fn default_action(sig: i32) -> Default_ {
    match sig {
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH => Default_::Ignore,
        libc::SIGCONT => Default_::Continue,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Default_::Stop,
        _ => Default_::Terminate,
    }
}

/// Ends the process by signal `sig`, the way the host kernel would end a
/// real process, so the parent sees the same wait status. Core dumps of
/// the emulator would be useless (and huge), so RLIMIT_CORE is set to 0
/// first, as qemu does.
pub fn die_by_signal(sig: i32) -> ! {
    // SAFETY: resets the disposition, unblocks and raises; if the signal
    // somehow does not terminate us, exit with the shell's convention.
    unsafe {
        let rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &rl);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            sig,
        );
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
}

/// A siginfo for a signal raised by the emulator: signo, code, and the
/// fault address (si_addr) for SIGSEGV/SIGBUS/SIGILL/SIGTRAP.
pub fn make_info(sig: i32, code: i32, addr: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[0..4].copy_from_slice(&sig.to_le_bytes());
    b[8..12].copy_from_slice(&code.to_le_bytes());
    b[16..24].copy_from_slice(&addr.to_le_bytes());
    b
}

/// A siginfo as `kill` from this process would produce (SI_USER).
pub fn user_info(sig: i32) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[0..4].copy_from_slice(&sig.to_le_bytes());
    // SAFETY: no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    b[16..20].copy_from_slice(&pid.to_le_bytes());
    b[20..24].copy_from_slice(&uid.to_le_bytes());
    b
}

// Signal delivery and the riscv64 signal frame (what Linux's
// arch/riscv/kernel/signal.c does).
impl Thread {
    /// Delivers every deliverable pending signal.
    pub(crate) fn deliver_signals(&mut self) {
        let frame_mask = self.mask;
        let mut blocked = self.tmp_mask.take().unwrap_or(self.mask);
        let mut delivered = false;
        while let Some((sig, info)) = self.sig.take(blocked) {
            let act = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner())[sig as usize];
            match act.handler {
                SIG_IGN => continue,
                SIG_DFL => match default_action(sig) {
                    Default_::Terminate => die_by_signal(sig),
                    Default_::Stop => {
                        // SAFETY: stops this process like the kernel would.
                        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
                    }
                    _ => {}
                },
                _ => {
                    let saved = if delivered { self.mask } else { frame_mask };
                    if !self.setup_frame(sig, &info, &act, saved) {
                        die_by_signal(libc::SIGSEGV);
                    }
                    delivered = true;
                    blocked = self.mask;
                }
            }
        }
    }

    pub(crate) fn on_altstack(&self, sp: u64) -> bool {
        self.altstack.enabled
            && sp > self.altstack.sp
            && sp <= self.altstack.sp + self.altstack.size
    }

    /// Builds the riscv64 `rt_sigframe` (siginfo + ucontext with all
    /// integer and FP registers) and enters the handler.
    fn setup_frame(&mut self, sig: i32, info: &[u8; 128], act: &Action, saved_mask: u64) -> bool {
        let mm = &self.proc.mm;
        let cur_sp = self.hart.x(2);
        let mut sp = cur_sp;
        if act.flags & abi::SA_ONSTACK != 0 && self.altstack.enabled && !self.on_altstack(cur_sp) {
            sp = self.altstack.sp + self.altstack.size;
        }
        let frame = match sp.checked_sub(SIGFRAME_SIZE) {
            Some(f) => f & !15,
            None => return false,
        };
        let ucp = frame + 128;
        let mut uc_buf = vec![0u8; uc::SIZE as usize];
        let put = |b: &mut Vec<u8>, off: u64, v: &[u8]| {
            b[off as usize..off as usize + v.len()].copy_from_slice(v)
        };
        // uc_stack
        put(&mut uc_buf, uc::STACK, &self.altstack.sp.to_le_bytes());
        let ss_flags: i32 = if !self.altstack.enabled {
            2 // SS_DISABLE
        } else if self.on_altstack(cur_sp) {
            1 // SS_ONSTACK
        } else {
            0
        };
        put(&mut uc_buf, uc::STACK + 8, &ss_flags.to_le_bytes());
        put(
            &mut uc_buf,
            uc::STACK + 16,
            &self.altstack.size.to_le_bytes(),
        );
        put(&mut uc_buf, uc::SIGMASK, &saved_mask.to_le_bytes());
        put(&mut uc_buf, uc::REGS, &self.hart.pc.to_le_bytes());
        for r in 1..32 {
            put(
                &mut uc_buf,
                uc::REGS + 8 * r as u64,
                &self.hart.x(r).to_le_bytes(),
            );
        }
        for r in 0..32 {
            put(
                &mut uc_buf,
                uc::FPREGS + 8 * r as u64,
                &self.hart.f[r].to_le_bytes(),
            );
        }
        put(
            &mut uc_buf,
            uc::FPREGS + 256,
            &(self.hart.fcsr() as u32).to_le_bytes(),
        );
        if mm.write(frame, info).is_none() || mm.write(ucp, &uc_buf).is_none() {
            return false;
        }
        self.hart.set_x(1, self.proc.sigreturn_tramp);
        self.hart.set_x(2, frame);
        self.hart.set_x(10, sig as u64);
        self.hart.set_x(11, frame);
        self.hart.set_x(12, ucp);
        self.hart.pc = act.handler;
        let mut m = self.mask | act.mask;
        if act.flags & abi::SA_NODEFER == 0 {
            m |= bit(sig);
        }
        self.set_mask(m);
        if act.flags & abi::SA_RESETHAND != 0 {
            let mut acts = self.proc.actions.lock().unwrap_or_else(|e| e.into_inner());
            acts[sig as usize] = Action::default();
            set_host_action(sig, &acts[sig as usize]);
        }
        true
    }

    /// rt_sigreturn: restores the context saved by `setup_frame`.
    pub(crate) fn sigreturn(&mut self) -> Sys {
        let ucp = self.hart.x(2) + 128;
        let Some(buf) = self.proc.mm.read_vec(ucp, uc::SIZE as usize) else {
            die_by_signal(libc::SIGSEGV);
        };
        let get = |off: u64| {
            u64::from_le_bytes(
                buf[off as usize..off as usize + 8]
                    .try_into()
                    .unwrap_or([0; 8]),
            )
        };
        self.hart.pc = get(uc::REGS);
        for r in 1..32 {
            self.hart.set_x(r, get(uc::REGS + 8 * r as u64));
        }
        for r in 0..32 {
            self.hart.f[r] = get(uc::FPREGS + 8 * r as u64);
        }
        self.hart.set_fcsr(get(uc::FPREGS + 256) & 0xff);
        self.set_mask(get(uc::SIGMASK));
        // restore_altstack, as Linux does (errors ignored).
        let ss_sp = get(uc::STACK);
        let ss_flags = get(uc::STACK + 8) as u32 as i32;
        let ss_size = get(uc::STACK + 16);
        if !self.on_altstack(self.hart.x(2)) {
            self.altstack = AltStack {
                sp: ss_sp,
                size: ss_size,
                enabled: ss_flags & 2 == 0 && ss_size != 0,
            };
        }
        Sys::Jumped
    }
}
