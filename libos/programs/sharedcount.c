/* sharedcount: counters shared by threads on several CPUs must be exact.
 *   sharedcount [THREADS [INCREMENTS]]
 * Each thread waits at a start line (a condition variable), then adds to
 * one counter under a mutex and to another with an atomic add.  Exits 0 if
 * both equal THREADS * INCREMENTS. */
#include "xomb.h"

static struct mutex m = MUTEX_INIT;
static struct cond go = COND_INIT;
static int started;
static uint64_t locked_count;
static uint64_t atomic_count;
static uint64_t increments;
static int cpus_seen[XOMB_MAX_CPUS];

static void *worker(void *arg)
{
    (void)arg;
    mutex_lock(&m);
    while (!started)
        cond_wait(&go, &m);
    mutex_unlock(&m);
    for (uint64_t i = 0; i < increments; i++) {
        mutex_lock(&m);
        locked_count++;
        mutex_unlock(&m);
        __atomic_fetch_add(&atomic_count, 1, __ATOMIC_RELAXED);
        cpus_seen[thread_cpu()] = 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    increments = argc > 2 ? strtoul(argv[2], 0, 10) : 20000;
    static struct thread *t[64];
    if (n < 1 || n > 64)
        return 2;
    for (int i = 0; i < n; i++)
        t[i] = thread_create(worker, 0);
    for (int spin = 0; spin < 1000; spin++)     /* let the workers reach the line */
        thread_yield();
    mutex_lock(&m);
    started = 1;
    cond_broadcast(&go);
    mutex_unlock(&m);
    for (int i = 0; i < n; i++)
        thread_join(t[i]);
    uint64_t want = (uint64_t)n * increments;
    int cpus = 0;
    for (int i = 0; i < XOMB_MAX_CPUS; i++)
        cpus += cpus_seen[i];
    printf("sharedcount: %d threads x %lu: mutex %lu, atomic %lu, want %lu (%d CPUs used)\n",
           n, increments, locked_count, atomic_count, want, cpus);
    return locked_count == want && atomic_count == want ? 0 : 1;
}
