/* Privileged-architecture test, run bare-metal in M-mode at 0x80000000 on
 * the test bus of tests/system.rs: traps, delegation, mret/sret, Sv39 with
 * A/D updates, SUM, MPRV, illegal CSR accesses, timer interrupt with wfi.
 * Ends by writing to the finisher: 0x5555 = pass, (n << 16) | 0x3333 =
 * failed check n. Prints progress on the UART. */
#define FINISHER 0x100000
#define UART     0x10000000
#define MTIMECMP 0x2004000
#define MTIME    0x200bff8

#define FAIL(n) li a0, n; j fail
#define CHECK_EQ(reg, val, n) li t6, val; beq reg, t6, 1f; FAIL(n); 1:

    .section .text
    .globl _start
_start:
    la sp, stack_top
    la t0, m_handler
    csrw mtvec, t0

    /* 1. ecall from M: cause 11, mepc = address of the ecall */
    la t1, 1f
    li s1, 0
    ecall
1:  CHECK_EQ(s1, 11, 1)
    csrr t0, mepc
    bne t0, t1, fail1
    /* 2. illegal CSR: mtval holds the instruction */
    li s1, 0
    .word 0x7ff02573          /* csrr a0, 0x7ff (no such CSR) */
    CHECK_EQ(s1, 2, 2)
    csrr t0, mtval
    CHECK_EQ(t0, 0x7ff02573, 3)
    /* 3. writing a read-only CSR is illegal */
    li s1, 0
    .word 0xf1401073          /* csrw mhartid, zero */
    CHECK_EQ(s1, 2, 4)
    /* 4. misa says RV64 IMAFDC SU */
    csrr t0, misa
    srli t1, t0, 62
    CHECK_EQ(t1, 2, 5)
    li t1, 0x14112d
    and t0, t0, t1
    CHECK_EQ(t0, 0x14112d, 6)

    /* 5. page tables: root at pt_root; gigapage 0x80000000 identity RWX
     *    (S only, A and D set); VA 0x40000000 -> level-1 table -> level-0
     *    table; VA 0x40000000 = user code page (copy of user_code's page),
     *    VA 0x40001000 = user data page (R W U, A/D clear), VA 0x40002000 unmapped. */
    la t0, pt_root
    li t1, 0x80000000
    srli t1, t1, 12
    slli t1, t1, 10
    ori t1, t1, 0xcf          /* V R W X A D */
    sd t1, 16(t0)             /* VPN[2] = 2 */
    la t2, pt_l1
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 8(t0)              /* VPN[2] = 1 -> pt_l1 */
    la t0, pt_l1
    la t2, pt_l0
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 1
    sd t2, 0(t0)
    la t0, pt_l0
    la t2, user_code
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 0x5b          /* V R X U A */
    sd t2, 0(t0)
    la t2, user_data
    srli t2, t2, 12
    slli t2, t2, 10
    ori t2, t2, 0x17          /* V R W U, A/D clear */
    sd t2, 8(t0)

    /* delegate U ecall and page faults to S */
    li t0, (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15)
    csrw medeleg, t0
    csrr t1, medeleg
    CHECK_EQ(t1, (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15), 7)
    la t0, s_handler
    csrw stvec, t0
    /* enter S at s_main */
    li t0, 3 << 11
    csrc mstatus, t0
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, s_main
    csrw mepc, t0
    mret

s_main:
    /* S-mode: mhartid is not accessible */
    li s1, 0
    li s2, 0
    .word 0xf1402573          /* csrr a0, mhartid */
    CHECK_EQ(s2, 0, 8)        /* not delegated: went to M */
    CHECK_EQ(s1, 2, 9)
    /* turn on Sv39 */
    la t0, pt_root
    srli t0, t0, 12
    li t1, 8 << 60
    or t0, t0, t1
    csrw satp, t0
    sfence.vma
    csrr t1, satp
    bne t0, t1, fail10
    /* still running through the identity gigapage */
    /* S reading a U page with SUM=0 faults (load page fault, stval) */
    li s2, 0
    li t0, 0x40001000
    ld t1, 0(t0)
    CHECK_EQ(s2, 13, 11)
    csrr t2, stval
    CHECK_EQ(t2, 0x40001000, 12)
    /* with SUM=1 it works */
    li t0, 1 << 18
    csrs sstatus, t0
    li s2, 0
    li t0, 0x40001000
    ld t1, 0(t0)
    CHECK_EQ(s2, 0, 13)
    CHECK_EQ(t1, 0x1122334455667788, 14)
    li t0, 1 << 18
    csrc sstatus, t0
    /* S cannot execute a U page even with SUM */
    /* enter U at VA 0x40000000 + offset of user_entry within its page */
    la t0, user_entry
    la t1, user_code
    sub t0, t0, t1
    li t1, 0x40000000
    add t0, t0, t1
    csrw sepc, t0
    li t0, 1 << 8
    csrc sstatus, t0          /* SPP = U */
    li s3, 0
    sret
back_in_s:
    /* the user program stored 42 to 0x40001008 and ecalled; its store set D */
    CHECK_EQ(s3, 3, 15)       /* handler saw: load fault, ecall with a0=42, ... */
    la t0, pt_l0
    ld t1, 8(t0)
    andi t1, t1, 0xc0
    CHECK_EQ(t1, 0xc0, 16)    /* A and D set by hardware */
    la t0, user_data
    ld t1, 8(t0)
    CHECK_EQ(t1, 42, 17)
    /* sfence + change mapping: make data page read-only, store must fault */
    la t0, pt_l0
    ld t1, 8(t0)
    andi t1, t1, ~4
    sd t1, 8(t0)
    sfence.vma
    li t0, 1 << 18
    csrs sstatus, t0
    li s2, 0
    li t0, 0x40001000
    sd zero, 0(t0)
    CHECK_EQ(s2, 15, 18)
    /* back to M with ecall from S (not delegated) */
    li s1, 0
    ecall
    /* (m_handler returns to the next instruction in M via mepc+4 with
     *  MPP forced to M, see below) */

m_after_s:
    CHECK_EQ(s1, 9, 19)
    csrw satp, zero
    /* MPRV: M-mode load with MPRV=1, MPP=S goes through translation */
    la t0, pt_root
    srli t0, t0, 12
    li t1, 8 << 60
    or t0, t0, t1
    csrw satp, t0
    li t0, (1 << 17) | (1 << 11) | (1 << 18)   /* MPRV, MPP=S, SUM */
    csrs mstatus, t0
    li t0, 0x40001008
    ld t1, 0(t0)
    li t0, (1 << 17) | (3 << 11) | (1 << 18)
    csrc mstatus, t0
    CHECK_EQ(t1, 42, 20)
    csrw satp, zero

    /* timer interrupt: mtimecmp = mtime + 1000, MTIE + MIE, wfi */
    li t0, MTIME
    ld t1, 0(t0)
    addi t1, t1, 1000
    li t0, MTIMECMP
    sd t1, 0(t0)
    li s1, 0
    li t0, 1 << 7
    csrs mie, t0
    csrsi mstatus, 8
2:  wfi
    beqz s1, 2b
    li t0, 0x8000000000000007
    bne s1, t0, fail21
    csrci mstatus, 8
    /* FS=off makes FP instructions illegal */
    li t0, 3 << 13
    csrc mstatus, t0
    li s1, 0
    fmv.x.d t1, f0
    CHECK_EQ(s1, 2, 22)
    li t0, 1 << 13
    csrs mstatus, t0
    fmv.d.x f1, zero
    csrr t0, mstatus
    srli t0, t0, 13
    andi t0, t0, 3
    CHECK_EQ(t0, 3, 23)       /* FS dirty after an FP write */
    csrr t0, mstatus
    bgez t0, fail24           /* SD set */

    la a0, msg_pass
    call puts
    li t0, FINISHER
    li t1, 0x5555
    sw t1, 0(t0)
1:  j 1b

fail1: FAIL(1)
fail10: FAIL(10)
fail21: FAIL(21)
fail24: FAIL(24)
fail:
    mv s0, a0
    la a0, msg_fail
    call puts
    li t0, FINISHER
    slli t1, s0, 16
    li t2, 0x3333
    or t1, t1, t2
    sw t1, 0(t0)
1:  j 1b

puts:
    li t0, UART
1:  lbu t1, 0(a0)
    beqz t1, 2f
    sb t1, 0(t0)
    addi a0, a0, 1
    j 1b
2:  ret

/* M handler: record mcause in s1; interrupts: disarm timer and return;
 * ecall from S: continue at m_after_s in M; else skip the instruction. */
    .align 4
m_handler:
    csrr s1, mcause
    bltz s1, 3f
    li t5, 9
    bne s1, t5, 1f
    la t5, m_after_s
    csrw mepc, t5
    li t5, 3 << 11
    csrs mstatus, t5
    mret
1:  csrr t5, mepc
    addi t5, t5, 4
    csrw mepc, t5
    mret
3:  li t5, MTIMECMP
    li t6, -1
    sd t6, 0(t5)
    mret

/* S handler: record scause in s2; user ecall: check a0 and finish the user
 * part; user load fault: count and skip. */
    .align 4
s_handler:
    csrr s2, scause
    li t5, 8
    beq s2, t5, 2f
    li t5, 13
    bne s2, t5, 1f
    csrr t5, sepc
    li t6, 0x40000000
    bltu t5, t6, 1f           /* fault from S code: just skip */
    addi s3, s3, 1            /* user load fault */
1:  csrr t5, sepc
    addi t5, t5, 4
    csrw sepc, t5
    sret
2:  li t5, 42
    bne a0, t5, 3f
    addi s3, s3, 2
3:  la t5, back_in_s
    csrw sepc, t5
    li t5, 1 << 8
    csrs sstatus, t5          /* return to S */
    sret

    .section .data
msg_pass: .string "priv: all checks passed\n"
msg_fail: .string "priv: check failed\n"

    .section .data
    .align 12
user_code:
user_entry:
    li t0, 0x40001000
    ld t1, 0(t0)              /* readable: fine */
    li t0, 0x40002000
    ld t1, 0(t0)              /* unmapped: load page fault, skipped */
    li t0, 0x40001008
    li t1, 42
    sd t1, 0(t0)              /* sets D */
    li a0, 42
    ecall
1:  j 1b
    .align 12
user_data:
    .dword 0x1122334455667788
    .dword 0
    .align 12
pt_root: .zero 4096
pt_l1: .zero 4096
pt_l0: .zero 4096
    .zero 4096
stack_top:
