/* parcount: a CPU-bound parallel computation, to see several CPUs at work.
 *   parcount [THREADS [ITERATIONS]]
 * Splits ITERATIONS of a pseudo-random walk over THREADS user-level threads
 * and prints the time taken (rdtsc) and a checksum that does not depend on
 * how many CPUs ran it. */
#include "xomb.h"

struct job {
    uint64_t seed, n, out;
    int cpu;                    /* where it finished */
};

static void *walk(void *arg)
{
    struct job *j = arg;
    uint64_t x = j->seed;
    for (uint64_t i = 0; i < j->n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        x ^= x >> 29;
    }
    j->out = x;
    j->cpu = thread_cpu();
    return 0;
}

int main(int argc, char **argv)
{
    int nthreads = argc > 1 ? atoi(argv[1]) : 4;
    uint64_t total = argc > 2 ? strtoul(argv[2], 0, 10) : 200000000ULL;
    static struct job jobs[64];
    static struct thread *threads[64];
    if (nthreads < 1 || nthreads > 64) {
        printf("parcount: 1 to 64 threads\n");
        return 2;
    }
    uint64_t t0 = rdtsc();
    for (int i = 0; i < nthreads; i++) {
        jobs[i].seed = (uint64_t)i + 1;
        jobs[i].n = total / (uint64_t)nthreads;
        if (!(threads[i] = thread_create(walk, &jobs[i]))) {
            printf("parcount: cannot create thread %d\n", i);
            return 1;
        }
    }
    uint64_t sum = 0;
    int used[XOMB_MAX_CPUS] = {0}, ncpus_used = 0;
    for (int i = 0; i < nthreads; i++) {
        thread_join(threads[i]);
        sum ^= jobs[i].out;
        if (jobs[i].cpu >= 0 && jobs[i].cpu < XOMB_MAX_CPUS && !used[jobs[i].cpu]++)
            ncpus_used++;
    }
    uint64_t cycles = rdtsc() - t0;
    uint64_t ms = libos_tsc_khz ? cycles / libos_tsc_khz : 0;
    printf("parcount: %d threads, %lu iterations, %lu ms, %lu cycles on %lu CPUs, checksum %lx, "
           "threads ran on %d CPUs\n", nthreads, total, ms, cycles, libos_ncpus, sum, ncpus_used);
    return 0;
}
