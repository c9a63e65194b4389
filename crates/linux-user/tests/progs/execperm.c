/* execv each argument in a child and print why it failed: the kernel
   refuses files without execute permission and non-regular files with
   EACCES. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = {argv[i], NULL};
            execv(argv[i], args);
            printf("execv %s: %s\n", argv[i], strerror(errno));
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
    }
    return 0;
}
