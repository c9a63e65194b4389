//! User-mode guest memory accesses that survive the host refusing them,
//! and the host SIGSEGV/SIGBUS handler that makes them (and the JIT's
//! inline accesses) survive.
//!
//! The host protection of guest memory mirrors the guest's permissions
//! (see [`crate::UserSpace`]), changed by the thread that runs the guest's
//! mprotect or munmap while other threads run on. The interpreter checks
//! the permission table and then accesses the host; between the two,
//! another thread may take the permission away, and the host access
//! faults. So the interpreter's host accesses go through the few leaf
//! routines below: when one faults, the handler resumes it at a common
//! exit that reports the failure, and the interpreter checks the table
//! again (which by then says no: the guest fault is delivered as if the
//! other thread's change came first, which it did). The JIT's inline
//! accesses resume at their slow exits (`crate::jit` keeps where they
//! are); every other fault goes to the handler that was there before
//! (Rust's stack overflow handler or the default action), so a real crash
//! stays a crash.
//!
//! A host SIGBUS in a routine (a guest access to a page of a file mapping
//! past the file's end, which the host backs with nothing) resumes at a
//! second exit that reports a bus error: the guest gets SIGBUS with the
//! address, as on Linux and under qemu-riscv64, where the emulator used to
//! die of it. The JIT's inline accesses leave for the interpreter on any
//! fault, which redoes the access here.
//!
//! Global state, and why: a signal handler is process-wide and receives
//! only the signal and the interrupted context, so it needs the action it
//! replaced, to chain to (written once, at installation). The JIT adds a
//! thread-local pointer to its fault sites (see `crate::jit`).

/// A load's value, or its failure (returned in rax:rdx by the routines:
/// `failed` is 0, or 1 for a protection fault, or [`BUS`]).
#[repr(C)]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
struct Loaded {
    value: u64,
    failed: u64,
}

/// What the bus error exit returns (in both rax and rdx).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const BUS: u64 = 2;

/// Why the host refused a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// A protection fault (SIGSEGV): the permission was being taken away
    /// (the caller checks the table again).
    Protection,
    /// A bus error (SIGBUS): the page is mapped and allowed, but nothing
    /// backs it (a file mapping past its file's end). The guest's access
    /// faults with SIGBUS.
    Bus,
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn refused(code: u64) -> Refused {
    if code == BUS {
        Refused::Bus
    } else {
        Refused::Protection
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod routines {
    use super::Loaded;

    // Leaf routines that touch no stack before their one access, so a
    // fault can resume at `virtkit_ga_fail` (SIGSEGV) or `virtkit_ga_bus`
    // (SIGBUS), which return "failed" to the caller in place of the
    // routine (rax = rdx = 1, or BUS).
    std::arch::global_asm!(
        ".pushsection .text.virtkit_guest_access,\"ax\",@progbits",
        ".p2align 4",
        ".globl virtkit_ga_ld1",
        ".hidden virtkit_ga_ld1",
        "virtkit_ga_ld1:",
        "movzx eax, byte ptr [rdi]",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_ld2",
        ".hidden virtkit_ga_ld2",
        "virtkit_ga_ld2:",
        "movzx eax, word ptr [rdi]",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_ld4",
        ".hidden virtkit_ga_ld4",
        "virtkit_ga_ld4:",
        "mov eax, dword ptr [rdi]",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_ld8",
        ".hidden virtkit_ga_ld8",
        "virtkit_ga_ld8:",
        "mov rax, qword ptr [rdi]",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_st1",
        ".hidden virtkit_ga_st1",
        "virtkit_ga_st1:",
        "mov byte ptr [rdi], sil",
        "xor eax, eax",
        "ret",
        ".globl virtkit_ga_st2",
        ".hidden virtkit_ga_st2",
        "virtkit_ga_st2:",
        "mov word ptr [rdi], si",
        "xor eax, eax",
        "ret",
        ".globl virtkit_ga_st4",
        ".hidden virtkit_ga_st4",
        "virtkit_ga_st4:",
        "mov dword ptr [rdi], esi",
        "xor eax, eax",
        "ret",
        ".globl virtkit_ga_st8",
        ".hidden virtkit_ga_st8",
        "virtkit_ga_st8:",
        "mov qword ptr [rdi], rsi",
        "xor eax, eax",
        "ret",
        // Copies rdx bytes from rsi to rdi (either side guest memory); a
        // fault part way leaves a partial copy and reports the failure.
        ".globl virtkit_ga_copy",
        ".hidden virtkit_ga_copy",
        "virtkit_ga_copy:",
        "mov rcx, rdx",
        "rep movsb",
        "xor eax, eax",
        "ret",
        // Compare-and-swap: [rdi] from rsi to rdx when it holds rsi;
        // returns the old value (what it held).
        ".globl virtkit_ga_cas4",
        ".hidden virtkit_ga_cas4",
        "virtkit_ga_cas4:",
        "mov eax, esi",
        "lock cmpxchg dword ptr [rdi], edx",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_cas8",
        ".hidden virtkit_ga_cas8",
        "virtkit_ga_cas8:",
        "mov rax, rsi",
        "lock cmpxchg qword ptr [rdi], rdx",
        "xor edx, edx",
        "ret",
        ".globl virtkit_ga_fail",
        ".hidden virtkit_ga_fail",
        "virtkit_ga_fail:",
        "mov eax, 1",
        "mov edx, 1",
        "ret",
        ".globl virtkit_ga_bus",
        ".hidden virtkit_ga_bus",
        "virtkit_ga_bus:",
        "mov eax, 2",
        "mov edx, 2",
        "ret",
        ".popsection",
    );

    extern "sysv64" {
        pub(super) fn virtkit_ga_ld1(p: *const u8) -> Loaded;
        pub(super) fn virtkit_ga_ld2(p: *const u8) -> Loaded;
        pub(super) fn virtkit_ga_ld4(p: *const u8) -> Loaded;
        pub(super) fn virtkit_ga_ld8(p: *const u8) -> Loaded;
        pub(super) fn virtkit_ga_st1(p: *mut u8, v: u64) -> u32;
        pub(super) fn virtkit_ga_st2(p: *mut u8, v: u64) -> u32;
        pub(super) fn virtkit_ga_st4(p: *mut u8, v: u64) -> u32;
        pub(super) fn virtkit_ga_st8(p: *mut u8, v: u64) -> u32;
        pub(super) fn virtkit_ga_copy(dst: *mut u8, src: *const u8, n: usize) -> u32;
        pub(super) fn virtkit_ga_cas4(p: *mut u8, expected: u64, new: u64) -> Loaded;
        pub(super) fn virtkit_ga_cas8(p: *mut u8, expected: u64, new: u64) -> Loaded;
        pub(super) fn virtkit_ga_fail();
        pub(super) fn virtkit_ga_bus();
    }

    /// The routines' code: from the first (`virtkit_ga_ld1`, the section's
    /// start) up to `virtkit_ga_fail`, which follows the last; and the bus
    /// error exit.
    pub(super) fn range() -> (usize, usize, usize) {
        (
            virtkit_ga_ld1 as *const () as usize,
            virtkit_ga_fail as *const () as usize,
            virtkit_ga_bus as *const () as usize,
        )
    }
}

/// Loads `N` bytes (1, 2, 4, 8) from guest memory at host `p`,
/// zero-extended, or why the host refused (see the module's comment).
///
/// # Safety
/// `p` must point into the guest reservation of a [`crate::UserSpace`]
/// (with the `N` bytes inside it or its guard).
#[inline(always)]
pub(crate) unsafe fn load<const N: usize>(p: *const u8) -> Result<u64, Refused> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use routines::*;
        // SAFETY: the routines read `N` bytes at `p`, which the caller
        // vouches is guest memory; a fault there resumes at the failure
        // exit (the handler is installed with the space).
        let r = unsafe {
            match N {
                1 => virtkit_ga_ld1(p),
                2 => virtkit_ga_ld2(p),
                4 => virtkit_ga_ld4(p),
                _ => virtkit_ga_ld8(p),
            }
        };
        if r.failed == 0 {
            Ok(r.value)
        } else {
            Err(refused(r.failed))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    // SAFETY: without the handler, accessible memory is the caller's
    // promise (checked against the permission table).
    Ok(unsafe { super::rd::<N>(p) })
}

/// Stores the low `N` bytes of `v` to guest memory at host `p`, or says why
/// the host refused.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub(crate) unsafe fn store<const N: usize>(p: *mut u8, v: u64) -> Result<(), Refused> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use routines::*;
        // SAFETY: as in `load`.
        let r = unsafe {
            match N {
                1 => virtkit_ga_st1(p, v),
                2 => virtkit_ga_st2(p, v),
                4 => virtkit_ga_st4(p, v),
                _ => virtkit_ga_st8(p, v),
            }
        };
        if r == 0 {
            Ok(())
        } else {
            Err(refused(r.into()))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        // SAFETY: as in `load`.
        unsafe { super::wr::<N>(p, v) };
        Ok(())
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod handler {
    use std::sync::OnceLock;

    /// The actions of SIGSEGV and SIGBUS before ours (written once, by
    /// [`install`]; `None` when installing failed).
    static PREVIOUS: OnceLock<Option<[libc::sigaction; 2]>> = OnceLock::new();

    const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

    fn index(sig: libc::c_int) -> usize {
        (sig == libc::SIGBUS) as usize
    }

    pub(crate) fn install() -> bool {
        PREVIOUS
            .get_or_init(|| {
                // SAFETY: zeroed sigactions are valid values to fill in; the
                // handler only reads thread-local state and the context it
                // is given, and chains to the saved actions otherwise.
                unsafe {
                    let mut old: [libc::sigaction; 2] = std::mem::zeroed();
                    for sig in SIGNALS {
                        if libc::sigaction(sig, std::ptr::null(), &mut old[index(sig)]) != 0 {
                            return None;
                        }
                    }
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = on_fault as *const () as usize;
                    // On the thread's alternate stack when it has one (Rust's
                    // stack overflow detection, which we chain to, needs it).
                    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                    libc::sigemptyset(&mut sa.sa_mask);
                    for sig in SIGNALS {
                        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                            for s in SIGNALS {
                                libc::sigaction(s, &old[index(s)], std::ptr::null_mut());
                            }
                            return None;
                        }
                    }
                    Some(old)
                }
            })
            .is_some()
    }

    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo and ucontext
        // (SA_SIGINFO); only the interrupted instruction pointer changes.
        unsafe {
            // Kernel-made faults only (si_code > 0): a SIGSEGV sent by
            // kill() is nobody's access.
            if !info.is_null() && !uc.is_null() && (*info).si_code > 0 {
                let uc = &mut *uc.cast::<libc::ucontext_t>();
                let rip = &mut uc.uc_mcontext.gregs[libc::REG_RIP as usize];
                let pc = *rip as usize;
                let (lo, fail, bus) = super::routines::range();
                if (lo..fail).contains(&pc) {
                    *rip = if sig == libc::SIGBUS { bus } else { fail } as i64;
                    return;
                }
                let addr = (*info).si_addr() as usize;
                if let Some(exit) = crate::jit::resume_at(pc, addr) {
                    *rip = exit as i64;
                    return;
                }
            }
            chain(sig, info, uc);
        }
    }

    /// Hands a fault that is not ours to the action installed before.
    ///
    /// # Safety
    /// Called from the signal handler with its arguments.
    unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // Still being installed (another thread is in `install`):
        // returning retries the instruction until the saved actions are
        // there.
        let Some(Some(prev)) = PREVIOUS.get() else {
            return;
        };
        let prev = &prev[index(sig)];
        let h = prev.sa_sigaction;
        // SAFETY: `info` is the kernel's (or null).
        let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
        if h == libc::SIG_IGN && sent {
            // An ignored signal someone sent.
        } else if h == libc::SIG_DFL || h == libc::SIG_IGN {
            // The default action: put it back and let the fault happen
            // again on return, which kills as it would have without us (a
            // sent signal is raised again; it stays blocked until this
            // returns). An ignored fault would loop forever; the kernel
            // kills for it, and so do we.
            // SAFETY: installs the default action, then maybe raises.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
                if sent {
                    libc::raise(sig);
                }
            }
        } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: an SA_SIGINFO handler has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, uc);
        } else {
            // SAFETY: a plain handler has this signature.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
    }
}

/// Installs the host fault handler (once per process). `false` when the
/// host refused: guest accesses then fault the process as they did before
/// (and the JIT, which needs the handler, does not run).
pub(crate) fn install() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    return handler::install();
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Copies `n` bytes from `src` to `dst`, one side of which is guest
/// memory, or says why the host refused (the copy is then partial).
///
/// # Safety
/// The guest side must lie inside the guest reservation of a
/// [`crate::UserSpace`]; the other side must be valid host memory for `n`
/// bytes (a fault there would be reported as the guest's, not crash).
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) -> Result<(), Refused> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: the caller vouches for both ranges; a fault on the guest
        // side resumes at a failure exit.
        let r = unsafe { routines::virtkit_ga_copy(dst, src, n) };
        if r == 0 {
            Ok(())
        } else {
            Err(refused(r.into()))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        // SAFETY: as in `load`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        Ok(())
    }
}

/// Atomically replaces the `N` (4 or 8) bytes at `p` by `new` when they
/// hold `expected` (its low `N` bytes); returns what they held, or why
/// the host refused.
///
/// # Safety
/// As for [`load`], with `p` aligned to `N`.
pub(crate) unsafe fn cas<const N: usize>(
    p: *mut u8,
    expected: u64,
    new: u64,
) -> Result<u64, Refused> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: as in `load`; `lock cmpxchg` on an aligned guest address.
        let r = unsafe {
            if N == 4 {
                routines::virtkit_ga_cas4(p, expected, new)
            } else {
                routines::virtkit_ga_cas8(p, expected, new)
            }
        };
        if r.failed == 0 {
            Ok(r.value)
        } else {
            Err(refused(r.failed))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
        // SAFETY: aligned guest memory (the caller's promise).
        Ok(unsafe {
            if N == 4 {
                match AtomicU32::from_ptr(p.cast()).compare_exchange(
                    expected as u32,
                    new as u32,
                    SeqCst,
                    SeqCst,
                ) {
                    Ok(v) | Err(v) => v as u64,
                }
            } else {
                match AtomicU64::from_ptr(p.cast()).compare_exchange(expected, new, SeqCst, SeqCst)
                {
                    Ok(v) | Err(v) => v,
                }
            }
        })
    }
}
