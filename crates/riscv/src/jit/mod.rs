//! User-mode JIT: translates decoded blocks ([`Insn`]) into x86-64 code.
//! In user mode a block is translated on its `threshold`th run (see
//! [`crate::DEFAULT_JIT_THRESHOLD`]); the interpreter runs it before.
//!
//! The interpreter's cost is dispatch: one indirect branch, operand
//! fetches and a loop per guest instruction. Here each block becomes
//! straight-line host code that keeps guest registers in `Core::x`, with
//! the ones a block uses most also cached in host registers within the
//! block (write-back: dirty ones are stored at every exit), checks the permission table inline on every load
//! and store exactly as [`crate::mmu::UserMem`] does, and ends by jumping
//! straight into the next block (chaining, patched on first use) or through
//! an inline hash lookup (indirect jumps). Traps, stores into pages holding
//! code, page-crossing accesses, system instructions and anything else
//! rare leave the JIT at the instruction's pc, and the interpreter runs the
//! block from there: it owns all the precise slow paths, so the JIT never
//! has to reproduce them. Instructions that are neither common nor
//! control flow (FP, atomics, bit manipulation) call
//! [`helper`], which runs the interpreter on that one instruction.
//!
//! Files: `x86.rs` the encoder (knows nothing of guests), `dispatch.rs`
//! the fixed routines at the start of the buffer (entry, epilogue, inline
//! dispatch of indirect jumps), `emit/` the block translator split by ISA
//! extension, and this file the code buffer, the pc -> code tables and
//! the run loops.
//!
//! Written by hand rather than with an assembler crate (dynasm, iced): the
//! code needs some twenty instruction forms, must be emitted at its final
//! address (chained jumps are patched in place), and lives in one fixed
//! buffer per hart so that jumps between blocks stay rel32.
//!
//! Register use inside generated code (all callee-saved, so helper calls
//! keep them): rbx = `&core.x[16]` (so every register is a disp8),
//! r12 = guest memory base (user mode) or the data TLB, r14 = [`Ctx`],
//! r15 = the hart's attention word, rbp = instructions retired since
//! entry. Translated code polls only the attention word for code
//! changes, which raise it (`UserSpace::code_changed`, `CodeMap::changed`).
//! rax, rcx, rdx are scratch; r8-r11, rsi, rdi and r13 cache guest
//! registers within a block (see `emit::RegCache`).

use std::collections::HashMap as StdMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::block::{decode_block, extend_user, translate_user, MAX_BLOCK};
use crate::cpu::Core;
use crate::decode::{Insn, Kind};
use crate::exec::exec_block;
use crate::mem::{Bus, UserSpace};
use crate::mmu::{SysMem, UserMem};

mod dispatch;
mod emit;
mod fault;
mod prefault;
mod x86;

pub(crate) use fault::resume_at;

use x86::Asm;

/// Code buffer per hart. Reserved, not committed: pages are touched as
/// code is written. Full: everything is flushed and translation restarts.
const CODE_SIZE: usize = 32 << 20;
/// Room kept free for one more block (96 instructions at well under 100
/// bytes each, plus exit stubs).
const HEADROOM: usize = 64 << 10;
/// pc -> code table read by generated code: 2-way set associative (two
/// hot targets of one indirect jump that hash alike must not evict each
/// other on every call), `TABLE_SIZE / 2` sets, power of two.
const TABLE_SIZE: usize = 1 << 14;
const SET_BITS: u32 = 13;
/// System mode's (virtual pc, physical pc) -> code table: 2-way set
/// associative as well, with more sets (a Linux boot translates some 60k
/// blocks; the slow path of a miss is a trip through Rust).
const SYS_SET_BITS: u32 = 14;
const SYS_TABLE_SIZE: usize = 2 << SYS_SET_BITS;
/// Fibonacci hashing: spreads nearby and page-aligned pcs over all sets.
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// The hasher of the JIT's pc and address maps: their keys are already
/// well spread, so a multiply and a rotate do (std's SipHash showed in
/// boot profiles, where every exit to Rust looks a block up).
#[derive(Default)]
struct PcHasher(u64);

impl Hasher for PcHasher {
    fn finish(&self) -> u64 {
        // The product's low bits only see the key's low bits (zero in
        // page addresses): fold the high half in, where the table indexes.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(HASH_MUL);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

type HashMap<K, V> = StdMap<K, V, BuildHasherDefault<PcHasher>>;

/// Cap on helper instructions before a flush (the table is a Vec whose
/// pointer generated code reads through `Ctx`).
const MAX_HELPERS: usize = 1 << 18;
/// User mode: block starts whose runs are counted at most (see
/// `Jit::runs`): about 2 MiB of map.
const MAX_COUNTED: usize = 1 << 16;

const EXIT_DISPATCH: u32 = 0;
const EXIT_CHAIN: u32 = 1;
const EXIT_SLOW: u32 = 2;
const EXIT_ATTN: u32 = 3;
/// A chained exit to a block after the exiting one's start (see
/// `Frame::static_exit`): patched to skip the target's entry checks.
const EXIT_CHAIN_FWD: u32 = 4;
/// System mode: a guarded chained exit to another page asks for its
/// patch (see [`SysSite`]); `Ctx::site` is the site.
const EXIT_CHAIN_SYS: u32 = 5;

/// System mode: the patched fields of a guarded chained exit to another
/// page (`Asm::sys_chain_exit`), as byte offsets from its site: the
/// physical page its target must be fetched from (imm64), the epoch cell
/// of that page (imm64), the rel32 of the jump to the target's code, the
/// jump the failed guard takes (rel32 at `MISS + 1`: first to the exit
/// that asks for the patch, then to the dispatch stub at `DISPATCH`).
struct SysSite;

impl SysSite {
    const PA: usize = 2;
    const EPOCH: usize = 25;
    const CODE: usize = 50;
    const MISS: usize = 54;
    const DISPATCH: usize = 59;
}

/// State shared between Rust and generated code (offsets are baked into
/// the code, hence `repr(C)`).
#[repr(C)]
struct Ctx {
    /// Next guest pc at every exit.
    pc: u64,
    /// Address of the `jmp rel32` to patch (EXIT_CHAIN).
    site: u64,
    /// Guest instructions retired since entry.
    icount: u64,
    /// The host stack pointer at entry, where the return-address stack
    /// starts (empty), and its lowest allowed value (full); `enter` sets
    /// both, the epilogue restores the stack pointer from the first. See
    /// [`RAS_DEPTH`].
    ras_base: u64,
    ras_limit: u64,
    table: *const Entry,
    core: *mut Core,
    space: *const UserSpace,
    helpers: *const Insn,
    xregs: *mut u64,
    /// r12: user mode, guest memory base; system mode, the data TLB.
    membase: *const u8,
    attn: *const u32,
    /// System mode: the `SysMem` helpers run instructions with.
    mem: *mut (),
    /// System mode: the count of instructions retired since entry at
    /// which block entries leave for the run loop to poll for
    /// interrupts (see [`POLL_INSNS`]).
    poll_at: u64,
    /// System mode: the fetch TLB, the block table and the fence epoch
    /// (which a slot's page must have been checked in), for the inline
    /// dispatch of indirect and cross-page jumps.
    itlb: *const u8,
    systable: *const SysSlot,
    epoch: u64,
    /// User mode: the address space's size, the bound of inline accesses'
    /// base registers (see `emit::mem`).
    space_size: u64,
    /// System mode: [`csr_sys`] for this run's bus.
    csr: usize,
    /// System mode: [`recheck_page`].
    recheck: usize,
    /// System mode: the host addends of the groups of loads and stores
    /// one TLB check covers (see `emit::mem::sys_groups`).
    groups: [usize; GROUP_SLOTS],
    /// System mode: when a group's leader leaves because its bytes
    /// crossed into a page it cannot reach with the first's addend (see
    /// `dispatch::straddle`), an address in its block's code (non-zero);
    /// `Ctx::pc` is the leader's.
    straddled: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    tag: u64,
    code: u64,
}

const EMPTY: Entry = Entry {
    tag: u64::MAX,
    code: 0,
};

/// Entries of the return-address stack, as CPUs predict
/// returns. A call (`jal`/`jalr` writing x1 or x5) pushes onto the host
/// stack, below the frame of `enter`, the address of a chained exit to
/// its return address in the calling block and then the return address
/// (16 bytes, so helper calls still find the stack aligned); a return
/// (`jalr x0` through x1 or x5) pops the top entry and, when the address
/// matches, jumps straight to that exit instead of looking its target up
/// in the shared table (whose single indirect jump the host predicts
/// badly, and whose entries are often not in the cache). A mismatch only
/// costs the lookup. On the host stack, pushes and pops carry no
/// dependency through memory (the stack engine tracks rsp), where an
/// index kept in memory chained every call to the previous one. A push
/// onto a full stack first empties it (deeper call chains lose their
/// predictions, as do calls that never return: `longjmp`); every exit to
/// Rust empties it too (the epilogue resets rsp), so an entry never
/// outlives the code it points at (flushes happen only in Rust). In
/// system mode the exit is a guarded chained exit (fetch TLB, physical
/// page, fence epoch: see `Asm::sys_chain_exit`), so a prediction pushed
/// under another address space or before its target's page changed
/// fails the guard into the inline dispatch.
const RAS_DEPTH: usize = 256;

/// System mode: instructions translated code retires between polls for
/// interrupts and timer deadlines (about as many as the interpreter's
/// `POLL_BLOCKS` blocks hold).
const POLL_INSNS: u64 = 12 * 1024;

/// System mode: groups of loads and stores (one TLB check each, see
/// `emit::mem::sys_groups`) live at once in a block.
const GROUP_SLOTS: usize = 4;

/// System mode: times a group's leader may leave because its bytes
/// crossed a page it cannot reach (see `dispatch::straddle`) before the
/// group is given up: its blocks are translated again with its accesses
/// checking their own bytes (see [`Jit::note_straddle`]).
const STRADDLES: u32 = 4;

/// Why [`Jit::run`] returned.
pub(crate) enum JitExit {
    /// The interpreter must run the block at `core.pc` (a slow path, a
    /// system instruction, or an untranslatable block).
    Slow,
    /// Attention requested or code changed: `core.pc` is a block start.
    Yield,
}

type EnterFn = unsafe extern "sysv64" fn(*mut Ctx, *const u8) -> u32;

/// A hart's translated code.
pub(crate) struct Jit {
    buf: *mut u8,
    len: usize,
    /// Offset where blocks start (after the fixed routines).
    blocks_start: usize,
    /// Faults the buffer's pages in ahead of `len`.
    prefault: prefault::Prefault,
    /// A translation's buffers, kept for the next.
    scratch: emit::Scratch,
    enter: EnterFn,
    epilogue: usize,
    dispatch: usize,
    dispatch_sys: usize,
    /// System mode: `dispatch::straddle` (loads only, with a store).
    straddle: [usize; 2],
    table: Box<[Entry]>,
    /// Every block translated since the last flush (the table above is a
    /// direct-mapped cache of it for generated code; a block evicted from
    /// the table is found here instead of being translated again).
    blocks: HashMap<u64, usize>,
    /// User mode: how many times each block start not translated yet was
    /// asked for (see [`Jit::threshold`]).
    runs: HashMap<u64, u32>,
    /// User mode: a block is translated when it is asked for the
    /// `threshold`th time; before, the interpreter runs it. Translating
    /// costs some 8 µs a block, running one in the interpreter a few
    /// tenths of one: code that runs a few times (a short process's
    /// start-up, most of its work) is cheaper interpreted, and a loop
    /// pays its threshold once. (System mode translates at once: a boot
    /// measured no faster, the fetch checks making each ask dearer.)
    threshold: u32,
    /// User mode: bytes of entry checks at the start of each block's code
    /// (by its address), which forward chained exits jump past.
    skips: HashMap<usize, u16>,
    /// The entry checks' length of the block `emit_code` just wrote.
    last_skip: u16,
    helpers: Vec<Insn>,
    /// Code generation of the address space the translations match.
    gen: u64,
    /// Bumped by every flush: a chain site recorded before a flush is gone.
    flushes: u64,
    decode_buf: Vec<Insn>,
    /// System mode: the halfwords (page offset, value) the block being
    /// translated was decoded from (a reused buffer).
    fetched: Vec<(u16, u16)>,
    /// The address space the translations are for (its address and host
    /// base).
    space_id: (usize, usize),
    /// System mode: (virtual pc, physical pc) -> code, 2-way set
    /// associative (way 0 the most recently inserted) in front of
    /// `sys_blocks`, read by the inline dispatch (`dispatch_sys`).
    sys_table: Box<[SysSlot]>,
    sys_blocks: HashMap<(u64, u64), usize>,
    /// System mode: the physical pages blocks were translated from.
    sys_pages: HashMap<u64, SysPage>,
    /// System mode: pages whose code changed (see `CodeMap::changes_since`).
    changed: Vec<u64>,
    /// System mode: bumped by every `fence.i` (see [`Jit::fence_i`]).
    fence_epoch: u64,
    /// System mode: translated code ran a `fence.i` in place (see
    /// [`csr_sys`]): the interpreter's decoded blocks must go too.
    fenced: bool,
    /// System mode: the epoch cells of dropped pages, which guarded
    /// chained exits may still point at (set to `u64::MAX`, an epoch
    /// never reached, so those guards fail); freed with the code. (The
    /// boxes moved out of `SysPage`s: guards hold their addresses.)
    #[allow(clippy::vec_box)]
    dead_epochs: Vec<Box<PageCheck>>,
    /// Translating for a system-mode hart (set by the first `run_sys`).
    sys_mode: bool,
    /// System mode: leaves of group leaders whose bytes crossed pages
    /// (see [`Jit::note_straddle`]), by the leader's physical address,
    /// and the leaders whose groups were given up (translated as
    /// accesses of their own, see `emit::mem::sys_groups`).
    straddles: HashMap<u64, u32>,
    ungrouped: HashMap<u64, ()>,
    /// System mode: the physical address of the block being translated
    /// (to find its leaders in `ungrouped`).
    block_pa: u64,
    /// Tests: slow exits from translated code (system mode).
    #[cfg(test)]
    pub(crate) slow_exits: u64,
    /// User mode: where inline loads and stores are and their slow exits,
    /// for the host fault handler (see [`fault`]).
    sites: fault::Sites,
    /// `VIRTKIT_PERF_MAP=1`: each block is listed in `/tmp/perf-PID.map`
    /// (the perf tool's convention for JIT code) with its guest pc, so
    /// `perf report` names guest code instead of bare addresses.
    perf_map: Option<std::fs::File>,
    /// `VIRTKIT_JIT_DUMP=DIR`: the code of each block as emitted (before
    /// chained jumps are patched) goes to `DIR/<guest pc>-<host address>.bin`,
    /// raw bytes, for `objdump -D -b binary -mi386:x86-64 --adjust-vma=0x<host
    /// address>` (`perf annotate` cannot read JIT code).
    dump_dir: Option<std::path::PathBuf>,
}

/// A system-mode table slot: virtual pc, physical pc, code, and where
/// the fence epoch at which its page was last found unchanged is kept
/// (the page's, shared by all its blocks: after a fence, one check of the
/// page lets every block of it be entered inline again).
#[derive(Clone, Copy)]
#[repr(C)]
struct SysSlot {
    vpc: u64,
    ppc: u64,
    code: usize,
    /// `SysPage::epoch` of the block's page (read only when `vpc` and
    /// `ppc` match, so null in empty slots).
    epoch: *const u64,
}

const NO_SLOT: SysSlot = SysSlot {
    vpc: u64::MAX,
    ppc: 0,
    code: 0,
    epoch: std::ptr::null(),
};

/// A physical page holding translated code (system mode).
struct SysPage {
    /// When the page was last found unchanged. Boxed: table slots of the
    /// page's blocks point at it (see [`SysSlot`]), and generated code
    /// reads it through them.
    check: Box<PageCheck>,
    /// Blocks translated from it: (virtual pc, physical pc).
    blocks: Vec<(u64, u64)>,
}

/// What checks a page of translated code against writes no hart made
/// (see [`Jit::fence_i`]), from Rust or from the inline dispatch (see
/// [`recheck_page`]).
#[repr(C)]
struct PageCheck {
    /// Fence epoch at which the page was last compared with `copy`
    /// (first: generated code reads it at the address slots hold);
    /// `u64::MAX` once the page's translations are dropped.
    epoch: std::cell::Cell<u64>,
    /// The page in host memory (guest RAM, mapped for the machine's
    /// life).
    host: *const u8,
    /// The page's bytes when its first block was translated, with the
    /// bytes each block was decoded from written over them as it was
    /// (emptied when dropped).
    copy: Box<[u8]>,
    /// The bytes the page's blocks were decoded from, `lo..hi`: only
    /// those are compared (a kernel page's translated functions are
    /// often a small part of it, and Linux checks pages some 400k
    /// times per boot).
    lo: usize,
    hi: usize,
}

impl PageCheck {
    /// Whether the bytes translated code was made from are as they were.
    fn unchanged(&self, now: &[u8]) -> bool {
        self.copy[self.lo..self.hi] == now[self.lo..self.hi]
    }
}

const _: () = assert!(std::mem::offset_of!(PageCheck, epoch) == 0);

/// System mode, from the inline dispatch: the block it found belongs to
/// a page last checked in an earlier fence epoch. Compares the page with
/// its copy and, unchanged, marks it checked in `epoch` (the current
/// one) and returns 1: the dispatch enters the block, where a trip
/// through the run loop (out of generated code and back, finding the
/// block again) would do the same (Linux runs tens of thousands of
/// `fence.i` per boot, each followed by such a check of every page it
/// runs code from). 0: changed, or dropped: the run loop decides.
extern "sysv64" fn recheck_page(check: *const PageCheck, epoch: u64) -> u32 {
    // SAFETY: the dispatch passes the check a live table slot points at
    // (`drop_page` and `flush` empty the slots of the pages they drop),
    // owned by this hart's `Jit`, which generated code runs under.
    let c = unsafe { &*check };
    if c.epoch.get() == u64::MAX {
        return 0;
    }
    // SAFETY: `host` is the start of a guest RAM page (see `PageCheck`),
    // as `code_for_sys` reads it.
    let now = unsafe { std::slice::from_raw_parts(c.host, crate::PAGE_SIZE as usize) };
    if c.unchanged(now) {
        c.epoch.set(epoch);
        1
    } else {
        0
    }
}

// The inline dispatch of system mode scales the slot index by 32.
const _: () = assert!(std::mem::size_of::<SysSlot>() == 32);

// The TLB walk in generated code scales the index by 64.
const _: () = assert!(std::mem::size_of::<crate::mmu::Entry>() == 64);

// SAFETY: the buffer is owned by this value and only used by the thread
// that owns the hart; nothing in it refers to thread-local state.
unsafe impl Send for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        // Its worker may be using the buffer.
        self.prefault.stop();
        // SAFETY: `buf` is the mapping of `CODE_SIZE` bytes made in `new`.
        unsafe { libc::munmap(self.buf.cast(), CODE_SIZE) };
    }
}

/// Runs one non-control-flow instruction through the interpreter.
/// Returns 0 when it completed, 1 when it trapped (nothing changed: the
/// JIT exits and the interpreter re-executes it to deliver the trap).
extern "sysv64" fn helper(ctx: *mut Ctx, idx: u32, pc: u64) -> u32 {
    // SAFETY: generated code passes the `Ctx` that `Jit::run` set up for
    // this call; `core` and `space` point at the hart's core and address
    // space, which `run` borrows mutably/shared for the whole run, and no
    // Rust reference to the core is live while generated code runs.
    let ctx = unsafe { &*ctx };
    // SAFETY: as above.
    let (core, space) = unsafe { (&mut *ctx.core, &*ctx.space) };
    // SAFETY: `idx` was allocated by `Jit::compile` in the helper table
    // that `ctx.helpers` points at; the table is not touched while
    // generated code runs.
    let insn = unsafe { *ctx.helpers.add(idx as usize) };
    let mut block = [insn, insn];
    block[0].off = 0;
    block[1].kind = Kind::BlockEnd;
    block[1].off = insn.size() as u16;
    let mut mem = UserMem::new(space);
    match exec_block(core, &mut mem, &block, pc) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

impl Jit {
    /// Maps the code buffer and writes the fixed routines. `None` when the
    /// host refuses executable memory (the interpreter then runs alone).
    pub(crate) fn new(threshold: u32) -> Option<Jit> {
        // SAFETY: a fresh anonymous private mapping, owned by the Jit.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CODE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // Transparent huge pages where the host allows them: code is
        // written front to back, so 2 MiB pages waste at most one page's
        // tail, and save a page fault per 4 KiB of code (a Linux boot
        // writes ~30 MB: ~7k faults, ~15% of the boot's) and iTLB misses
        // in the code that runs. Refused (THP off): 4 KiB pages as before.
        // SAFETY: advice on the mapping just made; no memory is changed.
        unsafe { libc::madvise(p, CODE_SIZE, libc::MADV_HUGEPAGE) };
        let buf = p.cast::<u8>();
        if !crate::mmu::guard::install() {
            // SAFETY: the mapping made just above, not used yet.
            unsafe { libc::munmap(p, CODE_SIZE) };
            return None;
        }
        let mut a = Asm::new(buf as usize, 1024);
        let r = dispatch::write(&mut a);
        let n = a.b.len();
        // SAFETY: `n` bytes fit easily in the fresh CODE_SIZE mapping.
        unsafe { std::ptr::copy_nonoverlapping(a.b.as_ptr(), buf, n) };
        // SAFETY: `r.enter` is the address of the routine just written, which
        // follows the sysv64 convention of `EnterFn`.
        let enter: EnterFn = unsafe { std::mem::transmute::<usize, EnterFn>(r.enter) };
        let blocks_start = (n + 63) & !63;
        Some(Jit {
            buf,
            len: blocks_start,
            blocks_start,
            prefault: prefault::Prefault::new(buf, CODE_SIZE),
            scratch: emit::Scratch::default(),
            enter,
            epilogue: r.epilogue,
            dispatch: r.dispatch,
            dispatch_sys: r.dispatch_sys,
            straddle: r.straddle,
            table: vec![EMPTY; TABLE_SIZE].into_boxed_slice(),
            blocks: HashMap::default(),
            skips: HashMap::default(),
            last_skip: 0,
            helpers: Vec::new(),
            gen: 0,
            flushes: 0,
            decode_buf: Vec::with_capacity(MAX_BLOCK + 1),
            fetched: Vec::new(),
            space_id: (0, 0),
            // Allocated by the first `run_sys` (a megabyte that a
            // user-mode hart, one per process, never reads).
            sys_table: Box::new([]),
            sys_blocks: HashMap::default(),
            sys_pages: HashMap::default(),
            changed: Vec::new(),
            fence_epoch: 0,
            fenced: false,
            dead_epochs: Vec::new(),
            sys_mode: false,
            straddles: HashMap::default(),
            ungrouped: HashMap::default(),
            block_pa: 0,
            #[cfg(test)]
            slow_exits: 0,
            sites: fault::Sites {
                code: (buf as usize, buf as usize + CODE_SIZE),
                guest: (0, 0),
                exits: Vec::new(),
            },
            perf_map: std::env::var_os("VIRTKIT_PERF_MAP")
                .is_some_and(|v| v != "0")
                .then(|| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(format!("/tmp/perf-{}.map", std::process::id()))
                        .ok()
                })
                .flatten(),
            dump_dir: std::env::var_os("VIRTKIT_JIT_DUMP").map(Into::into),
            runs: HashMap::default(),
            threshold,
        })
    }

    /// See [`Jit::threshold`].
    pub(crate) fn set_threshold(&mut self, n: u32) {
        self.threshold = n;
    }

    /// `fence.i` on this hart (or requested by another). User mode drops
    /// every translation. System mode is lazier: Linux executes `fence.i`
    /// tens of thousands of times per boot, and stores by any hart into
    /// pages holding code already drop translations (code marks, see
    /// [`crate::CodeMap`]); what a fence must still catch are writes no
    /// hart made (device DMA into RAM). So each page is compared with the
    /// copy taken when it was translated (the bytes its blocks came
    /// from, see [`PageCheck`]), once per fence, when next entered from
    /// the run loop or the inline dispatch (see [`recheck_page`]); a
    /// changed page loses its blocks. Chained
    /// jumps never leave a page in system mode, so code reached through
    /// them belongs to a page already checked.
    pub(crate) fn fence_i(&mut self) {
        if self.sys_mode {
            self.fence_epoch += 1;
        } else {
            self.flush();
        }
    }

    /// Whether translated code ran a `fence.i` since the last call (the
    /// caller drops the interpreter's decoded blocks then).
    pub(crate) fn take_fenced(&mut self) -> bool {
        std::mem::take(&mut self.fenced)
    }

    /// Drops the translations of a changed physical page (and the table
    /// slots pointing at its epoch).
    fn drop_page(&mut self, ppage: u64) {
        if let Some(p) = self.sys_pages.remove(&ppage) {
            let mut check = p.check;
            check.epoch.set(u64::MAX);
            check.copy = Box::default();
            self.dead_epochs.push(check);
            for (v, pp) in p.blocks {
                self.sys_blocks.remove(&(v, pp));
                let set = Self::sys_slot(v, pp);
                for s in &mut self.sys_table[set..set + 2] {
                    if s.vpc == v && s.ppc == pp {
                        *s = NO_SLOT;
                    }
                }
            }
        }
    }

    /// Way 0 of the system table's set of (pc, pa); way 1 follows.
    #[inline(always)]
    fn sys_slot(pc: u64, pa: u64) -> usize {
        ((pc ^ (pa << 7)).wrapping_mul(HASH_MUL) >> (64 - SYS_SET_BITS)) as usize * 2
    }

    /// Puts (pc, pa) in way 0 of its set (replacing a stale entry of the
    /// same pair in way 1, else moving way 0 to way 1).
    fn sys_insert(&mut self, set: usize, slot: SysSlot) {
        let w = &mut self.sys_table[set..set + 2];
        if !(w[0].vpc == slot.vpc && w[0].ppc == slot.ppc) {
            w[1] = w[0];
        }
        w[0] = slot;
    }

    pub(crate) fn flush(&mut self) {
        self.len = self.blocks_start;
        self.blocks.clear();
        self.runs.clear();
        self.skips.clear();
        self.sys_blocks.clear();
        self.sys_pages.clear();
        self.dead_epochs.clear();
        self.straddles.clear();
        self.ungrouped.clear();
        if self.sys_mode {
            self.sys_table.fill(NO_SLOT);
        } else {
            self.table.fill(EMPTY);
        }
        self.helpers.clear();
        self.sites.exits.clear();
        self.flushes += 1;
    }

    /// First entry of the set of `pc` (the system table, direct mapped,
    /// uses it as a slot number).
    #[inline(always)]
    fn slot(pc: u64) -> usize {
        (pc.wrapping_mul(HASH_MUL) >> (64 - SET_BITS)) as usize * 2
    }

    /// Puts `pc` in way 0 of its set, moving the old way 0 to way 1.
    fn table_insert(&mut self, pc: u64, code: usize) {
        let s = Self::slot(pc);
        self.table[s + 1] = self.table[s];
        self.table[s] = Entry {
            tag: pc,
            code: code as u64,
        };
    }

    /// Code for the block at `pc`, translating it if needed. `None`: the
    /// interpreter must run it (asked for fewer than `threshold` times so
    /// far, fetch fault, code crossing pages).
    fn code_for(&mut self, space: &UserSpace, pc: u64) -> Option<usize> {
        let s = Self::slot(pc);
        for e in &self.table[s..s + 2] {
            if e.tag == pc {
                return Some(e.code as usize);
            }
        }
        if let Some(&code) = self.blocks.get(&pc) {
            self.table_insert(pc, code);
            return Some(code);
        }
        if self.threshold > 1 {
            if self.runs.len() >= MAX_COUNTED {
                // Counts start again (translation comes later, nothing
                // else changes): the map stays bounded whatever code the
                // guest runs between flushes.
                self.runs.clear();
            }
            let n = self.runs.entry(pc).or_insert(0);
            *n += 1;
            if *n < self.threshold {
                return None;
            }
            self.runs.remove(&pc);
        }
        self.compile(space, pc)
    }

    #[cold]
    #[inline(never)]
    fn compile(&mut self, space: &UserSpace, pc: u64) -> Option<usize> {
        let mut insns = std::mem::take(&mut self.decode_buf);
        let r = translate_user(space, pc, &mut insns);
        if r.is_ok() {
            extend_user(space, pc, &mut insns);
        }
        let out = r.ok().map(|()| {
            if self.len + HEADROOM > CODE_SIZE || self.helpers.len() + insns.len() > MAX_HELPERS {
                self.flush();
            }
            let at = self.place(&insns, pc, None);
            self.table_insert(pc, at);
            self.blocks.insert(pc, at);
            at
        });
        self.decode_buf = insns;
        out
    }

    /// Generates the code of one block (to live at `at`). `sys`: system
    /// mode, with the address of its helper.
    fn emit(&mut self, at: usize, insns: &[Insn], pc: u64, sys: Option<usize>) -> Vec<u8> {
        let code = self.emit_code(at, insns, pc, sys);
        if let Some(f) = self.perf_map.as_mut() {
            use std::io::Write;
            // Best effort: a profile without names is still a profile.
            let _ = writeln!(f, "{at:x} {:x} guest_{pc:x}", code.len());
        }
        if let Some(dir) = &self.dump_dir {
            // Best effort too: a debugging aid.
            let _ = std::fs::write(dir.join(format!("{pc:x}-{at:x}.bin")), &code);
        }
        code
    }
}

impl Jit {
    /// Runs translated code from `core.pc` until something needs the
    /// interpreter or the run loop.
    pub(crate) fn run(&mut self, core: &mut Core, space: &UserSpace) -> JitExit {
        if !space.jit_ok() {
            return JitExit::Slow;
        }
        let id = (
            space as *const UserSpace as usize,
            space.host_base() as usize,
        );
        if id != self.space_id {
            self.flush();
            self.space_id = id;
            // Code changes raise this hart's attention, which is all that
            // translated code polls (before the generation is read below).
            space.watch_code(&core.control);
            let guard = crate::mem::GUARD as usize;
            let base = space.host_base() as usize;
            self.sites.guest = (base - guard, base + space.size() as usize + guard);
        }
        let g = space.code_gen();
        if g != self.gen {
            self.flush();
            self.gen = g;
        }
        let Some(mut code) = self.code_for(space, core.pc) else {
            return JitExit::Slow;
        };
        let attn = core.control.attention_ptr();
        let core_ptr: *mut Core = core;
        loop {
            let mut ctx = Ctx {
                pc: 0,
                site: 0,
                icount: 0,
                // Set by `enter`.
                ras_base: 0,
                ras_limit: 0,
                table: self.table.as_ptr(),
                core: core_ptr,
                space,
                helpers: self.helpers.as_ptr(),
                // SAFETY: index 16 is inside the 64-entry register array.
                xregs: unsafe { (*core_ptr).x.as_mut_ptr().add(16) },
                membase: space.host_base().cast_const(),
                attn,
                mem: std::ptr::null_mut(),
                poll_at: u64::MAX,
                itlb: std::ptr::null(),
                systable: std::ptr::null(),
                epoch: 0,
                space_size: space.size(),
                csr: 0,
                recheck: 0,
                groups: [0; GROUP_SLOTS],
                straddled: 0,
            };
            // Host faults of inline accesses resume at their slow exits
            // while the code runs.
            let running = fault::Running::new(&self.sites);
            // SAFETY: `code` is the entry of a block translated into this
            // hart's buffer for the current code generation; the context
            // points at live data that nothing else touches during the
            // call (the core is this thread's, the space outlives the run).
            let r = unsafe { (self.enter)(&mut ctx, code as *const u8) };
            drop(running);
            // SAFETY: the generated code has returned; no other access to
            // the core is live.
            let core = unsafe { &mut *core_ptr };
            match self.after_exit(core, &ctx, r, |j, _| j.code_for(space, ctx.pc)) {
                Ok(next) => code = next,
                Err(e) => return e,
            }
        }
    }

    /// After generated code returned `r`: retires its instructions and
    /// sets the pc; on a chain or dispatch exit finds (or translates) the
    /// next block with `next_code` and patches the chain site. Returns the
    /// code to run next, or how the run ends.
    fn after_exit(
        &mut self,
        core: &mut Core,
        ctx: &Ctx,
        r: u32,
        next_code: impl FnOnce(&mut Self, &mut Core) -> Option<usize>,
    ) -> Result<usize, JitExit> {
        core.instret = core.instret.wrapping_add(ctx.icount);
        core.pc = ctx.pc;
        match r {
            EXIT_CHAIN | EXIT_CHAIN_FWD | EXIT_DISPATCH => {
                let flushes = self.flushes;
                let next = next_code(self, core).ok_or(JitExit::Slow)?;
                if r != EXIT_DISPATCH && self.flushes == flushes {
                    let site = ctx.site as usize;
                    let to = if r == EXIT_CHAIN_FWD {
                        next + self.skips.get(&next).map_or(0, |&n| n as usize)
                    } else {
                        next
                    };
                    let rel = (to as i64 - (site as i64 + 5)) as i32;
                    // SAFETY: `site` is a `jmp rel32` inside this buffer's
                    // blocks (no flush since it was recorded; in system mode
                    // chain exits only target the block's own page), and no
                    // generated code is running.
                    unsafe {
                        (site as *mut u8)
                            .add(1)
                            .cast::<[u8; 4]>()
                            .write_unaligned(rel.to_le_bytes())
                    };
                }
                Ok(next)
            }
            EXIT_SLOW => Err(JitExit::Slow),
            _ => Err(JitExit::Yield),
        }
    }
}

impl Jit {
    /// System mode: code for the block at `pc` as the hart fetches it now
    /// (through the fetch TLB), translating it if needed. `None`: the
    /// interpreter must run it (fetch fault, MMIO, an instruction crossing
    /// pages).
    fn code_for_sys<B: Bus>(
        &mut self,
        core: &Core,
        mem: &mut SysMem<'_, B>,
        pc: u64,
    ) -> Option<usize> {
        let (pa, host) = mem.translate_fetch(core, pc).ok()?;
        let host = host?;
        let slot = Self::sys_slot(pc, pa);
        for s in &self.sys_table[slot..slot + 2] {
            // SAFETY: a slot whose pcs match holds a block of a live page
            // (`drop_page` and `flush` empty the slots of the pages they
            // drop), whose boxed epoch the slot points at.
            if s.vpc == pc && s.ppc == pa && unsafe { *s.epoch } == self.fence_epoch {
                return Some(s.code);
            }
        }
        let ppage = pa & !(crate::PAGE_SIZE - 1);
        let page = pc & !(crate::PAGE_SIZE - 1);
        // SAFETY: `host` points at the RAM byte of `pc`; the whole guest
        // page around it is RAM, contiguous in the host.
        let page_bytes = unsafe {
            std::slice::from_raw_parts(host.sub((pc - page) as usize), crate::PAGE_SIZE as usize)
        };
        let epoch = self.fence_epoch;
        match self.sys_pages.get_mut(&ppage) {
            Some(p) if p.check.epoch.get() != epoch => {
                if p.check.unchanged(page_bytes) {
                    p.check.epoch.set(epoch);
                } else {
                    self.drop_page(ppage);
                }
            }
            _ => {}
        }
        // A slot of the block whose page just passed the check (or was
        // dropped, with its slots): no lookup in `sys_blocks` (after a
        // fence, most entries from the run loop come here).
        for s in &self.sys_table[slot..slot + 2] {
            // SAFETY: as above.
            if s.vpc == pc && s.ppc == pa && unsafe { *s.epoch } == epoch {
                return Some(s.code);
            }
        }
        if let Some(&code) = self.sys_blocks.get(&(pc, pa)) {
            if let Some(p) = self.sys_pages.get(&ppage) {
                let epoch = p.check.epoch.as_ptr();
                self.sys_insert(
                    slot,
                    SysSlot {
                        vpc: pc,
                        ppc: pa,
                        code,
                        epoch,
                    },
                );
            }
            return Some(code);
        }
        let mut insns = std::mem::take(&mut self.decode_buf);
        if let Some(s) = mem.code_map().slot(pa) {
            s.store(1, std::sync::atomic::Ordering::SeqCst);
        }
        // The halfwords the decoder reads, kept: the page's copy must hold
        // exactly the bytes its blocks were made from (see below).
        let mut fetched = std::mem::take(&mut self.fetched);
        fetched.clear();
        let crosses = decode_block(pc, &mut insns, |a| {
            let off = (a - page) as usize;
            // SAFETY: `host` points at the RAM byte of `pc`; `a` stays in
            // the same guest page (decode_block never leaves it), so the
            // read stays in the same host page.
            let v = unsafe {
                host.sub((pc - page) as usize)
                    .add(off)
                    .cast::<u16>()
                    .read_unaligned()
            };
            fetched.push((off as u16, v));
            v
        });
        let out = (!crosses).then(|| {
            // Where the range the page's other blocks are checked on holds
            // a byte this block read differently from the copy, memory
            // changed since those blocks were made (a device wrote it, no
            // fence yet): they go, and the page starts again from this
            // block. (Copying the new bytes into the copy instead would let
            // them pass the next check with code made from the old ones.)
            if let Some(p) = self.sys_pages.get(&ppage) {
                let c = &p.check;
                let changed = fetched.iter().any(|&(off, v)| {
                    let o = off as usize;
                    o + 2 > c.lo && o < c.hi && c.copy[o..o + 2] != v.to_le_bytes()
                });
                if changed {
                    self.drop_page(ppage);
                }
            }
            if self.len + HEADROOM > CODE_SIZE || self.helpers.len() + insns.len() > MAX_HELPERS {
                self.flush();
            }
            let f: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper_sys::<B>;
            self.block_pa = pa;
            let at = self.place(&insns, pc, Some(f as usize));
            self.sys_blocks.insert((pc, pa), at);
            // The bytes the block was decoded from (a generous end: every
            // instruction counted 4 bytes long, and the end marker too).
            let lo = (pc - page) as usize;
            let len = insns.iter().map(|i| i.off as usize + 4).max().unwrap_or(4);
            let hi = (lo + len).min(page_bytes.len());
            let p = self.sys_pages.entry(ppage).or_insert_with(|| SysPage {
                check: Box::new(PageCheck {
                    epoch: std::cell::Cell::new(epoch),
                    host: page_bytes.as_ptr(),
                    copy: page_bytes.into(),
                    lo,
                    hi,
                }),
                blocks: Vec::new(),
            });
            // The copy gets the bytes this block was decoded from, read
            // before it was made: a device writing them meanwhile (or
            // before, outside the range compared so far) then fails the
            // next check instead of matching it.
            for &(off, v) in &fetched {
                let o = off as usize;
                p.check.copy[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
            p.check.lo = p.check.lo.min(lo);
            p.check.hi = p.check.hi.max(hi);
            p.blocks.push((pc, pa));
            let epoch = p.check.epoch.as_ptr();
            self.sys_insert(
                slot,
                SysSlot {
                    vpc: pc,
                    ppc: pa,
                    code: at,
                    epoch,
                },
            );
            at
        });
        self.decode_buf = insns;
        self.fetched = fetched;
        out
    }

    /// Translates `insns` (the block at `pc`; `sys`: system mode's
    /// helper) into the buffer at `len`, which the caller made sure has
    /// `HEADROOM` free, and records its entry past the checks; returns
    /// the block's address.
    fn place(&mut self, insns: &[Insn], pc: u64, sys: Option<usize>) -> usize {
        let at = self.buf as usize + self.len;
        let code = self.emit(at, insns, pc, sys);
        // SAFETY: `emit` keeps a block well under HEADROOM, which the
        // caller left free at `len`.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len()) };
        self.len = (self.len + code.len() + 15) & !15;
        self.prefault.filled(self.len);
        self.reuse_code(code);
        if self.last_skip != 0 {
            self.skips.insert(at, self.last_skip);
        }
        at
    }

    /// System mode: the group whose leader is at `pc` left because its
    /// bytes crossed into a page the leader could not cover (see
    /// `dispatch::straddle`), from the block whose code holds `from`:
    /// the interpreter runs the block from the leader. Once a leader has
    /// left so [`STRADDLES`] times, its group is given up: each block it
    /// leaves from is translated again with the group's accesses checking
    /// each its own bytes, in place of the old translation (see
    /// [`Jit::replace_sys_block`]). A straddling group would otherwise
    /// leave every time its block runs with such a base (a struct lying
    /// across two pages mapped apart).
    #[cold]
    fn note_straddle<B: Bus>(
        &mut self,
        core: &Core,
        mem: &mut SysMem<'_, B>,
        pc: u64,
        from: usize,
    ) {
        // (The interpreter fetches `pc` next: walking for it here changes
        // nothing it would not.)
        let Ok((pa, _)) = mem.translate_fetch(core, pc) else {
            return;
        };
        if !self.ungrouped.contains_key(&pa) {
            let n = self.straddles.entry(pa).or_insert(0);
            *n += 1;
            if *n < STRADDLES {
                return;
            }
            self.straddles.remove(&pa);
            self.ungrouped.insert(pa, ());
        }
        // The block: of the leader's page's, the one whose code starts
        // last at or before `from` (a block's code is one range, out of
        // line parts included).
        let ppage = pa & !(crate::PAGE_SIZE - 1);
        let Some(p) = self.sys_pages.get(&ppage) else {
            return;
        };
        let block = p
            .blocks
            .iter()
            .filter_map(|&k| self.sys_blocks.get(&k).map(|&code| (code, k)))
            .filter(|&(code, _)| code <= from)
            .max();
        if let Some((old, (vpc, ppc))) = block {
            self.replace_sys_block::<B>(old, vpc, ppc);
        }
    }

    /// System mode: translates the block at (`vpc`, `ppc`), whose code is
    /// at `old`, again (from the bytes its page's copy holds: those it
    /// was made from; now with the groups of `ungrouped` given up), and
    /// sends whatever enters the old code to the new: its entry and the
    /// entry past its checks (see `Frame::static_exit`) become jumps to
    /// the new code's (chained jumps from its page's blocks and guarded
    /// ones from others land there), the tables point at the new code.
    /// The old code is not run again: nothing else jumps into it (the
    /// return-address stack is empty in Rust), and it stays in the buffer
    /// until the next flush.
    fn replace_sys_block<B: Bus>(&mut self, old: usize, vpc: u64, ppc: u64) {
        let ppage = ppc & !(crate::PAGE_SIZE - 1);
        let Some(p) = self.sys_pages.get(&ppage) else {
            return;
        };
        let mut insns = std::mem::take(&mut self.decode_buf);
        let page = vpc & !(crate::PAGE_SIZE - 1);
        let copy = &p.check.copy;
        let crosses = decode_block(vpc, &mut insns, |a| {
            let o = (a - page) as usize;
            u16::from_le_bytes([copy[o], copy[o + 1]])
        });
        let room =
            self.len + HEADROOM <= CODE_SIZE && self.helpers.len() + insns.len() <= MAX_HELPERS;
        if !crosses && room {
            let old_skip = self.skips.get(&old).copied();
            let f: extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 = helper_sys::<B>;
            self.block_pa = ppc;
            let at = self.place(&insns, vpc, Some(f as usize));
            self.sys_blocks.insert((vpc, ppc), at);
            let skip = self.last_skip;
            let jmp = |from: usize, to: usize| {
                let rel = (to as i64 - (from as i64 + 5)) as i32;
                let mut b = [0xe9, 0, 0, 0, 0];
                b[1..].copy_from_slice(&rel.to_le_bytes());
                // SAFETY: `from` is the start of the old code or its entry
                // past the checks (at least 5 bytes after it, see
                // `emit_try`), with at least 5 bytes of code there, in this
                // buffer; no generated code is running.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), from as *mut u8, 5) };
            };
            jmp(old, at);
            if let Some(s) = old_skip {
                // A forward chained exit skips the new code's checks too
                // (or, without them, enters it).
                jmp(old + s as usize, at + skip as usize);
            }
            let set = Self::sys_slot(vpc, ppc);
            for s in &mut self.sys_table[set..set + 2] {
                if s.vpc == vpc && s.ppc == ppc {
                    s.code = at;
                }
            }
        }
        self.decode_buf = insns;
    }

    /// Patches the guarded chained exit at `site` (see [`SysSite`]) to
    /// the block at `pc` that `code_for_sys` just found (so in its table
    /// set, with its page checked in the current epoch).
    fn patch_sys_site<B: Bus>(
        &mut self,
        core: &Core,
        mem: &mut SysMem<'_, B>,
        site: usize,
        pc: u64,
    ) {
        let Ok((pa, _)) = mem.translate_fetch(core, pc) else {
            return;
        };
        let set = Self::sys_slot(pc, pa);
        let Some(s) = self.sys_table[set..set + 2]
            .iter()
            .find(|s| s.vpc == pc && s.ppc == pa)
            .copied()
        else {
            return;
        };
        let rel = |from: usize, to: usize| (to as i64 - from as i64) as i32;
        // SAFETY: `site` is a guarded exit written by `sys_chain_exit`
        // into this buffer (no flush since it ran), whose fields sit at
        // the offsets of `SysSite`; no generated code is running.
        unsafe {
            let p = site as *mut u8;
            p.add(SysSite::PA)
                .cast::<u64>()
                .write_unaligned(pa & !(crate::PAGE_SIZE - 1));
            p.add(SysSite::EPOCH)
                .cast::<u64>()
                .write_unaligned(s.epoch as u64);
            p.add(SysSite::CODE)
                .cast::<i32>()
                .write_unaligned(rel(site + SysSite::CODE + 4, s.code));
            p.add(SysSite::MISS + 1)
                .cast::<i32>()
                .write_unaligned(rel(site + SysSite::DISPATCH, site + SysSite::DISPATCH));
        }
    }

    /// System mode: runs translated code from `core.pc` until something
    /// needs the interpreter (`Slow`: run one block there) or the run loop
    /// (`Yield`: interrupts, attention, code changes).
    pub(crate) fn run_sys<B: Bus>(&mut self, core: &mut Core, mem: &mut SysMem<'_, B>) -> JitExit {
        if !self.sys_mode {
            self.sys_mode = true;
            self.sys_table = vec![NO_SLOT; SYS_TABLE_SIZE].into_boxed_slice();
            self.flush();
            // Code changes raise this hart's attention, which is all that
            // translated code polls (before the generation is read below).
            mem.code_map().watch(&core.control);
        }
        let map = mem.code_map();
        if map.generation() != self.gen {
            // Only the changed pages lose their translations, unless this
            // hart fell too far behind the log.
            let mut changed = std::mem::take(&mut self.changed);
            changed.clear();
            match map.changes_since(self.gen, &mut changed) {
                Some(g) => {
                    for &p in &changed {
                        self.drop_page(p);
                    }
                    self.gen = g;
                }
                None => {
                    self.flush();
                    self.gen = map.generation();
                }
            }
            self.changed = changed;
        }
        let Some(mut code) = self.code_for_sys(core, mem, core.pc) else {
            return JitExit::Slow;
        };
        let attn = core.control.attention_ptr();
        // Changes with sstatus.SUM, which translated code may write (see
        // `csr_sys`): carried from one entry to the next.
        let mut tlb = mem.data_tlb().cast::<u8>();
        let itlb = mem.fetch_tlb().cast::<u8>();
        let core_ptr: *mut Core = core;
        let mem_ptr: *mut SysMem<'_, B> = mem;
        // Instructions left before the poll, carried from one entry to
        // the next.
        let mut poll = POLL_INSNS;
        loop {
            let mut ctx = Ctx {
                pc: 0,
                site: 0,
                icount: 0,
                // Set by `enter`. Return landings check the fetch TLB
                // (see `emit_code`): a prediction made under another satp
                // only misses.
                ras_base: 0,
                ras_limit: 0,
                table: self.table.as_ptr(),
                core: core_ptr,
                space: std::ptr::null(),
                helpers: self.helpers.as_ptr(),
                // SAFETY: index 16 is inside the 64-entry register array.
                xregs: unsafe { (*core_ptr).x.as_mut_ptr().add(16) },
                membase: tlb,
                attn,
                mem: mem_ptr.cast(),
                poll_at: poll,
                itlb,
                systable: self.sys_table.as_ptr(),
                epoch: self.fence_epoch,
                space_size: 0,
                csr: csr_sys::<B> as extern "sysv64" fn(*mut Ctx, u32, u64) -> u32 as usize,
                recheck: recheck_page as extern "sysv64" fn(*const PageCheck, u64) -> u32 as usize,
                groups: [0; GROUP_SLOTS],
                straddled: 0,
            };
            // SAFETY: `code` is the entry of a block translated into this
            // hart's buffer for the current code generation, and the
            // context points at live data nothing else touches during the
            // call (core and memory path are this hart's).
            let r = unsafe { (self.enter)(&mut ctx, code as *const u8) };
            // SAFETY: the generated code has returned; no other access to
            // the core or the memory path is live.
            let (core, mem) = unsafe { (&mut *core_ptr, &mut *mem_ptr) };
            poll = ctx.poll_at.saturating_sub(ctx.icount);
            tlb = ctx.membase;
            if ctx.epoch != self.fence_epoch {
                // A `fence.i` ran in place (see `csr_sys`).
                self.fence_epoch = ctx.epoch;
                self.fenced = true;
            }
            let pc = ctx.pc;
            #[cfg(test)]
            if r == EXIT_SLOW {
                self.slow_exits += 1;
            }
            if ctx.straddled != 0 {
                self.note_straddle(core, mem, pc, ctx.straddled as usize);
            }
            if r == EXIT_CHAIN_SYS {
                core.instret = core.instret.wrapping_add(ctx.icount);
                core.pc = pc;
                let flushes = self.flushes;
                let Some(next) = self.code_for_sys(core, mem, pc) else {
                    return JitExit::Slow;
                };
                if self.flushes == flushes {
                    self.patch_sys_site(core, mem, ctx.site as usize, pc);
                }
                code = next;
                continue;
            }
            match self.after_exit(core, &ctx, r, |j, core| j.code_for_sys(core, mem, pc)) {
                Ok(next) => code = next,
                Err(e) => return e,
            }
        }
    }
}

/// System-mode [`helper`]: one instruction through the interpreter with
/// the hart's memory path.
extern "sysv64" fn helper_sys<B: Bus>(ctx: *mut Ctx, idx: u32, pc: u64) -> u32 {
    // SAFETY: generated code passes the `Ctx` that `run_sys` set up; its
    // `core` and `mem` point at the hart's core and `SysMem<B>` (this `B`:
    // `run_sys::<B>` chose this instantiation), borrowed for the run.
    let ctx = unsafe { &*ctx };
    // SAFETY: as above.
    let (core, mem) = unsafe { (&mut *ctx.core, &mut *ctx.mem.cast::<SysMem<'_, B>>()) };
    // SAFETY: `idx` indexes the helper table `ctx.helpers` points at.
    let insn = unsafe { *ctx.helpers.add(idx as usize) };
    let mut block = [insn, insn];
    block[0].off = 0;
    block[1].kind = Kind::BlockEnd;
    block[1].off = insn.size() as u16;
    match exec_block(core, mem, &block, pc) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// `pause` (Zihintpause: `fence w, 0`), Linux's `cpu_relax()`.
const PAUSE: u32 = 0x0100_000f;

/// System mode, called by translated code at a `pause` (which has no
/// effect on the hart): yields the host thread. A hart runs `pause`
/// while it waits for another one (Linux's spinlocks, `smp_cond_load`
/// loops, udelay); with more harts than host CPUs, the hart it waits
/// for may be one it keeps off the CPU (spinning was ~13% of a 4-hart
/// boot on 2 host CPUs). The interpreter runs `pause` as the fence it
/// is (timing is all that differs).
///
/// The next block entry polls for interrupts: a yield can take a host
/// time slice, and the poll comes every `POLL_INSNS` instructions, so a hart
/// spinning until its own timer interrupt moves jiffies on would take
/// that many yields to see it (boots then took 20 s instead of 2).
extern "sysv64" fn pause_sys(ctx: *mut Ctx) {
    std::thread::yield_now();
    // SAFETY: generated code passes the `Ctx` that `run_sys` set up,
    // which nothing else touches during the call.
    unsafe { (*ctx).poll_at = 0 };
}

/// System mode: whether translated code runs `i` in place through
/// [`csr_sys`] instead of leaving for the interpreter: CSR accesses but
/// to the instruction counters (which count the instructions translated
/// code retired only at its exits), `sfence.vma` and `fence.i` (Linux
/// runs some 100k, 50k and 150k of them per boot; a trip through the run
/// loop costs about a microsecond).
pub(super) fn runs_in_place(i: &Insn) -> bool {
    use crate::cpu::csr;
    match i.kind {
        Kind::Csrrw | Kind::Csrrs | Kind::Csrrc | Kind::Csrrwi | Kind::Csrrsi | Kind::Csrrci => {
            let n = i.imm as u16;
            let counter = (csr::CYCLE..=csr::CYCLE + 0x1f).contains(&n) && n != csr::TIME
                || (csr::MCYCLE..=csr::MCYCLE + 0x1f).contains(&n);
            !counter
        }
        Kind::SfenceVma | Kind::FenceI => true,
        _ => false,
    }
}

/// What [`csr_sys`] tells translated code: go on (chained to the next
/// instruction's block), leave for the interpreter (the instruction
/// traps; nothing changed, it redoes it), leave for the run loop after
/// it, or go on through the inline dispatch (the next pc's translation
/// may have changed: after a fence).
pub(super) const IN_PLACE_DONE: u32 = 0;
pub(super) const IN_PLACE_TRAP: u32 = 1;
pub(super) const IN_PLACE_RUN_LOOP: u32 = 2;
pub(super) const IN_PLACE_DISPATCH: u32 = 3;

/// System mode: runs an instruction of [`runs_in_place`] in place (see
/// `emit_try`), with what the run loop's `service` would do after it
/// done here:
/// - a CSR access goes on with the data TLB of the regime it leaves
///   (sstatus.SUM selects one: `Ctx::membase`), unless it changed what
///   cached translations allow (`tlb_dirty`: satp, MPRV, MXR, MPP) or
///   left an interrupt pending and enabled, which must be taken before
///   the next instruction: those go to the run loop;
/// - `sfence.vma` drops the TLB entries it names now and goes on
///   through the dispatch (which translates the next pc again);
/// - `fence.i` starts a new fence epoch (`Ctx::epoch`, which `run_sys`
///   adopts, see [`Jit::fence_i`]) and goes on through the dispatch.
extern "sysv64" fn csr_sys<B: Bus>(ctx: *mut Ctx, idx: u32, pc: u64) -> u32 {
    // SAFETY: generated code passes the `Ctx` that `run_sys` set up; its
    // `core` and `mem` point at the hart's core and `SysMem<B>` (this `B`:
    // `run_sys::<B>` chose this instantiation), borrowed for the run.
    let ctx = unsafe { &mut *ctx };
    // SAFETY: as above.
    let (core, mem) = unsafe { (&mut *ctx.core, &mut *ctx.mem.cast::<SysMem<'_, B>>()) };
    // SAFETY: `idx` indexes the helper table `ctx.helpers` points at.
    let mut insn = unsafe { *ctx.helpers.add(idx as usize) };
    insn.off = 0;
    let block = [insn];
    if exec_block(core, mem, &block, pc).is_err() {
        return IN_PLACE_TRAP;
    }
    match insn.kind {
        Kind::SfenceVma => {
            // (Translated code runs with no flush pending: the run loop
            // did them all before entering it.)
            if core.tlb_dirty {
                core.tlb_dirty = false;
                core.tlb_flush_va = None;
                mem.flush();
            } else if let Some(va) = core.tlb_flush_va.take() {
                mem.flush_page(va);
            }
            IN_PLACE_DISPATCH
        }
        Kind::FenceI => {
            // The interpreter's decoded blocks are dropped when `run_sys`
            // returns (see `Jit::take_fenced`).
            core.code_dirty = false;
            ctx.epoch += 1;
            IN_PLACE_DISPATCH
        }
        _ => {
            if core.tlb_dirty {
                return IN_PLACE_RUN_LOOP;
            }
            mem.update_modes(core);
            if mem.fetch_tlb().cast() != ctx.itlb {
                return IN_PLACE_RUN_LOOP;
            }
            ctx.membase = mem.data_tlb().cast();
            use crate::cpu::csr;
            let n = insn.imm as u16;
            let irq_bits = matches!(
                n,
                csr::SSTATUS
                    | csr::MSTATUS
                    | csr::SIE
                    | csr::MIE
                    | csr::SIP
                    | csr::MIP
                    | csr::MIDELEG
                    | csr::STIMECMP
            );
            if irq_bits && core.pending_interrupt().is_some() {
                return IN_PLACE_RUN_LOOP;
            }
            IN_PLACE_DONE
        }
    }
}

#[cfg(test)]
mod sys_tests {
    use std::sync::{Arc, OnceLock};

    use crate::{Bus, Clock, CodeMap, Exit, Hart, HartConfig, HartControl, RamRegion};

    const RAM: u64 = 0x8000_0000;
    const RAM_LEN: usize = 64 << 10;
    /// `addi a0, x0, 1; jalr x0, 0(ra)` and the same returning 2.
    const F1: [u32; 2] = [0x0010_0513, 0x0000_8067];
    const F2: [u32; 2] = [0x0020_0513, 0x0000_8067];

    /// RAM, a "device" that rewrites code at 0x8000_1000 behind the code
    /// map's back (as DMA does) on a store to 0x1000_0000, and a stop
    /// register at 0x1000_0008.
    struct DmaBus {
        _mem: Vec<u64>,
        ram: [RamRegion; 1],
        code: CodeMap,
        control: OnceLock<Arc<HartControl>>,
    }

    impl DmaBus {
        fn put(&self, pa: u64, words: &[u32]) {
            for (k, w) in words.iter().enumerate() {
                let off = (pa - RAM) as usize + 4 * k;
                // SAFETY: inside the RAM region (the tests' addresses).
                unsafe { self.ram[0].host().add(off).cast::<u32>().write(*w) };
            }
        }
    }

    impl Bus for DmaBus {
        fn ram(&self) -> &[RamRegion] {
            &self.ram
        }
        fn code_map(&self) -> &CodeMap {
            &self.code
        }
        fn read(&self, _: u64, _: u8) -> Option<u64> {
            None
        }
        fn write(&self, addr: u64, _: u8, value: u64) -> bool {
            match addr {
                0x1000_0000 => self.put(RAM + 0x1000, &F2),
                0x1000_0008 => self.control.get().unwrap().request_stop(),
                0x1000_0010 => self.control.get().unwrap().set_mtimecmp(value),
                // The device writes a word at 0x8000_1800.
                0x1000_0020 => self.put(RAM + 0x1800, &[value as u32]),
                _ => return false,
            }
            true
        }
    }

    fn run(jit: bool) -> (u64, u64) {
        let x = run_prog(
            &[
                0x0000_10ef, // jal ra, +0x1000 (f)
                0x0005_0413, // addi s0, a0, 0
                0x1000_02b7, // lui t0, 0x10000
                0x0002_a023, // sw zero, 0(t0): the device rewrites f
                0x0000_100f, // fence.i
                0x7ed0_00ef, // jal ra, f
                0x0005_0493, // addi s1, a0, 0
                0x0002_a423, // sw zero, 8(t0): stop
                0x0000_006f, // j .
            ],
            |bus| bus.put(RAM + 0x1000, &F1),
            jit,
        );
        (x[8], x[9])
    }

    /// Runs `words` at RAM in M-mode (after `setup`) until the stop
    /// register is written; returns the integer registers.
    fn run_prog(words: &[u32], setup: impl Fn(&DmaBus), jit: bool) -> [u64; 32] {
        let mut mem = vec![0u64; RAM_LEN / 8];
        // SAFETY: the vector lives as long as the bus, which owns it.
        let ram = [unsafe { RamRegion::new(RAM, RAM_LEN as u64, mem.as_mut_ptr().cast()) }];
        let bus = DmaBus {
            code: CodeMap::new(&ram),
            _mem: mem,
            ram,
            control: OnceLock::new(),
        };
        bus.put(RAM, words);
        setup(&bus);
        let mut hart = Hart::new_system(HartConfig {
            hart_id: 0,
            clock: Arc::new(Clock::new(10_000_000)),
            sbi_ecalls: false,
        });
        bus.control.set(hart.control().clone()).unwrap();
        hart.set_jit(jit);
        hart.pc = RAM;
        assert!(matches!(hart.run_system(&bus), Exit::Stopped));
        std::array::from_fn(|r| hart.x[r])
    }

    fn csr(f3: u32, rd: u32, rs1: u32, n: u32) -> u32 {
        n << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x73
    }
    fn itype(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
        ((imm as u32) << 20) | rs1 << 15 | f3 << 12 | rd << 7 | op
    }
    fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
        itype(0x13, 0, rd, rs1, imm)
    }
    fn lui(rd: u32, imm20: u32) -> u32 {
        imm20 << 12 | rd << 7 | 0x37
    }
    /// `auipc rd, 0; addi rd, rd, off - 0` for a label `off` bytes after
    /// the auipc.
    fn la(rd: u32, off: i32) -> [u32; 2] {
        [rd << 7 | 0x17, addi(rd, rd, off)]
    }
    const MRET: u32 = 0x3020_0073;
    const ECALL: u32 = 0x73;
    const T0: u32 = 5;
    const T1: u32 = 6;
    const T2: u32 = 7;
    /// M-mode trap handler: mcause into s2, stop.
    const STOP: [u32; 4] = [
        0x3420_2973, // csrr s2, mcause
        0x1000_02b7, // lui t0, 0x10000
        0x0002_a423, // sw zero, 8(t0)
        0x0000_006f, // j .
    ];

    /// M-mode prologue: mtvec = the STOP handler at `stop`, mepc = `s`
    /// (byte offsets from RAM), MPP = S, then `extra`, then mret.
    /// M-mode code that turns on Sv39 with the root page table at `root`
    /// (an offset into RAM), for [`to_s`]'s `extra`.
    fn sv39_on(root: u64) -> [u32; 6] {
        let satp_ppn = (RAM + root) >> 12;
        [
            lui(T1, (satp_ppn >> 12) as u32 & 0xf_ffff),
            addi(T1, T1, (satp_ppn & 0xfff) as i32),
            addi(T0, 0, 8),
            itype(0x13, 1, T0, T0, 60), // slli t0, t0, 60
            0x0053_6333,                // or t1, t1, t0
            csr(1, 0, T1, 0x180),       // csrw satp, t1
        ]
    }

    fn to_s(stop: i32, s: i32, extra: &[u32]) -> Vec<u32> {
        let mut p = Vec::new();
        let here = |p: &Vec<u32>| 4 * p.len() as i32;
        let l = la(T1, stop - here(&p));
        p.extend(l);
        p.push(csr(1, 0, T1, 0x305)); // csrw mtvec, t1
        let l = la(T1, s - here(&p));
        p.extend(l);
        p.push(csr(1, 0, T1, 0x341)); // csrw mepc, t1
        p.push(addi(T0, 0, 1));
        p.push(itype(0x13, 1, T0, T0, 11)); // slli t0, t0, 11
        p.push(csr(2, 0, T0, 0x300)); // csrs mstatus, t0: MPP = S
        p.extend_from_slice(extra);
        p.push(MRET);
        p
    }

    /// Inline FP in system mode (see `emit::fp`): with mstatus.FS off an
    /// FP instruction is illegal (mcause 2); with FS on, arithmetic sets
    /// FS dirty and `fmv.x.d` leaves it alone.
    #[test]
    fn inline_fp_honours_mstatus_fs() {
        let fadd = (1 << 25) | (3 << 20) | (2 << 15) | (7 << 12) | (1 << 7) | 0x53;
        let fmv_x_d = (0x71 << 25) | (11 << 7) | 0x53;
        let stop = 0x100;
        let prog = |body: &[u32]| {
            let mut p = Vec::new();
            let l = la(T1, stop);
            p.extend(l);
            p.push(csr(1, 0, T1, 0x305)); // csrw mtvec, t1
            p.extend_from_slice(body);
            p.extend_from_slice(&STOP[1..]);
            p.resize(stop as usize / 4, 0);
            p.extend(STOP);
            p
        };
        let off = prog(&[fadd, addi(19, 0, 7)]);
        let on = prog(&[
            lui(T0, 2),
            csr(2, 0, T0, 0x300), // csrs mstatus, t0: FS = initial
            fmv_x_d,
            csr(2, 12, 0, 0x300), // csrr a2, mstatus
            fadd,
            csr(2, 10, 0, 0x300), // csrr a0, mstatus
        ]);
        for jit in [false, true] {
            let x = run_prog(&off, |_| {}, jit);
            assert_eq!((x[18], x[19]), (2, 0), "jit {jit}");
            let x = run_prog(&on, |_| {}, jit);
            assert_eq!((x[12] >> 13 & 3, x[10] >> 13 & 3), (1, 3), "jit {jit}");
        }
    }

    #[test]
    fn sstatus_write_enabling_a_pending_interrupt_takes_it_next() {
        // S-mode sets SIE with a supervisor software interrupt pending
        // (delegated): translated code runs the csrsi in place and must
        // still take the interrupt right after it, at the next pc.
        let extra = [
            addi(T0, 0, 2),
            csr(1, 0, T0, 0x303), // csrw mideleg, t0 (SSIP)
            csr(1, 0, T0, 0x304), // csrw mie, t0
            csr(2, 0, T0, 0x344), // csrs mip, t0: SSIP pending
        ];
        let (s, h, stop) = (0x100, 0x200, 0x300);
        let mut p = to_s(stop, s, &extra);
        p.resize(s as usize / 4, 0);
        // S: stvec = H, s0 = 1, csrsi sstatus SIE, s0 = 2, ecall.
        let l = la(T1, h - s);
        p.extend(l);
        p.push(csr(1, 0, T1, 0x105)); // csrw stvec, t1
        p.push(addi(8, 0, 1));
        p.push(csr(6, 0, 2, 0x100)); // csrsi sstatus, 2
        p.push(addi(8, 0, 2));
        p.push(ECALL);
        p.resize(h as usize / 4, 0);
        // H: s1 = sepc, s3 = scause, ecall (to M: stop).
        p.push(csr(2, 9, 0, 0x141));
        p.push(csr(2, 19, 0, 0x142));
        p.push(ECALL);
        p.resize(stop as usize / 4, 0);
        p.extend(STOP);
        let at = RAM + s as u64 + 20;
        for jit in [false, true] {
            let x = run_prog(&p, |_| {}, jit);
            assert_eq!((x[8], x[9], x[19]), (1, at, 1 << 63 | 1), "jit {jit}");
        }
    }

    #[test]
    fn sstatus_sum_change_switches_the_data_tlb_of_translated_code() {
        // Sv39: VA 0..1 GiB a user gigapage onto RAM, RAM's own addresses
        // a supervisor one. S-mode reads the user page at 0x9000 with
        // SUM set, clears SUM and reads it again: that must fault (M's
        // handler stops with mcause 13), even though translated code,
        // which runs the csrc in place, had the page in SUM's TLB.
        let root = 0x8000u64;
        let extra = sv39_on(root);
        let (s, stop) = (0x100, 0x300);
        let mut p = to_s(stop, s, &extra);
        p.resize(s as usize / 4, 0);
        let ld = |rd| itype(0x03, 3, rd, T2, 0);
        let csrs = csr(2, 0, T0, 0x100);
        let csrc = csr(3, 0, T0, 0x100);
        p.extend([
            lui(T0, 0x40), // SUM
            lui(T2, 0x9),
            csrs,
            ld(9), // fills SUM's TLB (a slow exit)
            csrc,
            csrs,
            ld(21), // hits it in translated code
            csrc,
            ld(19), // must fault
            addi(20, 0, 7),
            ECALL,
        ]);
        p.resize(stop as usize / 4, 0);
        p.extend(STOP);
        // And a run-loop entry with SUM set (after the interpreter's
        // `ld; csrs`) whose csrc is followed by a fresh entry: that one
        // must use the TLB without SUM too.
        let mut q = to_s(stop, s, &extra);
        q.resize(s as usize / 4, 0);
        q.extend([
            lui(T0, 0x40),
            lui(T2, 0x9),
            csrs,
            ld(9),
            csrs,
            csrc,
            addi(22, 0, 5), // written back before the fault
            ld(19),         // must fault
            addi(20, 0, 7),
            ECALL,
        ]);
        q.resize(stop as usize / 4, 0);
        q.extend(STOP);
        let setup = |bus: &DmaBus| {
            let pte = |pa: u64, flags: u64| (pa >> 12) << 10 | flags;
            let user = pte(RAM, 0xd7); // V R W U A D
            let kernel = pte(RAM, 0xcf); // V R W X A D
            bus.put(RAM + root, &[user as u32, (user >> 32) as u32]);
            bus.put(RAM + root + 16, &[kernel as u32, (kernel >> 32) as u32]);
            bus.put(RAM + 0x9000, &[0x1234_5678, 0]);
        };
        for jit in [false, true] {
            let x = run_prog(&p, setup, jit);
            assert_eq!(
                (x[9], x[21], x[19], x[20], x[18]),
                (0x1234_5678, 0x1234_5678, 0, 0, 13),
                "jit {jit}"
            );
            let x = run_prog(&q, setup, jit);
            assert_eq!(
                (x[9], x[19], x[20], x[18], x[22]),
                (0x1234_5678, 0, 0, 13, 5),
                "jit {jit}"
            );
        }
    }

    fn branch(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
        let o = off as u32;
        (o >> 12 & 1) << 31
            | (o >> 5 & 0x3f) << 25
            | rs2 << 20
            | rs1 << 15
            | f3 << 12
            | (o >> 1 & 0xf) << 8
            | (o >> 11 & 1) << 7
            | 0x63
    }
    fn store(f3: u32, rs2: u32, rs1: u32, imm: i32) -> u32 {
        let o = imm as u32;
        (o >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (o & 0x1f) << 7 | 0x23
    }
    fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
        rs2 << 20 | rs1 << 15 | rd << 7 | 0x33
    }
    /// M-mode trap handler: mcause, mepc and mtval into s2, s3 and s4,
    /// stop.
    const STOP3: [u32; 6] = [
        0x3420_2973, // csrr s2, mcause
        0x3410_29f3, // csrr s3, mepc
        0x3430_2a73, // csrr s4, mtval
        0x1000_02b7, // lui t0, 0x10000
        0x0002_a423, // sw zero, 8(t0)
        0x0000_006f, // j .
    ];

    #[test]
    fn a_looping_block_takes_a_timer_interrupt() {
        // A block that jumps back to its start keeps its registers in
        // host registers across passes; its head must still count down
        // to the interrupt poll, or the timer interrupt armed before it
        // would wait for the loop's 2^30 passes to end.
        let stop = 0x200;
        let mut p = Vec::new();
        p.extend(la(T1, stop));
        p.push(csr(1, 0, T1, 0x305)); // csrw mtvec, t1
        p.push(csr(2, T0, 0, 0xc01)); // csrr t0, time
        p.push(addi(T0, T0, 1000)); // 100 us at 10 MHz
        p.push(lui(T2, 0x10000));
        p.push(store(3, T0, T2, 16)); // sd t0, 16(t2): mtimecmp
        p.push(addi(T0, 0, 0x80));
        p.push(csr(1, 0, T0, 0x304)); // csrw mie, t0 (MTIE)
        p.push(csr(6, 0, 8, 0x300)); // csrsi mstatus, 8 (MIE)
        p.push(addi(10, 0, 0));
        p.push(lui(11, 0x40000)); // a1 = 2^30
        let head = 4 * p.len() as u64;
        p.push(addi(10, 10, 1));
        p.push(addi(12, 12, 3));
        p.push(branch(1, 10, 11, -8)); // bne a0, a1, head
        p.push(ECALL);
        p.resize(stop as usize / 4, 0);
        p.extend(STOP3);
        for jit in [false, true] {
            let x = run_prog(&p, |_| {}, jit);
            assert_eq!(x[18], 1 << 63 | 7, "jit {jit}: mcause");
            assert!(
                (RAM + head..=RAM + head + 8).contains(&x[19]),
                "jit {jit}: mepc {:#x}",
                x[19]
            );
            assert!(x[10] < 1 << 30, "jit {jit}: the loop ran to its end");
            // The registers the loop kept in host registers were written
            // back at the interrupt: a2 counts 3 per pass of a0.
            assert!(
                (x[12] / 3).abs_diff(x[10]) <= 1,
                "jit {jit}: {} {}",
                x[10],
                x[12]
            );
        }
    }

    #[test]
    fn accesses_crossing_a_page_leave_translated_code() {
        // A loop over loads and stores near the end of RAM: the ones
        // that stay in the last page run inline once its TLB entry is
        // filled; the ones that cross into the page after it (no memory:
        // an access fault) must not, even though the entry of the page
        // they start in is there. The same registers and trap as the
        // interpreter's.
        let stop = 0x200;
        let end = RAM + RAM_LEN as u64;
        let mut p = Vec::new();
        p.extend(la(T1, stop));
        p.push(csr(1, 0, T1, 0x305)); // csrw mtvec, t1
        p.push(lui(T2, (end >> 12) as u32));
        p.push(itype(0x13, 1, T2, T2, 32)); // slli t2, t2, 32
        p.push(itype(0x13, 5, T2, T2, 32)); // srli t2, t2, 32
        p.push(addi(T2, T2, -16)); // t2 = end - 16
        p.push(addi(12, 0, 3)); // a2 = 3 passes
        let ld = |f3, rd, off| itype(0x03, f3, rd, T2, off);
        let body = [
            ld(3, 13, 8),        // ld a3, 8(t2): the last 8 bytes
            ld(3, 14, 5),        // ld a4, 5(t2): misaligned, inside
            add(9, 9, 14),       // s1 += a4
            ld(2, 14, 11),       // lw a4, 11(t2): misaligned, inside
            add(9, 9, 14),       // s1 += a4
            store(3, 12, T2, 7), // sd a2, 7(t2): inside
            ld(5, 14, 14),       // lhu a4, 14(t2)
            add(9, 9, 14),       // s1 += a4
            addi(12, 12, -1),    // a2 -= 1
            branch(1, 12, 0, 0), // bne a2, zero, head (patched below)
        ];
        let head = p.len();
        p.extend(body);
        let back = head + 9;
        p[back] = branch(1, 12, 0, -4 * 9);
        // Then a block whose load crosses the end after one that stays
        // in the last page (whose TLB entry the loop filled).
        let head2 = p.len();
        p.extend([
            ld(3, 13, 8),       // ld a3, 8(t2)
            addi(21, 21, 1),    // s5 += 1
            ld(2, 16, 13),      // lw a6, 13(t2): crosses the end
            addi(22, 0, 7),     // not reached
            branch(1, 0, 0, 0), // the back edge (never reached)
        ]);
        let n = p.len();
        p[n - 1] = branch(0, 0, 0, -4 * (n - 1 - head2) as i32); // beq zero, zero, head2
        p.resize(stop as usize / 4, 0);
        p.extend(STOP3);
        let setup = |bus: &DmaBus| {
            let words: Vec<u32> = (0..4).map(|k| 0x0102_0304u32.wrapping_mul(k + 7)).collect();
            bus.put(RAM + RAM_LEN as u64 - 16, &words);
        };
        let interp = run_prog(&p, setup, false);
        let jit = run_prog(&p, setup, true);
        assert_eq!(interp, jit);
        // A load access fault at the crossing lw.
        assert_eq!(jit[18], 5, "mcause");
        assert_eq!(jit[19], RAM + 4 * (head2 as u64 + 2), "mepc");
        assert_ne!(jit[9], 0);
        assert_eq!((jit[21], jit[22], jit[12]), (1, 0, 0));
    }

    /// `rd` = `v` (a RAM address: zero-extended from `lui`'s 32 bits).
    fn li_ram(rd: u32, v: u64) -> [u32; 4] {
        [
            lui(rd, (v >> 12) as u32 & 0xf_ffff),
            itype(0x13, 1, rd, rd, 32),
            itype(0x13, 5, rd, rd, 32),
            addi(rd, rd, (v & 0xfff) as i32),
        ]
    }

    #[test]
    fn sfence_vma_in_place_drops_the_page_it_names() {
        // Sv39, S-mode: VA 0x9000 is a 4 KiB page that the loop maps to
        // page A (holding 1) and page B (holding 2) in turn, each time
        // with `sfence.vma` of it before reading through it again. From
        // the second pass on, translated code reads through the TLB
        // entry a first block filled and runs the sfence.vma in place:
        // the read after it must see the new mapping.
        let (root, l1, l0, pa, pb) = (0x8000u64, 0xa000u64, 0xb000u64, 0xc000u64, 0xd000u64);
        let pte = |pa: u64, flags: u64| (pa >> 12) << 10 | flags;
        let extra = sv39_on(root);
        let (s, stop) = (0x100, 0x300);
        let mut p = to_s(stop, s, &extra);
        p.resize(s as usize / 4, 0);
        let (t3, t4, t5) = (28, 29, 30);
        p.push(lui(T2, 0x9));
        p.extend(li_ram(t3, RAM + l0 + 9 * 8));
        p.extend(li_ram(t4, pte(RAM + pa, 0xc7)));
        p.extend(li_ram(t5, pte(RAM + pb, 0xc7)));
        p.push(addi(12, 0, 4)); // a2 = 4 passes
        let head = p.len();
        let ld = |rd| itype(0x03, 3, rd, T2, 0);
        let sfence = 0x1200_0073 | T2 << 15; // sfence.vma t2
        p.extend([
            ld(15),                  // ld a5, 0(t2): fills the TLB
            0x0040_006f,             // jal x0, +4: a new block
            ld(13),                  // ld a3, 0(t2)
            itype(0x13, 1, 9, 9, 4), // slli s1, s1, 4
            add(9, 9, 13),           // s1 += a3
            store(3, t5, t3, 0),     // map B
            sfence,
            ld(14),                    // ld a4, 0(t2)
            itype(0x13, 1, 19, 19, 4), // slli s3, s3, 4
            add(19, 19, 14),           // s3 += a4
            store(3, t4, t3, 0),       // map A
            sfence,
            addi(12, 12, -1), // a2 -= 1
        ]);
        let n = p.len();
        p.push(branch(1, 12, 0, -4 * (n - head) as i32)); // bne a2, zero, head
        p.push(addi(20, 0, 7));
        p.push(ECALL);
        p.resize(stop as usize / 4, 0);
        p.extend(STOP);
        let setup = |bus: &DmaBus| {
            let put64 = |at: u64, v: u64| bus.put(RAM + at, &[v as u32, (v >> 32) as u32]);
            put64(root, pte(RAM + l1, 1));
            put64(root + 16, pte(RAM, 0xcf)); // RAM's own addresses, V R W X A D
            put64(l1, pte(RAM + l0, 1));
            put64(l0 + 9 * 8, pte(RAM + pa, 0xc7));
            put64(pa, 1);
            put64(pb, 2);
        };
        for jit in [false, true] {
            let x = run_prog(&p, setup, jit);
            assert_eq!((x[9], x[19], x[20]), (0x1111, 0x2222, 7), "jit {jit}");
        }
    }

    #[test]
    fn csr_accesses_in_place_match_the_interpreter() {
        // M-mode: scratch CSRs written, swapped and read in place; then
        // an interrupt made pending (SSIP, not delegated) and enabled
        // (MIE) by `csrs mie` must be taken right after it.
        let stop = 0x200;
        let mut p = Vec::new();
        p.extend(la(T1, stop));
        p.push(csr(1, 0, T1, 0x305)); // csrw mtvec, t1
        p.push(addi(10, 0, 11));
        p.push(addi(11, 0, 22));
        p.push(csr(1, 0, 10, 0x340)); // csrw mscratch, a0
        p.push(csr(1, 12, 11, 0x340)); // csrrw a2, mscratch, a1
        p.push(csr(2, 13, 0, 0x340)); // csrr a3, mscratch
        p.push(csr(1, 0, 12, 0x140)); // csrw sscratch, a2
        p.push(csr(7, 14, 5, 0x140)); // csrrci a4, sscratch, 5
        p.push(csr(2, 15, 0, 0x140)); // csrr a5, sscratch
        p.push(addi(T0, 0, 2));
        p.push(csr(2, 0, T0, 0x344)); // csrs mip, t0: SSIP pending
        p.push(csr(6, 0, 8, 0x300)); // csrsi mstatus, 8: MIE
        p.push(addi(16, 0, 1)); // a6 = 1
        p.push(csr(2, 0, T0, 0x304)); // csrs mie, t0: SSIE
        let at = RAM + 4 * p.len() as u64;
        p.push(addi(16, 0, 2)); // not reached
        p.push(ECALL);
        p.resize(stop as usize / 4, 0);
        p.extend(STOP3);
        let interp = run_prog(&p, |_| {}, false);
        let jit = run_prog(&p, |_| {}, true);
        assert_eq!(interp, jit);
        assert_eq!(
            (jit[12], jit[13], jit[14], jit[15], jit[16]),
            (11, 22, 11, 10, 1)
        );
        assert_eq!((jit[18], jit[19]), (1 << 63 | 1, at));
    }

    #[test]
    fn a_chained_call_to_another_page_sees_code_a_device_wrote() {
        // The same call site (to a function in another page, a guarded
        // chained exit once patched) runs twice; between the two, the
        // device rewrites the function and fence.i makes it visible.
        let p = [
            0x0000_0493, // addi s1, x0, 0
            0x0020_0913, // addi s2, x0, 2
            0x1000_02b7, // lui t0, 0x10000
            0x7f50_00ef, // 12: jal ra, f (0x1000)
            0x0014_9493, // slli s1, s1, 1
            0x00a4_84b3, // add s1, s1, a0
            0x0002_a023, // sw zero, 0(t0): the device rewrites f
            0x0000_100f, // fence.i
            0xfff9_0913, // addi s2, s2, -1
            0xfe09_14e3, // bne s2, zero, 12
            0x0002_a423, // sw zero, 8(t0): stop
            0x0000_006f, // j .
        ];
        for jit in [false, true] {
            let x = run_prog(&p, |bus| bus.put(RAM + 0x1000, &F1), jit);
            // 1, then 2: s1 = 1 * 2 + 2.
            assert_eq!(x[9], 4, "jit {jit}");
        }
    }

    fn jal(rd: u32, off: i32) -> u32 {
        let o = off as u32;
        (o >> 20 & 1) << 31
            | (o >> 1 & 0x3ff) << 21
            | (o >> 11 & 1) << 20
            | (o >> 12 & 0xff) << 12
            | rd << 7
            | 0x6f
    }
    fn jalr(rd: u32, rs1: u32) -> u32 {
        itype(0x67, 0, rd, rs1, 0)
    }

    #[test]
    fn a_predicted_return_sees_its_page_mapped_elsewhere() {
        // Sv39, S-mode: code at VA 0x9000 calls f, which returns through
        // a `ret` at VA 0x9020. The first call returns into page A
        // (predicted, and the return landing gets patched to A's
        // block); the second call remaps 0x9000 to page B (sfence.vma,
        // then the `ret` in B fills the fetch TLB with it): the same
        // predicted return address must now run B's code.
        let (root, l1, l0, pa, pb) = (0x8000u64, 0xa000u64, 0xb000u64, 0xc000u64, 0xd000u64);
        let pte = |pa: u64, flags: u64| (pa >> 12) << 10 | flags;
        let extra = sv39_on(root);
        let (s, stop, f) = (0x100, 0x300, 0x400);
        let mut p = to_s(stop, s, &extra);
        p.resize(s as usize / 4, 0);
        let (t3, t4, t5, t6, s4) = (28, 29, 30, 31, 20);
        p.push(lui(T2, 0x9));
        p.extend(li_ram(t3, RAM + l0 + 9 * 8));
        p.extend(li_ram(t4, pte(RAM + pa, 0xcf)));
        p.extend(li_ram(t5, pte(RAM + pb, 0xcf)));
        p.extend(li_ram(s4, RAM + f));
        p.push(lui(t6, 0x9));
        p.push(addi(t6, t6, 0x20));
        p.push(addi(12, 0, 3)); // a2 = 3 passes at most
        p.push(jalr(0, T2));
        p.resize(stop as usize / 4, 0);
        p.extend(STOP);
        p.resize(f as usize / 4, 0);
        p.extend([
            store(3, t4, t3, 0),    // sd t4, 0(t3): map A or B
            0x1200_0073 | T2 << 15, // sfence.vma t2
            jalr(0, t6),            // to the `ret` at 0x9020
        ]);
        let page_a = [
            jalr(1, s4),           // call f
            addi(10, 10, 1),       // a0 += 1
            addi(t4, t5, 0),       // the next call maps B
            addi(12, 12, -1),      // a2 -= 1
            branch(1, 12, 0, -16), // bne a2, zero, the call
            ECALL,
        ];
        let page_b = [jalr(1, s4), addi(10, 10, 100), ECALL];
        let ret = [0x0000_8067]; // jalr x0, 0(ra)
        let setup = |bus: &DmaBus| {
            let put64 = |at: u64, v: u64| bus.put(RAM + at, &[v as u32, (v >> 32) as u32]);
            put64(root, pte(RAM + l1, 1));
            put64(root + 16, pte(RAM, 0xcf)); // RAM's own addresses, V R W X A D
            put64(l1, pte(RAM + l0, 1));
            put64(l0 + 9 * 8, pte(RAM + pa, 0xcf));
            bus.put(RAM + pa, &page_a);
            bus.put(RAM + pa + 0x20, &ret);
            bus.put(RAM + pb, &page_b);
            bus.put(RAM + pb + 0x20, &ret);
        };
        let interp = run_prog(&p, setup, false);
        let jit = run_prog(&p, setup, true);
        assert_eq!(interp, jit);
        // Once through A, then into B (ecall from S: mcause 9).
        assert_eq!((jit[10], jit[12], jit[18]), (101, 2, 9));
    }

    #[test]
    fn a_predicted_return_sees_code_rewritten_at_its_address() {
        // M-mode: f (in another page) stores a word at its caller's
        // return address, runs fence.i and returns. The first pass
        // stores the word already there (and patches the return's
        // landing); the second changes it: the predicted return must
        // run the new instruction.
        let (t3, t4, t5) = (28, 29, 30);
        let mut p = Vec::new();
        p.extend(la(t3, 32)); // t3 = the return address below
        p.extend([lui(t4, 0x150), addi(t4, t4, 0x513)]); // addi a0, a0, 1
        p.extend([lui(t5, 0x6450), addi(t5, t5, 0x513)]); // addi a0, a0, 100
        p.push(addi(12, 0, 2)); // a2 = 2 passes
        assert_eq!(p.len(), 7);
        p.extend([
            jal(1, 0x1000 - 28), // 28: jal ra, f
            0x0015_0513,         // 32: addi a0, a0, 1 (rewritten)
            addi(t4, t5, 0),     // the next call writes the new word
            addi(12, 12, -1),
            branch(1, 12, 0, -16), // bne a2, zero, the call
            0x1000_02b7,           // lui t0, 0x10000
            0x0002_a423,           // sw zero, 8(t0): stop
            0x0000_006f,           // j .
        ]);
        let f = [
            store(2, t4, t3, 0), // sw t4, 0(t3)
            0x0000_100f,         // fence.i
            0x0000_8067,         // ret
        ];
        let interp = run_prog(&p, |bus| bus.put(RAM + 0x1000, &f), false);
        let jit = run_prog(&p, |bus| bus.put(RAM + 0x1000, &f), true);
        assert_eq!(interp, jit);
        assert_eq!(jit[10], 101);
    }

    #[test]
    fn a_block_added_later_to_a_page_sees_a_device_restore_old_bytes() {
        // f (0x1000) is translated first: the page's copy holds Y at
        // 0x1800. The device writes X there, fence.i (f's range still
        // matches), g (0x1800) is translated from X. The device writes Y
        // back, fence.i: g must now run Y.
        let p = [
            0x1000_02b7,          // 0: lui t0, 0x10000
            jal(1, 0x1000 - 4),   // 4: call f
            lui(6, 0x700),        // 8: X = addi a0, zero, 7
            addi(6, 6, 0x513),    // 12: t1 = X
            store(2, 6, 5, 0x20), // 16: device writes X at 0x1800
            0x0000_100f,          // 20: fence.i
            jal(1, 0x1000 - 24),  // 24: call f
            jal(1, 0x1800 - 28),  // 28: call g
            addi(8, 10, 0),       // 32: s0 = a0
            lui(6, 0x500),        // 36: Y = addi a0, zero, 5
            addi(6, 6, 0x513),    // 40: t1 = Y
            store(2, 6, 5, 0x20), // 44: device writes Y back
            0x0000_100f,          // 48: fence.i
            jal(1, 0x1800 - 52),  // 52: call g
            addi(9, 10, 0),       // 56: s1 = a0
            0x0002_a423,          // 60: stop
            0x0000_006f,          // 64: j .
        ];
        let setup = |bus: &DmaBus| {
            bus.put(RAM + 0x1000, &F1);
            bus.put(RAM + 0x1800, &[0x0050_0513, 0x0000_8067]);
        };
        let interp = run_prog(&p, setup, false);
        let jit = run_prog(&p, setup, true);
        assert_eq!((interp[8], interp[9]), (7, 5));
        assert_eq!((jit[8], jit[9]), (7, 5));
    }

    #[test]
    fn a_block_reading_device_written_bytes_inside_a_checked_range_drops_the_page() {
        // f (0x17fc..0x1808) is translated. The device writes X over its
        // second instruction (no fence), g is translated at that address
        // (from X), then fence.i: f, made from the old bytes, must not pass
        // the check on a copy that now holds X.
        let f = [addi(10, 0, 5), addi(11, 0, 1), 0x0000_8067]; // a1 = 1; ret
        let p = [
            0x1000_02b7,          // 0: lui t0, 0x10000
            jal(1, 0x17fc - 4),   // 4: call f
            lui(6, 0x200),        // 8: X = addi a1, zero, 2
            addi(6, 6, 0x593),    // 12
            store(2, 6, 5, 0x20), // 16: device writes X at 0x1800
            jal(1, 0x1800 - 20),  // 20: call g (X; ret)
            addi(8, 11, 0),       // 24: s0 = a1
            0x0000_100f,          // 28: fence.i
            jal(1, 0x17fc - 32),  // 32: call f
            addi(9, 11, 0),       // 36: s1 = a1
            0x0002_a423,          // 40: stop
            0x0000_006f,          // 44: j .
        ];
        let setup = |bus: &DmaBus| bus.put(RAM + 0x17fc, &f);
        let interp = run_prog(&p, setup, false);
        let jit = run_prog(&p, setup, true);
        assert_eq!((interp[8], interp[9]), (2, 2));
        assert_eq!((jit[8], jit[9]), (2, 2));
    }

    #[test]
    fn pages_rechecked_by_the_inline_dispatch_see_code_a_device_wrote() {
        // fence.i on every pass: the call to f (another page) finds
        // f's page last checked before it; the dispatch compares the page
        // in place (unchanged on the second pass), until the device
        // rewrites f (on the second pass), after which the third call
        // must run the new code.
        let p = [
            addi(9, 0, 0),           // s1 = 0
            addi(18, 0, 3),          // s2 = 3 passes
            0x1000_02b7,             // lui t0, 0x10000
            addi(19, 0, 1),          // s3 = 1
            jal(1, 0x1000 - 16),     // 16: jal ra, f
            itype(0x13, 1, 9, 9, 4), // slli s1, s1, 4
            add(9, 9, 10),           // s1 += a0
            addi(18, 18, -1),        // s2 -= 1
            branch(1, 18, 19, 8),    // bne s2, s3, the fence
            0x0002_a023,             // sw zero, 0(t0): the device rewrites f
            0x0000_100f,             // fence.i
            branch(1, 18, 0, -28),   // bne s2, zero, the call
            0x0002_a423,             // sw zero, 8(t0): stop
            0x0000_006f,             // j .
        ];
        let interp = run_prog(&p, |bus| bus.put(RAM + 0x1000, &F1), false);
        let jit = run_prog(&p, |bus| bus.put(RAM + 0x1000, &F1), true);
        assert_eq!(interp, jit);
        assert_eq!(jit[9], 0x112);
    }

    #[test]
    fn fence_i_sees_code_a_device_wrote() {
        // f ran translated before the device rewrote it: after fence.i
        // the JIT must run the new code, as the interpreter does.
        assert_eq!(run(false), (1, 2));
        assert_eq!(run(true), (1, 2));
    }
}
