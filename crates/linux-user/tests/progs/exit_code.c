/* Exit status from a secondary thread via exit_group. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
static void *t(void *a) { (void)a; exit(3); }
int main(void) {
    pthread_t th;
    pthread_create(&th, NULL, t, NULL);
    for (;;) pause();
}
