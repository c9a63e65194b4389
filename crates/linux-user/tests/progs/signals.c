/* Signal delivery: handlers with siginfo and ucontext, masks, pending
   signals, SA_RESETHAND, sigaltstack, a SIGSEGV handler that recovers
   with siglongjmp, timers, and FP state across a handler. */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static volatile int info_ok, uc_ok, on_alt;
static sigjmp_buf jb;
static char altstack[65536];

static void h_info(int sig, siginfo_t *si, void *ucv) {
    ucontext_t *uc = ucv;
    got = sig;
    info_ok = si->si_signo == sig && si->si_code == SI_TKILL ? 2 : si->si_signo == sig;
    uc_ok = uc->uc_mcontext.__gregs[0] != 0; /* saved pc */
    /* Clobber FP registers; the frame must restore the interrupted ones. */
    volatile double x = 1.0;
    for (int i = 0; i < 10; i++) x = x * 3.5 + 1.25;
    (void)x;
}

static void h_alt(int sig) {
    char local;
    on_alt = &local >= altstack && &local < altstack + sizeof altstack;
    got = sig;
}

static void h_segv(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    got = sig;
    info_ok = si->si_addr == (void *)16;
    siglongjmp(jb, 1);
}

static void h_plain(int sig) { got = sig; }

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h_info;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    double a = 1.0 / 3.0, b = 2.0 / 7.0;
    raise(SIGUSR1);
    printf("usr1 got=%d info=%d uc=%d fp=%d\n", got, info_ok, uc_ok, a * 7 + b * 3 == 1.0 / 3.0 * 7 + 2.0 / 7.0 * 3);

    /* Blocked signals stay pending until unblocked. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &old);
    got = 0;
    kill(getpid(), SIGUSR1);
    sigset_t pend;
    sigpending(&pend);
    printf("blocked got=%d pending=%d\n", got, sigismember(&pend, SIGUSR1));
    sigprocmask(SIG_SETMASK, &old, NULL);
    printf("unblocked got=%d\n", got);

    /* SA_RESETHAND: the second signal gets the default action (ignored
       for SIGCHLD-like, so use SIGURG whose default is ignore). */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h_plain;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGURG, &sa, NULL);
    got = 0;
    raise(SIGURG);
    int first = got;
    got = 0;
    raise(SIGURG);
    struct sigaction cur;
    sigaction(SIGURG, NULL, &cur);
    printf("resethand first=%d second=%d dfl=%d\n", first, got, cur.sa_handler == SIG_DFL);

    /* sigaltstack. */
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h_alt;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, NULL);
    raise(SIGUSR2);
    printf("altstack got=%d on_alt=%d\n", got, on_alt);

    /* A fault caught by a handler. */
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    got = 0;
    info_ok = 0;
    if (sigsetjmp(jb, 1) == 0) {
        *(volatile int *)16 = 1;
        printf("no fault?\n");
    }
    printf("segv got=%d addr_ok=%d\n", got, info_ok);

    /* A timer signal interrupting pause(). */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h_plain;
    sigaction(SIGALRM, &sa, NULL);
    got = 0;
    struct itimerval it = {.it_value = {.tv_usec = 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    while (!got) pause();
    printf("alarm got=%d\n", got);

    /* sigsuspend with a temporarily unblocked signal. */
    sigprocmask(SIG_BLOCK, &set, &old);
    kill(getpid(), SIGUSR1);
    got = 0;
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGUSR1);
    sigsuspend(&wait_mask);
    sigset_t after;
    sigprocmask(SIG_SETMASK, NULL, &after);
    printf("sigsuspend got=%d still_blocked=%d\n", got, sigismember(&after, SIGUSR1));
    sigprocmask(SIG_SETMASK, &old, NULL);
    /* Finally die by a signal the guest does not handle. */
    fflush(stdout);
    signal(SIGTERM, SIG_DFL);
    raise(SIGTERM);
    return 0;
}
