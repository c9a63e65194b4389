/* Dies by SIGSEGV (no handler): the emulator must die the same way. */
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argv;
    printf("before\n");
    fflush(stdout);
    volatile int *p = (int *)(long)(argc - 1);
    return *p;
}
