/* Two or more harts: each secondary hart increments a shared counter with
 * AMOs 100000 times, then wakes hart 0 (sleeping in WFI) with a CLINT IPI. */
#include "common.h"

static volatile u64 counter, done;

void mtrap(struct frame *f) {
    u64 cause = csrr(mcause);
    if (cause == ((1ull << 63) | 3)) {
        *MSIP(csrr(mhartid)) = 0;
        return;
    }
    puts_("unexpected trap ");
    puthex(cause);
    exit(92);
    (void)f;
}

void secondary(u64 hart) {
    for (int i = 0; i < 100000; i++) __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&done, 1, __ATOMIC_RELEASE);
    *MSIP(0) = 1;
    (void)hart;
    for (;;) asm volatile("wfi");
}

int main(void) {
    u64 harts;
    /* Run with 4 harts (the symbol below). */
    csrs(mie, 1 << 3);
    csrs(mstatus, 1 << 3);
    extern volatile u64 expected_harts;
    harts = expected_harts;
    while (__atomic_load_n(&done, __ATOMIC_ACQUIRE) < harts - 1) asm volatile("wfi");
    CHECK(counter == 100000 * (harts - 1), 1);
    puts_("smp: ok\n");
    return 0;
}
volatile u64 expected_harts = 4;
