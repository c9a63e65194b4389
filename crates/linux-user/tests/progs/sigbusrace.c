/* AMOs and LR/SC on a shared file mapping's second page while another
   thread shrinks and grows the file, for the number of seconds given.
   Linux: each atomic either works or gets SIGBUS, and the process
   survives. (The emulator's own atomic access used to take the host's
   SIGBUS and die of it.) */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PG 4096

static int fd;
static volatile int stop;
static char *base;
static __thread sigjmp_buf jb;

static void on_bus(int sig) {
    (void)sig;
    siglongjmp(jb, 1);
}

static void *resize(void *arg) {
    (void)arg;
    while (!stop) {
        if (ftruncate(fd, PG) != 0 || ftruncate(fd, 2 * PG) != 0) exit(2);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int secs = argc > 1 ? atoi(argv[1]) : 2;
    signal(SIGBUS, on_bus);
    char path[] = "/tmp/virtkit-sigbusrace-XXXXXX";
    fd = mkstemp(path);
    if (fd < 0) return 2;
    unlink(path);
    if (ftruncate(fd, 2 * PG) != 0) return 2;
    base = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, resize, NULL) != 0) return 2;
    long ok = 0, bus = 0;
    time_t end = time(NULL) + secs;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            if (sigsetjmp(jb, 1) == 0) {
                __atomic_fetch_add((int *)(base + PG + 16), 1, __ATOMIC_SEQ_CST);
                __sync_bool_compare_and_swap((long *)(base + PG + 24), 0, 1);
                ok++;
            } else {
                bus++;
            }
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    printf("survived: atomics done %d, SIGBUS seen %d\n", ok > 0, bus > 0);
    return 0;
}
