/* argv, envp, auxv and basic libc: the loader's contract with the program. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(int argc, char **argv, char **envp) {
    printf("argc=%d\n", argc);
    for (int i = 1; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *v = getenv("VIRTKIT_TEST_VAR");
    printf("VIRTKIT_TEST_VAR=%s\n", v ? v : "(unset)");
    printf("pagesz=%lu\n", getauxval(AT_PAGESZ));
    printf("phent=%lu\n", getauxval(AT_PHENT));
    printf("hwcap_imafdc=%d\n", (getauxval(AT_HWCAP) & 0x112d) == 0x112d);
    printf("entry_nonzero=%d\n", getauxval(AT_ENTRY) != 0);
    unsigned char *rnd = (unsigned char *)getauxval(AT_RANDOM);
    printf("random_ok=%d\n", rnd != NULL);
    printf("secure=%lu\n", getauxval(AT_SECURE));
    printf("execfn_matches=%d\n", strcmp((char *)getauxval(AT_EXECFN), argv[0]) == 0);
    printf("uid_ok=%d\n", getauxval(AT_UID) == getuid());
    struct utsname u;
    uname(&u);
    printf("machine=%s\n", u.machine);
    /* The heap: malloc small and large blocks. */
    size_t total = 0;
    for (int i = 0; i < 200; i++) {
        char *p = malloc(1000 * i + 1);
        memset(p, i, 1000 * i + 1);
        total += p[1000 * i];
        free(p);
    }
    char *big = malloc(64 << 20);
    big[(64 << 20) - 1] = 7;
    printf("heap=%zu %d\n", total, big[(64 << 20) - 1]);
    free(big);
    return argc + 40;
}
