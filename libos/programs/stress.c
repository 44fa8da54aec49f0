/* stress: many system calls on every CPU at once.
 *   stress [THREADS [ROUNDS]]
 * Each thread owns a page; every round it makes a null call, shares its page
 * to an alias address, checks the alias sees its data, and releases the alias
 * (a TLB shootdown when another CPU runs this address space).  The host then
 * walks every page table (vmm/invariants.py). */
#include "xomb.h"

#define ALIAS_VA 0x300000000ULL
#define PAGE_VA 0x380000000ULL

static uint64_t rounds;
static volatile uint64_t failures;

static void *worker(void *arg)
{
    uint64_t id = (uint64_t)arg;
    uint64_t page = PAGE_VA + id * 0x200000, alias = ALIAS_VA + id * 0x200000;
    volatile uint64_t *p = (volatile uint64_t *)page, *a = (volatile uint64_t *)alias;
    for (uint64_t r = 0; r < rounds; r++) {
        *p = r ^ id;
        struct xomb_result n = xomb_map(XOMB_AS_SELF, alias, XOMB_AS_SELF, alias, 0, 0);
        struct xomb_result s = xomb_map(XOMB_AS_SELF, alias, XOMB_AS_SELF, page, 1, XOMB_MAP_W);
        if (n.rv != 0 || s.rv != 0 || *a != (r ^ id))
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
        if (xomb_release(XOMB_AS_SELF, alias, 1).rv != 0)
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    rounds = argc > 2 ? strtoul(argv[2], 0, 10) : 1000;
    static struct thread *t[32];
    if (n < 1 || n > 32)
        return 2;
    for (int i = 0; i < n; i++) {       /* pages and page tables, before the threads */
        uint64_t page = PAGE_VA + (uint64_t)i * 0x200000, alias = ALIAS_VA + (uint64_t)i * 0x200000;
        if (page_alloc_at(XOMB_AS_SELF, page, XOMB_MAP_W) < 0 ||
            page_alloc_at(XOMB_AS_SELF, alias, XOMB_MAP_W) < 0) {
            printf("stress: out of memory\n");
            return 1;
        }
        page_free(alias);               /* keep its page table, free the page */
    }
    uint64_t t0 = rdtsc();
    for (int i = 0; i < n; i++)
        t[i] = thread_create(worker, (void *)(uint64_t)i);
    for (int i = 0; i < n; i++)
        thread_join(t[i]);
    uint64_t calls = (uint64_t)n * rounds * 3;
    uint64_t us = libos_tsc_khz ? (rdtsc() - t0) * 1000 / libos_tsc_khz : 0;
    printf("stress: %d threads, %lu system calls in %lu us on %lu CPUs, %lu failures\n",
           n, calls, us, libos_ncpus, failures);
    return failures ? 1 : 0;
}
