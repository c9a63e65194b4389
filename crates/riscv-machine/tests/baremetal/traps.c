/* Traps and delegation: an illegal instruction and an ecall handled in
 * M-mode; then ecall from U delegated to S (medeleg), ecall from S to M. */
#include "common.h"

static volatile u64 last_mcause, last_mtval, last_scause, s_seen_u_ecall;

void mtrap(struct frame *f) {
    last_mcause = csrr(mcause);
    last_mtval = csrr(mtval);
    if (last_mcause == 9) { /* ecall from S: the end of the test */
        CHECK(s_seen_u_ecall == 1, 10);
        CHECK(f->x[10] == 0x5a, 11);
        puts_("traps: ok\n");
        exit(0);
    }
    f->epc += 4;
}

void strap(struct frame *f) {
    last_scause = csrr(scause);
    CHECK(last_scause == 8, 20); /* ecall from U */
    CHECK(f->x[17] == 0x77, 21);
    CHECK(((csrr(sstatus) >> 8) & 1) == 0, 22); /* SPP = U */
    s_seen_u_ecall = 1;
    f->epc += 4;
    /* Return to S-mode code directly: set SPP = S and sret to s_code2. */
    extern void s_after_u(void);
    csrs(sstatus, 1 << 8);
    f->epc = (u64)s_after_u;
}

void u_code(void) {
    asm volatile("li a7, 0x77; ecall" ::: "a7");
    for (;;) {}
}

void s_after_u(void) {
    asm volatile("li a0, 0x5a; ecall" ::: "a0");
    for (;;) {}
}

void s_code(void) {
    /* S-mode: go to U via sret. */
    csrw(stvec, (u64)strap_entry);
    csrc(sstatus, 1 << 8); /* SPP = U */
    csrw(sepc, (u64)u_code);
    asm volatile("sret");
}

int main(void) {
    /* Illegal instruction in M-mode: cause 2, mtval = the instruction. */
    asm volatile(".word 0xffffffff");
    CHECK(last_mcause == 2, 1);
    CHECK(last_mtval == 0xffffffff || last_mtval == 0, 2);
    /* Ecall from M: cause 11. */
    asm volatile("ecall");
    CHECK(last_mcause == 11, 3);
    /* An unknown CSR is illegal. */
    asm volatile("csrr t0, 0x7ff" ::: "t0");
    CHECK(last_mcause == 2, 4);
    /* misa says rv64 with S and U. */
    u64 misa = csrr(misa);
    CHECK((misa >> 62) == 2, 5);
    CHECK(misa & (1 << ('S' - 'A')), 6);
    CHECK(misa & (1 << ('U' - 'A')), 7);
    pmp_open();
    csrw(medeleg, 1 << 8);
    enter_mode(1, s_code);
    return 1;
}
