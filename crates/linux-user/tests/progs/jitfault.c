/* Faults of hot loads and stores (translated code): SIGSEGV with the exact
   si_addr and si_code after mprotect and munmap, from this thread and from
   another one; misaligned accesses running into an inaccessible page;
   self-modifying code, with and without a call in between. */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static sigjmp_buf jb;
static volatile uintptr_t fault_addr;
static volatile int fault_code, faults;
static char *base;

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    fault_addr = (uintptr_t)si->si_addr;
    fault_code = si->si_code;
    faults++;
    siglongjmp(jb, 1);
}

/* Sums 8-byte words of `p` (many times: the loop is hot). */
static __attribute__((noinline)) long sum(volatile long *p, int n, int rounds) {
    long s = 0;
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) s += p[i] * (r + 1);
    return s;
}

static __attribute__((noinline)) void fill(volatile long *p, int n, long v) {
    for (int i = 0; i < n; i++) p[i] = v + i;
}

/* Prints where the last fault hit, relative to `base`. */
static void report(const char *what, int faulted) {
    if (faulted)
        printf("%s: fault at base+%#lx code %d\n", what, (unsigned long)(fault_addr - (uintptr_t)base),
               fault_code);
    else
        printf("%s: no fault\n", what);
}

static int try_sum(volatile long *p, int n, long *out) {
    if (sigsetjmp(jb, 1) == 0) {
        *out = sum(p, n, 50);
        return 0;
    }
    return 1;
}

static int try_fill(volatile long *p, int n) {
    if (sigsetjmp(jb, 1) == 0) {
        fill(p, n, 7);
        return 0;
    }
    return 1;
}

static __attribute__((noinline)) long load_at(volatile char *p) {
    return *(volatile long *)p;
}

static volatile int stop;

static void *protector(void *arg) {
    (void)arg;
    usleep(20000);
    mprotect(base + 6 * PG, PG, PROT_NONE);
    return NULL;
}

typedef long (*fn_t)(void);

/* `li a0, v; ret` (v < 2048). */
static void write_fn(uint32_t *code, int v) {
    code[0] = 0x00000513u | ((uint32_t)v << 20); /* addi a0, zero, v */
    code[1] = 0x00008067u;                       /* jalr zero, 0(ra) */
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    base = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long s;

    /* Hot loads, then the page loses read permission: the same translated
       loop faults at the first word of that page. */
    fill((long *)base, 2 * PG / 8, 1);
    printf("sum before: %d %ld\n", try_sum((long *)base, 2 * PG / 8, &s), s);
    mprotect(base + PG, PG, PROT_NONE);
    report("load after PROT_NONE", try_sum((long *)base, 2 * PG / 8, &s));
    mprotect(base + PG, PG, PROT_READ);
    printf("sum readable again: %d %ld\n", try_sum((long *)base, 2 * PG / 8, &s), s);

    /* Hot stores into a page made read-only, then into an unmapped one. */
    report("store to PROT_READ", try_fill((long *)base, 2 * PG / 8));
    printf("first page written: %ld\n", ((long *)base)[PG / 8 - 1]);
    munmap(base + PG, PG);
    report("store after munmap", try_fill((long *)base, 2 * PG / 8));
    mmap(base + PG, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    printf("remapped: %d\n", try_fill((long *)base, 2 * PG / 8));

    /* A misaligned 8-byte load running from a readable page into an
       inaccessible one. */
    mprotect(base + 3 * PG, PG, PROT_NONE);
    int f = 0;
    if (sigsetjmp(jb, 1) == 0)
        s = load_at(base + 3 * PG - 4);
    else
        f = 1;
    report("misaligned across", f);

    /* Another thread takes the read permission of a page this one reads
       in a loop. */
    fill((long *)(base + 6 * PG), PG / 8, 3);
    pthread_t t;
    pthread_create(&t, NULL, protector, NULL);
    f = 0;
    if (sigsetjmp(jb, 1) == 0) {
        for (;;) sum((long *)(base + 6 * PG), PG / 8, 1);
    } else {
        f = 1;
    }
    pthread_join(t, NULL);
    printf("other thread's mprotect: fault %d in page 6: %d\n", f,
           fault_addr - (uintptr_t)base >= 6 * PG && fault_addr - (uintptr_t)base < 7 * PG);

    /* Self-modifying code: a function rewritten after it ran (cache
       flushed, as the ISA requires), and data stored next to code. */
    uint32_t *code =
        mmap(NULL, PG, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    long total = 0;
    for (int v = 1; v <= 8; v++) {
        write_fn(code, v);
        __builtin___clear_cache((char *)code, (char *)(code + 2));
        for (int k = 0; k < 10; k++) total += ((fn_t)code)();
        code[100 + v] = v; /* a store into the page holding code */
    }
    printf("self-modifying: total %ld, data %u\n", total, code[108]);

    /* Code made non-executable faults on the call. */
    mprotect(code, PG, PROT_READ);
    f = 0;
    if (sigsetjmp(jb, 1) == 0)
        ((fn_t)code)();
    else
        f = 1;
    printf("call into PROT_READ: fault %d at code: %d\n", f, fault_addr == (uintptr_t)code);
    printf("faults: %d\n", faults);
    return 0;
}
