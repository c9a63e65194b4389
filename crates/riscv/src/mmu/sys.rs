//! The system-mode memory path: Sv39/Sv48 page walk, hardware A/D
//! update, and a direct-mapped TLB per translation regime, over a
//! machine's [`Bus`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::{access_fault, misaligned, page_fault, rd, wr, Acc, Mem, OFF_MASK};
use crate::cpu::{mstatus, Core, Priv, Trap};
use crate::decode::{decode, decode_c, Insn};
use crate::mem::{Bus, CodeMap, RamRegion};
use crate::PAGE_SIZE;

pub(crate) const TLB_SIZE: usize = 4096;
/// Translation regimes with their own TLB: U, S, S with SUM, M (bare).
const REGIMES: usize = 4;
/// Tag flag: the page is MMIO (never matches a plain vpn).
const MMIO: u64 = 1 << 63;
const INVALID: u64 = u64::MAX;

/// A TLB entry. `repr(C)`: the JIT's generated code reads `tag_r`,
/// `tag_w`, `addend` and `code` at fixed offsets; 64 bytes, aligned: a
/// lookup touches one cache line, and generated code finds an entry by
/// masking the address shifted (48 bytes took a multiplication more).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Entry {
    pub(crate) tag_r: u64,
    pub(crate) tag_w: u64,
    pub(crate) tag_x: u64,
    /// host address of the page minus its virtual address (RAM only).
    pub(crate) addend: usize,
    pub(crate) pa_page: u64,
    pub(crate) code: *const AtomicU8,
}

const EMPTY: Entry = Entry {
    tag_r: INVALID,
    tag_w: INVALID,
    tag_x: INVALID,
    addend: 0,
    pa_page: 0,
    code: std::ptr::null(),
};

/// A hart's TLBs.
pub(crate) struct Tlb {
    /// The entries, per regime (none before the first [`SysMem`]: a
    /// user-mode hart never uses them, and writing their megabyte at
    /// each process start was 8% of the CPU time of a shell script
    /// running short commands).
    e: Box<[[Entry; TLB_SIZE]]>,
    /// Per regime, which entries came from a superpage (a bit per entry)
    /// and its level (1: 2 MiB, 2: 1 GiB, 3: 512 GiB): `sfence.vma` of
    /// one address must also drop the entries of the other 4 KiB pages of
    /// a superpage holding it (they share its leaf PTE).
    big: [[u64; TLB_SIZE / 64]; REGIMES],
    level: Box<[[u8; TLB_SIZE]]>,
    /// Per regime, the superpages (virtual page number shifted right by
    /// 9 * level, and the level) entries may have come from since the
    /// last flush: a one-address fence outside all of them (most: user
    /// and vmalloc pages) skips the scan of `big`.
    supers: [Vec<(u64, u8)>; REGIMES],
    /// Per regime, the entries filled since the last flush (possibly
    /// repeated), so that a flush clears those rather than the whole
    /// table: a big table stays cheap to flush.
    filled: [Vec<u16>; REGIMES],
    /// Stands in for the code mark of RAM the code map does not cover.
    no_code: Box<AtomicU8>,
}

// SAFETY: the raw pointers point into the machine's CodeMap and RAM, which
// outlive every run of the hart; the TLB is only used by its own hart.
unsafe impl Send for Tlb {}

impl Tlb {
    /// TLBs with no entries allocated yet (see [`Tlb::ensure`]).
    pub fn new() -> Self {
        Tlb {
            e: Box::new([]),
            big: [[0; TLB_SIZE / 64]; REGIMES],
            level: Box::new([]),
            filled: Default::default(),
            supers: Default::default(),
            no_code: Box::new(AtomicU8::new(0)),
        }
    }

    /// Allocates the entries, all empty, if not done yet.
    fn ensure(&mut self) {
        if self.e.is_empty() {
            // (Built on the heap, not as a 1 MiB array on the stack.)
            self.e = vec![[EMPTY; TLB_SIZE]; REGIMES].into_boxed_slice();
            self.level = vec![[0; TLB_SIZE]; REGIMES].into_boxed_slice();
        }
    }

    pub fn flush(&mut self) {
        for (r, filled) in self.e.iter_mut().zip(self.filled.iter_mut()) {
            if filled.len() >= TLB_SIZE / 4 {
                r.fill(EMPTY);
            } else {
                for &i in filled.iter() {
                    r[i as usize] = EMPTY;
                }
            }
            filled.clear();
        }
        self.big = [[0; TLB_SIZE / 64]; REGIMES];
        for s in self.supers.iter_mut() {
            s.clear();
        }
    }

    /// `sfence.vma` of virtual address `va` (any address space): drops
    /// every entry of every regime whose leaf PTE maps `va`.
    pub fn flush_page(&mut self, va: u64) {
        let vpn = va >> 12;
        for r in 0..self.e.len() {
            let i = (vpn as usize) & (TLB_SIZE - 1);
            if entry_vpn(&self.e[r][i]) == Some(vpn) {
                self.e[r][i] = EMPTY;
            }
            let before = self.supers[r].len();
            self.supers[r].retain(|&(base, level)| vpn >> (9 * level as u32) != base);
            if self.supers[r].len() == before {
                continue;
            }
            for w in 0..TLB_SIZE / 64 {
                let mut bits = self.big[r][w];
                while bits != 0 {
                    let j = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let shift = 9 * self.level[r][j] as u32;
                    match entry_vpn(&self.e[r][j]) {
                        Some(v) if v >> shift != vpn >> shift => {}
                        _ => {
                            self.e[r][j] = EMPTY;
                            self.big[r][w] &= !(1 << (j % 64));
                        }
                    }
                }
            }
        }
    }
}

/// The virtual page an entry maps, if it maps any.
fn entry_vpn(e: &Entry) -> Option<u64> {
    [e.tag_r, e.tag_w, e.tag_x]
        .into_iter()
        .find(|&t| t != INVALID)
        .map(|t| t & !MMIO)
}

/// The system-mode memory path for one `run_system` call.
pub(crate) struct SysMem<'a, B: Bus> {
    bus: &'a B,
    ram: &'a [RamRegion],
    code_map: &'a CodeMap,
    tlb: &'a mut Tlb,
    /// Regime index for data accesses and fetches.
    data: usize,
    fetch: usize,
    data_prv: Priv,
}

fn regime(p: Priv, sum: bool) -> usize {
    match p {
        Priv::User => 0,
        Priv::Supervisor => 1 + sum as usize,
        Priv::Machine => 3,
    }
}

impl<'a, B: Bus> SysMem<'a, B> {
    pub fn new(bus: &'a B, tlb: &'a mut Tlb) -> Self {
        tlb.ensure();
        SysMem {
            bus,
            ram: bus.ram(),
            code_map: bus.code_map(),
            tlb,
            data: 3,
            fetch: 3,
            data_prv: Priv::Machine,
        }
    }

    pub fn flush(&mut self) {
        self.tlb.flush();
    }

    /// Drops the translations of `va` (see [`Tlb::flush_page`]).
    pub fn flush_page(&mut self, va: u64) {
        self.tlb.flush_page(va);
    }

    /// The TLB of data accesses in the current regime (for the JIT; stable
    /// until the next `update_modes`).
    pub fn data_tlb(&self) -> *const Entry {
        self.tlb.e[self.data].as_ptr()
    }

    /// The TLB of instruction fetches in the current regime (for the JIT).
    pub fn fetch_tlb(&self) -> *const Entry {
        self.tlb.e[self.fetch].as_ptr()
    }

    pub fn code_map(&self) -> &'a CodeMap {
        self.code_map
    }

    /// Recomputes the regimes after a privilege or mstatus change.
    pub fn update_modes(&mut self, core: &Core) {
        let ms = core.csr.mstatus;
        let dp = if core.prv == Priv::Machine && ms & mstatus::MPRV != 0 {
            Priv::from_bits((ms & mstatus::MPP) >> mstatus::MPP_SHIFT)
        } else {
            core.prv
        };
        self.data_prv = dp;
        self.data = regime(dp, ms & mstatus::SUM != 0);
        self.fetch = regime(core.prv, false);
        if core.tlb_dirty {
            self.tlb.flush();
        }
    }

    fn ram_host(&self, pa: u64) -> Option<*mut u8> {
        self.ram.iter().find_map(|r| {
            let off = pa.wrapping_sub(r.base());
            // SAFETY: pointer arithmetic, off < len: inside the region.
            (off < r.len()).then(|| unsafe { r.host().add(off as usize) })
        })
    }

    /// Page walk. Returns the physical page, which of read/write/exec
    /// the TLB may cache for it, and the leaf's level (0: a 4 KiB page).
    fn walk(
        &self,
        core: &Core,
        va: u64,
        acc: Acc,
        prv: Priv,
    ) -> Result<(u64, bool, bool, bool, u8), Trap> {
        let satp = core.csr.satp;
        let mode = satp >> 60;
        if prv == Priv::Machine || mode == 0 {
            return Ok((va & !OFF_MASK, true, true, true, 0));
        }
        let levels: u32 = if mode == 8 { 3 } else { 4 };
        let va_bits = 12 + 9 * levels;
        let top = (va as i64) >> (va_bits - 1);
        if top != 0 && top != -1 {
            return Err(page_fault(acc, va));
        }
        let ms = core.csr.mstatus;
        let sum = ms & mstatus::SUM != 0;
        let mxr = ms & mstatus::MXR != 0;
        'restart: loop {
            let mut a = (satp & ((1 << 44) - 1)) << 12;
            let mut i = levels - 1;
            loop {
                let idx = (va >> (12 + 9 * i)) & 511;
                let pte_addr = a + idx * 8;
                let host = match self.ram_host(pte_addr) {
                    Some(h) => h,
                    None => return Err(access_fault(acc, va)),
                };
                // SAFETY: 8-aligned (page base + idx*8) host pointer into RAM.
                let pte_atomic = unsafe { AtomicU64::from_ptr(host.cast()) };
                let pte = pte_atomic.load(Ordering::Acquire);
                let (v, r, w, x, u) = (
                    pte & 1 != 0,
                    pte & 2 != 0,
                    pte & 4 != 0,
                    pte & 8 != 0,
                    pte & 16 != 0,
                );
                if !v || (!r && w) || pte >> 54 != 0 {
                    return Err(page_fault(acc, va));
                }
                let ppn = (pte >> 10) & ((1 << 44) - 1);
                if !r && !x {
                    if i == 0 {
                        return Err(page_fault(acc, va));
                    }
                    i -= 1;
                    a = ppn << 12;
                    continue;
                }
                if i > 0 && ppn & ((1 << (9 * i)) - 1) != 0 {
                    return Err(page_fault(acc, va));
                }
                let (data_ok, fetch_ok) = match prv {
                    Priv::User => (u, u),
                    _ => (!u || sum, !u),
                };
                let r_ok = data_ok && (r || (mxr && x));
                let w_ok = data_ok && w;
                let x_ok = fetch_ok && x;
                let ok = match acc {
                    Acc::Load => r_ok,
                    Acc::Store => w_ok,
                    Acc::Fetch => x_ok,
                };
                if !ok {
                    return Err(page_fault(acc, va));
                }
                let need = 0x40 | if acc == Acc::Store { 0x80 } else { 0 };
                let mut pte = pte;
                if pte & need != need {
                    if pte_atomic
                        .compare_exchange(pte, pte | need, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        continue 'restart;
                    }
                    pte |= need;
                }
                let page = (ppn | ((va >> 12) & ((1 << (9 * i)) - 1))) << 12;
                return Ok((page, r_ok, w_ok && pte & 0x80 != 0, x_ok, i as u8));
            }
        }
    }

    /// Translates and fills the TLB of `reg`. Returns the entry.
    fn fill(
        &mut self,
        core: &Core,
        va: u64,
        acc: Acc,
        reg: usize,
        prv: Priv,
    ) -> Result<Entry, Trap> {
        let (pa_page, r, w, x, level) = self.walk(core, va, acc, prv)?;
        let vpn = va >> 12;
        let e = match self.ram_host(pa_page) {
            Some(h) => {
                let code = match self.code_map.slot(pa_page) {
                    Some(s) => s as *const AtomicU8,
                    None => &*self.tlb.no_code as *const AtomicU8,
                };
                Entry {
                    tag_r: if r { vpn } else { INVALID },
                    tag_w: if w { vpn } else { INVALID },
                    tag_x: if x { vpn } else { INVALID },
                    addend: (h as usize).wrapping_sub((va & !OFF_MASK) as usize),
                    pa_page,
                    code,
                }
            }
            None => Entry {
                tag_r: if r { vpn | MMIO } else { INVALID },
                tag_w: if w { vpn | MMIO } else { INVALID },
                tag_x: if x { vpn | MMIO } else { INVALID },
                addend: 0,
                pa_page,
                code: std::ptr::null(),
            },
        };
        let i = (vpn as usize) & (TLB_SIZE - 1);
        self.tlb.e[reg][i] = e;
        self.tlb.level[reg][i] = level;
        let filled = &mut self.tlb.filled[reg];
        if filled.len() < TLB_SIZE {
            filled.push(i as u16);
        }
        let bit = 1u64 << (i % 64);
        if level != 0 {
            self.tlb.big[reg][i / 64] |= bit;
            let sp = (vpn >> (9 * level as u32), level);
            if !self.tlb.supers[reg].contains(&sp) {
                self.tlb.supers[reg].push(sp);
            }
        } else {
            self.tlb.big[reg][i / 64] &= !bit;
        }
        Ok(e)
    }

    /// Entry for a data access: from the TLB or a fresh walk.
    fn data_entry(&mut self, core: &Core, va: u64, acc: Acc) -> Result<Entry, Trap> {
        let vpn = va >> 12;
        let e = self.tlb.e[self.data][(vpn as usize) & (TLB_SIZE - 1)];
        let tag = if acc == Acc::Load { e.tag_r } else { e.tag_w };
        if tag & !MMIO == vpn {
            return Ok(e);
        }
        self.fill(core, va, acc, self.data, self.data_prv)
    }

    fn load_slow<const N: usize>(&mut self, core: &mut Core, va: u64) -> Result<u64, Trap> {
        if va & OFF_MASK > PAGE_SIZE - N as u64 {
            // Misaligned across a page boundary: byte by byte.
            let mut v = 0u64;
            for k in 0..N as u64 {
                v |= self.load::<1>(core, va.wrapping_add(k))? << (8 * k);
            }
            return Ok(v);
        }
        let e = self.data_entry(core, va, Acc::Load)?;
        if e.tag_r & MMIO == 0 {
            // SAFETY: RAM page of this entry, access inside the page.
            return Ok(unsafe { rd::<N>(e.addend.wrapping_add(va as usize) as *const u8) });
        }
        self.bus
            .read(e.pa_page | (va & OFF_MASK), N as u8)
            .ok_or_else(|| access_fault(Acc::Load, va))
    }

    fn store_slow<const N: usize>(&mut self, core: &mut Core, va: u64, v: u64) -> Result<(), Trap> {
        if va & OFF_MASK > PAGE_SIZE - N as u64 {
            // Check both pages first so a fault leaves memory untouched.
            self.data_entry(core, va, Acc::Store)?;
            self.data_entry(core, (va | OFF_MASK).wrapping_add(1), Acc::Store)?;
            for k in 0..N as u64 {
                self.store::<1>(core, va.wrapping_add(k), v >> (8 * k))?;
            }
            return Ok(());
        }
        let e = self.data_entry(core, va, Acc::Store)?;
        if e.tag_w & MMIO == 0 {
            self.note_code_store(&e);
            // SAFETY: RAM page of this entry, access inside the page.
            unsafe { wr::<N>(e.addend.wrapping_add(va as usize) as *mut u8, v) };
            return Ok(());
        }
        if self.bus.write(e.pa_page | (va & OFF_MASK), N as u8, v) {
            Ok(())
        } else {
            Err(access_fault(Acc::Store, va))
        }
    }

    fn note_code_store(&self, e: &Entry) {
        // SAFETY: RAM entries point at a live code-map slot (or the TLB's own
        // stand-in).
        let slot = unsafe { &*e.code };
        if slot.load(Ordering::Relaxed) != 0 && slot.swap(0, Ordering::AcqRel) != 0 {
            self.code_map.changed(&[e.pa_page]);
        }
    }

    /// Translates an instruction fetch: physical address and, for RAM, the
    /// host pointer of that byte.
    #[inline]
    pub fn translate_fetch(
        &mut self,
        core: &Core,
        pc: u64,
    ) -> Result<(u64, Option<*mut u8>), Trap> {
        let vpn = pc >> 12;
        let mut e = self.tlb.e[self.fetch][(vpn as usize) & (TLB_SIZE - 1)];
        if e.tag_x & !MMIO != vpn {
            e = self.fill(core, pc, Acc::Fetch, self.fetch, core.prv)?;
        }
        let pa = e.pa_page | (pc & OFF_MASK);
        if e.tag_x & MMIO != 0 {
            Ok((pa, None))
        } else {
            Ok((pa, Some(e.addend.wrapping_add(pc as usize) as *mut u8)))
        }
    }

    fn fetch16(&mut self, core: &Core, va: u64) -> Result<u16, Trap> {
        let (pa, host) = self.translate_fetch(core, va)?;
        match host {
            // SAFETY: host pointer of a RAM byte; va is 2-aligned so both
            // bytes are in the same page.
            Some(h) => Ok(unsafe { h.cast::<u16>().read_unaligned() }),
            None => self
                .bus
                .read(pa, 2)
                .map(|v| v as u16)
                .ok_or_else(|| access_fault(Acc::Fetch, va)),
        }
    }

    /// Fetches and decodes one instruction the slow way (MMIO code, or an
    /// instruction straddling two pages).
    pub fn fetch_slow(&mut self, core: &Core, pc: u64) -> Result<Insn, Trap> {
        let lo = self.fetch16(core, pc)?;
        if lo & 3 != 3 {
            return Ok(decode_c(lo));
        }
        let hi = self.fetch16(core, pc.wrapping_add(2))?;
        Ok(decode(lo as u32 | (hi as u32) << 16))
    }
}

impl<B: Bus> Mem for SysMem<'_, B> {
    #[inline(always)]
    fn load<const N: usize>(&mut self, core: &mut Core, va: u64) -> Result<u64, Trap> {
        let vpn = va >> 12;
        let e = &self.tlb.e[self.data][(vpn as usize) & (TLB_SIZE - 1)];
        if e.tag_r == vpn && (N == 1 || va & OFF_MASK <= PAGE_SIZE - N as u64) {
            // SAFETY: a RAM TLB entry maps this page to live host memory.
            return Ok(unsafe { rd::<N>(e.addend.wrapping_add(va as usize) as *const u8) });
        }
        self.load_slow::<N>(core, va)
    }

    #[inline(always)]
    fn store<const N: usize>(&mut self, core: &mut Core, va: u64, v: u64) -> Result<(), Trap> {
        let vpn = va >> 12;
        let e = &self.tlb.e[self.data][(vpn as usize) & (TLB_SIZE - 1)];
        if e.tag_w == vpn
            && (N == 1 || va & OFF_MASK <= PAGE_SIZE - N as u64)
            // SAFETY: RAM entries carry a live code-mark pointer.
            && unsafe { &*e.code }.load(Ordering::Relaxed) == 0
        {
            // SAFETY: a RAM TLB entry maps this page to live host memory.
            unsafe { wr::<N>(e.addend.wrapping_add(va as usize) as *mut u8, v) };
            return Ok(());
        }
        self.store_slow::<N>(core, va, v)
    }

    fn atomic<const N: usize>(
        &mut self,
        core: &mut Core,
        va: u64,
        store: bool,
    ) -> Result<*mut u8, Trap> {
        let acc = if store { Acc::Store } else { Acc::Load };
        if !va.is_multiple_of(N as u64) {
            return Err(misaligned(acc, va));
        }
        let e = self.data_entry(core, va, acc)?;
        let tag = if store { e.tag_w } else { e.tag_r };
        if tag & MMIO != 0 {
            return Err(access_fault(acc, va));
        }
        if store {
            self.note_code_store(&e);
        }
        Ok(e.addend.wrapping_add(va as usize) as *mut u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const RAM: u64 = 0x8000_0000;
    const RAM_LEN: usize = 8 << 20;
    /// V, R, W, A, D.
    const LEAF: u64 = 0xc7;

    struct TestBus {
        // u64s: page-table entries are read as aligned atomics.
        _mem: Vec<u64>,
        ram: [RamRegion; 1],
        code: CodeMap,
    }

    impl TestBus {
        fn new() -> TestBus {
            let mut mem = vec![0u64; RAM_LEN / 8];
            // SAFETY: the vector lives as long as the bus, which owns it,
            // and is never resized.
            let ram = [unsafe { RamRegion::new(RAM, RAM_LEN as u64, mem.as_mut_ptr().cast()) }];
            let code = CodeMap::new(&ram);
            TestBus {
                _mem: mem,
                ram,
                code,
            }
        }

        fn put(&self, pa: u64, v: u64) {
            // SAFETY: an aligned address inside the RAM region.
            unsafe { *self.ram[0].host().add((pa - RAM) as usize).cast::<u64>() = v };
        }
    }

    impl Bus for TestBus {
        fn ram(&self) -> &[RamRegion] {
            &self.ram
        }
        fn code_map(&self) -> &CodeMap {
            &self.code
        }
        fn read(&self, _: u64, _: u8) -> Option<u64> {
            None
        }
        fn write(&self, _: u64, _: u8, _: u64) -> bool {
            false
        }
    }

    fn pte(pa: u64, flags: u64) -> u64 {
        (pa >> 12) << 10 | flags
    }

    #[test]
    fn sfence_of_one_address_drops_its_superpage_and_only_it() {
        let bus = TestBus::new();
        // Sv39, root at RAM + 0x1000. VA 0x4000_0000: a 2 MiB superpage
        // (root[1] -> L1 at +0x2000, L1[0] a leaf); VA 0x1000: a 4 KiB
        // page (root[0] -> +0x3000, [0] -> +0x4000, [1] a leaf).
        bus.put(RAM + 0x1000 + 8, pte(RAM + 0x2000, 1));
        bus.put(RAM + 0x2000, pte(RAM + 0x20_0000, LEAF));
        bus.put(RAM + 0x1000, pte(RAM + 0x3000, 1));
        bus.put(RAM + 0x3000, pte(RAM + 0x4000, 1));
        bus.put(RAM + 0x4000 + 8, pte(RAM + 0x5000, LEAF));
        bus.put(RAM + 0x20_5000, 0x1111);
        bus.put(RAM + 0x40_5000, 0x2222);
        bus.put(RAM + 0x5000, 0x3333);
        bus.put(RAM + 0x6000, 0x4444);
        let mut core = Core::new(false, Arc::new(crate::Clock::new(10_000_000)));
        core.set_privilege(Priv::Supervisor);
        core.csr.satp = 8 << 60 | (RAM + 0x1000) >> 12;
        let mut tlb = Tlb::new();
        let mut mem = SysMem::new(&bus, &mut tlb);
        mem.update_modes(&core);
        assert_eq!(mem.load::<8>(&mut core, 0x4000_5000), Ok(0x1111));
        assert_eq!(mem.load::<8>(&mut core, 0x1000), Ok(0x3333));
        // Both mappings move; the TLB may keep the old ones until a fence.
        bus.put(RAM + 0x2000, pte(RAM + 0x40_0000, LEAF));
        bus.put(RAM + 0x4000 + 8, pte(RAM + 0x6000, LEAF));
        assert_eq!(mem.load::<8>(&mut core, 0x4000_5000), Ok(0x1111));
        // A fence naming another 4 KiB page of the superpage drops the
        // entry of this one (they share the leaf PTE) and keeps the
        // unrelated page's.
        mem.flush_page(0x4000_0000);
        assert_eq!(mem.load::<8>(&mut core, 0x4000_5000), Ok(0x2222));
        assert_eq!(mem.load::<8>(&mut core, 0x1000), Ok(0x3333));
        mem.flush_page(0x1234);
        assert_eq!(mem.load::<8>(&mut core, 0x1000), Ok(0x4444));
        // A whole flush after page flushes still clears everything.
        bus.put(RAM + 0x4000 + 8, pte(RAM + 0x5000, LEAF));
        mem.flush();
        assert_eq!(mem.load::<8>(&mut core, 0x1000), Ok(0x3333));
    }
}
