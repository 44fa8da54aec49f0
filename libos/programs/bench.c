/* bench: the guest half of `xomb-vmm bench` (vmm/bench.py).
 *
 *   bench [-r ROUNDS] [-q] NAME...      run the named benchmarks
 *   bench --partner                     (internal) the other address space
 *   bench --alloc MIB                   allocate MIB MiB through the pool protocol
 *
 * init starts us in run mode XOMB_RUN_BENCH and shares its platform page
 * with us at XOMB_PLATFORM_VA: we write XOMB_PLAT_MARK there to tell the VMM
 * what we are doing (op | id << 8, id = position of the benchmark in argv):
 *
 *   ROUND r          round r begins; the VMM runs its Linux round now, so
 *                    guest and host rounds interleave
 *   PHASE_BEGIN/END  around each timed loop: the VMM counts exits per reason
 *   COUNT_BEGIN/END  around ONE operation: the VMM single-steps it and
 *                    counts kernel, gate and user instructions exactly
 *
 * Times are rdtsc cycles measured here; each result is one console line
 *   @r ID ROUND CYCLES ITERS
 * which the VMM converts with the TSC frequency.  A new row is a function
 * here plus a descriptor in vmm/bench.py.
 */
#include "xomb.h"

#define APP_PING (UPCALL_APP_MIN + 0)
#define BENCH_VA 0x20000000000UL                   /* 2 TiB: nobody else maps here */
#define SHARE_SRC (BENCH_VA + (1UL << 21))         /* our page to share */
#define SHARE_DST (BENCH_VA + (2UL << 21))         /* where the partner gets it */
#define FAULT_VA (BENCH_VA + (1UL << 30))          /* demand-paged region */
#define IPC_VA (BENCH_VA + (3UL << 21))            /* shared with the partner, same VA */

/* Cross-CPU IPC: the partner runs on another CPU (one its parent, we, donate
 * to it) and answers each ping through this shared page: no kernel at all. */
struct ipc {
    volatile uint64_t ping;
    uint64_t pad1[7];
    volatile uint64_t pong;
    uint64_t pad2[7];
    volatile uint64_t ready, stop;
};
#define IPC ((struct ipc *)IPC_VA)

static int quick;
static long partner = -1;
static volatile int counting;

static inline void mark(unsigned op, unsigned id)
{
    *(volatile uint32_t *)(XOMB_PLATFORM_VA + XOMB_PLAT_MARK) = op | (id << 8);
}

/* --- the operations (count != 0: mark exactly one of them) ------------- */

static void op_null(unsigned id, int count)
{
    if (count)
        mark(XOMB_MARK_COUNT_BEGIN, id);
    xomb_map(XOMB_AS_SELF, 0, XOMB_AS_SELF, 0, 0, 0);
    if (count)
        mark(XOMB_MARK_COUNT_END, id);
}

static void op_share(unsigned id, int count)
{
    if (count)
        mark(XOMB_MARK_COUNT_BEGIN, id);
    xomb_map(partner, SHARE_DST, XOMB_AS_SELF, SHARE_SRC, 1, XOMB_MAP_W);
    xomb_release(partner, SHARE_DST, 1);
    if (count)
        mark(XOMB_MARK_COUNT_END, id);
}

static uint64_t fault_next;

static int fault_handler(struct xomb_frame *f)
{
    if (f->vector != 14 || f->cr2 < FAULT_VA || f->cr2 >= FAULT_VA + (1UL << 30))
        return 0;
    long r = page_alloc_at(XOMB_AS_SELF, f->cr2 & PAGE_MASK, XOMB_MAP_W);
    if (r < 0)
        printf("bench: demand paging at 0x%lx: %s (pte 0x%lx)\n", f->cr2, xomb_errname(r),
               vm_pte(f->cr2));
    return r == 0;
}

static void op_fault(unsigned id, int count)
{
    volatile char *p = (volatile char *)fault_next;
    fault_next += PAGE_SIZE;
    if (count)
        mark(XOMB_MARK_COUNT_BEGIN, id);
    *p = 1;
    if (count)
        mark(XOMB_MARK_COUNT_END, id);
}

static void op_yield(unsigned id, int count)
{
    if (count)
        mark(XOMB_MARK_COUNT_BEGIN, id);
    yield_and_resume(partner, APP_PING, 0, 0);
    if (count)
        mark(XOMB_MARK_COUNT_END, id);
}

static uint64_t xseq;

static void op_xcpu(unsigned id, int count)
{
    uint64_t s = ++xseq;
    IPC->ping = s;
    while (IPC->pong != s)
        cpu_relax();
}

static const char line64[] =
    "console throughput: 64 bytes per line .........................\n";

static void op_console(unsigned id, int count)
{
    platform_putc_raw(line64, sizeof(line64) - 1);
}

/* --- the table ---------------------------------------------------------- */

struct bench {
    const char *name;
    void (*op)(unsigned id, int count);
    uint64_t iters, quick_iters;
    int countable;
};

static const struct bench benches[] = {
    { "null",    op_null,    400, 100, 1 },
    { "share",   op_share,   200,  50, 1 },
    { "fault",   op_fault,   200,  50, 1 },
    { "yield",   op_yield,   200,  50, 1 },
    { "console", op_console, 2048, 512, 0 },
    { "xcpu",    op_xcpu,  20000, 5000, 0 },
};
#define NBENCH (sizeof(benches) / sizeof(benches[0]))

static const struct bench *find(const char *name)
{
    for (unsigned i = 0; i < NBENCH; i++)
        if (strcmp(benches[i].name, name) == 0)
            return &benches[i];
    return 0;
}

/* Undo what a loop of the fault benchmark mapped (not timed). */
static void fault_reset(void)
{
    page_free_range(FAULT_VA, (fault_next - FAULT_VA) / PAGE_SIZE);
    fault_next = FAULT_VA;
}

#define NOT_RUN (~0ULL)

/* The partner must be answering on another CPU (the VM needs 2 vCPUs; the
 * spare one reaches it at init's next tick): wait up to 2 s for it. */
static int xcpu_ready(void)
{
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 3000000, end = rdtsc() + 2000 * khz;
    while (!IPC->ready && rdtsc() < end)
        cpu_relax();
    return IPC->ready != 0;
}

static uint64_t run(const struct bench *b, unsigned id, uint64_t n)
{
    if (b->op == op_fault)
        fault_reset();
    if (b->op == op_xcpu && !xcpu_ready())
        return NOT_RUN;
    uint64_t t0 = rdtsc();
    for (uint64_t i = 0; i < n; i++)
        b->op(id, 0);
    if (b->op == op_console)
        platform_console_drain();
    uint64_t t = rdtsc() - t0;
    return t;
}

/* --- the partner address space ----------------------------------------- */

static void partner_upcall(uint64_t no, uint64_t a0, uint64_t a1, uint64_t from)
{
    for (;;)
        xomb_yield(XOMB_AS_PARENT, XOMB_UP_RESUME, 0, 0);
}

/* A CPU donated to the partner: answer pings on it until told to stop. */
static void partner_donated(uint64_t cpu)
{
    uint64_t last = IPC->ping;
    IPC->ready = 1;
    while (!IPC->stop) {
        uint64_t p = IPC->ping;
        if (p != last)
            IPC->pong = last = p;
        cpu_relax();
    }
}

/* A CPU donated to us (init passes its spare CPUs to us): the partner's. */
static void bench_donated(uint64_t cpu)
{
    if (partner > 0 && !IPC->stop)
        xomb_yield(partner, XOMB_UP_DONATE, cpu, 0);
}

static int partner_main(void)
{
    set_donate_handler(partner_donated);
    set_app_upcall_handler(partner_upcall);
    partner_upcall(0, 0, 0, 0);
    return 0;
}

static int setup(void)
{
    char *pargv[] = { "bench", "--partner", 0 };
    struct spawn_opts o = { .pool_pages = 64, .flags = 0 };
    partner = spawn_with("bench", pargv, &o);
    if (partner < 0) {
        printf("bench: cannot start the partner: %s\n", spawn_error());
        return -1;
    }
    long r = yield_and_resume(partner, XOMB_UP_START, 0, 0);
    if (r < 0)
        return (int)r;
    if ((r = page_alloc_at(XOMB_AS_SELF, SHARE_SRC, XOMB_MAP_W)) < 0
        || (r = mem_ensure_tables(partner, SHARE_DST)) < 0
        || (r = mem_ensure_tables(XOMB_AS_SELF, FAULT_VA)) < 0) {
        printf("bench: setup failed: %s\n", xomb_errname(r));
        return -1;
    }
    *(volatile char *)SHARE_SRC = 1;
    if ((r = page_alloc_at(XOMB_AS_SELF, IPC_VA, XOMB_MAP_W)) < 0
        || (r = mem_ensure_tables(partner, IPC_VA)) < 0
        || (r = xomb_map(partner, IPC_VA, XOMB_AS_SELF, IPC_VA, 1, XOMB_MAP_W).rv) < 0) {
        printf("bench: IPC page: %s\n", xomb_errname(r));
        return -1;
    }
    set_donate_handler(bench_donated);
    fault_next = FAULT_VA;
    set_fault_handler(fault_handler);
    return 0;
}

/* bench --alloc MIB: allocate far more than our initial pool (the pool
 * protocol, mem.h: we ask our parent, who may ask its own), touch and check
 * every page, free it all.  No platform page needed (tests/test_bench.py). */
static int alloc_check(uint64_t mib)
{
    uint64_t start_pool = pool_free_pages();
    uint64_t chunk = 256 * 1024, n = mib * 1024 * 1024 / chunk;
    char **blocks = malloc(n * sizeof(char *));
    if (!blocks)
        return 1;
    for (uint64_t i = 0; i < n; i++) {
        blocks[i] = malloc(chunk);
        if (!blocks[i]) {
            printf("alloc: out of memory after %lu KiB\n", i * chunk / 1024);
            return 1;
        }
        for (uint64_t o = 0; o < chunk; o += PAGE_SIZE)
            blocks[i][o] = (char)(i + o / PAGE_SIZE);
    }
    for (uint64_t i = 0; i < n; i++)
        for (uint64_t o = 0; o < chunk; o += PAGE_SIZE)
            if (blocks[i][o] != (char)(i + o / PAGE_SIZE)) {
                printf("alloc: page %lu of block %lu corrupted\n", o / PAGE_SIZE, i);
                return 1;
            }
    for (uint64_t i = 0; i < n; i++)
        free(blocks[i]);
    free(blocks);
    printf("alloc ok: %lu MiB, initial pool %lu pages\n", mib, start_pool);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--partner") == 0)
        return partner_main();
    if (argc > 2 && strcmp(argv[1], "--alloc") == 0)
        return alloc_check((uint64_t)atoi(argv[2]));
    if (!vm_mapped(XOMB_PLATFORM_VA)) {
        printf("bench: no platform page: run me with `xomb-vmm bench`\n");
        return 2;
    }
    unsigned rounds = 3;
    const struct bench *list[32];
    unsigned ids[32], n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "-r") == 0 && i + 1 < argc) {
            rounds = (unsigned)atoi(argv[++i]);
        } else if (n < 32) {
            const struct bench *b = find(argv[i]);
            if (!b) {
                printf("bench: unknown benchmark %s\n", argv[i]);
                return 2;
            }
            ids[n] = (unsigned)i;
            list[n++] = b;
        }
    }
    if (setup() < 0)
        return 1;
    for (unsigned k = 0; k < n; k++)                /* warm up */
        run(list[k], ids[k], 4);
    for (unsigned r = 0; r < rounds; r++) {
        mark(XOMB_MARK_ROUND, r);
        for (unsigned k = 0; k < n; k++) {
            uint64_t iters = quick ? list[k]->quick_iters : list[k]->iters;
            mark(XOMB_MARK_PHASE_BEGIN, ids[k]);
            uint64_t t = run(list[k], ids[k], iters);
            mark(XOMB_MARK_PHASE_END, ids[k]);
            if (t == NOT_RUN)
                printf("bench: %s needs a second vCPU; skipped\n", list[k]->name);
            else
                printf("@r %u %u %lu %lu\n", ids[k], r, t, iters);
        }
    }
    for (unsigned k = 0; k < n; k++) {              /* exact instruction counts */
        if (!list[k]->countable)
            continue;
        if (list[k]->op == op_fault)
            fault_reset();
        list[k]->op(ids[k], 0);                     /* warm: tables, caches */
        for (int t = 0; t < 3; t++)                 /* the VMM keeps the smallest: */
            list[k]->op(ids[k], 1);                 /* a timer tick may land in one */
    }
    fault_reset();
    proc_destroy(partner);
    IPC->stop = 1;                              /* the partner gives its CPU back */
    printf("@done\n");
    return 0;
}
