/* Threads mmap(NULL) and munmap concurrently, each writing its id over its
   mapping and checking it is still there: Linux never hands two threads
   the same free range (a second MAP_FIXED there would replace the first's
   fresh mapping, and its munmap unmap the other's). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define THREADS 4
#define ROUNDS 20000

static atomic_int bad;

static void *run(void *arg) {
    long id = (long)arg + 1;
    for (int i = 0; i < ROUNDS; i++) {
        size_t len = 4096 * (1 + i % 3);
        long *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            exit(2);
        }
        for (size_t k = 0; k < len / 8; k += 512)
            p[k] = id;
        for (volatile int s = 0; s < 50; s++)
            ;
        for (size_t k = 0; k < len / 8; k += 512)
            if (p[k] != id) {
                atomic_fetch_add(&bad, 1);
                break;
            }
        munmap(p, len);
    }
    return 0;
}

int main(void) {
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], 0, run, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], 0);
    printf("mappings handed to two threads: %d\n", bad);
    return bad != 0;
}
