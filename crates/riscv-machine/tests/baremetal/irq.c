/* Interrupts: the machine timer (mtimecmp) waking WFI, a machine software
 * interrupt (msip), and a supervisor software interrupt delegated to S. */
#include "common.h"

static volatile u64 mtimer_hits, msoft_hits, ssoft_hits;

void mtrap(struct frame *f) {
    u64 cause = csrr(mcause);
    if (cause == ((1ull << 63) | 7)) {
        mtimer_hits++;
        *MTIMECMP(0) = ~0ull; /* clears MTIP */
    } else if (cause == ((1ull << 63) | 3)) {
        msoft_hits++;
        *MSIP(0) = 0;
    } else if (cause == 9) {
        CHECK(ssoft_hits == 1, 30);
        puts_("irq: ok\n");
        exit(0);
    } else {
        puts_("unexpected M trap ");
        puthex(cause);
        exit(91);
    }
    (void)f;
}

void strap(struct frame *f) {
    u64 cause = csrr(scause);
    CHECK(cause == ((1ull << 63) | 1), 20);
    ssoft_hits++;
    csrc(sip, 2);
    (void)f;
}

void s_code(void) {
    csrw(stvec, (u64)strap_entry);
    csrs(sie, 2);
    csrs(sstatus, 2); /* SIE */
    csrs(sip, 2); /* raise SSIP: taken at once in S */
    for (volatile int i = 0; i < 100 && !ssoft_hits; i++) {}
    CHECK(ssoft_hits == 1, 21);
    asm volatile("ecall");
}

int main(void) {
    /* Timer: 5 ms ahead at 10 MHz; WFI sleeps until it fires. */
    u64 start = *MTIME;
    *MTIMECMP(0) = start + 50000;
    csrs(mie, 1 << 7);
    csrs(mstatus, 1 << 3);
    while (!mtimer_hits) asm volatile("wfi");
    CHECK(*MTIME - start >= 50000, 1);
    /* Software interrupt through the CLINT. */
    csrs(mie, 1 << 3);
    *MSIP(0) = 1;
    for (volatile int i = 0; i < 100 && !msoft_hits; i++) {}
    CHECK(msoft_hits == 1, 3);
    csrc(mstatus, 1 << 3);
    csrw(mie, 0);
    /* Delegated supervisor software interrupt. */
    pmp_open();
    csrw(mideleg, 2);
    enter_mode(1, s_code);
    return 1;
}
