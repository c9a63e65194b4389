/* Files and directories through the syscall layer. Runs in a scratch
   directory given as argv[1]. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x) do { if (!(x)) { printf("FAIL %s:%d %s errno=%d\n", __FILE__, __LINE__, #x, errno); return 1; } } while (0)

static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }

int main(int argc, char **argv) {
    CHECK(argc == 2);
    CHECK(chdir(argv[1]) == 0);
    CHECK(mkdir("d", 0755) == 0);
    CHECK(mkdir("d", 0755) == -1 && errno == EEXIST);
    int fd = open("d/f.txt", O_CREAT | O_WRONLY | O_TRUNC, 0640);
    CHECK(fd >= 0);
    CHECK(write(fd, "hello world\n", 12) == 12);
    struct iovec iov[2] = {{"abc", 3}, {"defg\n", 5}};
    CHECK(writev(fd, iov, 2) == 8);
    CHECK(pwrite(fd, "H", 1, 0) == 1);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    printf("size=%lld mode=%o reg=%d nlink=%ld\n", (long long)st.st_size, st.st_mode & 0777, S_ISREG(st.st_mode),
           (long)st.st_nlink);
    CHECK(ftruncate(fd, 15) == 0);
    CHECK(close(fd) == 0);
    fd = open("d/f.txt", O_RDONLY);
    char buf[64] = {0};
    CHECK(read(fd, buf, sizeof buf) == 15);
    printf("content=%.15s\n", buf);
    CHECK(lseek(fd, 6, SEEK_SET) == 6);
    CHECK(read(fd, buf, 5) == 5);
    printf("seek=%.5s\n", buf);
    CHECK(pread(fd, buf, 3, 12) == 3);
    printf("pread=%.3s\n", buf);
    int fd2 = dup(fd);
    CHECK(fd2 > fd);
    CHECK(dup2(fd, 20) == 20);
    CHECK(fcntl(20, F_GETFD) == 0);
    CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 && fcntl(fd, F_GETFD) == FD_CLOEXEC);
    close(fd2);
    close(20);
    close(fd);
    CHECK(stat("d/f.txt", &st) == 0 && st.st_size == 15);
    CHECK(stat("d/missing", &st) == -1 && errno == ENOENT);
    CHECK(symlink("f.txt", "d/link") == 0);
    char target[64] = {0};
    CHECK(readlink("d/link", target, sizeof target) == 5);
    CHECK(lstat("d/link", &st) == 0 && S_ISLNK(st.st_mode));
    printf("readlink=%s\n", target);
    CHECK(rename("d/f.txt", "d/g.txt") == 0);
    CHECK(access("d/g.txt", R_OK) == 0 && access("d/f.txt", F_OK) == -1);
    CHECK(chmod("d/g.txt", 0600) == 0 && stat("d/g.txt", &st) == 0 && (st.st_mode & 0777) == 0600);
    struct timespec ts[2] = {{1000000000, 0}, {1234567890, 500}};
    CHECK(utimensat(AT_FDCWD, "d/g.txt", ts, 0) == 0);
    CHECK(stat("d/g.txt", &st) == 0);
    printf("mtime=%lld.%09ld\n", (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    for (int i = 0; i < 30; i++) {
        char name[32];
        snprintf(name, sizeof name, "d/n%02d", i);
        int f = open(name, O_CREAT | O_WRONLY, 0644);
        CHECK(f >= 0);
        close(f);
    }
    DIR *dir = opendir("d");
    CHECK(dir);
    char *names[64];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir)) && n < 64) names[n++] = strdup(de->d_name);
    closedir(dir);
    qsort(names, n, sizeof *names, cmp);
    printf("dir:");
    for (int i = 0; i < n; i++) printf(" %s", names[i]);
    printf("\n");
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], "pipe!", 5) == 5);
    CHECK(read(p[0], buf, 5) == 5);
    printf("pipe=%.5s\n", buf);
    close(p[0]);
    close(p[1]);
    char cwd[4096];
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, argv[1]) == 0);
    FILE *f = fopen("d/stdio.txt", "w+");
    for (int i = 0; i < 1000; i++) fprintf(f, "line %d\n", i);
    rewind(f);
    long sum = 0;
    int v;
    while (fscanf(f, "line %d\n", &v) == 1) sum += v;
    fclose(f);
    printf("stdio sum=%ld\n", sum);
    CHECK(unlink("d/link") == 0 && unlink("d/g.txt") == 0);
    CHECK(rmdir("d") == -1 && errno == ENOTEMPTY);
    CHECK(read(-1, buf, 1) == -1 && errno == EBADF);
    volatile long bad = 8;
    CHECK(write(1, (void *)bad, 1) == -1 && errno == EFAULT);
    struct timespec now;
    CHECK(clock_gettime(CLOCK_MONOTONIC, &now) == 0);
    printf("ok\n");
    return 0;
}
