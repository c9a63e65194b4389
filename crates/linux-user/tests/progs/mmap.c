/* mmap, munmap, mprotect, mremap, MAP_FIXED, file mappings, brk. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf jb;
static volatile int faults;
static void on_segv(int sig) {
    (void)sig;
    faults++;
    siglongjmp(jb, 1);
}

static int probe_write(volatile char *p) {
    if (sigsetjmp(jb, 1) == 0) {
        *p = 1;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGSEGV, on_segv);
    size_t pg = 4096;
    char *a = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("anon ok=%d zero=%d\n", a != MAP_FAILED, a[5 * pg] == 0);
    memset(a, 0x5a, 16 * pg);
    munmap(a + 4 * pg, pg);
    printf("after munmap write=%d\n", probe_write(a + 4 * pg));
    mprotect(a + 8 * pg, pg, PROT_READ);
    printf("readonly write=%d read=%x\n", probe_write(a + 8 * pg), a[8 * pg]);
    mprotect(a + 8 * pg, pg, PROT_READ | PROT_WRITE);
    printf("rw again write=%d\n", probe_write(a + 8 * pg));
    char *f = mmap(a + 4 * pg, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    printf("fixed same=%d zero=%d\n", f == a + 4 * pg, f[0]);
    char *r = mremap(a, 16 * pg, 64 * pg, MREMAP_MAYMOVE);
    printf("mremap kept=%x new zero=%d\n", r[pg], r[40 * pg]);
    char *s = mremap(r, 64 * pg, 2 * pg, 0);
    printf("shrink same=%d\n", s == r);
    char *n = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("prot_none write=%d\n", probe_write(n));

    /* A shared file mapping writes through to the file. */
    char path[256];
    snprintf(path, sizeof path, "%s/mapped", argc > 1 ? argv[1] : "/tmp");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    ftruncate(fd, 2 * pg);
    char *m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    strcpy(m + pg, "through the mapping");
    msync(m, 2 * pg, MS_SYNC);
    char buf[32] = {0};
    pread(fd, buf, 19, pg);
    printf("shared=%s\n", buf);
    pwrite(fd, "FILE", 4, 0);
    printf("file->map=%.4s\n", m);
    char *priv = mmap(NULL, pg, PROT_READ, MAP_PRIVATE, fd, pg);
    printf("private ro=%.7s write=%d\n", priv, probe_write(priv));
    munmap(m, 2 * pg);
    close(fd);
    unlink(path);

    /* brk */
    char *b0 = sbrk(0);
    char *b1 = sbrk(1 << 20);
    memset(b1, 1, 1 << 20);
    printf("sbrk same=%d grow=%ld\n", b0 == b1, (long)((char *)sbrk(0) - b0));
    sbrk(-(1 << 20));
    printf("faults=%d\n", faults);
    return 0;
}
