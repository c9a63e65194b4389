#include "common.h"
/* A deterministic workload for snapshot tests: integer and FP work between
 * lines of output, so a snapshot lands mid-loop and a restored run must
 * bring back registers, FP state and memory exactly to print the same. */
static volatile u64 state = 0x9e3779b97f4a7c15ull;
__attribute__((noinline)) static void work(void) {
    double acc = 1.0;
    for (u64 i = 0; i < 2000; i++) {
        u64 s = state;
        for (int j = 0; j < 3000; j++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc = acc * 1.0000001 + (double)(s & 0xff) * 1e-9;
        }
        state = s;
        puts_("n=");
        puthex(i);
        putc_(' ');
        puthex(s);
        putc_(' ');
        puthex((u64)(acc * 1e6));
        putc_('\n');
    }
}

int main(void) {
    /* FP on (FS = Initial) before any function saves FP registers. */
    csrs(mstatus, 1ull << 13);
    work();
    return 0;
}
