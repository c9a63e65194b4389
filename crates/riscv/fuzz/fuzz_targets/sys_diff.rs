//! System mode: the JIT and the interpreter agree. Arbitrary 32-bit
//! instruction words run as a supervisor under Sv39 (control flow made
//! forward-only, system and FP instructions dropped), a few passes over
//! them with some base registers moved between passes, from the same
//! registers and RAM; registers, the retired count and all of RAM must
//! match. Loads, stores and AMOs go through x5..x13 (their base field is
//! remapped), which point into a writable page, its last bytes (the next
//! page read-only), a read-only page, a page not dirty yet, MMIO, the
//! page holding the code (its translations dropped by stores), a user
//! page (accessible only while sstatus.SUM is set, which some words
//! toggle) and near nothing mapped, or (x6, by the input) the last bytes
//! of a writable page followed by one mapped apart in RAM or by its
//! neighbour in RAM, writable; the data pages are mapped at virtual
//! addresses whose TLB entries the code's do not share, so the inline
//! TLB paths run warm: single accesses, groups of accesses through one
//! base checked once, atomics, pages crossed (by single accesses and by
//! groups, on up to 8 passes: enough for a group that cannot reach both
//! pages to be given up, see `jit::emit::mem::sys_groups`). A trap stops the hart
//! (the handler records mcause, mepc and mtval in x18..x20).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use riscv::decode::{decode, Kind};
use riscv::{Bus, Clock, CodeMap, Exit, Hart, HartConfig, HartControl, RamRegion};

const RAM: u64 = 0x8000_0000;
const RAM_LEN: usize = 64 << 10;
const MMIO: u64 = 0x1000_0000;
/// Offsets in RAM: the program, the trap handler, the data pages, the
/// page tables.
const PROG: u64 = 0x1000;
const HANDLER: u64 = 0x3000;
const DATA: u64 = 0x4000;
const RO: u64 = 0x5000;
const CLEAN: u64 = 0x6000;
const ROOT: u64 = 0x8000;
/// Virtual address of the data pages (see `run`).
const VA: u64 = 0x9000;
/// Words of the body at most (it stays below PROG + 0x400, out of the
/// code-page base's reach).
const MAX_WORDS: usize = 128;

struct TestBus {
    _mem: Vec<u64>,
    ram: [RamRegion; 1],
    code: CodeMap,
    hart: OnceLock<Arc<HartControl>>,
}

impl TestBus {
    fn new() -> TestBus {
        let mut mem = vec![0u64; RAM_LEN / 8];
        // SAFETY: the vector lives as long as the bus, which owns it, and
        // is never resized.
        let ram = [unsafe { RamRegion::new(RAM, RAM_LEN as u64, mem.as_mut_ptr().cast()) }];
        TestBus {
            code: CodeMap::new(&ram),
            _mem: mem,
            ram,
            hart: OnceLock::new(),
        }
    }
    fn put(&self, off: u64, bytes: &[u8]) {
        assert!(off as usize + bytes.len() <= RAM_LEN);
        // SAFETY: inside the RAM region (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ram[0].host().add(off as usize),
                bytes.len(),
            )
        };
    }
    fn put_words(&self, off: u64, words: &[u32]) {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.put(off, &b);
    }
    fn put_u64(&self, off: u64, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the whole RAM region, live while the bus is.
        unsafe { std::slice::from_raw_parts(self.ram[0].host(), RAM_LEN) }.to_vec()
    }
}

impl Bus for TestBus {
    fn ram(&self) -> &[RamRegion] {
        &self.ram
    }
    fn code_map(&self) -> &CodeMap {
        &self.code
    }
    fn read(&self, addr: u64, _: u8) -> Option<u64> {
        (addr == MMIO + 0x100).then_some(0x55)
    }
    fn write(&self, addr: u64, _: u8, _: u64) -> bool {
        match addr {
            a if a == MMIO + 0x100 => true,
            a if a == MMIO + 8 => {
                if let Some(c) = self.hart.get() {
                    c.request_stop();
                }
                true
            }
            _ => false,
        }
    }
}

fn itype(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | rs1 << 15 | f3 << 12 | rd << 7 | op
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    itype(0x13, 0, rd, rs1, imm)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    imm20 << 12 | rd << 7 | 0x37
}
fn csr(f3: u32, rd: u32, rs1: u32, n: u32) -> u32 {
    n << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x73
}
fn store(f3: u32, rs2: u32, rs1: u32, imm: i32) -> u32 {
    let o = imm as u32;
    (o >> 5 & 0x7f) << 25 | rs2 << 20 | rs1 << 15 | f3 << 12 | (o & 0x1f) << 7 | 0x23
}
fn add(rd: u32, rs1: u32, rs2: u32) -> u32 {
    rs2 << 20 | rs1 << 15 | rd << 7 | 0x33
}
fn bne(rs1: u32, rs2: u32, off: i32) -> u32 {
    let o = off as u32;
    (o >> 12 & 1) << 31
        | (o >> 5 & 0x3f) << 25
        | rs2 << 20
        | rs1 << 15
        | 1 << 12
        | (o >> 1 & 0xf) << 8
        | (o >> 11 & 1) << 7
        | 0x63
}
/// `rd = v` for `v` below 2^32 with its low 12 bits clear.
fn li_page(rd: u32, v: u64) -> [u32; 3] {
    [
        lui(rd, (v >> 12) as u32 & 0xf_ffff),
        itype(0x13, 1, rd, rd, 32),
        itype(0x13, 5, rd, rd, 32),
    ]
}
const ECALL: u32 = 0x73;
const MRET: u32 = 0x3020_0073;
const NOP: u32 = 0x13;

/// Runs `body` `passes` times, `tail` after each, as a supervisor.
fn run(body: &[u32], tail: &[u32], passes: i32, x: &[u64; 32], jit: bool) -> (Hart, Vec<u8>) {
    let bus = TestBus::new();
    // M-mode at RAM: mtvec, satp = Sv39 at ROOT, MPP = S, mret to PROG.
    let mut p = Vec::new();
    p.extend(li_page(31, RAM + HANDLER));
    p.push(csr(1, 0, 31, 0x305));
    p.extend(li_page(31, RAM + ROOT));
    p.push(itype(0x13, 5, 31, 31, 12));
    p.push(addi(30, 0, 8));
    p.push(itype(0x13, 1, 30, 30, 60));
    p.push(30 << 20 | 31 << 15 | 6 << 12 | 31 << 7 | 0x33);
    p.push(csr(1, 0, 31, 0x180));
    p.extend(li_page(31, RAM + PROG));
    p.push(csr(1, 0, 31, 0x341));
    p.push(addi(31, 0, 1));
    p.push(itype(0x13, 1, 31, 31, 11));
    p.push(csr(2, 0, 31, 0x300));
    p.push(MRET);
    bus.put_words(0, &p);
    // The program: warm the TLB through each base (loads; a store where
    // the page takes one; the user page under SUM), leave the block,
    // then the passes.
    let mut p = Vec::new();
    for b in [5u32, 8, 9, 10, 11] {
        p.push(itype(0x03, 3, 30, b, 0));
    }
    p.push(store(3, 30, 5, 0));
    p.push(csr(2, 0, 4, 0x100));
    p.push(itype(0x03, 3, 30, 13, 0));
    p.push(csr(3, 0, 4, 0x100));
    p.push(0x0040_006f); // jal x0, 4
    p.push(addi(29, 0, passes));
    let head = p.len();
    p.extend_from_slice(body);
    p.extend_from_slice(tail);
    p.push(addi(29, 29, -1));
    p.push(bne(29, 0, -4 * (p.len() - head) as i32));
    p.push(ECALL);
    bus.put_words(PROG, &p);
    // The handler: mcause, mepc, mtval into x18..x20; stop.
    let mut h = vec![
        csr(2, 18, 0, 0x342),
        csr(2, 19, 0, 0x341),
        csr(2, 20, 0, 0x343),
    ];
    h.extend(li_page(31, MMIO));
    h.push(store(3, 0, 31, 8));
    h.push(0x6f);
    bus.put_words(HANDLER, &h);
    let pattern: Vec<u8> = (0..0x1000u32).map(|i| (i * 101 + 7) as u8).collect();
    for page in [DATA, RO, CLEAN] {
        bus.put(page, &pattern);
    }
    // Sv39: RAM's own addresses a gigapage (V R W X A D); from VA: DATA
    // (V R W A D), RO (V R A), nothing, CLEAN (V R W A), the code page
    // (V R W A D), MMIO, DATA again as a user page (V R W U A D); from
    // VA + 0x7000: DATA, CLEAN (V R W A D: apart from DATA in RAM); from
    // VA + 0x9000: DATA, RO (V R W A D: DATA's neighbour in RAM).
    let pte = |off: u64, flags: u64| ((RAM + off) >> 12) << 10 | flags;
    bus.put_u64(ROOT + 16, (RAM >> 12) << 10 | 0xcf);
    bus.put_u64(ROOT, pte(ROOT + 0x1000, 1));
    bus.put_u64(ROOT + 0x1000, pte(ROOT + 0x2000, 1));
    let l0 = ROOT + 0x2000 + 8 * (VA >> 12);
    bus.put_u64(l0, pte(DATA, 0xc7));
    bus.put_u64(l0 + 8, pte(RO, 0x43));
    bus.put_u64(l0 + 24, pte(CLEAN, 0x47));
    bus.put_u64(l0 + 32, pte(PROG, 0xc7));
    bus.put_u64(l0 + 40, (MMIO >> 12) << 10 | 0xc7);
    bus.put_u64(l0 + 48, pte(DATA, 0xd7));
    bus.put_u64(l0 + 56, pte(DATA, 0xc7));
    bus.put_u64(l0 + 64, pte(CLEAN, 0xc7));
    bus.put_u64(l0 + 72, pte(DATA, 0xc7));
    bus.put_u64(l0 + 80, pte(RO, 0xc7));
    let mut hart = Hart::new_system(HartConfig {
        hart_id: 0,
        clock: Arc::new(Clock::new(10_000_000)),
        sbi_ecalls: false,
    });
    bus.hart.set(hart.control().clone()).ok().unwrap();
    hart.set_jit(jit);
    for (r, &v) in x.iter().enumerate().skip(1) {
        hart.set_x(r, v);
    }
    hart.pc = RAM;
    // A program that rewrites itself into a loop runs until this stops
    // it (then the two runs are not compared).
    let control = hart.control().clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            control.request_stop();
            true
        })
    };
    let exit = hart.run_system(&bus);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let timed_out = watchdog.join().unwrap();
    assert!(matches!(exit, Exit::Stopped), "{exit:?}");
    if timed_out {
        hart.pc = u64::MAX;
    }
    (hart, bus.bytes())
}

fuzz_target!(|input: &[u8]| {
    // 16 bytes: base strides and register values; then the words.
    if input.len() < 16 {
        return;
    }
    let (head, rest) = input.split_at(16);
    let mut x = [0u64; 32];
    x[5..14].copy_from_slice(&[
        VA + 0x800, // DATA
        // DATA's end (RO next), or the end of DATA followed by CLEAN or
        // by RO, both writable.
        [VA + 0xff0, VA + 0x7ff0, VA + 0x9ff0, VA + 0xff0][(head[14] & 3) as usize],
        VA + 1,      // DATA's start + 1 (nothing below)
        VA + 0x1100, // RO
        VA + 0x3080, // CLEAN
        VA + 0x5100, // MMIO
        VA + 0x4f00, // the code page (above the program)
        VA + 0x400,  // DATA
        VA + 0x6800, // the user page
    ]);
    x[4] = 1 << 18; // SUM
    for (k, r) in (14..18).enumerate() {
        x[r] = u64::from_le_bytes(head[..8].try_into().unwrap())
            .rotate_left(16 * k as u32)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    // Strides of the data bases between passes (not the code page's,
    // the MMIO's or the user page's: none reaches the program).
    let mut tail = Vec::new();
    for (k, b) in [5u32, 6, 7, 8, 9, 12].into_iter().enumerate() {
        x[b as usize + 15] = [0, 0, 8, 16, 64, 0x800, -16i64 as u64, 0][(head[8 + k] & 7) as usize];
        tail.push(add(b, b, b + 15));
    }
    let passes = 1 + (head[15] & 7) as i32;
    let mut words: Vec<u32> = rest
        .chunks_exact(4)
        .take(MAX_WORDS)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) | 3)
        .collect();
    let n = words.len();
    // (Kinds by range follow their order in `riscv::decode::Kind`.)
    for (k, w) in words.iter_mut().enumerate() {
        let i = decode(*w);
        use Kind::*;
        let mem = matches!(
            i.kind,
            Lb | Lh | Lw | Ld | Lbu | Lhu | Lwu | Sb | Sh | Sw | Sd
        ) || (i.kind as u32 >= LrW as u32 && i.kind as u32 <= AmoMaxuD as u32);
        let branch = matches!(i.kind, Beq | Bne | Blt | Bge | Bltu | Bgeu | Jal);
        let fp = i.kind as u32 >= Flw as u32 && i.kind as u32 <= FcvtDS as u32;
        let system = i.kind as u32 >= Fence as u32 && i.kind as u32 <= Csrrci as u32;
        // Registers the harness relies on: x4 (SUM), x18..x31 but
        // x20..x28 (strides, which the tail reads: any value is fine).
        let reserved = |r: u8| r == 4 || (18..=19).contains(&r) || r >= 29;
        if fp || i.kind == Illegal || i.kind == Jalr || reserved(i.rd) {
            *w = NOP;
        } else if system {
            // Only sstatus.SUM set or cleared (CSRs run in place).
            *w = if *w >> 12 & 1 == 0 {
                csr(2, 0, 4, 0x100)
            } else {
                csr(3, 0, 4, 0x100)
            };
        } else if branch {
            let forward =
                i.imm > 0 && i.imm % 4 == 0 && (k as i64 + (i.imm as i64) / 4) <= n as i64;
            if !forward {
                *w = NOP;
            }
        } else if mem {
            // rs1 (bits 15..19) into x5..x13.
            let b = 5 + ((*w >> 15) & 31) % 9;
            *w = (*w & !(31 << 15)) | b << 15;
            // Loads and AMOs into a base: sometimes (the group ends).
            if i.rd >= 5 && i.rd <= 13 && (*w >> 7) & 1 == 0 {
                *w = (*w & !(31 << 7)) | 14 << 7;
            }
        }
    }
    let a = run(&words, &tail, passes, &x, true);
    let b = run(&words, &tail, passes, &x, false);
    if a.0.pc == u64::MAX || b.0.pc == u64::MAX {
        return;
    }
    assert_eq!(a.0.instret(), b.0.instret(), "instret");
    for r in 0..32 {
        assert_eq!(a.0.x(r), b.0.x(r), "x{r}");
    }
    assert!(a.1 == b.1, "RAM");
});
