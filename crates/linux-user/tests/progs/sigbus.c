/* Accesses to a shared file mapping past the file's end, which the host
   backs with nothing: loads, a store and an AMO get SIGBUS (BUS_ADRERR)
   with the exact address, some of them in a hot loop (translated code);
   system calls given such a buffer fail with EFAULT; growing the file
   makes the page readable. With "paths", system calls also get a path and
   a result buffer there (EFAULT); with "unhandled", the last access is
   left unhandled (the process dies of SIGBUS). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static sigjmp_buf jb;
static volatile uintptr_t fault_addr;
static volatile int fault_sig, fault_code;
static char *base;

static void on_fault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    fault_sig = sig;
    fault_addr = (uintptr_t)si->si_addr;
    fault_code = si->si_code;
    siglongjmp(jb, 1);
}

static void report(const char *what) {
    printf("%s: signal %d code %d at base+%#lx\n", what, fault_sig, fault_code,
           (unsigned long)(fault_addr - (uintptr_t)base));
}

/* Sums bytes from `p` (hot: translated before it reaches the end). */
static __attribute__((noinline)) long sum(volatile char *p, long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += p[i];
    return s;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);

    char path[] = "/tmp/virtkit-sigbus-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 2;
    unlink(path);
    /* One page and a bit of file under three pages of mapping: page 1 is
       backed (partly past the end, read as zeros), page 2 is not. */
    char data[PG + 100];
    for (int i = 0; i < (int)sizeof data; i++) data[i] = (char)(i % 7);
    if (write(fd, data, sizeof data) != (ssize_t)sizeof data) return 2;
    base = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return 2;
    printf("backed pages: %ld\n", sum(base, 2 * PG));

    if (sigsetjmp(jb, 1) == 0)
        printf("hot loop: %ld\n", sum(base, 3 * PG));
    else
        report("hot loop");
    if (sigsetjmp(jb, 1) == 0)
        printf("load: %d\n", base[2 * PG + 8]);
    else
        report("load");
    if (sigsetjmp(jb, 1) == 0) {
        ((volatile long *)(base + 2 * PG))[3] = 1;
        printf("store done\n");
    } else {
        report("store");
    }
    if (sigsetjmp(jb, 1) == 0)
        printf("amo: %d\n", __atomic_fetch_add((int *)(base + 2 * PG + 16), 1, __ATOMIC_SEQ_CST));
    else
        report("amo");
    if (sigsetjmp(jb, 1) == 0)
        printf("lr/sc: %d\n", __sync_bool_compare_and_swap((long *)(base + 2 * PG + 24), 0, 5));
    else
        report("lr/sc");

    errno = 0;
    long r = write(STDOUT_FILENO, base + 2 * PG, 4);
    printf("write from it: %ld %s\n", r, strerror(errno));
    int pipefd[2];
    if (pipe(pipefd) != 0 || write(pipefd[1], "abcd", 4) != 4) return 2;
    errno = 0;
    r = read(pipefd[0], base + 2 * PG, 4);
    printf("read into it: %ld %s\n", r, strerror(errno));

    /* (qemu-riscv64 7.2 aborts on these: its own copy of the path or
       the result takes the host's SIGBUS. Linux says EFAULT.) */
    if (argc > 1 && strcmp(argv[1], "paths") == 0) {
        errno = 0;
        r = open(base + 2 * PG, O_RDONLY);
        printf("open with the path in it: %ld %s\n", r, strerror(errno));
        errno = 0;
        r = pipe((int *)(base + 2 * PG));
        printf("pipe into it: %ld %s\n", r, strerror(errno));
    }

    if (ftruncate(fd, 3 * PG) != 0) return 2;
    printf("after growing the file: %ld\n", sum(base, 3 * PG));
    if (ftruncate(fd, PG) != 0) return 2;
    if (argc > 1 && strcmp(argv[1], "unhandled") == 0) {
        signal(SIGBUS, SIG_DFL);
        printf("unhandled\n");
        return base[PG + 8];
    }
    if (sigsetjmp(jb, 1) == 0)
        printf("after shrinking it: %d\n", base[PG + 8]);
    else
        report("after shrinking it");
    return 0;
}
