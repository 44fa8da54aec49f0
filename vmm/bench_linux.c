/* The Linux side of `xomb-vmm bench` (vmm/bench.py builds this with gcc and
 * runs it once per round, between the guest's rounds).
 *
 *   linux_bench [-q] NAME...    prints "@h NAME NS_PER_OP ITERS" per benchmark
 *
 *   getpid   syscall(SYS_getpid)                         (null syscall)
 *   mmap     mmap 4 KiB anonymous + touch + munmap       (page share + unmap)
 *   segv     SIGSEGV handler + mprotect, first touch     (fault upcall round trip)
 *   pipe     pipe ping-pong, 2 processes, same CPU       (address-space switch)
 *   futex_x  futex ping-pong, 2 processes on CPUs 0 and 1 (cross-CPU IPC)
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double b_getpid(long n)
{
    double t = now_ns();
    for (long i = 0; i < n; i++)
        syscall(SYS_getpid);
    return (now_ns() - t) / n;
}

static double b_mmap(long n)
{
    double t = now_ns();
    for (long i = 0; i < n; i++) {
        volatile char *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            exit(3);
        *p = 1;
        munmap((void *)p, 4096);
    }
    return (now_ns() - t) / n;
}

static char *segv_base;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    char *page = (char *)((uintptr_t)si->si_addr & ~4095UL);
    if (page < segv_base || mprotect(page, 4096, PROT_READ | PROT_WRITE) != 0)
        _exit(4);
}

static double b_segv(long n)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    segv_base = mmap(0, n * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (segv_base == MAP_FAILED)
        exit(3);
    double t = now_ns();
    for (long i = 0; i < n; i++)
        segv_base[i * 4096] = 1;
    double r = (now_ns() - t) / n;
    munmap(segv_base, n * 4096);
    signal(SIGSEGV, SIG_DFL);
    return r;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof(s), &s);
}

static double b_pipe(long n)
{
    int a[2], b[2];
    char c = 0;
    if (pipe(a) || pipe(b))
        exit(3);
    int cpu = sched_getcpu();
    pin(cpu < 0 ? 0 : cpu);
    pid_t pid = fork();
    if (pid == 0) {
        for (long i = 0; i < n; i++) {
            if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
                _exit(1);
        }
        _exit(0);
    }
    double t = now_ns();
    for (long i = 0; i < n; i++) {
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
            exit(3);
    }
    double r = (now_ns() - t) / n;
    waitpid(pid, 0, 0);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    return r;
}

/* Two processes (separate address spaces, like the guest's) on CPUs 0 and 1
 * pass a turn back and forth through a shared word, sleeping in the kernel
 * (FUTEX_WAIT) until it is theirs and waking the other (FUTEX_WAKE). */
static void futex_wait(volatile int *w, int val)
{
    syscall(SYS_futex, w, FUTEX_WAIT, val, 0, 0, 0);
}

static void futex_wake(volatile int *w)
{
    syscall(SYS_futex, w, FUTEX_WAKE, 1, 0, 0, 0);
}

static double b_futex_x(long n)
{
    volatile int *turn = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (turn == MAP_FAILED)
        exit(3);
    *turn = 0;
    pid_t pid = fork();
    if (pid == 0) {
        pin(1);
        for (long i = 0; i < n; i++) {
            while (*turn != 1)
                futex_wait(turn, 0);
            *turn = 0;
            futex_wake(turn);
        }
        _exit(0);
    }
    pin(0);
    double t = now_ns();
    for (long i = 0; i < n; i++) {
        *turn = 1;
        futex_wake(turn);
        while (*turn != 0)
            futex_wait(turn, 1);
    }
    double r = (now_ns() - t) / n;
    waitpid(pid, 0, 0);
    munmap((void *)turn, 4096);
    return r;
}

static const struct { const char *name; double (*fn)(long); long iters, quick; } B[] = {
    { "getpid", b_getpid, 200000, 50000 },
    { "mmap",   b_mmap,    20000,  5000 },
    { "segv",   b_segv,    20000,  5000 },
    { "pipe",   b_pipe,    10000,  2500 },
    { "futex_x", b_futex_x, 10000, 2500 },
};

int main(int argc, char **argv)
{
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) {
            quick = 1;
            continue;
        }
        unsigned k;
        for (k = 0; k < sizeof(B) / sizeof(B[0]); k++)
            if (strcmp(argv[i], B[k].name) == 0)
                break;
        if (k == sizeof(B) / sizeof(B[0])) {
            fprintf(stderr, "linux_bench: unknown benchmark %s\n", argv[i]);
            return 2;
        }
        long n = quick ? B[k].quick : B[k].iters;
        B[k].fn(n / 10);                        /* warm up */
        printf("@h %s %.1f %ld\n", B[k].name, B[k].fn(n), n);
        fflush(stdout);
    }
    return 0;
}
