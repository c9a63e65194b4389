/* What a program learns about itself from the kernel: /proc/self/maps,
 * /proc/self/auxv, /proc/self/cmdline and /proc/self/exe must describe the
 * guest program (not the emulator); clone3 in its fork and thread forms;
 * prctl names; get_robust_list of another thread; mremap of a mapping
 * that is not one mapping. Prints facts that hold on any riscv64 Linux. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char buf[1 << 16];

static size_t slurp(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("open %s: %s\n", path, strerror(errno));
        return 0;
    }
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += r;
    buf[n] = 0;
    close(fd);
    return n;
}

/* The maps line holding address a, or NULL. */
static const char *line_of(uintptr_t a, char *out, size_t outlen) {
    char *p = buf;
    while (*p) {
        char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        unsigned long s, e;
        if (sscanf(p, "%lx-%lx", &s, &e) == 2 && s <= a && a < e) {
            if (len >= outlen)
                len = outlen - 1;
            memcpy(out, p, len);
            out[len] = 0;
            return out;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    return NULL;
}

static void check_maps(const char *exe) {
    static int on_data = 1;
    char l[512];
    int stack_var = 0;
    slurp("/proc/self/maps");
    const char *code = line_of((uintptr_t)&check_maps, l, sizeof l);
    printf("code: %s\n", !code ? "missing"
                        : (strstr(code, " r-xp ") && strstr(code, exe)) ? "r-xp exe"
                                                                          : code);
    const char *data = line_of((uintptr_t)&on_data, l, sizeof l);
    printf("data: %s\n", data && strstr(data, " rw-p ") ? "rw-p" : "wrong");
    const char *st = line_of((uintptr_t)&stack_var, l, sizeof l);
    printf("stack: %s\n", st && strstr(st, " rw-p ") && strstr(st, "[stack]") ? "rw-p [stack]" : st ? st : "missing");
    char *m = mmap(NULL, 3 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(m + 4096, 4096, PROT_READ | PROT_WRITE);
    slurp("/proc/self/maps");
    const char *a = line_of((uintptr_t)m, l, sizeof l);
    printf("mmap first: %s\n", a && strstr(a, " r--p ") ? "r--p" : "wrong");
    a = line_of((uintptr_t)m + 4096, l, sizeof l);
    printf("mmap middle: %s\n", a && strstr(a, " rw-p ") ? "rw-p" : "wrong");
    unsigned long s, e;
    if (a && sscanf(a, "%lx-%lx", &s, &e) == 2)
        printf("mmap middle is one page: %d\n", s == (uintptr_t)m + 4096 && e == s + 4096);
    /* Linux's mremap wants its source inside one mapping. */
    void *r = mremap(m, 3 * 4096, 8 * 4096, MREMAP_MAYMOVE);
    printf("mremap across mappings: %s\n", r == MAP_FAILED ? strerror(errno) : "moved");
    r = mremap(m + 4096, 4096, 4 * 4096, MREMAP_MAYMOVE);
    if (r == MAP_FAILED) {
        printf("mremap one page: %s\n", strerror(errno));
    } else {
        strcpy((char *)r + 3 * 4096, "grown");
        slurp("/proc/self/maps");
        a = line_of((uintptr_t)r + 3 * 4096, l, sizeof l);
        printf("mremap grown: %s %s\n", (char *)r + 3 * 4096, a && strstr(a, " rw-p ") ? "rw-p" : "wrong");
    }
    /* A file mapping names its file. */
    int fd = open(exe, O_RDONLY);
    char *f = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 4096);
    close(fd);
    slurp("/proc/self/maps");
    a = line_of((uintptr_t)f, l, sizeof l);
    printf("file map: %s\n", a && strstr(a, exe) && strstr(a, " 00001000 ") ? "named, offset 1000" : a ? a : "missing");
}

static void check_auxv(void) {
    size_t n = slurp("/proc/self/auxv");
    unsigned long *v = (unsigned long *)buf;
    int ok = n > 0 && n % 16 == 0, found = 0;
    for (size_t i = 0; ok && i + 1 < n / 8; i += 2) {
        if (v[i] == AT_NULL) {
            ok = i + 2 == n / 8;
            break;
        }
        if (v[i] == AT_PAGESZ || v[i] == AT_ENTRY || v[i] == AT_PHDR || v[i] == AT_RANDOM || v[i] == AT_HWCAP) {
            ok &= getauxval(v[i]) == v[i + 1];
            found++;
        }
    }
    printf("auxv: %s (%d keys checked)\n", ok ? "matches getauxval" : "differs", found);
}

static void check_cmdline(int argc, char **argv) {
    size_t n = slurp("/proc/self/cmdline");
    size_t off = 0;
    int ok = 1;
    for (int i = 0; i < argc; i++) {
        ok &= off < n && strcmp(buf + off, argv[i]) == 0;
        off += strlen(argv[i]) + 1;
    }
    printf("cmdline: %s\n", ok && off == n ? "argv" : buf);
}

static long clone3_raw(struct clone_args *a) {
    return syscall(SYS_clone3, a, sizeof *a);
}

static volatile int shared_counter;
static volatile pid_t child_tid_word = 1;

/* Enters the thread function on the new stack with no libc in between:
 * the child must not return into this C frame (it lives on the parent's
 * stack). */
static long clone3_thread(struct clone_args *a, void (*fn)(void)) {
    register long a0 asm("a0") = (long)a;
    register long a1 asm("a1") = sizeof *a;
    register long a2 asm("a2") = (long)fn;
    register long a7 asm("a7") = SYS_clone3;
    asm volatile("ecall\n"
                 "bnez a0, 1f\n"
                 "jalr a2\n"
                 "li a0, 0\n"
                 "li a7, 93\n" /* exit: this thread only */
                 "ecall\n"
                 "1:\n"
                 : "+r"(a0)
                 : "r"(a1), "r"(a2), "r"(a7)
                 : "memory", "ra");
    return a0;
}

static void thread_fn(void) {
    for (int i = 0; i < 1000; i++)
        __atomic_fetch_add(&shared_counter, 1, __ATOMIC_SEQ_CST);
}

static volatile int usr1_seen;
static void on_usr1(int sig) { usr1_seen = sig; }

static void check_clone3(void) {
    struct clone_args a;
    memset(&a, 0, sizeof a);
    a.exit_signal = SIGCHLD;
    long pid = clone3_raw(&a);
    if (pid == 0)
        _exit(23);
    int st = 0;
    if (pid < 0) {
        printf("clone3 fork: %s\n", strerror(errno));
    } else {
        waitpid(pid, &st, 0);
        printf("clone3 fork: child exit %d\n", WEXITSTATUS(st));
    }
    /* CLONE_CLEAR_SIGHAND: the child's SIGUSR1 is back at its default
     * (terminate), the parent keeps its handler. */
    signal(SIGUSR1, on_usr1);
    memset(&a, 0, sizeof a);
    a.flags = CLONE_CLEAR_SIGHAND;
    a.exit_signal = SIGCHLD;
    pid = clone3_raw(&a);
    if (pid == 0) {
        raise(SIGUSR1);
        _exit(0);
    }
    waitpid(pid, &st, 0);
    raise(SIGUSR1);
    printf("clone3 clear-sighand: child killed by %d, parent handled %d\n",
           WIFSIGNALED(st) ? WTERMSIG(st) : 0, usr1_seen);
    /* vfork form: the parent resumes once the child has exited. */
    memset(&a, 0, sizeof a);
    a.flags = CLONE_VFORK;
    a.exit_signal = SIGCHLD;
    pid = clone3_raw(&a);
    if (pid == 0)
        _exit(24);
    waitpid(pid, &st, 0);
    printf("clone3 vfork: child exit %d\n", WEXITSTATUS(st));
    /* vfork(): the parent runs again only once the child is gone, so
     * what the child wrote just before _exit is already there. */
    int pp[2];
    pipe2(pp, O_NONBLOCK);
    pid = vfork();
    if (pid == 0) {
        usleep(50000);
        write(pp[1], "v", 1);
        _exit(26);
    }
    char c = 0;
    ssize_t got = read(pp[0], &c, 1);
    waitpid(pid, &st, 0);
    printf("vfork: parent resumed after the child: %d, exit %d\n", got == 1, WEXITSTATUS(st));
    close(pp[0]);
    close(pp[1]);
    /* The child borrows the parent's memory: its write to the parent's
     * stack is there when the parent resumes, and posix_spawn (vfork
     * inside) learns of a failed exec through that memory. */
    volatile int seen = 0;
    pid = vfork();
    if (pid == 0) {
        seen = 42;
        _exit(0);
    }
    waitpid(pid, &st, 0);
    printf("vfork: child's write seen: %d\n", seen);
    char *spawn_argv[] = {"nope", NULL};
    pid_t sp;
    int sr = posix_spawn(&sp, "/nonexistent/program", NULL, NULL, spawn_argv, environ);
    printf("posix_spawn missing program: %s\n", strerror(sr));
    /* pidfd */
    int pidfd = -1;
    memset(&a, 0, sizeof a);
    a.flags = CLONE_PIDFD;
    a.pidfd = (uintptr_t)&pidfd;
    a.exit_signal = SIGCHLD;
    pid = clone3_raw(&a);
    if (pid == 0)
        _exit(25);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = syscall(SYS_waitid, P_PIDFD, pidfd, &si, WEXITED, NULL);
    printf("clone3 pidfd: %s status %d\n", r == 0 && si.si_pid == pid ? "waited" : strerror(errno), si.si_status);
    close(pidfd);
    /* thread form, as pthread_create would do it */
    size_t sz = 64 << 10;
    char *stack = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pid_t ptid = 0;
    memset(&a, 0, sizeof a);
    a.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
              CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    a.parent_tid = (uintptr_t)&ptid;
    a.child_tid = (uintptr_t)&child_tid_word;
    a.stack = (uintptr_t)stack;
    a.stack_size = sz;
    long tid = clone3_thread(&a, thread_fn);
    if (tid < 0) {
        printf("clone3 thread: %s\n", strerror(-tid));
        return;
    }
    while (child_tid_word != 0)
        syscall(SYS_futex, &child_tid_word, FUTEX_WAIT, child_tid_word, NULL, NULL, 0);
    printf("clone3 thread: counter %d, parent_tid set %d\n", shared_counter, ptid == tid);
    /* bad arguments */
    memset(&a, 0, sizeof a);
    a.stack_size = 4096;
    printf("clone3 size-without-stack: %ld %s\n", clone3_raw(&a), strerror(errno));
    printf("clone3 short struct: %ld %s\n", syscall(SYS_clone3, &a, 8), strerror(errno));
}

static pthread_barrier_t bar;
static void *robust_head;

static void *robust_thread(void *arg) {
    (void)arg;
    size_t len;
    syscall(SYS_get_robust_list, 0, &robust_head, &len);
    pthread_barrier_wait(&bar); /* head published */
    pthread_barrier_wait(&bar); /* main has looked */
    return NULL;
}

static void check_threads(void) {
    pthread_t t;
    pthread_barrier_init(&bar, NULL, 2);
    pthread_create(&t, NULL, robust_thread, NULL);
    pthread_barrier_wait(&bar);
    /* Ask every other task of this process (emulators may add threads of
     * their own): the new thread's head must be among the answers. */
    void *head = NULL;
    size_t len = 0;
    int found = 0, err = 0;
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        pid_t tid = atoi(de->d_name);
        if (tid <= 0 || tid == gettid())
            continue;
        if (syscall(SYS_get_robust_list, tid, &head, &len) == 0)
            found |= head == robust_head && len == 24;
        else
            err = errno;
    }
    if (d)
        closedir(d);
    printf("get_robust_list(other thread): %s\n", found ? "its head" : strerror(err));
    long r;
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    r = syscall(SYS_get_robust_list, 0x3fffffff, &head, &len);
    printf("get_robust_list(no such pid): %s\n", r == 0 ? "ok" : strerror(errno));
}

static void check_prctl(void) {
    /* 16 bytes at the very end of a mapping, no NUL: Linux reads 15. */
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p + 4096, 4096);
    memcpy(p + 4096 - 15, "abcdefghijklmno", 15);
    int r = prctl(PR_SET_NAME, p + 4096 - 15);
    char name[16] = {0};
    prctl(PR_GET_NAME, name);
    printf("prctl name: %d %s\n", r, name);
    prctl(PR_SET_NAME, "short");
    prctl(PR_GET_NAME, name);
    printf("prctl name: %s\n", name);
}

/* Linux refuses to write a running program's file (ETXTBSY): its pages
 * are mapped from it. Harmless where a write is allowed (qemu): nothing is
 * written, and the length set is the file's own. */
static void check_busy(const char *exe) {
    int fd = open(exe, O_WRONLY);
    printf("write own exe: %s\n", fd < 0 ? strerror(errno) : "allowed");
    if (fd >= 0)
        close(fd);
    struct stat st;
    if (stat(exe, &st) == 0) {
        int r = truncate(exe, st.st_size);
        printf("truncate own exe: %s\n", r < 0 ? strerror(errno) : "allowed");
    }
}

int main(int argc, char **argv) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char real[4096];
    printf("exe: %s\n", realpath(argv[0], real) && strcmp(real, exe) == 0 ? "argv[0]" : exe);
    check_maps(exe);
    check_auxv();
    check_cmdline(argc, argv);
    check_prctl();
    check_busy(exe);
    check_threads();
    fflush(stdout);
    check_clone3();
    return 0;
}
