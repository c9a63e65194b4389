/* Helpers of the bare-metal test programs: CSR access, HTIF console and
 * exit, trap frames. */
#include <stdint.h>
typedef uint64_t u64;

#define csrr(csr) ({ u64 __v; asm volatile("csrr %0, " #csr : "=r"(__v)); __v; })
#define csrw(csr, v) asm volatile("csrw " #csr ", %0" ::"r"((u64)(v)))
#define csrs(csr, v) asm volatile("csrs " #csr ", %0" ::"r"((u64)(v)))
#define csrc(csr, v) asm volatile("csrc " #csr ", %0" ::"r"((u64)(v)))

struct frame { u64 x[32]; u64 epc; u64 pad; };

volatile u64 tohost __attribute__((section(".tohost"), aligned(8)));
volatile u64 fromhost __attribute__((section(".tohost"), aligned(8)));

static void htif(u64 v) {
    while (tohost) {}
    tohost = v;
    while (tohost) {}
}
static void putc_(char c) { htif((1ull << 56) | (1ull << 48) | (unsigned char)c); }
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void puthex(u64 v) {
    puts_("0x");
    for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 15]);
}
__attribute__((noreturn)) void exit(int code) {
    for (;;) htif(((u64)code << 1) | 1);
}
#define CHECK(cond, code) do { if (!(cond)) { puts_("FAIL " #cond "\n"); exit(code); } } while (0)

#define CLINT 0x2000000ul
#define MSIP(h) ((volatile uint32_t *)(CLINT + 4 * (h)))
#define MTIMECMP(h) ((volatile u64 *)(CLINT + 0x4000 + 8 * (h)))
#define MTIME ((volatile u64 *)(CLINT + 0xbff8))

/* Gives S and U mode access to all memory (with PMP implemented, no
 * matching entry means no access for them). */
static void pmp_open(void) {
    csrw(pmpaddr0, ~0ull >> 10);
    csrw(pmpcfg0, 0x0f); /* TOR, RWX */
}

extern void strap_entry(void);

/* Drops from M-mode to mode `mpp` (1 = S, 0 = U) at function `f`. */
static void enter_mode(int mpp, void (*f)(void)) {
    u64 s = csrr(mstatus);
    s &= ~(3ull << 11);
    s |= (u64)mpp << 11;
    csrw(mstatus, s);
    csrw(mepc, (u64)f);
    asm volatile("mret");
}
