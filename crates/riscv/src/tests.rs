//! Unit tests with hand-encoded instructions, run in user mode on a
//! `UserSpace`: every instruction class, precise faults, exits, code
//! invalidation, stop requests and cross-thread atomics.

use std::sync::Arc;

use crate::{perm, Exit, Hart, MemAccess, MemFault, MemFaultKind, UserSpace};

const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;
const RO: u64 = 0x30000;

// ---- encoders ----
fn r(op: u32, f3: u32, f7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn i(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn s(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    ((imm >> 5 & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | 0x23
}
fn b(f3: u32, rs1: u32, rs2: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 12 & 1) << 31)
        | ((o >> 5 & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | ((o >> 1 & 0xf) << 8)
        | ((o >> 11 & 1) << 7)
        | 0x63
}
fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 20 & 1) << 31)
        | ((o >> 1 & 0x3ff) << 21)
        | ((o >> 11 & 1) << 20)
        | ((o >> 12 & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x13, 0, rd, rs1, imm)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}
const ECALL: u32 = 0x73;
const EBREAK: u32 = 0x0010_0073;
const FENCE_I: u32 = 0x0000_100f;

fn space() -> Arc<UserSpace> {
    let sp = UserSpace::new(32).unwrap();
    sp.map_anonymous(CODE, 0x4000, perm::R | perm::W).unwrap();
    sp.map_anonymous(DATA, 0x1000, perm::R | perm::W).unwrap();
    sp.map_anonymous(RO, 0x1000, perm::R).unwrap();
    Arc::new(sp)
}

fn load_code(sp: &UserSpace, at: u64, words: &[u32]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    sp.set_perms(at & !0xfff, 0x1000, perm::R | perm::W)
        .unwrap();
    sp.write(at, &bytes).unwrap();
    sp.set_perms(at & !0xfff, 0x1000, perm::R | perm::W | perm::X)
        .unwrap();
}

/// Runs `words` at CODE until the first exit.
fn run(words: &[u32]) -> (Hart, Exit, Arc<UserSpace>) {
    let sp = space();
    load_code(&sp, CODE, words);
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.pc = CODE;
    let e = h.run_user(&sp);
    (h, e, sp)
}

#[test]
fn alu_loop_and_branches() {
    // a0 = sum(1..=10) with a countdown loop
    let prog = [
        addi(10, 0, 0),                // a0 = 0
        addi(11, 0, 10),               // a1 = 10
        r(0x33, 0, 0, 10, 10, 11),     // loop: a0 += a1
        addi(11, 11, -1),              // a1 -= 1
        b(1, 11, 0, -8),               // bne a1, zero, loop
        lui(12, 0xfffff),              // a2 = -4096
        i(0x13, 5, 13, 12, 0x400 | 4), // srai a3, a2, 4
        i(0x13, 5, 14, 12, 4),         // srli a4, a2, 4
        r(0x33, 2, 0, 15, 12, 0),      // slt a5, a2, zero
        r(0x3b, 0, 0, 16, 12, 12),     // addw a6, a2, a2
        jal(1, 8),                     // jal ra, +8 (skip next)
        addi(10, 0, -1),               // skipped
        ECALL,
    ];
    let (h, e, _) = run(&prog);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(10), 55);
    assert_eq!(h.x(13), (-4096i64 >> 4) as u64);
    assert_eq!(h.x(14), (-4096i64 as u64) >> 4);
    assert_eq!(h.x(15), 1);
    assert_eq!(h.x(16), (-8192i64) as u64);
    assert_eq!(h.x(1), CODE + 44);
    assert_eq!(h.pc, CODE + 48);
    assert_eq!(h.x(0), 0);
}

#[test]
fn loads_stores_all_widths() {
    let prog = [
        lui(5, DATA as u32 >> 12),
        addi(6, 0, -2),       // t1 = 0xff..fe
        s(3, 5, 6, 0),        // sd t1, 0(t0)
        i(0x03, 0, 7, 5, 0),  // lb
        i(0x03, 4, 28, 5, 0), // lbu
        i(0x03, 1, 29, 5, 0), // lh
        i(0x03, 5, 30, 5, 0), // lhu
        i(0x03, 2, 31, 5, 0), // lw
        i(0x03, 6, 10, 5, 0), // lwu
        s(0, 5, 0, 3),        // sb zero, 3(t0)
        i(0x03, 3, 11, 5, 1), // ld misaligned at 1
        ECALL,
    ];
    let (h, e, sp) = run(&prog);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(7), u64::MAX - 1);
    assert_eq!(h.x(28), 0xfe);
    assert_eq!(h.x(29), u64::MAX - 1);
    assert_eq!(h.x(30), 0xfffe);
    assert_eq!(h.x(31), u64::MAX - 1);
    assert_eq!(h.x(10), 0xffff_fffe);
    let mut buf = [0u8; 9];
    sp.read(DATA, &mut buf).unwrap();
    assert_eq!(buf, [0xfe, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(h.x(11), 0x00ff_ffff_ff00_ffff);
}

#[test]
fn mul_div_corner_cases() {
    let prog = [
        addi(5, 0, -1), // t0 = -1
        addi(6, 0, 1),
        i(0x13, 1, 6, 6, 63),    // t1 = i64::MIN
        r(0x33, 4, 1, 10, 6, 5), // div a0 = MIN / -1 = MIN
        r(0x33, 6, 1, 11, 6, 5), // rem a1 = 0
        r(0x33, 4, 1, 12, 6, 0), // div by zero = -1
        r(0x33, 5, 1, 13, 6, 0), // divu by zero = MAX
        r(0x33, 6, 1, 14, 6, 0), // rem by zero = dividend
        r(0x33, 3, 1, 15, 5, 5), // mulhu(-1,-1) = 0xff..fe
        r(0x33, 1, 1, 16, 6, 6), // mulh(MIN,MIN) = 2^62
        r(0x3b, 4, 1, 17, 6, 0), // divw by zero = -1
        addi(7, 0, 1),
        i(0x13, 1, 7, 7, 31),    // t2 = 1 << 31 (i32::MIN as a word)
        r(0x3b, 4, 1, 18, 7, 5), // divw MIN / -1 = MIN (sign-extended)
        r(0x3b, 6, 1, 19, 7, 5), // remw MIN % -1 = 0
        r(0x3b, 6, 1, 20, 5, 0), // remw -1 % 0 = -1
        r(0x3b, 5, 1, 21, 7, 0), // divuw by zero = all ones
        r(0x3b, 7, 1, 22, 7, 0), // remuw by zero = sext(dividend)
        r(0x33, 7, 1, 23, 5, 0), // remu by zero = dividend
        r(0x33, 5, 1, 24, 5, 7), // divu MAX / 2^31
        r(0x33, 6, 1, 25, 5, 6), // rem -1 % MIN = -1
        r(0x33, 4, 1, 26, 6, 7), // div MIN / 2^31 = -2^32
        r(0x3b, 5, 1, 27, 5, 7), // divuw 0xffffffff / 0x80000000 = 1
        ECALL,
    ];
    let (h, e, _) = run(&prog);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(10), i64::MIN as u64);
    assert_eq!(h.x(11), 0);
    assert_eq!(h.x(12), u64::MAX);
    assert_eq!(h.x(13), u64::MAX);
    assert_eq!(h.x(14), i64::MIN as u64);
    assert_eq!(h.x(15), u64::MAX - 1);
    assert_eq!(h.x(16), 1 << 62);
    assert_eq!(h.x(17), u64::MAX);
    assert_eq!(h.x(18), i32::MIN as i64 as u64);
    assert_eq!(h.x(19), 0);
    assert_eq!(h.x(20), u64::MAX);
    assert_eq!(h.x(21), u64::MAX);
    assert_eq!(h.x(22), i32::MIN as i64 as u64);
    assert_eq!(h.x(23), u64::MAX);
    assert_eq!(h.x(24), u64::MAX / (1 << 31));
    assert_eq!(h.x(25), u64::MAX);
    assert_eq!(h.x(26), (-(1i64 << 32)) as u64);
    assert_eq!(h.x(27), 1);
    // The same program translated must agree (the JIT divides inline).
    let sp = space();
    load_code(&sp, CODE, &prog);
    let mut j = Hart::new_user();
    j.set_jit_threshold(1);
    j.set_jit(true);
    j.pc = CODE;
    assert_eq!(j.run_user(&sp), Exit::Ecall);
    for r in 0..32 {
        assert_eq!(j.x(r), h.x(r), "x{r}, translated");
    }
}

#[test]
fn bitmanip_spec_values() {
    let prog = [
        addi(5, 0, 1),
        i(0x13, 1, 5, 5, 40),        // t0 = 1 << 40 (low word zero)
        r(0x1b, 1, 0x30, 10, 5, 1),  // ctzw a0 = 32
        r(0x1b, 1, 0x30, 11, 5, 0),  // clzw a1 = 32
        r(0x13, 1, 0x30, 12, 5, 1),  // ctz a2 = 40
        r(0x13, 5, 0x35, 13, 5, 24), // rev8 (0x6b8) a3
        r(0x33, 2, 0x10, 14, 5, 5),  // sh1add a4 = (t0 << 1) + t0
        r(0x13, 5, 0x14, 15, 5, 7),  // orc.b (0x287) a5
        r(0x33, 1, 0x14, 16, 0, 5),  // bset a6 = 0 | 1 << (t0 & 63) = 1
        ECALL,
    ];
    let (h, e, _) = run(&prog);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(10), 32);
    assert_eq!(h.x(11), 32);
    assert_eq!(h.x(12), 40);
    assert_eq!(h.x(13), (1u64 << 40).swap_bytes());
    assert_eq!(h.x(14), 3 << 40);
    assert_eq!(h.x(15), 0xff << 40);
    assert_eq!(h.x(16), 1);
}

#[test]
fn compressed_instructions() {
    // c.li a0, 5 ; c.addi a0, -1 ; c.mv a1, a0 ; c.slli a1, 3 ; c.add a0, a1 ; c.j +4 ; c.li a0,0 ; ecall
    let halves: [u16; 8] = [
        0x4515, 0x157d, 0x85aa, 0x058e, 0x952e, 0xa011, 0x4501, 0x0001,
    ];
    let mut words = Vec::new();
    for pair in halves.chunks(2) {
        words.push(pair[0] as u32 | (pair[1] as u32) << 16);
    }
    words.push(ECALL);
    let (h, e, _) = run(&words);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(11), 32);
    assert_eq!(h.x(10), 36);
}

#[test]
fn atomics_and_lr_sc() {
    let amo = |f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32| r(0x2f, f3, f5 << 2, rd, rs1, rs2);
    let prog = [
        lui(5, DATA as u32 >> 12),
        addi(6, 0, 7),
        s(3, 5, 6, 0), // [t0] = 7
        addi(7, 0, 5),
        amo(0, 3, 10, 5, 7),       // amoadd.d a0 = 7, [t0] = 12
        amo(0b10000, 2, 11, 5, 0), // amomin.w a1 = 12, [t0] = 0
        amo(2, 3, 12, 5, 0),       // lr.d a2 = 0
        amo(3, 3, 13, 5, 6),       // sc.d a3 = 0 (success), [t0] = 7
        amo(3, 3, 14, 5, 7),       // sc.d without reservation: a4 = 1
        i(0x03, 3, 15, 5, 0),      // ld a5 = 7
        addi(28, 5, 2),
        amo(1, 2, 29, 28, 6), // amoswap.w misaligned -> fault
        ECALL,
    ];
    let (h, e, _) = run(&prog);
    assert_eq!(
        e,
        Exit::MemFault(MemFault {
            addr: DATA + 2,
            access: MemAccess::Store,
            kind: MemFaultKind::Misaligned
        })
    );
    assert_eq!(h.pc, CODE + 44);
    assert_eq!(
        [h.x(10), h.x(11), h.x(12), h.x(13), h.x(14), h.x(15)],
        [7, 12, 0, 0, 1, 7]
    );
}

#[test]
fn faults_are_precise() {
    // load from an unmapped page: pc stays, rd untouched
    let prog = [addi(10, 0, 99), lui(5, 0x50), i(0x03, 3, 10, 5, 8), ECALL];
    let (h, e, _) = run(&prog);
    assert_eq!(
        e,
        Exit::MemFault(MemFault {
            addr: 0x50008,
            access: MemAccess::Load,
            kind: MemFaultKind::Unmapped
        })
    );
    assert_eq!((h.pc, h.x(10)), (CODE + 8, 99));
    // store to a read-only page
    let prog = [lui(5, RO as u32 >> 12), s(2, 5, 0, 4), ECALL];
    let (h, e, _) = run(&prog);
    assert_eq!(
        e,
        Exit::MemFault(MemFault {
            addr: RO + 4,
            access: MemAccess::Store,
            kind: MemFaultKind::Unmapped
        })
    );
    assert_eq!(h.pc, CODE + 4);
    // a misaligned load straddling into an unmapped page faults at the page
    let prog = [lui(5, 0x21), i(0x03, 3, 10, 5, -4), ECALL];
    let (_, e, _) = run(&prog);
    assert_eq!(
        e,
        Exit::MemFault(MemFault {
            addr: 0x21000,
            access: MemAccess::Load,
            kind: MemFaultKind::Unmapped
        })
    );
    // jumping to a non-executable page faults on fetch
    let prog = [lui(5, DATA as u32 >> 12), i(0x67, 0, 0, 5, 0)];
    let (h, e, _) = run(&prog);
    assert_eq!(
        e,
        Exit::MemFault(MemFault {
            addr: DATA,
            access: MemAccess::Fetch,
            kind: MemFaultKind::Unmapped
        })
    );
    assert_eq!(h.pc, DATA);
}

#[test]
fn illegal_ebreak_ecall_exits() {
    let (h, e, _) = run(&[addi(5, 0, 1), 0xffff_ffff]);
    assert_eq!(e, Exit::IllegalInstruction { bits: 0xffff_ffff });
    assert_eq!(h.pc, CODE + 4);
    // 16-bit all-zero is illegal
    let (_, e, _) = run(&[0x0000_0000]);
    assert_eq!(e, Exit::IllegalInstruction { bits: 0 });
    // privileged instructions are illegal in user mode
    let (_, e, _) = run(&[0x3020_0073]);
    assert_eq!(e, Exit::IllegalInstruction { bits: 0x3020_0073 });
    // csrr a0, mstatus is illegal; csrr a0, fcsr is fine
    let (_, e, _) = run(&[0x3000_2573]);
    assert_eq!(e, Exit::IllegalInstruction { bits: 0x3000_2573 });
    let (h, e, _) = run(&[addi(5, 0, 1), EBREAK]);
    assert_eq!((e, h.pc), (Exit::Ebreak, CODE + 4));
    let (mut h, e, sp) = run(&[ECALL, addi(10, 0, 3), ECALL]);
    assert_eq!((e, h.pc), (Exit::Ecall, CODE));
    h.pc += 4;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!((h.x(10), h.pc), (3, CODE + 8));
}

#[test]
fn floating_point_rounding_and_flags() {
    // fcvt.d.l f1, a0 ; fcvt.d.l f2, a1 ; fdiv.d f3, f1, f2 (rm=RUP) ; fmv.x.d a2, f3 ; frflags a3
    let prog = [
        addi(10, 0, 1),
        addi(11, 0, 3),
        r(0x53, 7, 0x69, 1, 10, 2),
        r(0x53, 7, 0x69, 2, 11, 2),
        r(0x53, 3, 0x0d, 3, 1, 2),
        r(0x53, 0, 0x71, 12, 3, 0),
        0x0010_26f3, // csrrs a3, fflags, zero
        ECALL,
    ];
    let (h, e, _) = run(&prog);
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(12), (1.0f64 / 3.0).to_bits() + 1);
    assert_eq!(h.x(13), 1); // NX
}

#[test]
fn self_modifying_code_with_fence_i() {
    // store a new instruction over a later one, fence.i, run it
    let new = addi(10, 0, 42);
    let prog = [
        lui(5, new >> 12),
        addi(
            5,
            5,
            (new & 0xfff) as i32 - if new & 0x800 != 0 { 0x1000 } else { 0 },
        ),
        lui(6, CODE as u32 >> 12),
        s(2, 6, 5, 24),
        FENCE_I,
        addi(10, 0, 0),
        addi(10, 0, 1), // replaced by addi a0, zero, 42
        ECALL,
    ];
    let sp = space();
    load_code(&sp, CODE, &prog);
    sp.set_perms(CODE, 0x1000, perm::R | perm::W | perm::X)
        .unwrap();
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(h.x(10), 42);
}

#[test]
fn external_code_change_invalidates() {
    let sp = space();
    load_code(&sp, CODE, &[addi(10, 0, 1), ECALL]);
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(h.x(10), 1);
    // the loader (linux-user) rewrites the page: cached blocks must go
    load_code(&sp, CODE, &[addi(10, 0, 2), ECALL]);
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(h.x(10), 2);
    // a guest store into a code page also invalidates (no fence.i needed
    // across run calls)
    sp.set_perms(CODE, 0x1000, perm::R | perm::W | perm::X)
        .unwrap();
    sp.write(CODE, &addi(10, 0, 3).to_le_bytes()).unwrap();
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(h.x(10), 3);
}

/// Runs user code from CODE (translated) until another thread, 50 ms
/// later, asks the hart to stop; the stopped hart.
fn run_until_stopped(sp: &UserSpace) -> Hart {
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.set_jit(true);
    h.pc = CODE;
    let ctl = h.control().clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ctl.request_stop();
    });
    assert_eq!(h.run_user(sp), Exit::Stopped);
    t.join().unwrap();
    h
}

#[test]
fn stop_request_interrupts_an_endless_loop() {
    let sp = space();
    load_code(&sp, CODE, &[jal(0, 0)]);
    let h = run_until_stopped(&sp);
    assert_eq!(h.pc, CODE);
}

#[test]
fn atomics_are_atomic_across_threads() {
    // Each thread: 20000 x (amoadd.w on [DATA]) and 20000 x (lr.w/sc.w
    // increment loop on [DATA+64]).
    let amo = |f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32| r(0x2f, f3, f5 << 2, rd, rs1, rs2);
    let prog = [
        lui(5, DATA as u32 >> 12), // t0 = DATA
        addi(6, 5, 64),            // t1 = DATA + 64
        addi(7, 0, 1),             // t2 = 1
        lui(28, 5),                // t3 = 20480 iterations
        amo(0, 2, 0, 5, 7),        // loop: amoadd.w zero, t2, (t0)
        amo(2, 2, 29, 6, 0),       // retry: lr.w t4, (t1)
        addi(29, 29, 1),
        amo(3, 2, 30, 6, 29), // sc.w t5, t4, (t1)
        b(1, 30, 0, -12),     // bnez t5, retry
        addi(28, 28, -1),
        b(1, 28, 0, -24), // bnez t3, loop
        ECALL,
    ];
    let sp = space();
    load_code(&sp, CODE, &prog);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                let mut h = Hart::new_user();
                h.set_jit_threshold(1);
                h.pc = CODE;
                h.run_user(&sp)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Exit::Ecall);
    }
    let mut w = [0u8; 4];
    sp.read(DATA, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), 4 * 20480);
    sp.read(DATA + 64, &mut w).unwrap();
    assert_eq!(u32::from_le_bytes(w), 4 * 20480);
}

/// `csrs mip, SSIP` in M-mode (OpenSBI delivering an IPI) while the PLIC
/// holds SEIP high must not copy the line into the software SEIP bit: once
/// the line drops, SEIP must read clear again.
#[test]
fn csrrs_on_mip_does_not_latch_the_external_line() {
    use crate::cpu::{csr, irq};
    let clock = Arc::new(crate::Clock::new(10_000_000));
    let mut h = Hart::new_system(crate::HartConfig {
        hart_id: 0,
        clock,
        sbi_ecalls: false,
    });
    h.control().raise(irq::SEIP);
    let read = h.csr_read(csr::MIP).unwrap();
    assert_ne!(read & irq::SEIP, 0, "the line is visible in mip");
    let new = h.csr_rmw_base(csr::MIP, read) | irq::SSIP;
    h.csr_write(csr::MIP, new).unwrap();
    h.control().lower(irq::SEIP);
    let after = h.csr_read(csr::MIP).unwrap();
    assert_eq!(after & irq::SEIP, 0, "SEIP latched: {after:#x}");
    assert_ne!(after & irq::SSIP, 0);
}

// ---- the JIT against the interpreter ----

/// xorshift64*: a fixed-seed generator, so a failure names its round.
fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Registers the generator keeps fixed: x5 = DATA + 0x800 (loads, stores,
/// atomics), x6 = RO + 0x800 (stores fault), x8 = a jalr target, x9 = near
/// the end of DATA (accesses through it cross into the unmapped page
/// after it; only `addi x9, x9, imm` moves it), x31 = the loop counter
/// (see `random_program`).
fn random_dest(rng: &mut u64) -> u32 {
    loop {
        let r = (next(rng) % 32) as u32;
        if ![5, 6, 8, 9, 31].contains(&r) {
            return r;
        }
    }
}

/// A random straight-line-and-forward-branch program of `n` instructions
/// over every instruction class the JIT handles natively or hands to the
/// interpreter, followed by ecall padding (branch and jump targets).
fn random_program(rng: &mut u64, n: usize) -> Vec<u32> {
    const ALU: [(u32, u32); 33] = [
        (0, 0),
        (0, 0x20),
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 0),
        (5, 0x20),
        (6, 0),
        (7, 0),
        (0, 1),
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (4, 0x20),
        (6, 0x20),
        (7, 0x20),
        (4, 5),
        (5, 5),
        (6, 5),
        (7, 5),
        (2, 0x10),
        (4, 0x10),
        (6, 0x10),
        (1, 0x30),
        (5, 0x30),
        (1, 0x24),
        (5, 0x24),
        (1, 0x14),
    ];
    const ALUW: [(u32, u32); 11] = [
        (0, 0),
        (0, 0x20),
        (1, 0),
        (5, 0),
        (5, 0x20),
        (0, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (0, 4),
    ];
    const AMO: [u32; 9] = [0, 1, 4, 0xc, 8, 0x10, 0x14, 0x18, 0x1c];
    let mut p = Vec::with_capacity(n + 24);
    for k in 0..n {
        let rd = random_dest(rng);
        let rs1 = (next(rng) % 32) as u32;
        let rs2 = (next(rng) % 32) as u32;
        let imm = (next(rng) % 4096) as i32 - 2048;
        // Memory offsets: often small, so that accesses through one base
        // form the JIT's check groups (some crossing DATA's end via x9).
        let mem_imm = if next(rng) & 1 == 0 {
            imm
        } else {
            (next(rng) % 160) as i32 - 80
        };
        // x8 points into the program's own page (stores there change
        // code: see `run_mode`), x7 near the space's ends, x0 is 0.
        let base = [5, 5, 5, 5, 5, 9, 9, 9, 6, 7, 8, 0][(next(rng) % 12) as usize];
        let w = match next(rng) % 20 {
            0..=4 => {
                let (f3, f7) = ALU[(next(rng) as usize) % ALU.len()];
                r(0x33, f3, f7, rd, rs1, rs2)
            }
            5 => {
                let (f3, f7) = ALUW[(next(rng) as usize) % ALUW.len()];
                r(0x3b, f3, f7, rd, rs1, rs2)
            }
            6..=8 => match next(rng) % 9 {
                f3 @ (0 | 2 | 3 | 4 | 6 | 7) => i(0x13, f3 as u32, rd, rs1, imm),
                1 => i(0x13, 1, rd, rs1, imm & 63),
                5 => i(0x13, 5, rd, rs1, imm & 63),
                _ => i(0x13, 5, rd, rs1, 0x400 | (imm & 63)),
            },
            9 => match next(rng) % 4 {
                0 => i(0x1b, 0, rd, rs1, imm),
                1 => i(0x1b, 1, rd, rs1, imm & 31),
                2 => i(0x1b, 5, rd, rs1, imm & 31),
                _ => i(0x1b, 5, rd, rs1, 0x400 | (imm & 31)),
            },
            10 => lui(rd, (next(rng) & 0xfffff) as u32),
            11 => (((next(rng) & 0xfffff) as u32) << 12) | (rd << 7) | 0x17, // auipc
            12 | 13 => i(0x03, (next(rng) % 7) as u32, rd, base, mem_imm),
            14 | 15 => s((next(rng) % 4) as u32, base, rs2, mem_imm),
            16 => {
                // AMO / LR / SC, word or double, on x5 (aligned).
                let f3 = 2 + (next(rng) % 2) as u32;
                let f5 = match next(rng) % 6 {
                    0 => 2,
                    1 => 3,
                    _ => AMO[(next(rng) as usize) % AMO.len()],
                };
                let rs2 = if f5 == 2 { 0 } else { rs2 };
                r(0x2f, f3, f5 << 2, rd, 5, rs2)
            }
            17 if k > 0 && next(rng).is_multiple_of(4) => {
                // Backward branch inside the block (the JIT jumps within
                // an extended block): its target counts x31 down, so
                // every taken back edge (all of them `x31 > 0`) runs a
                // decrement before the next one and the loop ends.
                let d = 1 + (next(rng) as usize) % k.min(8);
                p[k - d] = addi(31, 31, -1);
                b(4, 0, 31, -4 * d as i32) // blt x0, x31, back
            }
            17 => {
                // Forward branch, within the program or its padding.
                let off = 4 * (1 + (next(rng) % 12) as i32);
                b([0, 1, 4, 5, 6, 7][(next(rng) % 6) as usize], rs1, rs2, off)
            }
            18 => match next(rng) % 4 {
                // Half of them `j` (jal x0), which blocks extend past
                // when the code after it is a target (see
                // `block::extend_user`).
                0 => jal(
                    if next(rng).is_multiple_of(2) { 0 } else { rd },
                    4 * (1 + (next(rng) % 8) as i32),
                ),
                1 => i(0x67, 0, rd, 8, 0), // jalr rd, 0(x8)
                // Moves a group's base between its accesses.
                2 => addi(
                    9,
                    9,
                    [-2040, -16, -8, 8, 16, 2040][(next(rng) % 6) as usize],
                ),
                _ => ECALL,
            },
            _ => {
                // FP: moves in and out, arithmetic, conversions.
                let (fd, fs1, fs2) = (rd, rs1, rs2);
                match next(rng) % 8 {
                    // flw / fld, fsw / fsd
                    6 => i(0x07, 2 + (next(rng) % 2) as u32, fd, base, mem_imm),
                    7 => s(2 + (next(rng) % 2) as u32, base, fs2, mem_imm) ^ 0x23 ^ 0x27,
                    0 => r(0x53, 0, 0x79, fd, rs1, 0),   // fmv.d.x
                    1 => r(0x53, 0, 0x71, rd, fs1, 0),   // fmv.x.d
                    2 => r(0x53, 7, 0x01, fd, fs1, fs2), // fadd.d
                    3 => r(0x53, 7, 0x09, fd, fs1, fs2), // fmul.d
                    4 => r(0x53, 7, 0x0d, fd, fs1, fs2), // fdiv.d
                    _ => r(0x53, 7, 0x61, rd, fs1, 2),   // fcvt.l.d
                }
            }
        };
        p.push(w);
    }
    if next(rng) & 1 == 0 {
        // A loop back to the start (a block that jumps to itself, once
        // extended past its forward branches): x31 counts down on every
        // pass through the start, so the loop ends.
        p[0] = addi(31, 31, -1);
        p.push(b(4, 0, 31, -4 * n as i32)); // blt x0, x31, start
    }
    p.extend(std::iter::repeat_n(ECALL, 24));
    p
}

/// Runs `prog` from random registers with the JIT on or off; returns the
/// hart, its exit and the DATA page.
fn run_mode(prog: &[u32], regs: &[u64; 32], data: &[u8], jit: bool) -> (Hart, Exit, Vec<u8>) {
    let sp = space();
    load_code(&sp, CODE, prog);
    sp.write(DATA, data).unwrap();
    let mut h = Hart::new_user();
    // One program in four is translated from its second run on: the
    // passes of one that loops start interpreted and go on translated.
    h.set_jit_threshold(if regs[31] >> 8 & 3 == 0 { 2 } else { 1 });
    h.set_jit(jit);
    for (r, &v) in regs.iter().enumerate().skip(1) {
        h.set_x(r, v);
    }
    h.set_x(5, DATA + 0x800);
    h.set_x(6, RO + 0x800);
    h.set_x(8, CODE + 4 * (prog.len() as u64 - 4));
    h.set_x(9, DATA + 0xf80 + (regs[9] & 0x78));
    // Around the ends of the (4 GiB) space, where accesses reach into the
    // guards, or anywhere.
    h.set_x(
        7,
        match regs[7] % 3 {
            0 => (1 << 32) - 1 - (regs[7] >> 2 & 0xfff),
            1 => regs[7] >> 2 & 0xfff,
            _ => regs[7],
        },
    );
    h.set_x(31, regs[31] % 4);
    h.pc = CODE;
    let e = h.run_user(&sp);
    let mut page = vec![0u8; 0x1000];
    sp.read(DATA, &mut page).unwrap();
    (h, e, page)
}

#[test]
fn jit_matches_interpreter_on_random_programs() {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut retired = 0;
    for round in 0..3000 {
        let prog = random_program(&mut rng, 40);
        let mut regs = [0u64; 32];
        for v in regs.iter_mut() {
            *v = match next(&mut rng) % 5 {
                0 => next(&mut rng) % 64,
                1 => (next(&mut rng) as i64 % 64) as u64,
                2 => 1u64 << (next(&mut rng) % 64),
                // Division's corner values: zero, -1, MIN (64 and 32 bit).
                3 => [
                    0,
                    u64::MAX,
                    1 << 63,
                    1 << 31,
                    0xffff_ffff,
                    i32::MIN as i64 as u64,
                ][(next(&mut rng) % 6) as usize],
                _ => next(&mut rng),
            };
        }
        let data: Vec<u8> = (0..0x1000).map(|_| next(&mut rng) as u8).collect();
        let (a, ea, ma) = run_mode(&prog, &regs, &data, true);
        let (b, eb, mb) = run_mode(&prog, &regs, &data, false);
        retired += a.pc.saturating_sub(CODE) / 4;
        let ctx = || format!("round {round}: program {prog:08x?}");
        assert_eq!(ea, eb, "exit differs, {}", ctx());
        assert_eq!(a.pc, b.pc, "pc differs, {}", ctx());
        assert_eq!(a.instret(), b.instret(), "instret differs, {}", ctx());
        for r in 0..32 {
            assert_eq!(a.x(r), b.x(r), "x{r} differs, {}", ctx());
        }
        assert_eq!(a.f, b.f, "f registers differ, {}", ctx());
        assert_eq!(a.fcsr(), b.fcsr(), "fcsr differs, {}", ctx());
        assert!(ma == mb, "DATA page differs, {}", ctx());
    }
    // The programs must mostly run, not fault at their first instruction.
    assert!(
        retired > 3000 * 15,
        "programs too short: {retired} instructions"
    );
}

/// A loop inside an extended block (a backward branch to an instruction
/// after the block's start, which the JIT jumps to without leaving the
/// block) still sees another thread's stop request.
#[test]
fn jit_inner_loop_honours_stop_request() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(12, 12, 1),
            b(1, 0, 0, 8), // bne x0, x0: never taken, the block goes on
            addi(10, 10, 1),
            b(1, 10, 0, -4), // bnez a0, back to the addi (not the start)
            ECALL,
        ],
    );
    let h = run_until_stopped(&sp);
    assert_eq!(h.x(12), 1, "the start ran once");
    assert!(h.x(10) > 1000, "the loop ran: {}", h.x(10));
    // Retired: the first two, then two per pass (the pc is at the addi
    // or the branch).
    let passes = h.x(10);
    let expect = 2 + 2 * passes - if h.pc == CODE + 8 { 0 } else { 1 };
    assert_eq!(h.instret(), expect, "pc {:#x}", h.pc);
}

/// A stop request seen at an inner loop's back edge or at the outer
/// loop's head leaves with every register the loops wrote in `Core`
/// (the register cache writes back at attention exits): the counters
/// and instret agree with the pc the hart stopped at.
#[test]
fn jit_stop_in_nested_loop_writes_back_registers() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(11, 0, 100), // outer head: x11 = 100 inner passes
            addi(10, 10, 1),  // inner head: x10 counts inner passes
            addi(11, 11, -1),
            b(1, 11, 0, -8), // bnez x11, inner head
            jal(0, -16),     // outer head
        ],
    );
    let h = run_until_stopped(&sp);
    let (x10, x11) = (h.x(10), h.x(11));
    assert!(x10 > 1000, "the loops ran: {x10}");
    // Inner passes done in the current outer pass, and outer passes done.
    let (i, outer) = match h.pc - CODE {
        0 => (0, x10 / 100),
        4 => (100 - x11, (x10 - (100 - x11)) / 100),
        8 | 12 | 16 => panic!("stopped mid-loop at {:#x}", h.pc),
        _ => unreachable!(),
    };
    assert_eq!((x10 - i) % 100, 0, "x10 {x10}, x11 {x11}, pc {:#x}", h.pc);
    let expect = 302 * outer + if h.pc == CODE { 0 } else { 1 + 3 * i };
    assert_eq!(h.instret(), expect, "x10 {x10}, x11 {x11}, pc {:#x}", h.pc);
}

/// A stop request at the head of a loop inside a block that writes x5
/// only with `addw` (every other pass) leaves x5 whole and extended as
/// the interpreter would have it, whether x5 came in sign-extended (the
/// head's run-time check lets the loop keep it unextended) or not (the
/// check leaves for the block at the head).
#[test]
fn jit_stop_in_a_loop_with_checked_w_register() {
    let addw = |rd, rs1, rs2| r(0x3b, 0, 0, rd, rs1, rs2);
    for x5 in [0x7fff_fff0u64, 0x1_0000_0005, u64::MAX] {
        let sp = space();
        load_code(
            &sp,
            CODE,
            &[
                addi(12, 12, 1),
                addi(10, 10, 1),      // head
                i(0x13, 7, 6, 10, 1), // andi x6, x10, 1
                b(0, 6, 0, 8),        // beqz x6: skip the addw
                addw(5, 5, 6),
                b(1, 10, 0, -16), // bnez x10, head
                ECALL,
            ],
        );
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(true);
        h.set_x(5, x5);
        h.pc = CODE;
        let ctl = h.control().clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            ctl.request_stop();
        });
        assert_eq!(h.run_user(&sp), Exit::Stopped);
        t.join().unwrap();
        let passes = h.x(10);
        assert!(passes > 1000, "the loop ran: {passes}");
        assert_eq!(h.pc, CODE + 4, "stopped at the head");
        let odd = passes.div_ceil(2);
        let want = (x5 as u32).wrapping_add(odd as u32) as i32 as i64 as u64;
        assert_eq!(h.x(5), want, "x5 from {x5:#x}, {passes} passes");
        assert_eq!(h.instret(), 1 + 5 * odd + 4 * (passes / 2));
    }
}

/// Overlapping loops inside a block where only the inner head checks for
/// attention (every pass of the outer loop goes through it): a stop
/// request still ends them, at the inner head, with the counters and
/// instret agreeing.
#[test]
fn jit_stop_in_overlapping_loops_checked_at_one_head() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(12, 12, 1),
            addi(10, 10, 1),      // outer head
            addi(11, 11, 1),      // inner head
            i(0x13, 7, 6, 11, 3), // andi x6, x11, 3
            b(1, 6, 0, -8),       // bnez x6, inner head
            jal(0, -16),          // outer head
        ],
    );
    let h = run_until_stopped(&sp);
    let (x10, x11) = (h.x(10), h.x(11));
    assert!(x11 > 1000, "the loops ran: {x11}");
    assert_eq!(h.pc, CODE + 8, "stopped at the inner head");
    // Each outer pass runs the inner body until x11 is a multiple of 4;
    // the current one has begun.
    assert_eq!(x10, x11 / 4 + 1, "x10 {x10}, x11 {x11}");
    // Retired: 1 + per outer pass 2 (its head, the jal) + 3 per inner
    // pass; the current outer pass has not reached its jal.
    assert_eq!(h.instret(), 1 + 3 * x11 + 2 * x10 - 1);
}

/// A loop the JIT chains to itself still sees another thread's stop
/// request (checked at every block entry).
#[test]
fn jit_chained_loop_honours_stop_request() {
    let sp = space();
    load_code(&sp, CODE, &[addi(10, 10, 1), jal(0, -4)]);
    let h = run_until_stopped(&sp);
    assert!(h.x(10) > 1000, "the loop ran: {}", h.x(10));
}

/// Translated loops poll only their hart's attention word; another
/// thread's change of the code they run (here: the page loses execute
/// permission) raises it (`UserSpace::code_changed`), so each kind of
/// loop leaves and the next fetch faults: a loop inside an extended
/// block, a block branching to its own start, a block chained to itself,
/// a loop inside a block that goes on past a `j`.
#[test]
fn jit_loops_leave_on_another_threads_code_change() {
    let progs: [&[u32]; 4] = [
        &[
            addi(12, 12, 1),
            b(1, 0, 0, 8), // never taken: the block goes on
            addi(10, 10, 1),
            jal(0, -4), // back to the addi, inside the block
        ],
        &[addi(10, 10, 1), b(0, 0, 0, -4)], // beq x0, x0: to the start
        &[addi(10, 10, 1), lui(5, 1), b(1, 0, 0, 8), jal(0, -12)],
        // Entered at its condition: the block goes on past the `j`.
        &[addi(12, 12, 1), jal(0, 8), addi(10, 10, 1), b(0, 0, 0, -4)],
    ];
    for prog in progs {
        let sp = space();
        load_code(&sp, CODE, prog);
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(true);
        h.pc = CODE;
        let sp2 = sp.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            sp2.set_perms(CODE, 0x1000, perm::R | perm::W).unwrap();
        });
        let e = h.run_user(&sp);
        t.join().unwrap();
        assert!(
            matches!(
                e,
                Exit::MemFault(MemFault {
                    access: MemAccess::Fetch,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(h.x(10) > 1000, "the loop ran: {}", h.x(10));
        assert!((CODE..CODE + 4 * prog.len() as u64).contains(&h.pc));
    }
}

/// A loop entered at its condition (`j cond; body: ...; cond: branch
/// body`): the block goes on past the `j` (see `block::extend_user`),
/// the loop runs inside it, and its head still stops on another
/// thread's request with a count that matches the pc.
#[test]
fn jit_loop_past_a_jump_honours_stop_request() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(12, 12, 1),
            jal(0, 8), // to the condition
            addi(10, 10, 1),
            b(0, 0, 0, -4), // beq x0, x0: to the body
            ECALL,
        ],
    );
    let h = run_until_stopped(&sp);
    assert_eq!(h.x(12), 1, "the start ran once");
    let passes = h.x(10);
    assert!(passes > 1000, "the loop ran: {passes}");
    // addi, j, the first branch, then (addi, branch) per pass.
    let expect = match h.pc - CODE {
        8 => 3 + 2 * passes,
        12 => 2 + 2 * passes,
        _ => panic!("stopped at {:#x}", h.pc),
    };
    assert_eq!(h.instret(), expect, "pc {:#x}", h.pc);
}

/// A loop whose condition sits right before a `ret` and jumps over it to
/// the body (`cond: bnez x13, body; ret; body: ...; j cond`): the block
/// goes on past the `ret` (see `block::extend_user`), and the loop inside
/// it still stops on another thread's request with a count that matches
/// the pc.
#[test]
fn jit_loop_past_a_ret_honours_stop_request() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(13, 0, 1),
            b(1, 13, 0, 8),      // cond: bnez x13, body
            i(0x67, 0, 0, 1, 0), // ret
            addi(10, 10, 1),     // body
            jal(0, -12),         // to cond
        ],
    );
    let h = run_until_stopped(&sp);
    let passes = h.x(10);
    assert!(passes > 1000, "the loop ran: {passes}");
    // The li, then (bnez, addi, j) per pass.
    let expect = match h.pc - CODE {
        4 => 1 + 3 * passes,
        12 => 2 + 3 * passes,
        16 => 3 + 3 * passes,
        _ => panic!("stopped at {:#x}", h.pc),
    };
    assert_eq!(h.instret(), expect, "pc {:#x}", h.pc);
}

// ---- host faults of the JIT's inline accesses (see `jit::fault`) ----

/// The host protection of host address `a` as /proc/self/maps shows it
/// ("rw-p", "r--p", "---p").
fn host_prot_at(a: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (range, prot) = (f.next().unwrap(), f.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let lo = usize::from_str_radix(lo, 16).unwrap();
        let hi = usize::from_str_radix(hi, 16).unwrap();
        if (lo..hi).contains(&a) {
            return prot.to_string();
        }
    }
    panic!("{a:#x} is not mapped");
}

/// Runs `prog` with the JIT on and off from the same registers, and
/// checks that both end alike: exit, pc, instret, registers, DATA.
fn same_both_ways(prog: &[u32], setup: impl Fn(&UserSpace)) -> (Hart, Exit) {
    let mut out = Vec::new();
    for jit in [true, false] {
        let sp = space();
        load_code(&sp, CODE, prog);
        sp.set_perms(CODE, 0x1000, perm::R | perm::W | perm::X)
            .unwrap();
        setup(&sp);
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(jit);
        h.pc = CODE;
        let e = h.run_user(&sp);
        let mut page = vec![0u8; 0x1000];
        sp.read(DATA, &mut page).unwrap();
        out.push((h, e, page));
    }
    let (b, a) = (out.pop().unwrap(), out.pop().unwrap());
    assert_eq!(a.1, b.1, "exit");
    assert_eq!(
        (a.0.pc, a.0.instret()),
        (b.0.pc, b.0.instret()),
        "pc, instret"
    );
    for r in 0..32 {
        assert_eq!(a.0.x(r), b.0.x(r), "x{r}");
    }
    assert!(a.2 == b.2, "DATA differs");
    (a.0, a.1)
}

/// Dirty registers, then an access that faults on the host in the middle
/// of a block: the guest sees the fault at that instruction with every
/// earlier result in its registers, as the interpreter gives it.
#[test]
fn jit_host_faults_are_precise() {
    let fault = |addr, access| {
        Exit::MemFault(MemFault {
            addr,
            access,
            kind: MemFaultKind::Unmapped,
        })
    };
    let dirty = [
        addi(10, 0, 1),
        addi(11, 0, 2),
        addi(12, 0, 3),
        addi(13, 0, 4),
    ];
    let cases: [(u32, u32, Exit); 7] = [
        // ld from the unmapped page after DATA
        (
            lui(5, 0x21),
            i(0x03, 3, 14, 5, 8),
            fault(0x21008, MemAccess::Load),
        ),
        // sd into the read-only page
        (
            lui(5, 0x30),
            s(3, 5, 10, 16),
            fault(RO + 16, MemAccess::Store),
        ),
        // a misaligned ld across DATA's end into the unmapped page
        (
            lui(5, 0x21),
            i(0x03, 3, 14, 5, -4),
            fault(0x21000, MemAccess::Load),
        ),
        // a misaligned sw across DATA's end: nothing of it is stored
        (
            lui(5, 0x21),
            s(2, 5, 11, -2),
            fault(0x21000, MemAccess::Store),
        ),
        // negative offset from a small base: below the space (low guard)
        (
            addi(5, 0, 16),
            i(0x03, 3, 14, 5, -32),
            fault(u64::MAX - 15, MemAccess::Load),
        ),
        // x0 base, negative offset
        (
            addi(5, 0, 0),
            i(0x03, 2, 14, 0, -8),
            fault(u64::MAX - 7, MemAccess::Load),
        ),
        // the last byte of the space plus an offset: the high guard
        (
            addi(5, 0, -1),
            i(0x03, 3, 14, 5, 0),
            fault(u64::MAX, MemAccess::Load),
        ),
    ];
    for (set, access, exit) in cases {
        let mut prog = dirty.to_vec();
        prog.extend([set, access, addi(10, 0, 7), ECALL]);
        let (h, e) = same_both_ways(&prog, |_| {});
        assert_eq!(e, exit, "{access:08x}");
        assert_eq!(h.pc, CODE + 4 * 5, "{access:08x}");
        assert_eq!((h.x(10), h.x(13), h.x(14)), (1, 4, 0), "{access:08x}");
    }
    // The high guard of a base just below the space's size (4 GiB here):
    // lui+addiw cannot make it, so the base comes from a load.
    let top = (1u64 << 32) - 4;
    let prog = [
        lui(5, 0x20),
        i(0x03, 3, 6, 5, 0), // x6 = *DATA = size - 4
        addi(10, 0, 5),
        i(0x03, 3, 14, 6, 8),
        ECALL,
    ];
    let (h, e) = same_both_ways(&prog, |sp| sp.write(DATA, &top.to_le_bytes()).unwrap());
    assert_eq!(e, fault(top + 8, MemAccess::Load));
    assert_eq!((h.pc, h.x(10)), (CODE + 12, 5));
}

/// Host protection mirrors the guest's: read-only stays read-only,
/// execute-only is inaccessible (loads fault, fetches work), and a
/// writable page loses host write while it holds translated code, until a
/// store (which drops the translations) gives it back.
#[test]
fn host_protection_mirrors_guest_permissions() {
    let sp = space();
    let host = |a: u64| sp.host_base() as usize + a as usize;
    assert_eq!(host_prot_at(host(DATA)), "rw-p");
    assert_eq!(host_prot_at(host(RO)), "r--p");
    assert_eq!(host_prot_at(host(0x50000)), "---p");
    // The guards around the space.
    assert_eq!(host_prot_at(host(0) - 1), "---p");
    assert_eq!(host_prot_at(host(sp.size())), "---p");
    // Execute-only code runs, but loads from it fault.
    let prog = [
        addi(10, 0, 1),
        lui(5, CODE as u32 >> 12),
        i(0x03, 2, 11, 5, 0),
        ECALL,
    ];
    load_code(&sp, CODE, &prog);
    sp.set_perms(CODE, 0x1000, perm::X).unwrap();
    assert_eq!(host_prot_at(host(CODE)), "---p");
    for jit in [true, false] {
        let mut h = Hart::new_user();
        h.set_jit_threshold(1);
        h.set_jit(jit);
        h.pc = CODE;
        assert_eq!(
            h.run_user(&sp),
            Exit::MemFault(MemFault {
                addr: CODE,
                access: MemAccess::Load,
                kind: MemFaultKind::Unmapped
            })
        );
        assert_eq!((h.pc, h.x(10)), (CODE + 8, 1));
    }
    // Writable code: host read-only once translated, writable again
    // after a store.
    load_code(&sp, CODE, &[addi(10, 0, 1), ECALL]);
    sp.set_perms(CODE, 0x1000, perm::R | perm::W | perm::X)
        .unwrap();
    assert_eq!(host_prot_at(host(CODE)), "rw-p");
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.set_jit(true);
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(host_prot_at(host(CODE)), "r--p");
    sp.write(CODE + 8, &[0; 4]).unwrap();
    assert_eq!(host_prot_at(host(CODE)), "rw-p");
}

/// A guest store into the page its own block runs from (no fence.i): the
/// store faults on the host, the interpreter drops the translations and
/// stores, and the new instruction runs the next time around, with the
/// JIT as without it.
#[test]
fn jit_store_into_running_code_page() {
    let new = addi(10, 10, 100);
    let prog = [
        lui(5, new >> 12),
        addi(
            5,
            5,
            (new & 0xfff) as i32 - if new & 0x800 != 0 { 0x1000 } else { 0 },
        ),
        lui(6, CODE as u32 >> 12),
        addi(12, 0, 2),
        addi(11, 11, 1),   // loop head
        addi(10, 10, 1),   // CODE + 20: becomes addi a0, a0, 100
        s(2, 6, 5, 20),    // sw x5, 20(x6)
        b(1, 11, 12, -12), // bne x11, x12: twice round
        ECALL,
    ];
    let (h, e) = same_both_ways(&prog, |_| {});
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.x(10), 101, "the second pass runs the new instruction");
}

/// Calls and returns as the JIT predicts them (a return-address stack):
/// a recursion 40 deep, a return to an address other than the pushed
/// one, and x5 as the link register, three times over so that every
/// block is translated and chained (and the last pass predicts its
/// returns: the stack lives in DATA, not where x5, the link register,
/// points, whose page holds code, where every store leaves the JIT and
/// empties the return-address stack); the JIT agrees with the
/// interpreter.
#[test]
fn jit_predicted_returns_match_interpreter() {
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    let prog = [
        addi(10, 0, 40),                      // 0: recursion depth
        lui(2, (DATA as u32 + 0x1000) >> 12), // 4: sp = end of DATA
        jal(1, 48),                           // 8: call F (56)
        jal(1, 12),                           // 12: call 24, which returns to 20
        jal(0, 16),                           // 16: (skipped)
        jal(0, 12),                           // 20: -> 32
        addi(1, 1, 4),                        // 24: return address + 4
        jalr(0, 1, 0),                        // 28: returns to 20, not 16
        jal(5, 8),                            // 32: call 40 through x5
        jal(0, 8),                            // 36: -> 44
        jalr(0, 5, 0),                        // 40: returns to 36
        addi(12, 12, -1),                     // 44
        b(1, 12, 0, -48),                     // 48: again from 0 while x12 != 0
        ECALL,                                // 52
        b(0, 10, 0, 28),                      // 56: F: if x10 == 0 goto 84
        addi(2, 2, -16),                      // 60
        s(3, 2, 1, 0),                        // 64: sd ra, 0(sp)
        addi(10, 10, -1),                     // 68
        jal(1, -16),                          // 72: call F
        i(0x03, 3, 1, 2, 0),                  // 76: ld ra, 0(sp)
        addi(2, 2, 16),                       // 80
        addi(11, 11, 1),                      // 84: counts returns
        jalr(0, 1, 0),                        // 88: ret
    ];
    let mut regs = [0u64; 32];
    regs[12] = 3;
    let data = vec![0u8; 0x1000];
    let (a, ea, ma) = run_mode(&prog, &regs, &data, true);
    let (b, eb, mb) = run_mode(&prog, &regs, &data, false);
    assert_eq!(ea, Exit::Ecall);
    assert_eq!(ea, eb);
    assert_eq!(a.pc, CODE + 52);
    assert_eq!(a.x(11), 3 * 41, "returns counted");
    assert_eq!(a.pc, b.pc);
    assert_eq!(a.instret(), b.instret());
    for r in 0..32 {
        assert_eq!(a.x(r), b.x(r), "x{r} differs");
    }
    assert!(ma == mb, "DATA page differs");
}

/// The return-address stack's bounds: a recursion deeper than the stack
/// holds (a push onto a full stack empties it, so the outer returns find
/// it empty), then calls that never return (more than the stack holds),
/// then a call and its return; the JIT agrees with the interpreter.
#[test]
fn jit_return_stack_overflow_matches_interpreter() {
    const STACK: u64 = 0x40000;
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    // More than twice `jit::RAS_DEPTH` (256).
    let depth = 600;
    let prog = [
        lui(2, (STACK as u32 + 0x8000) >> 12), // 0: sp = top of STACK
        addi(10, 0, depth),                    // 4
        jal(1, 28),                            // 8: call F (36)
        addi(13, 0, 700),                      // 12
        jal(1, 4),                             // 16: call 20, never returns
        addi(13, 13, -1),                      // 20
        b(1, 13, 0, -8),                       // 24: again while x13 != 0
        jal(1, 44),                            // 28: call G (72)
        ECALL,                                 // 32
        b(0, 10, 0, 28),                       // 36: F: if x10 == 0 goto 64
        addi(2, 2, -16),                       // 40
        s(3, 2, 1, 0),                         // 44: sd ra, 0(sp)
        addi(10, 10, -1),                      // 48
        jal(1, -16),                           // 52: call F
        i(0x03, 3, 1, 2, 0),                   // 56: ld ra, 0(sp)
        addi(2, 2, 16),                        // 60
        addi(11, 11, 1),                       // 64: counts returns
        jalr(0, 1, 0),                         // 68: ret
        addi(12, 12, 1),                       // 72: G
        jalr(0, 1, 0),                         // 76: ret
    ];
    let (h, e) = same_both_ways(&prog, |sp| {
        sp.map_anonymous(STACK, 0x8000, perm::R | perm::W).unwrap();
    });
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.pc, CODE + 32);
    assert_eq!(h.x(11), depth as u64 + 1, "returns counted");
    assert_eq!((h.x(12), h.x(13)), (1, 0));
}

/// Calls the return-address stack sees in every form: a `jal` whose
/// target lies inside its own (extended) block, the same call as a
/// block of its own (a chained exit, patched after its first run), an
/// indirect `jalr` call through x1 and one through x5 (not after an
/// `auipc`, so through the dispatch), each returning; four times over.
/// The JIT agrees with the interpreter.
#[test]
fn jit_internal_and_indirect_calls_match_interpreter() {
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    let nop = addi(0, 0, 0);
    let prog = [
        addi(10, 0, 4),               // 0: rounds
        jal(0, 12),                   // 4: -> 16 (the block goes on to 16)
        addi(11, 11, 1),              // 8: F
        jalr(0, 1, 0),                // 12: ret
        jal(1, -8),                   // 16: call F, inside the block at 0
        lui(13, (CODE >> 12) as u32), // 20
        addi(13, 13, 64),             // 24: x13 = G
        jalr(1, 13, 0),               // 28: call G
        jalr(5, 13, 8),               // 32: call H through x5
        addi(10, 10, -1),             // 36
        b(1, 10, 0, -24),             // 40: again from 16 while x10 != 0
        ECALL,                        // 44
        nop,                          // 48
        nop,                          // 52
        nop,                          // 56
        nop,                          // 60
        addi(12, 12, 1),              // 64: G
        jalr(0, 1, 0),                // 68: ret
        addi(14, 14, 1),              // 72: H
        jalr(0, 5, 0),                // 76: ret through x5
    ];
    let (h, e) = same_both_ways(&prog, |_| {});
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.pc, CODE + 44);
    assert_eq!((h.x(11), h.x(12), h.x(14)), (4, 4, 4));
}

/// `longjmp`-like returns: A calls B, B calls C, and C returns straight
/// to A's return address from B (popping B's frame), so the predicted
/// entry on top (C's) misses; A then calls G, whose return is predicted,
/// and A's own return misses on B's entry; five times over, each
/// leaving an entry that is never popped. The JIT agrees with the
/// interpreter.
#[test]
fn jit_longjmp_like_returns_match_interpreter() {
    const STACK: u64 = 0x40000;
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    let ld = |rd, rs1, imm| i(0x03, 3, rd, rs1, imm);
    let nop = addi(0, 0, 0);
    let prog = [
        lui(2, (STACK as u32 + 0x8000) >> 12), // 0: sp = top of STACK
        addi(10, 0, 5),                        // 4: rounds
        jal(1, 24),                            // 8: call A (32)
        addi(10, 10, -1),                      // 12
        b(1, 10, 0, -8),                       // 16: again while x10 != 0
        ECALL,                                 // 20
        nop,                                   // 24
        nop,                                   // 28
        addi(2, 2, -16),                       // 32: A
        s(3, 2, 1, 0),                         // 36: sd ra, 0(sp)
        jal(1, 20),                            // 40: call B (60)
        jal(1, 60),                            // 44: C comes back here; call G (104)
        ld(1, 2, 0),                           // 48
        addi(2, 2, 16),                        // 52
        jalr(0, 1, 0),                         // 56: ret
        addi(2, 2, -16),                       // 60: B
        s(3, 2, 1, 0),                         // 64: sd ra, 0(sp)
        jal(1, 16),                            // 68: call C (84)
        addi(13, 13, 1),                       // 72: never runs
        addi(2, 2, 16),                        // 76
        jalr(0, 1, 0),                         // 80
        ld(1, 2, 0),                           // 84: C: B's return address
        addi(2, 2, 16),                        // 88: B's frame dropped
        addi(12, 12, 1),                       // 92
        jalr(0, 1, 0),                         // 96: "returns" into A
        nop,                                   // 100
        addi(11, 11, 1),                       // 104: G
        jalr(0, 1, 0),                         // 108: ret (predicted)
    ];
    let (h, e) = same_both_ways(&prog, |sp| {
        sp.map_anonymous(STACK, 0x8000, perm::R | perm::W).unwrap();
    });
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.pc, CODE + 20);
    assert_eq!((h.x(11), h.x(12), h.x(13)), (5, 5, 0));
    assert_eq!(h.x(2), STACK + 0x8000);
}

/// Returns after an exit to Rust, which empties the return-address
/// stack: B (called by A, called by the loop) runs a CSR read, which the
/// interpreter runs, then returns, and A returns, both finding the stack
/// empty; the next round's calls push and predict again.
/// The JIT agrees with the interpreter.
#[test]
fn jit_returns_after_exit_to_rust_match_interpreter() {
    const STACK: u64 = 0x40000;
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    let ld = |rd, rs1, imm| i(0x03, 3, rd, rs1, imm);
    let nop = addi(0, 0, 0);
    let prog = [
        lui(2, (STACK as u32 + 0x8000) >> 12), // 0: sp = top of STACK
        addi(10, 0, 4),                        // 4: rounds
        jal(1, 20),                            // 8: call A (28)
        addi(10, 10, -1),                      // 12
        b(1, 10, 0, -8),                       // 16: again while x10 != 0
        ECALL,                                 // 20
        nop,                                   // 24
        addi(2, 2, -16),                       // 28: A
        s(3, 2, 1, 0),                         // 32: sd ra, 0(sp)
        jal(1, 20),                            // 36: call B (56)
        ld(1, 2, 0),                           // 40
        addi(2, 2, 16),                        // 44
        jalr(0, 1, 0),                         // 48: ret
        nop,                                   // 52
        0x0030_2773,                           // 56: B: csrrs a4, fcsr, zero
        addi(12, 12, 1),                       // 60
        jal(0, 4),                             // 64: -> 68
        jalr(0, 1, 0),                         // 68: ret
    ];
    let (h, e) = same_both_ways(&prog, |sp| {
        sp.map_anonymous(STACK, 0x8000, perm::R | perm::W).unwrap();
    });
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.pc, CODE + 20);
    assert_eq!(h.x(12), 4);
}

/// A recursion deeper than the return-address stack holds, three times
/// over (chains patched after the first, so returns are predicted): the
/// push past `jit::RAS_DEPTH` (256) empties the stack, the newest
/// entries' returns are predicted, the older ones find it empty. The JIT
/// agrees with the interpreter.
#[test]
fn jit_repeated_deep_recursion_matches_interpreter() {
    const STACK: u64 = 0x40000;
    let jalr = |rd, rs1, imm| i(0x67, 0, rd, rs1, imm);
    let prog = [
        lui(2, (STACK as u32 + 0x8000) >> 12), // 0: sp = top of STACK
        addi(13, 0, 3),                        // 4: rounds
        addi(10, 0, 300),                      // 8: depth
        jal(1, 20),                            // 12: call F (32)
        addi(13, 13, -1),                      // 16
        b(1, 13, 0, -12),                      // 20: again while x13 != 0
        ECALL,                                 // 24
        addi(0, 0, 0),                         // 28
        b(0, 10, 0, 28),                       // 32: F: if x10 == 0 goto 60
        addi(2, 2, -16),                       // 36
        s(3, 2, 1, 0),                         // 40: sd ra, 0(sp)
        addi(10, 10, -1),                      // 44
        jal(1, -16),                           // 48: call F
        i(0x03, 3, 1, 2, 0),                   // 52: ld ra, 0(sp)
        addi(2, 2, 16),                        // 56
        addi(11, 11, 1),                       // 60: counts returns
        jalr(0, 1, 0),                         // 64: ret
    ];
    let (h, e) = same_both_ways(&prog, |sp| {
        sp.map_anonymous(STACK, 0x8000, perm::R | perm::W).unwrap();
    });
    assert_eq!(e, Exit::Ecall);
    assert_eq!(h.pc, CODE + 24);
    assert_eq!(h.x(11), 3 * 301, "returns counted");
    assert_eq!(h.x(2), STACK + 0x8000);
}

/// A call pushes a predicted return into code that a store then drops
/// (self-modifying code): the return, translated after the flush, must
/// not take the stale prediction, and runs the new code.
#[test]
fn jit_return_after_code_change_runs_new_code() {
    let sp = space();
    let prog = [
        jal(1, 12),          // 0: call 12
        addi(10, 10, 1),     // 4: replaced by addi x10, x10, 100
        ECALL,               // 8
        s(2, 13, 12, 4),     // 12: sw x12, 4(x13)
        FENCE_I,             // 16
        jal(0, 4),           // 20: a block boundary
        i(0x67, 0, 0, 1, 0), // 24: ret
    ];
    load_code(&sp, CODE, &prog);
    sp.set_perms(CODE, 0x1000, perm::R | perm::W | perm::X)
        .unwrap();
    let mut h = Hart::new_user();
    h.set_jit_threshold(1);
    h.set_jit(true);
    h.set_x(12, addi(10, 10, 100) as u64);
    h.set_x(13, CODE);
    h.pc = CODE;
    assert_eq!(h.run_user(&sp), Exit::Ecall);
    assert_eq!(h.x(10), 100);
    assert_eq!(h.instret(), 6);
}

/// Chained jumps to a later block skip its entry checks; a loop of
/// blocks still has a backward jump that checks, so it sees another
/// thread's stop request (and a loop through a predicted return, whose
/// landing always checks, too).
#[test]
fn jit_forward_chains_keep_loops_stoppable() {
    let sp = space();
    load_code(
        &sp,
        CODE,
        &[
            addi(10, 10, 1),     // 0: A
            jal(0, 8),           // 4: forward to C
            ECALL,               // 8
            addi(11, 11, 1),     // 12: C
            jal(1, 12),          // 16: call F (forward)
            jal(0, -20),         // 20: back to A
            ECALL,               // 24
            addi(12, 12, 1),     // 28: F
            i(0x67, 0, 0, 1, 0), // 32: ret
        ],
    );
    let h = run_until_stopped(&sp);
    let (a, c, f) = (h.x(10), h.x(11), h.x(12));
    assert!(a > 1000, "the loop ran: {a}");
    // It stops where blocks are entered through their checks: A (from
    // the backward jump) or the return's landing, with the counts and
    // instret of the passes done.
    let expect = match h.pc - CODE {
        0 => (a, a, 7 * a),
        20 => (a, a, 7 * a - 1),
        pc => panic!("stopped at {pc:#x}"),
    };
    assert_eq!((c, f, h.instret()), expect, "pc {:#x}", h.pc);
}
