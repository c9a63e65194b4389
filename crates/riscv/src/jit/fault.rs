//! Host faults of the JIT's inline user-mode loads and stores.
//!
//! An inline access only checks its base register against the space size
//! (see `emit::mem`); the host's page protection, which mirrors the guest's
//! permission table (see [`crate::UserSpace`]), does the rest. When it
//! faults, the host fault handler (`crate::mmu::guard`) asks
//! [`resume_at`] whether the faulting instruction is one of those
//! accesses; if so, it resumes at that access's out-of-line slow exit,
//! which writes back the register cache and leaves for the interpreter at
//! the access. The interpreter redoes it the checked way: a guest fault
//! with the right address, or, for a store into a page holding translated
//! code, the drop of those translations and the store.
//!
//! Global state, and why: the handler receives nothing but the signal and
//! the interrupted context, so it finds the running JIT's sites through a
//! thread-local pointer, set only while generated code runs (faults in
//! generated code are synchronous, so they happen on the thread whose JIT
//! emitted the code).

use std::cell::Cell;

/// Where a running JIT's inline accesses are, for the handler.
pub(super) struct Sites {
    /// The code buffer: faults elsewhere are not the JIT's.
    pub(super) code: (usize, usize),
    /// The guest reservation with its guard pages: an inline access can
    /// only fault there.
    pub(super) guest: (usize, usize),
    /// (host address of an inline access, its slow exit), ascending:
    /// blocks are emitted at increasing addresses until a flush clears it.
    pub(super) exits: Vec<(usize, usize)>,
}

impl Sites {
    /// The slow exit of the inline access at `pc`, if `addr` (the faulting
    /// data address) is where such an access can fault.
    fn exit_for(&self, pc: usize, addr: usize) -> Option<usize> {
        if !(self.code.0..self.code.1).contains(&pc)
            || !(self.guest.0..self.guest.1).contains(&addr)
        {
            return None;
        }
        let i = self.exits.binary_search_by_key(&pc, |&(p, _)| p).ok()?;
        Some(self.exits[i].1)
    }
}

thread_local! {
    /// The sites of the JIT whose code runs on this thread (null outside
    /// generated code). Const-initialised and without destructor: reading
    /// it in a signal handler is a plain thread-local load.
    static RUNNING: Cell<*const Sites> = const { Cell::new(std::ptr::null()) };
}

/// Makes `sites` the handler's view while generated code runs on this
/// thread; the previous view comes back on drop.
pub(super) struct Running(*const Sites);

impl Running {
    pub(super) fn new(sites: &Sites) -> Running {
        Running(RUNNING.with(|c| c.replace(sites)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|c| c.set(self.0));
    }
}

/// The slow exit to resume at when the instruction at host `pc` faulted
/// on data address `addr`: `Some` only for an inline access of the JIT
/// running on this thread. Called by the fault handler.
pub(crate) fn resume_at(pc: usize, addr: usize) -> Option<usize> {
    let sites = RUNNING.try_with(|c| c.get()).ok()?;
    if sites.is_null() {
        return None;
    }
    // SAFETY: the pointer is set only while generated code runs on this
    // thread, to the running JIT's sites, which Rust code does not change
    // meanwhile (the only Rust code called from generated code is the
    // instruction helper, which does not touch the JIT).
    unsafe { (*sites).exit_for(pc, addr) }
}
