/* Guest threads on host threads: atomics (AMOs and LR/SC), a mutex
   (futexes), a condition variable, thread-local storage and join. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define THREADS 4
#define ITERS 100000

static atomic_long amo_counter;
static atomic_int cas_counter;
static long mutex_counter;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready;
static _Thread_local long tls_value;
static pthread_barrier_t barrier;

static void *work(void *arg) {
    long id = (long)arg;
    tls_value = id * 1000;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < ITERS; i++) {
        atomic_fetch_add(&amo_counter, 1);
        int old = atomic_load_explicit(&cas_counter, memory_order_relaxed);
        while (!atomic_compare_exchange_weak(&cas_counter, &old, old + 1)) {
        }
        if (i % 16 == 0) {
            pthread_mutex_lock(&lock);
            mutex_counter++;
            pthread_mutex_unlock(&lock);
        }
    }
    pthread_mutex_lock(&lock);
    ready++;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    return (void *)(tls_value + id);
}

int main(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    tls_value = -1;
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, (void *)i);
    pthread_mutex_lock(&lock);
    while (ready < THREADS) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    long sum = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        sum += (long)r;
    }
    printf("amo=%ld cas=%d mutex=%ld ret=%ld tls=%ld\n", atomic_load(&amo_counter), atomic_load(&cas_counter),
           mutex_counter, sum, tls_value);
    return !(amo_counter == THREADS * ITERS && cas_counter == THREADS * ITERS);
}
