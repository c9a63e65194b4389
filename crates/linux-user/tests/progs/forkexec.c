/* fork, vfork, execve (of itself, staying emulated), wait statuses,
   pipes between processes. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        printf("exec child argc=%d arg2=%s env=%s\n", argc, argc > 2 ? argv[2] : "", getenv("FORKEXEC_VAR"));
        return 42;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    int status;
    pid_t pid = fork();
    if (pid == 0) _exit(7);
    waitpid(pid, &status, 0);
    printf("fork exit=%d\n", WEXITSTATUS(status));

    pid = fork();
    if (pid == 0) {
        raise(SIGKILL);
        _exit(1);
    }
    waitpid(pid, &status, 0);
    printf("killed signaled=%d sig=%d\n", WIFSIGNALED(status), WTERMSIG(status));

    int p[2];
    pipe(p);
    pid = fork();
    if (pid == 0) {
        close(p[0]);
        for (int i = 0; i < 1000; i++) dprintf(p[1], "%d\n", i);
        _exit(0);
    }
    close(p[1]);
    FILE *f = fdopen(p[0], "r");
    long sum = 0;
    int v;
    while (fscanf(f, "%d", &v) == 1) sum += v;
    fclose(f);
    waitpid(pid, &status, 0);
    printf("pipe sum=%ld\n", sum);

    pid = vfork();
    if (pid == 0) {
        char *args[] = {argv[0], "child", "-x", NULL};
        char *env[] = {"FORKEXEC_VAR=from-vfork", NULL};
        execve("/proc/self/exe", args, env);
        _exit(99);
    }
    waitpid(pid, &status, 0);
    printf("vfork+exec exit=%d\n", WEXITSTATUS(status));

    pid = fork();
    if (pid == 0) {
        char *args[] = {argv[0], "child", "second", NULL};
        setenv("FORKEXEC_VAR", "from-fork", 1);
        execv(argv[0], args);
        _exit(98);
    }
    waitpid(pid, &status, 0);
    printf("fork+exec exit=%d\n", WEXITSTATUS(status));

    pid = fork();
    if (pid == 0) {
        char *args[] = {"nonexistent", NULL};
        execv("/nonexistent/program", args);
        _exit(3);
    }
    waitpid(pid, &status, 0);
    printf("failed exec exit=%d\n", WEXITSTATUS(status));
    return 0;
}
